"""Per-host HTTP/2 connection pool: streams multiplexed over as few connections as they fit.

Envoy's current HTTP/2 pool, in its synchronous shape: a request gets a stream on a ready
connection with room (room = the least of our `max_concurrent_streams`, the pod's
SETTINGS_MAX_CONCURRENT_STREAMS, and what `max_requests_per_connection` leaves), else it waits
while a connection is made; a new connection is started when the waiting requests exceed
what the connections being made will take. A connection is ready once the pod's SETTINGS came.
A connection that used up `max_requests_per_connection`, outlived `max_connection_duration`
or got a GOAWAY takes no new streams and closes when its last stream ends; `drain()` (the
host left its cluster) does that to all of them. Load balancing stays per request: the router
picks the host for each request, so one client connection's calls spread over all pods.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from podproxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamRefusedStream,
    UpstreamResetError,
)
from podproxy.http.connect import connect
from podproxy.http.http2.codec import (
    DEFAULT_SETTINGS,
    Http2CodecStats,
    Http2Settings,
    make_codec_stats,
)
from podproxy.http.http2.upstream import ClientStream, H2UpstreamConnection
from podproxy.stats import Store

if TYPE_CHECKING:
    from podproxy.tls import UpstreamTls
    from podproxy.upstream.cluster import ClusterStats
    from podproxy.upstream.host import Host

# max_requests_per_connection unset: Envoy's 2^29 streams per connection.
UNLIMITED_REQUESTS = 2**29


class StreamWaiter(Protocol):
    def on_pool_ready(self, conn: Any) -> None: ...
    def on_pool_failure(self, err: UpstreamError) -> None: ...


class H2HostPool:
    """HTTP/2 connections to one host."""

    # The router sends the body as it comes (no HTTP/1 chunk framing) to a multiplexed pool.
    multiplexed = True

    def __init__(
        self,
        host: Host,
        stats: ClusterStats,
        *,
        connect_timeout: float,
        settings: Http2Settings = DEFAULT_SETTINGS,
        idle_timeout: float | None = 3600.0,
        max_connection_duration: float | None = None,
        max_requests_per_connection: int | None = None,
        buffer_limit: int | None = None,
        scheme: bytes = b"http",
        tls: UpstreamTls | None = None,
        codec_stats: Http2CodecStats | None = None,
    ) -> None:
        self.host = host
        self.stats = stats
        # `cluster.<name>.http2.*` (a private store when a test builds a pool alone).
        self.codec_stats = codec_stats or make_codec_stats(Store())
        self.connect_timeout = connect_timeout
        self.settings = settings
        self.max_streams = settings.max_concurrent_streams
        self.idle_timeout = idle_timeout
        self.max_connection_duration = max_connection_duration
        self.max_requests_per_connection = max_requests_per_connection or UNLIMITED_REQUESTS
        self.buffer_limit = buffer_limit
        self.scheme = scheme
        self.tls = tls
        self.connections: list[H2UpstreamConnection] = []
        self.pending: deque[StreamWaiter] = deque()
        self.connecting = 0
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    # the synchronous steps ------------------------------------------------------------
    def take_idle(self) -> ClientStream | None:
        """A new stream on a ready connection with room, or None."""
        now = time.monotonic()
        for conn in self.connections:
            if not conn.ready or conn.draining:
                continue
            if self._expired(conn, now):
                continue
            if conn.capacity > 0:
                return conn.new_stream()
        return None

    def _expired(self, conn: H2UpstreamConnection, now: float) -> bool:
        """Whether `conn` is past its idle timeout or its max duration (then it drains)."""
        limit = self.max_connection_duration
        idle = self.idle_timeout
        if (limit is not None and now - conn.opened >= limit) or (
            idle is not None
            and conn.idle_since is not None
            and not conn.streams
            and now - conn.idle_since > idle
        ):
            conn.draining = True
            self._close_if_done(conn)
            return True
        return False

    def acquire(self, waiter: StreamWaiter) -> ClientStream | None:
        stream = self.take_idle()
        if stream is None:
            self.enqueue(waiter)
        return stream

    def enqueue(self, waiter: StreamWaiter) -> None:
        self.pending.append(waiter)
        self.stats.upstream_rq_pending_total.value += 1
        self.stats.upstream_rq_pending_active.value += 1
        if len(self.pending) > self.connecting * self.max_streams:
            self._start_connect()

    def cancel(self, waiter: StreamWaiter) -> None:
        try:
            self.pending.remove(waiter)
        except ValueError:
            return
        self.stats.upstream_rq_pending_active.value -= 1

    def release(self, stream: Any, reusable: bool) -> None:
        """A stream handed out that its request no longer wants."""
        if isinstance(stream, ClientStream):
            stream.detach()

    # what connections tell the pool ----------------------------------------------------
    def connection_ready(self, conn: H2UpstreamConnection) -> None:
        """`conn` has the pod's SETTINGS (or a stream ended): give room to waiters."""
        pending = self.pending
        while pending and conn.capacity > 0:
            waiter = pending.popleft()
            self.stats.upstream_rq_pending_active.value -= 1
            waiter.on_pool_ready(conn.new_stream())
        if not pending:
            return
        if conn.h2.remote_settings.max_concurrent_streams == 0:
            # The pod takes no streams at all: another connection would hear the same, so
            # the waiters fail (and may try another host) and this one closes when idle.
            conn.draining = True
            self._close_if_done(conn)
            if not self.connecting:
                self._fail_pending(UpstreamRefusedStream("no streams allowed"))
            return
        if not self.connecting and not self.draining:
            self._start_connect()

    def stream_done(self, conn: H2UpstreamConnection) -> None:
        if not conn.streams and conn.pending_open == 0:
            conn.idle_since = time.monotonic()
        if self.pending and conn.ready:
            self.connection_ready(conn)
        self._close_if_done(conn)

    def connection_draining(self, conn: H2UpstreamConnection) -> None:
        self._close_if_done(conn)
        if self.pending and not self.connecting and not self.draining:
            self._start_connect()

    def _close_if_done(self, conn: H2UpstreamConnection) -> None:
        if (conn.draining or self.draining) and not conn.streams and conn.pending_open == 0:
            conn.close()

    def on_connection_closed(self, conn: H2UpstreamConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        st = self.stats
        st.upstream_cx_active.value -= 1
        self.host.stats.cx_active -= 1
        st.upstream_cx_destroy.value += 1
        st.upstream_cx_length_ms.record((time.monotonic() - conn.opened) * 1000.0)
        if not conn.ready:
            # Closed before the pod's SETTINGS: the waiters fail (and may try another host)
            # rather than reconnect here in a loop.
            if not self.connecting:
                self._fail_pending(UpstreamResetError("connection termination"))
            return
        if self.pending and not self.connecting and not self.draining:
            self._start_connect()

    def _fail_pending(self, err: UpstreamError) -> None:
        st = self.stats
        while self.pending:
            waiter = self.pending.popleft()
            st.upstream_rq_pending_active.value -= 1
            st.upstream_rq_pending_failure_eject.value += 1
            waiter.on_pool_failure(err)

    def drain(self) -> None:
        """The host left its cluster: no new streams; each connection closes when idle."""
        self.draining = True
        for conn in list(self.connections):
            conn.draining = True
            self._close_if_done(conn)

    def close(self) -> None:
        self.drain()
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    @property
    def is_idle(self) -> bool:
        return (
            not self.pending
            and not self.connecting
            and all(not c.streams and not c.pending_open for c in self.connections)
        )

    @property
    def is_empty(self) -> bool:
        """No connection, none being made, nothing waiting: the pool can be dropped."""
        return not self.connections and not self.pending and not self.connecting

    # connecting -----------------------------------------------------------------------
    def _start_connect(self) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        self.stats.upstream_cx_http2_total.value += 1
        try:
            conn, err = await connect(
                self.host,
                self.stats,
                lambda: H2UpstreamConnection(self, self.settings, self.scheme),
                self.connect_timeout,
                self.tls,
            )
        finally:
            self.connecting -= 1
        if conn is None:
            if not self.connecting:
                # Nothing else is being made for the waiters: each fails (and may try
                # another host, as after an HTTP/1 connect failure).
                self._fail_pending(err or UpstreamConnectError("connect failed"))
            return
        self.connections.append(conn)
        if self.draining and not self.pending:
            conn.draining = True
            conn.close()
            return
        if conn.ready:
            self.connection_ready(conn)

    def __repr__(self) -> str:
        streams = sum(len(c.streams) for c in self.connections)
        return (
            f"<H2HostPool {self.host.key} connections={len(self.connections)} "
            f"streams={streams} pending={len(self.pending)} connecting={self.connecting}>"
        )
