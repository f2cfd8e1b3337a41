"""Secrets end to end on a real broker, a real publisher and two in-process agents running the
real example release: a value of hello's `sys_config` is an age secret encrypted to one host.

That host's node reads the plain text (rendered into its 0600 sys.config, nowhere else); the
other host, not a recipient, reports `SecretUnavailable` for hello and installs nothing. Then
every byte the system wrote (state and release directories with the snapshots as the stream
delivered them and status.json, the publisher's state, the logs, every process's command line)
is searched for the plain text: only the rendered file
holds it. A commit that encrypts the secret to both hosts lets the second one run hello too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from erel_sync.adapters import age
from erel_sync.core.erlterm import Atom
from erel_sync.core.rpccodec import RpcStatus
from erel_sync.dev.examples import ExampleManifest
from erel_sync.model import secrets
from tests.configrepo import group_yaml, release_yaml
from tests.integration.conftest import kill_release_processes
from tests.integration.test_broker_faults import new_agent, running
from tests.integration.test_rollout_agent import Cluster, version
from tests.leaks import plain_text_leaks
from tests.waiting import eventually

pytestmark = pytest.mark.integration

PLAIN = f"plain-{uuid.uuid4().hex}"  # found nowhere but in the rendered sys.config


def secret_release(c: Cluster, to: list[str]) -> str:
    node = secrets.secret_node(age.encrypt(secrets.plain_json(PLAIN), to), to)
    value = str(node).replace("'", '"')  # a JSON flow mapping: YAML reads it as it is
    return c.release + f"  config:\n    sys_config:\n      hello:\n        greeting: {value}\n"


def released(agent: object, name: str = "hello") -> dict[str, object]:
    status = agent.reconciler.status  # type: ignore[attr-defined]
    if status is None:
        return {}
    return next((r.to_json() for r in status.releases if r.name == name), {})


def leaks(root: Path, rendered: Path) -> list[str]:
    """Every file under `root` but the rendered one, and every process's command line, that
    holds the plain text."""
    return plain_text_leaks(root, PLAIN, allowed=lambda p: p == rendered, proc_parts=("cmdline",))


async def test_only_a_recipient_reads_a_secret_and_its_plain_text_is_only_in_the_rendered_file(
    vhost: str, tmp_path: Path, examples: ExampleManifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = Cluster(tmp_path, vhost, examples)
    reader, outsider = c.hosts[0], c.hosts[1]
    keys = {h: age.identity(tmp_path / h / "state") for h in (reader, outsider)}
    recipient = {h: age.recipient_of(k) for h, k in keys.items()}
    c.repo.commit({"r.yaml": secret_release(c, [recipient[reader]])}, "a secret greeting")
    publisher = c.publisher(1.0)
    agents = [new_agent(tmp_path, vhost, publisher, h) for h in (reader, outsider)]
    try:
        async with running(publisher, *agents):
            one, two = agents
            await eventually(lambda: version(one) == "0.1.0", 90, what="the reader runs hello")
            await eventually(
                lambda: released(two).get("reason") == "SecretUnavailable",
                30, what="the outsider reports SecretUnavailable",
            )  # fmt: skip
            assert released(two)["state"] == "Failed" and not released(two)["installed"]
            assert "greeting" in str(released(two)["last_error"])  # where, never what
            assert two.reconciler.status is not None and not two.reconciler.status.converged

            outcome = await one.driver.rpc.call(  # type: ignore[attr-defined]
                one.driver.node("hello"),  # type: ignore[attr-defined]
                "application", "get_env", (Atom("hello"), Atom("greeting")),
                within=5.0, envelope=False,
            )  # fmt: skip
            assert outcome.status is RpcStatus.OK and PLAIN in str(outcome.value)

            rendered = next((tmp_path / reader / "releases" / "hello").rglob("sys.config"))
            assert PLAIN in rendered.read_text()
            assert rendered.stat().st_mode & 0o777 == 0o600
            assert await asyncio.to_thread(leaks, tmp_path, rendered) == []
            assert PLAIN not in caplog.text

            # Encrypted to both hosts: the outsider runs hello too.
            to = [recipient[reader], recipient[outsider]]
            c.repo.commit({"r.yaml": secret_release(c, to)}, "the secret for both hosts")
            await eventually(lambda: version(two) == "0.1.0", 120, what="the outsider runs hello")
            await eventually(lambda: version(one) == "0.1.0" and released(one)["state"] == "Ready")
    finally:
        await asyncio.to_thread(kill_release_processes, c.roots())


def cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erel_sync", *args],
        input=stdin, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_keygen_encrypt_and_rekey_through_the_cli(tmp_path: Path) -> None:
    """An operator's round: each host's recipient from `keygen --host`, a value encrypted to
    one host and the operator, then encrypted again (`rekey`) to add the second host."""
    hosts = {}
    for h in ("web-1", "web-2"):
        out = cli("keygen", "--host", "--state-dir", str(tmp_path / h), stdin="")
        assert out.returncode == 0, out.stderr
        hosts[h] = out.stdout.strip()
        assert secrets.RECIPIENT_RE.match(hosts[h])
    ops = age.identity(tmp_path / "ops")
    out = cli("secret", "encrypt", "--to", hosts["web-1"], "--to", age.recipient_of(ops),
              stdin=PLAIN)  # fmt: skip
    assert out.returncode == 0, out.stderr
    node = json.loads(out.stdout)
    assert PLAIN not in out.stdout and secrets.secret_problem(node) is None
    web1, web2 = (age.identity(tmp_path / h) for h in ("web-1", "web-2"))
    assert secrets.reveal(node, age.Decrypt(web1)) == PLAIN
    with pytest.raises(secrets.SecretUnavailable):
        secrets.reveal(node, age.Decrypt(web2))

    out = cli("secret", "rekey", "--identity", str(tmp_path / "ops" / age.IDENTITY_FILE),
              *("--to", hosts["web-1"], "--to", hosts["web-2"], "--to", age.recipient_of(ops)),
              stdin=json.dumps(node))  # fmt: skip
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert secrets.recipients(again) == (hosts["web-1"], hosts["web-2"], age.recipient_of(ops))
    assert secrets.reveal(again, age.Decrypt(web2)) == PLAIN

    refused = cli("secret", "rekey", "--identity", str(tmp_path / "web-2" / age.IDENTITY_FILE),
                  "--to", hosts["web-2"], stdin=json.dumps(node))  # fmt: skip
    assert refused.returncode == 2 and "not encrypted to this host" in refused.stderr
    assert PLAIN not in refused.stderr + refused.stdout
    bad = cli("secret", "encrypt", "--to", "bob", stdin=PLAIN)
    assert bad.returncode == 2 and "not an age recipient" in bad.stderr

    # The group's recipients, from the config directory.
    repo = tmp_path / "config"
    repo.mkdir()
    (repo / "r.yaml").write_text(release_yaml())
    listed = "".join(f"\n    {h}: {r}" for h, r in hosts.items())
    (repo / "g.yaml").write_text(
        group_yaml(hosts="[web-1, web-2]", extra=f"  recipients:{listed}\n")
    )
    out = cli("secret", "encrypt", "--group", "web", "--repo", str(repo), stdin=PLAIN)
    assert out.returncode == 0, out.stderr
    assert secrets.recipients(json.loads(out.stdout)) == (hosts["web-1"], hosts["web-2"])
    missing = cli("secret", "encrypt", "--group", "db", "--repo", str(repo), stdin=PLAIN)
    assert missing.returncode == 2 and "no valid group 'db'" in missing.stderr
