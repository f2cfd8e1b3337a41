"""The node RPC port: `erl_call -R -sname NODE -a 'Mod Fun [Args]'` as an async subprocess.

Called by the release driver (`adapters.releases.driver`) for every question to a running release
(status, health, unpack/install/make_permanent/rollback through the `erel_rpc` module, plain
calls such as `init:stop/0`). Lives in `adapters` because it spawns processes; argv building and
output decoding are pure (`core.rpccodec`) and tested on canned output.

The cookie never appears on a command line: erl_call runs with `HOME` set to the release's own
home directory, whose 0400 `.erlang.cookie` it reads when `-c` is absent (the node reads the
same file at boot). `-R` (dynamic client names) makes concurrent calls safe.

Also here: `ensure_epmd`, which starts the system `epmd -daemon` before any release starts, so
the first release's own epmd (from its ERTS dir) never becomes the host's epmd.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.nodeconfig import RenderError
from erel_sync.core.rpccodec import (
    RpcOutcome,
    RpcStatus,
    decode_erl_call,
    erl_call_argv,
)

# Variables that would change how a node or erl_call behaves if inherited from the agent.
_CHILD_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR")


def child_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: no ERL_FLAGS/ERL_AFLAGS/RELX_* leak from the agent into nodes
    (a node's own RELX_* are set by `nodeproc.node_env`, never inherited)."""
    env = {k: os.environ[k] for k in _CHILD_ENV_KEEP if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(home)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class NodeRef:
    """How to reach one node: its full name (`name@host`) and the HOME holding its cookie."""

    name: str
    home: Path


class NodeRpc(Protocol):
    """What the driver needs from a node connection; swap in a fake for unit tests."""

    async def call(
        self,
        node: NodeRef,
        module: str,
        function: str,
        args: Sequence[str | Atom] = (),
        *,
        within: float,
        envelope: bool = True,
    ) -> RpcOutcome: ...


def find_erl_call() -> str | None:
    """The system erl_call (stable across release deletes); None when not installed."""
    found = shutil.which("erl_call")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/erlang/lib/erl_interface-*/bin/erl_call"))
    return candidates[-1] if candidates else None


class ErlCall:
    """`NodeRpc` over the erl_call binary."""

    def __init__(self, erl_call: str | None = None) -> None:
        self.erl_call = erl_call or find_erl_call()
        self.spawned = 0  # erl_call processes started: the driver bench counts a tick's cost

    async def call(
        self,
        node: NodeRef,
        module: str,
        function: str,
        args: Sequence[str | Atom] = (),
        *,
        within: float,
        envelope: bool = True,
    ) -> RpcOutcome:
        if not self.erl_call:
            raise reasons.driver_error(reasons.ToolMissing, "erl_call not found (erlang-base)")
        try:
            argv = erl_call_argv(
                self.erl_call, node.name, (module, function, args), timeout=math.ceil(within)
            )
        except RenderError as exc:
            raise reasons.driver_error(reasons.RpcFailed, str(exc)) from exc
        self.spawned += 1
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(node.home),
        )
        try:
            # erl_call's own -timeout covers the call; ours also covers a hung connect.
            out, err = await asyncio.wait_for(proc.communicate(), within + 1.0)
        except TimeoutError:
            await _reap(proc)
            return RpcOutcome(
                RpcStatus.UNREACHABLE, error=f"{module}:{function} timed out after {within:.1f}s"
            )
        except BaseException:
            await _reap(proc)
            raise
        return decode_erl_call(
            proc.returncode if proc.returncode is not None else -1,
            out.decode("utf-8", errors="replace"),
            err.decode("utf-8", errors="replace"),
            envelope=envelope,
        )


async def _reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(proc.wait())


def outcome_value(outcome: RpcOutcome, what: str) -> Any:
    """The value of an answered call, or the DriverError that says why there is none."""
    if outcome.status is RpcStatus.OK:
        return outcome.value
    if outcome.status is RpcStatus.UNREACHABLE:
        raise reasons.driver_error(
            reasons.NodeUnreachable, f"{what}: node unreachable: {outcome.error}"
        )
    raise reasons.driver_error(
        reasons.RpcFailed, f"{what}: {outcome.error}", outcome.raw if outcome.raw else ""
    )


# ------------------------------------------------------------------------------------ epmd


class _Epmd:
    ready = False  # per process: epmd outlives every agent, so one check is enough


async def _run(argv: Sequence[str], within: float) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await asyncio.wait_for(proc.wait(), within)
    except BaseException:
        await _reap(proc)
        raise


async def ensure_epmd(epmd: str | None = None, *, within: float = 5.0) -> None:
    """Start the system `epmd -daemon` (a no-op when one runs) and wait until it answers."""
    # No lock: two concurrent `epmd -daemon` are harmless (the second one exits).
    if _Epmd.ready:
        return
    binary = epmd or shutil.which("epmd")
    if not binary:
        raise reasons.driver_error(reasons.EpmdUnavailable, "epmd not found (erlang-base)")
    deadline = time.monotonic() + within
    try:
        if await _run([binary, "-names"], within) != 0:
            await _run([binary, "-daemon"], within)
            while await _run([binary, "-names"], within) != 0:
                if time.monotonic() > deadline:
                    raise reasons.driver_error(
                        reasons.EpmdUnavailable, f"epmd did not answer within {within}s"
                    )
                await asyncio.sleep(0.02)
    except TimeoutError as exc:
        raise reasons.driver_error(reasons.EpmdUnavailable, "epmd did not answer") from exc
    _Epmd.ready = True
