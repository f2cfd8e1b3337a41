"""The broker vhost setting, honoured everywhere (model.brokerurl): on a vhost other than `/`,
made by `erel-sync broker setup --vhost` from a bare URL, the publisher started with `--vhost`,
an agent whose settings say `broker: {urls: [<bare URL>], vhost: <vhost>}` and the CLI with
`--vhost` all meet, each logged in as its own user (publisher, agent, operator). A URL naming
another vhost than the setting is refused with exit 2 by every command, before it connects.

Real processes (`DevCluster`: publisher and agent as `python -m erel_sync` processes), the
session RabbitMQ node and the example `hello` release.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from erel_sync.adapters import store
from erel_sync.adapters.broker.setup import BrokerSetupSpec, setup_broker
from erel_sync.cli.broker import app as broker_app
from erel_sync.cli.main import build
from erel_sync.core.snapshot import generate_key
from erel_sync.dev.cluster import DevHost, git
from erel_sync.dev.rabbitnode import SERVER_BIN_DIR
from erel_sync.model.brokerurl import BrokerUrlError
from tests.cli import erel_sync
from tests.e2e.harness import E2ECluster, wait_for
from tests.e2e.test_gitops import group, release
from tests.rabbit import Rabbit, setup_spec

FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0",)),
    "groups/web.yaml": group("web", "hosts: ['web-*']", {"hello": "0.1.0"}),
}
HOST = DevHost("web-1", {"role": "web"})


def bare_url(rabbit: Rabbit, user: str, password: str) -> str:
    """The session broker's address with these credentials and no vhost path."""
    parts = urlsplit(rabbit.url_for("x", user, password))
    return urlunsplit(parts._replace(path=""))


class VhostCluster(E2ECluster):
    """A DevCluster whose processes get bare URLs: the vhost only through the setting/flag."""

    vhost = ""
    publisher_url = ""
    agent_url = ""

    def agent_settings(self, host: DevHost) -> Path:
        path = super().agent_settings(host)
        text, n = re.subn(
            r"(?m)^  broker: .*$",
            f'  broker: {{urls: ["{self.agent_url}"], vhost: "{self.vhost}", heartbeat: 5s}}',
            path.read_text(),
        )
        assert n == 1, "DevCluster.agent_settings wrote no broker line"
        store.write_atomic(path, text.encode(), mode=0o644)
        return path

    def _spawn(self, name: str, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        if name == "publisher":
            at = args.index("--amqp-url")
            args = [*args[:at], "--amqp-url", self.publisher_url, *args[at + 2 :]]
            args += ["--vhost", self.vhost]
        super()._spawn(name, args, prefix)


@pytest.fixture(scope="module")
def setup(rabbit: Rabbit) -> Iterator[tuple[BrokerSetupSpec, dict[str, str]]]:
    """`broker setup` from a bare URL and `--vhost`: users, permissions and topology there."""
    spec = setup_spec("vh")
    admin = bare_url(rabbit, rabbit.user, "unused")
    try:
        if rabbit.node is None:
            setup_broker(spec, rabbit.ctl, admin, echo=lambda _: None)
        else:
            result = CliRunner().invoke(
                broker_app,
                [
                    *("setup", "--amqp-url", admin, "--vhost", spec.vhost),
                    *("--publisher-user", spec.publisher_user, "--agent-user", spec.agent_user),
                    *("--operator-user", str(spec.operator_user)),
                    *("--node", rabbit.node.node_name),
                    *("--rabbitmqctl", str(SERVER_BIN_DIR / "rabbitmqctl")),
                ],
                env={
                    **rabbit.node.env(),
                    "EREL_PUBLISHER_PASSWORD": spec.publisher_password,
                    "EREL_AGENT_PASSWORD": spec.agent_password,
                    "EREL_OPERATOR_PASSWORD": spec.operator_password,
                    "EREL_AMQP_VHOST": None,
                },
            )
            assert result.exit_code == 0, result.output
            assert f"add_vhost {spec.vhost}" in result.output
        yield (
            spec,
            {
                "publisher": bare_url(rabbit, spec.publisher_user, spec.publisher_password),
                "agent": bare_url(rabbit, spec.agent_user, spec.agent_password),
                "operator": bare_url(rabbit, str(spec.operator_user), spec.operator_password),
            },
        )
    finally:
        rabbit.delete_vhost(spec.vhost)
        for user in (spec.publisher_user, spec.agent_user, str(spec.operator_user)):
            rabbit.delete_user(user)


@pytest.fixture(scope="module")
def cluster(
    setup: tuple[BrokerSetupSpec, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VhostCluster]:
    spec, urls = setup
    c = VhostCluster(
        tmp_path_factory.mktemp("vhost"),
        hosts=(HOST,),
        amqp_url=urls["operator"],
        reconcile_interval="1s",
        heartbeat_interval="500ms",
    )
    c.vhost, c.publisher_url, c.agent_url = spec.vhost, urls["publisher"], urls["agent"]
    try:
        c.prepare(files=FILES)
        c.start()
        yield c
    finally:
        c.stop()


def cli(c: VhostCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return erel_sync(*args, "--amqp-url", c.url, "--vhost", c.vhost, clean=True, timeout=timeout)


def running(c: VhostCluster, name: str) -> bool:
    obs = c.observe(HOST.host_id).get(name)
    return bool(obs and obs.running)


def test_agent_and_publisher_meet_on_the_vhost_setting(cluster: VhostCluster) -> None:
    settings = (cluster.host_dir(HOST.host_id) / "agent.yaml").read_text()
    assert f'vhost: "{cluster.vhost}"' in settings and f'["{cluster.agent_url}"]' in settings
    cluster.wait_converged([HOST.host_id], seq=1, timeout=90)
    assert running(cluster, "hello")


def test_cli_status_wait_and_a_remote_command_with_vhost(cluster: VhostCluster) -> None:
    cluster.wait_converged([HOST.host_id], seq=1, timeout=90)
    # As the operator user: presence read (with its marker), status query, replies.
    out = cli(cluster, "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    assert [e["host_id"] for e in entries] == [HOST.host_id]
    # The revisions stream and heartbeats, as the operator user.
    head = git(cluster.repo, "rev-parse", "HEAD")
    out = cli(cluster, "wait", "--revision", head, "--timeout", "60s")
    assert out.returncode == 0, out.stdout + out.stderr
    before = cluster.vm_pid(HOST.host_id, "hello")
    out = cli(
        cluster, "restart", "hello", "--host", HOST.host_id, "--key", str(cluster.operator_key)
    )
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(
        "hello restarted with a new VM",
        lambda: running(cluster, "hello") and cluster.vm_pid(HOST.host_id, "hello") != before,
    )


# -- conflicts: refused before connecting, exit 2 ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["publisher", "--repo", ".", "--key", "k.pem"],
        ["status"],
        ["members"],
        ["wait", "--revision", "abc1234"],
        ["stop", "hello", "--host", "h1", "--key", "k.pem"],
    ],
    ids=lambda a: a[0],
)
def test_every_command_refuses_a_url_naming_another_vhost(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store.write_atomic(tmp_path / "k.pem", generate_key()[0])  # a real key: only the URL is wrong
    url = "amqp://u:s3cret@127.0.0.1:1/erel"
    result = CliRunner().invoke(
        build(), [*args, "--amqp-url", url, "--vhost", "other"], env={"EREL_AMQP_VHOST": None}
    )
    assert result.exit_code == 2, result.output
    assert "VhostMismatch" in result.output and "'erel'" in result.output
    assert "s3cret" not in result.output


def test_agent_refuses_a_flag_url_naming_another_vhost_than_its_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "apiVersion: erel/v1\nkind: AgentSettings\nmetadata: {name: h1}\n"
        "spec:\n  host_id: h1\n  broker: {urls: ['amqp://127.0.0.1:1'], vhost: erel}\n"
        "  trusted_keys: [{id: k, public_key: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='}]\n"
        f"  state_dir: {tmp_path / 'state'}\n"
    )
    # A process of its own: an agent that wrongly accepted the settings would run until killed.
    url = "amqp://u:s3cret@127.0.0.1:1/other"
    out = erel_sync("agent", "--config", str(config), "--amqp-url", url, clean=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "names vhost 'other' but the vhost setting is 'erel'" in out.stderr
    assert "s3cret" not in out.stderr


def test_setup_broker_refuses_a_url_naming_another_vhost_before_any_step() -> None:
    def ctl(*args: str, stdin: str | None = None) -> str:
        raise AssertionError(f"rabbitmqctl ran: {args}")

    spec = BrokerSetupSpec("erel", "pub", "pw1", "agent", "pw2")
    with pytest.raises(BrokerUrlError) as err:
        setup_broker(spec, ctl, "amqp://admin:s3cret@broker:5672/other")
    assert err.value.reason == "VhostMismatch" and "s3cret" not in str(err.value)


VHOST_ROOT = ("--vhost", "/", "--timeout", "2")


def test_a_vhost_the_user_may_not_use_is_named_not_called_unreachable(
    setup: tuple[BrokerSetupSpec, dict[str, str]],
) -> None:
    spec, urls = setup
    out = erel_sync("status", "--amqp-url", urls["operator"], *VHOST_ROOT, clean=True)
    assert out.returncode == 4, out.stderr
    assert "the broker refused vhost '/': no such vhost, or no permissions there" in out.stderr
    assert spec.operator_password not in out.stderr
