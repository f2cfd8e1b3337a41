"""The rollout controller: which hosts of each group may disturb their releases now (grants).

Run by `publisher.daemon` beside the snapshots (docs/architecture.md, docs/broker.md). Inputs:
the current snapshot (`set_target`), what agents report on `erel.status` (heartbeats `host.*`
with their `rollout` key, rollout events `rollout.*`, presence records `presence.*`, followed
through a private queue: `attach`), and signed operator commands `rollout.<group>` on
`erel.control` (`promote`, `retry`: `handle_command`). The decisions are `core.rollout.step`,
per group, on every input (a burst coalesced into one step) and on a 1 s timer (deadlines).

Whenever the document changes its `version` goes up and it is written to
`state_dir/rollout.slot-a|-b` (`store.SlotFile`: one `pwrite` and one `fdatasync`; an older
publisher's `rollout.json` is read once and removed) BEFORE it is published (signed with the
publisher's key) on the `erel.rollout` stream: a restarted publisher never forgets a place it
gave. A state directory older than the stream (or a new machine) takes the newest document on
the stream instead.
After each session start the controller only listens for `warmup` seconds before it decides
again: with no reports yet, every host would look gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from erel_sync.adapters import store
from erel_sync.adapters.backoff import Backoff
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.session import Session
from erel_sync.adapters.clock import utc_now
from erel_sync.core import control
from erel_sync.core.control import CommandRejected
from erel_sync.core.desired import disturbing
from erel_sync.core.epochs import next_seq
from erel_sync.core.rollout import (
    GroupRollout,
    RolloutDoc,
    RolloutRejected,
    sign_rollout,
    step,
    verify_rollout,
)
from erel_sync.model.specs import DesiredState
from erel_sync.publisher.delivery import Delivery
from erel_sync.publisher.hosts import HostBook
from erel_sync.publisher.streams import stream_tail

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger("erel_sync.publisher")

TIMER = 1.0  # seconds between two steps without input: progress deadlines
COALESCE = 0.001  # a burst of reports within this is one step
STATE_FORMAT = 1
COMMAND_QUEUE = f"{topo.PUBLISHER_QUEUE_PREFIX}rollout"  # exclusive, bound to `rollout.*`
STATUS_KEYS = (topo.host_key("*"), topo.rollout_key("*"), topo.presence_key("*"))
PUBLISH_RETRY = (0.05, 5.0)


@dataclass(frozen=True)
class Target:
    """The snapshot every group rolls out to."""

    seq: int
    revision: str
    state: DesiredState


class RolloutController:
    def __init__(
        self,
        *,
        state_dir: Path,
        key: Ed25519PrivateKey,
        key_id: str,
        trusted: Mapping[str, str],
        operator_keys: Mapping[str, str],
        warmup: float,
        counters: dict[str, int],
        broker_user: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_slot = store.SlotFile(state_dir / "rollout")
        # An older publisher's state (tmp + rename): read when no slot holds any, removed
        # after the first write to the slots, so that nothing stale is read later.
        self.legacy_file: Path | None = state_dir / "rollout.json"
        self.key, self.key_id, self.trusted = key, key_id, dict(trusted)
        self.operator_keys = dict(operator_keys)
        self.warmup, self.counters, self.broker_user, self.clock = (
            warmup,
            counters,
            broker_user,
            clock,
        )
        self.target: Target | None = None
        self.disturbs: frozenset[str] = frozenset()  # groups `set_target` saw changed
        self.streamed = 0  # the newest seq confirmed on the config stream
        self.doc: RolloutDoc | None = None
        self.signed: bytes | None = None
        self.version = 0
        self.epoch: int | None = None  # --ha: versions of the active publisher's epoch only
        self.commands: dict[str, float] = {}  # ids of applied commands -> expiry (replays)
        self._flags: dict[str, set[str]] = {"promote": set(), "retry": set()}
        self._warm_at: float | None = None  # no session: no decisions
        self._kick = asyncio.Event()
        self.delivery = Delivery(counters, broker_user)
        self.book = HostBook(counters, self.delivery)
        self.publish_needed = asyncio.Event()
        self._persisting = asyncio.Lock()
        self._load()
        # What the state slots hold: (signed, version, document), the newest that may be seen.
        self._written: tuple[bytes | None, int, RolloutDoc | None] = (
            self.signed,
            self.version,
            self.doc,
        )

    # --- state
    def _load(self) -> None:
        state = self.state_slot.read_json()
        if state is None and self.legacy_file is not None:
            state = store.read_json(self.legacy_file)
        if not isinstance(state, dict):
            return
        commands = state.get("commands")
        self.commands = {
            str(k): float(v)
            for k, v in (commands.items() if isinstance(commands, dict) else ())
            if isinstance(v, int | float) and v > time.time()
        }
        raw = str(state.get("signed") or "").encode()
        if not raw:
            return
        try:
            self.doc, self.signed = verify_rollout(raw, self.trusted), raw
            self.version = self.doc.version
        except RolloutRejected as e:
            # Signed by another key (rotated): its grants cannot be republished, but the
            # version goes on above it, or agents would keep the old document.
            log.error("stored rollout state refused (%s): rollouts start afresh", e)
            with contextlib.suppress(ValueError, AttributeError):
                self.version = int(json.loads(raw).get("version", 0))

    def _state(self) -> bytes:
        """The state as it is now: the newest document decided and the command ids."""
        return (
            json.dumps(
                {
                    "format": STATE_FORMAT,
                    "kind": "rollout-state",
                    "signed": self.signed.decode() if self.signed else None,
                    "commands": self.commands,
                },
                separators=(",", ":"),  # C-encoded; with an indent, Python
                sort_keys=True,
            ).encode()
            + b"\n"
        )

    async def _persist(self) -> None:
        """Write the state with the newest document (raises StoreError). In a thread, one
        write at a time: the flushes held up every report the controller was reading. Each
        write takes the state as it is when its turn comes, so a slower earlier one never
        lands over a newer one. A slot file, not tmp + fsync + rename + fsync of the
        directory: it stands between every decision and its grants going out."""
        async with self._persisting:
            written, data = (self.signed, self.version, self.doc), self._state()
            await asyncio.to_thread(self.state_slot.write, data)
            if written[1] >= self._written[1]:
                self._written = written
            if self.legacy_file is not None:
                with contextlib.suppress(OSError):
                    self.legacy_file.unlink(missing_ok=True)
                self.legacy_file = None

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- inputs
    def set_target(self, seq: int, revision: str, state: DesiredState) -> None:
        if self.target is None or self.target.seq != seq:
            before = self.target
            # Groups whose hosts this seq disturbs, against the seq before it: their settled
            # hosts are granted ahead of their reports. Unknown after a restart (no seq
            # before): then every grant waits for its host's report, as it always may.
            self.disturbs = (
                frozenset(
                    g for g in state.groups
                    if disturbing(state, g) != disturbing(before.state, g)
                )
                if before is not None and seq > before.seq
                else frozenset()
            )  # fmt: skip
            self.target = Target(seq, revision, state)
            self._kick.set()

    def on_stream(self, seq: int | None) -> None:
        """Snapshot `seq` is confirmed on the config stream: grants ahead of reports may go
        out now (before, a grant could name a seq that never reaches its host)."""
        if seq is not None and seq > self.streamed:
            self.streamed = seq
            self._kick.set()

    async def on_status(self, key: str, body: bytes) -> None:
        """A message of `erel.status` (`publisher.hosts`); a step when it changed a host."""
        if self.book.take(key, body, self.clock()):
            self._kick.set()

    def refresh(self) -> bool:
        """Step every group of the target; on a change, persist then mark the new document
        for publishing. False when no decision may be taken now."""
        now = self.clock()
        if self.target is None or self._warm_at is None or now < self._warm_at:
            return False
        self._count("rollout_steps")  # decisions taken (a new document or not)
        t, previous = self.target, self.doc.groups if self.doc is not None else {}
        groups: dict[str, GroupRollout] = {}
        for name, spec in sorted(t.state.groups.items()):
            decided = step(
                previous.get(name),
                group=name,
                seq=t.seq,
                revision=t.revision,
                policy=spec.rollout,
                versions={r.name: r.version for r in spec.releases},
                hosts=self.book.group_hosts(name, now),
                now=now,
                promote=name in self._flags["promote"],
                retry=name in self._flags["retry"],
                disturbs=name in self.disturbs and self.streamed >= t.seq,
            )
            # Only a group that runs a clustered release needs its members: elsewhere a host
            # coming or going would send every host of the group a document for nothing.
            clustered = any(
                r.distribution_over(t.state.releases[r.name]).clustered
                for r in spec.releases
                if r.name in t.state.releases
            )
            members = self.book.members(name, now) if clustered else {}
            groups[name] = replace(decided, members=MappingProxyType(members))
        for flags in self._flags.values():
            flags.clear()
        if self.doc is not None and dict(previous) == groups:
            return True
        version = self.version + 1 if self.epoch is None else next_seq(self.version, self.epoch)
        doc = RolloutDoc(version, utc_now(), MappingProxyType(groups), direct=True)
        # Decided, not yet seen by anyone: `publishing` writes it to disk before it publishes
        # (write-ahead) and takes only the newest, so a burst of decisions costs one write and
        # one publish, and no decision waits for a disk.
        self.doc, self.signed, self.version = doc, sign_rollout(doc, self.key, self.key_id), version
        self.publish_needed.set()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Step on every input (coalesced) and every TIMER seconds, until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TIMER):
                    await self._kick.wait()
            await asyncio.sleep(COALESCE)
            self._kick.clear()
            self.refresh()

    # --- the broker session
    async def attach(self, session: Session) -> None:
        """On every new session: take the stream's newest document when it is newer than
        ours, follow reports and commands, and (re)publish the current document."""
        self._warm_at = None
        self.delivery.reset()

        def parse(raw: bytes) -> tuple[RolloutDoc, bytes] | None:
            with contextlib.suppress(RolloutRejected):
                return verify_rollout(raw, self.trusted), raw
            return None

        try:
            tail = await stream_tail(session, topo.ROLLOUT_QUEUE, parse)
        except BrokerError as e:  # its publishing loop keeps trying; snapshots go on
            log.error("%s unreadable (%s)", topo.ROLLOUT_STREAM, e)
            tail = []
        if tail:
            newest, raw = max(tail, key=lambda pair: pair[0].version)
            if newest.version > self.version:
                log.warning(
                    "stream holds rollout version %d, local %d: taking it", newest.version,
                    self.version,
                )  # fmt: skip
                self.doc, self.signed, self.version = newest, raw, newest.version
                try:
                    await self._persist()
                except store.StoreError as e:  # the stream keeps it meanwhile
                    log.error("cannot persist the rollout taken from the stream: %s", e)
        await session.follow_status(self.on_status, STATUS_KEYS)
        await session.serve_commands(COMMAND_QUEUE, (topo.rollout_key("*"),), self.handle_command)
        self._warm_at = self.clock() + self.warmup
        self.publish_needed.set()

    def detach(self) -> None:
        self._warm_at = None

    async def publishing(self, session: Session, stop: asyncio.Event) -> None:
        """Publish the current document (confirmed) whenever it changes or is due again."""
        backoff = Backoff(*PUBLISH_RETRY)
        while not stop.is_set():
            await self.publish_needed.wait()
            self.publish_needed.clear()
            try:
                if self.version > self._written[1]:  # write-ahead: on disk before anyone sees it
                    await self._persist()
                signed, version, doc = self._written
                if self.version > version:  # decided while it was written: the next round
                    self.publish_needed.set()
                if signed is None:
                    continue
                await session.publish(
                    topo.ROLLOUT_EXCHANGE,
                    topo.ROLLOUT_ROUTING_KEY,
                    signed,
                    message_id=f"rollout-{version}",
                    user_id=self.broker_user,
                    headers={"version": version},
                    persistent=True,
                )
                self._count("rollouts_published")
                if doc is not None:  # on the stream: now hosts may have their copies
                    self.delivery.streamed(signed, doc, self.book.groups_of())
                backoff.reset()
            except (BrokerError, store.StoreError) as e:
                failed = "persist" if isinstance(e, store.StoreError) else "publish"
                stored = isinstance(e, store.StoreError)
                self._count("rollout_persist_failures" if stored else "rollout_publish_failures")
                delay = backoff.next()
                log.warning("rollout %s failed, retrying in %.1fs: %s", failed, delay, e)
                self.publish_needed.set()
                await asyncio.sleep(delay)

    # --- operator commands
    async def handle_command(self, raw: bytes) -> bytes | None:
        """A signed `promote` or `retry` for `rollout.<group>`: the reply (None for junk)."""
        try:
            cmd = control.parse_command(raw)
        except CommandRejected as e:
            self._count(f"commands_refused.{e.reason}")
            return None
        prefix = topo.rollout_key("")
        if not cmd.target.startswith(prefix):  # signed for an agent, routed here: not ours
            self._count("commands_refused.NotForThisHost")
            return None
        group = cmd.target.removeprefix(prefix)
        try:
            if cmd.command not in control.ROLLOUT_COMMANDS:
                raise CommandRejected("UnknownCommand", f"{cmd.command} is not for the publisher")
            control.check_command(
                cmd,
                targets=frozenset({cmd.target}),
                operator_keys=self.operator_keys,
                now=time.time(),
                require_signature=True,
            )
            if cmd.id in self.commands:
                raise CommandRejected("Replayed", f"command {cmd.id} already ran")
            if self.target is None or group not in self.target.state.groups:
                raise CommandRejected("UnknownGroup", f"no group {group!r} in the snapshot")
            now = time.time()
            self.commands = {k: v for k, v in self.commands.items() if v >= now}
            self.commands[cmd.id] = cmd.expires
            await self._persist()  # the id before its effect: no replay after a restart
        except CommandRejected as e:
            self._count(f"commands_refused.{e.reason}")
            log.warning("rollout command %s refused: %s", cmd.describe(), e)
            return self._reply(cmd.id, ok=False, reason=e.reason, message=e.message)
        except store.StoreError as e:
            return self._reply(cmd.id, ok=False, reason="StoreError", message=str(e)[:300])
        log.info("rollout command %s by key %s", cmd.describe(), cmd.key_id)
        self._count(f"commands.{cmd.command}")
        self._flags[cmd.command].add(group)
        applied = self.refresh()
        rollout = self.doc.groups.get(group) if self.doc is not None and applied else None
        message = "" if applied else "applied at the controller's next step"
        return self._reply(
            cmd.id,
            ok=True,
            message=message,
            result={"group": group, "rollout": rollout.to_json() if rollout else None},
        )

    def _reply(self, cmd_id: str, **kw: Any) -> bytes:
        return control.reply(cmd_id, host_id=topo.PUBLISHER_REPLY_ID, instance=self.key_id, **kw)
