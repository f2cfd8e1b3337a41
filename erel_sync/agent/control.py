"""The agent's control API: operator commands from `erel.control` and from the local socket.

Called by `agent.daemon` (one `ControlService` per agent, which it reaches through the small
`ControlledAgent` protocol, so this module does not import the daemon). Commands run under the
reconciler's tick lock, so they never interleave with a tick's steps, and follow GitOps
semantics that keep manual actions and git from fighting (docs/operating.md):

- `stop R`: puts a *hold* on R on this host (the reconciler leaves it alone), then stops it.
- `start R`: clears the hold and reconciles, which starts R if git wants it.
- `restart R`: restarts a running R; desired state and holds are unchanged.
- `delete R`: puts a `delete` hold on R and removes it; the hold ends when the desired state of
  R on this host changes (a new version or config in git) or when someone runs `start R`.
- `status`: a fresh observation of every release, as the heartbeat document.

Holds are part of the agent's durable state (status.json, fsynced), so they survive restarts.

Remote commands must be signed by an operator key from the agent's settings (`status` may be
unsigned: it changes nothing) and are refused once expired or when replayed. The local Unix
socket is authenticated by its file mode (0600, or 0660 with an operators' group): anyone who can
open it is an operator of this host, so its commands need no signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from erel_sync.agent.reconciler import Driver, Reconciler
from erel_sync.core import control, reasons
from erel_sync.core.control import Command, CommandRejected
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.model.settings import AgentSettings

log = logging.getLogger("erel_sync.agent")

STATUS_BUDGET = 2.0  # seconds a `status` query may spend observing before the last report is used
MAX_LINE = 64 * 1024


class ControlledAgent(Protocol):
    """What commands need of the agent (`agent.daemon.Agent` fits; tests may pass a fake)."""

    @property
    def s(self) -> AgentSettings: ...
    @property
    def instance(self) -> str: ...
    @property
    def counters(self) -> Counter[str]: ...
    @property
    def operator_keys(self) -> Mapping[str, str]: ...
    @property
    def reconciler(self) -> Reconciler: ...
    @property
    def driver(self) -> Driver: ...

    async def persist(self, *, lasting_only: bool = False) -> None: ...
    def request_heartbeat(self) -> None: ...
    def heartbeat(self) -> dict[str, Any]: ...
    def history(self) -> list[dict[str, Any]]: ...


class ControlService:
    def __init__(self, agent: ControlledAgent, seen: Mapping[str, float] | None = None) -> None:
        self.agent = agent
        now = time.time()
        # command id -> (expiry, mutating), against replays. Mutating commands' ids are
        # persisted with the holds (`seen`), so a captured command cannot be replayed after an
        # agent restart either; status queries change nothing and are remembered in memory only.
        self._seen: dict[str, tuple[float, bool]] = {
            k: (float(v), True) for k, v in (seen or {}).items() if float(v) >= now
        }

    @property
    def seen_mutating(self) -> dict[str, float]:
        """What `status.json` keeps: the unexpired ids of mutating commands."""
        return {k: exp for k, (exp, mutating) in self._seen.items() if mutating}

    def targets(self) -> frozenset[str]:
        """The routing targets this host answers to now: itself, its current group, `all`."""
        out = {control.host_target(self.agent.s.host_id), control.ALL_TARGET}
        status = self.agent.reconciler.status
        group = status.group if status is not None else None
        if group:
            out.add(control.group_target(group))
        return frozenset(out)

    async def handle_remote(self, raw: bytes) -> bytes | None:
        """A command from the broker: the reply to send back, or None when the command was not
        for this host (a group command while in another group: silence, not an error)."""
        a = self.agent
        try:
            cmd = control.parse_command(raw)
        except CommandRejected as e:
            a.counters[f"commands_refused.{e.reason}"] += 1
            log.warning("%s: command refused: %s", a.s.host_id, e)
            return None  # no id to answer to
        try:
            control.check_command(
                cmd,
                targets=self.targets(),
                operator_keys=a.operator_keys,
                now=time.time(),
                require_signature=cmd.command in control.MUTATING,
            )
            self._check_replay(cmd)
            if cmd.command in control.MUTATING:
                # On disk before it runs: a crash right after it cannot open a replay window.
                await a.persist(lasting_only=True)
        except CommandRejected as e:
            if e.reason == "NotForThisHost":
                return None
            a.counters[f"commands_refused.{e.reason}"] += 1
            log.warning("%s: command %s refused: %s", a.s.host_id, cmd.describe(), e)
            return self._reply(cmd.id, ok=False, reason=e.reason, message=e.message)
        return await self.run(cmd, by=f"key:{cmd.key_id}" if cmd.key_id else "unsigned")

    async def handle_local(self, line: bytes) -> bytes:
        """A request line from the local socket: `{"command": "stop", "release": "hello"}`."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            cmd = control.new_command(
                str(req.get("command")),
                req.get("release"),
                control.LOCAL_TARGET,
                now=time.time(),
                command_id=str(req["id"]) if req.get("id") else None,
            )
        except (ValueError, TypeError) as e:
            return self._reply("", ok=False, reason="Malformed", message=str(e))
        return await self.run(cmd, by="local")

    def _check_replay(self, cmd: Command) -> None:
        now = time.time()
        for k, (exp, _) in list(self._seen.items()):
            if exp < now:
                del self._seen[k]
        if cmd.id in self._seen:
            raise CommandRejected("Replayed", f"command {cmd.id} already ran")
        self._seen[cmd.id] = (cmd.expires, cmd.command in control.MUTATING)

    async def run(self, cmd: Command, *, by: str) -> bytes:
        a = self.agent
        a.counters[f"commands.{cmd.command}"] += 1
        if cmd.command != "status":
            log.info("%s: command %s by %s", a.s.host_id, cmd.describe(), by)
        try:
            result = await self._run(cmd, by)
        except CommandRejected as e:
            return self._reply(cmd.id, ok=False, reason=e.reason, message=e.message)
        except reasons.DriverError as e:
            return self._reply(cmd.id, ok=False, reason=e.reason, message=e.message)
        finally:
            a.request_heartbeat()
        return self._reply(cmd.id, ok=True, result=result)

    def _reply(self, cmd_id: str, **kw: Any) -> bytes:
        a = self.agent
        return control.reply(cmd_id, host_id=a.s.host_id, instance=a.instance, **kw)

    async def _run(self, cmd: Command, by: str) -> dict[str, Any]:
        a = self.agent
        r = a.reconciler
        if cmd.command == "status":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_BUDGET):
                    await r.refresh()
            # The reply, not the periodic heartbeats, carries the history (`erel-sync history`).
            return {**a.heartbeat(), "history": a.history()}
        name = cmd.release
        assert name is not None
        async with r.exclusive():
            observed = await a.driver.observe_all()
            obs = observed.get(name)
            installed = bool(obs and obs.installed)
            if obs is not None and installed and obs.reason == reasons.NotManaged:
                raise CommandRejected("NotManaged", f"{name} was not installed by erel-sync")
            wanted = r.desired_fingerprint(name)
            if not installed and wanted is None and name not in r.holds:
                raise CommandRejected(
                    "UnknownRelease", f"{name} is neither installed nor desired on this host"
                )
            hold = {"since": time.time(), "by": by, "command": cmd.id}
            if cmd.command == "stop":
                r.holds[name] = {"kind": "stop", **hold}
                await a.persist()
                if installed and obs is not None and obs.running:
                    await a.driver.stop(name)
            elif cmd.command == "delete":
                r.holds[name] = {"kind": "delete", "desired": wanted, **hold}
                await a.persist()
                if installed:
                    await a.driver.delete(name)
                    r.memory.pop(name, None)
            elif cmd.command == "restart":
                if name in r.holds:
                    raise CommandRejected(
                        "Held", f"{name} is held ({r.holds[name]['kind']}); start it first"
                    )
                if not (obs is not None and obs.running):
                    raise CommandRejected("NotRunning", f"{name} is not running")
                await a.driver.restart(name)
            elif cmd.command == "start":
                r.holds.pop(name, None)
                # A start also forgets a failed revision of R here: the operator asks to try.
                mem = r.memory.get(name)
                if mem is not None:
                    r.memory[name] = ReleaseStatus(applied_config=mem.applied_config)
                await a.persist()
        if cmd.command == "start":
            await r.tick("start command")
        else:
            await r.refresh()
        await a.persist()
        rows = r.status.releases if r.status is not None else ()
        row = next((x for x in rows if x.name == name), None)
        return {"release": row.to_json() if row else None, "holds": dict(r.holds)}


async def serve_socket(
    path: Path, handler: Callable[[bytes], Awaitable[bytes]], *, group: str | None = None
) -> asyncio.AbstractServer:
    """The local control socket: one JSON request per line, one JSON reply per line.
    Mode 0600, or 0660 owned by `group` (an operators' group)."""
    os.makedirs(path.parent, exist_ok=True)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(await handler(line) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    sock = _bind_private(path, group)
    try:
        return await asyncio.start_unix_server(on_client, sock=sock, limit=MAX_LINE)
    except BaseException:
        sock.close()
        raise


def _bind_private(path: Path, group: str | None) -> socket.socket:
    """Bind in a directory only we can enter, set the mode there, then rename into place: the
    socket never exists at `path` with a wider mode, and the rename replaces a socket a
    killed agent left there. Not with os.umask: the umask belongs to
    the whole process, and whatever another task or thread creates meanwhile would get it (a
    restore racing another left it at 0177 for good, and every child after, such as a browser,
    made directories it could not enter)."""
    staging = tempfile.mkdtemp(prefix=".control-", dir=path.parent)  # mode 0700
    tmp = os.path.join(staging, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        if group:
            os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
        os.chmod(tmp, 0o660 if group else 0o600)
        os.replace(tmp, path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.rmdir(staging)
    return sock
