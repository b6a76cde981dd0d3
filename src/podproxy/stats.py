"""Counters, gauges and histograms with Envoy's names.

One `Store` per server, created by the composition root and passed down. Components declare
their stats once as a slotted dataclass whose fields are `Counter`/`Gauge`/`Histogram`
(`ClusterStats`, `HttpConnManagerStats`, ...) and build it with `scope.make(Cls)`; call sites
then only increment attributes. Stat names (`cluster.httpd.upstream_rq_total`) are public API.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class Counter:
    """A monotonically increasing count (`inc`); `value` may be read directly."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def __repr__(self) -> str:
        return f"<Counter {self.name}={self.value}>"


class Gauge:
    """A value that goes up and down."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, v: int) -> None:
        self.value = v

    def __repr__(self) -> str:
        return f"<Gauge {self.name}={self.value}>"


# Envoy's default histogram bucket bounds (milliseconds for *_ms/_time stats).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip


class Histogram:
    """Recorded values in Envoy's default buckets, with a running sum and count."""

    __slots__ = ("bucket_counts", "count", "name", "sum")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bucket_counts = [0] * (len(DEFAULT_BUCKETS) + 1)  # last one is +Inf
        self.count = 0
        self.sum = 0.0

    def record(self, value: float) -> None:
        i = 0
        bounds = DEFAULT_BUCKETS
        n = len(bounds)
        while i < n and value > bounds[i]:
            i += 1
        self.bucket_counts[i] += 1
        self.count += 1
        self.sum += value

    def __repr__(self) -> str:
        return f"<Histogram {self.name} count={self.count}>"


class Store:
    """Every stat of one server, by full name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Counter(name)
        return c

    def gauge(self, name: str) -> Gauge:
        g = self.gauges.get(name)
        if g is None:
            g = self.gauges[name] = Gauge(name)
        return g

    def histogram(self, name: str) -> Histogram:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram(name)
        return h

    def scope(self, prefix: str) -> Scope:
        return Scope(self, prefix)


class Scope:
    """A name prefix in a store: `store.scope("cluster.httpd.").counter("upstream_rq_total")`."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def counter(self, name: str) -> Counter:
        return self.store.counter(self.prefix + name)

    def gauge(self, name: str) -> Gauge:
        return self.store.gauge(self.prefix + name)

    def histogram(self, name: str) -> Histogram:
        return self.store.histogram(self.prefix + name)

    def scope(self, prefix: str) -> Scope:
        return Scope(self.store, self.prefix + prefix)

    def make(self, cls: type[T]) -> T:
        """Build a stats dataclass: each Counter/Gauge/Histogram field named after its stat."""
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            kind = hints[f.name]
            if kind is Counter:
                kwargs[f.name] = self.counter(f.name)
            elif kind is Gauge:
                kwargs[f.name] = self.gauge(f.name)
            elif kind is Histogram:
                kwargs[f.name] = self.histogram(f.name)
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: not a stat type")
        return cls(**kwargs)
