"""The health check filter (envoy.filters.http.health_check): tells health checks apart by
their headers and answers them, or lets them through and remembers the answer.

A request whose headers all match (`headers`; none configured: every request) is a health check
(`Exchange.health_check`, what the access log's not_health_check filter skips). It is answered
here, 200 or 503 with an empty body and `x-envoy-upstream-healthchecked-cluster: <local
cluster>`, when `pass_through_mode` is false, when the server fails health checks (admin
`/healthcheck/fail`: 503, flag LH) or, passing through with `cache_time`, while the last
answer is cached; otherwise it goes upstream and the answer comes back with that header (and is
cached). Not passing through, `cluster_min_healthy_percentages` turns the 200 into a 503 when a
named cluster is missing, empty or has too few available (healthy or degraded) hosts. While the
server fails health checks every response says `x-envoy-immediate-health-check-fail: true`.
Envoy's health_check.cc; the cache's validity ends on a fixed period from start-up, as Envoy's
HealthCheckCacheManager timer clears it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from podproxy.filters.http.common import FilterContext, ServerHealth
from podproxy.http.filter import (
    CONTINUE,
    STOP_ITERATION,
    STOP_ITERATION_NO_BUFFER,
    FilterCallbacks,
    FilterFactory,
    HttpFilter,
)
from podproxy.http.stream import RequestHead, ResponseHead
from podproxy.router.routes import header_predicate
from podproxy.stats import Counter
from podproxy.upstream.cluster import Cluster

NAME = "envoy.filters.http.health_check"
HEALTHCHECKED_CLUSTER = b"x-envoy-upstream-healthchecked-cluster"
IMMEDIATE_FAIL = b"x-envoy-immediate-health-check-fail"
DEGRADED = b"x-envoy-degraded"

RequestMatcher = Callable[[RequestHead], bool]


@dataclass(slots=True)
class HealthCheckStats:
    """`http.<stat_prefix>.health_check.*` (Envoy's ALL_HEALTH_CHECK_FILTER_STATS): counted
    for the health checks answered here, not for those passed upstream."""

    request_total: Counter
    failed: Counter
    ok: Counter
    cached_response: Counter
    failed_cluster_not_found: Counter
    failed_cluster_empty: Counter
    failed_cluster_unhealthy: Counter
    degraded: Counter


def request_matcher(hm: Any) -> RequestMatcher:
    """A HeaderMatcher over a request head; `:path` and `:method` are the request line's."""
    pred = header_predicate(hm)
    name = hm.name.lower()
    if name == ":path":
        return lambda head: pred(((b":path", head.target),))
    if name == ":method":
        return lambda head: pred(((b":method", head.method),))
    return lambda head: pred(head.headers)


class ResponseCache:
    """The last answer to a health check that went upstream, for `cache_time` (Envoy's
    HealthCheckCacheManager). Envoy clears it from a timer that fires every `cache_time` from
    start-up, whenever the answer came; the same windows are computed here from the clock."""

    __slots__ = ("clock", "degraded", "period", "since", "status", "window")

    def __init__(self, period: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.period = period
        self.since = clock()
        self.status = 200
        self.degraded = False
        self.window = -1  # the window the answer was cached in (-1: none)

    def _now_window(self) -> int:
        return int((self.clock() - self.since) / self.period)

    def valid(self) -> bool:
        return self.window >= 0 and self.window == self._now_window()

    def set(self, status: int, degraded: bool) -> None:
        self.status = status
        self.degraded = degraded
        self.window = self._now_window()


class HealthCheckConfig:
    """The filter's config, compiled once per HCM, and its shared state (cache, stats)."""

    def __init__(
        self, cfg: Any, ctx: FilterContext, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pass_through = bool(cfg.pass_through_mode)
        self.matchers: tuple[RequestMatcher, ...] = tuple(request_matcher(h) for h in cfg.headers)
        self.cache = ResponseCache(cfg.cache_time, clock) if cfg.cache_time else None
        # Envoy keeps these only when not passing through, checked in name order (a std::map),
        # each percentage truncated to a whole number.
        self.min_healthy: tuple[tuple[str, int], ...] = ()
        if not self.pass_through:
            percentages = cfg.cluster_min_healthy_percentages
            self.min_healthy = tuple((name, int(pct)) for name, pct in sorted(percentages.items()))
        self.clusters: Mapping[str, Cluster] = ctx.clusters
        self.server: ServerHealth = ctx.server_health
        self.local_cluster = ctx.service_cluster.encode()
        self.stats = ctx.stats.scope("health_check.").make(HealthCheckStats)

    def matches(self, head: RequestHead) -> bool:
        return all(m(head) for m in self.matchers)

    def cluster_verdict(self) -> tuple[int, str]:
        """200 or 503 from the clusters' health, and Envoy's response code details."""
        st = self.stats
        details = "health_check_ok"
        for name, percent in self.min_healthy:
            details = "health_check_ok_cluster_healthy"
            cluster = self.clusters.get(name)
            if cluster is None:
                st.failed_cluster_not_found.value += 1
                return 503, "health_check_failed_no_cluster_found"
            hs = cluster.priority_set.host_set
            total = len(hs.hosts)
            if total == 0:
                if percent == 0:
                    continue
                st.failed_cluster_empty.value += 1
                return 503, "health_check_failed_cluster_empty"
            # Available hosts: healthy or degraded (Envoy's membership_healthy +
            # membership_degraded); podproxy's healthy list holds both.
            if 100 * len(hs.healthy_hosts) < total * percent:
                st.failed_cluster_unhealthy.value += 1
                return 503, "health_check_failed_cluster_unhealthy"
        return 200, details


class HealthCheckFilter(HttpFilter):
    __slots__ = ("config", "handling", "health_check")

    def __init__(self, callbacks: FilterCallbacks, config: HealthCheckConfig) -> None:
        super().__init__(callbacks)
        self.config = config
        self.health_check = False  # the request is a health check
        self.handling = False  # ... answered here

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        cfg = self.config
        if cfg.matches(head):
            self.health_check = True
            self.callbacks.exchange.health_check = True
            cache = cfg.cache
            if not cfg.pass_through or cfg.server.failed or (cache is not None and cache.valid()):
                self.handling = True
                if end_stream:
                    self._complete()
                return STOP_ITERATION
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.handling:
            return CONTINUE
        if end_stream:
            self._complete()
        return STOP_ITERATION_NO_BUFFER  # the body of a health check answered here is dropped

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        cfg = self.config
        headers = head.headers
        if self.health_check:
            if cfg.cache is not None:
                cfg.cache.set(head.status, head.get(DEGRADED) is not None)
            headers[:] = [(k, v) for k, v in headers if k != HEALTHCHECKED_CLUSTER]
            headers.append((HEALTHCHECKED_CLUSTER, cfg.local_cluster))
        if cfg.server.failed:
            headers[:] = [(k, v) for k, v in headers if k != IMMEDIATE_FAIL]
            headers.append((IMMEDIATE_FAIL, b"true"))
        return CONTINUE

    def _complete(self) -> None:
        """Answer the health check here (Envoy's HealthCheckFilter::onComplete)."""
        cfg = self.config
        st = cfg.stats
        st.request_total.value += 1
        extra = None
        if cfg.server.failed:
            status, details = 503, "health_check_failed"
        elif cfg.cache is not None:
            st.cached_response.value += 1
            status, details = cfg.cache.status, "health_check_cached"
            if cfg.cache.degraded:
                st.degraded.value += 1
                extra = [(DEGRADED, b"")]
        else:
            status, details = cfg.cluster_verdict()
        if 200 <= status < 300:
            st.ok.value += 1
            flags = "-"
        else:
            st.failed.value += 1
            flags = "LH"  # FailedLocalHealthCheck
        self.callbacks.send_local_reply(status, b"", headers=extra, details=details, flags=flags)


def build(cfg: Any, ctx: FilterContext) -> FilterFactory:
    config = HealthCheckConfig(cfg, ctx)

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return HealthCheckFilter(callbacks, config)

    return factory
