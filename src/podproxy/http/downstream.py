"""The client side: one `DownstreamConnection` (an asyncio.Protocol) per accepted connection.

Per-connection state lives on the connection; per-request state in an `Exchange`. Requests are
decoded by `codec.RequestDecoder` and handed to an injected `StreamHandler` one at a time:
pipelined requests queue behind the active one (reading pauses while any are queued) and are
answered in order. The handler writes the response with `write()` and ends it with `finish()`;
the connection decides keep-alive, starts the next queued exchange, and counts stats.
Idle keep-alive connections are closed by a once-a-second sweep, not a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, cast

from podproxy.errors import ProtocolError
from podproxy.http import codec
from podproxy.http.codec import RequestHead
from podproxy.http.flow import PEER_WRITE_BLOCKED, PIPELINE_QUEUED, FlowControl
from podproxy.stats import Counter, Gauge, Histogram

log = logging.getLogger("podproxy.http")


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


@dataclass(slots=True)
class Exchange:
    """One request and its response on a downstream connection (Envoy's ActiveStream)."""

    conn: DownstreamConnection
    head: RequestHead
    start: float
    request_complete: bool = False
    response_started: bool = False
    response_complete: bool = False
    status: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    flags: str = "-"
    upstream_host: str = "-"
    request_id: bytes = b""
    # The route's idle_timeout, when it overrides the connection manager's stream idle timeout.
    idle_timeout: float | None = None
    # Body received while the exchange waited behind another (pipelining; None until then).
    buffered: list[bytes] | None = None
    # The handler's own per-request state.
    state: Any = None


class StreamHandler(Protocol):
    """What the connection calls; `router.forwarder.Forwarder` and the admin implement it."""

    def on_request_head(self, ex: Exchange) -> None: ...
    def on_request_body(self, ex: Exchange, data: bytes) -> None: ...
    def on_request_end(self, ex: Exchange) -> None: ...
    def on_downstream_reset(self, ex: Exchange) -> None: ...
    def on_downstream_write_paused(self, ex: Exchange) -> None: ...
    def on_downstream_write_resumed(self, ex: Exchange) -> None: ...


class AccessLogger(Protocol):
    def log_exchange(self, ex: Exchange) -> None: ...


class ConnectionManagerConfig:
    """What a downstream connection needs from the HTTP connection manager config."""

    def __init__(
        self,
        *,
        stats: HttpConnManagerStats,
        listener_stats: ListenerStats | None = None,
        server_name: bytes = b"podproxy",
        idle_timeout: float | None = 3600.0,
        max_headers_bytes: int = codec.DEFAULT_MAX_HEADERS_BYTES,
        max_headers_count: int = codec.DEFAULT_MAX_HEADERS_COUNT,
        accept_http_10: bool = False,
        default_host_for_http_10: bytes | None = None,
        access_logger: AccessLogger | None = None,
        stream_idle_timeout: float | None = 300.0,
        request_timeout: float | None = None,
        max_connection_duration: float | None = None,
        buffer_limit: int | None = None,
        delayed_close_timeout: float | None = 1.0,
        codec_type: str = "AUTO",
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


class ConnectionTracker:
    """The live downstream connections of one listener: timeouts, sweep and drain.

    Timeouts are checked by one sweep a second rather than a timer per request, so they fire
    up to a second late: the connection idle timeout (`common_http_protocol_options.
    idle_timeout`), `max_connection_duration`, the stream idle timeout (HCM
    `stream_idle_timeout`, or the route's `idle_timeout`) and `request_timeout`. A stream is idle
    when no byte moved on its connection in either direction (`io_count` did not change).
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self, config: ConnectionManagerConfig, handler: StreamHandler) -> None:
        self.config = config
        self.handler = handler
        self.connections: set[DownstreamConnection] = set()
        self.draining = False
        self._sweeper: asyncio.TimerHandle | None = None
        # Captured once: on Python 3.11 every asyncio.get_running_loop() is a getpid() syscall.
        self.loop: asyncio.AbstractEventLoop | None = None

    def protocol_factory(self) -> DownstreamConnection:
        return DownstreamConnection(self)

    def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = self.loop
        assert loop is not None  # set by start(), which arms the sweep
        now = loop.time()
        cfg = self.config
        for conn in list(self.connections):
            try:
                conn.check_timeouts(now, cfg)
            except Exception:  # a sweep must never stop: log and go on
                log.exception("timeout check failed for %r", conn)
        self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            if conn.active is None:
                self.config.stats.downstream_cx_drain_close.value += 1
                conn.close()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    @property
    def active_requests(self) -> int:
        return sum(1 for c in self.connections if c.active is not None)


def _expects_body(head: RequestHead) -> bool:
    """Whether a request has a body to read (RFC 9112 §6.3: only with these two fields).

    Off the hot path: asked only when a response ended before its request did.
    """
    for k, v in head.headers:
        if k == b"transfer-encoding" or (k == b"content-length" and v.strip(b" \t0")):
            return True
    return False


class DownstreamConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self.tracker = tracker
        self.config = tracker.config
        self.stats = tracker.config.stats
        self.handler = tracker.handler
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.decoder = codec.RequestDecoder(
            self, self.config.max_headers_bytes, self.config.max_headers_count
        )
        self.active: Exchange | None = None
        self.decoding: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.idle_since: float | None = None
        self.closing = False
        self.write_paused = False
        self.closing_after_response = False
        self.pending_error: ProtocolError | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.linger_buffered = 0  # write buffer size when the linger timer was armed
        # Stream idle detection by the sweep: bumped on every read and write.
        self.io_count = 0
        self._seen_io = 0
        self._idle_since_io = 0.0
        self.remote: tuple[str, int] = ("", 0)
        self.opened = 0.0
        self.opened_loop = 0.0
        self.loop = tracker.loop or asyncio.get_running_loop()

    # asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.flow = FlowControl(transport, self.config.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote = (peer[0], peer[1])
        self.opened = time.monotonic()
        self.idle_since = self.loop.time()
        self.opened_loop = self.idle_since
        st = self.stats
        st.downstream_cx_total.value += 1
        st.downstream_cx_active.value += 1
        st.downstream_cx_http1_total.value += 1
        st.downstream_cx_http1_active.value += 1
        ls = self.config.listener_stats
        if ls is not None:
            ls.downstream_cx_total.value += 1
            ls.downstream_cx_active.value += 1
        self.tracker.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.io_count += 1
        self.stats.downstream_cx_rx_bytes_total.value += len(data)
        if self.closing:
            return
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its request still gets its response; one that
        # half-closes mid-request can never finish it, so that is a reset (close now).
        # While lingering (see `close`) the client's FIN is what the wait was for.
        if self.closing:
            return None
        ex = self.active
        if ex is not None and ex.request_complete and not ex.response_complete:
            self.closing_after_response = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_closing = self.closing
        self.closing = True
        if self.flow is not None:
            self.flow.closed = True
        self.tracker.connections.discard(self)
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        st = self.stats
        st.downstream_cx_active.value -= 1
        st.downstream_cx_http1_active.value -= 1
        st.downstream_cx_destroy.value += 1
        length_ms = (time.monotonic() - self.opened) * 1000.0
        st.downstream_cx_length_ms.record(length_ms)
        ls = self.config.listener_stats
        if ls is not None:
            ls.downstream_cx_active.value -= 1
            ls.downstream_cx_destroy.value += 1
            ls.downstream_cx_length_ms.record(length_ms)
        if was_closing:
            st.downstream_cx_destroy_local.value += 1
        else:
            st.downstream_cx_destroy_remote.value += 1
        ex = self.active
        if ex is not None and not ex.response_complete:
            st.downstream_cx_destroy_active_rq.value += 1
            if was_closing:
                st.downstream_cx_destroy_local_active_rq.value += 1
            else:
                st.downstream_cx_destroy_remote_active_rq.value += 1
                st.downstream_rq_rx_reset.value += 1
            self.active = None
            st.downstream_rq_active.value -= 1
            self.handler.on_downstream_reset(ex)
            ex.state = None
        # Break the cycles (connection <-> decoder <-> parser, connection <-> exchange) so the
        # connection is freed by reference counting now, not by a GC pass later.
        self.queue.clear()
        self.active = self.decoding = None
        self.decoder.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.handler.on_downstream_write_paused(self.active)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.handler.on_downstream_write_resumed(self.active)

    # codec.RequestSink ---------------------------------------------------------------
    def on_request_head(self, head: RequestHead) -> None:
        ex = Exchange(self, head, self.loop.time())
        self.decoding = ex
        st = self.stats
        st.downstream_rq_total.value += 1
        st.downstream_rq_http1_total.value += 1
        st.downstream_rq_active.value += 1
        if self.active is None:
            self._start(ex)
        else:
            self.queue.append(ex)
            assert self.flow is not None
            self.flow.pause_reading(PIPELINE_QUEUED)

    def on_request_body(self, data: bytes) -> None:
        ex = self.decoding
        if ex is None:
            return
        ex.bytes_received += len(data)
        if ex is self.active:
            if not ex.response_complete:
                self.handler.on_request_body(ex, data)
        else:
            if ex.buffered is None:
                ex.buffered = []
            ex.buffered.append(data)

    def on_request_end(self) -> None:
        ex = self.decoding
        if ex is None:
            return
        ex.request_complete = True
        if ex is self.active:
            if ex.response_complete:
                self._next()
            else:
                self.handler.on_request_end(ex)

    # exchanges -----------------------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        self.active = ex
        self.idle_since = None
        head = ex.head
        if head.upgrade is not None:
            self._reject_upgrade(ex)
            return
        if head.version != "1.1":
            if head.version != "1.0" or not self.config.accept_http_10:
                # Envoy's http1 codec: 426 Upgrade Required for HTTP/1.0 without
                # accept_http_10, and for every version llhttp accepts but 1.0 and 1.1.
                self.send_local_reply(ex, 426, b"Upgrade Required", flags="DPE", close=True)
                return
            if head.host is None and self.config.default_host_for_http_10:
                head.host = self.config.default_host_for_http_10
                head.headers.append((b"host", head.host))
        self.handler.on_request_head(ex)
        if ex.response_complete or ex is not self.active:
            return
        buffered = ex.buffered
        if buffered is not None:
            ex.buffered = None
            for chunk in buffered:
                self.handler.on_request_body(ex, chunk)
                if ex.response_complete:
                    return
        if ex.request_complete:
            self.handler.on_request_end(ex)

    def _reject_upgrade(self, ex: Exchange) -> None:
        """The one place an upgrade request (or CONNECT) is answered, as Envoy answers one
        with no `upgrade_configs`: 403 with no body (CONNECT, which no route matches without a
        connect_matcher: 404), then a lingering close (the request was not read to its end:
        what follows its head is not HTTP/1.1)."""
        if ex.head.upgrade == b"CONNECT":
            self.stats.rq_total.value += 1
            self.stats.no_route.value += 1
            self.send_local_reply(ex, 404, b"", flags="NR", close=True)
            return
        self.stats.downstream_rq_ws_on_non_ws_route.value += 1
        self.send_local_reply(ex, 403, b"", close=True)

    def write(self, data: bytes) -> None:
        """Write response bytes of the active exchange."""
        transport = self.transport
        if transport is not None and not self.closing:
            self.io_count += 1
            self.stats.downstream_cx_tx_bytes_total.value += len(data)
            transport.write(data)

    def response_head_sent(self, ex: Exchange, status: int) -> None:
        ex.status = status
        ex.response_started = True
        self.config.rq_class[status // 100 if status < 600 else 5].value += 1

    def finish(self, ex: Exchange, keep_alive: bool) -> None:
        """The response of `ex` is fully written; keep or close the connection."""
        if ex.response_complete:
            return
        ex.response_complete = True
        st = self.stats
        st.downstream_rq_completed.value += 1
        st.downstream_rq_active.value -= 1
        st.downstream_rq_time.record((self.loop.time() - ex.start) * 1000.0)
        logger = self.config.access_logger
        if logger is not None:
            logger.log_exchange(ex)
        ex.state = None  # break the exchange <-> handler cycle so no GC pass is needed
        if (
            not keep_alive
            or not ex.head.keep_alive
            or self.tracker.draining
            or self.closing_after_response
        ):
            if self.tracker.draining:
                st.downstream_cx_drain_close.value += 1
            # A client still sending its request gets time to read the reply (see `close`).
            self.close(linger=not ex.request_complete)
            return
        if not ex.request_complete:
            if _expects_body(ex.head):
                # The response ended before the request body did (e.g. a local reply to an
                # upload): the rest of the body cannot be skipped safely, so close (as Envoy).
                self.close(linger=True)
            # Else a reply sent from the head callback of a bodyless request: its end is in
            # the same read, and on_request_end moves on to the next request.
            return
        self._next()

    def _next(self) -> None:
        self.active = None
        if not self.queue and self.pending_error is not None:
            self._error_reply(None, self.pending_error)
            return
        if self.queue:
            ex = self.queue.popleft()
            if not self.queue and self.pending_error is None:
                assert self.flow is not None
                self.flow.resume_reading(PIPELINE_QUEUED)
            self._start(ex)
        else:
            self.idle_since = self.loop.time()

    def send_local_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        *,
        flags: str = "-",
        close: bool = False,
        extra: codec.Headers | None = None,
    ) -> None:
        """An Envoy local reply (text/plain body) that ends the exchange."""
        if ex.response_started:
            # Too late for a reply: the response is cut short by closing the connection, after
            # the delayed close (as Envoy resets an HTTP/1 stream).
            self.stats.rq_reset_after_downstream_response_started.value += 1
            ex.response_complete = True
            self.stats.downstream_rq_active.value -= 1
            self.close(linger=True)
            return
        ex.flags = flags
        close = close or not ex.head.keep_alive or self.tracker.draining
        if not ex.request_complete and _expects_body(ex.head):
            close = True
        data = codec.simple_response(
            status, body, extra=extra, server=self.config.server_name, close=close
        )
        ex.bytes_sent += len(body)
        self.response_head_sent(ex, status)
        self.write(data)
        self.finish(ex, keep_alive=not close)

    def _protocol_error(self, exc: ProtocolError) -> None:
        """Malformed input: answer with the status hint and close, after what came before."""
        self.stats.downstream_cx_protocol_error.value += 1
        if exc.status_hint == 431:
            self.stats.downstream_rq_too_large.value += 1
        log.debug("downstream protocol error from %s: %s", self.remote[0], exc)
        assert self.flow is not None
        self.flow.pause_reading(PIPELINE_QUEUED)
        bad = None if self.decoder.in_head else self.decoding
        if bad is not None and bad is self.active:
            if bad.response_started:
                self.close(linger=True)  # too late for a reply: reset, as Envoy does
                return
            self.handler.on_downstream_reset(bad)
            self._error_reply(bad, exc)
            return
        if bad is not None and bad in self.queue:
            # Answer the requests queued before the bad one, then the error.
            while self.queue and self.queue[-1] is not bad:
                self.queue.pop()
            self.queue.pop()
            self.stats.downstream_rq_active.value -= 1
        self.pending_error = exc
        if self.active is None:
            self._next()

    def _error_reply(self, ex: Exchange | None, exc: ProtocolError) -> None:
        status = exc.status_hint or self.config.http2_preface_status
        if status is None:
            # Nothing to answer (an HTTP/2 preface): close, after the responses already due.
            if ex is not None:
                self.active = None
                self.stats.downstream_rq_active.value -= 1
            self.close()
            return
        if ex is None:
            head = RequestHead(b"GET", b"/", "1.1", [], False)
            ex = Exchange(self, head, self.loop.time())
            self.stats.downstream_rq_active.value += 1
        self.active = ex
        ex.request_complete = False
        reason = codec.status_line(status).split(b" ", 2)[-1].strip()
        self.send_local_reply(ex, status, reason, flags="DPE", close=True)

    def check_timeouts(self, now: float, cfg: ConnectionManagerConfig) -> None:
        """The sweep's per-connection step (see ConnectionTracker)."""
        if self.closing:
            return
        if self.io_count != self._seen_io:
            self._seen_io = self.io_count
            self._idle_since_io = now
        ex = self.active
        too_old = (
            cfg.max_connection_duration is not None
            and now - self.opened_loop >= cfg.max_connection_duration
        )
        if ex is None:
            idle_for = None if self.idle_since is None else now - self.idle_since
            if (
                cfg.idle_timeout is not None
                and idle_for is not None
                and idle_for >= cfg.idle_timeout
            ):
                cfg.stats.downstream_cx_idle_timeout.value += 1
                self.close()
            elif too_old:
                self.close()
            return
        if too_old:
            self.closing_after_response = True  # drain: close after this response
        if (
            cfg.request_timeout is not None
            and not ex.request_complete
            and now - ex.start >= cfg.request_timeout
        ):
            cfg.stats.downstream_rq_timeout.value += 1
            self._abort(ex, 408, b"request timeout")
            return
        idle = ex.idle_timeout if ex.idle_timeout is not None else cfg.stream_idle_timeout
        if idle is not None and now - self._idle_since_io >= idle:
            cfg.stats.downstream_rq_idle_timeout.value += 1
            self._abort(ex, 408, b"stream timeout")

    def _abort(self, ex: Exchange, status: int, body: bytes) -> None:
        """A timeout: the handler lets go of the upstream; the client gets a reply or a reset."""
        self.handler.on_downstream_reset(ex)
        self.send_local_reply(ex, status, body, close=True)  # a reset if the response began

    def close(self, *, linger: bool = False) -> None:
        """Close after the pending writes. With `linger` (a reply to a request not read to its
        end) and a `delayed_close_timeout`, wait up to that long for the client to close
        first, as Envoy's delayed close does: closing a socket with unread input sends a
        reset, which can destroy the reply before the client reads it. Unlike Envoy, podproxy
        reads (and drops) what the client sends meanwhile, so the close is a FIN, not a reset.
        """
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        delay = self.config.delayed_close_timeout
        if not linger or not delay:
            transport.close()
            return
        flow = self.flow
        if flow is not None and flow.reasons:
            flow.reasons = 0
            transport.resume_reading()  # to see the client's FIN (data_received drops bytes)
        self.linger_buffered = transport.get_write_buffer_size()
        self.linger_timer = self.loop.call_later(delay, self._linger_expired)

    def _linger_expired(self) -> None:
        """The delayed close timer: close, unless writing the reply still makes progress
        (Envoy restarts the timer on write progress); a reply that cannot be flushed is
        abandoned (abort), so a client that never reads cannot hold the connection."""
        self.linger_timer = None
        transport = self.transport
        if transport is None:
            return
        buffered = transport.get_write_buffer_size()
        delay = self.config.delayed_close_timeout
        if buffered and buffered < self.linger_buffered and delay:
            self.linger_buffered = buffered
            self.linger_timer = self.loop.call_later(delay, self._linger_expired)
            return
        self.stats.downstream_cx_delayed_close_timeout.value += 1
        if buffered:
            transport.abort()
        else:
            transport.close()

    def __repr__(self) -> str:
        busy = self.active is not None
        return f"<DownstreamConnection {self.remote} active={busy} queued={len(self.queue)}>"


__all__ = [
    "PEER_WRITE_BLOCKED",
    "ConnectionManagerConfig",
    "ConnectionTracker",
    "DownstreamConnection",
    "Exchange",
    "HttpConnManagerStats",
    "ListenerStats",
    "StreamHandler",
]
