"""One HTTP/2 connection to one upstream host, carrying many requests at once.

The router sees each request's `ClientStream` as it sees an HTTP/1 `UpstreamConnection`: it
writes the request head (an HTTP/1 block, turned into HEADERS here) and the body, sets
`request_done`, and is called back with the response head, body, trailers and end, or with an
`UpstreamError`. A stream reset by the pod is Envoy's "remote reset" (flag UR; REFUSED_STREAM
is "remote refused stream reset", safe to send again); a connection that goes is "connection
termination" for every stream on it. A GOAWAY from the pod stops new streams on the
connection; streams the pod said it would finish go on, the others fail as refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import h2.events as ev
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError

from podproxy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefusedStream,
    UpstreamRemoteReset,
    UpstreamResetError,
)
from podproxy.http.http2.codec import (
    INVALID_LENGTH,
    H2Endpoint,
    H2Stream,
    Http2Settings,
    declared_length,
    request_block_to_h2,
)
from podproxy.http.stream import ResponseHead

if TYPE_CHECKING:
    from podproxy.http.http2.pool import H2HostPool

log = logging.getLogger("podproxy.http2")


class ClientStream(H2Stream):
    """One request on an `H2UpstreamConnection`: what the router holds as its connection."""

    __slots__ = (
        "failed",
        "head_buf",
        "head_request",
        "request_ended",
        "request_trailers",
        "response_ended",
        "stream",
    )

    # The router's resend rule reads this: a refused stream was not processed.
    requests_served = 0

    def __init__(self, conn: H2UpstreamConnection) -> None:
        super().__init__(conn, 0)  # the id is taken when the head is sent (ids go in order)
        self.stream: Any = None
        self.failed: UpstreamError | None = None
        # Set by the router before request_done when the request ended with trailers.
        self.request_trailers: list[tuple[bytes, bytes]] | None = None
        self.head_buf = b""
        self.head_request = False
        self.request_ended = False
        self.response_ended = False

    @property
    def conn(self) -> H2UpstreamConnection:
        return cast(H2UpstreamConnection, self.endpoint)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.conn.transport

    def attach(self, stream: Any, head_request: bool) -> None:
        self.stream = stream
        self.head_request = head_request
        failed = self.failed
        if failed is not None:
            # Opening failed when the router wrote the head, before it attached: it hears of
            # it once it has taken the stream over (after this call returns).
            self.failed = None
            self.stream = None
            asyncio.get_running_loop().call_soon(stream.on_upstream_error, failed)

    def write(self, data: bytes) -> None:
        """The request: its HTTP/1 head first (sent as HEADERS once complete), then body."""
        if self.closed:
            return
        conn = self.conn
        if not self.sid:
            buf = self.head_buf + data if self.head_buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.head_buf = buf
                return
            self.head_buf = b""
            data = buf[end + 4 :]
            ends = self.request_ended and not data and self.request_trailers is None
            conn.open_stream(self, request_block_to_h2(buf[: end + 4], conn.scheme), ends)
            if self.closed or ends:
                return
        if not self.request_ended:
            if data:
                conn.send_data(self, data, False)
        elif self.request_trailers is None:
            conn.send_data(self, data, True)  # the body's last piece ends the stream
        else:
            if data:
                conn.send_data(self, data, False)
            conn.send_trailers(self, self.request_trailers)

    def _end(self) -> None:
        """The request's end: its trailers (END_STREAM on them) or an empty END_STREAM."""
        trailers = self.request_trailers
        if trailers is not None:
            self.conn.send_trailers(self, trailers)
        else:
            self.conn.send_data(self, b"", True)

    @property
    def request_done(self) -> bool:
        return self.request_ended

    @request_done.setter
    def request_done(self, value: bool) -> None:
        """The router's "the request has ended": END_STREAM (once the head is out)."""
        if not value or self.request_ended:
            return
        self.request_ended = True
        if self.sid and not self.closed:
            self._end()

    def detach(self) -> None:
        """The router lets go mid-exchange: reset the stream (Envoy: CANCEL)."""
        self.stream = None
        if not self.closed:
            conn = self.conn
            if self.sid:
                conn.reset_stream(self, ErrorCodes.CANCEL)
            else:
                conn.pending_open -= 1  # handed out, never opened: its room is free again
                self.closed = True
            conn.stream_gone(self)

    # back-pressure from the endpoint ----------------------------------------------------
    def on_write_paused(self) -> None:
        if self.stream is not None:
            self.stream.on_upstream_write_paused()

    def on_write_resumed(self) -> None:
        if self.stream is not None:
            self.stream.on_upstream_write_resumed()


class H2UpstreamConnection(H2Endpoint):
    """An HTTP/2 client connection owned by an `H2HostPool`."""

    client_side = True

    def __init__(self, pool: H2HostPool, settings: Http2Settings, scheme: bytes) -> None:
        super().__init__(settings, pool.buffer_limit, pool.codec_stats)
        self.pool = pool
        self.stats = pool.stats
        self.tx_bytes = pool.stats.upstream_cx_tx_bytes_total
        self.scheme = scheme
        self.opened = time.monotonic()
        self.idle_since: float | None = self.opened
        self.ready = False
        self.draining = False  # GOAWAY received, or no new streams wanted
        self.streams_started = 0  # for max_requests_per_connection
        self.pending_open = 0  # streams handed out whose HEADERS are not sent yet
        self.goaway_last_id: int | None = None

    # asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.start(cast(asyncio.Transport, transport))

    @property
    def capacity(self) -> int:
        """How many more streams this connection may carry now."""
        if self.draining or self.closed:
            return 0
        limit = min(self.h2.remote_settings.max_concurrent_streams, self.pool.max_streams)
        free = limit - len(self.streams) - self.pending_open
        left = self.pool.max_requests_per_connection - self.streams_started
        return max(0, min(free, left))

    def new_stream(self, stream: Any = None) -> ClientStream:
        st = ClientStream(self)
        st.stream = stream
        self.pending_open += 1
        self.streams_started += 1
        self.idle_since = None
        if self.streams_started >= self.pool.max_requests_per_connection:
            self.draining = True
        return st

    def open_stream(self, st: ClientStream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        self.pending_open -= 1
        sid = self.h2.get_next_available_stream_id()
        st.sid = sid
        self.add_stream(st)
        if end:
            st.ended_out = True
        try:
            self.h2.send_headers(sid, headers, end_stream=end)
        except H2ProtocolError as exc:
            log.debug("cannot open a stream to %s: %s", self.pool.host.key, exc)
            self.forget(st)
            self._fail(st, UpstreamResetError(str(exc)))
            return
        self.flush()

    def stream_gone(self, st: ClientStream) -> None:
        """A stream ended or was let go: its capacity is free again."""
        if not st.sid and not st.closed:
            self.pending_open -= 1
        self.pool.stream_done(self)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.stats.upstream_cx_rx_bytes_total.value += len(data)
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError as exc:
            self.stats.upstream_cx_protocol_error.value += 1
            log.debug("HTTP/2 protocol error from %s: %s", self.pool.host.key, exc)
            self.flush_now()
            self._lost(UpstreamProtocolError(str(exc)))
            if self.transport is not None:
                self.transport.close()
            return
        touched: dict[int, H2Stream] = {}
        for event in events:
            try:
                self._event(event, touched)
            except Exception:
                log.exception("HTTP/2 event %r failed", event)
        if not self.closed:
            self.ack_after_read(touched.values())
            self.flush()

    def _event(self, event: ev.Event, touched: dict[int, H2Stream]) -> None:
        if isinstance(event, ev.DataReceived):
            st = self.streams.get(event.stream_id)
            self.received(st, event.flow_controlled_length)
            if isinstance(st, ClientStream) and st.stream is not None:
                touched[st.sid] = st
                st.stream.on_response_body(event.data)
        elif isinstance(event, ev.ResponseReceived):
            st = self.streams.get(event.stream_id)
            if isinstance(st, ClientStream) and st.stream is not None:
                ended = event.stream_ended is not None
                head = _response_head(event.headers or [], ended)
                if head is None:
                    # Envoy: a protocol error (502, UPE); the stream is reset.
                    self.stats.upstream_cx_protocol_error.value += 1
                    self.reset_stream(st, ErrorCodes.PROTOCOL_ERROR)
                    self._fail(st, UpstreamProtocolError("malformed response head"))
                    return
                st.stream.on_response_head(head)
        elif isinstance(event, ev.TrailersReceived):
            self.codec.trailers.value += 1
            st = self.streams.get(event.stream_id)
            if isinstance(st, ClientStream) and st.stream is not None:
                trailers = [(k, v) for k, v in event.headers or [] if k[:1] != b":"]
                handler = getattr(st.stream, "on_response_trailers", None)
                if handler is not None:
                    handler(trailers)
        elif isinstance(event, ev.StreamEnded):
            st = self.streams.get(event.stream_id)
            if isinstance(st, ClientStream):
                self._response_end(st)
        elif isinstance(event, ev.StreamReset):
            if event.remote_reset:
                self.codec.rx_reset.value += 1
            st = self.streams.get(event.stream_id)
            if isinstance(st, ClientStream):
                st.closed = True
                self.forget(st)
                err: UpstreamError
                if not event.remote_reset:
                    # We reset it: the pod broke the stream (a body longer or shorter than
                    # its content-length): Envoy's protocol error (502, UPE).
                    err = UpstreamProtocolError(f"stream error {event.error_code!r}")
                elif event.error_code == ErrorCodes.REFUSED_STREAM:
                    err = UpstreamRefusedStream("refused")
                else:
                    err = UpstreamRemoteReset(f"reset {event.error_code!r}")
                self._fail(st, err)
        elif isinstance(event, ev.WindowUpdated):
            self.window_updated(event.stream_id)
        elif isinstance(event, ev.RemoteSettingsChanged):
            self.send_waiting()
            if not self.ready:
                self.ready = True
                self.pool.connection_ready(self)
            else:
                self.pool.stream_done(self)  # max_concurrent_streams may have grown
        elif isinstance(event, ev.PingAckReceived):
            self.ping_acked(event.ping_data)
        elif isinstance(event, ev.ConnectionTerminated):
            self._goaway(event.last_stream_id or 0)

    def _response_end(self, st: ClientStream) -> None:
        st.response_ended = True
        stream = st.stream
        st.stream = None
        if not st.ended_out:
            # The answer came before the request's end: stop sending it (Envoy resets).
            self.reset_stream(st, ErrorCodes.CANCEL)
        else:
            self.forget(st)
        if stream is not None:
            stream.on_response_end()
        self.stream_gone(st)

    def _fail(self, st: ClientStream, err: UpstreamError) -> None:
        stream = st.stream
        st.stream = None
        if stream is not None:
            stream.on_upstream_error(err)
        else:
            st.failed = err  # not attached yet (see attach)
        self.stream_gone(st)

    def _goaway(self, last_id: int) -> None:
        """The pod's GOAWAY: no new streams here; those above `last_id` were refused."""
        self.draining = True
        self.goaway_last_id = last_id
        for sid, st in list(self.streams.items()):
            if sid > last_id and isinstance(st, ClientStream):
                self.forget(st)
                self._fail(st, UpstreamRefusedStream("refused by GOAWAY"))
        self.pool.connection_draining(self)

    def _lost(self, err: UpstreamError) -> None:
        self.closed = True
        self.draining = True
        self.stop_keepalive()
        streams = [s for s in self.forget_all() if isinstance(s, ClientStream)]
        if streams:
            self.stats.upstream_cx_destroy_with_active_rq.value += 1
        for st in streams:
            st.closed = True
            self._fail(st, err)

    def close(self) -> None:
        self.stop_keepalive()
        if self.transport is not None and not self.closed:
            self.goaway(self.h2.highest_inbound_stream_id)
            self.closed = True
            self.transport.close()

    def keepalive_lost(self) -> None:
        """The pod did not ack the keepalive PING: the connection is dead; its streams fail
        as "connection termination" (connection_lost follows the abort)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self._lost(UpstreamResetError("connection termination"))
        st = self.stats
        if was_closed:
            st.upstream_cx_destroy_local.value += 1
        else:
            st.upstream_cx_destroy_remote.value += 1
        self.pool.on_connection_closed(self)

    def __repr__(self) -> str:
        return f"<H2UpstreamConnection {self.pool.host.key} streams={len(self.streams)}>"


def _response_head(headers: list[Any], ended: bool) -> ResponseHead | None:
    """The response head, or None when it is malformed (a :status that is not three digits
    from 200 to 599, a content-length that is not a number): h2 checks neither."""
    status = 0
    fields = []
    for k, v in headers:
        if k == b":status":
            if len(v) != 3 or not v.isdigit() or not b"200" <= v <= b"599":
                return None
            status = int(v)
        elif k[:1] != b":":
            fields.append((k, v))
    length = declared_length(fields)
    if not status or length == INVALID_LENGTH:
        return None
    return ResponseHead(status, fields, True, length, False, ended)
