"""Access-log filters (config/accesslog/v3/accesslog.proto AccessLogFilter) as predicates.

`build_filter` turns a typed filter config into one `(StreamInfo) -> bool` at config time; the
runtime filter reaches the runtime through the `Runtime` seam (main's layered runtime plugs in
there). Semantics are Envoy's source/common/access_log/access_log_impl.cc.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from podproxy.access_log.formatter import GRPC_STATUS_NAMES, grpc_status
from podproxy.access_log.stream_info import Headers, StreamInfo
from podproxy.router.routes import header_predicate

Filter = Callable[[StreamInfo], bool]

# FractionalPercent.DenominatorType → its denominator.
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


class Runtime(Protocol):
    """The runtime seam: Envoy's Snapshot::featureEnabled(key, FractionalPercent, random)."""

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool: ...


class DefaultRuntime:
    """A runtime with no overrides: every key has its configured default fraction."""

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return random_value % denominator < numerator


def _compare(op: str, value: int) -> Callable[[int], bool]:
    if op == "EQ":
        return lambda x: x == value
    if op == "GE":
        return lambda x: x >= value
    if op == "LE":
        return lambda x: x <= value
    return lambda x: x != value  # NE


def _request_id_integer(request_id: bytes) -> int | None:
    """UUIDRequestIDExtension::getInteger: the last 8 hex digits of a 36-character UUID."""
    if len(request_id) < 36:
        return None
    try:
        return int(request_id[28:36], 16)
    except ValueError:
        return None


def _with_pseudo(info: StreamInfo) -> Headers:
    pseudo: Headers = [(b":scheme", info.scheme)]
    for name, value in ((b":method", info.method), (b":path", info.path)):
        if value is not None:
            pseudo.append((name, value))
    if info.authority is not None:
        # Envoy's HTTP/1 codec turns Host into :authority; REQ(HOST) finds it there too.
        pseudo += ((b":authority", info.authority), (b"host", info.authority))
    return pseudo + info.request_headers


def build_filter(cfg: Any, runtime: Runtime, rng: random.Random | None = None) -> Filter:
    """One AccessLogFilter (a validated `config.schema.AccessLogFilter`) as a predicate."""
    rand = rng or random.Random()
    if cfg.status_code_filter is not None:
        c = cfg.status_code_filter.comparison
        # RuntimeUInt32: with no runtime overrides the default_value is the value.
        status_ok = _compare(c.op.name, c.value.default_value)
        return lambda i: status_ok(i.status)
    if cfg.duration_filter is not None:
        c = cfg.duration_filter.comparison
        duration_ok = _compare(c.op.name, c.value.default_value)

        def duration(i: StreamInfo) -> bool:
            end = i.response_end
            return end is not None and duration_ok(int((end - i.start) * 1000))

        return duration
    if cfg.not_health_check_filter is not None:
        # No stream is marked health check: podproxy has no health_check HTTP filter.
        return lambda i: True
    if cfg.runtime_filter is not None:
        rf = cfg.runtime_filter
        pct = rf.percent_sampled
        numerator = pct.numerator if pct is not None else 0
        denominator = DENOMINATORS[pct.denominator.name] if pct is not None else 100
        key = rf.runtime_key
        independent = rf.use_independent_randomness

        def sampled(i: StreamInfo) -> bool:
            value = None if independent else _request_id_integer(i.request_id)
            if value is None:
                value = rand.getrandbits(64)
            return runtime.feature_enabled(key, numerator, denominator, value)

        return sampled
    if cfg.and_filter is not None:
        subs = [build_filter(f, runtime, rand) for f in cfg.and_filter.filters]
        return lambda i: all(f(i) for f in subs)
    if cfg.or_filter is not None:
        subs = [build_filter(f, runtime, rand) for f in cfg.or_filter.filters]
        return lambda i: any(f(i) for f in subs)
    if cfg.header_filter is not None:
        pred = header_predicate(cfg.header_filter.header)
        return lambda i: pred(_with_pseudo(i))
    if cfg.response_flag_filter is not None:
        wanted = frozenset(cfg.response_flag_filter.flags)

        def flagged(i: StreamInfo) -> bool:
            flags = i.flags
            if flags == "-" or not flags:
                return False
            return not wanted or not wanted.isdisjoint(flags.split(","))

        return flagged
    if cfg.grpc_status_filter is not None:
        g = cfg.grpc_status_filter
        statuses: frozenset[int] = frozenset(GRPC_STATUS_NAMES.index(s.name) for s in g.statuses)
        exclude = g.exclude

        def by_grpc(i: StreamInfo) -> bool:
            n = grpc_status(i)
            if n is None:
                n = _grpc_from_http(i.status)
            return bool((n in statuses) != exclude)

        return by_grpc
    raise ValueError("access log filter without a filter")


def _grpc_from_http(status: int) -> int:
    """Grpc::Utility::httpToGrpcStatus, for a response without grpc-status."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(status, 2)
