"""Node-level steps of the release driver: ask erel (`probe`: the one question per release and
tick), boot a version and wait until it is healthy, hold a probation, stop a node gracefully then
by force.

Called by `adapters.releases.driver` and `adapters.releases.upgrader`; split from the driver to
keep each module one idea. What an answer means is parsed in `core.facts`. Every wait
polls a condition against a deadline (no sleeps as synchronisation), and every failure becomes a
`DriverError` with a reason and a bounded output tail (the node's own log when it has one).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erel_sync.adapters.releases import files as release_files
from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.erlcall import NodeRef, NodeRpc, outcome_value
from erel_sync.adapters.releases.meta import create_private_dirs, home_dir, log_dir, pipe_dir
from erel_sync.core import facts, reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.facts import HealthAnswer, NodeAnswer
from erel_sync.core.nodeconfig import node_in_vm_args
from erel_sync.core.rpccodec import RpcOutcome, RpcStatus
from erel_sync.core.upgrade import probe_interval
from erel_sync.model.specs import HealthSpec

POLL = 0.02  # seconds between readiness polls: erl_call costs ~1.5 ms
SPAWN_GRACE = 1.0  # run_erl forks before the VM exists: only then can "no process" mean "died"


class NodeOps:
    def __init__(self, rpc: NodeRpc, *, rpc_timeout: float, long_timeout: float) -> None:
        self.rpc = rpc
        self.rpc_timeout = rpc_timeout
        self.long_timeout = long_timeout
        # Nodes whose erel lacks `observe`, with the version that lacked it: a node that runs
        # another version (hot upgrade, restart) may have a newer erel and is asked again.
        self._without_observe: dict[str, str | None] = {}

    # ------------------------------------------------------------------------------ erel

    async def erel_outcome(
        self, node: NodeRef, fun: str, args: Sequence[str | Atom] = (), *, within: float
    ) -> RpcOutcome:
        return await self.rpc.call(node, "erel_rpc", fun, args, within=within)

    async def erel(
        self,
        node: NodeRef,
        fun: str,
        args: Sequence[str | Atom] = (),
        *,
        within: float | None = None,
        failure: str = reasons.RpcFailed,
    ) -> Any:
        """The value of `erel_rpc:Fun(Args)`; an `ok:false` answer raises with `failure`."""
        outcome = await self.erel_outcome(node, fun, args, within=within or self.rpc_timeout)
        if outcome.status is RpcStatus.ERROR:
            raise reasons.driver_error(failure, f"erel_rpc:{fun}: {outcome.error}")
        return outcome_value(outcome, f"erel_rpc:{fun}")

    async def health(self, node: NodeRef, spec: HealthSpec) -> HealthAnswer:
        args = facts.health_args(spec.rpc)
        fun = "check" if args else "health"
        return facts.parse_health(await self.erel_outcome(node, fun, args, within=spec.timeout))

    async def probe(self, node: NodeRef, health: HealthSpec | None, *, within: float) -> NodeAnswer:
        """The observation's question: `status`, or with `health` one `observe` call (status
        and health together); `status` then `health` for a node whose erel has no `observe`."""
        first_miss = False
        if health is not None and node.name not in self._without_observe:
            args = facts.health_args(health.rpc)
            outcome = await self.erel_outcome(
                node, "observe", args, within=max(within, health.timeout)
            )
            if not facts.lacks_observe(outcome):
                return facts.parse_observe(outcome)
            first_miss = True
        outcome = await self.erel_outcome(node, "status", within=within)
        status = facts.parse_status(outcome)
        if health is None or status is None:
            return NodeAnswer(outcome, status)
        current = status.get("current")
        if first_miss:
            self._without_observe[node.name] = current
        elif self._without_observe.get(node.name, current) != current:
            del self._without_observe[node.name]  # asked with `observe` again next time
        return NodeAnswer(outcome, status, await self.health(node, health))

    def forget(self, node: NodeRef) -> None:
        """The node is gone for good (its release was deleted): drop what was learnt about it."""
        self._without_observe.pop(node.name, None)

    async def set_peers(self, node: NodeRef, nodes: list[str]) -> Any:
        """A clustered node's expected peers (`erel_rpc:set_peers`, docs/clustering.md); its
        answer is its peers then ({expected, connected, missing})."""
        payload = base64.b64encode(json.dumps(nodes).encode()).decode()
        return await self.erel(node, "set_peers", [payload])

    # ------------------------------------------------------------------------ boot / wait

    async def boot(self, root: Path, release: str, version: str) -> str | None:
        """Spawn the VM of `version` with the config files the agent rendered for it; returns
        the node name those files give it (the driver records it: a clustered release's is
        long). Callers boot only when no node of this root should run, so a VM still found
        here is the leftover of an interrupted step (an agent killed while that VM was
        booting): it would hold the node name, so it goes first."""
        if nodeproc.node_pids(root):
            await self.kill_now(root)
        create_private_dirs(root)  # home 0700, cookie 0400: re-asserted at every boot
        # Also at every boot: a root unpacked by an older agent may still hold relx templates,
        # which the start script would render over the agent's files.
        release_files.remove_displaced_config(root, version)
        await nodeproc.spawn_daemon(
            root, release, version, home=home_dir(root), pipe=pipe_dir(root), logs=log_dir(root)
        )
        try:
            text = (root / "releases" / version / "vm.args").read_text(encoding="utf-8")
        except OSError:
            return None
        return node_in_vm_args(text)

    async def wait_ready(
        self, node: NodeRef, root: Path, spec: HealthSpec, *, expect_version: str | None
    ) -> dict[str, Any]:
        """Poll until erel answers status (with `expect_version` current) and health is ok,
        within `spec.start_timeout`. Raises StartFailed (the VM died) or StartTimeout."""
        started = time.monotonic()
        deadline = started + spec.start_timeout
        last = "no answer yet"
        while True:
            outcome = await self.erel_outcome(node, "status", within=min(2.0, spec.timeout))
            if outcome.status is RpcStatus.OK and isinstance(outcome.value, dict):
                status = outcome.value
                current = status.get("current")
                if expect_version is not None and current != expect_version:
                    last = f"running {current}, expected {expect_version}"
                else:
                    answer = await self.health(node, spec)
                    if answer.healthy:
                        return status
                    last = f"unhealthy: {answer.reason}"
            else:
                last = outcome.error or outcome.status.value
            now = time.monotonic()
            if now - started > SPAWN_GRACE and not nodeproc.node_pids(root):
                raise reasons.driver_error(
                    reasons.StartFailed,
                    f"the node of {root.name} exited while starting ({last})",
                    nodeproc.log_tail(root),
                )
            if now >= deadline:
                reason = (
                    reasons.HealthCheckFailed
                    if last.startswith("unhealthy")
                    else reasons.StartTimeout
                )
                raise reasons.driver_error(
                    reason,
                    f"{root.name} not healthy within {spec.start_timeout:g}s ({last})",
                    nodeproc.log_tail(root),
                )
            await asyncio.sleep(POLL if now - started < 2.0 else 0.1)

    async def probation(self, node: NodeRef, spec: HealthSpec, seconds: float) -> HealthAnswer:
        """Health must hold for `seconds` (at least one probe); the first bad answer ends it."""
        deadline = time.monotonic() + seconds
        interval = probe_interval(seconds)
        while True:
            answer = await self.health(node, spec)
            if not answer.healthy:
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return answer
            await asyncio.sleep(min(interval, remaining))

    # ------------------------------------------------------------------------------ stop

    async def halt(self, node: NodeRef, root: Path, stop_timeout: float) -> bool:
        """Graceful `init:stop()`, then SIGKILL after `stop_timeout`. True if a node ran."""
        pids = nodeproc.node_pids(root)
        outcome = await self.rpc.call(
            node, "init", "stop", (), within=min(self.rpc_timeout, 5.0), envelope=False
        )
        if not pids and outcome.status is RpcStatus.UNREACHABLE:
            return False
        if await nodeproc.wait_gone(root, time.monotonic() + stop_timeout):
            return True
        nodeproc.kill_pids(nodeproc.node_pids(root), root)
        if not await nodeproc.wait_gone(root, time.monotonic() + 5.0):
            raise reasons.driver_error(
                reasons.StopTimeout,
                f"{root.name} still has processes after SIGKILL",
                nodeproc.log_tail(root),
            )
        return True

    async def kill_now(self, root: Path) -> None:
        """No grace: for a node that failed to start or must make room for a rollback."""
        nodeproc.kill_pids(nodeproc.node_pids(root), root)
        await nodeproc.wait_gone(root, time.monotonic() + 5.0)
