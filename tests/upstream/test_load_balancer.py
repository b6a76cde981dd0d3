"""Round robin, random and least request picks, pinned like Envoy's round_robin_lb_test.cc."""

from __future__ import annotations

import itertools

from podproxy.upstream.host import HealthFlag, Host, HostSet, PrioritySet
from podproxy.upstream.load_balancer import (
    LeastRequestLoadBalancer,
    RandomLoadBalancer,
    RoundRobinLoadBalancer,
)


def hosts(n: int) -> list[Host]:
    return [Host(f"127.0.1.{i + 1}", 8080) for i in range(n)]


def test_no_hosts_picks_none() -> None:
    lb = RoundRobinLoadBalancer(random=lambda: 0)
    assert lb.choose_host() is None


def test_seed_sets_the_start_index() -> None:
    # Envoy's Seed test: random() == 1 with three hosts gives h1, h2, h0, h1.
    hs = hosts(3)
    lb = RoundRobinLoadBalancer(random=lambda: 1)
    lb.on_host_set(HostSet.of(hs))
    assert [lb.choose_host() for _ in range(4)] == [hs[1], hs[2], hs[0], hs[1]]


def test_index_survives_host_set_change() -> None:
    # Envoy's Normal test: after two picks over two hosts, a third host joins and picks go 2, 0, 1.
    hs = hosts(3)
    ps = PrioritySet()
    lb = RoundRobinLoadBalancer(random=lambda: 0)
    ps.add_member_update_cb(lb.on_host_set)
    ps.update_hosts(hs[:2])
    assert [lb.choose_host() for _ in range(2)] == [hs[0], hs[1]]
    ps.update_hosts(hs)
    assert [lb.choose_host() for _ in range(3)] == [hs[2], hs[0], hs[1]]


def test_panic_mode_uses_all_hosts() -> None:
    hs = hosts(3)
    hs[0].health_flags = HealthFlag.FAILED_ACTIVE_HC
    hs[1].health_flags = HealthFlag.FAILED_OUTLIER_CHECK
    lb = RoundRobinLoadBalancer(random=lambda: 0)
    lb.on_host_set(HostSet.of(hs))
    assert {lb.choose_host() for _ in range(3)} == set(hs)
    hs[1].health_flags = HealthFlag(0)
    lb.on_host_set(HostSet.of(hs))
    assert {lb.choose_host() for _ in range(4)} == {hs[1], hs[2]}


def test_random_uses_modulo() -> None:
    seq = itertools.cycle([5, 7])
    hs = hosts(3)
    lb = RandomLoadBalancer(random=lambda: next(seq))
    lb.on_host_set(HostSet.of(hs))
    assert [lb.choose_host(), lb.choose_host()] == [hs[2], hs[1]]


def test_least_request_prefers_fewer_active() -> None:
    hs = hosts(2)
    hs[0].stats.rq_active = 5
    seq = itertools.cycle([0, 1])
    lb = LeastRequestLoadBalancer(random=lambda: next(seq))
    lb.on_host_set(HostSet.of(hs))
    assert lb.choose_host() is hs[1]


def test_update_hosts_keeps_objects_and_reports_changes() -> None:
    ps = PrioritySet()
    seen: list[tuple[int, int]] = []
    ps.add_member_update_cb(lambda hs, a, r: seen.append((len(a), len(r))))
    first = hosts(2)
    ps.update_hosts(first)
    again = hosts(3)
    added, removed = ps.update_hosts(list(reversed(again)))
    assert [h.key for h in added] == ["127.0.1.3:8080"]
    assert removed == []
    assert first[0] in ps.host_set.hosts  # unchanged host keeps its object
    assert ps.update_hosts(again) == ([], [])  # order does not matter: no rebuild
    _, removed = ps.update_hosts(again[1:])
    assert removed[0].key == "127.0.1.1:8080" and removed[0].removed
    assert seen == [(2, 0), (1, 0), (0, 1)]
