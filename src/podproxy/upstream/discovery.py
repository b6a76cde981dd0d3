"""Discovery: how a cluster's membership is found and kept current.

Each cluster type is a named factory in `CLUSTER_TYPES` (Envoy's cluster extensions). A
discovery publishes hosts only through `cluster.priority_set.update_hosts()` and marks the
cluster initialized after its first round, which is what warming waits for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from podproxy.errors import ConfigError
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.host import HealthFlag, Host

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
        self.cluster.initialized = True

    def stop(self) -> None:
        pass


DiscoveryFactory = Callable[[Cluster, Any, str], Any]

CLUSTER_TYPES: dict[str, DiscoveryFactory] = {
    "STATIC": StaticDiscovery,
}
