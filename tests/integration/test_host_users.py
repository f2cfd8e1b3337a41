"""Hosts that cannot speak for each other: `erel-sync broker setup --hosts INVENTORY
--host-passwords DIR` makes one agent user per host (`<agent user>@<host>`), allowed only that
host's routing keys on `erel.status`, and every publish of a session names its user
(`user_id`, which RabbitMQ checks). On a real broker, host A's own user:

- cannot publish a heartbeat, presence record or rollout event under host B's key (the broker
  closes the channel): A cannot make B look healthy, converged, or gone;
- cannot claim B's user in `user_id` (the broker refuses it);
- can send a command reply claiming to be B (replies go to the operator's key), but `status`,
  `members` and `wait` drop it: its user is A's.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from typer.testing import CliRunner

from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.adapters.broker.permissions import host_user
from erel_sync.cli.broker import app as broker_app
from erel_sync.core import control
from erel_sync.dev.rabbitnode import SERVER_BIN_DIR
from tests.cli import erel_sync as cli
from tests.daemons import publisher_and_agent
from tests.integration.test_vhost import bare_url
from tests.rabbit import Rabbit, setup_spec
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOSTS = ("web-a", "web-b")
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["web-*"]
  releases: []
  allow_empty: true
"""


@pytest.fixture(scope="module")
def users(rabbit: Rabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """URLs of the two hosts' own users and of the operator, after `broker setup --hosts`."""
    if rabbit.node is None:
        pytest.skip("needs a node of the test's own (rabbitmqctl with its cookie)")
    where = tmp_path_factory.mktemp("host-users")
    inventory = where / "hosts.yaml"
    inventory.write_text("hosts:\n" + "".join(f"  - {{id: {h}}}\n" for h in HOSTS))
    spec = setup_spec("hu")
    admin = bare_url(rabbit, rabbit.user, "unused")
    argv = [
        *("setup", "--amqp-url", admin, "--vhost", spec.vhost),
        *("--publisher-user", spec.publisher_user, "--agent-user", spec.agent_user),
        *("--operator-user", str(spec.operator_user), "--hosts", str(inventory)),
        *("--host-passwords", str(where / "passwords"), "--node", rabbit.node.node_name),
        *("--rabbitmqctl", str(SERVER_BIN_DIR / "rabbitmqctl")),
    ]
    env = {
        **rabbit.node.env(),
        "EREL_PUBLISHER_PASSWORD": spec.publisher_password,
        "EREL_AGENT_PASSWORD": spec.agent_password,
        "EREL_OPERATOR_PASSWORD": spec.operator_password,
        "EREL_AMQP_VHOST": None,
    }
    try:
        result = CliRunner().invoke(broker_app, argv, env=env)
        assert result.exit_code == 0, result.output
        files = {h: where / "passwords" / f"{h}.password" for h in HOSTS}
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.values())
        passwords = {h: f.read_text().strip() for h, f in files.items()}
        again = CliRunner().invoke(broker_app, argv, env=env)  # idempotent: passwords kept
        assert again.exit_code == 0, again.output
        assert {h: f.read_text().strip() for h, f in files.items()} == passwords
        yield {
            **{
                h: rabbit.url_for(spec.vhost, host_user(spec.agent_user, h), pw)
                for h, pw in passwords.items()
            },
            "operator": rabbit.url_for(spec.vhost, str(spec.operator_user), spec.operator_password),
            "agent_user": spec.agent_user,
            "publisher": rabbit.url_for(spec.vhost, spec.publisher_user, spec.publisher_password),
        }
    finally:
        for user in (spec.publisher_user, spec.agent_user, str(spec.operator_user)):
            rabbit.delete_user(user)
        for h in HOSTS:
            rabbit.delete_user(host_user(spec.agent_user, h))
        rabbit.delete_vhost(spec.vhost)


async def publish_as(url: str, key: str, doc: dict[str, Any], **kw: Any) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await broker.publish(
            channel, topo.STATUS_EXCHANGE, key, json.dumps(doc).encode(), mandatory=False, **kw
        )


@pytest.mark.parametrize("kind", ["host", "presence", "rollout"])
async def test_a_host_cannot_publish_under_another_hosts_key(
    users: dict[str, str], kind: str
) -> None:
    doc = {"kind": "heartbeat", "host_id": "web-b", "converged": True}
    with pytest.raises(BrokerError, match="ACCESS_REFUSED"):
        await publish_as(users["web-a"], f"{kind}.web-b", doc)
    await publish_as(users["web-a"], f"{kind}.web-a", {**doc, "host_id": "web-a"})  # its own


async def test_a_host_cannot_claim_another_hosts_user(users: dict[str, str]) -> None:
    with pytest.raises(BrokerError, match="user_id"):
        await publish_as(
            users["web-a"],
            "host.web-a",
            {"kind": "heartbeat", "host_id": "web-a"},
            user_id=host_user(users["agent_user"], "web-b"),
        )


async def test_a_reply_in_another_hosts_name_is_dropped(users: dict[str, str]) -> None:
    async with OpsClient([users["operator"]]) as client:
        connection = await aio_pika.connect(users["web-a"])
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            user = host_user(users["agent_user"], "web-a")
            # The forged reply first, then web-a's own on the same channel: once its own has
            # arrived, the forged one was handled before it.
            for host in ("web-b", "web-a"):
                body = {"kind": control.KIND_REPLY, "id": "c1", "host_id": host, "ok": True}
                await broker.publish(
                    channel,
                    topo.SYNC_EXCHANGE,
                    client.reply_key,
                    json.dumps(body).encode(),
                    correlation_id="c1",
                    user_id=user,
                )
        got: dict[str, list[dict[str, Any]]] = {}

        async def arrived() -> bool:
            got.update(await client.collect("c1", expected={"web-a"}, within=0.2))
            return "web-a" in got

        await eventually(arrived, what="web-a's own reply")
        assert set(got) == {"web-a"}, got  # the reply claiming web-b was dropped


def test_an_agent_runs_on_its_own_user(
    users: dict[str, str], rabbit: Rabbit, tmp_path: Path
) -> None:
    """The per-host user is enough for a whole agent: it joins, applies the publisher's
    snapshot, and answers `status`, every publish naming its own user."""
    broker = f"    urls: ['{users['web-a']}']\n"
    with publisher_and_agent(tmp_path, "web-a", GROUP, broker, users["publisher"]):
        shown = cli("status", "--amqp-url", users["operator"], "-o", "json", "--timeout", "10")
        assert shown.returncode == 0, shown.stderr
        assert [h["host_id"] for h in json.loads(shown.stdout)] == ["web-a"]
