"""The metrics catalogue (core.metrics) and the exposition (adapters.metrics), without a
network: every counter the source counts is declared; families take their labels; the text
Prometheus scrapes parses and says what the counters and the report say."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from erel_sync.adapters.metrics import Metrics
from erel_sync.core.metrics import CATALOGUE, agent_readings, metric_for, publisher_readings
from erel_sync.core.rolloutdoc import GroupRollout, Phase
from erel_sync.model.names import listen_address
from tests.scrape import Samples, parse

SOURCE = Path(__file__).resolve().parents[2] / "erel_sync"
# counters["key"], counters[f"prefix.{x}"], extra["key"], self._count("key") in the source
COUNTED = re.compile(r"""(?:counters|extra)\[(f?)"([^"]+)"\]|_count\((f?)"([^"]+)"\)""")


def counted_keys() -> set[str]:
    keys = set()
    for path in SOURCE.rglob("*.py"):
        for m in COUNTED.finditer(path.read_text()):
            fstring, key = (m.group(1), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
            # An f-string key: its fixed prefix plus a stand-in for each `{...}` part.
            keys.add(re.sub(r"\{[^}]*\}", "x", key) if fstring else key)
    return keys


def test_every_counter_the_source_counts_is_declared() -> None:
    keys = counted_keys() | {"duplicate", "stale", "signed", "published", "rejected"}
    assert len(keys) > 25  # the scan found them
    undeclared = sorted(
        k for k in keys if metric_for("agent", k) is None and metric_for("publisher", k) is None
    )
    assert undeclared == [], "declare these in erel_sync/core/metrics.py"


def test_metric_names_follow_prometheus_naming() -> None:
    for daemon, decls in CATALOGUE.items():
        names = [d.metric(daemon) for d in decls]
        assert len(names) == len(set(names)), daemon
        for name in names:
            assert re.fullmatch(r"erel_sync_(agent|publisher)_[a-z_]+", name), name
            assert not name.endswith("_total")  # the client adds it to counters


@pytest.mark.parametrize(
    ("key", "labels"),
    [
        ("connects", ()),
        ("rejected.BadSignature", ("BadSignature",)),
        ("actions.upgrade.failed", ("upgrade", "failed")),
        ("task_restarts.broker", ("broker",)),
    ],
)
def test_a_key_maps_to_its_metric_and_labels(key: str, labels: tuple[str, ...]) -> None:
    found = metric_for("agent", key)
    assert found is not None and found[1] == labels
    assert metric_for("agent", "no_such_counter") is None
    assert metric_for("agent", "actions.upgrade") is None  # a label missing


def scrape(m: Metrics) -> Samples:
    return parse(m.text().decode())


REPORT = {
    "snapshot": {"seq": 7},
    "applied": {"seq": 6},
    "attempted": {"seq": 7},
    "converged": False,
    "group": "web",
    "rollout": {"state": "changing"},
    "releases": [
        {
            "name": "hello",
            "version": "0.1.0",
            "desired_version": "0.2.0",
            "state": "Upgrading",
            "healthy": True,
            "running": True,
        }
    ],
}


def test_the_agent_exposition_says_what_its_counters_and_report_say() -> None:
    counters = Counter({"connects": 2, "rejected.BadSignature": 1, "actions.upgrade.ok": 3})
    m = Metrics("agent", lambda: counters, lambda: agent_readings(REPORT, True))
    m.reconcile.observe(0.02)
    got = scrape(m)
    assert got[("erel_sync_agent_broker_connects_total", ())] == 2
    assert got[("erel_sync_agent_broker_errors_total", ())] == 0  # declared: there at 0
    assert got[("erel_sync_agent_snapshots_refused_total", (("reason", "BadSignature"),))] == 1
    upgrades = (("action", "upgrade"), ("result", "ok"))
    assert got[("erel_sync_agent_actions_total", upgrades)] == 3
    assert got[("erel_sync_agent_snapshot_seq", ())] == 7
    assert got[("erel_sync_agent_applied_seq", ())] == 6
    assert got[("erel_sync_agent_broker_connected", ())] == 1
    assert got[("erel_sync_agent_release_healthy", (("release", "hello"),))] == 1
    info = (
        ("desired_version", "0.2.0"),
        ("release", "hello"),
        ("state", "Upgrading"),
        ("version", "0.1.0"),
    )
    assert got[("erel_sync_agent_release_info", info)] == 1
    assert got[("erel_sync_agent_rollout_state", (("group", "web"), ("state", "changing")))] == 1
    assert got[("erel_sync_agent_reconcile_duration_seconds_count", ())] == 1
    counters["connects"] += 1  # read at each scrape
    assert scrape(m)[("erel_sync_agent_broker_connects_total", ())] == 3


def test_the_publisher_exposition_has_its_seq_and_each_groups_rollout() -> None:
    g = GroupRollout(
        group="web",
        seq=5,
        revision="r",
        phase=Phase.PROGRESSING,
        max_unavailable=1,
        canaries=(),
        order=("a", "b", "c"),
        granted={},
        done=frozenset({"a"}),
        failed={},
        waiting=("b", "c"),
    )
    counters = {"signed": 5, "published": 7, "rollout_steps": 9}
    m = Metrics(
        "publisher", lambda: counters, lambda: publisher_readings(5, True, False, {"web": g})
    )
    got = scrape(m)
    assert got[("erel_sync_publisher_revisions_published_total", ())] == 5
    assert got[("erel_sync_publisher_snapshot_publishes_total", ())] == 7
    assert got[("erel_sync_publisher_rollout_steps_total", ())] == 9
    assert got[("erel_sync_publisher_seq", ())] == 5
    assert got[("erel_sync_publisher_active", ())] == 1
    assert got[("erel_sync_publisher_broker_connected", ())] == 0
    phase = (("group", "web"), ("phase", Phase.PROGRESSING.value))
    assert got[("erel_sync_publisher_rollout_phase", phase)] == 1
    assert got[("erel_sync_publisher_rollout_hosts", (("group", "web"), ("state", "waiting")))] == 2
    assert got[("erel_sync_publisher_rollout_hosts", (("group", "web"), ("state", "done")))] == 1


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("127.0.0.1", 9464)),
     ("[::1]:9000", ("::1", 9000)), ("0.0.0.0:1", ("0.0.0.0", 1))],
)  # fmt: skip
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert listen_address(text) == address


@pytest.mark.parametrize("text", ["9464", "host:", "host:99999", "host:0", "host:port"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        listen_address(text)


def test_the_docs_dashboard_and_alerts_name_only_metrics_that_exist() -> None:
    g = GroupRollout("web", 1, "r", Phase.COMPLETE, 1, (), (), {}, frozenset(), {}, ())
    gauges = {f"erel_sync_agent_{r.name}" for r in agent_readings(REPORT, True)}
    gauges |= {f"erel_sync_publisher_{r.name}" for r in publisher_readings(1, True, True, {"w": g})}
    counters = {f"{d.metric(daemon)}_total" for daemon, ds in CATALOGUE.items() for d in ds}
    histograms = {
        f"erel_sync_{h}_seconds{suffix}"
        for h in ("agent_reconcile_duration", "publisher_publish_duration")
        for suffix in ("", "_bucket", "_count", "_sum")
    }
    known = gauges | counters | histograms
    docs = Path(__file__).resolve().parents[2] / "docs"
    named: set[str] = set()
    for path in (docs / "metrics.md", *sorted((docs / "monitoring").iterdir())):
        named |= set(re.findall(r"erel_sync_[a-z_]+", path.read_text()))
    assert len(named) > 20
    assert sorted(named - known) == []
    assert sorted(known - histograms - named) == [], "docs/metrics.md lists every metric"
