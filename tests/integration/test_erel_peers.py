"""The `erel` app's cluster formation over the agent's RPC path (erl_call, as the driver makes
it), on the real example release: `erel_rpc:set_peers/1` takes a base64 JSON list of node names
and `erel_rpc:peers/0` answers expected vs connected (docs/erel.md). The node is a private one
(short name, loopback): its peers are unreachable, so they stay `missing`, and the node keeps
answering while erel keeps trying them."""

from __future__ import annotations

import base64
import json

import pytest

from erel_sync.core.rpccodec import RpcStatus
from tests.integration.conftest import ReleaseEnv

pytestmark = pytest.mark.integration


async def rpc(env: ReleaseEnv, fun: str, *args: str) -> object:
    outcome = await env.driver.rpc.call(
        env.driver.node("hello"), "erel_rpc", fun, args, within=5.0, envelope=True
    )
    assert outcome.status is RpcStatus.OK, outcome
    return outcome.value


async def test_set_peers_and_peers_over_erl_call(release_env: ReleaseEnv) -> None:
    env = release_env
    spec = env.spec()
    await env.driver.install(spec, "0.1.0")
    assert (await env.driver.start("hello")).observed.running
    assert await rpc(env, "peers") == {"expected": [], "connected": [], "missing": []}
    me = env.driver.node("hello").name
    wanted = ["hello@peer-a.invalid", "hello@peer-b.invalid", me]
    payload = base64.b64encode(json.dumps(wanted).encode()).decode()
    answer = await rpc(env, "set_peers", payload)
    expected = ["hello@peer-a.invalid", "hello@peer-b.invalid"]  # itself left out
    assert answer == {"expected": expected, "connected": [], "missing": expected}
    assert await rpc(env, "peers") == answer
    refused = await env.driver.rpc.call(
        env.driver.node("hello"), "erel_rpc", "set_peers",
        (base64.b64encode(b'["no-host"]').decode(),), within=5.0, envelope=True,
    )  # fmt: skip
    assert refused.status is not RpcStatus.OK and "node names" in str(refused.error)
    assert (await env.driver.stop("hello")).observed.running is False
