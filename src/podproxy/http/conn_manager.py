"""The HTTP connection manager: its config and stats, the request sanitising and request ids
every stream gets, local replies, and the HTTP filter chain's walk, for every codec.

`ConnectionManagerConfig` is what a downstream connection needs from the HCM config (timeouts,
limits, the access logger); `HttpConnManagerStats` are Envoy's `http.<stat_prefix>.*` counters.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from podproxy.http.filter import (
    CONTINUE,
    STOP_ALL_ITERATION_AND_BUFFER,
    STOP_ITERATION_AND_BUFFER,
    STOP_ITERATION_NO_BUFFER,
    FilterFactory,
    HttpFilter,
)
from podproxy.http.flow import FILTER_HOLD
from podproxy.http.stream import (
    DEFAULT_MAX_HEADERS_BYTES,
    DEFAULT_MAX_HEADERS_COUNT,
    AccessLogger,
    Exchange,
    Headers,
    RequestHead,
    ResponseHead,
    StreamHandler,
)
from podproxy.http.upgrade import UpgradePolicy
from podproxy.runtime import Runtime
from podproxy.stats import Counter, Gauge, Histogram


@dataclass(slots=True)
class HttpConnManagerStats:
    """`http.<stat_prefix>.*` (Envoy's ALL_HTTP_CONN_MAN_STATS subset plus the router's)."""

    downstream_cx_total: Counter
    downstream_cx_active: Gauge
    downstream_cx_http1_total: Counter
    downstream_cx_http1_active: Gauge
    downstream_cx_http2_total: Counter
    downstream_cx_http2_active: Gauge
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
    downstream_rq_http2_total: Counter
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
    downstream_cx_upgrades_total: Counter
    downstream_cx_upgrades_active: Gauge
    downstream_cx_delayed_close_timeout: Counter
    downstream_cx_max_duration_reached: Counter
    downstream_rq_max_duration_reached: Counter
    downstream_rq_too_many_premature_resets: Counter
    # router filter (same prefix in Envoy)
    no_route: Counter
    no_cluster: Counter
    rq_direct_response: Counter
    rq_redirect: Counter
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
        runtime: Runtime | None = None,
        remote_from_xff: int | None = None,
        upgrades: UpgradePolicy | None = None,
    ) -> None:
        self.stats = stats
        # The HCM's and the routes' upgrade_configs; None when neither has any, so every
        # upgrade request gets the answer Envoy gives without them (403, CONNECT 404).
        self.upgrades = upgrades
        # Where Envoy finds a stream's remote address (read by access logs only): this many
        # entries from the right of the client's x-forwarded-for, or (None) the peer.
        self.remote_from_xff = remote_from_xff
        # The server's runtime (podproxy.runtime): per request, `runtime.snapshot` is the
        # current immutable snapshot, e.g. `cfg.runtime.snapshot.feature_enabled(key, n, d, r)`.
        # Without one (tests, the admin listener) an empty runtime answers every default.
        self.runtime = runtime if runtime is not None else Runtime()
        # An HTTP/2 preface is answered 400 by an HTTP1 codec; AUTO (until podproxy speaks
        # HTTP/2) closes without an HTTP/1 answer.
        self.http2_preface_status: int | None = 400 if codec_type == "HTTP1" else None
        self.codec_type = codec_type
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


def count_connection_closed(
    config: ConnectionManagerConfig, opened: float, local: bool, with_requests: bool
) -> None:
    """Envoy's counts for a downstream connection that went (either codec): destroyed, by
    whom (`local`: we closed it), its length, and whether requests were still in flight
    (`with_requests`). The codec counts its own `downstream_cx_http<N>_active`."""
    st = config.stats
    st.downstream_cx_active.value -= 1
    st.downstream_cx_destroy.value += 1
    length_ms = (time.monotonic() - opened) * 1000.0
    st.downstream_cx_length_ms.record(length_ms)
    ls = config.listener_stats
    if ls is not None:
        ls.downstream_cx_active.value -= 1
        ls.downstream_cx_destroy.value += 1
        ls.downstream_cx_length_ms.record(length_ms)
    if local:
        st.downstream_cx_destroy_local.value += 1
    else:
        st.downstream_cx_destroy_remote.value += 1
    if with_requests:
        st.downstream_cx_destroy_active_rq.value += 1
        if local:
            st.downstream_cx_destroy_local_active_rq.value += 1
        else:
            st.downstream_cx_destroy_remote_active_rq.value += 1


# --- what the connection manager does to every request: sanitise, identify ----------------
# (The router's one-pass head builder applies these as it serialises the upstream head.)

# Headers only a trusted (internal) peer may set; stripped from external requests
# (conn_manager_utility.cc cleanInternalHeaders, reference/envoy.md §4.4; the list checked
# against Envoy 1.40 side by side). Every request is external: since Envoy 1.33 no address is
# internal unless `internal_address_config` says so, which podproxy does not support yet, so
# `x-envoy-internal` is never set either.
INTERNAL_ONLY = frozenset(
    {
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-force-trace",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-ip-tags",
        b"x-envoy-original-url",
        b"x-envoy-hedge-on-per-try-timeout",
        b"x-envoy-upstream-stream-duration-ms",
        b"x-envoy-internal",
    }
)
# Stripped too from edge requests (`use_remote_address: true`), which Envoy trusts least; it
# sets x-envoy-external-address itself there.
EDGE_ONLY = frozenset(
    {
        b"x-envoy-decorator-operation",
        b"x-envoy-downstream-service-cluster",
        b"x-envoy-downstream-service-node",
        b"x-envoy-original-path",
        b"x-envoy-original-host",
        b"x-envoy-external-address",
    }
)


def trusted_xff_address(xff: bytes, skip: int) -> str | None:
    """The address `skip` entries from the right end of an x-forwarded-for value, as Envoy's
    Utility::getLastAddressFromXFF finds it: entries are split at commas, the one picked is
    trimmed and must be a plain IPv4 or IPv6 address (no port, no brackets), else None."""
    for _ in range(skip):
        comma = xff.rfind(b",")
        if comma < 0:
            return None
        xff = xff[:comma]
    comma = xff.rfind(b",")
    if 0 <= comma < len(xff) - 1:  # a trailing comma leaves the whole (then invalid) text
        xff = xff[comma + 1 :]
    text = xff.strip().decode("latin-1")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    return None


# Envoy's Network::Utility::isLoopbackAddress: exactly these two, not all of 127.0.0.0/8.
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})


def new_request_id() -> bytes:
    """A random UUID4 as 36 ASCII bytes.

    From the Mersenne Twister, not os.urandom: a request id must be unique, not secret, and a
    getrandom() syscall per request is measurable on the hot path.
    """
    h = b"%032x" % ((_getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    # One join of the five groups: ~140 ns less than eight concatenations.
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


_getrandbits = random.getrandbits
# RFC 9562 §5.4: version 4 in bits 48-51, variant 10 in bits 64-65 (counted from the left).
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# No body is waiting (an index past any chain).
_NOWHERE = 1 << 30
# Envoy's per_connection_buffer_limit_bytes default.
DEFAULT_BUFFER_LIMIT = 1024 * 1024


class FilterManager:
    """One stream's walk through the HTTP filters (Envoy's FilterManager, for HTTP/1 streams).

    Decoding runs the filters in config order and ends in the router (`terminal`, a
    `StreamHandler`); encoding runs them in reverse and ends in `sink` (the router's writer of
    the upstream response, or the local-reply writer). A filter that returns a stop status holds
    the walk at itself until it calls `continue_decoding` / `continue_encoding`; body that
    reaches a filter the headers have not passed yet is kept here meanwhile (a stopped filter's
    buffer is bounded by the connection's flow control: the client's reading is paused while
    the walk is held, as Envoy's watermark buffers do).
    """

    __slots__ = (
        "d_added",
        "d_at",
        "d_buf",
        "d_buf_end",
        "d_buffered",
        "d_held",
        "d_limit",
        "d_pending",
        "d_pending_at",
        "d_pending_end",
        "d_stop_all",
        "d_trailers",
        "done",
        "e_added",
        "e_at",
        "e_buf",
        "e_buf_end",
        "e_end",
        "e_head",
        "e_held",
        "e_pending",
        "e_pending_at",
        "e_pending_end",
        "e_sink",
        "e_trailers",
        "ex",
        "filters",
        "handler",
        "head_only",
        "health_check",
        "matched",
        "replied",
        "routed",
    )

    def __init__(self, handler: FilterChainHandler, ex: Exchange) -> None:
        self.handler = handler
        self.ex = ex
        self.filters: list[HttpFilter] = []
        # Decoding: the headers have reached filter `d_at` (len(filters): the router has them);
        # `d_stop_all` when that filter asked for the body to wait too. Body that cannot pass
        # yet waits in `d_pending`; a filter that buffers keeps its chunks in `d_buf`, at
        # `d_held`; body (and maybe the end) waiting for the headers is in `d_pending`, to
        # resume at filter `d_pending_at`. `head_only`: the request had no body.
        self.d_at = 0
        self.d_stop_all = False
        self.d_pending: list[bytes] = []
        self.d_pending_at = _NOWHERE
        self.d_pending_end = False
        self.head_only = False
        self.d_buf: list[bytes] = []
        self.d_buf_end = False  # the buffered body includes the request's end
        self.d_trailers: Headers | None = None  # the request's, once they came
        self.d_added: list[bytes] | None = None  # add_decoded_data, during decode_trailers
        self.d_buffered = 0
        self.d_limit = handler.buffer_limit
        self.d_held = -1
        # Encoding, the same from the last filter down (`e_at` counts down to -1: the sink).
        self.e_at = 0
        self.e_head: ResponseHead | None = None
        self.e_buf: list[bytes] = []
        self.e_buf_end = False
        self.e_held = -1
        self.e_end = False
        self.e_sink: EncodeSink | None = None
        # Response body (and maybe the end) waiting for the headers, to resume at filter
        # `e_pending_at`; the response's trailers once they came; add_encoded_data's pieces.
        self.e_pending: list[bytes] = []
        self.e_pending_at = -1
        self.e_pending_end = False
        self.e_trailers: Headers | None = None
        self.e_added: list[bytes] | None = None
        self.replied = False
        self.done = False
        self.routed = False
        self.matched: Any = None
        # `health_check` (Exchange.health_check) is set only by the health check filter;
        # unset, it reads as False.

    # FilterCallbacks ---------------------------------------------------------------------
    @property
    def exchange(self) -> Exchange:
        return self.ex

    def route(self) -> Any:
        """The stream's route, matched once (by the first filter that asks, or the router)."""
        if not self.routed:
            self.routed = True
            self.matched = self.handler.match_route(self.ex)
        return self.matched

    def per_filter_config(self, name: str) -> Any:
        """The most specific `typed_per_filter_config` for `name` on the stream's route
        (route, then virtual host), or None."""
        route = self.route()
        if route is None:
            return None
        cfg = route.per_filter_config.get(name)
        if cfg is not None and getattr(cfg, "wraps_config", False):
            return cfg.config  # a route FilterConfig around the filter's own
        return cfg

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.ex.conn.loop.call_later(delay, callback)

    def set_buffer_limit(self, limit: int) -> None:
        """What a filter may buffer of this request (Envoy's setDecoderBufferLimit)."""
        self.d_limit = limit

    def decoding_buffer(self) -> bytes:
        return b"".join(self.d_buf)

    # decoding ----------------------------------------------------------------------------
    def decode_headers(self, end_stream: bool) -> None:
        self.head_only = end_stream
        self._headers_from(0)

    def _headers_from(self, i: int) -> None:
        """Walk the headers on from filter `i`; then the body that waited for them."""
        ex = self.ex
        filters = self.filters
        n = len(filters)
        while i < n:
            status = filters[i].decode_headers(ex.head, self.head_only)
            if self.replied:
                return
            if status != CONTINUE:
                self.d_at = i
                self.d_stop_all = status == STOP_ALL_ITERATION_AND_BUFFER
                self._flush_pending()
                return
            i += 1
        self.d_at = n
        terminal = self.handler.terminal
        terminal.on_request_head(ex)
        if self.replied or ex.response_complete:
            self._drop_hold()
            return
        if self.head_only:
            terminal.on_request_end(ex)
            return
        self._flush_pending()

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self._data_from(0, data, end_stream)

    def decode_trailers(self, trailers: Headers) -> None:
        """The request ends with trailers (a codec that has them: HTTP/2; HTTP/1 drops them,
        as Envoy's does without enable_trailers). Each filter sees them after the body."""
        self.d_trailers = trailers
        self._data_from(0, b"", True)

    def _data_from(self, i: int, data: bytes, end_stream: bool) -> None:
        """Walk a piece of the body (and maybe the end, with the trailers if any) on from
        filter `i`."""
        n = len(self.filters)
        while i < n:
            if i > self.d_at or (i == self.d_at and self.d_stop_all):
                # The headers have not passed this filter: the body waits for them.
                self._hold(i, data, end_stream)
                return
            out = self._through(i, data, end_stream)
            if out is None:
                return
            data = out
            if i == self.d_at:
                # A filter that stopped the headers let body through: the headers go on
                # first (as Envoy's commonContinue), the body after them.
                self._hold(i + 1, data, end_stream)
                self._headers_from(i + 1)
                return
            i += 1
        terminal = self.handler.terminal
        ex = self.ex
        if data:
            terminal.on_request_body(ex, data)
        if end_stream and not self.replied and not ex.response_complete:
            # (Trailers end the request here: the router passes ex.request_trailers to an
            # HTTP/2 upstream; an HTTP/1 one sends none, as Envoy's without enable_trailers.)
            terminal.on_request_end(ex)

    def _through(self, i: int, data: bytes, end_stream: bool) -> bytes | None:
        """Filter `i`'s turn with a piece of the body (and the end, and trailers): what goes
        on to the next filter, or None when the walk stops at this one."""
        f = self.filters[i]
        trailers = self.d_trailers if end_stream else None
        # With trailers the body is not the end: decode_data(..., False), then the trailers.
        data_end = end_stream and trailers is None
        held = i == self.d_held
        if data or trailers is None or held:
            if held:
                # This filter is buffering: it sees each piece, the buffer grows until it
                # lets the whole of it go on.
                self.d_buf.append(data)
                self.d_buf_end = end_stream
                self.d_buffered += len(data)
                if self.d_buffered > self.d_limit:
                    self._buffer_overflow()
                    return None
                status = f.decode_data(data, data_end)
                if self.replied:
                    return None
                if status == STOP_ITERATION_NO_BUFFER:
                    self.d_buffered -= len(self.d_buf.pop())
                if status != CONTINUE and trailers is None:
                    return None
                if status == CONTINUE:
                    data = self._release()
                    held = False
            else:
                status = f.decode_data(data, data_end)
                if self.replied:
                    return None
                if status == STOP_ITERATION_AND_BUFFER:
                    self.d_held = i
                    self.d_buf = [data]
                    self.d_buf_end = end_stream
                    self.d_buffered = len(data)
                    if self.d_buffered > self.d_limit:
                        self._buffer_overflow()
                        return None
                    if trailers is None:
                        return None
                    held = True
                elif status != CONTINUE:
                    if trailers is None:
                        return None
                    data = b""  # the filter took this piece; the trailers still come
        if trailers is None:
            return data
        added = self.d_added = []
        status = f.decode_trailers(trailers)
        self.d_added = None
        if self.replied:
            return None
        if added:
            data += b"".join(added)  # add_decoded_data: body before the trailers
        if status != CONTINUE:
            # Stopped at the trailers: what passed this filter waits here with the end until
            # continue_decoding (the same as a buffering filter's hold).
            if not held:
                self.d_held = i
                self.d_buf = [data]
                self.d_buffered = len(data)
            elif added:
                self.d_buf.append(b"".join(added))
            self.d_buf_end = True
            return None
        if held:
            data = self._release() + (b"".join(added) if added else b"")
        return data

    def _release(self) -> bytes:
        """The buffering filter lets its buffer go on."""
        data = b"".join(self.d_buf)
        self.d_buf = []
        self.d_buffered = 0
        self.d_held = -1
        return data

    def add_decoded_data(self, data: bytes) -> None:
        """From a filter's decode_trailers: body to send before the trailers (Envoy's
        addDecodedData)."""
        if self.d_added is None:
            raise RuntimeError("add_decoded_data outside decode_trailers")
        self.d_added.append(data)

    def inject_decoded_data(self, f: HttpFilter, data: bytes, end_stream: bool) -> None:
        """Body from filter `f` to the filters after it, in place of the piece it took with
        STOP_ITERATION_NO_BUFFER (Envoy's injectDecodedDataToFilterChain): how a filter that
        rewrites the body (grpc_web's base64 decoding) passes on what it made."""
        if self.replied or self.done:
            return
        i = self.filters.index(f)
        if i == self.d_at:
            # The headers stopped at `f`: they go on first, as when it returns CONTINUE.
            self._hold(i + 1, data, end_stream)
            self._headers_from(i + 1)
            return
        self._data_from(i + 1, data, end_stream)

    def clear_route_cache(self) -> None:
        """A filter changed what routing reads (Envoy's clearRouteCache): the route is matched
        again when next asked for (by the router at the latest). The chain stays as it is."""
        self.routed = False
        self.matched = None

    def _hold(self, at: int, data: bytes, end_stream: bool) -> None:
        """Body that must wait before filter `at` for the headers; the client's reading
        pauses meanwhile (Envoy's watermark), so what waits is bounded."""
        if data:
            self.d_pending.append(data)
        if end_stream:
            self.d_pending_end = True
        if at < self.d_pending_at:
            self.d_pending_at = at
        flow = self.ex.conn.flow
        if flow is not None:
            flow.pause_reading(FILTER_HOLD)

    def _flush_pending(self) -> None:
        """The headers moved on: the body that waited for them follows as far as it may."""
        if not self.d_pending and not self.d_pending_end:
            return
        data = b"".join(self.d_pending)
        end = self.d_pending_end
        at = self.d_pending_at
        self.d_pending = []
        self.d_pending_end = False
        self.d_pending_at = _NOWHERE
        flow = self.ex.conn.flow
        if flow is not None and flow.reasons & FILTER_HOLD:
            flow.resume_reading(FILTER_HOLD)
        self._data_from(at, data, end)

    def continue_decoding(self) -> None:
        """The filter that stopped the request's walk lets it go on past itself."""
        if self.replied or self.done:
            return
        held = self.d_held
        if held >= 0 and held != self.d_at:
            # A buffering filter lets its buffer go on.
            data = b"".join(self.d_buf)
            self.d_buf = []
            self.d_buffered = 0
            self.d_held = -1
            self._data_from(held + 1, data, self.d_buf_end)
            return
        i = self.d_at
        if i >= len(self.filters):
            return
        if held == i:
            # It stopped the headers and buffered body: both go on, the body after.
            data = b"".join(self.d_buf)
            self.d_buf = []
            self.d_buffered = 0
            self.d_held = -1
            self._hold(i + 1, data, self.d_buf_end)
        if self.d_stop_all:
            # The body it held back reaches it after the headers went on.
            self.d_stop_all = False
        self._headers_from(i + 1)

    def _buffer_overflow(self) -> None:
        """A filter buffered more of the request than the connection's buffer limit: Envoy's
        413 (FilterManager, "request_payload_too_large")."""
        self.d_buf = []
        self.d_buffered = 0
        self.handler.stats.downstream_rq_too_large.value += 1
        self.send_local_reply(413, b"Payload Too Large", details="request_payload_too_large")

    # encoding ----------------------------------------------------------------------------
    def encode_headers(self, head: ResponseHead, end_stream: bool, sink: EncodeSink) -> None:
        self.e_sink = sink
        self.e_head = head
        self.e_end = end_stream
        self._encode_headers_from(len(self.filters) - 1)

    def _encode_headers_from(self, i: int) -> None:
        """Walk the response headers on from filter `i` (down to 0, then the sink); then the
        body that waited for them."""
        head = self.e_head
        sink = self.e_sink
        assert head is not None and sink is not None
        filters = self.filters
        while i >= 0:
            if filters[i].encode_headers(head, self.e_end) != CONTINUE:
                self.e_at = i
                return
            i -= 1
        self.e_at = -1
        if not self.e_pending and not self.e_pending_end:
            sink.encode_head(head, self.e_end)
            if self.e_end:
                self.on_destroy()
            return
        sink.encode_head(head, False)
        data = b"".join(self.e_pending)
        at, end = self.e_pending_at, self.e_pending_end
        self.e_pending = []
        self.e_pending_end = False
        self._encode_data_from(at, data, end)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.e_end = True
        self._encode_data_from(len(self.filters) - 1, data, end_stream)

    def encode_trailers(self, trailers: Headers) -> None:
        """The response ends with trailers (an upstream codec that has them). Each encoder
        filter sees them after the body; the HTTP/1 downstream drops them at the end, as
        Envoy's HTTP/1 codec does without enable_trailers."""
        self.e_trailers = trailers
        self.e_end = True
        self._encode_data_from(len(self.filters) - 1, b"", True)

    def _encode_data_from(self, i: int, data: bytes, end_stream: bool) -> None:
        while i >= 0:
            if i < self.e_at:
                # The headers have not passed this filter: the body waits for them.
                if data:
                    self.e_pending.append(data)
                self.e_pending_end = self.e_pending_end or end_stream
                self.e_pending_at = i
                return
            out = self._encode_through(i, data, end_stream)
            if out is None:
                return
            data = out
            if i == self.e_at:
                # The filter that stopped the headers let body through: headers first.
                if data:
                    self.e_pending.append(data)
                self.e_pending_end = self.e_pending_end or end_stream
                self.e_pending_at = i - 1
                self._encode_headers_from(i - 1)
                return
            i -= 1
        sink = self.e_sink
        assert sink is not None
        trailers = self.e_trailers if end_stream else None
        if trailers is None:
            sink.encode_body(data, end_stream)
        else:
            if data:
                sink.encode_body(data, False)
            sink.encode_trailers(trailers)
        if end_stream:
            self.on_destroy()

    def _encode_through(self, i: int, data: bytes, end_stream: bool) -> bytes | None:
        """Encoder filter `i`'s turn (as `_through` for the request): what goes on to the
        filter before it, or None when the walk stops here."""
        f = self.filters[i]
        trailers = self.e_trailers if end_stream else None
        data_end = end_stream and trailers is None
        held = i == self.e_held
        if data or trailers is None or held:
            if held:
                self.e_buf.append(data)
                self.e_buf_end = end_stream
                status = f.encode_data(data, data_end)
                if status == STOP_ITERATION_NO_BUFFER:
                    self.e_buf.pop()
                if status != CONTINUE and trailers is None:
                    return None
                if status == CONTINUE:
                    data = self._encode_release()
                    held = False
            else:
                status = f.encode_data(data, data_end)
                if status == STOP_ITERATION_AND_BUFFER:
                    self.e_held = i
                    self.e_buf = [data]
                    self.e_buf_end = end_stream
                    if trailers is None:
                        return None
                    held = True
                elif status != CONTINUE:
                    if trailers is None:
                        return None
                    data = b""
        if trailers is None:
            return data
        added = self.e_added = []
        status = f.encode_trailers(trailers)
        self.e_added = None
        extra = b"".join(added)
        if status != CONTINUE:
            if not held:
                self.e_held = i
                self.e_buf = [data]
            if extra:
                self.e_buf.append(extra)
            self.e_buf_end = True
            return None
        if held:
            data = self._encode_release()
        return data + extra

    def _encode_release(self) -> bytes:
        data = b"".join(self.e_buf)
        self.e_buf = []
        self.e_held = -1
        return data

    def add_encoded_data(self, data: bytes) -> None:
        """From a filter's encode_trailers: body to send before the trailers (Envoy's
        addEncodedData; how grpc_web turns trailers into a body frame)."""
        if self.e_added is None:
            raise RuntimeError("add_encoded_data outside encode_trailers")
        self.e_added.append(data)

    def inject_encoded_data(self, f: HttpFilter, data: bytes, end_stream: bool) -> None:
        """Response body from filter `f` to the filters before it (and the client), in place
        of the piece it took with STOP_ITERATION_NO_BUFFER (Envoy's
        injectEncodedDataToFilterChain): grpc_web's base64 encoding, its grpc-message rewrite."""
        if self.done or self.e_head is None:
            return
        i = self.filters.index(f)
        if end_stream:
            self.e_end = True
        if i == self.e_at:
            # The headers stopped at `f`: they go on first, then this body.
            if data:
                self.e_pending.append(data)
            self.e_pending_end = self.e_pending_end or end_stream
            self.e_pending_at = i - 1
            self._encode_headers_from(i - 1)
            return
        self._encode_data_from(i - 1, data, end_stream)

    def continue_encoding(self) -> None:
        if self.done or self.e_head is None:
            return
        held = self.e_held
        if held >= 0 and held != self.e_at:
            self._encode_data_from(held - 1, self._encode_release(), self.e_buf_end)
            return
        i = self.e_at
        if i < 0:
            return
        if held == i:
            data = self._encode_release()
            if data:
                self.e_pending.append(data)
            self.e_pending_end = self.e_pending_end or self.e_buf_end
            self.e_pending_at = i - 1
        self._encode_headers_from(i - 1)

    # local replies -----------------------------------------------------------------------
    def send_local_reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Headers | None = None,
        details: str = "",
        flags: str = "-",
        close: bool = False,
    ) -> None:
        """End the stream with a reply of our own; the encoder filters see it as a response
        (unless a response is already on its way through them: then the reply goes straight
        to the connection, which resets the stream if the client has part of a response)."""
        ex = self.ex
        if self.replied or ex.response_complete:
            return
        self.replied = True
        self._drop_hold()
        if self.d_at >= len(self.filters):
            # The router has the request already: it lets go of the upstream side (a no-op
            # when the reply is the router's own, its upstream request already ended).
            self.handler.terminal.on_downstream_reset(ex)
        if ex.response_started or self.e_head is not None:
            # Too late to walk the encoders again (Envoy: a direct reply, or a reset once the
            # client has response bytes).
            self.on_destroy()
            ex.conn.send_local_reply(ex, status, body, flags=flags, close=close)
            return
        sink = LocalReplySink(ex, flags, close)
        head = ResponseHead(status, list(headers) if headers else [], True, len(body), False)
        self.encode_headers(head, not body, sink)
        if body:
            self.encode_data(body, True)

    def _drop_hold(self) -> None:
        """The stream is answered: body that waited for stopped headers is not needed, and
        the client's reading must not stay paused for it."""
        self.d_pending = []
        self.d_pending_end = False
        flow = self.ex.conn.flow
        if flow is not None and flow.reasons & FILTER_HOLD:
            flow.resume_reading(FILTER_HOLD)

    def on_destroy(self) -> None:
        if self.done:
            return
        self.done = True
        self._drop_hold()
        for f in self.filters:
            f.on_destroy()


class EncodeSink(Protocol):
    """Where an encoded response goes once every encoder filter let it through."""

    def encode_head(self, head: ResponseHead, end_stream: bool) -> None: ...
    def encode_body(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers: Headers) -> None: ...


class LocalReplySink:
    """Writes a local reply once the encoder filters are done with it: one write, as the
    codec's own local replies."""

    __slots__ = ("body", "close", "ex", "flags", "head")

    def __init__(self, ex: Exchange, flags: str, close: bool = False) -> None:
        self.close = close
        self.ex = ex
        self.flags = flags
        self.head: ResponseHead | None = None
        self.body: list[bytes] = []

    def encode_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.head = head
        if end_stream:
            self._send()

    def encode_body(self, data: bytes, end_stream: bool) -> None:
        self.body.append(data)
        if end_stream:
            self._send()

    def encode_trailers(self, trailers: Headers) -> None:
        # A filter gave a local reply trailers: an HTTP/1 reply carries none (Envoy's
        # HTTP/1 codec without enable_trailers); the reply ends here.
        self._send()

    def _send(self) -> None:
        head = self.head
        assert head is not None
        body = b"".join(self.body)
        # A reply with no body has no content-type of the writer's, but keeps one a filter
        # set (grpc_web's application/grpc-web+proto on the replies it turns into gRPC-Web).
        own = _LOCAL_REPLY_OWN if body else _LOCAL_REPLY_LENGTH
        extra = [(k, v) for k, v in head.headers if k not in own]
        content_type = head.get(b"content-type") or b"text/plain"
        ex = self.ex
        ex.conn.send_local_reply(
            ex,
            head.status,
            body,
            flags=self.flags,
            close=self.close,
            extra=extra,
            content_type=content_type,
        )


# Fields the local-reply writer sets itself.
_LOCAL_REPLY_OWN = frozenset({b"content-length", b"content-type"})
_LOCAL_REPLY_LENGTH = frozenset({b"content-length"})


def local_reply(
    ex: Exchange,
    status: int,
    body: bytes,
    *,
    flags: str = "-",
    close: bool = False,
    headers: Headers | None = None,
) -> None:
    """A local reply from the router (with `headers` besides its own): through the encoder
    filters when there are any."""
    fm = ex.filters
    if fm is None:
        ex.conn.send_local_reply(ex, status, body, flags=flags, close=close, extra=headers)
    else:
        fm.send_local_reply(status, body, flags=flags, close=close, headers=headers)


class FilterChainHandler:
    """The HCM's `StreamHandler` when it has HTTP filters besides the router: gives each
    stream a `FilterManager` with a filter from each factory, and walks it. With the router
    alone there is no chain: the connection calls the router directly.

    `factories` are (v3 name, factory, disabled) in config order; a disabled filter joins a
    stream's chain only when its route has a config for it. The route is matched before the
    chain is made (and kept for the router)."""

    def __init__(
        self,
        factories: list[tuple[str, FilterFactory, bool]],
        terminal: StreamHandler,
        match_route: Callable[[Exchange], Any],
        stats: HttpConnManagerStats,
        buffer_limit: int | None = None,
    ) -> None:
        self.factories = factories
        self.terminal = terminal
        self.match_route = match_route
        self.stats = stats
        # What a filter may buffer of one request: per_connection_buffer_limit_bytes, as
        # Envoy's decoder buffer limit (1 MiB by default).
        self.buffer_limit = buffer_limit or DEFAULT_BUFFER_LIMIT

    def on_request_head(self, ex: Exchange) -> None:
        head = ex.head
        for i, (k, v) in enumerate(head.headers):
            if k == b"expect":
                if v.lower() == b"100-continue":
                    # Envoy's connection manager answers 100-continue itself before any
                    # filter runs (a filter that waits for the body must not wait for a
                    # client that waits for the 100), and the expectation goes no further.
                    del head.headers[i]
                    ex.conn.write(CONTINUE_100)
                break
        fm = FilterManager(self, ex)
        ex.filters = fm
        route = fm.route()
        per_route = route.per_filter_config if route is not None else None
        chain = []
        for name, factory, disabled in self.factories:
            if per_route:
                cfg = per_route.get(name)
                if cfg is not None:
                    # A route's config for a filter turns it on, unless it is a FilterConfig
                    # that says disabled (Envoy's per-route filter enablement).
                    disabled = bool(getattr(cfg, "disabled", False))
            if not disabled:
                chain.append(factory(fm))
        fm.filters = chain
        fm.decode_headers(not expects_body(ex.head))

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        fm = ex.filters
        if fm is not None and not fm.replied:
            fm.decode_data(data, False)

    def on_request_end(self, ex: Exchange) -> None:
        fm = ex.filters
        if fm is not None and not fm.replied and not fm.head_only:
            trailers = ex.request_trailers
            if trailers is None:
                fm.decode_data(b"", True)
            else:
                fm.decode_trailers(trailers)  # the filters may edit the list in place

    def on_downstream_reset(self, ex: Exchange) -> None:
        fm = ex.filters
        if fm is not None:
            fm.on_destroy()
            if not fm.replied and fm.d_at >= len(fm.filters):
                self.terminal.on_downstream_reset(ex)

    def on_downstream_write_paused(self, ex: Exchange) -> None:
        self.terminal.on_downstream_write_paused(ex)

    def on_downstream_write_resumed(self, ex: Exchange) -> None:
        self.terminal.on_downstream_write_resumed(ex)


def expects_body(head: RequestHead) -> bool:
    """Whether a request has a body to come (RFC 9112 §6.3: only with these two fields).

    Off the hot path: asked when a response ended before its request did, and by the filter
    chain for a head's end_stream."""
    for k, v in head.headers:
        if k == b"transfer-encoding" or (k == b"content-length" and v.strip(b" \t0")):
            return True
    return False
