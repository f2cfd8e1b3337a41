"""Who gets a rollout document of its own (`publisher.delivery`), what a host's view of one is
(`core.rollout.host_view`), and which status messages make the controller step
(`publisher.hosts`). Pure: no broker (the sending loop is tested on one in
tests/integration/test_rollout_controller.py)."""

from __future__ import annotations

import json
from dataclasses import replace

from erel_sync.adapters.broker import topology as topo
from erel_sync.core.rollout import (
    HostState,
    Phase,
    RolloutDoc,
    host_view,
)
from erel_sync.model.specs import RolloutSpec
from erel_sync.publisher.delivery import NOTHING, Delivery
from erel_sync.publisher.hosts import HostBook
from tests.unit.test_rollout import SEQ, F, W, hosts_of, run

POLICY = RolloutSpec(max_unavailable=2)


def doc(
    version: int, states: dict[str, HostState], previous: RolloutDoc | None = None
) -> RolloutDoc:
    before = previous.groups["web"] if previous is not None else None
    return RolloutDoc(version, "t", {"web": run(before, states, POLICY)}, direct=True)


def test_a_hosts_view_is_its_grant_a_halt_and_a_retry_not_the_phase_nor_the_seq() -> None:
    first = doc(1, hosts_of(4)).groups["web"]
    view = host_view(first.to_json(), "web-1")
    assert view == [[first.granted["web-1"].id, SEQ], None, None, []]
    assert host_view(first.to_json(), "web-3") == NOTHING
    assert host_view(None, "web-1") is None
    # Canary -> Progressing, another seq with the same grant: the same view.
    moved = replace(first, phase=Phase.PROGRESSING, seq=SEQ + 1)
    assert host_view(moved.to_json(), "web-3") == NOTHING
    halted = replace(first, phase=Phase.HALTED, stable={"hello": "0.1.0"})
    assert host_view(halted.to_json(), "web-3") == [None, [["hello", "0.1.0"]], None, []]
    retried = replace(first, retry=2)
    assert host_view(retried.to_json(), "web-3") == [None, None, [2, SEQ], []]
    members = replace(first, members={"web-1": "10.0.0.1", "web-3": "10.0.0.3"})
    assert host_view(members.to_json(), "web-3") == [
        None, None, None, [["web-1", "10.0.0.1"], ["web-3", "10.0.0.3"]]
    ]  # fmt: skip
    # JSON-shaped: what an agent reports back compares equal after the wire.
    assert json.loads(json.dumps(view)) == view


def test_copies_go_to_hosts_whose_view_changed() -> None:
    d = Delivery({}, None)
    groups = {f"web-{i}": "web" for i in range(1, 5)}
    one = doc(1, hosts_of(4))
    d.streamed(b"one", one, groups)
    assert d.due == {"web-1", "web-2"}  # granted; the others' views say nothing yet
    d.due.clear()
    d.streamed(b"one", one, groups)  # the same document again: nothing new
    assert d.due == set()
    two = doc(2, hosts_of(4, web_1=HostState.CONVERGED), one)
    d.streamed(b"two", two, groups)
    assert d.due == {"web-1", "web-3"}  # web-1 is done, web-3 takes its place
    assert d.current is not None and d.current[0] == b"two"


def test_a_stale_or_empty_holder_gets_the_current_document_again() -> None:
    d = Delivery({}, None)
    one = doc(1, hosts_of(4))
    d.held("web-3", "web", {"version": 0, "view": None})  # nothing on the stream yet
    assert d.due == set()
    d.streamed(b"one", one, {})
    d.held("web-3", "web", {"version": 1, "view": NOTHING})  # current
    d.held("web-4", "web", None)  # an older agent: it follows the stream
    assert d.due == set()
    d.held("web-1", "web", {"version": 1, "view": NOTHING})  # its grant was lost
    d.held("web-4", "web", {"version": 0, "view": None})  # a new host, no document
    assert d.due == {"web-1", "web-4"}


def test_a_halt_reaches_the_granted_hosts_that_have_not_begun() -> None:
    d = Delivery({}, None)
    groups = {f"web-{i}": "web" for i in range(1, 5)}
    one = doc(1, hosts_of(4))
    d.streamed(b"one", one, groups)
    d.due.clear()
    halted = doc(2, hosts_of(4, web_1=F), one)
    assert halted.groups["web"].phase is Phase.HALTED
    d.streamed(b"two", halted, groups)
    assert d.due == {"web-1", "web-2", "web-3", "web-4"}  # each one's view changed


def beat(host: str, state: str, *, seq: int = SEQ, group: str = "web") -> bytes:
    return json.dumps(
        {
            "kind": "heartbeat", "host_id": host, "group": group, "heartbeat_interval": 1.0,
            "rollout": {"seq": seq, "state": state, "reason": "", "at": 1.0, "grant": None},
        }
    ).encode()  # fmt: skip


def test_only_a_message_that_changes_a_host_takes_a_step() -> None:
    book = HostBook({}, Delivery({}, None))
    key = topo.host_key("web-1")
    assert book.take(key, beat("web-1", W.value), 10.0)  # new host
    assert not book.take(key, beat("web-1", W.value), 10.5)  # the same, again
    assert book.take(key, beat("web-1", "changing"), 11.0)
    assert book.take(key, beat("web-1", "changing", group="db"), 11.5)  # moved
    assert not book.take(topo.host_key("web-2"), beat("web-1", W.value), 12.0)  # wrong key
    assert not book.take(key, b"{not json", 12.0)
    assert book.take(key, beat("web-1", "changing", group="db"), 30.0)  # alive again
    assert book.group_hosts("db", 30.0)["web-1"].state is HostState.CHANGING
