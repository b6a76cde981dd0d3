"""One HTTP/1.1 connection to one upstream host.

The connection writes a request, decodes the response into calls on the current
`UpstreamStream` (the forwarder's per-request object), and tells its pool whether it can be
reused: only if the response said keep-alive, its framing was explicit, and the request was
fully written. Socket errors and resets become `UpstreamError`s here, at the boundary.

Invariant: a connection goes back to its pool only after the read that ended its response was
parsed to the end. A byte after the response (an extra response, garbage, the start of one
split over reads) or any byte while no request is outstanding breaks the connection: it is
closed and those bytes reach nobody.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import TYPE_CHECKING, Protocol, cast

from podproxy.errors import (
    ProtocolError,
    UnexpectedUpgrade,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamUnexpectedUpgrade,
)
from podproxy.http.flow import PEER_WRITE_BLOCKED, FlowControl
from podproxy.http.http1 import codec
from podproxy.http.stream import ResponseHead

if TYPE_CHECKING:
    from podproxy.http.http1.pool import HostPool


class UpstreamStream(Protocol):
    """The request side that owns a connection while its exchange runs."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_upstream_error(self, err: UpstreamError) -> None: ...
    def on_upstream_write_paused(self) -> None: ...
    def on_upstream_write_resumed(self) -> None: ...


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


# The members as module constants, for the hot path: `ConnState.IDLE` goes through the enum
# metaclass's attribute hook, which the interpreter cannot specialise (~100 ns a lookup, seven
# lookups a request); a global is one cached load.
CONN_CONNECTING = ConnState.CONNECTING
CONN_IDLE = ConnState.IDLE
CONN_BUSY = ConnState.BUSY
CONN_CLOSED = ConnState.CLOSED


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 client connection owned by a `HostPool`."""

    # What an HTTP/2 stream sends as its request's trailers; HTTP/1 sends none (Envoy's
    # HTTP/1 codec drops them without enable_trailers), so the router never sets it here.
    request_trailers: list[tuple[bytes, bytes]] | None = None

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.state = CONN_CONNECTING
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.decoder = codec.ResponseDecoder(
            self, pool.max_response_headers_bytes, pool.max_response_headers_count
        )
        # 1xx responses are not passed on (the decoder's on_informational stays unset): Envoy
        # answers 100-continue itself (proxy_100_continue false) and drops the others.
        self.stream: UpstreamStream | None = None
        # Set when a response ended inside `data_received`: whether to reuse the connection,
        # decided there once the whole read was parsed.
        self.ended_reusable: bool | None = None
        self.request_done = False
        self.requests_served = 0
        self.idle_since = 0.0
        self.opened = 0.0
        self.close_after = False
        self.write_blocked = False  # between pause_writing and resume_writing

    # asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.flow = FlowControl(transport, self.pool.buffer_limit)
        self.opened = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.pool.stats.upstream_cx_rx_bytes_total.value += len(data)
        if self.stream is None:
            # Bytes while idle in the pool: the peer is confused; never reuse the connection.
            self.pool.stats.upstream_cx_protocol_error.value += 1
            self.close()
            return
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            if isinstance(exc, codec.SwitchingProtocols) and self._switch(exc):
                return
            self.pool.stats.upstream_cx_protocol_error.value += 1
            self.ended_reusable = None  # bytes after the response: broken, never reused
            if isinstance(exc, UnexpectedUpgrade):
                self._fail(UpstreamUnexpectedUpgrade(str(exc)))
            else:
                self._fail(UpstreamProtocolError(str(exc)))
            return
        reusable = self.ended_reusable
        if reusable is not None:
            self.ended_reusable = None
            self.pool.release(self, reusable)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is CONN_CLOSED:
            return
        prev = self.state
        self.state = CONN_CLOSED
        if self.flow is not None:
            self.flow.closed = True
        stream = self.stream
        if stream is not None:
            if self.decoder.eof():
                # A close-delimited response just ended (on_response_end ran): it is complete.
                self.ended_reusable = None
            else:
                self.stream = None
                self.pool.stats.upstream_cx_destroy_with_active_rq.value += 1
                stream.on_upstream_error(UpstreamResetError("upstream connection closed"))
        self.pool.on_connection_closed(self, prev)
        self.decoder.close()

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.stream is not None:
            self.stream.on_upstream_write_paused()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.stream is not None:
            self.stream.on_upstream_write_resumed()

    # driving a request ---------------------------------------------------------------
    def attach(self, stream: UpstreamStream, no_body_response: bool) -> None:
        self.stream = stream
        self.state = CONN_BUSY
        self.request_done = False
        self.decoder.expect_response(no_body_response)
        if self.write_blocked:
            # The head, written before the stream took over (Forwarder.on_request_head),
            # filled the buffer: the stream must hold its client's body from the start.
            stream.on_upstream_write_paused()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and self.state is not CONN_CLOSED:
            self.pool.stats.upstream_cx_tx_bytes_total.value += len(data)
            transport.write(data)

    def detach(self) -> None:
        """The stream gives up the connection mid-exchange (reset, timeout): close it."""
        self.stream = None
        self.close()

    # codec.ResponseSink --------------------------------------------------------------
    def on_response_head(self, head: ResponseHead) -> None:
        self.close_after = not head.keep_alive
        if self.stream is not None:
            self.stream.on_response_head(head)

    def on_response_body(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.on_response_body(data)

    def on_response_end(self) -> None:
        stream = self.stream
        self.stream = None
        self.requests_served += 1
        flow = self.flow
        if flow is not None and flow.reasons & PEER_WRITE_BLOCKED:
            # A slow client paused our reading for the response that just ended; the next
            # exchange on this connection has its own client, so go back to the pool reading.
            flow.resume_reading(PEER_WRITE_BLOCKED)
        # Released by data_received once the rest of this read is parsed (see the module doc);
        # a close-delimited response ends in connection_lost, where the connection is gone.
        self.ended_reusable = not self.close_after and self.request_done and self.state is CONN_BUSY
        if stream is not None:
            stream.on_response_end()

    # -----------------------------------------------------------------------------
    def _switch(self, exc: codec.SwitchingProtocols) -> bool:
        """A 101: the stream takes the connection over as a tunnel if its request asked for
        that upgrade (the router's `on_upgrade`, which streams without one do not have);
        the connection then never goes back to its pool. False: an unexpected upgrade."""
        accept = getattr(self.stream, "on_upgrade", None)
        if accept is None or not accept(self, exc.head, exc.tail):
            return False
        self.stream = None
        return True

    def _fail(self, err: UpstreamError) -> None:
        stream = self.stream
        self.stream = None
        self.close()
        if stream is not None:
            stream.on_upstream_error(err)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def __repr__(self) -> str:
        key, state = self.pool.host.key, self.state.value
        return f"<UpstreamConnection {key} {state} served={self.requests_served}>"
