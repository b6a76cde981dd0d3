"""What every HTTP filter's factory is built with: the HCM's stats scope, runtime and random,
and the server-wide things some filters read (Envoy's FactoryContext): the cluster manager's
clusters, the local service cluster and whether the server fails health checks.

`Runtime` is the seam to the layered runtime: a filter asks it whether a fraction is on
(`feature_enabled`) or for an integer override, with the configured value as the default.
`StaticRuntime` answers with the defaults; `LiveRuntime` reads the server's layered runtime.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import podproxy.runtime
from podproxy.stats import Scope
from podproxy.upstream.cluster import Cluster


class Runtime(Protocol):
    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool: ...
    def get_integer(self, key: str, default: int | None) -> int | None: ...


class StaticRuntime:
    """No runtime overrides: every key has its configured default."""

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return random_value % denominator < numerator

    def get_integer(self, key: str, default: int | None) -> int | None:
        return default


class LiveRuntime:
    """The server's layered runtime as filters read it: its current snapshot at each call
    (a `/runtime_modify` swaps the snapshot whole)."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: podproxy.runtime.Runtime) -> None:
        self.runtime = runtime

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return self.runtime.snapshot.feature_enabled(key, numerator, denominator, random_value)

    def get_integer(self, key: str, default: int | None) -> int | None:
        value = self.runtime.snapshot.get_integer(key, -1)  # runtime integers are unsigned
        return default if value < 0 else value


def _random64() -> int:
    return random.getrandbits(64)


@dataclass(slots=True)
class ServerHealth:
    """Whether the server fails health checks (admin `/healthcheck/fail`, undone by `/ok`):
    Envoy's Server::Instance::healthCheckFailed(). One per process, owned by the server (a
    worker's follows the main's); filters read `failed` when a request asks."""

    failed: bool = False


_NO_CLUSTERS: Mapping[str, Cluster] = MappingProxyType({})


@dataclass(slots=True)
class FilterContext:
    """Built once per HCM; `stats` is its `http.<stat_prefix>.` scope. `clusters` is the
    cluster manager's live map of clusters by name, `service_cluster` the
    server's local cluster name (`--service-cluster`, else the bootstrap node's)."""

    stats: Scope
    runtime: Runtime = field(default_factory=StaticRuntime)
    random: Callable[[], int] = _random64
    clusters: Mapping[str, Cluster] = field(default_factory=lambda: _NO_CLUSTERS)
    service_cluster: str = ""
    server_health: ServerHealth = field(default_factory=ServerHealth)
