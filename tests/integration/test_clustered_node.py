"""A clustered release's node on one host, through the real driver and the example release:
its long name (`hello@127.0.0.1`), its listen port range, and the cookie its config gives as
an age secret: the node runs with that cookie, the agent's own calls (erl_call `-name`) reach
it, and the plain cookie is on no command line and in no file but the node's 0400 cookie.
Rotating the cookie is a config change that needs a restart; after it the node has the new
one. (Nodes on several hosts forming one cluster need hosts of their own: network
namespaces, the next step of docs/clustering.md.)"""

from __future__ import annotations

import secrets as pysecrets
from dataclasses import replace
from pathlib import Path

import pytest

from erel_sync.adapters import age
from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.adapters.releases.meta import cookie_path, next_cookie_path
from erel_sync.core.erlterm import Atom
from erel_sync.core.rpccodec import RpcStatus
from erel_sync.dev.probes import free_port
from erel_sync.model import secrets
from erel_sync.model.specs import DistributionMode, DistributionSpec, ReleaseSpec, freeze
from tests.integration.conftest import ReleaseEnv, kill_release_processes

pytestmark = pytest.mark.integration


def clustered(spec: ReleaseSpec, key: age.x25519.Identity, cookie: str, port: int) -> ReleaseSpec:
    to = [age.recipient_of(key)]
    node = secrets.secret_node(age.encrypt(secrets.plain_json(cookie), to), to)
    dist = DistributionSpec(DistributionMode.CLUSTERED, freeze(node), (port, port + 5))
    return replace(spec, distribution=dist)


async def cookie_of(driver: ReleaseDriver) -> object:
    outcome = await driver.rpc.call(
        driver.node("hello"), "erlang", "get_cookie", (), within=5.0, envelope=False
    )
    assert outcome.status is RpcStatus.OK, outcome
    return outcome.value


def holders(root: Path, text: str, allowed: Path) -> list[str]:
    found = [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and p != allowed and text.encode() in p.read_bytes()
    ]
    for pid in nodeproc.node_pids(root / "releases" / "hello"):
        if text in " ".join(nodeproc.cmdline(pid) or []):
            found.append(f"pid {pid}")
    return found


async def test_a_clustered_node_has_a_long_name_and_the_shared_cookie(
    release_env: ReleaseEnv, tmp_path: Path
) -> None:
    key = age.identity(tmp_path / "state")
    driver = ReleaseDriver(
        DriverSettings(
            releases_dir=tmp_path / "releases", cache_dir=release_env.cache_dir,
            host_id=release_env.host_id, cluster_host="127.0.0.1", decrypt=age.Decrypt(key),
        )
    )  # fmt: skip
    root = tmp_path / "releases" / "hello"
    first, second = (f"c-{pysecrets.token_hex(16)}" for _ in range(2))
    port = free_port()
    spec = clustered(release_env.spec(), key, first, port)
    try:
        await driver.install(spec, "0.1.0", spec.config)
        assert (await driver.start("hello")).observed.running
        assert driver.node("hello").name == "hello@127.0.0.1"
        vm_args = (root / "releases" / "0.1.0" / "vm.args").read_text()
        assert "-name hello@127.0.0.1" in vm_args
        assert f"inet_dist_listen_min {port} inet_dist_listen_max {port + 5}" in vm_args
        assert "inet_dist_use_interface" not in vm_args  # reachable from other hosts
        assert await cookie_of(driver) == Atom(first)
        assert cookie_path(root).stat().st_mode & 0o777 == 0o400
        assert not next_cookie_path(root).exists()
        assert holders(tmp_path, first, cookie_path(root)) == []

        rotated = clustered(release_env.spec(), key, second, port)
        assert await driver.reconfigure(rotated, rotated.config) is True  # a restart must
        assert await cookie_of(driver) == Atom(first)  # until it restarts
        await driver.restart("hello")
        assert await cookie_of(driver) == Atom(second)
        assert holders(tmp_path, second, cookie_path(root)) == []
        assert holders(tmp_path, first, cookie_path(root)) == []
    finally:
        kill_release_processes([root])
