"""Rollouts under faults, on a cluster with a RabbitMQ node of its own (the tests restart it):
an agent killed with SIGKILL while it holds a place, and the broker restarted mid-rollout. The
limit must hold throughout, as reconstructed from the agents' rollout events.

Rule (docs/architecture.md, Rollouts): a host whose agent dies mid-change keeps its place until
it reports again or `progress_deadline` passes; then it counts as failed and the rollout halts
(hosts not yet changed keep what they run); `erel-sync rollout retry` resumes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from erel_sync.dev.cluster import DevHost
from erel_sync.dev.rabbitnode import RabbitNode
from tests.e2e.harness import E2ECluster, cli, reset_cluster, running_cluster, wait_for
from tests.e2e.test_gitops import release
from tests.e2e.test_rollout import (
    change_intervals,
    commit_group,
    most_at_once,
    rollout_doc,
    rollout_events,
    versions,
    web_group,
)
from tests.rabbit import EXTERNAL_URL_ENV, Rabbit

pytestmark = pytest.mark.e2e

WEB = [f"web-{i}" for i in range(1, 7)]
HOSTS = tuple(DevHost(h, {"role": "web"}) for h in WEB)
# A probation long enough to kill an agent in the middle of a host's change.
SLOW = release("hello", ("0.1.0", "0.2.0")).replace("probation: 300ms", "probation: 3s")
FILES = {
    "releases/hello.yaml": SLOW,
    "groups/web.yaml": web_group("0.1.0", "{max_unavailable: 3}"),
}


@pytest.fixture(scope="module")
def own_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"{EXTERNAL_URL_ENV} is set: these tests restart a broker of their own")
    node = RabbitNode(Path(tmp_path_factory.mktemp("rollout-rabbit")))
    node.start()
    try:
        yield Rabbit(url=node.url, node=node)
    finally:
        node.stop()


@pytest.fixture(scope="module")
def cluster(own_rabbit: Rabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        own_rabbit, tmp_path_factory, "rollf", HOSTS, FILES, reconcile_interval="2s"
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def baseline(cluster: E2ECluster) -> None:
    reset_cluster(cluster, FILES, HOSTS, timeout=240)


def changing_now(c: E2ECluster, seq: int) -> list[str]:
    spans = change_intervals(rollout_events(c, seq))
    return [h for h, s in spans.items() if s and s[-1][1] == float("inf")]


def test_04_an_agent_killed_mid_change_frees_its_place_by_the_deadline(
    cluster: E2ECluster,
) -> None:
    policy = "{max_unavailable: 2, progress_deadline: 20s}"
    _, seq = commit_group(cluster, web_group("0.2.0", policy), "hello 0.2.0, 20s deadline")
    victim = wait_for("a host mid-change", lambda: (changing_now(cluster, seq) or [None])[0], 60)
    cluster.kill_process(victim)  # SIGKILL: no presence `left`, no last report
    # The place is given back at the latest after the deadline: the host counts as failed and
    # the rollout halts; nobody else is left mid-change, and the limit held throughout.
    doc = wait_for(
        "the rollout halted on the killed host",
        lambda: (d := rollout_doc(cluster))["phase"] == "Halted" and victim in d["failed"] and d,
        90,
    )
    assert "ProgressDeadlineExceeded" in doc["failed"][victim], doc
    assert victim not in doc["granted"], doc
    assert most_at_once(change_intervals(rollout_events(cluster, seq))) <= 2
    # The agent comes back, the operator resumes: everyone ends on 0.2.0 under the limit.
    cluster.start_agent(next(h for h in HOSTS if h.host_id == victim))
    out = cli(cluster, "rollout", "retry", "web")
    assert out.returncode == 0, (out.stdout, out.stderr)
    try:
        cluster.wait_converged(WEB, seq, timeout=240)
    except AssertionError as e:  # say where each host and the rollout stand
        where = {h: (cluster.report(h).get("rollout"), cluster.releases(h)) for h in WEB}
        raise AssertionError(f"{e}\nrollout: {rollout_doc(cluster)}\nhosts: {where}") from e
    assert set(versions(cluster).values()) == {"0.2.0"}
    assert most_at_once(change_intervals(rollout_events(cluster, seq))) <= 2


def test_05_a_broker_restart_mid_rollout_loses_no_place_and_makes_none(
    cluster: E2ECluster, own_rabbit: Rabbit
) -> None:
    _, seq = commit_group(cluster, web_group("0.2.0", "{max_unavailable: 2}"), "hello 0.2.0")
    wait_for("the rollout under way", lambda: changing_now(cluster, seq), 60)
    assert own_rabbit.node is not None
    own_rabbit.node.restart()
    cluster.wait_converged(WEB, seq, timeout=240)
    assert set(versions(cluster).values()) == {"0.2.0"}
    assert most_at_once(change_intervals(rollout_events(cluster, seq))) <= 2
    assert rollout_doc(cluster)["phase"] == "Complete"
