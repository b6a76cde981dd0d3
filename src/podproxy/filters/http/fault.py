"""The fault filter (envoy.filters.http.fault): delays and aborts, by percentage or by header.

Per stream: the route's `typed_per_filter_config` replaces the filter's settings; the fault
applies only to the configured upstream cluster, downstream nodes and headers; a delay stops the
request's walk for its duration (the body waits, the client's reading pauses), then an abort
may follow. An abort is a local reply `fault filter abort` with flag FI (delay: DI): an HTTP
status, or a gRPC status (HTTP 200, and to a gRPC request that grpc-status). Active
faults are counted once per stream and capped by `max_active_faults` (Envoy's fuzzy limit).
Runtime keys are read through the HCM's runtime seam with the configured defaults.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from podproxy.filters.http.common import FilterContext, Runtime
from podproxy.http.filter import (
    CONTINUE,
    STOP_ALL_ITERATION_AND_BUFFER,
    STOP_ITERATION,
    FilterCallbacks,
    HttpFilter,
)
from podproxy.http.stream import RequestHead, is_grpc_request
from podproxy.router.routes import header_predicate
from podproxy.stats import Counter, Gauge, Scope

NAME = "envoy.filters.http.fault"
ABORT_BODY = b"fault filter abort"
# Request headers that control faults when the config allows it (Envoy's fault HeaderNames).
DELAY_HEADER = b"x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
ABORT_HEADER = b"x-envoy-fault-abort-request"
ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"
ABORT_GRPC_HEADER = b"x-envoy-fault-abort-grpc-request"


@dataclass(slots=True)
class FaultStats:
    """`http.<stat_prefix>.fault.*`."""

    delays_injected: Counter
    aborts_injected: Counter
    faults_overflow: Counter
    response_rl_injected: Counter
    active_faults: Gauge


class FaultSettings:
    """One HTTPFault config, compiled (the filter's own, or a route's)."""

    __slots__ = (
        "abort",
        "abort_grpc",
        "abort_header",
        "abort_percent",
        "cfg",
        "delay_header",
        "delay_ms",
        "delay_percent",
        "headers",
        "max_active",
        "nodes",
        "upstream_cluster",
    )

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.headers = tuple(header_predicate(h) for h in cfg.headers)
        self.nodes = frozenset(n.encode() for n in cfg.downstream_nodes)
        self.upstream_cluster = cfg.upstream_cluster
        self.max_active = cfg.max_active_faults
        d = cfg.delay
        self.delay_ms: int | None = None
        self.delay_header = False
        self.delay_percent: tuple[int, int] | None = None
        if d is not None:
            self.delay_percent = (d.percentage.numerator, d.percentage.denominator.value)
            if d.header_delay is not None:
                self.delay_header = True
            else:
                self.delay_ms = round(d.fixed_delay * 1000)
        a = cfg.abort
        self.abort: int | None = None
        self.abort_grpc: int | None = None
        self.abort_header = False
        self.abort_percent: tuple[int, int] | None = None
        if a is not None:
            self.abort_percent = (a.percentage.numerator, a.percentage.denominator.value)
            self.abort = a.http_status
            self.abort_grpc = a.grpc_status
            self.abort_header = a.header_abort is not None


def _header_percent(head: RequestHead, name: bytes, configured: tuple[int, int]) -> tuple[int, int]:
    """A header-given percentage caps at the configured one, in its denominator (Envoy's
    HeaderPercentageProvider)."""
    num, den = configured
    value = head.get(name)
    if value is None:
        return configured
    try:
        given = int(value)
    except ValueError:
        return configured
    return (min(given, num), den) if given >= 0 else configured


def _unsigned(value: bytes | None) -> int | None:
    """An unsigned integer header value as absl::SimpleAtoi reads one (ASCII whitespace
    around it and a leading `+` allowed), None when absent or not one: Envoy 1.40 ignored
    `-1` and `junk` in x-envoy-fault-abort-grpc-request and took `0` and `99`."""
    if value is None:
        return None
    text = value.strip(b" \t\n\v\f\r")
    if text[:1] == b"+":
        text = text[1:]
    return int(text) if text.isdigit() else None


class FaultConfig:
    """The filter's config and shared state, made once per HCM."""

    def __init__(self, cfg: Any, ctx: FilterContext) -> None:
        self.settings = FaultSettings(cfg)
        self.route_settings: dict[int, FaultSettings] = {}
        scope = ctx.stats.scope("fault.")
        self.scope: Scope = scope
        self.stats = scope.make(FaultStats)
        self.runtime: Runtime = ctx.runtime
        self.random = ctx.random

    def settings_for(self, per_route: Any) -> FaultSettings:
        if per_route is None:
            return self.settings
        key = id(per_route)
        s = self.route_settings.get(key)
        if s is None:
            s = self.route_settings[key] = FaultSettings(per_route)
        return s

    def enabled(self, key: str, percent: tuple[int, int]) -> bool:
        return self.runtime.feature_enabled(key, percent[0], percent[1], self.random())

    def count(self, cluster: bytes | None, what: str) -> None:
        if cluster:
            self.scope.counter(f"{cluster.decode('latin-1')}.{what}").value += 1
        getattr(self.stats, what).value += 1


class FaultFilter(HttpFilter):
    __slots__ = ("active", "config", "downstream_cluster", "settings", "timer")

    def __init__(self, callbacks: FilterCallbacks, config: FaultConfig) -> None:
        super().__init__(callbacks)
        self.config = config
        self.settings = config.settings
        self.timer: asyncio.TimerHandle | None = None
        self.active = False
        self.downstream_cluster: bytes | None = None

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        cfg = self.config
        s = self.settings = cfg.settings_for(self.callbacks.per_filter_config(NAME))
        limit = s.max_active
        if s.cfg is cfg.settings.cfg:
            limit = cfg.runtime.get_integer(s.cfg.max_active_faults_runtime, limit)
        if limit is not None and cfg.stats.active_faults.value >= limit:
            cfg.stats.faults_overflow.value += 1
            return CONTINUE
        if s.upstream_cluster:
            route = self.callbacks.route()
            if route is None or route.cluster != s.upstream_cluster:
                return CONTINUE
        if s.nodes:
            node = head.get(b"x-envoy-downstream-service-node")
            if node is None or node not in s.nodes:
                return CONTINUE
        for pred in s.headers:
            if not pred(head.headers):
                return CONTINUE
        cluster = head.get(b"x-envoy-downstream-service-cluster")
        self.downstream_cluster = cluster
        delay = self._delay_ms(head)
        if delay is not None:
            self._activate()
            cfg.count(cluster, "delays_injected")
            self.callbacks.exchange.add_flag("DI")
            self.timer = self.callbacks.call_later(delay / 1000.0, self._after_delay)
            # The body waits too, with the client's reading paused (Envoy's fault filter
            # answers decodeData with StopIterationAndWatermark while it delays).
            return STOP_ALL_ITERATION_AND_BUFFER
        if self._abort(head):
            return STOP_ITERATION
        return CONTINUE

    def _delay_ms(self, head: RequestHead) -> int | None:
        s = self.settings
        if s.delay_percent is None:
            return None
        percent = s.delay_percent
        if s.delay_header:
            percent = _header_percent(head, DELAY_PERCENT_HEADER, percent)
        if not self.config.enabled(s.cfg.delay_percent_runtime, percent):
            return None
        if s.delay_header:
            value = head.get(DELAY_HEADER)
            try:
                ms = int(value) if value is not None else None
            except ValueError:
                ms = None
        else:
            ms = s.delay_ms
        if ms is None:
            return None
        ms = self.config.runtime.get_integer(s.cfg.delay_duration_runtime, ms)
        return ms if ms is not None and ms > 0 else None

    def _abort(self, head: RequestHead) -> bool:
        """Abort the request if the config says so for it; whether it did."""
        s = self.settings
        if s.abort_percent is None:
            return False
        http_status = s.abort
        grpc_status = s.abort_grpc
        percent = s.abort_percent
        if s.abort_header:
            # The status a client asks for; without a valid one there is no abort. The HTTP
            # header wins over the gRPC one (fault_config.cc HeaderAbortProvider).
            http_status = None
            value = head.get(ABORT_HEADER)
            if value is not None:
                try:
                    http_status = int(value)
                except ValueError:
                    http_status = None
                if http_status is not None and not 200 <= http_status < 600:
                    http_status = None
            grpc_status = None
            if http_status is None:
                grpc_status = _unsigned(head.get(ABORT_GRPC_HEADER))
            if http_status is None and grpc_status is None:
                return False
            percent = _header_percent(head, ABORT_PERCENT_HEADER, percent)
        if http_status is None and grpc_status is None:
            return False
        if not self.config.enabled(s.cfg.abort_percent_runtime, percent):
            return False
        runtime = self.config.runtime
        headers: list[tuple[bytes, bytes]] | None = None
        if http_status is not None:
            status = runtime.get_integer(s.cfg.abort_http_status_runtime, http_status)
            status = status or http_status
        else:
            # Only a gRPC status: Envoy replies 200, and a gRPC client gets the status (a
            # request of another kind gets the plain 200 `fault filter abort`, checked side by
            # side with Envoy 1.40).
            assert grpc_status is not None
            status = 200
            code = runtime.get_integer(s.cfg.abort_grpc_status_runtime, grpc_status)
            if is_grpc_request(head.headers):
                headers = [(b"grpc-status", b"%d" % (grpc_status if code is None else code))]
        self._activate()
        self.config.count(self.downstream_cluster, "aborts_injected")
        self.callbacks.exchange.add_flag("FI")
        self.callbacks.send_local_reply(
            status, ABORT_BODY, headers=headers, details="fault_filter_abort"
        )
        return True

    def _activate(self) -> None:
        if not self.active:
            self.active = True
            self.config.stats.active_faults.value += 1

    def _after_delay(self) -> None:
        self.timer = None
        head = self.callbacks.exchange.head
        if not self._abort(head):
            self.callbacks.continue_decoding()

    def on_destroy(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active:
            self.active = False
            self.config.stats.active_faults.value -= 1


def build(cfg: Any, ctx: FilterContext) -> Any:
    config = FaultConfig(cfg, ctx)

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return FaultFilter(callbacks, config)

    return factory
