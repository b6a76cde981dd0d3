"""STRICT_DNS and LOGICAL_DNS discovery against a scripted resolver (reference/envoy.md §1)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from podproxy.config.loader import load
from podproxy.errors import ConfigError, ConfigErrors
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.cluster_manager import ClusterManager
from podproxy.upstream.discovery import DnsDiscovery, RefreshTimer
from podproxy.upstream.dns import DnsResolutionFailed, DnsResponse

CLUSTER = """
static_resources:
  clusters:
  - name: httpd
    connect_timeout: 0.25s
    type: {type}
    dns_lookup_family: V4_ONLY
    lb_policy: ROUND_ROBIN
    {extra}
    load_assignment:
      cluster_name: httpd
      endpoints:
      - lb_endpoints:
{endpoints}
"""

ENDPOINT = """        - endpoint:
            address:
              socket_address: {{address: {name}, port_value: 8080}}
"""


def cluster_cfg(
    type_: str = "STRICT_DNS", names: tuple[str, ...] = ("httpd-discovery",), extra: str = ""
) -> object:
    text = CLUSTER.format(
        type=type_,
        extra=extra,
        endpoints="".join(ENDPOINT.format(name=n) for n in names),
    )
    return load(config_yaml=text).bootstrap.static_resources.clusters[0]


class ScriptedResolver:
    """Answers from a script: a tuple of addresses, or an exception to raise."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.calls: list[tuple[str, str]] = []

    async def resolve(self, name: str, family: str) -> DnsResponse:
        self.calls.append((name, family))
        a = self.answers.get(name, ())
        if isinstance(a, BaseException):
            raise a
        assert isinstance(a, tuple)
        return DnsResponse(a, 30.0)


def build(
    cfg: object, resolver: ScriptedResolver, random_values: Iterator[int] | None = None
) -> tuple[Cluster, DnsDiscovery]:
    rnd = random_values or itertools.repeat(0)
    cm = ClusterManager(Store(), random=lambda: next(rnd), resolver_factory=lambda c: resolver)
    cluster = cm.add_cluster(cfg, "static_resources.clusters[0]")
    assert isinstance(cluster.discovery, DnsDiscovery)
    return cluster, cluster.discovery


def keys(cluster: Cluster) -> list[str]:
    return sorted(h.key for h in cluster.hosts)


async def test_answer_becomes_hosts_and_order_does_not_matter() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg(), r)
    t = disc.targets[0]
    r.answers["httpd-discovery"] = ("127.0.1.2", "127.0.1.1", "127.0.1.1")
    assert await t.resolve_once() == 5.0
    assert keys(cluster) == ["127.0.1.1:8080", "127.0.1.2:8080"]
    assert cluster.initialized
    assert all(h.hostname == "httpd-discovery" for h in cluster.hosts)
    first = {h.key: h for h in cluster.hosts}
    r.answers["httpd-discovery"] = ("127.0.1.1", "127.0.1.2")
    await t.resolve_once()
    st = cluster.info.stats
    assert (st.update_attempt.value, st.update_success.value, st.update_no_rebuild.value) == (
        2,
        2,
        1,
    )
    assert st.membership_change.value == 1
    r.answers["httpd-discovery"] = ("127.0.1.1", "127.0.1.2", "127.0.1.3")
    await t.resolve_once()
    assert keys(cluster)[-1] == "127.0.1.3:8080"
    assert {h.key: h for h in cluster.hosts}["127.0.1.1:8080"] is first["127.0.1.1:8080"]
    assert st.membership_total.value == 3 and st.membership_healthy.value == 3


async def test_failure_keeps_hosts_and_empty_answer_removes_them() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg(), r)
    t = disc.targets[0]
    r.answers["httpd-discovery"] = ("127.0.1.1", "127.0.1.2")
    await t.resolve_once()
    r.answers["httpd-discovery"] = DnsResolutionFailed("httpd-discovery", "timeout")
    assert await t.resolve_once() == 5.0  # no failure refresh rate: plain refresh rate
    assert len(cluster.hosts) == 2
    assert cluster.info.stats.update_failure.value == 1
    r.answers["httpd-discovery"] = ()  # NXDOMAIN / NODATA
    await t.resolve_once()
    assert cluster.hosts == ()
    assert cluster.choose_host() is None


async def test_removed_host_is_flagged_and_its_pool_drains() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg(), r)
    t = disc.targets[0]
    r.answers["httpd-discovery"] = ("127.0.1.1", "127.0.1.2")
    await t.resolve_once()
    gone = next(h for h in cluster.hosts if h.address == "127.0.1.2")
    pool = cluster.pool_for(gone)
    r.answers["httpd-discovery"] = ("127.0.1.1",)
    await t.resolve_once()
    assert gone.removed and pool.draining and gone not in cluster.pools


async def test_each_endpoint_is_its_own_target() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg(names=("a.example", "b.example")), r)
    r.answers["a.example"] = ("127.0.1.1",)
    r.answers["b.example"] = ("127.0.1.2", "127.0.1.3")
    a, b = disc.targets
    await a.resolve_once()
    assert cluster.initialized  # any one target completes the warm-up (as Envoy)
    await b.resolve_once()
    assert keys(cluster) == ["127.0.1.1:8080", "127.0.1.2:8080", "127.0.1.3:8080"]
    r.answers["a.example"] = DnsResolutionFailed("a.example", "SERVFAIL")
    r.answers["b.example"] = ()
    await a.resolve_once()
    await b.resolve_once()
    assert keys(cluster) == ["127.0.1.1:8080"]


def test_failure_backoff_is_fully_jittered_and_capped() -> None:
    cfg = cluster_cfg(extra="dns_failure_refresh_rate: {base_interval: 7s, max_interval: 20s}")
    values = iter([8000, 13999, 10**9 + 5, 10**9 + 5, 0])
    timer = RefreshTimer(cfg, lambda: next(values))
    assert timer.after_failure() == 1.0  # Envoy's test: base 7 s, random 8000 → 1000 ms
    assert timer.after_failure() == 13.999  # current doubled to 14 s
    assert timer.after_failure() == pytest.approx((10**9 + 5) % 20000 / 1000)  # capped at max
    timer.after_success(DnsResponse(("127.0.1.1",), 30))
    assert timer._current == 7.0


def test_ttl_is_respected_only_when_asked_and_non_empty() -> None:
    cfg = cluster_cfg(extra="respect_dns_ttl: true")
    timer = RefreshTimer(cfg, lambda: 0)
    assert timer.after_success(DnsResponse(("127.0.1.1",), 2.0)) == 2.0
    assert timer.after_success(DnsResponse((), 2.0)) == 5.0
    assert timer.after_success(DnsResponse(("127.0.1.1",), 0.0)) == 5.0
    plain = RefreshTimer(cluster_cfg(), lambda: 0)
    assert plain.after_success(DnsResponse(("127.0.1.1",), 2.0)) == 5.0


async def test_logical_dns_keeps_one_host_that_follows_the_first_address() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg("LOGICAL_DNS"), r)
    t = disc.targets[0]
    r.answers["httpd-discovery"] = ("127.0.1.1", "127.0.1.2")
    await t.resolve_once()
    (host,) = cluster.hosts
    pool = cluster.pool_for(host)
    r.answers["httpd-discovery"] = ("127.0.1.3", "127.0.1.1")
    await t.resolve_once()
    assert cluster.hosts == (host,) and host.key == "127.0.1.3:8080"
    assert cluster.pool_for(host) is pool  # existing connections are not drained
    r.answers["httpd-discovery"] = ()
    await t.resolve_once()
    assert cluster.hosts == (host,)  # an empty answer is not accepted


def test_logical_dns_needs_exactly_one_endpoint() -> None:
    with pytest.raises(ConfigErrors, match="exactly one endpoint"):
        cluster_cfg("LOGICAL_DNS", names=("a", "b"))


def test_strict_dns_endpoint_must_not_name_a_resolver() -> None:
    cfg = cluster_cfg()
    sa = cfg.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address  # type: ignore[attr-defined]
    object.__setattr__(sa, "resolver_name", "custom")
    with pytest.raises(ConfigError, match="must NOT have a custom resolver name"):
        build(cfg, ScriptedResolver())


async def test_timers_drive_refreshes_and_stop_cancels_them() -> None:
    r = ScriptedResolver()
    cluster, disc = build(cluster_cfg(extra="dns_refresh_rate: 0.05s"), r)
    r.answers["httpd-discovery"] = ("127.0.1.1",)
    disc.start()
    await asyncio.sleep(0.3)
    disc.stop()
    n = len(r.calls)
    assert n >= 3
    await asyncio.sleep(0.15)
    assert len(r.calls) == n
    assert keys(cluster) == ["127.0.1.1:8080"]
