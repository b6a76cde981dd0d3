"""Upstream hosts and immutable host-set snapshots.

A `Host` is one address:port of a cluster with its health flags and per-host counters (the
ones `/clusters` prints). A `HostSet` is a frozen snapshot; `PrioritySet` holds the current one
and is the only place membership changes: `update_hosts()` swaps in a new snapshot and tells
every subscriber `(added, removed)`, as Envoy's PrioritySet member-update callbacks do. Hosts
are matched across updates by `address:port`, so an unchanged host keeps its object and stats.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


class HealthFlag(enum.Flag):
    """Why a host is not healthy; names and `/clusters` spellings as Envoy's host_utility.cc."""

    FAILED_ACTIVE_HC = enum.auto()
    FAILED_OUTLIER_CHECK = enum.auto()
    FAILED_EDS_HEALTH = enum.auto()
    DEGRADED_ACTIVE_HC = enum.auto()
    DEGRADED_EDS_HEALTH = enum.auto()
    PENDING_DYNAMIC_REMOVAL = enum.auto()
    PENDING_ACTIVE_HC = enum.auto()
    EXCLUDED_VIA_IMMEDIATE_HC_FAIL = enum.auto()
    ACTIVE_HC_TIMEOUT = enum.auto()
    EDS_STATUS_DRAINING = enum.auto()


NONE_HEALTHY = HealthFlag(0)

# Flags that take a host out of the healthy list (degraded/pending ones do not).
UNHEALTHY_FLAGS = (
    HealthFlag.FAILED_ACTIVE_HC | HealthFlag.FAILED_OUTLIER_CHECK | HealthFlag.FAILED_EDS_HEALTH
)


def health_flags_str(flags: HealthFlag) -> str:
    """`healthy` or `/failed_active_hc/failed_outlier_check...` as `/clusters` prints them."""
    if not flags:
        return "healthy"
    return "".join(
        "/" + (f.name or "").lower() for f in HealthFlag if f in flags and f.name is not None
    )


class HostStats:
    """Per-host counters and gauges, the ones `/clusters` lists for each host."""

    __slots__ = (
        "cx_active",
        "cx_connect_fail",
        "cx_total",
        "rq_active",
        "rq_error",
        "rq_success",
        "rq_timeout",
        "rq_total",
    )

    GAUGES = ("cx_active", "rq_active")

    def __init__(self) -> None:
        self.cx_active = 0
        self.cx_connect_fail = 0
        self.cx_total = 0
        self.rq_active = 0
        self.rq_error = 0
        self.rq_success = 0
        self.rq_timeout = 0
        self.rq_total = 0

    def items(self) -> list[tuple[str, int]]:
        """(name, value) sorted by name, as `/clusters` prints them."""
        return [(name, getattr(self, name)) for name in sorted(self.__slots__)]


class Host:
    """One upstream endpoint. `key` is `address:port`, Envoy's identity for a host."""

    __slots__ = (
        "address",
        "health_flags",
        "hostname",
        "key",
        "port",
        "priority",
        "removed",
        "stats",
        "weight",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        hostname: str = "",
        weight: int = 1,
        priority: int = 0,
        health_flags: HealthFlag = NONE_HEALTHY,
    ) -> None:
        self.address = address
        self.port = port
        self.hostname = hostname
        self.weight = max(1, weight)
        self.priority = priority
        self.health_flags = health_flags
        self.stats = HostStats()
        self.removed = False  # set once the host left its cluster; pools drain on it
        self.key = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def set_address(self, address: str) -> None:
        """LOGICAL_DNS moves its one host: new connections go to `address`, old ones stay."""
        self.address = address
        self.key = f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"

    @property
    def healthy(self) -> bool:
        return not (self.health_flags & UNHEALTHY_FLAGS)

    def __repr__(self) -> str:
        return f"<Host {self.key} {health_flags_str(self.health_flags)}>"


@dataclass(frozen=True, slots=True)
class HostSet:
    """An immutable snapshot of a cluster's hosts (priority 0)."""

    hosts: tuple[Host, ...] = ()
    healthy_hosts: tuple[Host, ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[Host]) -> HostSet:
        hs = tuple(hosts)
        return cls(hs, tuple(h for h in hs if h.healthy))


MemberUpdateCb = Callable[[HostSet, Sequence[Host], Sequence[Host]], None]


class PrioritySet:
    """Holds the current `HostSet` and publishes every change to subscribers."""

    def __init__(self) -> None:
        self.host_set = HostSet()
        self._callbacks: list[MemberUpdateCb] = []

    def add_member_update_cb(self, cb: MemberUpdateCb) -> None:
        self._callbacks.append(cb)

    def update_hosts(self, hosts: Sequence[Host]) -> tuple[list[Host], list[Host]]:
        """Replace the membership with `hosts` (deduplicated by key; existing objects kept).

        Returns (added, removed); calls subscribers only when something changed.
        """
        current = {h.key: h for h in self.host_set.hosts}
        new: dict[str, Host] = {}
        for h in hosts:
            if h.key not in new:
                new[h.key] = current.get(h.key, h)
        added = [h for k, h in new.items() if k not in current]
        removed = [h for k, h in current.items() if k not in new]
        if not added and not removed:
            return added, removed
        for h in removed:
            h.removed = True
        self.host_set = HostSet.of(new.values())
        self.publish(added, removed)
        return added, removed

    def refresh_health(self) -> None:
        """Re-derive the healthy list after health flags changed (no membership change)."""
        self.host_set = HostSet.of(self.host_set.hosts)
        self.publish([], [])

    def publish(self, added: Sequence[Host], removed: Sequence[Host]) -> None:
        for cb in self._callbacks:
            cb(self.host_set, added, removed)
