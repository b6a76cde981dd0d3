"""The client side: one `DownstreamConnection` (an asyncio.Protocol) per accepted connection.

Per-connection state lives on the connection; per-request state in an `Exchange`. Requests are
decoded by `codec.RequestDecoder` and handed to an injected `StreamHandler` one at a time:
pipelined requests queue behind the active one (reading pauses while any are queued) and are
answered in order. The handler writes the response with `write()` and ends it with `finish()`;
the connection decides keep-alive, starts the next queued exchange, and counts stats.
Connection-manager timeouts are checked by a once-a-second sweep, not a timer per request.
A connection that must go drains as Envoy's HTTP/1 connection manager drains one: each response
from then on says `connection: close`, and the connection closes `drain_timeout` later (or
after the response in flight then). While the server fails health checks a connection's next
response starts that sequence (a drain-close pending: `draining` with no deadline yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, cast

from podproxy.errors import ProtocolError
from podproxy.http.conn_manager import (
    ConnectionManagerConfig,
    count_connection_closed,
    expects_body,
)
from podproxy.http.flow import PEER_WRITE_BLOCKED, PIPELINE_QUEUED, FlowControl
from podproxy.http.http1 import codec, tunnel
from podproxy.http.stream import (
    DEADLINE_EXCEEDED_FIELDS,
    Exchange,
    Headers,
    RequestHead,
    StreamHandler,
    grpc_shaped_reply,
    is_grpc_request,
)

log = logging.getLogger("podproxy.http")

# Local-reply bodies of the connection manager's timeouts (Envoy 1.40, checked side by side).
REQUEST_HEADER_TIMEOUT = b"request header timeout"
DOWNSTREAM_DURATION_TIMEOUT = b"downstream duration timeout"

# What Envoy's AUTO codec looks for in a connection's first read: HTTP/2 (RFC 9113 §3.4).
H2_PREFACE_START = b"PRI * HTTP/2"

# The stream timeouts the sweep tells apart (`_earliest`).
_REQUEST_TIMEOUT, _STREAM_IDLE, _MAX_DURATION, _HEADERS = range(4)


class ConnectionTracker:
    """The live downstream connections of one listener: timeouts, sweep and drain.

    Timeouts are checked by one sweep a second rather than a timer per request, so they fire
    up to a second late: the connection idle timeout (`common_http_protocol_options.
    idle_timeout`), `max_connection_duration`, the stream idle timeout (HCM
    `stream_idle_timeout`, or the route's `idle_timeout`), `request_timeout`,
    `request_headers_timeout`, `max_stream_duration` and the end of a drain (`drain_timeout`).
    A stream is idle when no byte moved on its connection in either direction (`io_count` did
    not change).
    """

    SWEEP_INTERVAL = 1.0

    def __init__(
        self,
        config: ConnectionManagerConfig,
        handler: StreamHandler,
        connection_class: type[DownstreamConnection] | None = None,
    ) -> None:
        # Decided once: access-logged connections (http.logged) only when logs are configured.
        if connection_class is None:
            connection_class = HeadTimedConnection if config.times_heads else DownstreamConnection
        self.connection_class = connection_class
        self.config = config
        self.handler = handler
        # The HTTP/2 connection type and settings (set by the listener; None: HTTP/1 only).
        # With codec_type HTTP2 every connection is one; with AUTO an HTTP/1 connection
        # whose first read is the HTTP/2 preface becomes one.
        self.h2_connection_class: Any = None
        self.h2_settings: Any = None
        self.h2_stats: Any = None  # the client side's `http2.*` codec stats
        # A TLS chain offering h2 by ALPN: a connection that negotiated it is HTTP/2.
        self.alpn_h2 = False
        self.connections: set[DownstreamConnection] = set()
        self.draining = False
        # The server fails health checks (admin /healthcheck/fail); `drain_new`: a connection
        # made now starts draining (the listener drains) or with a drain-close pending.
        self.health_check_failed = False
        self.drain_new = False
        self._sweeper: asyncio.TimerHandle | None = None
        # Captured once: on Python 3.11 every asyncio.get_running_loop() is a getpid() syscall.
        self.loop: asyncio.AbstractEventLoop | None = None

    def protocol_factory(self) -> asyncio.Protocol:
        if self.config.codec_type == "HTTP2" and self.h2_connection_class is not None:
            return cast(asyncio.Protocol, self.h2_connection_class(self, self.h2_settings))
        return self.connection_class(self)

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
        """The listener drains: every connection starts Envoy's HTTP/1 drain sequence now
        (see `DownstreamConnection.start_drain`); new ones start it when they are made."""
        self.draining = self.drain_new = True
        loop = self.loop
        now = loop.time() if loop is not None else 0.0
        for conn in list(self.connections):
            if conn.drain_deadline is None:
                self.config.stats.downstream_cx_drain_close.value += 1
                conn.start_drain(now)

    def set_health_check_failed(self, failed: bool) -> None:
        """Admin /healthcheck/fail (True) and /ok (False). Envoy's DrainManagerImpl::drainClose
        holds while the server fails health checks (for a listener of the DEFAULT drain type),
        and its connection manager then starts a connection's drain sequence as it encodes a
        response; so every connection gets a drain-close pending, which /ok takes back from
        those that sent no response meanwhile."""
        self.health_check_failed = failed
        self.drain_new = self.draining or failed
        for conn in self.connections:
            if conn.drain_deadline is None:
                conn.draining = failed

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


def _earliest(
    fired: tuple[float, int] | None, deadline: float, kind: int, now: float
) -> tuple[float, int] | None:
    """Of a timeout that fired already and one that may have (`deadline` passed by `now`),
    the one that passed first."""
    if deadline > now or (fired is not None and fired[0] <= deadline):
        return fired
    return (deadline, kind)


class DownstreamConnection(asyncio.Protocol):
    """One client connection."""

    # The per-request state it makes (http.logged.LoggedConnection makes LoggedExchanges).
    exchange_type: type[Exchange] = Exchange

    def __init__(self, tracker: ConnectionTracker) -> None:
        self.tracker = tracker
        # The class's exchange type as an instance attribute: Python 3.11 specialises an
        # instance attribute read, not a class one read through the instance.
        self.make_exchange = self.exchange_type
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
        # Envoy's HTTP/1 drain sequence (start_drain): responses say `connection: close`; the
        # connection closes at `drain_deadline`, or after the response in flight then.
        self.draining = False
        self.drain_deadline: float | None = None
        # When the request head being received began (HeadTimedConnection only).
        self.head_started: float | None = None
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
        tracker = self.tracker
        if tracker.alpn_h2:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._become_h2(b"")
                return
        if tracker.drain_new:
            if tracker.draining:
                st.downstream_cx_drain_close.value += 1
                self.start_drain(self.idle_since)
            else:
                self.draining = True  # a drain-close pending (see set_health_check_failed)

    def data_received(self, data: bytes) -> None:
        self.io_count += 1
        self.stats.downstream_cx_rx_bytes_total.value += len(data)
        if self.closing:
            return
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            if (
                exc.status_hint is None
                and self.io_count == 1
                and self.tracker.h2_connection_class is not None
                and data.startswith(H2_PREFACE_START)
            ):
                self._become_h2(data)
                return
            self._protocol_error(exc)

    def _become_h2(self, data: bytes) -> None:
        """codec_type AUTO, and the first read starts with the HTTP/2 preface (Envoy looks at
        its first 12 bytes, on the first read only), or TLS negotiated h2 by ALPN: hand the
        transport to an HTTP/2 connection, which takes over this connection's count and the
        bytes read (`data`)."""
        transport = self.transport
        assert transport is not None
        tracker = self.tracker
        tracker.connections.discard(self)
        st = self.stats
        # Envoy makes the codec on the first read: this was never an HTTP/1 connection.
        st.downstream_cx_http1_total.value -= 1
        st.downstream_cx_http1_active.value -= 1
        self.closing = True
        self.transport = None
        self.decoder.close()
        h2conn = tracker.h2_connection_class(tracker, tracker.h2_settings)
        transport.set_protocol(h2conn)
        h2conn.take_over(transport, data, counted=True)

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
        st.downstream_cx_http1_active.value -= 1
        ex = self.active
        in_flight = ex is not None and not ex.response_complete
        count_connection_closed(self.config, self.opened, was_closing, in_flight)
        if ex is not None and in_flight:
            if not was_closing:
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
        ex = self.make_exchange(self, head, self.loop.time())
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
        if head.upgrade is not None and not self._upgrade(ex):
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

    def _upgrade(self, ex: Exchange) -> bool:
        """An upgrade request (or CONNECT): whether it goes on to the handler, as one the
        HCM's or its route's `upgrade_configs` let through (http.upgrade, http1.tunnel) or
        one with no route (Envoy's router answers it, 404); else it was answered here."""
        upgrades = self.config.upgrades
        if upgrades is None or ex.head.upgrade == b"CONNECT":
            self._reject_upgrade(ex)
            return False
        allowed, routed = upgrades.verdict(ex.head)
        if routed and not allowed:
            self._reject_upgrade(ex)
            return False
        tunnel.admit(self, ex, allowed)
        return True

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

    def write_trailers(self, ex: Exchange, trailers: Headers) -> None:
        """Response trailers: HTTP/1 has no place for them here (Envoy's HTTP/1 codec drops
        them too without enable_trailers)."""

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
        now = self.loop.time()
        st.downstream_rq_time.record((now - ex.start) * 1000.0)
        ex.state = None  # break the exchange <-> handler cycle so no GC pass is needed
        if not keep_alive or not ex.head.keep_alive or self.closing_after_response:
            # A client still sending its request gets time to read the reply (see `close`).
            self.close(linger=not ex.request_complete)
            return
        # Draining, the connection stays until its drain deadline although the response said
        # `connection: close` (as Envoy's): a request that comes meanwhile is still served.
        if not ex.request_complete:
            if expects_body(ex.head):
                # The response ended before the request body did (e.g. a local reply to an
                # upload): the rest of the body cannot be skipped safely, so close (as Envoy).
                self.close(linger=True)
            # Else a reply sent from the head callback of a bodyless request: its end is in
            # the same read, and on_request_end moves on to the next request.
            return
        self._next(now)

    def _next(self, now: float | None = None) -> None:
        """The active exchange is done: start the next queued one, or note when the
        connection went idle (`now`, when the caller has just read the clock)."""
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
            self.idle_since = self.loop.time() if now is None else now

    def send_local_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        *,
        flags: str = "-",
        close: bool = False,
        extra: Headers | None = None,
        content_type: bytes = b"text/plain",
    ) -> None:
        """An Envoy local reply (a text/plain body unless said otherwise) that ends the
        exchange."""
        if ex.response_started:
            # Too late for a reply: the response is cut short by closing the connection, after
            # the delayed close (as Envoy resets an HTTP/1 stream).
            self.stats.rq_reset_after_downstream_response_started.value += 1
            ex.response_complete = True
            self.stats.downstream_rq_active.value -= 1
            self.close(linger=True)
            return
        if flags != "-":
            ex.add_flag(flags)
        # A gRPC client gets a gRPC status, not an error page.
        status, body, extra = grpc_shaped_reply(ex.head.headers, status, body, extra)
        if self.draining:
            self.drain_on_response()
        close = close or not ex.head.keep_alive
        if not ex.request_complete and expects_body(ex.head):
            close = True
        data = codec.simple_response(
            status,
            body,
            content_type=content_type,
            extra=extra,
            server=self.config.server_name,
            close=close or self.draining,
        )
        ex.bytes_sent += len(body)
        self.response_head_sent(ex, status)
        self.local_reply_written(ex, data)
        self.write(data)
        self.finish(ex, keep_alive=not close)

    def local_reply_written(self, ex: Exchange, data: bytes) -> None:
        """A local reply's bytes are about to go (http1.logged keeps its head for the log)."""

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
            ex = self._headless_exchange()
        self.active = ex
        ex.request_complete = False
        reason = codec.status_line(status).split(b" ", 2)[-1].strip()
        self.send_local_reply(ex, status, reason, flags="DPE", close=True)

    def _headless_exchange(self) -> Exchange:
        """An exchange to answer on when no request head was decoded (a malformed one, or a
        head that timed out): it stands for the request as `GET /`."""
        head = RequestHead(b"GET", b"/", "1.1", [], False)
        ex = self.make_exchange(self, head, self.loop.time())
        self.stats.downstream_rq_active.value += 1
        return ex

    # draining ------------------------------------------------------------------------
    def start_drain(self, now: float) -> None:
        """Envoy's HTTP/1 drain sequence (ConnectionManagerImpl::startDrainSequence): from now
        on every response says `connection: close`; `drain_timeout` later the connection
        closes (onDrainTimeout), once no request is in flight. Started by the idle timeout,
        `max_connection_duration` and the listener's drain."""
        if self.drain_deadline is None:
            self.draining = True
            self.drain_deadline = now + self.config.drain_timeout

    def drain_on_response(self) -> None:
        """A response goes out while the connection is `draining`: a drain-close pending (the
        server fails health checks) becomes the drain sequence now, counted as Envoy counts
        it (`downstream_cx_drain_close`)."""
        if self.drain_deadline is None:
            self.stats.downstream_cx_drain_close.value += 1
            self.start_drain(self.loop.time())

    def check_timeouts(self, now: float, cfg: ConnectionManagerConfig) -> None:
        """The sweep's per-connection step (see ConnectionTracker)."""
        if self.closing:
            return
        if self.io_count != self._seen_io:
            self._seen_io = self.io_count
            self._idle_since_io = now
        ex = self.active
        if (
            cfg.max_connection_duration is not None
            and self.drain_deadline is None
            and now - self.opened_loop >= cfg.max_connection_duration
        ):
            cfg.stats.downstream_cx_max_duration_reached.value += 1
            if ex is None and self.io_count == 0:
                self.close()  # no byte came: Envoy has no codec yet and closes at once
                return
            self.start_drain(now)
        if ex is None:
            started = self.head_started
            if started is not None and self._head_timed_out(now, started, cfg):
                return
            if (
                cfg.idle_timeout is not None
                and self.drain_deadline is None
                and started is None  # Envoy's stream began at the head's first byte
                and self.idle_since is not None
                and now - self.idle_since >= cfg.idle_timeout
            ):
                cfg.stats.downstream_cx_idle_timeout.value += 1
                if self.io_count == 0:
                    self.close()  # as above: nothing was ever received
                    return
                self.start_drain(now)
        deadline = self.drain_deadline
        if deadline is not None and now >= deadline:
            # onDrainTimeout: close now, or once the response in flight is done. Like any
            # close Envoy makes after a drain, it waits for the client (delayed close).
            if ex is None:
                self.close(linger=True)
                return
            self.closing_after_response = True
        if ex is None:
            return
        # The stream's own timeouts; when several passed since the last sweep, the one that
        # passed first is the one Envoy's timers would have fired.
        idle = ex.idle_timeout if ex.idle_timeout is not None else cfg.stream_idle_timeout
        fired: tuple[float, int] | None = None
        if cfg.request_timeout is not None and not ex.request_complete:
            fired = _earliest(fired, ex.start + cfg.request_timeout, _REQUEST_TIMEOUT, now)
        duration = cfg.max_stream_duration
        # The router's per-request state knows the stream's route (None before it has one).
        route = getattr(ex.state, "route", None)
        if route is not None and route.max_stream_duration is not None:
            # The route's max_stream_duration replaces the manager's for its streams (0: none),
            # from the stream's start all the same (refreshDurationTimeout). Read here, once a
            # second, so a route without one costs a request nothing.
            duration = route.max_stream_duration or None
        if duration is not None:
            fired = _earliest(fired, ex.start + duration, _MAX_DURATION, now)
        if idle is not None:
            fired = _earliest(fired, self._idle_since_io + idle, _STREAM_IDLE, now)
        if fired is None:
            return
        kind = fired[1]
        if kind == _REQUEST_TIMEOUT:
            cfg.stats.downstream_rq_timeout.value += 1
            self._abort(ex, 408, b"request timeout")
        elif kind == _STREAM_IDLE:
            cfg.stats.downstream_rq_idle_timeout.value += 1
            self._abort(ex, 408, b"stream timeout")
        else:
            self.max_duration_reached(ex)

    def _head_timed_out(self, now: float, started: float, cfg: ConnectionManagerConfig) -> bool:
        """A request head still arriving: `request_headers_timeout` or `max_stream_duration`
        (both run from its first byte) may have passed. Envoy answers 408 either way."""
        fired: tuple[float, int] | None = None
        if cfg.request_headers_timeout is not None:
            fired = _earliest(fired, started + cfg.request_headers_timeout, _HEADERS, now)
        if cfg.max_stream_duration is not None:
            fired = _earliest(fired, started + cfg.max_stream_duration, _MAX_DURATION, now)
        if fired is None:
            return False
        self.head_started = None
        st = cfg.stats
        # The stream Envoy made at the head's first byte, answered and counted as a request.
        st.downstream_rq_total.value += 1
        st.downstream_rq_http1_total.value += 1
        ex = self._headless_exchange()
        ex.start = started
        self.active = ex
        if fired[1] == _HEADERS:
            st.downstream_rq_header_timeout.value += 1
            self.send_local_reply(ex, 408, REQUEST_HEADER_TIMEOUT, close=True)
        else:
            st.downstream_rq_max_duration_reached.value += 1
            self.send_local_reply(ex, 408, DOWNSTREAM_DURATION_TIMEOUT, close=True)
        return True

    def max_duration_reached(self, ex: Exchange) -> None:
        """max_stream_duration (or a duration from grpc-timeout), as Envoy 1.40 answers it
        (checked side by side): 408 while the request is still arriving (then close), 504
        once it has arrived and no response has begun (the connection stays), and a reset
        once the response has begun; a gRPC client gets DEADLINE_EXCEEDED."""
        self.stats.downstream_rq_max_duration_reached.value += 1
        grpc = DEADLINE_EXCEEDED_FIELDS if is_grpc_request(ex.head.headers) else None
        if not ex.request_complete:
            self.handler.on_downstream_reset(ex)
            self.send_local_reply(ex, 408, DOWNSTREAM_DURATION_TIMEOUT, close=True, extra=grpc)
            return
        self.handler.on_downstream_reset(ex)
        if not ex.response_started:
            self.send_local_reply(ex, 504, DOWNSTREAM_DURATION_TIMEOUT, extra=grpc)
            return
        self.stats.downstream_rq_tx_reset.value += 1
        ex.response_complete = True
        self.stats.downstream_rq_active.value -= 1
        self.close(linger=True)

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


class HeadTimedConnection(DownstreamConnection):
    """A connection that notes when each request head begins, for `request_headers_timeout`
    and `max_stream_duration`: Envoy starts both at a request's first byte (its HTTP/1 codec
    makes the stream there). Used only when one of them is configured, so the common path
    pays nothing for them.

    A read that arrives while the decoder waits for a head (between requests, or inside an
    unfinished head) starts the clock unless it is running; a decoded head stops it and moves
    the exchange's start back to it. A head begun behind another one in the same read is
    timed from the next read that adds to it.
    """

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        if self.head_started is None and decoder.in_head and not decoder.stopped:
            self.head_started = self.loop.time()
        super().data_received(data)

    def on_request_head(self, head: RequestHead) -> None:
        started = self.head_started
        self.head_started = None
        super().on_request_head(head)
        ex = self.decoding
        if started is not None and ex is not None and ex.head is head:
            ex.start = started


__all__ = [
    "DOWNSTREAM_DURATION_TIMEOUT",
    "PEER_WRITE_BLOCKED",
    "REQUEST_HEADER_TIMEOUT",
    "ConnectionTracker",
    "DownstreamConnection",
    "HeadTimedConnection",
]
