"""amqps end to end, against a RabbitMQ node of the test's own with a TLS listener whose CA the
test made (erel_sync/dev/tlsca.py): the server certificate names `localhost`, and the node
requires a client certificate from the same CA.

The TLS files reach the library as the URL's `cafile`/`certfile`/`keyfile` (model.brokerurl
`with_tls`): from AgentSettings `broker.tls`, and from `erel-sync --tls-ca/--tls-cert/--tls-key`
(or EREL_TLS_*) for the publisher and every command. Hostname verification is always on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.session import Session
from erel_sync.dev.rabbitnode import RabbitNode
from erel_sync.dev.tlsca import LocalCa, make_ca
from erel_sync.model.brokerurl import TlsFiles, with_tls
from erel_sync.publisher.streams import ensure_topology
from tests.cli import erel_sync as cli
from tests.daemons import publisher_and_agent
from tests.rabbit import EXTERNAL_URL_ENV

pytestmark = pytest.mark.integration

GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: secure}
spec:
  hosts: [tls-1]
  releases: []
  allow_empty: true
"""


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, LocalCa]]:
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"{EXTERNAL_URL_ENV} is set: the TLS listener needs a node of the test's own")
    where = tmp_path_factory.mktemp("tls")
    ca = make_ca(where / "ca")
    node = RabbitNode(where / "rabbit", tls=ca.server)
    node.start()
    try:
        yield node, ca
    finally:
        node.stop()


def files(ca: LocalCa) -> TlsFiles:
    return TlsFiles(str(ca.ca_file), str(ca.client_cert), str(ca.client_key))


async def test_a_session_over_amqps_with_the_ca_and_a_client_certificate(
    tls_node: tuple[RabbitNode, LocalCa],
) -> None:
    node, ca = tls_node
    url = with_tls(node.tls_url, files(ca))
    assert "cafile=" in url and "certfile=" in url and "keyfile=" in url
    async with await Session.open([url], name="tls-test", attempts=2) as session:
        assert await ensure_topology(session, {}) is True


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("by address", "certificate verify failed"),  # the certificate names localhost only
        ("no client certificate", ""),
        ("another CA", "certificate verify failed"),
    ],
)
async def test_amqps_refuses_what_it_cannot_verify(
    tls_node: tuple[RabbitNode, LocalCa], tmp_path: Path, case: str, expected: str
) -> None:
    node, ca = tls_node
    url, tls = node.tls_url, files(ca)
    if case == "by address":
        url = url.replace("localhost", "127.0.0.1")
    elif case == "no client certificate":
        tls = TlsFiles(str(ca.ca_file))
    else:
        tls = TlsFiles(str(make_ca(tmp_path / "other").ca_file), tls.cert_file, tls.key_file)
    with pytest.raises(BrokerError) as info:
        await Session.open([with_tls(url, tls)], name="tls-test", attempts=1)
    assert expected in str(info.value)
    assert "no broker reachable" in str(info.value)


def test_tls_files_with_a_plain_url_are_refused_before_connecting(tmp_path: Path) -> None:
    out = cli("--tls-ca", str(tmp_path / "ca.pem"), "status", "--amqp-url", "amqp://h:5672/")
    assert out.returncode == 2
    assert "TlsWithoutAmqps" in out.stderr and "not amqps://" in out.stderr


def test_publisher_agent_and_cli_over_amqps(
    tls_node: tuple[RabbitNode, LocalCa], tmp_path: Path
) -> None:
    node, ca = tls_node
    node.ctl("add_vhost", "tls")
    node.ctl("set_permissions", "-p", "tls", "guest", ".*", ".*", ".*")
    url = node.tls_url + "tls"
    broker = (
        f"    urls: ['{url}']\n"
        f"    tls: {{ca_file: '{ca.ca_file}', cert_file: '{ca.client_cert}', "
        f"key_file: '{ca.client_key}'}}\n"
    )
    tls_flags = ("--tls-ca", str(ca.ca_file), "--tls-cert", str(ca.client_cert),
                 "--tls-key", str(ca.client_key))  # fmt: skip
    with publisher_and_agent(tmp_path, "tls-1", GROUP, broker, url, flags=tls_flags):
        env = {"EREL_TLS_CA": str(ca.ca_file), "EREL_TLS_CERT": str(ca.client_cert),
               "EREL_TLS_KEY": str(ca.client_key)}  # fmt: skip
        shown = cli("status", "--amqp-url", url, "-o", "json", "--timeout", "10", env=env)
        assert shown.returncode == 0, shown.stderr
        assert [h["host_id"] for h in json.loads(shown.stdout)] == ["tls-1"]
