"""The HTTP connection manager's configuration and stats, shared by every codec.

`ConnectionManagerConfig` is what a downstream connection needs from the HCM config (timeouts,
limits, the access logger); `HttpConnManagerStats` are Envoy's `http.<stat_prefix>.*` counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from podproxy.http.stream import DEFAULT_MAX_HEADERS_BYTES, DEFAULT_MAX_HEADERS_COUNT, AccessLogger
from podproxy.stats import Counter, Gauge, Histogram


@dataclass(slots=True)
class HttpConnManagerStats:
    """`http.<stat_prefix>.*` (Envoy's ALL_HTTP_CONN_MAN_STATS subset plus the router's)."""

    downstream_cx_total: Counter
    downstream_cx_active: Gauge
    downstream_cx_http1_total: Counter
    downstream_cx_http1_active: Gauge
    downstream_cx_destroy: Counter
    downstream_cx_destroy_remote: Counter
    downstream_cx_destroy_local: Counter
    downstream_cx_destroy_active_rq: Counter
    downstream_cx_destroy_remote_active_rq: Counter
    downstream_cx_destroy_local_active_rq: Counter
    downstream_cx_protocol_error: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_cx_idle_timeout: Counter
    downstream_cx_drain_close: Counter
    downstream_cx_length_ms: Histogram
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_active: Gauge
    downstream_rq_completed: Counter
    downstream_rq_1xx: Counter
    downstream_rq_2xx: Counter
    downstream_rq_3xx: Counter
    downstream_rq_4xx: Counter
    downstream_rq_5xx: Counter
    downstream_rq_time: Histogram
    downstream_rq_timeout: Counter
    downstream_rq_rx_reset: Counter
    downstream_rq_tx_reset: Counter
    downstream_rq_too_large: Counter
    downstream_rq_header_timeout: Counter
    downstream_rq_idle_timeout: Counter
    downstream_rq_ws_on_non_ws_route: Counter
    downstream_cx_delayed_close_timeout: Counter
    downstream_cx_max_duration_reached: Counter
    downstream_rq_max_duration_reached: Counter
    # router filter (same prefix in Envoy)
    no_route: Counter
    no_cluster: Counter
    rq_direct_response: Counter
    rq_total: Counter
    rq_reset_after_downstream_response_started: Counter


@dataclass(slots=True)
class ListenerStats:
    """`listener.<address>.*`."""

    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_active: Gauge
    downstream_cx_length_ms: Histogram


class ConnectionManagerConfig:
    """What a downstream connection needs from the HTTP connection manager config."""

    def __init__(
        self,
        *,
        stats: HttpConnManagerStats,
        listener_stats: ListenerStats | None = None,
        server_name: bytes = b"podproxy",
        idle_timeout: float | None = 3600.0,
        max_headers_bytes: int = DEFAULT_MAX_HEADERS_BYTES,
        max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
        accept_http_10: bool = False,
        default_host_for_http_10: bytes | None = None,
        access_logger: AccessLogger | None = None,
        stream_idle_timeout: float | None = 300.0,
        request_timeout: float | None = None,
        max_connection_duration: float | None = None,
        buffer_limit: int | None = None,
        delayed_close_timeout: float | None = 1.0,
        codec_type: str = "AUTO",
        request_headers_timeout: float | None = None,
        max_stream_duration: float | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        self.stats = stats
        # An HTTP/2 preface is answered 400 by an HTTP1 codec; AUTO (until podproxy speaks
        # HTTP/2) closes without an HTTP/1 answer.
        self.http2_preface_status: int | None = 400 if codec_type == "HTTP1" else None
        # HCM delayed_close_timeout: after a reply to a request it did not read to the end,
        # the connection waits this long for the client to close first (None: close at once).
        self.delayed_close_timeout = delayed_close_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.request_timeout = request_timeout
        self.max_connection_duration = max_connection_duration
        # HCM request_headers_timeout and common_http_protocol_options.max_stream_duration both
        # run from a request's first byte: connections then note when each head begins
        # (`HeadTimedConnection`); without them nothing is noted.
        self.request_headers_timeout = request_headers_timeout
        self.max_stream_duration = max_stream_duration
        self.times_heads = request_headers_timeout is not None or max_stream_duration is not None
        # HCM drain_timeout: how long a draining connection still serves requests (each
        # answered with `connection: close`) before it closes.
        self.drain_timeout = drain_timeout
        self.buffer_limit = buffer_limit
        self.listener_stats = listener_stats
        self.server_name = server_name
        self.idle_timeout = idle_timeout
        self.max_headers_bytes = max_headers_bytes
        self.max_headers_count = max_headers_count
        self.accept_http_10 = accept_http_10
        self.default_host_for_http_10 = default_host_for_http_10
        self.access_logger = access_logger
        self.rq_class: tuple[Counter, ...] = (
            stats.downstream_rq_1xx,
            stats.downstream_rq_1xx,
            stats.downstream_rq_2xx,
            stats.downstream_rq_3xx,
            stats.downstream_rq_4xx,
            stats.downstream_rq_5xx,
        )
