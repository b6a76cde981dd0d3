"""The client side over HTTP/2: one `H2DownstreamConnection` per connection, many streams.

Each request stream becomes an `Exchange` whose connection is its `ServerStream` (the
`StreamConnection` the handler writes to), so the connection manager, the filters and the router
serve it exactly as they serve an HTTP/1 request, concurrently with its siblings. A stream's
response head comes from the router as an HTTP/1 block and leaves as HEADERS (held until the
first body byte or the end, so a response without body is one HEADERS frame with END_STREAM:
gRPC's trailers-only form); trailers leave as a final HEADERS frame.

Draining is Envoy's for HTTP/2: a GOAWAY "shutdown notice" (last stream id 2^31-1) first, the
final GOAWAY naming the last stream taken `drain_timeout` later, and the close once the streams
in flight are done. The known HTTP/2 attacks meet Envoy's answers: a peer that does not read
while making us queue control frames (PING, SETTINGS acks, resets) past
`max_outbound_control_frames` is disconnected, and so is one that resets more than half of
its streams within a second of opening them once it opened 500 (CVE-2023-44487, "rapid
reset", Envoy's `overload.premature_reset_*` defaults), and so is one that sends DATA frames
without payload back to back (`max_consecutive_inbound_frames_with_empty_payload`, 1).
Streams over `max_concurrent_streams` are refused, and a request whose header list is over
`max_request_headers_kb` or `max_headers_count` is reset alone (INTERNAL_ERROR, as Envoy).
A stream idle for `stream_idle_timeout` (or its route's `idle_timeout`) is answered 408, or
reset once its response began: idle means no frame of its own moved either way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any, cast

import h2.events as ev
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError

from podproxy.http.conn_manager import count_connection_closed
from podproxy.http.http1 import codec as h1codec
from podproxy.http.http1.logged import LoggedExchange, log_ended
from podproxy.http.http2.codec import (
    INVALID_LENGTH,
    MAX_WINDOW,
    H2Endpoint,
    H2Stream,
    Http2CodecStats,
    Http2Settings,
    declared_length,
    is_messaging_error,
    response_block_to_h2,
)
from podproxy.http.stream import (
    DEADLINE_EXCEEDED_FIELDS,
    Exchange,
    Headers,
    RequestHead,
    grpc_shaped_reply,
    is_grpc_request,
)

if TYPE_CHECKING:
    from podproxy.http.conn_manager import ConnectionManagerConfig
    from podproxy.http.http1.downstream import ConnectionTracker

log = logging.getLogger("podproxy.http2")

# Envoy's overload.premature_reset_total_stream_count and _min_stream_lifetime_seconds.
PREMATURE_RESET_STREAMS = 500
PREMATURE_RESET_LIFETIME = 1.0
# Envoy's max_consecutive_inbound_frames_with_empty_payload default: one DATA frame without
# payload (and without END_STREAM) may follow another frame, a second in a row is a flood.
MAX_EMPTY_FRAMES = 1


# RFC 9110 §5.6.2 token characters (a method), and what an authority may hold (RFC 3986
# reg-name, IP literals, port, userinfo); a path must hold no space or control character.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:%\[\]@]*")
_PATH_BAD = re.compile(rb"[\x00-\x20\x7f]")


def _valid_request_line(method: bytes, path: bytes, authority: bytes) -> bool:
    """Whether the pseudo-headers make a request line every HTTP/1 reader reads as we do."""
    if _TOKEN.fullmatch(method) is None or _AUTHORITY.fullmatch(authority) is None:
        return False
    if method == b"CONNECT":
        return True  # no :path (h2 checks); answered before routing
    if path == b"*":
        return method == b"OPTIONS"
    return path[:1] == b"/" and _PATH_BAD.search(path) is None


class ServerStream(H2Stream):
    """One request stream: the `StreamConnection` of its exchange."""

    __slots__ = (
        "body_received",
        "declared_length",
        "ex",
        "head_buf",
        "held",
        "idle_since",
        "io",
        "opened",
        "request_ended",
        "seen_io",
        "wrote_head",
    )

    def __init__(self, conn: H2DownstreamConnection, sid: int) -> None:
        super().__init__(conn, sid)
        self.ex: Exchange | None = None
        self.head_buf = b""
        self.held: Headers | None = None  # the response HEADERS, until body or end
        self.wrote_head = False
        self.request_ended = False
        self.opened = conn.loop.time()
        # The stream idle timeout: `io` counts this stream's frames both ways; the sweep
        # notes when it last changed (no clock read per frame).
        self.io = 0
        self.seen_io = 0
        self.idle_since = self.opened
        # The request's content-length, and the body bytes that came (checked at its end).
        self.declared_length: int | None = None
        self.body_received = 0

    # the StreamConnection the handler sees --------------------------------------------
    @property
    def conn(self) -> H2DownstreamConnection:
        return cast(H2DownstreamConnection, self.endpoint)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.conn.loop

    @property
    def remote(self) -> tuple[str, int]:
        return self.conn.remote

    @property
    def draining(self) -> bool:
        return self.conn.draining

    @property
    def config(self) -> ConnectionManagerConfig:
        return self.conn.config

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.conn.transport

    def write(self, data: bytes) -> None:
        """Response bytes from the handler: an HTTP/1 head (1xx heads first, maybe), then
        body, all as one stream of bytes."""
        if self.closed or self.ended_out:
            return
        conn = self.conn
        self.io += 1
        while not self.wrote_head:
            buf = self.head_buf + data if self.head_buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.head_buf = buf
                return
            self.head_buf = b""
            headers = response_block_to_h2(buf[: end + 4])
            data = buf[end + 4 :]
            if headers[0][1][:1] == b"1":
                conn.send_headers(self, headers, False)  # 100 Continue: the head goes on
                if not data:
                    return
                continue
            self.held = headers
            self.wrote_head = True
        if not data:
            return
        held = self.held
        if held is not None:
            self.held = None
            conn.send_headers(self, held, False)
        conn.send_data(self, data, False)

    def write_trailers(self, ex: Exchange, trailers: Headers) -> None:
        """The response's trailers: they end the stream (the handler's finish follows)."""
        if self.closed or self.ended_out:
            return
        conn = self.conn
        held = self.held
        fields = [(k, v) for k, v in trailers if k[:1] != b":"]
        if held is not None:
            self.held = None
            conn.send_headers(self, held, not fields)
        if fields:
            conn.send_trailers(self, fields)
        elif not self.ended_out:
            # A filter took them all (grpc_web framed them into the body): no empty HEADERS.
            conn.send_data(self, b"", True)

    def drain_on_response(self) -> None:
        conn = self.conn
        if conn.drain_deadline is None:
            conn.stats.downstream_cx_drain_close.value += 1
            conn.start_drain(conn.loop.time())

    def response_head_sent(self, ex: Exchange, status: int) -> None:
        ex.status = status
        ex.response_started = True
        self.conn.config.rq_class[status // 100 if status < 600 else 5].value += 1

    def finish(self, ex: Exchange, keep_alive: bool) -> None:
        """The response is complete: end the stream (keep-alive means nothing here)."""
        if ex.response_complete:
            return
        conn = self.conn
        if not self.ended_out and not self.closed:
            held = self.held
            if held is not None:
                self.held = None
                conn.send_headers(self, held, True)
            elif self.wrote_head:
                conn.send_data(self, b"", True)
            else:
                conn.reset_stream(self, ErrorCodes.INTERNAL_ERROR)
        conn.stream_complete(self, ex)

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
        """Envoy's local reply on an HTTP/2 stream: one HEADERS (and DATA) frame; a gRPC
        request gets the trailers-only gRPC form. `close` closes nothing here (the stream
        ends; its siblings go on)."""
        conn = self.conn
        if ex.response_started:
            conn.stats.rq_reset_after_downstream_response_started.value += 1
            conn.reset_stream(self, ErrorCodes.INTERNAL_ERROR)
            conn.stream_complete(self, ex)
            return
        if flags != "-":
            ex.add_flag(flags)
        status, body, extra = grpc_shaped_reply(ex.head.headers, status, body, extra)
        data = h1codec.simple_response(
            status, body, content_type=content_type, extra=extra, server=conn.config.server_name
        )
        split = data.index(b"\r\n\r\n") + 4
        ex.bytes_sent += len(body)
        self.response_head_sent(ex, status)
        conn.local_reply_written(ex, data)
        headers = response_block_to_h2(data[:split])
        if not body:
            # HEADERS with END_STREAM says it all: Envoy sends no content-length then.
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            conn.send_headers(self, headers, True)
        elif ex.head.method == b"HEAD":
            conn.send_headers(self, headers, True)
        else:
            conn.send_headers(self, headers, False)
            conn.send_data(self, body, True)
        conn.stream_complete(self, ex)

    def max_duration_reached(self, ex: Exchange) -> None:
        """max_stream_duration (or a duration from grpc-timeout), as Envoy answers it: 408
        while the request is still arriving, 504 once it has arrived and no response has
        begun, a reset once it has; a gRPC client gets DEADLINE_EXCEEDED."""
        conn = self.conn
        conn.stats.downstream_rq_max_duration_reached.value += 1
        conn.handler.on_downstream_reset(ex)
        grpc = DEADLINE_EXCEEDED_FIELDS if is_grpc_request(ex.head.headers) else None
        status = 408 if not ex.request_complete else 504
        if ex.response_started:
            conn.stats.downstream_rq_tx_reset.value += 1
        self.send_local_reply(ex, status, b"downstream duration timeout", extra=grpc)

    # back-pressure from the endpoint ----------------------------------------------------
    def on_write_paused(self) -> None:
        ex = self.ex
        if ex is not None and not ex.response_complete:
            self.conn.handler.on_downstream_write_paused(ex)

    def on_write_resumed(self) -> None:
        ex = self.ex
        if ex is not None and not ex.response_complete:
            self.conn.handler.on_downstream_write_resumed(ex)


class H2DownstreamConnection(H2Endpoint):
    """One HTTP/2 client connection (prior knowledge, `codec_type` HTTP2 or AUTO, or ALPN h2)."""

    client_side = False

    def __init__(self, tracker: ConnectionTracker, settings: Http2Settings) -> None:
        config = tracker.config
        codec: Http2CodecStats = tracker.h2_stats
        super().__init__(settings, config.buffer_limit, codec)
        self.tracker = tracker
        self.config = config
        self.stats = config.stats
        self.tx_bytes = config.stats.downstream_cx_tx_bytes_total
        self.handler = tracker.handler
        self.loop = tracker.loop or asyncio.get_running_loop()
        self.make_exchange = tracker.connection_class.exchange_type
        self.remote: tuple[str, int] = ("", 0)
        self.opened = time.monotonic()
        self.opened_loop = self.loop.time()
        self.idle_since: float | None = self.opened_loop
        self.closing = False
        self.draining = False
        self.drain_deadline: float | None = None
        self.final_goaway_sent = False
        self.last_stream_id = 0
        self.goaway_received = False
        self.abort_timer: asyncio.TimerHandle | None = None
        # Flood and rapid-reset accounting (see the module docstring).
        self.control_frames_queued = 0
        self.streams_opened = 0
        self.premature_resets = 0
        self.empty_frames = 0

    # what the tracker reads -----------------------------------------------------------
    @property
    def active(self) -> object | None:
        return self.streams or None

    @property
    def flow(self) -> None:
        return None

    # asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.take_over(cast(asyncio.Transport, transport), b"", counted=False)

    def take_over(self, transport: asyncio.Transport, data: bytes, *, counted: bool) -> None:
        """Start on `transport`; `data` was read already (the preface, when an HTTP/1
        connection found it: `counted`, that connection counted the connection)."""
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote = (peer[0], peer[1])
        st = self.stats
        if not counted:
            st.downstream_cx_total.value += 1
            st.downstream_cx_active.value += 1
            ls = self.config.listener_stats
            if ls is not None:
                ls.downstream_cx_total.value += 1
                ls.downstream_cx_active.value += 1
        st.downstream_cx_http2_total.value += 1
        st.downstream_cx_http2_active.value += 1
        self.tracker.connections.add(self)  # type: ignore[arg-type]
        self.start(transport)
        tracker = self.tracker
        if tracker.drain_new:
            if tracker.draining:
                st.downstream_cx_drain_close.value += 1
                self.start_drain(self.loop.time())
            else:
                self.draining = True
        if data:
            if counted:
                # Counted as received by the HTTP/1 connection that read it.
                st.downstream_cx_rx_bytes_total.value -= len(data)
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.stats.downstream_cx_rx_bytes_total.value += len(data)
        if self.closing:
            return
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError as exc:
            self._connection_error(exc)
            return
        touched: dict[int, H2Stream] = {}
        for event in events:
            try:
                self._event(event, touched)
            except Exception:  # one stream's failure must not take the connection down
                log.exception("HTTP/2 event %r failed", event)
            if self.closing:
                break
        if not self.closing:
            self.ack_after_read(touched.values())
            self.flush()
            self._check_flood()

    def _event(self, event: ev.Event, touched: dict[int, H2Stream]) -> None:
        if isinstance(event, ev.DataReceived):
            if event.data:
                self.empty_frames = 0
            elif event.stream_ended is None:
                self.empty_frames += 1
                if self.empty_frames > MAX_EMPTY_FRAMES:
                    self._inbound_flood()
                    return
            st = self.streams.get(event.stream_id)
            self.received(st, event.flow_controlled_length)
            if isinstance(st, ServerStream) and st.ex is not None:
                touched[st.sid] = st
                st.io += 1
                st.body_received += len(event.data)
                ex = st.ex
                if not ex.response_complete:
                    ex.bytes_received += len(event.data)
                    self.handler.on_request_body(ex, event.data)
        elif isinstance(event, ev.RequestReceived):
            self._request(event.stream_id, event.headers or [], event.stream_ended is not None)
        elif isinstance(event, ev.StreamEnded):
            self._request_end(event.stream_id)
        elif isinstance(event, ev.StreamReset):
            if event.remote_reset:
                self.codec.rx_reset.value += 1
            self._stream_reset(event.stream_id, event.remote_reset)
        elif isinstance(event, ev.WindowUpdated):
            self.window_updated(event.stream_id)
        elif isinstance(event, ev.RemoteSettingsChanged):
            self.send_waiting()
            if self.write_paused:
                self.control_frames_queued += 1  # the SETTINGS ack
        elif isinstance(event, ev.PingReceived):
            if self.write_paused:
                self.control_frames_queued += 1  # the PING ack
        elif isinstance(event, ev.PingAckReceived):
            self.ping_acked(event.ping_data)
        elif isinstance(event, ev.TrailersReceived):
            # Request trailers end the request (StreamEnded follows): the exchange keeps them
            # for the filters and an HTTP/2 upstream; an HTTP/1 one drops them (Envoy's
            # HTTP/1 codec does without enable_trailers).
            self.codec.trailers.value += 1
            st = self.streams.get(event.stream_id)
            if isinstance(st, ServerStream) and st.ex is not None:
                fields = [(k, v) for k, v in event.headers or [] if k[:1] != b":"]
                st.ex.request_trailers = fields
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway_received = True
            if not self.streams:
                self.close()

    # streams --------------------------------------------------------------------------
    def _request(self, sid: int, headers: list[Any], ended: bool) -> None:
        if self.final_goaway_sent:
            # Opened after our final GOAWAY: refused, never served (RFC 9113 §6.8).
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        self.empty_frames = 0
        codec = self.codec
        if len(self.streams) >= self.settings.max_concurrent_streams:
            # Over our SETTINGS_MAX_CONCURRENT_STREAMS: a stream error (RFC 9113 §5.1.2), sent
            # as REFUSED_STREAM so the client may retry it, as Envoy does. Not processed, so
            # the final GOAWAY does not name it.
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            codec.stream_refused_errors.value += 1
            codec.tx_reset.value += 1
            return
        self.last_stream_id = max(self.last_stream_id, sid)
        st = ServerStream(self, sid)
        self.add_stream(st)
        self.streams_opened += 1
        self.idle_since = None
        method = path = authority = b""
        regular: Headers = []
        size = 0
        has_length = False
        for k, v in headers:
            size += len(k) + len(v) + 32
            if k[:1] == b":":
                if k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                elif k == b":authority":
                    authority = v
                continue
            if k == b"content-length":
                has_length = True
            elif k == b"host" and authority:
                continue  # :authority wins (RFC 9113 §8.3.1)
            regular.append((k, v))
        cfg = self.config
        stats = self.stats
        if size > cfg.max_headers_bytes or len(regular) > cfg.max_headers_count:
            # Envoy's codec resets such a stream (INTERNAL_ERROR, nghttp2's answer to a failed
            # header callback) and goes on; checked side by side.
            if size > cfg.max_headers_bytes:
                codec.header_list_size_too_large.value += 1
            else:
                codec.header_overflow.value += 1
            self.reset_stream(st, ErrorCodes.INTERNAL_ERROR)
            return
        declared = declared_length(regular) if has_length else None
        if (
            not _valid_request_line(method, path, authority)
            or declared == INVALID_LENGTH
            or (ended and declared)
        ):
            # What the HTTP/1 side would read differently than we route it (a space in
            # :path, a method that is no token), or a length the body cannot have: a
            # malformed request, as nghttp2 judges it for Envoy (RFC 9113 §8.1.1), reset
            # before any byte goes upstream.
            codec.rx_messaging_error.value += 1
            self.reset_stream(st, ErrorCodes.PROTOCOL_ERROR)
            return
        st.declared_length = declared
        host = authority or next((v for k, v in regular if k == b"host"), None)
        if not ended and not has_length:
            # The HTTP/1 side frames a body of unknown length in chunks.
            regular.append((b"transfer-encoding", b"chunked"))
        head = RequestHead(method, path or b"/", "2", regular, True, host or None)
        if method == b"CONNECT":
            head.upgrade = b"CONNECT"
        ex = self.make_exchange(st, head, self.loop.time())  # type: ignore[arg-type]
        st.ex = ex
        stats.downstream_rq_total.value += 1
        stats.downstream_rq_http2_total.value += 1
        stats.downstream_rq_active.value += 1
        if head.upgrade is not None:
            stats.rq_total.value += 1
            stats.no_route.value += 1
            st.send_local_reply(ex, 404, b"", flags="NR")
            return
        if ended:
            ex.request_complete = True
            st.request_ended = True
        self.handler.on_request_head(ex)
        if ended and not ex.response_complete and st.ex is ex:
            self.handler.on_request_end(ex)

    def _request_end(self, sid: int) -> None:
        st = self.streams.get(sid)
        if not isinstance(st, ServerStream) or st.request_ended:
            return
        st.request_ended = True
        ex = st.ex
        if ex is None:
            return
        declared = st.declared_length
        if declared is not None and st.body_received != declared:
            # The body ended short of (or past) its content-length: what went upstream
            # must not be taken for a complete request (an HTTP/1 pod would read the next
            # request's bytes as its rest). Reset, as nghttp2 does for Envoy.
            self.codec.rx_messaging_error.value += 1
            self._abandon(st, ex)
            return
        ex.request_complete = True
        if ex.response_complete:
            if not st.out and st.ended_out:
                self.forget(st)
            # else: its response still waits for window; `_send_stream` forgets it after.
        else:
            self.on_request_end(ex)

    def _abandon(self, st: ServerStream, ex: Exchange) -> None:
        """Reset a stream the client broke, letting go of its upstream side."""
        if not ex.response_complete:
            ex.response_complete = True
            self.stats.downstream_rq_active.value -= 1
            self.handler.on_downstream_reset(ex)
            self.stream_reset_logged(ex)
            ex.state = None
        self.reset_stream(st, ErrorCodes.PROTOCOL_ERROR)

    def on_request_end(self, ex: Exchange) -> None:
        self.handler.on_request_end(ex)

    def _stream_reset(self, sid: int, remote: bool = True) -> None:
        """The client reset stream `sid` (or broke it and it was reset here: not `remote`)."""
        st = self.streams.get(sid)
        if not isinstance(st, ServerStream):
            return
        st.closed = True
        ex = st.ex
        if ex is not None and not ex.response_complete:
            stats = self.stats
            if remote:
                stats.downstream_rq_rx_reset.value += 1
                if self.loop.time() - st.opened < PREMATURE_RESET_LIFETIME:
                    self.premature_resets += 1
            self.handler.on_downstream_reset(ex)
            ex.response_complete = True
            stats.downstream_rq_active.value -= 1
            self.stream_reset_logged(ex)
            ex.state = None
        self.forget(st)
        self._check_premature_resets()
        self._maybe_close()

    def stream_complete(self, st: ServerStream, ex: Exchange) -> None:
        """The response of `ex` went (or was reset): count it; the stream goes once both
        directions ended."""
        if ex.response_complete:
            return
        ex.response_complete = True
        stats = self.stats
        stats.downstream_rq_completed.value += 1
        stats.downstream_rq_active.value -= 1
        now = self.loop.time()
        stats.downstream_rq_time.record((now - ex.start) * 1000.0)
        self.stream_logged(ex)
        ex.state = None
        if not st.request_ended and not st.closed and not st.out:
            # The answer came before the request's end: Envoy resets the rest (NO_ERROR).
            self.reset_stream(st, ErrorCodes.NO_ERROR)
        elif st.request_ended and not st.out:
            self.forget(st)
        if not self.streams:
            self.idle_since = now
        self._maybe_close()

    def forget(self, st: H2Stream) -> None:
        super().forget(st)
        if not self.streams and self.idle_since is None:
            self.idle_since = self.loop.time()

    def _send_stream(self, st: H2Stream) -> None:
        super()._send_stream(st)
        if not isinstance(st, ServerStream):
            return
        st.io += 1  # the window moved: not idle (see _flush_timeout)
        ex = st.ex
        if st.ended_out and not st.out and ex is not None and ex.response_complete:
            # The last of a finished response left: the stream goes (reset NO_ERROR if the
            # request is still coming, as stream_complete does when nothing waited).
            if st.request_ended:
                self.forget(st)
            elif not st.closed:
                self.reset_stream(st, ErrorCodes.NO_ERROR)
            self._maybe_close()

    # access logs (LoggedH2DownstreamConnection) -----------------------------------------
    def stream_logged(self, ex: Exchange) -> None:
        """The response of `ex` ended."""

    def stream_reset_logged(self, ex: Exchange) -> None:
        """The client reset `ex`."""

    def local_reply_written(self, ex: Exchange, data: bytes) -> None:
        """A local reply's bytes are about to go (for the access log)."""

    # the connection ---------------------------------------------------------------------
    def _connection_error(self, exc: Exception) -> None:
        """The peer broke HTTP/2: h2 queued the GOAWAY; send it, reset every stream, close."""
        self.stats.downstream_cx_protocol_error.value += 1
        codec = self.codec
        if is_messaging_error(exc):
            codec.rx_messaging_error.value += 1
        codec.goaway_sent.value += 1
        log.debug("HTTP/2 protocol error from %s: %s", self.remote[0], exc)
        self.close()

    def _inbound_flood(self) -> None:
        """Envoy's inbound_empty_frames_flood: GOAWAY (ENHANCE_YOUR_CALM) and close."""
        log.debug("HTTP/2 empty frames flood from %s", self.remote[0])
        self.codec.inbound_empty_frames_flood.value += 1
        self.stats.downstream_cx_protocol_error.value += 1
        self.goaway(self.last_stream_id, ErrorCodes.ENHANCE_YOUR_CALM)
        self.close()

    def _check_flood(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.write_paused:
            self.control_frames_queued = 0
        elif self.control_frames_queued > self.settings.max_outbound_control_frames:
            # Envoy: http2.outbound_control_flood, and the connection goes.
            log.debug("HTTP/2 outbound control flood from %s", self.remote[0])
            self.codec.outbound_control_flood.value += 1
            self.stats.downstream_cx_protocol_error.value += 1
            self.closing = True
            transport.abort()

    def _check_premature_resets(self) -> None:
        if (
            self.streams_opened >= PREMATURE_RESET_STREAMS
            and self.premature_resets * 2 > self.streams_opened
            and not self.closing
        ):
            self.stats.downstream_rq_too_many_premature_resets.value += 1
            self.goaway(self.last_stream_id, ErrorCodes.ENHANCE_YOUR_CALM)
            self.close()

    def start_drain(self, now: float) -> None:
        """Envoy's HTTP/2 drain: GOAWAY shutdown notice now, the final GOAWAY
        `drain_timeout` later (checked by the sweep), close when the streams are done."""
        if self.drain_deadline is None:
            self.draining = True
            self.drain_deadline = now + self.config.drain_timeout
            self.goaway(MAX_WINDOW)

    def _final_goaway(self) -> None:
        if not self.final_goaway_sent:
            self.final_goaway_sent = True
            self.goaway(self.last_stream_id)

    def _maybe_close(self) -> None:
        if not self.streams and (self.final_goaway_sent or self.goaway_received):
            self.close()

    def check_timeouts(self, now: float, cfg: ConnectionManagerConfig) -> None:
        """The sweep's step: connection idle timeout, max_connection_duration, the end of a
        drain, and each stream's request / idle / duration timeouts."""
        if self.closing:
            return
        if (
            cfg.max_connection_duration is not None
            and self.drain_deadline is None
            and now - self.opened_loop >= cfg.max_connection_duration
        ):
            cfg.stats.downstream_cx_max_duration_reached.value += 1
            self.start_drain(now)
        if (
            cfg.idle_timeout is not None
            and self.drain_deadline is None
            and self.idle_since is not None
            and not self.streams
            and now - self.idle_since >= cfg.idle_timeout
        ):
            cfg.stats.downstream_cx_idle_timeout.value += 1
            self.start_drain(now)
        deadline = self.drain_deadline
        if deadline is not None and now >= deadline:
            self._final_goaway()
            self._maybe_close()
            if self.closing:
                return
        for st in list(self.streams.values()):
            if isinstance(st, ServerStream) and st.ex is not None:
                self._stream_timeouts(st, st.ex, now, cfg)

    def _stream_timeouts(
        self, st: ServerStream, ex: Exchange, now: float, cfg: ConnectionManagerConfig
    ) -> None:
        if ex.response_complete:
            if st.out and not st.closed:
                self._flush_timeout(st, ex, now, cfg)
            return
        timeout = cfg.request_timeout
        if timeout is not None and not ex.request_complete and now - ex.start >= timeout:
            cfg.stats.downstream_rq_timeout.value += 1
            self.handler.on_downstream_reset(ex)
            st.send_local_reply(ex, 408, b"request timeout")
            return
        duration = cfg.max_stream_duration
        route = getattr(ex.state, "route", None)
        if route is not None and route.max_stream_duration is not None:
            duration = route.max_stream_duration or None
        if duration is not None and now - ex.start >= duration:
            st.max_duration_reached(ex)
            return
        idle = ex.idle_timeout if ex.idle_timeout is not None else cfg.stream_idle_timeout
        if idle is None:
            return
        if st.io != st.seen_io:
            st.seen_io = st.io
            st.idle_since = now
        elif now - st.idle_since >= idle:
            # HCM stream_idle_timeout / route idle_timeout, as Envoy 1.40 answers it on HTTP/2
            # (checked side by side): 408 "stream timeout" while the request is arriving, 504
            # once it has (the wait is the upstream's), a reset once the response began.
            cfg.stats.downstream_rq_idle_timeout.value += 1
            self.handler.on_downstream_reset(ex)
            st.send_local_reply(ex, 504 if ex.request_complete else 408, b"stream timeout")

    def _flush_timeout(
        self, st: ServerStream, ex: Exchange, now: float, cfg: ConnectionManagerConfig
    ) -> None:
        """A finished response still waiting for the client's window: the stream idle
        timeout keeps running (Envoy's stream flush timeout, which defaults to it); when it
        passes the stream is reset and its body dropped (`http2.tx_flush_timeout`)."""
        idle = ex.idle_timeout if ex.idle_timeout is not None else cfg.stream_idle_timeout
        if idle is None:
            return
        if st.io != st.seen_io:
            st.seen_io = st.io
            st.idle_since = now
        elif now - st.idle_since >= idle:
            self.codec.tx_flush_timeout.value += 1
            self.reset_stream(st, ErrorCodes.CANCEL)

    def keepalive_lost(self) -> None:
        self.close()

    def close(self, *, linger: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self.stop_keepalive()
        self.flush_now()
        transport = self.transport
        if transport is not None:
            transport.close()
            # A peer that does not read would keep the connection (and what we wrote to it)
            # for ever: Envoy's delayed close gives it delayed_close_timeout, then aborts.
            delay = self.config.delayed_close_timeout or 1.0
            self.abort_timer = self.loop.call_later(delay, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        was_closing = self.closing
        self.closing = True
        self.closed = True
        self.stop_keepalive()
        self.tracker.connections.discard(self)
        st = self.stats
        st.downstream_cx_http2_active.value -= 1
        live = [s for s in self.forget_all() if isinstance(s, ServerStream)]
        in_flight = any(s.ex is not None and not s.ex.response_complete for s in live)
        count_connection_closed(self.config, self.opened, was_closing, in_flight)
        for s in live:
            s.closed = True
            ex = s.ex
            if ex is not None and not ex.response_complete:
                if not was_closing:
                    st.downstream_rq_rx_reset.value += 1
                ex.response_complete = True
                st.downstream_rq_active.value -= 1
                self.handler.on_downstream_reset(ex)
                self.stream_reset_logged(ex)
                ex.state = None

    def __repr__(self) -> str:
        return f"<H2DownstreamConnection {self.remote} streams={len(self.streams)}>"


class LoggedH2DownstreamConnection(H2DownstreamConnection):
    """An `H2DownstreamConnection` whose streams are access-logged (as `LoggedConnection`)."""

    def on_request_end(self, ex: Exchange) -> None:
        if isinstance(ex, LoggedExchange) and ex.request_end is None:
            ex.request_end = self.loop.time()
        super().on_request_end(ex)

    def local_reply_written(self, ex: Exchange, data: bytes) -> None:
        if isinstance(ex, LoggedExchange):
            ex.response_head = data[: data.index(b"\r\n\r\n") + 4]

    def stream_logged(self, ex: Exchange) -> None:
        if isinstance(ex, LoggedExchange):
            self._log(ex)

    def stream_reset_logged(self, ex: Exchange) -> None:
        if isinstance(ex, LoggedExchange) and ex.response_end is None:
            ex.add_flag("DC")
            self._log(ex)

    def _log(self, ex: LoggedExchange) -> None:
        log_ended(ex, self.loop.time(), self.config.access_logger)
