"""Operator command envelopes (core.control): signing, the checks an agent makes before running
anything, and the cluster view the CLI builds from presence records and replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from erel_sync.core import clusterview as view
from erel_sync.core import control
from erel_sync.core.control import CommandRejected
from erel_sync.core.snapshot import generate_key, load_private_key

NOW = 1_800_000_000.0
PEM, PUB = generate_key()
KEY = load_private_key(PEM)
OPS = {"ops": PUB}
ME = frozenset({"host.web-1", "group.web", "all"})


def signed(command: str = "stop", target: str = "host.web-1", **kw: Any) -> control.Command:
    return control.new_command(command, "hello", target, now=NOW, key=KEY, key_id="ops", **kw)


def check(cmd: control.Command, *, now: float = NOW + 1, require: bool = True) -> None:
    control.check_command(cmd, targets=ME, operator_keys=OPS, now=now, require_signature=require)


def roundtrip(cmd: control.Command) -> control.Command:
    return control.parse_command(cmd.encode())


def test_signed_command_round_trips_and_verifies() -> None:
    cmd = roundtrip(signed())
    assert (cmd.command, cmd.release, cmd.target) == ("stop", "hello", "host.web-1")
    assert cmd.expires == NOW + control.DEFAULT_TTL
    check(cmd)


@pytest.mark.parametrize(
    ("cmd", "now", "reason"),
    [
        (signed(), NOW + control.DEFAULT_TTL + 1, "Expired"),
        (signed(), NOW - control.CLOCK_SKEW - 5, "ClockSkew"),
        (signed(target="host.web-2"), NOW, "NotForThisHost"),
        (signed(target="group.db"), NOW, "NotForThisHost"),
        (control.new_command("stop", "hello", "host.web-1", now=NOW), NOW, "Unsigned"),
        (
            control.new_command(
                "stop", "hello", "host.web-1", now=NOW, key=KEY, key_id="someone-else"
            ),
            NOW,
            "UnknownKey",
        ),
        (
            control.new_command(
                "stop",
                "hello",
                "host.web-1",
                now=NOW,
                key=load_private_key(generate_key()[0]),
                key_id="ops",
            ),
            NOW,
            "BadSignature",
        ),
    ],
)
def test_refusals(cmd: control.Command, now: float, reason: str) -> None:
    with pytest.raises(CommandRejected) as e:
        check(roundtrip(cmd), now=now)
    assert e.value.reason == reason


def test_any_change_to_a_signed_field_breaks_the_signature() -> None:
    doc = json.loads(signed().encode())
    for field, value in (("release", "ticker"), ("command", "delete"), ("expires", NOW + 3000)):
        tampered = json.dumps({**doc, field: value}).encode()
        with pytest.raises(CommandRejected) as e:
            check(control.parse_command(tampered))
        assert e.value.reason == "BadSignature", field


def test_status_may_be_unsigned_but_not_expired() -> None:
    q = control.new_command("status", None, "all", now=NOW)
    check(roundtrip(q), require=False)
    with pytest.raises(CommandRejected, match="Expired"):
        check(roundtrip(q), now=NOW + 3600, require=False)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "Malformed"),
        (b"[]", "Malformed"),
        (json.dumps({"kind": "command", "format": 9}).encode(), "UnsupportedFormat"),
        (
            json.dumps(
                {"kind": "command", "format": 1, "id": "x", "target": "all", "command": "reboot"}
            ).encode(),
            "UnknownCommand",
        ),
        (
            json.dumps(
                {
                    "kind": "command",
                    "format": 1,
                    "id": "x",
                    "target": "all",
                    "command": "stop",
                    "release": "../etc",
                    "issued": 1,
                    "expires": 2,
                }
            ).encode(),
            "Malformed",
        ),
        (b"x" * (control.MAX_COMMAND_BYTES + 1), "Malformed"),
    ],
)
def test_malformed_commands(raw: bytes, reason: str) -> None:
    with pytest.raises(CommandRejected) as e:
        control.parse_command(raw)
    assert e.value.reason == reason


def test_new_command_refuses_bad_requests() -> None:
    with pytest.raises(ValueError, match="needs a release"):
        control.new_command("stop", None, "all", now=NOW)
    with pytest.raises(ValueError, match="ttl"):
        control.new_command("stop", "hello", "all", now=NOW, ttl=control.MAX_TTL + 1)
    with pytest.raises(ValueError, match="bad release name"):
        control.new_command("stop", "Hello World", "all", now=NOW)


# --- cluster view


def presence(
    host: str, sent: float, *, instance: str = "i1", state: str = "alive", group: str | None = "web"
) -> dict[str, Any]:
    return {
        "kind": "presence",
        "host_id": host,
        "instance": instance,
        "state": state,
        "group": group,
        "labels": {"role": "web"},
        "agent_version": "0.1.0",
        "sent": view.iso(sent),
        "presence_interval": 30.0,
    }


def answer(host: str, *, instance: str = "i1", group: str = "web", **hb: Any) -> dict[str, Any]:
    result = {
        "host_id": host,
        "group": group,
        "labels": {},
        "instance": instance,
        "agent_version": "0.1.0",
        "releases": [],
        "converged": True,
        **hb,
    }
    return {"ok": True, "host_id": host, "instance": instance, "result": result, "received": NOW}


def test_known_hosts_drop_the_ones_that_left_and_keep_the_silent() -> None:
    known = view.known_hosts(
        [
            presence("a", NOW - 50),
            presence("b", NOW - 40),
            presence("b", NOW - 30, state="left"),
            presence("c", NOW - 400),
        ]
    )
    assert set(known) == {"a", "c"}
    entries = view.host_entries(known, {"a": [answer("a")]}, now=NOW)
    assert [(e["host_id"], e["reachable"]) for e in entries] == [("a", True), ("c", False)]
    assert entries[1]["error"] == "no answer"
    assert entries[1]["last_seen"] == view.iso(NOW - 400)


def test_two_agents_answering_for_one_host_id_are_flagged() -> None:
    known = view.known_hosts([presence("a", NOW - 5, instance="i1")])
    entries = view.host_entries(
        known, {"a": [answer("a", instance="i1"), answer("a", instance="i2")]}, now=NOW
    )
    assert entries[0]["duplicate"] and entries[0]["instances"] == ["i1", "i2"]
    assert view.member_entries(entries)[0]["state"] == "Duplicate"


def test_a_restarted_agent_is_not_a_duplicate() -> None:
    known = view.known_hosts(
        [
            presence("a", NOW - 20, instance="old"),
            presence("a", NOW - 19, instance="old", state="left"),
            presence("a", NOW - 5, instance="new"),
        ]
    )
    entries = view.host_entries(known, {"a": [answer("a", instance="new")]}, now=NOW)
    assert not entries[0]["duplicate"]
    # Killed (no "left" record) and restarted: the old instance is present but not answering.
    known = view.known_hosts(
        [presence("a", NOW - 20, instance="old"), presence("a", NOW - 5, instance="new")]
    )
    entries = view.host_entries(known, {"a": [answer("a", instance="new")]}, now=NOW)
    assert not entries[0]["duplicate"]


def test_group_and_host_filters() -> None:
    known = view.known_hosts([presence("a", NOW), presence("b", NOW, group="db")])
    replies = {"a": [answer("a")], "b": [answer("b", group="db")]}
    assert [e["host_id"] for e in view.host_entries(known, replies, now=NOW, group="db")] == ["b"]
    assert [e["host_id"] for e in view.host_entries(known, replies, now=NOW, host="a")] == ["a"]


def rel(name: str, state: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "desired_version": "0.2.0",
        "version": "0.2.0",
        "state": state,
        "healthy": True,
        **kw,
    }


def test_wait_verdicts() -> None:
    sha = "abcdef0123456789"
    at = {"seq": 5, "revision": sha}
    old = {"seq": 4, "revision": "0000000"}
    done = answer("a", applied=at, attempted=at, snapshot=at, releases=[rel("hello", "Ready")])
    going = answer(
        "b",
        applied=old,
        attempted=at,
        snapshot=at,
        releases=[rel("hello", "Progressing")],
        converged=False,
    )
    failed = answer(
        "b",
        applied=old,
        attempted=at,
        snapshot=at,
        converged=False,
        releases=[rel("hello", "Failed", last_error="RolledBack: unhealthy")],
    )

    def verdict(*answers: dict[str, Any]) -> view.WaitVerdict:
        entries = view.host_entries({}, {a["host_id"]: [a] for a in answers}, now=NOW)
        return view.wait_verdict(entries, sha[:7], group="web")

    assert verdict(done).state == "Converged"
    v = verdict(done, going)
    assert v.state == "Pending" and "hello Progressing" in v.pending["b"]
    v = verdict(done, failed)
    assert v.state == "Failed" and "RolledBack: unhealthy" in v.failed["b"]
    v = verdict(
        failed,
        answer(
            "c",
            applied=old,
            attempted=at,
            snapshot=at,
            converged=False,
            releases=[rel("hello", "Progressing")],
        ),
    )
    assert v.state == "Failed" and v.working == ("c",)  # still at work: `wait` gives it time
    # An older failure (before this revision) does not fail the wait.
    stale = answer(
        "b",
        applied=old,
        attempted=old,
        snapshot=old,
        converged=False,
        releases=[rel("hello", "Failed")],
    )
    assert verdict(done, stale).state == "Pending"
    assert verdict().state == "Pending"  # nobody in scope yet: keep waiting


def test_status_rows_show_holds_and_unreachable_hosts() -> None:
    known = view.known_hosts([presence("a", NOW), presence("z", NOW - 100)])
    held = rel("hello", "Held", hold={"kind": "stop", "since": NOW, "by": "local"})
    entries = view.host_entries(known, {"a": [answer("a", releases=[held])]}, now=NOW)
    rows = view.status_rows(entries, now=NOW, wide=False)
    assert rows[0][:8] == ["a", "web", "hello", "0.2.0", "0.2.0", "Held", "healthy", "stop"]
    assert rows[1][0] == "z" and rows[1][5] == "Unreachable"
    assert len(rows[0]) == len(view.STATUS_HEADERS) == len(rows[1])
    wide = view.status_rows(entries, now=NOW, wide=True)
    assert all(len(r) == len(view.STATUS_WIDE_HEADERS) for r in wide)


def test_a_host_that_cannot_store_snapshots_is_flagged() -> None:
    known = view.known_hosts([presence("a", NOW), presence("b", NOW)])
    full = "cannot write /var/lib/erel-sync/snapshot.slot-a: No space left on device"
    entries = view.host_entries(
        known,
        {"a": [answer("a", store_error=full)], "b": [answer("b", store_error=None)]},
        now=NOW,
    )
    assert [(e["reachable"], e["error"]) for e in entries] == [(True, full), (True, None)]
    rows = view.status_rows(entries, now=NOW, wide=True)
    assert rows[0][5] == "Converged STORE-FAILED" and full in rows[0]
    assert rows[1][5] == "Converged"


def test_target_for_takes_the_narrowest_named() -> None:
    assert control.target_for("a", "web") == "host.a"
    assert control.target_for(None, "web") == "group.web"
    assert control.target_for(None, None) == control.ALL_TARGET
