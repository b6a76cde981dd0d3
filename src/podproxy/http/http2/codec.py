"""What both ends of an HTTP/2 connection share: settings, header translation, flow control.

The codec is the `h2` library's state machine driven from an asyncio.Protocol. `H2Endpoint`
holds what the client and the server side have in common:

- **Settings** from `http2_protocol_options` with Envoy's defaults (`Http2Settings`).
- **Header translation.** The router speaks HTTP/1 header blocks (`name: value\\r\\n` lines,
  one join per head: the hot HTTP/1 path never builds anything else), so an HTTP/2 stream turns
  a block it is given into a header list once, here, and turns the header list it receives
  into the codec-neutral `RequestHead` / `ResponseHead`. Connection-specific fields (RFC 9113
  §8.2.2) never cross.
- **Flow control, both ways, per stream.** Outbound: a stream's body waits in the stream while
  its window (or the connection's) is closed, or while the socket's buffer is over its
  high-water mark; past `per_connection_buffer_limit_bytes` of waiting body the stream tells
  its producer to pause (and to resume below a quarter of it), so a slow stream never stalls
  its siblings and memory stays bounded. Inbound: the connection window is handed back as
  bytes arrive (Envoy keeps the connection window open so one paused stream cannot starve the
  others); a stream's own window only as its consumer takes the data, so a stream whose
  consumer paused it (`pause_reading`) gets at most its window more.
- **Errors as RFC 9113 and Envoy grade them.** h2 makes every error a connection error; a few
  frame handlers are wrapped so that what Envoy (nghttp2) answers with a stream error stays
  one: a stream over `max_concurrent_streams` is refused (REFUSED_STREAM), a body that does
  not match its content-length resets its stream (PROTOCOL_ERROR), and a header list over
  `max_request_headers_kb` is decoded in full (HPACK state is per connection) and its stream
  reset by the server side.
- **Codec stats** (`Http2CodecStats`, Envoy's `http2.*` names) and **PING keepalive**
  (`connection_keepalive`): a PING every `interval` (± jitter), the connection closed when
  its ack does not come within `timeout` of it and nothing else came either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h2.connection
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import Event, StreamReset
from h2.exceptions import (
    FlowControlError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
)
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame, GoAwayFrame

from podproxy.http.flow import WRITE_HIGH_WATER, WRITE_LOW_WATER
from podproxy.http.http2 import fields, hpack_codec
from podproxy.http.stream import Headers
from podproxy.stats import Counter, Gauge

log = logging.getLogger("podproxy.http2")

# RFC 9113 §8.2.2 and the HTTP/1 hop-by-hop fields: never sent on an HTTP/2 stream (`te` is
# kept only as `trailers`, which gRPC needs).
CONNECTION_SPECIFIC = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)

# The window (and h2's 2^31-1 bound): what RFC 9113 lets a WINDOW_UPDATE add at most.
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535

# A header block is decoded in full up to this many times the header limit, so that a stream
# over the limit can be reset alone (HPACK's table is the connection's); past it decoding
# stops and the connection goes (h2's "HPACK bomb" guard, ENHANCE_YOUR_CALM).
HEADER_DECODE_FACTOR = 4


@dataclass(slots=True)
class Http2CodecStats:
    """Envoy's per-codec stats (ALL_HTTP2_CODEC_STATS, checked against Envoy 1.40's /stats):
    `http2.*` for the client side (one scope for every connection manager, as Envoy) and
    `cluster.<name>.http2.*` for a cluster's pods."""

    goaway_sent: Counter
    header_overflow: Counter  # more header fields than max_headers_count
    header_list_size_too_large: Counter  # a header list over max_request_headers_kb
    inbound_empty_frames_flood: Counter
    keepalive_timeout: Counter
    outbound_control_flood: Counter
    rx_messaging_error: Counter
    rx_reset: Counter
    stream_refused_errors: Counter
    trailers: Counter
    tx_reset: Counter
    tx_flush_timeout: Counter  # a finished response that could not be sent in time
    streams_active: Gauge
    pending_send_bytes: Gauge


def make_codec_stats(scope: Any) -> Http2CodecStats:
    """`scope` is the store (client side) or a cluster's scope; the stats go under `http2.`."""
    stats: Http2CodecStats = scope.scope("http2.").make(Http2CodecStats)
    return stats


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """`http2_protocol_options`, with Envoy's current defaults (since 1.36)."""

    hpack_table_size: int = 4096
    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    # max_outbound_frames / max_outbound_control_frames: flood protection (connection closed).
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    # Envoy's max_request_headers_kb (downstream) / max_response_headers_kb (upstream).
    max_header_list_size: int = 60 * 1024
    # HttpConnectionManager.stream_error_on_invalid_http_message / the option's override:
    # an invalid message resets its stream only, rather than the connection.
    stream_error_on_invalid_http_messaging: bool = False
    # connection_keepalive: seconds between PINGs (None: no keepalive), how long an ack may
    # take, and the jitter added to each interval (a fraction of it, Envoy's 15% default).
    keepalive_interval: float | None = None
    keepalive_timeout: float = 0.0
    keepalive_jitter: float = 0.15

    def local_settings(self, client: bool) -> Settings:
        values = {
            SettingCodes.HEADER_TABLE_SIZE: self.hpack_table_size,
            SettingCodes.INITIAL_WINDOW_SIZE: self.initial_stream_window_size,
            SettingCodes.ENABLE_PUSH: 0,
        }
        if client:
            # The pod's answers: h2 enforces the limit (a connection error, as before).
            values[SettingCodes.MAX_HEADER_LIST_SIZE] = self.max_header_list_size
        else:
            # A client's max_concurrent_streams caps what the pool opens (it is not sent:
            # servers do not open streams since push is off). The server side advertises no
            # MAX_HEADER_LIST_SIZE, as Envoy (checked side by side): it measures each
            # request's list itself and resets only that stream.
            values[SettingCodes.MAX_CONCURRENT_STREAMS] = self.max_concurrent_streams
        return Settings(client=client, initial_values=values)


DEFAULT_SETTINGS = Http2Settings()


def http2_settings(options: Any, max_header_list_size: int) -> Http2Settings:
    """Settings from a typed `Http2ProtocolOptions` (config.schema)."""
    keepalive = options.connection_keepalive
    interval = keepalive.interval if keepalive is not None else None
    return Http2Settings(
        keepalive_interval=interval or None,
        keepalive_timeout=keepalive.timeout if keepalive is not None else 0.0,
        keepalive_jitter=keepalive.interval_jitter.value / 100.0 if keepalive is not None else 0.15,
        hpack_table_size=options.hpack_table_size,
        max_concurrent_streams=options.max_concurrent_streams,
        initial_stream_window_size=options.initial_stream_window_size,
        initial_connection_window_size=options.initial_connection_window_size,
        max_outbound_frames=options.max_outbound_frames,
        max_outbound_control_frames=options.max_outbound_control_frames,
        max_header_list_size=max_header_list_size,
    )


def block_fields(block: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An HTTP/1 head written by podproxy (`start line\\r\\n` + `name: value\\r\\n`... +
    `\\r\\n`) as its start line and lower-case field pairs."""
    lines = block.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        fields.append((name.strip().lower(), value.strip()))
    return lines[0], fields


def response_block_to_h2(block: bytes) -> Headers:
    """A response head from the router (`HTTP/1.1 200 OK` + fields) as HTTP/2 headers."""
    start, fields = block_fields(block)
    status = start.split(b" ", 2)[1]
    headers: Headers = [(b":status", status)]
    for name, value in fields:
        if name not in CONNECTION_SPECIFIC and name != b"te":
            headers.append((name, value))
    return headers


def request_block_to_h2(block: bytes, scheme: bytes) -> Headers:
    """A request head from the router (`GET /p HTTP/1.1` + fields, `host` among them) as
    HTTP/2 headers: the Host becomes :authority (RFC 9113 §8.3.1)."""
    start, fields = block_fields(block)
    method, _, rest = start.partition(b" ")
    path = rest.rpartition(b" ")[0]
    authority = b""
    regular: Headers = []
    for name, value in fields:
        if name == b"host":
            authority = value
        elif name in CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            continue
        else:
            regular.append((name, value))
    headers: Headers = [(b":method", method), (b":scheme", scheme), (b":authority", authority)]
    if method != b"CONNECT":
        headers.append((b":path", path))
    else:
        headers.pop(1)  # RFC 9113 §8.5: CONNECT carries only :method and :authority
    headers += regular
    return headers


INVALID_LENGTH = -1


def declared_length(headers: Headers) -> int | None:
    """A message's content-length (several equal fields are one), None without one, or
    INVALID_LENGTH when it is no number or the fields disagree (h2 checks neither)."""
    value: bytes | None = None
    for k, v in headers:
        if k == b"content-length":
            if not v.isdigit() or (value is not None and v != value):
                return INVALID_LENGTH
            value = v
    return int(value) if value is not None else None


class H2Stream:
    """One stream's state on an `H2Endpoint`; the client and server sides subclass it."""

    __slots__ = (
        "closed",
        "conn_held",
        "end_pending",
        "ended_out",
        "endpoint",
        "out",
        "out_size",
        "reasons",
        "sid",
        "trailers_pending",
        "unacked",
        "write_blocked",
    )

    def __init__(self, endpoint: H2Endpoint, sid: int) -> None:
        self.endpoint = endpoint
        self.sid = sid
        self.out: list[bytes] = []  # body waiting for window or for the socket
        self.out_size = 0
        self.end_pending = False  # the body ends once `out` is sent
        self.trailers_pending: Headers | None = None
        self.ended_out = False  # END_STREAM sent (or the stream reset)
        self.write_blocked = False  # the producer was told to pause
        self.unacked = 0  # received bytes not yet handed back as stream window
        # Bytes that came while its consumer was paused: the connection window they took is
        # handed back only when it resumes (or the stream goes), so paused streams together
        # hold at most the connection window (as nghttp2 consumes both windows at once).
        self.conn_held = 0
        self.reasons = 0  # FlowControl-like: reading paused for these reasons
        self.closed = False

    # FlowControl's interface (the router pauses "reading" a stream through `flow`) ------
    @property
    def flow(self) -> H2Stream:
        return self

    def pause_reading(self, reason: int) -> None:
        self.reasons |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and self.unacked and not self.closed:
            self.endpoint.ack_stream(self)

    # what the endpoint tells a stream -------------------------------------------------
    def on_write_paused(self) -> None:
        """Its body waits past the buffer limit: its producer should pause."""

    def on_write_resumed(self) -> None:
        """Its waiting body fell below a quarter of the limit."""


class H2Endpoint(asyncio.Protocol):
    """An HTTP/2 connection over one transport; the client and server sides subclass it."""

    client_side = False
    # Named by the subclasses' stats (Envoy: `http2.<name>` counters).
    stats: Any = None
    # What the subclass counts the bytes it writes in (downstream_/upstream_cx_tx_bytes_total).
    tx_bytes: Counter

    def __init__(
        self, settings: Http2Settings, buffer_limit: int | None, codec: Http2CodecStats
    ) -> None:
        self.settings = settings
        self.codec = codec
        config = H2Configuration(
            client_side=self.client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            # Outbound headers are built here from validated input: skip h2's second pass.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = _Connection(config=config)
        hpack_codec.install(self.h2)
        self.h2.local_settings = settings.local_settings(self.client_side)
        if not self.client_side:
            self.h2.decoder.max_header_list_size = (
                settings.max_header_list_size * HEADER_DECODE_FACTOR
            )
        _keep_open_after_goaway(self.h2)
        _stream_errors_stay_stream_errors(self)
        # Stream windows and the wait limit are `initial_stream_window_size` at most: the
        # inbound window is also the most one stream may buffer (as Envoy's soft limit).
        self.h2.max_inbound_frame_size = self.h2.local_settings.max_frame_size
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        limit = buffer_limit or WRITE_HIGH_WATER
        self.stream_high = limit
        self.stream_low = limit // 4 if buffer_limit else WRITE_LOW_WATER
        self.conn_unacked = 0
        self.closed = False
        self.flush_scheduled = False
        # Streams with body waiting, in the order they began waiting (served round robin).
        self.waiting: dict[int, H2Stream] = {}
        # Reads so far (the keepalive's "anything came since the PING").
        self.reads = 0
        self.keepalive_timer: asyncio.TimerHandle | None = None
        self.keepalive_ping: bytes | None = None  # the PING awaiting its ack
        self.keepalive_reads = 0

    # transport ------------------------------------------------------------------------
    def start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.transport_loop = asyncio.get_running_loop()
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        h2 = self.h2
        h2.initiate_connection()
        extra = self.settings.initial_connection_window_size - DEFAULT_WINDOW
        if extra > 0:
            h2.increment_flow_control_window(extra)
        self.flush()
        if self.settings.keepalive_interval is not None:
            self._arm_keepalive()

    def flush(self) -> None:
        """Write what h2 has to send once this turn of the loop is over: the frames one
        exchange makes in a turn (HEADERS, DATA, END_STREAM, trailers, WINDOW_UPDATEs, for
        several streams) leave in one write, not one each (each write is a syscall)."""
        if not self.flush_scheduled and self.transport is not None and not self.closed:
            self.flush_scheduled = True
            self.transport_loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what h2 has to send, now (before a GOAWAY written directly, or a close)."""
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.tx_bytes.value += len(data)
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.send_waiting()
        self.flush()

    # keepalive (connection_keepalive) ---------------------------------------------------
    def _arm_keepalive(self) -> None:
        interval = self.settings.keepalive_interval
        assert interval is not None
        jitter = interval * self.settings.keepalive_jitter * random.random()
        loop = asyncio.get_running_loop()
        self.keepalive_timer = loop.call_later(interval + jitter, self._send_keepalive)

    def _send_keepalive(self) -> None:
        if self.closed or self.transport is None:
            return
        opaque = os.urandom(8)
        self.keepalive_ping = opaque
        self.keepalive_reads = self.reads
        with contextlib.suppress(ProtocolError):
            self.h2.ping(opaque)
        self.flush()
        loop = asyncio.get_running_loop()
        self.keepalive_timer = loop.call_later(
            self.settings.keepalive_timeout, self._keepalive_expired
        )

    def _keepalive_expired(self) -> None:
        if self.closed or self.keepalive_ping is None:
            return
        if self.reads != self.keepalive_reads:
            # Frames came meanwhile: the connection is alive, its ack is only queued behind
            # them (Envoy extends the timeout on any frame for the same reason).
            self.keepalive_reads = self.reads
            loop = asyncio.get_running_loop()
            self.keepalive_timer = loop.call_later(
                self.settings.keepalive_timeout, self._keepalive_expired
            )
            return
        self.codec.keepalive_timeout.value += 1
        log.debug("HTTP/2 keepalive PING not answered: closing %r", self)
        self.keepalive_lost()

    def ping_acked(self, opaque: bytes) -> None:
        """A PING ack came: if it is the keepalive's, the next PING goes an interval later."""
        if opaque != self.keepalive_ping:
            return
        self.keepalive_ping = None
        if self.keepalive_timer is not None:
            self.keepalive_timer.cancel()
        if not self.closed:
            self._arm_keepalive()

    def keepalive_lost(self) -> None:
        """No keepalive ack: the subclass closes the connection."""

    def stop_keepalive(self) -> None:
        timer = self.keepalive_timer
        if timer is not None:
            timer.cancel()
            self.keepalive_timer = None

    # outbound -------------------------------------------------------------------------
    def send_headers(self, st: H2Stream, headers: Headers, end: bool) -> None:
        try:
            self.h2.send_headers(st.sid, headers, end_stream=end)
        except (ProtocolError, StreamClosedError):
            st.ended_out = True
            return
        if end:
            st.ended_out = True
        self.flush()

    def send_data(self, st: H2Stream, data: bytes, end: bool) -> None:
        """Queue body (and maybe its end) on `st` and send what the windows allow."""
        if st.ended_out or st.closed:
            return
        if data:
            st.out.append(data)
            st.out_size += len(data)
            self.codec.pending_send_bytes.value += len(data)
        if end:
            st.end_pending = True
        self._send_stream(st)
        self.flush()
        if not st.write_blocked and st.out_size > self.stream_high:
            st.write_blocked = True
            st.on_write_paused()

    def send_trailers(self, st: H2Stream, trailers: Headers) -> None:
        """End `st` with trailers, once its body is sent."""
        if st.ended_out or st.closed:
            return
        st.trailers_pending = trailers
        st.end_pending = True
        self._send_stream(st)
        self.flush()

    def _send_stream(self, st: H2Stream) -> None:
        """Move `st`'s waiting body into h2 as far as the windows and the socket allow."""
        h2 = self.h2
        sid = st.sid
        out = st.out
        try:
            while out and not self.write_paused:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                chunk = out[0]
                size = min(window, h2.max_outbound_frame_size)
                if len(chunk) > size:
                    out[0] = chunk[size:]
                    chunk = chunk[:size]
                else:
                    out.pop(0)
                st.out_size -= len(chunk)
                self.codec.pending_send_bytes.value -= len(chunk)
                last = not out and st.end_pending and st.trailers_pending is None
                h2.send_data(sid, chunk, end_stream=last)
                if last:
                    st.ended_out = True
            if not out and st.end_pending and not st.ended_out:
                trailers = st.trailers_pending
                if trailers is not None:
                    h2.send_headers(sid, trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                st.ended_out = True
        except (ProtocolError, StreamClosedError, FlowControlError):
            # The stream went away meanwhile (reset): its body goes nowhere.
            out.clear()
            self.codec.pending_send_bytes.value -= st.out_size
            st.out_size = 0
            st.ended_out = True
        if out:
            self.waiting[sid] = st
        else:
            self.waiting.pop(sid, None)
        if st.write_blocked and st.out_size <= self.stream_low:
            st.write_blocked = False
            st.on_write_resumed()

    def window_updated(self, stream_id: int) -> None:
        """A WINDOW_UPDATE came: send what waited for it (one stream's, or any: stream 0)."""
        if stream_id:
            st = self.streams.get(stream_id)
            if st is not None:
                self._send_stream(st)
        else:
            self.send_waiting()

    def send_waiting(self) -> None:
        """Windows opened (or the socket drained): send the streams' waiting body."""
        for st in list(self.waiting.values()):
            if self.write_paused:
                break
            self._send_stream(st)

    def reset_stream(self, st: H2Stream, code: int = ErrorCodes.CANCEL) -> None:
        if not st.closed:
            st.closed = True
            st.ended_out = True
            self.waiting.pop(st.sid, None)
            try:
                self.h2.reset_stream(st.sid, code)
            except (ProtocolError, StreamClosedError):
                pass
            else:
                self.codec.tx_reset.value += 1
            self.flush()
        self.forget(st)

    def add_stream(self, st: H2Stream) -> None:
        self.streams[st.sid] = st
        self.codec.streams_active.value += 1

    def forget(self, st: H2Stream) -> None:
        if st.conn_held and not self.closed:
            self.release_held(st)
        st.closed = True
        st.out.clear()
        if st.out_size:
            self.codec.pending_send_bytes.value -= st.out_size
            st.out_size = 0
        self.waiting.pop(st.sid, None)
        if self.streams.pop(st.sid, None) is not None:
            self.codec.streams_active.value -= 1
        # h2 drops a closed stream when it next counts its open ones, a scan of all it
        # holds; dropped now (as h2 drops it), that count stays short.
        h2 = self.h2
        gone = h2.streams.get(st.sid)
        if gone is not None and gone.closed:
            del h2.streams[st.sid]
            h2._closed_streams[st.sid] = gone.closed_by

    def forget_all(self) -> list[H2Stream]:
        """The connection went: every stream is dropped (and returned)."""
        streams = list(self.streams.values())
        for st in streams:
            self.forget(st)
        self.waiting.clear()
        return streams

    # inbound --------------------------------------------------------------------------
    def received(self, st: H2Stream | None, flow_controlled: int) -> None:
        """`flow_controlled` bytes of DATA arrived (for `st`, or a stream gone already)."""
        if st is None:
            self.conn_unacked += flow_controlled
            return
        st.unacked += flow_controlled
        if st.reasons:
            st.conn_held += flow_controlled
        else:
            self.conn_unacked += flow_controlled

    def release_held(self, st: H2Stream) -> None:
        """`st` resumed or went: the connection window its paused bytes took comes back."""
        held = st.conn_held
        if held:
            st.conn_held = 0
            self.conn_unacked += held
            if self.conn_unacked >= self.settings.initial_connection_window_size // 2:
                self.h2.increment_flow_control_window(self.conn_unacked)
                self.conn_unacked = 0
                self.flush()

    def ack_stream(self, st: H2Stream) -> None:
        """Hand `st`'s consumed bytes back to the peer as stream window (it resumed)."""
        self.release_held(st)
        n = st.unacked
        st.unacked = 0
        try:
            self.h2.increment_flow_control_window(n, st.sid)
        except (ProtocolError, StreamClosedError):
            return
        self.flush()

    def ack_after_read(self, touched: Iterable[H2Stream]) -> None:
        """After a read's events: hand back connection window, and the window of streams
        whose consumer is not paused once half of it is used (fewer WINDOW_UPDATEs)."""
        half = self.settings.initial_stream_window_size // 2
        for st in touched:
            if st.unacked >= half and not st.reasons and not st.closed:
                n = st.unacked
                st.unacked = 0
                with contextlib.suppress(ProtocolError, StreamClosedError):
                    self.h2.increment_flow_control_window(n, st.sid)
        if self.conn_unacked >= self.settings.initial_connection_window_size // 2:
            self.h2.increment_flow_control_window(self.conn_unacked)
            self.conn_unacked = 0

    def goaway(self, last_stream_id: int, code: int = ErrorCodes.NO_ERROR) -> None:
        """Send GOAWAY without closing h2's state machine: streams up to `last_stream_id` go
        on (h2 refuses every frame after a GOAWAY it sends itself)."""
        self.flush_now()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        if self.transport is not None and not self.closed:
            data = frame.serialize()
            self.codec.goaway_sent.value += 1
            self.tx_bytes.value += len(data)
            self.transport.write(data)


def _keep_open_after_goaway(conn: H2Connection) -> None:
    """Let streams finish after the peer's GOAWAY, as RFC 9113 §6.8 says they may.

    h2 moves its connection state machine to CLOSED on receiving a GOAWAY and then rejects
    every later frame, so a server's graceful shutdown (gRPC's GOAWAY, then the answers to the
    calls in flight) would lose those answers. The frame handler for GOAWAY is wrapped to put
    the state back once the event is made; the endpoint stops opening streams itself."""
    dispatch = conn._frame_dispatch_table
    receive = dispatch[GoAwayFrame]
    machine = conn.state_machine

    def receive_goaway(frame: GoAwayFrame) -> Any:
        before = machine.state
        result = receive(frame)
        if before is not ConnectionState.CLOSED:
            machine.state = before
        return result

    dispatch[GoAwayFrame] = receive_goaway


def _unformatted(frame: object) -> str:
    return ""


# h2 formats every frame it receives for a trace log line (`repr(frame)`, evaluated before
# its logger, a no-op, is called): a twentieth of the proxy's time per gRPC call. The name
# `repr` in h2.connection, used there only for that line, formats nothing.
h2.connection.repr = _unformatted  # type: ignore[attr-defined]


class _Connection(H2Connection):
    """h2's connection, except that a stream over our SETTINGS_MAX_CONCURRENT_STREAMS is not
    a connection error: the server side refuses it (RST_STREAM REFUSED_STREAM), as Envoy
    does and RFC 9113 §5.1.2 allows; its headers are decoded all the same (HPACK)."""

    @property
    def open_inbound_streams(self) -> int:
        super().open_inbound_streams  # noqa: B018 (h2 drops closed streams as it counts)
        return 0

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        # Received blocks are checked by fields.check_block, not h2's generator pipeline.
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = fields.Stream
        return stream


def is_messaging_error(exc: BaseException) -> bool:
    """Whether h2 raised `exc` validating a header list (RFC 9113 §8.2, §8.3): Envoy's
    `rx_messaging_error`, as against a framing or state error."""
    if isinstance(exc, fields.FieldError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("h2", "utilities.py")):
            return True
        tb = tb.tb_next
    return False


def _stream_errors_stay_stream_errors(endpoint: H2Endpoint) -> None:
    """Wrap h2's DATA handler: a body that disagrees with its content-length is malformed
    (RFC 9113 §8.1.1), a stream error of type PROTOCOL_ERROR, as Envoy answers it; h2 would
    end the connection. The stream is reset and reported as reset (a `StreamReset` event),
    and the bytes it carried go back to the connection window."""
    conn = endpoint.h2
    dispatch = conn._frame_dispatch_table
    receive_data: Callable[[DataFrame], tuple[list[Any], list[Event]]] = dispatch[DataFrame]

    def on_data(frame: DataFrame) -> tuple[list[Any], list[Event]]:
        try:
            return receive_data(frame)
        except InvalidBodyLengthError:
            conn.reset_stream(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
            endpoint.codec.tx_reset.value += 1
            endpoint.codec.rx_messaging_error.value += 1
            endpoint.conn_unacked += frame.flow_controlled_length
            event = StreamReset(
                stream_id=frame.stream_id, error_code=ErrorCodes.PROTOCOL_ERROR, remote_reset=False
            )
            return [], [event]

    dispatch[DataFrame] = on_data
