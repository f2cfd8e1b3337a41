"""Each host's own copy of the rollout documents that change what it may do.

Used by `publisher.rollout` (the controller owns one `Delivery`; `run` is one of the publisher's
per-session loops). The `erel.rollout` stream carries every document: it is the record that
the CLI, `wait`, older agents and a publisher on a new machine read. Followed by every agent,
it handed each of a rollout's hundreds of documents to every host, and that cost more than
anything else in a rollout (docs/performance.md). So a document, once the stream holds it
(confirmed: no agent ever holds a document the stream lacks, so a publisher that takes over
from the stream knows every grant an agent can act on), is sent as it is, signed, to each host
whose view it changed (`core.rollout.host_view`: its grant, a halt, a retry), on
`erel.control` under `grant.<host>`, unconfirmed. The documents say so (`direct`), and agents
then leave the stream after its tail.

A copy can be lost (the host between two sessions, a host the controller has not heard yet).
Agents say in every heartbeat and rollout event which version they hold and the view they read
there (`rollout_held`); a host whose view differs from the current document's gets the current
document again. docs/broker.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.session import Session
from erel_sync.core.rollout import RolloutDoc, host_view

log = logging.getLogger("erel_sync.publisher")

# The view of a host with no grant, in a group that is not halted and has no members known.
NOTHING: list[object] = [None, None, None, []]


class Delivery:
    def __init__(self, counters: dict[str, int], broker_user: str | None) -> None:
        self.counters = counters
        self.broker_user = broker_user
        self.known: dict[str, Any] = {}  # host -> the view it holds, as far as we know
        self.due: set[str] = set()
        self.wake = asyncio.Event()
        self.current: tuple[bytes, dict[str, Any]] | None = None  # on the stream: (signed, groups)

    def reset(self) -> None:
        """A new session: what was sent on the old one may not have arrived."""
        self.known.clear()
        self.due.clear()

    def _view(self, host: str, group: str | None) -> Any:
        groups = self.current[1] if self.current is not None else {}
        return host_view(groups.get(group) if group else None, host)

    def _send(self, host: str, view: Any) -> None:
        self.known[host] = view
        self.due.add(host)
        self.wake.set()

    def streamed(self, signed: bytes, doc: RolloutDoc, groups: Mapping[str, str | None]) -> None:
        """`doc` is on the stream. `groups`: each host the controller knows, with its group."""
        self.current = (signed, {n: g.to_json() for n, g in doc.groups.items()})
        for host, group in groups.items():
            view = self._view(host, group)
            if host not in self.known:
                if view not in (None, NOTHING):  # else its reports say what it holds
                    self._send(host, view)
            elif self.known[host] != view:
                self._send(host, view)

    def held(self, host: str, group: str | None, held: Any) -> None:
        """A report's `rollout_held` ({version, view}; absent from an older agent, which
        follows the stream)."""
        if not isinstance(held, dict) or self.current is None:
            return
        view = self._view(host, group)
        if held.get("view") != view or not held.get("version"):
            self._send(host, view)
        else:
            self.known[host] = view

    async def run(self, session: Session, stop: asyncio.Event) -> None:
        """Send the current document to the hosts due one, until `stop`."""
        while not stop.is_set():
            await self.wake.wait()
            self.wake.clear()
            if self.current is None:
                continue
            signed = self.current[0]
            due, self.due = sorted(self.due), set()
            for host in due:
                try:
                    await session.publish(
                        topo.CONTROL_EXCHANGE, topo.grant_key(host), signed, confirm=False,
                        user_id=self.broker_user, mandatory=False,
                    )  # fmt: skip
                    self.counters["rollout_copies"] = self.counters.get("rollout_copies", 0) + 1
                except BrokerError as e:  # the session is going: the next one tells again
                    log.warning("rollout copy for %s not sent: %s", host, e)
                    self.known.pop(host, None)
