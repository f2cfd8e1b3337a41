"""The release driver on the REAL example releases (hello 0.1.0 -> 0.2.0 -> 0.3.0, ticker).

Every wait is a condition polled against a deadline. Each test has its own releases dir and
host id (fixture `release_env`), and its nodes are killed by PID at teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import stat
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.meta import cookie_path, load_meta, save_meta
from erel_sync.core import reasons
from erel_sync.core.rpccodec import RpcStatus
from erel_sync.core.upgrade import RecoveryStep, UpgradePath
from erel_sync.model.specs import (
    Artifact,
    ReleaseConfig,
    ReleaseSpec,
    ReleaseVersionSpec,
    UpgradeMode,
    freeze,
)
from tests.integration.conftest import ReleaseEnv
from tests.waiting import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def call(env: ReleaseEnv, name: str, module: str, fun: str, *args: str) -> Any:
    outcome = await env.driver.rpc.call(
        env.driver.node(name), module, fun, args, within=5.0, envelope=fun == "get"
    )
    assert outcome.status is RpcStatus.OK, outcome
    return outcome.value


async def started(env: ReleaseEnv, spec: ReleaseSpec, version: str = "0.1.0") -> None:
    await env.driver.install(spec, version)
    obs = (await env.driver.start(spec.name)).observed
    assert obs.running and obs.current == version


def vm_pid(env: ReleaseEnv, name: str) -> int:
    meta = load_meta(env.releases_dir / name)
    assert meta is not None and meta.os_pid is not None
    return meta.os_pid


# ------------------------------------------------------------------------------------ tests


async def test_install_and_start_gives_a_running_healthy_release(release_env: ReleaseEnv) -> None:
    env = release_env
    spec = env.spec()
    spec = ReleaseSpec(
        name=spec.name,
        versions=spec.versions,
        health=spec.health,
        config=ReleaseConfig(
            sys_config=freeze({"hello": {"greeting": 'hi "there"\n'}}),
            vm_args=freeze({"+K": "true"}),
        ),
    )
    installed = (await env.driver.install(spec, "0.1.0")).observed
    assert installed.installed and not installed.running
    assert installed.reason == reasons.Stopped

    t0 = time.monotonic()
    obs = (await env.driver.start("hello")).observed
    assert time.monotonic() - t0 < 5
    assert obs.running and obs.reachable
    assert (obs.current, obs.permanent) == ("0.1.0", "0.1.0")
    assert obs.node == env.driver.node("hello").name

    healthy = await env.driver.observe("hello", health=True)
    assert healthy.healthy is True and healthy.reason == reasons.Healthy
    state = await call(env, "hello", "hello_server", "get")
    assert state["greeting"] == 'hi "there"\n'  # sys.config escaping held

    # The cookie is a private file, and on no process's command line.
    root = env.releases_dir / "hello"
    cookie = cookie_path(root)
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400
    secret = cookie.read_text()
    for pid in nodeproc.node_pids(root):
        assert secret not in " ".join(nodeproc.cmdline(pid) or [])
    assert "setcookie" not in (root / "releases" / "0.1.0" / "vm.args").read_text()

    # start is idempotent
    again = (await env.driver.start("hello")).observed
    assert again.running and vm_pid(env, "hello") in nodeproc.node_pids(root)


async def test_hot_upgrade_converts_state_then_bad_version_rolls_back(
    release_env: ReleaseEnv,
) -> None:
    env = release_env
    spec = env.spec()
    await started(env, spec)
    pid = vm_pid(env, "hello")
    for _ in range(3):
        await call(env, "hello", "hello_server", "bump")
    await call(env, "hello", "hello_server", "put", "colour", "blue")
    before = await call(env, "hello", "hello_server", "get")
    assert (before["shape"], before["count"]) == ("v1", 3)

    result = await env.driver.upgrade(spec, "0.2.0")
    assert result.path is UpgradePath.HOT
    after = await call(env, "hello", "hello_server", "get")
    assert after["shape"] == "v2"
    assert after["release_vsn"] == "0.2.0"
    assert after["count"] == 3 and after["pairs"] == {"colour": "blue"}
    assert after["count_at_upgrade"] == 3 and after["upgraded_from_module_vsn"] == 1
    obs = await env.driver.observe("hello", health=True)
    assert (obs.current, obs.permanent, obs.healthy) == ("0.2.0", "0.2.0", True)
    assert vm_pid(env, "hello") == pid  # same VM: no restart

    with pytest.raises(reasons.DriverError) as info:
        await env.driver.upgrade(spec, "0.3.0")
    assert info.value.reason == reasons.RolledBack
    assert info.value.cause == reasons.HealthCheckFailed
    obs = await env.driver.observe("hello", health=True)
    assert (obs.running, obs.current, obs.permanent, obs.healthy) == (True, "0.2.0", "0.2.0", True)
    assert obs.pending is None
    state = await call(env, "hello", "hello_server", "get")
    assert state["count"] == 3 and state["release_vsn"] == "0.2.0"
    assert nodeproc.pid_belongs(pid, env.releases_dir / "hello")


async def test_restart_upgrade_path_and_its_fallback(release_env: ReleaseEnv) -> None:
    env = release_env
    spec = env.with_health(env.spec(mode=UpgradeMode.RESTART), start_timeout=2.0)
    await started(env, spec)
    old_pid = vm_pid(env, "hello")

    result = await env.driver.upgrade(spec, "0.2.0")
    assert result.path is UpgradePath.RESTART
    obs = await env.driver.observe("hello", health=True)
    assert (obs.current, obs.permanent, obs.healthy) == ("0.2.0", "0.2.0", True)
    new_pid = vm_pid(env, "hello")
    assert new_pid != old_pid

    with pytest.raises(reasons.DriverError) as info:
        await env.driver.upgrade(spec, "0.3.0")
    assert info.value.reason == reasons.RolledBack
    assert info.value.cause == reasons.HealthCheckFailed
    obs = await env.driver.observe("hello", health=True)
    assert (obs.current, obs.permanent, obs.healthy) == ("0.2.0", "0.2.0", True)
    releases = (env.releases_dir / "hello" / "releases" / "RELEASES").read_text()
    assert "tmp_current" not in releases

    # a plain restart boots the permanent version
    obs = (await env.driver.restart("hello")).observed
    assert (obs.current, obs.permanent) == ("0.2.0", "0.2.0")


async def test_upgrade_of_a_stopped_release_and_auto_without_relup(
    release_env: ReleaseEnv,
) -> None:
    env = release_env
    spec = env.spec()
    await env.driver.install(spec, "0.1.0")
    # No node runs: auto takes the restart path; versions are unpacked offline.
    result = await env.driver.upgrade(spec, "0.2.0")
    assert result.path is UpgradePath.RESTART
    obs = await env.driver.observe("hello")
    assert (obs.running, obs.current, obs.permanent) == (True, "0.2.0", "0.2.0")
    # hot is refused when there is no relup from the running version
    downgrade = env.spec(mode=UpgradeMode.HOT)
    with pytest.raises(reasons.StalledError) as info:
        await env.driver.upgrade(downgrade, "0.1.0")
    assert info.value.reason == reasons.UpgradeImpossible
    assert (await env.driver.observe("hello")).current == "0.2.0"


async def test_stop_start_restart(release_env: ReleaseEnv) -> None:
    env = release_env
    spec = env.spec()
    await started(env, spec)
    root = env.releases_dir / "hello"
    first = vm_pid(env, "hello")

    obs = (await env.driver.stop("hello")).observed
    assert not obs.running and obs.reason == reasons.Stopped
    assert nodeproc.node_pids(root) == []
    unreachable = await env.driver.rpc.call(
        env.driver.node("hello"), "erlang", "node", (), within=2.0, envelope=False
    )
    assert unreachable.status is RpcStatus.UNREACHABLE
    assert (await env.driver.stop("hello")).observed.reason == reasons.Stopped  # idempotent

    obs = (await env.driver.start("hello")).observed
    assert obs.running and obs.current == "0.1.0"
    second = vm_pid(env, "hello")
    assert second != first

    obs = (await env.driver.restart("hello")).observed
    assert obs.running
    assert vm_pid(env, "hello") not in (first, second)


async def test_delete_leaves_nothing_and_only_deletes_its_own(release_env: ReleaseEnv) -> None:
    env = release_env
    spec = env.spec()
    await started(env, spec)
    root = env.releases_dir / "hello"
    node = env.driver.node("hello").name.split("@")[0]

    await env.driver.delete("hello")
    assert not root.exists()
    assert list(env.releases_dir.iterdir()) == []
    assert nodeproc.node_pids(root) == []
    names = await asyncio.create_subprocess_exec(
        "epmd", "-names", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    listing, _ = await names.communicate()
    assert node.encode() not in listing
    with pytest.raises(reasons.StalledError) as info:
        await env.driver.delete("hello")
    assert info.value.reason == reasons.NotInstalled

    # a directory it did not install, and a release of another host id, are refused untouched
    foreign = env.releases_dir / "ticker"
    foreign.mkdir()
    (foreign / "precious").write_text("keep")
    with pytest.raises(reasons.StalledError) as info:
        await env.driver.delete("ticker")
    assert info.value.reason == reasons.NotManaged
    assert (foreign / "precious").read_text() == "keep"

    await env.driver.install(spec, "0.1.0")
    meta = load_meta(root)
    assert meta is not None
    meta.host_id = "someone-else"
    save_meta(root, meta)
    with pytest.raises(reasons.StalledError) as info:
        await env.driver.delete("hello")
    assert info.value.reason == reasons.NotManaged
    assert root.exists()


async def test_checksum_mismatch_and_tar_slip_are_refused_with_nothing_written(
    release_env: ReleaseEnv, tmp_path: Path
) -> None:
    env = release_env
    good = env.spec()
    wrong_sha = ReleaseSpec(
        name="hello",
        versions=tuple(
            ReleaseVersionSpec(v.version, Artifact(v.artifact.url, "0" * 64, v.artifact.size))
            for v in good.versions
        ),
    )
    with pytest.raises(reasons.DriverError) as info:
        await env.driver.install(wrong_sha, "0.1.0")
    assert info.value.reason == reasons.ChecksumMismatch
    assert not env.releases_dir.exists() or list(env.releases_dir.iterdir()) == []
    assert [p for p in env.cache_dir.rglob("*") if p.is_file()] == []

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in (("releases/0.1.0/hello.rel", b"{}."), ("../../slipped", b"x")):
            info_ = tarfile.TarInfo(name)
            info_.size = len(data)
            tar.addfile(info_, io.BytesIO(data))
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    slip = ReleaseSpec(
        name="hello", versions=(ReleaseVersionSpec("0.1.0", Artifact(evil.as_uri(), sha)),)
    )
    with pytest.raises(reasons.StalledError) as info:
        await env.driver.install(slip, "0.1.0")
    assert info.value.reason == reasons.UnsafeArchive
    assert not env.releases_dir.exists() or list(env.releases_dir.iterdir()) == []
    assert not (tmp_path.parent / "slipped").exists()
    assert not (tmp_path / "slipped").exists()


async def test_killed_release_is_observed_as_not_running(release_env: ReleaseEnv) -> None:
    env = release_env
    await started(env, env.spec())
    os.kill(vm_pid(env, "hello"), signal.SIGKILL)

    async def down() -> bool:
        obs = await env.driver.observe("hello")
        return not obs.running

    await eventually(down)
    obs = await env.driver.observe("hello")
    assert obs.reason == reasons.Stopped and obs.permanent == "0.1.0"
    # and it heals with a plain start
    assert (await env.driver.start("hello")).observed.running


AGENT = """
import asyncio, signal, sys
from pathlib import Path
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
driver = ReleaseDriver(DriverSettings(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
asyncio.run(driver.start("hello"))
print("started", flush=True)
signal.pause()  # the agent stand-in idles until the test SIGKILLs it
"""


async def test_agent_crash_does_not_stop_running_releases(release_env: ReleaseEnv) -> None:
    env = release_env
    await env.driver.install(env.spec(), "0.1.0")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT,
        str(env.releases_dir),
        str(env.cache_dir),
        env.host_id,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), 30)
        assert line.strip() == b"started"
    finally:
        agent.kill()  # SIGKILL, by the child's own pid
        await agent.wait()
    assert agent.returncode == -signal.SIGKILL
    obs = await env.driver.observe("hello", health=True)
    assert obs.running and obs.healthy
    assert (await call(env, "hello", "hello_server", "bump")) == 1


async def test_recover_commits_an_interrupted_hot_upgrade(release_env: ReleaseEnv) -> None:
    """An agent died between install and make_permanent: the next one finishes the step."""
    env = release_env
    spec = env.spec()
    await started(env, spec)
    root = env.releases_dir / "hello"
    await env.driver.install(spec, "0.2.0")  # unpacked through the running node
    answer = await env.driver.ops.erel(env.driver.node("hello"), "install", ["0.2.0"])
    assert answer["to"] == "0.2.0"
    meta = load_meta(root)
    assert meta is not None
    meta.pending = {"op": "upgrade", "path": "hot", "from": "0.1.0", "to": "0.2.0"}
    save_meta(root, meta)
    obs = await env.driver.observe("hello")
    assert obs.reason == reasons.UpgradePending and obs.permanent == "0.1.0"

    assert await env.driver.recover("hello") is RecoveryStep.PROBE_AND_COMMIT
    obs = await env.driver.observe("hello")
    assert (obs.current, obs.permanent, obs.pending) == ("0.2.0", "0.2.0", None)


async def test_observe_all_and_reconfigure(release_env: ReleaseEnv) -> None:
    env = release_env
    hello = env.spec()
    await started(env, hello)
    await env.driver.install(env.spec("ticker"), "0.1.0")
    seen = await env.driver.observe_all()
    assert sorted(seen) == ["hello", "ticker"]
    assert seen["hello"].running and not seen["ticker"].running

    config = ReleaseConfig(sys_config=freeze({"hello": {"greeting": "bonjour"}}))
    assert await env.driver.reconfigure(hello, config) is False  # vm.args unchanged
    state = await call(env, "hello", "hello_server", "get")
    assert state["greeting"] == "bonjour"
    assert state["config_changes"] >= 1
