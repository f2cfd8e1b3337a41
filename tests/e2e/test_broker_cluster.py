"""The broker as a 3-node RabbitMQ cluster of the test's own (erel_sync/dev/rabbitcluster.py:
own node names, ports and data dirs, joined with `rabbitmqctl join_cluster`; each node in a
network namespace of its own), a publisher pair and five agent processes given every node's
URL: what each host applied is compared with what was published, Jepsen-style. A sampler reads
every host's status.json all along: no host may ever hold or apply a lower seq after a higher one.

- the hosts, connecting first, spread over the nodes (each host's own order of the URLs);
- a node stopped for a minute: the hosts it served move to the others and catch up on commits
  made meanwhile; it comes back and nothing regresses;
- the node that leads the config stream killed with SIGKILL while 20 commits are pushed: every
  host ends on HEAD;
- the whole cluster stopped and started again: every host on HEAD after the next commit;
- the node that leads the config stream cut from the cluster network (its clients still
  reach it): RabbitMQ's partition handling pauses it, its agents move to the other two, two
  commits reach every host; healed, it resumes and rejoins, and one more commit reaches every
  host;
- of the publisher pair (`publisher --ha`, publisher/lease.py), the active one killed with
  SIGKILL in the middle of a burst of commits: the standby publishes the next one, and the time
  it took is printed;
- the active publisher paused with SIGSTOP: the broker stops hearing it, drops its connection
  and with it the lock; the standby takes over. Resumed, the paused one finds its connection
  gone and stands by. The whole config stream, read back, never carries one seq for two
  revisions, and its seqs never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from erel_sync.adapters import store
from erel_sync.adapters.broker import topology as topo
from erel_sync.core.epochs import epoch_of
from erel_sync.dev.cluster import DevCluster, DevHost
from erel_sync.dev.netns import Network
from erel_sync.dev.probes import port_open
from erel_sync.dev.rabbitcluster import RabbitCluster
from erel_sync.dev.rabbitnode import RabbitNode
from tests.e2e.harness import E2ECluster
from tests.e2e.test_gitops import release
from tests.rabbit import EXTERNAL_URL_ENV
from tests.streams import read_stream
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

HOSTS = tuple(DevHost(f"h-{i}", {"role": "fleet"}) for i in range(1, 6))
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: fleet}
spec:
  hosts: ["h-*"]
  releases: []
  allow_empty: true
# change %d
"""
FILES = {"releases/hello.yaml": release("hello", ("0.1.0",)), "groups/fleet.yaml": GROUP % 0}
OUTAGE = 60.0  # seconds a node stays stopped (the minute)


class SeqSampler(threading.Thread):
    """Every host's held and applied seq, read from its status.json every 50 ms; `regressions`
    lists each time one went down."""

    def __init__(self, c: E2ECluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.seen: dict[tuple[str, str], int] = {}
        self.regressions: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            for h in self.c.hosts:
                doc = store.read_json(self.c.host_dir(h.host_id) / "state" / "status.json")
                report = (doc or {}).get("report") or {}
                for part in ("snapshot", "applied"):
                    seq = (report.get(part) or {}).get("seq")
                    if not isinstance(seq, int):
                        continue
                    before = self.seen.get((h.host_id, part), 0)
                    if seq < before:
                        self.regressions.append(f"{h.host_id} {part} {before} -> {seq}")
                    self.seen[(h.host_id, part)] = max(before, seq)


@contextlib.contextmanager
def sampled_fleet(
    work: Path, rabbits: Callable[[Path], RabbitCluster] | None = None
) -> Iterator[E2ECluster]:
    """Five agents and a publisher pair on a 3-node cluster (dev's own, or `rabbits(work)` started
    here), converged; every host's seqs sampled all along, none may go back."""
    c = E2ECluster(
        work,
        hosts=HOSTS,
        brokers=3,
        publishers=2,
        republish=5,  # and the agents check a stream quiet for 15 s against the cluster
        reconcile_interval="5s",
        heartbeat_interval="500ms",
    )
    sampler = SeqSampler(c)
    try:
        if rabbits is not None:
            c.rabbits = rabbits(work)
            c.rabbits.start()
        c.prepare(files=FILES)
        c.start()
        sampler.start()
        c.wait_converged([h.host_id for h in HOSTS], timeout=90)
        yield c
    finally:
        sampler.halt.set()
        if sampler.ident is not None:  # started: a failed start-up must show its own error
            sampler.join(5)
        c.stop()
    assert sampler.regressions == [], "a host went back to a lower seq"


@dataclasses.dataclass(frozen=True)
class CutFleet:
    c: E2ECluster
    network: Network
    # Where each agent connected first, before any test moved it: agents stay where failover
    # took them (no rebalancing), so only this shows how hosts spread over the nodes.
    first_placement: dict[str, str]


@pytest.fixture(scope="module")
def cut_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CutFleet]:
    """The fleet on three nodes in network namespaces of their own (erel_sync/dev/rabbitnetns.py:
    distribution on a cluster network, AMQP on a broker network the machine reaches),
    `pause_minority` (RabbitMQ's advice for three nodes) and a 4 s net tick, so that a node can
    be cut off from the other two. Needs root: without it, it fails with that reason."""
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"{EXTERNAL_URL_ENV} is set: these tests kill and restart nodes of their own")
    network = Network(3)
    try:
        network.up()
        with sampled_fleet(
            tmp_path_factory.mktemp("brokers"),
            lambda work: RabbitCluster(
                work / "rabbit-cluster",
                3,
                "erelfleet",
                network=network,
                erl_args="-rabbit cluster_partition_handling pause_minority -kernel net_ticktime 4",
            ),
        ) as c:
            yield CutFleet(c, network, placement(nodes_of(c)[0]))
    finally:
        network.down()


@pytest.fixture
def fleet(cut_fleet: CutFleet) -> E2ECluster:
    return cut_fleet.c


def change(c: E2ECluster, n: int) -> str:
    return c.commit(f"change {n}", {"groups/fleet.yaml": GROUP % n})


def nodes_of(c: E2ECluster) -> list[RabbitNode]:
    assert c.rabbits is not None
    return c.rabbits.nodes


def connections(node: RabbitNode) -> dict[str, str]:
    """Each agent's connection (its name) -> the node it is on (the node of its pid)."""
    out = node.ctl("-q", "list_connections", "pid", "client_properties", "--no-table-headers")
    found = {}
    for line in out.splitlines():
        pid = line.split(None, 1)[0]  # <node.N.N.N>
        for name in (f"erel-agent:{h.host_id}" for h in HOSTS):
            if f'"{name}"' in line:
                found[name] = pid.strip("<>").rsplit(".", 3)[0]
    return found


def placement(node: RabbitNode) -> dict[str, str]:
    """`connections` once every agent is connected (asked through `node`)."""
    return wait_for(
        "every agent connected",
        lambda: (p := connections(node)) and len(p) == len(HOSTS) and p,
        60,
    )


def stream_leader(node: RabbitNode, stream: str = "erel.config") -> str:
    """The node leading `stream`. rabbitmqctl leaves out a stream it could not ask in time (a
    busy node, a leader being elected): asked again until it is listed."""
    found: list[str] = []

    def listed() -> bool:
        out = node.ctl("-q", "list_queues", "name", "leader", "--no-table-headers")
        found[:] = [line.split()[-1] for line in out.splitlines() if line.split()[:1] == [stream]]
        return bool(found)

    wait_for(f"{stream} listed with its leader", listed, 60, every=0.5)
    return found[0]


def all_on_head(c: E2ECluster, timeout: float) -> None:
    c.wait_converged([h.host_id for h in HOSTS], timeout=timeout)


def test_hosts_spread_over_the_nodes_when_they_first_connect(cut_fleet: CutFleet) -> None:
    # Each host's own order of the URLs (by host id): one node does not take every connection.
    assert len(set(cut_fleet.first_placement.values())) >= 2, cut_fleet.first_placement


def test_hosts_of_a_stopped_node_move_to_the_others_and_catch_up(fleet: E2ECluster) -> None:
    c = fleet
    # Every agent connected (one may still be coming back from the test before; an earlier
    # test may have left them all on one node, which is then the one stopped).
    placed = placement(nodes_of(c)[1])
    victim = max(nodes_of(c), key=lambda n: list(placed.values()).count(n.node_name))
    moved = sorted(h for h, n in placed.items() if n == victim.node_name)
    assert moved
    victim.stop()
    down_since = time.monotonic()
    try:
        live = next(n for n in nodes_of(c) if n is not victim)
        wait_for(
            "the stopped node's hosts reconnected elsewhere",
            lambda: set(connections(live)) == {f"erel-agent:{h.host_id}" for h in HOSTS},
            60,
        )
        for n in (1, 2, 3):
            change(c, n)
        all_on_head(c, 60)
        # The minute of the outage, with one more commit at its end.
        wait_for(
            "the node's minute down", lambda: time.monotonic() - down_since >= OUTAGE, OUTAGE + 5
        )
        change(c, 4)
        all_on_head(c, 60)
    finally:
        victim.start()
    change(c, 5)
    all_on_head(c, 60)


def test_killing_the_config_streams_leader_during_20_commits_loses_no_host(
    fleet: E2ECluster,
) -> None:
    c = fleet
    leader_name = stream_leader(nodes_of(c)[0])
    leader = next(n for n in nodes_of(c) if n.node_name == leader_name)
    try:
        for n in range(10, 30):
            change(c, n)
            if n == 14:
                leader.kill()  # SIGKILL: no goodbye to the stream's replicas
        all_on_head(c, 120)
    finally:
        leader.start()
    assert stream_leader(nodes_of(c)[0]) in {n.node_name for n in nodes_of(c)}


def test_a_whole_cluster_restart_then_every_host_on_head(fleet: E2ECluster) -> None:
    c = fleet
    assert c.rabbits is not None
    c.rabbits.stop()
    c.rabbits.start()
    change(c, 40)
    all_on_head(c, 120)


def running_nodes(node: RabbitNode) -> list[str]:
    status = json.loads(node.ctl("-q", "cluster_status", "--formatter", "json"))
    return sorted(status.get("running_nodes") or [])


def test_a_node_cut_off_pauses_its_hosts_move_and_none_regresses(
    cut_fleet: CutFleet,
) -> None:
    c, network = cut_fleet.c, cut_fleet.network
    nodes = nodes_of(c)
    leader_name = stream_leader(nodes[0])
    victim = next(n for n in nodes if n.node_name == leader_name)
    majority = [n for n in nodes if n is not victim]
    where = network.hosts[nodes.index(victim)]
    network.cut(where)  # from the cluster network; its clients still reach it
    try:
        wait_for(
            "the cut node paused (pause_minority: its listener closed)",
            lambda: not port_open(victim.amqp_port, victim.host),
            60,
        )
        wait_for(
            "every agent on the two other nodes",
            lambda: set(connections(majority[0])) == {f"erel-agent:{h.host_id}" for h in HOSTS},
            60,
        )
        assert stream_leader(majority[0]) in {n.node_name for n in majority}
        for n in (70, 71):
            change(c, n)
        all_on_head(c, 90)
    finally:
        network.heal(where)

    def rejoined() -> bool:
        return port_open(victim.amqp_port, victim.host) and running_nodes(majority[0]) == sorted(
            n.node_name for n in nodes
        )

    try:
        wait_for("the node resumed and rejoined", rejoined, 60, every=1.0)
    except AssertionError:
        # RabbitMQ does not always end a pause_minority partition by itself (Mnesia can stay
        # split after the heal: rabbitmq-server#17319); its documented recovery is to restart
        # the node of the minority. What is tested here is erel-sync: hosts keep up, none
        # regresses, before and after.
        print(f"\n{victim.node_name} did not rejoin by itself within 60 s: restarted")
        victim.kill()
        victim.start()
        wait_for("the restarted node rejoined", rejoined, 120, every=1.0)
    change(c, 72)
    all_on_head(c, 90)


def standing_by(c: E2ECluster, name: str, since: int = 0) -> bool:
    """Publisher `name` said, after byte `since` of its log, that another one is active."""
    log = (c.work / "logs" / f"{name}.log").read_bytes()[since:]
    return b"standby: another publisher holds" in log


def log_size(c: E2ECluster, name: str) -> int:
    return (c.work / "logs" / f"{name}.log").stat().st_size


def test_the_standby_publishes_the_next_commit_after_the_active_publisher_is_killed(
    fleet: E2ECluster,
) -> None:
    c = fleet
    active = c.active_publisher()
    standby = next(n for n in c.publisher_names if n != active)
    head = ""
    for n in range(50, 56):  # a burst; the active one dies in the middle of it
        head = DevCluster.commit(c, f"burst {n}", {"groups/fleet.yaml": GROUP % n})
        if n == 52:
            c.kill_process(active)
            killed = time.monotonic()
    wait_for("the standby published HEAD", lambda: c.published(standby).get("revision") == head)
    took = time.monotonic() - killed
    print(f"\nkill -9 of the active publisher -> standby published HEAD: {took:.1f} s")
    all_on_head(c, 60)
    since = log_size(c, active)
    c.start_publisher(active)  # back as the standby of the one now active
    wait_for(f"{active} standing by", lambda: standing_by(c, active, since), 30)
    assert c.active_publisher() == standby


def test_a_paused_publishers_standby_takes_over_and_no_seq_means_two_revisions(
    fleet: E2ECluster,
) -> None:
    c = fleet
    active = c.active_publisher()
    standby = next(n for n in c.publisher_names if n != active)
    first_epoch = epoch_of(c.publisher_seq())
    since = log_size(c, active)
    c.procs[active].send_signal(signal.SIGSTOP)
    try:
        paused = time.monotonic()
        head = DevCluster.commit(c, "while paused", {"groups/fleet.yaml": GROUP % 60})
        wait_for("the standby took over", lambda: c.published(standby).get("revision") == head)
        all_on_head(c, 60)
        print(
            f"\nSIGSTOP of the active publisher -> HEAD on every host: "
            f"{time.monotonic() - paused:.1f} s"
        )
        assert epoch_of(c.publisher_seq()) > first_epoch
    finally:
        c.procs[active].send_signal(signal.SIGCONT)  # it wakes up believing it is active
    change(c, 61)
    all_on_head(c, 60)
    wait_for(f"{active} stands by", lambda: standing_by(c, active, since), 30)
    assert c.active_publisher() == standby

    records = asyncio.run(
        read_stream(c.url, topo.CONFIG_STREAM, topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY)
    )
    seqs = [(int(r["seq"]), str(r["revision"])) for r in records if "seq" in r]
    revisions: dict[int, set[str]] = {}
    for seq, revision in seqs:
        revisions.setdefault(seq, set()).add(revision)
    assert all(len(r) == 1 for r in revisions.values()), revisions
    order = [seq for seq, _ in seqs]
    assert order == sorted(order), f"a seq went backwards in the stream: {order}"
