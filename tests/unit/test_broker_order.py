"""Which broker node a client tries first (`model.brokerurl.spread`, `BrokerOrder`): hosts spread
evenly over the nodes, a lost node's hosts spread evenly over the others, and a client that
lost a node starts its next round after it."""

from __future__ import annotations

from collections import Counter

from erel_sync.model.brokerurl import BrokerOrder, spread

URLS = [f"amqp://u:p@10.0.0.{i}:5672/erel" for i in (1, 2, 3)]
HOSTS = [f"web-{i}" for i in range(600)]


def test_each_client_has_its_own_stable_order_of_every_node() -> None:
    for host in HOSTS[:20]:
        order = spread(URLS, host)
        assert sorted(order) == sorted(URLS)
        assert spread(URLS, host) == order  # the same at every start
    assert len({tuple(spread(URLS, h)) for h in HOSTS}) == 6  # every permutation is used


def test_hosts_spread_over_the_nodes_and_a_lost_nodes_hosts_over_the_others() -> None:
    first = Counter(spread(URLS, h)[0] for h in HOSTS)
    assert all(150 <= first[u] <= 250 for u in URLS), first  # 200 each, give or take
    orphans = [h for h in HOSTS if spread(URLS, h)[0] == URLS[0]]
    moved = Counter(spread(URLS, h)[1] for h in orphans)
    assert set(moved) == set(URLS[1:])
    assert all(n >= 0.35 * len(orphans) for n in moved.values()), moved


def test_a_lost_node_is_tried_last_in_the_next_round() -> None:
    order = BrokerOrder(URLS, "web-1")
    a, b, c = order.round()
    assert [a, b, c] == spread(URLS, "web-1")
    order.connected(a)
    order.lost()
    assert order.round() == [b, c, a]
    order.connected(c)  # b did not answer, c did; then c is lost too
    order.lost()
    assert order.round() == [a, b, c]
    order.lost()  # lost without a connection (nothing to move past)
    assert order.round() == [a, b, c]


def test_one_url_is_always_the_one() -> None:
    order = BrokerOrder(URLS[:1], "web-1")
    order.connected(URLS[0])
    order.lost()
    assert order.round() == URLS[:1]
