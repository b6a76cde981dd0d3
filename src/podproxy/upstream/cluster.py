"""A cluster: its static info and stats, its host membership, its load balancer and its pools.

The host set changes only through `priority_set.update_hosts()` (discovery calls it); the load
balancer and the per-host pools follow through the member-update callback: the LB rebuilds its
host list, pools of removed hosts drain (idle connections close now, busy ones after their
request). Pools are created lazily on a host's first pick; a cluster with auto_sni keeps one
per host and per-request names (`pool_for_request`), dropping unused ones as they pile up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podproxy.http.stream import Headers
from podproxy.stats import Counter, Gauge, Histogram, Scope
from podproxy.upstream.auto_sni import AutoSni, NamesKey
from podproxy.upstream.host import Host, HostSet, PrioritySet
from podproxy.upstream.load_balancer import LoadBalancer

if TYPE_CHECKING:
    from podproxy.tls import UpstreamTls


@dataclass(slots=True)
class ClusterStats:
    """`cluster.<name>.*` (Envoy's ALL_CLUSTER_STATS subset that podproxy maintains)."""

    upstream_cx_total: Counter
    upstream_cx_active: Gauge
    upstream_cx_http1_total: Counter
    upstream_cx_http2_total: Counter
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_none_healthy: Counter
    upstream_cx_destroy: Counter
    upstream_cx_destroy_local: Counter
    upstream_cx_destroy_remote: Counter
    upstream_cx_destroy_with_active_rq: Counter
    upstream_cx_protocol_error: Counter
    upstream_cx_rx_bytes_total: Counter
    upstream_cx_tx_bytes_total: Counter
    upstream_cx_connect_ms: Histogram
    upstream_cx_length_ms: Histogram
    upstream_rq_total: Counter
    upstream_rq_active: Gauge
    upstream_rq_completed: Counter
    upstream_rq_pending_total: Counter
    upstream_rq_pending_active: Gauge
    upstream_rq_pending_failure_eject: Counter
    upstream_rq_cancelled: Counter
    upstream_rq_timeout: Counter
    upstream_rq_retry: Counter
    upstream_rq_retry_success: Counter
    retry_or_shadow_abandoned: Counter
    upstream_rq_rx_reset: Counter
    upstream_rq_tx_reset: Counter
    upstream_rq_1xx: Counter
    upstream_rq_2xx: Counter
    upstream_rq_3xx: Counter
    upstream_rq_4xx: Counter
    upstream_rq_5xx: Counter
    upstream_rq_time: Histogram
    membership_change: Counter
    membership_healthy: Gauge
    membership_degraded: Gauge
    membership_excluded: Gauge
    membership_total: Gauge
    update_attempt: Counter
    update_success: Counter
    update_failure: Counter
    update_empty: Counter
    update_no_rebuild: Counter
    max_host_weight: Gauge
    lb_healthy_panic: Counter


# Circuit-breaker defaults (Envoy's, per priority); printed by /clusters.
DEFAULT_THRESHOLDS = {
    "max_connections": 1024,
    "max_pending_requests": 1024,
    "max_requests": 1024,
    "max_retries": 3,
}


class ClusterInfo:
    """What a cluster is, from config: never changes after start."""

    def __init__(
        self,
        name: str,
        *,
        type_name: str,
        connect_timeout: float,
        lb_policy: str,
        scope: Scope,
        config: Any = None,
        per_connection_buffer_limit_bytes: int = 1024 * 1024,
        idle_timeout: float | None = 3600.0,
    ) -> None:
        self.name = name
        self.observability_name = name
        self.type_name = type_name
        self.connect_timeout = connect_timeout
        self.lb_policy = lb_policy
        self.scope = scope
        self.stats: ClusterStats = scope.make(ClusterStats)
        self.config = config
        self.added_via_api = False
        self.per_connection_buffer_limit_bytes = per_connection_buffer_limit_bytes
        self.idle_timeout = idle_timeout
        self.thresholds = dict(DEFAULT_THRESHOLDS)
        # Dynamic per-status counters (`upstream_rq_200`), created on first use.
        self._code_counters: dict[int, Counter] = {}

    def code_counter(self, status: int) -> Counter:
        c = self._code_counters.get(status)
        if c is None:
            c = self._code_counters[status] = self.scope.counter(f"upstream_rq_{status}")
        return c


# (host) -> pool, or (host, tls) -> pool with that TLS (an auto_sni pool's names).
PoolFactory = Callable[..., Any]
# Per-name pools kept before the unused ones are dropped (each distinct Host a client sends
# makes one per host; Envoy frees a pool once it has no connections left).
SNI_POOLS_SWEEP = 256


class Cluster:
    """Info + membership + LB + per-host pools. Discovery drives membership."""

    def __init__(
        self,
        info: ClusterInfo,
        lb: LoadBalancer,
        pool_factory: PoolFactory,
        h2_pool_factory: PoolFactory | None = None,
        auto_sni: AutoSni | None = None,
        tls: UpstreamTls | None = None,
    ) -> None:
        self.info = info
        self.lb = lb
        self.priority_set = PrioritySet()
        # Keyed by the Host object: a LOGICAL_DNS host keeps its pool when its address moves.
        self.pools: dict[Host, Any] = {}
        self._pool_factory = pool_factory
        # A cluster that speaks the client's protocol (use_downstream_protocol_config) has a
        # second set of pools, HTTP/2, for requests that came over HTTP/2.
        self.by_downstream = h2_pool_factory is not None
        self.h2_pools: dict[Host, Any] = {}
        self._h2_pool_factory = h2_pool_factory
        # upstream_http_protocol_options auto_sni / auto_san_validation: pools per (host,
        # names), made with the cluster's TLS named for them.
        self.auto_sni = auto_sni
        self._tls = tls
        self.sni_pools: dict[tuple[Host, bool, NamesKey], Any] = {}
        self._sweep_at = SNI_POOLS_SWEEP
        # Whether the router must pick the pool from the request (the client's protocol, or
        # its names), decided here so other clusters pay nothing for either.
        self.by_request = self.by_downstream or auto_sni is not None
        self.initialized = False
        self._init_callbacks: list[Callable[[], None]] = []
        self.discovery: Any = None
        self.priority_set.add_member_update_cb(self._on_members)

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.priority_set.host_set.hosts

    def _on_members(
        self, host_set: HostSet, added: Sequence[Host], removed: Sequence[Host]
    ) -> None:
        self.lb.on_host_set(host_set, added, removed)
        st = self.info.stats
        if added or removed:
            st.membership_change.inc()
        st.membership_total.set(len(host_set.hosts))
        st.membership_healthy.set(len(host_set.healthy_hosts))
        st.max_host_weight.set(max((h.weight for h in host_set.hosts), default=0))
        for h in removed:
            for pools in (self.pools, self.h2_pools):
                pool = pools.pop(h, None)
                if pool is not None:
                    pool.drain()
        if removed and self.sni_pools:
            gone = set(removed)
            for key in [k for k in self.sni_pools if k[0] in gone]:
                self.sni_pools.pop(key).drain()

    def pool_for(self, host: Host, http2: bool = False) -> Any:
        """`host`'s pool; `http2`: the request came over HTTP/2 (read only by a cluster that
        speaks the client's protocol)."""
        if http2 and self._h2_pool_factory is not None:
            pool = self.h2_pools.get(host)
            if pool is None:
                pool = self.h2_pools[host] = self._h2_pool_factory(host)
            return pool
        pool = self.pools.get(host)
        if pool is None:
            pool = self.pools[host] = self._pool_factory(host)
        return pool

    def pool_for_request(self, host: Host, http2: bool, authority: bytes, headers: Headers) -> Any:
        """`host`'s pool for a request going up with Host `authority` (after the route's
        rewrite) and `headers`: `pool_for` unless auto_sni names the connection."""
        auto = self.auto_sni
        if auto is None:
            return self.pool_for(host, http2)
        names, sni, san = auto.key(authority, headers)
        if names == (None, None):
            return self.pool_for(host, http2)  # an IP address: Envoy's default names
        h2 = http2 and self._h2_pool_factory is not None
        key = (host, h2, names)
        pool = self.sni_pools.get(key)
        if pool is None:
            if len(self.sni_pools) >= self._sweep_at:
                self._sweep()
            factory = self._h2_pool_factory if h2 else self._pool_factory
            assert factory is not None
            pool = self.sni_pools[key] = factory(host, auto.tls_for(self._tls, sni, san))
        return pool

    def _sweep(self) -> None:
        """Drop the per-name pools with no connection and nothing waiting."""
        for key in [k for k, p in self.sni_pools.items() if p.is_empty]:
            del self.sni_pools[key]
        self._sweep_at = max(SNI_POOLS_SWEEP, 2 * len(self.sni_pools))

    def all_pools(self) -> list[Any]:
        return [*self.pools.values(), *self.h2_pools.values(), *self.sni_pools.values()]

    def mark_initialized(self) -> None:
        """Discovery finished its first round (warming is over for this cluster)."""
        if self.initialized:
            return
        self.initialized = True
        callbacks, self._init_callbacks = self._init_callbacks, []
        for cb in callbacks:
            cb()

    def on_initialized(self, cb: Callable[[], None]) -> None:
        if self.initialized:
            cb()
        else:
            self._init_callbacks.append(cb)

    def choose_host(self, ctx: object = None) -> Host | None:
        return self.lb.choose_host(ctx)
