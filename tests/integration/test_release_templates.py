"""Release artifacts decide nothing about the node: real releases through the real driver.

- `templated` is built with rebar3's `vm_args_src` / `sys_config_src` (relx renders
  `${VAR}` templates at boot): it must run under the agent's node name and cookie, with the
  Release config's env, whatever the agent's own environment holds.
- Tarballs repacked from the real examples carry what relx's start script would read instead of
  the agent's files (a root-level `vm.args` / `sys.config`, `*.orig`, `*.src`, also in a
  version that arrives by a hot or a restart upgrade), or the agent's private cookie.

Every wait is the driver's own (a condition polled against a deadline); nodes are killed by PID
at teardown (fixture `release_env`).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.meta import cookie_path, home_dir, load_meta, private_dir
from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.rpccodec import RpcStatus
from erel_sync.core.upgrade import UpgradePath
from erel_sync.model.specs import (
    Artifact,
    ReleaseConfig,
    ReleaseSpec,
    ReleaseVersionSpec,
    UpgradeMode,
    freeze,
)
from tests.integration.conftest import ReleaseEnv

pytestmark = pytest.mark.integration

TEMPLATED = ReleaseConfig(
    sys_config=freeze({"templated": {"greeting": "from git"}}), vm_args=freeze({"+K": "true"})
)
HELLO = ReleaseConfig(sys_config=freeze({"hello": {"greeting": "from git"}}))


def repack(src: Path, dest: Path, extra: dict[str, bytes]) -> Path:
    """`src` (a real relx tarball) with `extra` members appended."""
    with tarfile.open(src, "r:gz") as old, tarfile.open(dest, "w:gz") as new:
        for member in old:
            new.addfile(member, old.extractfile(member) if member.isreg() else None)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            new.addfile(info, io.BytesIO(data))
    return dest


def artifact(path: Path) -> Artifact:
    data = path.read_bytes()
    return Artifact(path.as_uri(), hashlib.sha256(data).hexdigest(), len(data))


def with_artifact(spec: ReleaseSpec, version: str, tarball: Path) -> ReleaseSpec:
    versions = tuple(
        ReleaseVersionSpec(v.version, artifact(tarball)) if v.version == version else v
        for v in spec.versions
    )
    return replace(spec, versions=versions)


async def get(env: ReleaseEnv, name: str, module: str) -> dict[str, Any]:
    outcome = await env.driver.rpc.call(env.driver.node(name), module, "get", (), within=5.0)
    assert outcome.status is RpcStatus.OK, outcome
    assert isinstance(outcome.value, dict)
    return outcome.value


def vm_pid(root: Path) -> int:
    meta = load_meta(root)
    assert meta is not None and meta.os_pid is not None
    return meta.os_pid


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def left_over(root: Path, version: str) -> list[str]:
    """Files that would displace the agent's config, still in the root."""
    names = [f"{f}{s}" for f in ("vm.args", "sys.config") for s in ("", ".src", ".orig")]
    names += [
        f"releases/{version}/{f}{s}" for f in ("vm.args", "sys.config") for s in (".src", ".orig")
    ]
    return [n for n in names if os.path.lexists(root / n)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ------------------------------------------------------------------------------------ tests


async def test_a_templated_release_runs_with_the_agent_s_name_cookie_and_config(
    release_env: ReleaseEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = release_env
    # What relx's start script would use if it reached the node: none of it may.
    for var, value in {
        "NODE_NAME": f"hijacked_{uuid.uuid4().hex[:8]}",
        "COOKIE": "TEMPLATECOOKIE",
        "GREETING": "from the environment",
        "RELX_REPLACE_OS_VARS": "true",
        "RELX_COOKIE": "TEMPLATECOOKIE",
        "VMARGS_PATH": "/nonexistent/vm.args",
        "RELX_CONFIG_PATH": "/nonexistent/sys.config",
    }.items():
        monkeypatch.setenv(var, value)
    spec = replace(env.spec("templated"), config=TEMPLATED)
    root = env.releases_dir / "templated"

    await env.driver.install(spec, "0.1.0")
    rendered = root / "releases" / "0.1.0"
    assert left_over(root, "0.1.0") == []
    assert (rendered / "vm.args").is_file() and (rendered / "sys.config").is_file()
    # A root installed by an older agent still holds the templates: the boot removes them.
    with tarfile.open(env.examples.get("templated", "0.1.0").path) as tar:
        for name in ("vm.args.src", "sys.config.src"):
            source = tar.extractfile(f"releases/0.1.0/{name}")
            assert source is not None
            (rendered / name).write_bytes(source.read())

    obs = (await env.driver.start("templated")).observed
    assert obs.running and obs.current == "0.1.0"
    assert left_over(root, "0.1.0") == []
    node = env.driver.node("templated").name
    state = await get(env, "templated", "templated")
    assert state["node"] == node
    assert state["greeting"] == "from git"
    assert state["source"] == "app"  # the .app default: nothing came from sys.config.src
    assert state["config_files"] == [str(rendered / "sys.config")]

    cookie = cookie_path(root).read_text()
    outcome = await env.driver.rpc.call(
        env.driver.node("templated"), "erlang", "get_cookie", (), within=5.0, envelope=False
    )
    assert outcome.value == Atom(cookie)
    pid = vm_pid(root)
    argv = " ".join(nodeproc.cmdline(pid) or [])
    assert "-setcookie" not in argv and cookie not in argv
    seen = environ(pid)
    assert seen["VMARGS_PATH"] == str(rendered / "vm.args")
    assert seen["RELX_CONFIG_PATH"] == str(rendered / "sys.config")
    assert not {"RELX_REPLACE_OS_VARS", "RELX_COOKIE", "NODE_NAME", "GREETING"} & set(seen)

    # A config change applies live, and a restart boots with it under the same name.
    changed = ReleaseConfig(
        sys_config=freeze({"templated": {"greeting": "changed"}}), vm_args=TEMPLATED.vm_args
    )
    assert await env.driver.reconfigure(spec, changed) is False
    assert (await get(env, "templated", "templated"))["greeting"] == "changed"
    obs = (await env.driver.restart("templated")).observed
    assert obs.running and vm_pid(root) != pid
    state = await get(env, "templated", "templated")
    assert (state["node"], state["greeting"], state["source"]) == (node, "changed", "app")


async def test_a_tarball_shipping_the_agent_s_cookie_is_refused_before_anything_is_written(
    release_env: ReleaseEnv, tmp_path: Path
) -> None:
    env = release_env
    real = env.examples.get("templated", "0.1.0").path
    evil = repack(real, tmp_path / "evil.tar.gz", {".erel-sync/home/.erlang.cookie": b"KNOWN"})
    spec = replace(with_artifact(env.spec("templated"), "0.1.0", evil), config=TEMPLATED)

    with pytest.raises(reasons.DriverError) as info:
        await env.driver.install(spec, "0.1.0")
    assert info.value.reason == reasons.UnsafeArchive
    assert ".erel-sync" in info.value.message
    assert not env.releases_dir.exists() or list(env.releases_dir.iterdir()) == []

    # The real tarball: the node's identity is private, whatever modes the files drift to.
    await env.driver.install(replace(env.spec("templated"), config=TEMPLATED), "0.1.0")
    root = env.releases_dir / "templated"
    assert (mode(private_dir(root)), mode(home_dir(root)), mode(cookie_path(root))) == (
        0o700,
        0o700,
        0o400,
    )
    assert cookie_path(root).read_text() != "KNOWN"
    home_dir(root).chmod(0o755)
    cookie_path(root).chmod(0o644)
    assert (await env.driver.start("templated")).observed.running
    assert (mode(home_dir(root)), mode(cookie_path(root))) == (0o700, 0o400)


@pytest.mark.parametrize(
    ("shipped", "content"),
    [
        ("vm.args", b"-sname hijacked_%s\n"),
        ("releases/0.1.0/vm.args.orig", b"-sname hijacked_%s\n"),
        ("sys.config", b'[{hello, [{greeting, "shipped %s"}]}].\n'),
        ("releases/0.1.0/sys.config.orig", b'[{hello, [{greeting, "shipped %s"}]}].\n'),
    ],
    ids=["root-vm.args", "vm.args.orig", "root-sys.config", "sys.config.orig"],
)
async def test_config_files_shipped_beside_the_agent_s_do_not_reach_the_node(
    release_env: ReleaseEnv, tmp_path: Path, shipped: str, content: bytes
) -> None:
    env = release_env
    unique = uuid.uuid4().hex[:8].encode()
    tarball = repack(
        env.examples.get("hello", "0.1.0").path,
        tmp_path / "hello-0.1.0.tar.gz",
        {shipped: content.replace(b"%s", unique)},
    )
    spec = replace(with_artifact(env.spec("hello"), "0.1.0", tarball), config=HELLO)
    root = env.releases_dir / "hello"

    await env.driver.install(spec, "0.1.0")
    obs = (await env.driver.start("hello")).observed
    assert obs.running and obs.node == env.driver.node("hello").name
    state = await get(env, "hello", "hello_server")
    assert state["greeting"] == "from git"
    assert left_over(root, "0.1.0") == []


@pytest.mark.parametrize("path", [UpgradePath.HOT, UpgradePath.RESTART])
async def test_templates_in_an_upgraded_version_are_not_used(
    release_env: ReleaseEnv, tmp_path: Path, path: UpgradePath
) -> None:
    env = release_env
    unique = uuid.uuid4().hex[:8]
    templates = {
        # Unpacked by release_handler inside the node on the hot path, by the agent otherwise.
        "vm.args": f"-sname hijacked_root_{unique}\n".encode(),
        "releases/0.2.0/vm.args.src": f"-sname ${{NODE_NAME:-hijacked_{unique}}}\n".encode(),
        "releases/0.2.0/sys.config.src": b'[{hello, [{greeting, "${GREETING:-template}"}]}].\n',
    }
    tarball = repack(
        env.examples.get("hello", "0.2.0").path, tmp_path / "hello-0.2.0.tar.gz", templates
    )
    mode_ = UpgradeMode.HOT if path is UpgradePath.HOT else UpgradeMode.RESTART
    spec = replace(with_artifact(env.spec("hello", mode=mode_), "0.2.0", tarball), config=HELLO)
    root = env.releases_dir / "hello"
    await env.driver.install(spec, "0.1.0")
    assert (await env.driver.start("hello")).observed.running

    result = await env.driver.upgrade(spec, "0.2.0")
    assert result.path is path
    state = await get(env, "hello", "hello_server")
    assert (state["release_vsn"], state["greeting"]) == ("0.2.0", "from git")

    # The next boot of the new version runs with the agent's files too.
    obs = (await env.driver.restart("hello")).observed
    assert (obs.running, obs.current, obs.permanent) == (True, "0.2.0", "0.2.0")
    assert obs.node == env.driver.node("hello").name
    state = await get(env, "hello", "hello_server")
    assert (state["release_vsn"], state["greeting"]) == ("0.2.0", "from git")
    assert left_over(root, "0.2.0") == []
