"""Discovery: how a cluster's membership is found and kept current.

Each cluster type is a named factory in `CLUSTER_TYPES` (Envoy's cluster extensions). A
discovery publishes hosts only through `cluster.priority_set.update_hosts()` and marks the
cluster initialized after its first round, which is what warming waits for.

STRICT_DNS (reference/envoy.md §1): every lb_endpoint is its own resolve target with its own
timer; each distinct address is a host on the endpoint's port. A failed lookup keeps the
target's hosts and retries after `dns_failure_refresh_rate` (jittered exponential back-off) or
`dns_refresh_rate`; a successful empty answer (NXDOMAIN/NODATA) removes them. The cluster is
initialized when the first lookup of any target completes, as Envoy does. LOGICAL_DNS keeps one
host whose address follows the first address of the latest non-empty answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from podproxy.errors import ConfigError
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.dns import DnsResolutionFailed, DnsResponse, Resolver
from podproxy.upstream.host import HealthFlag, Host
from podproxy.upstream.load_balancer import RandomFn, default_random

log = logging.getLogger("podproxy.upstream")

# LbEndpoint.health_status → the flags Envoy sets from EDS health (host_utility / upstream_impl).
_EDS_HEALTH: dict[str, HealthFlag] = {
    "UNKNOWN": HealthFlag(0),
    "HEALTHY": HealthFlag(0),
    "UNHEALTHY": HealthFlag.FAILED_EDS_HEALTH,
    "DRAINING": HealthFlag.FAILED_EDS_HEALTH,
    "TIMEOUT": HealthFlag.FAILED_EDS_HEALTH,
    "DEGRADED": HealthFlag.DEGRADED_EDS_HEALTH,
}


def _enum_name(v: Any) -> str:
    return str(getattr(v, "name", v))


def endpoint_hosts(cluster_cfg: Any, path: str) -> list[Host]:
    """Hosts of a STATIC cluster's load_assignment (addresses must be IPs)."""
    hosts: list[Host] = []
    la = cluster_cfg.load_assignment
    if la is None:
        return hosts
    for i, lle in enumerate(la.endpoints):
        for j, lbe in enumerate(lle.lb_endpoints):
            sa = lbe.endpoint.address.socket_address
            where = f"{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}]"
            try:
                ipaddress.ip_address(sa.address)
            except ValueError:
                raise ConfigError(
                    f"{where}.endpoint.address.socket_address.address",
                    f"STATIC cluster endpoints must be IP addresses, got {sa.address!r}",
                ) from None
            hosts.append(
                Host(
                    sa.address,
                    sa.port_value,
                    hostname=lbe.endpoint.hostname or "",
                    weight=lbe.load_balancing_weight or 1,
                    priority=lle.priority or 0,
                    health_flags=_EDS_HEALTH.get(_enum_name(lbe.health_status), HealthFlag(0)),
                )
            )
    return hosts


class StaticDiscovery:
    """STATIC: the hosts are the config's, known at once."""

    def __init__(self, cluster: Cluster, cfg: Any, path: str) -> None:
        self.cluster = cluster
        self.hosts = endpoint_hosts(cfg, path)

    def start(self) -> None:
        self.cluster.priority_set.update_hosts(self.hosts)
        self.cluster.mark_initialized()

    def stop(self) -> None:
        pass


class RefreshTimer:
    """When to resolve next, per Envoy's dns_cluster: TTL, refresh rate, jitter, back-off."""

    def __init__(self, cfg: Any, random: RandomFn) -> None:
        self.refresh_rate = float(cfg.dns_refresh_rate)
        self.respect_ttl = bool(cfg.respect_dns_ttl)
        self.min_refresh = cfg.dns_min_refresh_rate
        self.jitter = cfg.dns_jitter
        frr = cfg.dns_failure_refresh_rate
        self.backoff_base = float(frr.base_interval) if frr is not None else None
        self.backoff_max = (
            float(frr.max_interval or frr.base_interval * 10) if frr is not None else None
        )
        self._current = self.backoff_base
        self.random = random

    def after_success(self, response: DnsResponse) -> float:
        self._current = self.backoff_base
        delay = self.refresh_rate
        if self.respect_ttl and response.addresses and response.ttl:
            delay = response.ttl
            if self.min_refresh is not None:
                delay = max(delay, float(self.min_refresh))
        if self.jitter:
            jitter_ms = int(self.jitter * 1000)
            if jitter_ms > 0:
                delay += (self.random() % jitter_ms) / 1000.0
        return delay

    def after_failure(self) -> float:
        if self.backoff_base is None or self._current is None or self.backoff_max is None:
            return self.refresh_rate
        # Fully jittered: random() % current, current doubling up to max (backoff_strategy.cc).
        current_ms = max(1, int(self._current * 1000))
        delay = (self.random() % current_ms) / 1000.0
        self._current = min(self._current * 2, self.backoff_max)
        return max(delay, 0.001)


class DnsDiscovery:
    """STRICT_DNS and LOGICAL_DNS: resolve targets on timers and publish the hosts."""

    def __init__(
        self,
        cluster: Cluster,
        cfg: Any,
        path: str,
        *,
        resolver: Resolver,
        logical: bool = False,
        random: RandomFn = default_random,
    ) -> None:
        self.cluster = cluster
        self.resolver = resolver
        self.logical = logical
        self.family = str(getattr(cfg.dns_lookup_family, "name", cfg.dns_lookup_family))
        self.random = random
        self.cfg = cfg
        self.targets: list[ResolveTarget] = []
        la = cfg.load_assignment
        endpoints = (
            [] if la is None else [(lle, lbe) for lle in la.endpoints for lbe in lle.lb_endpoints]
        )
        if logical and len(endpoints) != 1:
            raise ConfigError(
                f"{path}.load_assignment",
                f"LOGICAL_DNS clusters must have exactly one endpoint, got {len(endpoints)}",
            )
        for lle, lbe in endpoints:
            self.targets.append(ResolveTarget(self, lle, lbe, RefreshTimer(cfg, random)))
        self.wait_for_warm = bool(getattr(cfg, "wait_for_warm_on_init", True))

    def start(self) -> None:
        if not self.targets or not self.wait_for_warm:
            self.cluster.mark_initialized()
        for t in self.targets:
            t.start()

    def stop(self) -> None:
        for t in self.targets:
            t.stop()

    def target_done(self) -> None:
        # Envoy's comment in strict_dns_cluster.cc: initialized after *a* resolution.
        self.cluster.mark_initialized()

    def publish(self) -> None:
        self.cluster.priority_set.update_hosts([h for t in self.targets for h in t.hosts])


class ResolveTarget:
    """One DNS name and port of a DNS cluster, with its own timer and hosts."""

    def __init__(self, disc: DnsDiscovery, lle: Any, lbe: Any, timer: RefreshTimer) -> None:
        self.disc = disc
        sa = lbe.endpoint.address.socket_address
        self.name: str = sa.address
        self.port: int = sa.port_value
        self.hostname: str = lbe.endpoint.hostname or sa.address
        self.weight: int = lbe.load_balancing_weight or 1
        self.priority: int = lle.priority or 0
        self.health = _EDS_HEALTH.get(_enum_name(lbe.health_status), HealthFlag(0))
        self.timer = timer
        self.hosts: list[Host] = []
        self.resolutions = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            delay = await self.resolve_once()
            await asyncio.sleep(delay)

    def _host(self, address: str) -> Host:
        return Host(
            address,
            self.port,
            hostname=self.hostname,
            weight=self.weight,
            priority=self.priority,
            health_flags=self.health,
        )

    async def resolve_once(self) -> float:
        """One lookup and its effect; returns the delay until the next one."""
        disc = self.disc
        st = disc.cluster.info.stats
        st.update_attempt.inc()
        try:
            response = await disc.resolver.resolve(self.name, disc.family)
        except DnsResolutionFailed as exc:
            st.update_failure.inc()
            log.warning(
                "cluster %s: DNS resolution of %s failed (%s); keeping %d host(s)",
                disc.cluster.info.name,
                self.name,
                exc.reason,
                len(self.hosts),
            )
            self.resolutions += 1
            disc.target_done()
            return self.timer.after_failure()
        self.resolutions += 1
        if disc.logical:
            return self._apply_logical(response)
        st.update_success.inc()
        current = {h.key: h for h in self.hosts}
        new: list[Host] = []
        seen: set[str] = set()
        for addr in response.addresses:
            h = self._host(addr)
            if h.key in seen:
                continue
            seen.add(h.key)
            new.append(current.get(h.key, h))
        if seen == set(current):
            st.update_no_rebuild.inc()
        else:
            log.info(
                "cluster %s: %s now resolves to %d host(s): %s",
                disc.cluster.info.name,
                self.name,
                len(new),
                ", ".join(h.key for h in new),
            )
            self.hosts = new
            disc.publish()
        disc.target_done()
        return self.timer.after_success(response)

    def _apply_logical(self, response: DnsResponse) -> float:
        disc = self.disc
        st = disc.cluster.info.stats
        if not response.addresses:
            # LOGICAL_DNS does not accept an empty answer: the logical host stays.
            st.update_failure.inc()
            disc.target_done()
            return self.timer.after_failure()
        st.update_success.inc()
        first = response.addresses[0]
        if not self.hosts:
            self.hosts = [self._host(first)]
            disc.publish()
        elif self.hosts[0].address != first:
            self.hosts[0].set_address(first)  # new connections go there; old ones stay
        else:
            st.update_no_rebuild.inc()
        disc.target_done()
        return self.timer.after_success(response)


def _strict_dns(cluster: Cluster, cfg: Any, path: str, **kw: Any) -> DnsDiscovery:
    _check_dns_endpoints(cfg, path)
    return DnsDiscovery(cluster, cfg, path, logical=False, **kw)


def _logical_dns(cluster: Cluster, cfg: Any, path: str, **kw: Any) -> DnsDiscovery:
    _check_dns_endpoints(cfg, path)
    return DnsDiscovery(cluster, cfg, path, logical=True, **kw)


def _static(cluster: Cluster, cfg: Any, path: str, **kw: Any) -> StaticDiscovery:
    return StaticDiscovery(cluster, cfg, path)


def _check_dns_endpoints(cfg: Any, path: str) -> None:
    la = cfg.load_assignment
    if la is None:
        return
    for i, lle in enumerate(la.endpoints):
        for j, lbe in enumerate(lle.lb_endpoints):
            sa = lbe.endpoint.address.socket_address
            if sa.resolver_name:
                raise ConfigError(
                    f"{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}]"
                    ".endpoint.address.socket_address.resolver_name",
                    "STRICT_DNS clusters must NOT have a custom resolver name set",
                )


DiscoveryFactory = Callable[..., Any]

# Cluster types by name; DNS types take `resolver=` and `random=` keywords.
CLUSTER_TYPES: dict[str, DiscoveryFactory] = {
    "STATIC": _static,
    "STRICT_DNS": _strict_dns,
    "LOGICAL_DNS": _logical_dns,
}

DNS_TYPES = frozenset({"STRICT_DNS", "LOGICAL_DNS"})
