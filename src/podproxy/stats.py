"""Counters, gauges and histograms with Envoy's names, and the admin renderings of them.

One `Store` per server, created by the composition root and passed down. Components declare
their stats once as a slotted dataclass whose fields are `Counter`/`Gauge`/`Histogram`
(`ClusterStats`, `HttpConnManagerStats`, ...) and build it with `scope.make(Cls)`; call sites
then only increment attributes. Stat names (`cluster.httpd.upstream_rq_total`) are public API.

The renderers (`render_text`, `render_json`, `render_prometheus`) are pure functions over a
store producing Envoy's `/stats` formats (reference/envoy.md §5.3), including Envoy's default
tag extraction for Prometheus names and labels.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Counter:
    """A monotonically increasing count (`inc`); `value` may be read directly.

    `used` is only set by `reset_counters`, so a counter that was written and then reset still
    counts as used (as Envoy's `?usedonly` shows it); otherwise "used" means `value != 0`, which
    keeps `inc` a bare addition.
    """

    __slots__ = ("name", "used", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.used = False

    def inc(self, n: int = 1) -> None:
        self.value += n

    @property
    def is_used(self) -> bool:
        return self.used or self.value != 0

    def __repr__(self) -> str:
        return f"<Counter {self.name}={self.value}>"


class Gauge:
    """A value that goes up and down.

    `set` marks the gauge used (Envoy shows a gauge set to 0 under `?usedonly`); `inc`/`dec`
    stay bare arithmetic, so a gauge only ever moved by them and back to 0 reads as unused.
    """

    __slots__ = ("name", "used", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.used = False

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, v: int) -> None:
        self.value = v
        self.used = True

    @property
    def is_used(self) -> bool:
        return self.used or self.value != 0

    def __repr__(self) -> str:
        return f"<Gauge {self.name}={self.value}>"


# Envoy's default histogram bucket bounds (milliseconds for *_ms/_time stats).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip

# The quantiles Envoy reports (HistogramStatisticsImpl::supportedQuantiles).
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1)

# Bin key of values <= 0 (Envoy records unsigned integers, so only 0 lands here).
_ZERO_BIN = -(10**6)
_POW10 = tuple(10.0**e for e in range(-128, 128))
_log10 = math.log10
_floor = math.floor


class Histogram:
    """Recorded values in log-linear bins, with a running sum and count.

    The bins are Envoy's (libcircllhist): two significant decimal digits, so a value v >= 0 lands
    in `[m * 10**(e-1), (m+1) * 10**(e-1))` with `10 <= m <= 99`; bin key `e * 100 + m` orders
    like the values. The dict grows by distinct bins only (90 per decade), never per record.
    Quantiles and the Prometheus default-bounds view are both computed from the bins, as Envoy
    does, so they agree with each other and with Envoy for the same inputs. `sum` is exact
    (Envoy approximates it from the bins).
    """

    __slots__ = ("bins", "count", "name", "sum")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bins: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0

    def record(self, value: float) -> None:
        self.count += 1
        self.sum += value
        # Fast path for the common millisecond range; the general path is libcircllhist's
        # double_to_hist_bucket (the 1e-13 absorbs rounding at bin edges, e.g. 0.11).
        if 1.0 <= value < 100.0:
            k = int(value * 10.0 + 1e-13) if value < 10.0 else 100 + int(value + 1e-13)
        elif 0.1 <= value < 1.0:  # sub-millisecond: most loopback requests
            k = int(value * 100.0 + 1e-13) - 100
        elif value > 0:
            e = _floor(_log10(value))
            m = int(value / _POW10[e + 128] * 10.0 + 1e-13)
            if m >= 100:
                m = 10
                e += 1
            k = e * 100 + m
        else:
            k = _ZERO_BIN
        bins = self.bins
        try:
            bins[k] += 1
        except KeyError:
            bins[k] = 1

    def reset(self) -> None:
        self.bins = {}
        self.count = 0
        self.sum = 0.0

    def sorted_bins(self) -> list[tuple[float, float, int]]:
        """(left edge, width, count) per non-empty bin, ascending."""
        out: list[tuple[float, float, int]] = []
        for k in sorted(self.bins):
            n = self.bins[k]
            if k == _ZERO_BIN:
                out.append((0.0, 0.0, n))
            else:
                e, m = divmod(k, 100)
                unit = _POW10[e - 1 + 128]
                out.append((m * unit, unit, n))
        return out

    def quantiles(self, qs: Iterable[float] = SUPPORTED_QUANTILES) -> list[float]:
        """Envoy's computed quantiles (empty list when nothing was recorded).

        Matches Envoy 1.40 output: the q-quantile is the sample of rank max(1, ceil(q*n)) (type-1,
        inverse empirical CDF), where the c samples of a bin are taken as evenly spread over it,
        the k-th at `left + width * k / (c + 1)`. (Verified against real Envoy 1.40 output.)
        """
        if self.count == 0:
            return []
        bins = self.sorted_bins()
        total = sum(b[2] for b in bins)
        out: list[float] = []
        i = 0
        below = 0  # samples in bins before bins[i]
        for q in qs:
            rank = max(1, math.ceil(q * total - 1e-9))
            while i < len(bins) - 1 and below + bins[i][2] < rank:
                below += bins[i][2]
                i += 1
            left, width, c = bins[i]
            k = min(rank - below, c)
            out.append(left + width * k / (c + 1))
        return out

    def cumulative_buckets(self, bounds: Iterable[float] = DEFAULT_BUCKETS) -> list[int]:
        """Samples at or below each bound, Prometheus-style (cumulative).

        As Envoy 1.40: a bin counts toward `le=b` when it is at or below the bin holding b, so
        integer milliseconds equal to a bound are inside it (1 ms counts toward `le="1"`).
        """
        bins = sorted(self.bins.items())
        out: list[int] = []
        i = 0
        running = 0
        for b in bounds:
            limit = _bin_key(b)
            while i < len(bins) and bins[i][0] <= limit:
                running += bins[i][1]
                i += 1
            out.append(running)
        return out

    def __repr__(self) -> str:
        return f"<Histogram {self.name} count={self.count}>"


@functools.lru_cache(maxsize=256)
def _bin_key(value: float) -> int:
    """The bin key `record(value)` uses (bounds are few and fixed, so this is cached)."""
    h = Histogram("")
    h.record(value)
    return next(iter(h.bins))


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


def reset_counters(store: Store) -> None:
    """POST /reset_counters: zero every counter; written ones stay "used" as in Envoy."""
    for c in store.counters.values():
        if c.value:
            c.used = True
            c.value = 0


# --- rendering -----------------------------------------------------------------------------

StatFilter = Callable[[str], bool]


def compile_filter(pattern: str | None) -> StatFilter | None:
    """`?filter=` as a predicate; raises `re.error` for an invalid regex (admin answers 400)."""
    if pattern is None or pattern == "":
        return None
    return re.compile(pattern).search  # type: ignore[return-value]


def format_number(v: float) -> str:
    """Shortest round-trip spelling, integral values without `.0` (as Envoy's fmt `{}`)."""
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


def _selected(
    store: Store, filter: str | None, used_only: bool
) -> tuple[list[Counter | Gauge], list[Histogram]]:
    match = compile_filter(filter)
    scalars: list[Counter | Gauge] = [
        *store.counters.values(),
        *store.gauges.values(),
    ]
    scalars = [
        s for s in scalars if (not used_only or s.is_used) and (match is None or match(s.name))
    ]
    scalars.sort(key=lambda s: s.name)
    hists = [
        h
        for h in store.histograms.values()
        if (not used_only or h.count > 0) and (match is None or match(h.name))
    ]
    hists.sort(key=lambda h: h.name)
    return scalars, hists


def render_text(store: Store, filter: str | None = None, used_only: bool = False) -> str:
    """Envoy's `/stats` text: counters and gauges `name: value` sorted by name, then histograms.

    Histogram lines pair (interval, cumulative) per quantile. podproxy does not flush stats on a
    timer, so the interval value is the cumulative one.
    """
    scalars, hists = _selected(store, filter, used_only)
    lines = [f"{s.name}: {s.value}\n" for s in scalars]
    for h in hists:
        qs = h.quantiles()
        if not qs:
            lines.append(f"{h.name}: No recorded values\n")
            continue
        parts = []
        for q, v in zip(SUPPORTED_QUANTILES, qs, strict=True):
            n = format_number(v)
            parts.append(f"P{format_number(q * 100)}({n},{n})")
        lines.append(f"{h.name}: {' '.join(parts)}\n")
    return "".join(lines)


def _json_number(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 1e16 else v


def render_json(store: Store, filter: str | None = None, used_only: bool = False) -> str:
    """`/stats?format=json`, compact as Envoy prints it; histograms as one trailing element."""
    scalars, hists = _selected(store, filter, used_only)
    stats: list[dict[str, Any]] = [{"name": s.name, "value": s.value} for s in scalars]
    if hists:
        computed = []
        for h in hists:
            qs = h.quantiles()
            values: list[dict[str, float | int | None]] = (
                [{"cumulative": _json_number(v), "interval": _json_number(v)} for v in qs]
                if qs
                else [{"cumulative": None, "interval": None} for _ in SUPPORTED_QUANTILES]
            )
            computed.append({"name": h.name, "values": values})
        stats.append(
            {
                "histograms": {
                    "supported_quantiles": [_json_number(q * 100) for q in SUPPORTED_QUANTILES],
                    "computed_quantiles": computed,
                }
            }
        )
    return json.dumps({"stats": stats}, separators=(",", ":"))


# Envoy's default tag extractors (source/common/config/well_known_names.cc), in Envoy's order:
# the regex ones first, then the tokenized ones; labels appear in extraction order. Each regex's
# group 1 is cut from the name and group 2 is the tag value.
_TAG_VALUE = r"[^\.]+"
_ADDRESS = r"(?:\d+\.\d+\.\d+\.\d+_\d+|\[[_a-fA-F0-9]+\]_\d+)"
_REGEX_EXTRACTORS: tuple[tuple[str, re.Pattern[str], str | None], ...] = (
    ("envoy.response_code", re.compile(r"_rq(_(\d{3}))$"), None),
    ("envoy.response_code_class", re.compile(r"_rq_((\d))xx$"), None),
    (
        "envoy.ssl_cipher",
        re.compile(r"^listener\..*?\.ssl\.ciphers(\.(" + _TAG_VALUE + "))$"),
        None,
    ),
    (
        "envoy.http_conn_manager_prefix",
        re.compile(r"^listener\..*?\.http\.((" + _TAG_VALUE + r")\.)"),
        None,
    ),
    (
        "envoy.worker_id",
        re.compile(
            r"^(?:listener\.(?:" + _ADDRESS + "|" + _TAG_VALUE + r")\.|server\.|listener_manager\.)"
            r"worker_((\d+)\.)"
        ),
        None,
    ),
    (
        "envoy.listener_address",
        re.compile(r"^listener\.((" + _ADDRESS + "|" + _TAG_VALUE + r")\.)"),
        "admin",
    ),
    (
        "envoy.rds_route_config",
        re.compile(r"^http\." + _TAG_VALUE + r"\.rds\.((.+)\.)\w+?$"),
        None,
    ),
)
# (tag name, tokens): `$` is the value token, `*` any one token, `**` the rest.
_TOKENIZED_EXTRACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("envoy.grpc_bridge_method", ("cluster", "*", "grpc", "*", "$", "**")),
    ("envoy.http_user_agent", ("http", "*", "user_agent", "$", "**")),
    ("envoy.virtual_cluster", ("vhost", "*", "vcluster", "$", "**")),
    ("envoy.fault_downstream_cluster", ("http", "*", "fault", "$", "**")),
    ("envoy.grpc_bridge_service", ("cluster", "*", "grpc", "$", "**")),
    ("envoy.tcp_prefix", ("tcp", "$", "**")),
    ("envoy.udp_prefix", ("udp", "$", "**")),
    ("envoy.ratelimit_prefix", ("ratelimit", "$", "**")),
    ("envoy.cluster_name", ("cluster", "$", "**")),
    ("envoy.http_conn_manager_prefix", ("http", "$", "**")),
    ("envoy.virtual_host", ("vhost", "$", "**")),
    ("envoy.route", ("vhost", "*", "route", "$", "**")),
)


def _match_tokens(tokens: list[str], pattern: tuple[str, ...]) -> int | None:
    """Index of the `$` token when `tokens` match `pattern`, else None."""
    value_at = None
    for i, p in enumerate(pattern):
        if p == "**":
            return value_at if len(tokens) > i else None
        if i >= len(tokens):
            return None
        if p == "$":
            value_at = i
        elif p != "*" and tokens[i] != p:
            return None
    return value_at if len(tokens) == len(pattern) else None


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Envoy's default tag extraction: (tag-extracted name, [(tag name, value), ...])."""
    removed: list[tuple[int, int]] = []
    tags: list[tuple[str, str]] = []
    seen: set[str] = set()
    for tag, rx, exclude in _REGEX_EXTRACTORS:
        if tag in seen:
            continue
        m = rx.search(name)
        if m is None or m.group(2) == exclude:
            continue
        removed.append(m.span(1))
        tags.append((tag, m.group(2)))
        seen.add(tag)
    tokens = name.split(".")
    for tag, pattern in _TOKENIZED_EXTRACTORS:
        if tag in seen:
            continue
        at = _match_tokens(tokens, pattern)
        if at is None:
            continue
        start = sum(len(t) + 1 for t in tokens[:at])
        removed.append((start, start + len(tokens[at]) + 1))
        tags.append((tag, tokens[at]))
        seen.add(tag)
    if not removed:
        return name, tags
    keep = [True] * len(name)
    for a, b in removed:
        for i in range(a, b):
            keep[i] = False
    return "".join(ch for ch, k in zip(name, keep, strict=True) if k), tags


_LE_INF = 'le="+Inf"'
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_prometheus_name(name: str) -> str:
    """Every char outside [a-zA-Z0-9_] becomes `_`; a leading digit gets a `_` prefix."""
    out = _UNSAFE.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def _escape_label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _prom_labels(tags: list[tuple[str, str]], extra: str = "") -> str:
    parts = [f'{sanitize_prometheus_name(k)}="{_escape_label_value(v)}"' for k, v in tags]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def render_prometheus(store: Store, filter: str | None = None, used_only: bool = False) -> str:
    """`/stats/prometheus` (text format 0.0.4) as Envoy prints it.

    Families (`envoy_` + sanitised tag-extracted name) sorted by the tag-extracted stat name
    (so `cluster.x` sorts before `cluster_manager.x`, as in Envoy) within each type, counters
    then gauges then histograms; one `# TYPE` line per family; a family's series in stat-name
    order; histograms as cumulative `_bucket` series on Envoy's default bounds plus `+Inf`,
    then `_sum` and `_count`.
    """
    scalars, hists = _selected(store, filter, used_only)
    out: list[str] = []
    counters = [s for s in scalars if isinstance(s, Counter)]
    gauges = [s for s in scalars if isinstance(s, Gauge)]
    for kind, stats in (("counter", counters), ("gauge", gauges)):
        families: dict[str, tuple[str, list[str]]] = {}
        for s in stats:  # already sorted by stat name
            base, tags = extract_tags(s.name)
            fam = "envoy_" + sanitize_prometheus_name(base)
            families.setdefault(base, (fam, []))[1].append(f"{fam}{_prom_labels(tags)} {s.value}\n")
        for base in sorted(families):
            fam, lines = families[base]
            out.append(f"# TYPE {fam} {kind}\n")
            out.extend(lines)
    hfamilies: dict[str, tuple[str, list[str]]] = {}
    for h in hists:
        base, tags = extract_tags(h.name)
        fam = "envoy_" + sanitize_prometheus_name(base)
        lines = hfamilies.setdefault(base, (fam, []))[1]
        counts = h.cumulative_buckets(DEFAULT_BUCKETS)
        for bound, n in zip(DEFAULT_BUCKETS, counts, strict=True):
            le = f'le="{format_number(bound)}"'
            lines.append(f"{fam}_bucket{_prom_labels(tags, le)} {n}\n")
        lines.append(f"{fam}_bucket{_prom_labels(tags, _LE_INF)} {h.count}\n")
        lines.append(f"{fam}_sum{_prom_labels(tags)} {format_number(h.sum)}\n")
        lines.append(f"{fam}_count{_prom_labels(tags)} {h.count}\n")
    for base in sorted(hfamilies):
        fam, lines = hfamilies[base]
        out.append(f"# TYPE {fam} histogram\n")
        out.extend(lines)
    return "".join(out)
