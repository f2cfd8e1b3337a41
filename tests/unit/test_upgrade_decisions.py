"""core.upgrade: node names, upgrade path, probation schedule, recovery, RELEASES bookkeeping."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom, parse_term
from erel_sync.core.upgrade import (
    RecoveryStep,
    UpgradePath,
    choose_upgrade_path,
    clear_tmp_current,
    decide_recovery,
    mark_tmp_current,
    node_name,
    parse_releases,
    parse_start_erl_data,
    probe_interval,
    releases_entry_from_rel,
    render_releases,
)
from erel_sync.model.specs import UpgradeMode

NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,66}\Z")

# ------------------------------------------------------------------------------ node names


@pytest.mark.parametrize(
    ("release", "host"),
    [
        ("hello", "web-1"),
        ("hello", "web-1.example.com"),
        ("a", "1"),
        ("x" * 63, "h" * 253),
        ("my_rel-2", "Host_9.local"),
    ],
)
def test_node_name_is_a_valid_bounded_short_name(release: str, host: str) -> None:
    name = node_name(release, host)
    assert NODE_RE.match(name), name
    assert name.startswith(release[:32])
    assert node_name(release, host) == name  # stable across agent restarts


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a-b", "c"), ("a", "b-c")),
        (("a_b", "c"), ("a", "b_c")),
        (("hello", "web.1"), ("hello", "web-1")),
        (("hello", "web.1"), ("hello", "web_1")),
        (("hello", "Web1"), ("hello", "web1")),
        (("hello", "h" * 252 + "1"), ("hello", "h" * 252 + "2")),
        (("x" * 40 + "a", "h"), ("x" * 40 + "b", "h")),
    ],
)
def test_node_names_of_different_pairs_differ(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert node_name(*a) != node_name(*b)


def test_node_names_do_not_collide_across_many_agents_on_one_machine() -> None:
    releases = ["hello", "ticker", "hello-web", "hello_web", "a", "a-b"]
    hosts = [
        f"{p}{i}{s}"
        for p, i, s in itertools.product(["web", "web-", "Web."], range(60), ["", ".x"])
    ]
    names = {node_name(r, h) for r in releases for h in hosts}
    assert len(names) == len(releases) * len(hosts)


def test_node_name_needs_both_parts() -> None:
    with pytest.raises(ValueError):
        node_name("", "h")
    with pytest.raises(ValueError):
        node_name("r", "")


# ---------------------------------------------------------------------------- upgrade path


@pytest.mark.parametrize(
    ("mode", "running", "current", "relup", "path"),
    [
        (UpgradeMode.AUTO, True, "0.1.0", ["0.1.0"], UpgradePath.HOT),
        (UpgradeMode.AUTO, True, "0.1.0", ["0.0.9"], UpgradePath.RESTART),
        (UpgradeMode.AUTO, True, "0.1.0", [], UpgradePath.RESTART),
        (UpgradeMode.AUTO, False, None, None, UpgradePath.RESTART),
        (UpgradeMode.HOT, True, "0.1.0", ["0.1.0", "0.0.9"], UpgradePath.HOT),
        (UpgradeMode.RESTART, True, "0.1.0", ["0.1.0"], UpgradePath.RESTART),
        (UpgradeMode.RESTART, False, None, None, UpgradePath.RESTART),
        (UpgradeMode.AUTO, True, "0.2.0", ["0.1.0"], UpgradePath.NONE),
        (UpgradeMode.HOT, True, "0.2.0", [], UpgradePath.NONE),
    ],
)
def test_choose_upgrade_path(
    mode: UpgradeMode,
    running: bool,
    current: str | None,
    relup: list[str] | None,
    path: UpgradePath,
) -> None:
    decision = choose_upgrade_path(
        mode, running=running, current=current, target="0.2.0", relup_from=relup
    )
    assert decision.path is path
    assert decision.why


@pytest.mark.parametrize(
    ("running", "current", "relup"),
    [(True, "0.1.0", []), (True, "0.1.0", ["0.0.1"]), (False, None, None)],
)
def test_hot_without_relup_is_refused(running: bool, current: str | None, relup: Any) -> None:
    with pytest.raises(reasons.StalledError) as info:
        choose_upgrade_path(
            UpgradeMode.HOT, running=running, current=current, target="0.2.0", relup_from=relup
        )
    assert info.value.reason == reasons.UpgradeImpossible


@pytest.mark.parametrize(
    ("probation", "interval"), [(0.0, 0.1), (0.5, 0.1), (2.0, 0.2), (10.0, 1.0), (600.0, 1.0)]
)
def test_probe_interval(probation: float, interval: float) -> None:
    assert probe_interval(probation) == pytest.approx(interval)


# -------------------------------------------------------------------------------- recovery

PENDING = {"op": "upgrade", "path": "hot", "from": "0.1.0", "to": "0.2.0"}


@pytest.mark.parametrize(
    ("pending", "running", "current", "permanent", "step"),
    [
        (None, True, "0.1.0", "0.1.0", RecoveryStep.CLEAR),
        (PENDING, False, None, "0.1.0", RecoveryStep.START_PERMANENT),
        (PENDING, True, "0.2.0", "0.1.0", RecoveryStep.PROBE_AND_COMMIT),
        (PENDING, True, "0.2.0", "0.2.0", RecoveryStep.CLEAR),
        (PENDING, True, "0.1.0", "0.1.0", RecoveryStep.CLEAR),
    ],
)
def test_decide_recovery(
    pending: dict[str, Any] | None,
    running: bool,
    current: str | None,
    permanent: str | None,
    step: RecoveryStep,
) -> None:
    assert decide_recovery(pending, running=running, current=current, permanent=permanent) is step


# -------------------------------------------------------------------------------- RELEASES

RELEASES = """%% coding: utf-8
[{release,"myrel","0.3.0","13.1.5",
          [{kernel,"8.5.3","lib/kernel-8.5.3"},
           {myrel,"0.3.0","lib/myrel-0.3.0"},
           {sasl,"4.2","lib/sasl-4.2"}],
          unpacked},
 {release,"myrel","0.2.0","13.1.5",
          [{kernel,"8.5.3","lib/kernel-8.5.3"},
           {myrel,"0.2.0","lib/myrel-0.2.0"},
           {sasl,"4.2","lib/sasl-4.2"}],
          permanent},
 {release,"myrel","0.1.0","13.1.5",
          [{kernel,"8.5.3","./lib/kernel-8.5.3"},
           {myrel,"0.1.0","./lib/myrel-0.1.0"},
           {sasl,"4.2","./lib/sasl-4.2"}],
          old}].
"""

REL = """%% rel generated by relx
{release,{"myrel","0.4.0"},
         {erts,"13.1.5"},
         [{kernel,"8.5.3"},{stdlib,"4.2"},{erel,"0.1.0"},{myrel,"0.4.0"},{sasl,"4.2",permanent}]}.
"""


def test_parse_releases() -> None:
    entries = parse_releases(RELEASES)
    assert [(e.version, e.status) for e in entries] == [
        ("0.3.0", "unpacked"),
        ("0.2.0", "permanent"),
        ("0.1.0", "old"),
    ]
    assert entries[0].libs[1] == (Atom("myrel"), "0.3.0", "lib/myrel-0.3.0")


def test_tmp_current_mark_and_clear_round_trip_through_text() -> None:
    entries = parse_releases(RELEASES)
    marked = mark_tmp_current(entries, "0.3.0")
    assert [e.status for e in marked] == ["tmp_current", "permanent", "old"]
    again = parse_releases(render_releases(marked))
    assert again == marked
    assert [e.status for e in clear_tmp_current(again)] == ["unpacked", "permanent", "old"]
    # a downgrade by restart boots an `old` version the same way
    assert [e.status for e in mark_tmp_current(entries, "0.1.0")] == [
        "unpacked",
        "permanent",
        "tmp_current",
    ]
    # the permanent version needs no mark
    assert mark_tmp_current(entries, "0.2.0") == entries
    with pytest.raises(ValueError):
        mark_tmp_current(entries, "9.9.9")


def test_rendered_releases_is_what_release_handler_reads() -> None:
    text = render_releases(parse_releases(RELEASES))
    assert text.startswith("%% coding: utf-8\n")
    term = parse_term(text)
    assert term[1] == (
        Atom("release"),
        "myrel",
        "0.2.0",
        "13.1.5",
        [
            (Atom("kernel"), "8.5.3", "lib/kernel-8.5.3"),
            (Atom("myrel"), "0.2.0", "lib/myrel-0.2.0"),
            (Atom("sasl"), "4.2", "lib/sasl-4.2"),
        ],
        Atom("permanent"),
    )


@pytest.mark.parametrize(
    "text", ["[]", '[{release,"a"}].', '[{release,"a","1","13",[],"unpacked"}].', "x."]
)
def test_parse_releases_refuses_unexpected(text: str) -> None:
    if text == "[]":
        assert parse_releases(text) == []
        return
    with pytest.raises(ValueError):
        parse_releases(text)


def test_releases_entry_from_rel() -> None:
    entry = releases_entry_from_rel(REL, "/srv/rel/myrel")
    assert (entry.name, entry.version, entry.erts, entry.status) == (
        "myrel",
        "0.4.0",
        "13.1.5",
        "unpacked",
    )
    assert entry.libs[2] == (Atom("erel"), "0.1.0", "/srv/rel/myrel/lib/erel-0.1.0")
    assert entry.libs[4] == (Atom("sasl"), "4.2", "/srv/rel/myrel/lib/sasl-4.2")
    with pytest.raises(ValueError):
        releases_entry_from_rel("{release, x}.", "/r")
    with pytest.raises(ValueError):
        releases_entry_from_rel('{foo,{"a","1"},{erts,"1"},[]}.', "/r")


def test_parse_start_erl_data() -> None:
    assert parse_start_erl_data("13.1.5 0.2.0") == ("13.1.5", "0.2.0")
    assert parse_start_erl_data("13.1.5 0.2.0\n") == ("13.1.5", "0.2.0")
    with pytest.raises(ValueError):
        parse_start_erl_data("13.1.5")
