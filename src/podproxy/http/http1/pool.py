"""Per-host HTTP/1.1 connection pool: idle, busy and pending, with a connect timeout.

The pool knows nothing of DNS or clusters beyond its host and stats. `acquire()` is
synchronous: it returns an idle connection or queues the request and starts one connect per
queued request (HTTP/1.1 carries one request per connection at a time). A connection that
becomes ready goes to the oldest pending request, else to the idle stack (most recent first, so
warm connections are reused and cold ones expire). `drain()` is what happens to a host that left
its cluster: idle connections close now, busy ones close after their response.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from podproxy.errors import UpstreamConnectError, UpstreamError
from podproxy.http.connect import connect
from podproxy.http.http1.codec import DEFAULT_MAX_RESPONSE_HEADERS_BYTES
from podproxy.http.http1.upstream import (
    CONN_BUSY,
    CONN_CLOSED,
    CONN_IDLE,
    ConnState,
    UpstreamConnection,
)
from podproxy.http.stream import DEFAULT_MAX_HEADERS_COUNT

if TYPE_CHECKING:
    from podproxy.tls import UpstreamTls
    from podproxy.upstream.cluster import ClusterStats
    from podproxy.upstream.host import Host


class PoolWaiter(Protocol):
    """A request waiting for a connection."""

    def on_pool_ready(self, conn: UpstreamConnection) -> None: ...
    def on_pool_failure(self, err: UpstreamError) -> None: ...


class HostPool:
    """Connections to one host."""

    # One request per connection at a time (the HTTP/2 pool is multiplexed): the router
    # frames a body of unknown length in HTTP/1 chunks for this pool.
    multiplexed = False

    def __init__(
        self,
        host: Host,
        stats: ClusterStats,
        *,
        connect_timeout: float,
        idle_timeout: float | None = 3600.0,
        max_connection_duration: float | None = None,
        buffer_limit: int | None = None,
        max_response_headers_bytes: int = DEFAULT_MAX_RESPONSE_HEADERS_BYTES,
        max_response_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
        tls: UpstreamTls | None = None,
    ) -> None:
        self.host = host
        # The cluster's transport_socket (UpstreamTlsContext): TLS to the host, or None.
        self.tls = tls
        # The cluster's common_http_protocol_options max_response_headers_kb and
        # max_headers_count: a response over them is a protocol error (502, as Envoy).
        self.max_response_headers_bytes = max_response_headers_bytes
        self.max_response_headers_count = max_response_headers_count
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connection_duration = max_connection_duration
        self.buffer_limit = buffer_limit
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.pending: deque[PoolWaiter] = deque()
        self.connecting = 0
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    # the synchronous steps -------------------------------------------------------------
    def acquire(self, waiter: PoolWaiter) -> UpstreamConnection | None:
        """An idle connection now, or None: `waiter` is then called back when one is ready."""
        conn = self.take_idle()
        if conn is None:
            self.enqueue(waiter)
        return conn

    def enqueue(self, waiter: PoolWaiter) -> None:
        """Queue `waiter` for the next connection that is ready, connecting one if needed."""
        self.pending.append(waiter)
        self.stats.upstream_rq_pending_total.value += 1
        self.stats.upstream_rq_pending_active.value += 1
        if self.connecting < len(self.pending):
            self._start_connect()

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection, now busy, or None (nothing is queued or started)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.state is not CONN_IDLE:
                continue
            if (
                self.idle_timeout is not None
                and time.monotonic() - conn.idle_since > self.idle_timeout
            ):
                conn.close()
                continue
            conn.state = CONN_BUSY
            self.busy.add(conn)
            return conn
        return None

    def cancel(self, waiter: PoolWaiter) -> None:
        try:
            self.pending.remove(waiter)
        except ValueError:
            return
        self.stats.upstream_rq_pending_active.value -= 1

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """A request finished on `conn`."""
        self.busy.discard(conn)
        limit = self.max_connection_duration
        if limit is not None and time.monotonic() - conn.opened >= limit:
            reusable = False  # common_http_protocol_options.max_connection_duration
        if not reusable or self.draining or conn.state is CONN_CLOSED:
            conn.state = CONN_IDLE if conn.state is not CONN_CLOSED else conn.state
            conn.close()
            return
        self._give(conn)

    def _give(self, conn: UpstreamConnection) -> None:
        if self.pending:
            waiter = self.pending.popleft()
            self.stats.upstream_rq_pending_active.value -= 1
            conn.state = CONN_BUSY
            self.busy.add(conn)
            waiter.on_pool_ready(conn)
            return
        conn.state = CONN_IDLE
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def on_connection_closed(self, conn: UpstreamConnection, prev: ConnState) -> None:
        self.busy.discard(conn)
        if prev is CONN_IDLE:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        self.stats.upstream_cx_active.value -= 1
        self.host.stats.cx_active -= 1
        self.stats.upstream_cx_destroy.value += 1
        self.stats.upstream_cx_length_ms.record((time.monotonic() - conn.opened) * 1000.0)

    def drain(self) -> None:
        """Stop reuse: close idle connections now, busy ones when their response ends."""
        self.draining = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()

    def close(self) -> None:
        self.drain()
        for conn in list(self.busy):
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    @property
    def is_idle(self) -> bool:
        return not self.busy and not self.pending and not self.connecting

    @property
    def is_empty(self) -> bool:
        """No connection, none being made, nothing waiting: the pool can be dropped."""
        return not self.idle and self.is_idle

    # connecting ------------------------------------------------------------------------
    def _start_connect(self) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        self.stats.upstream_cx_http1_total.value += 1
        try:
            conn, err = await connect(
                self.host,
                self.stats,
                lambda: UpstreamConnection(self),
                self.connect_timeout,
                self.tls,
            )
        finally:
            self.connecting -= 1
        if conn is None:
            if self.pending:
                st = self.stats
                waiter = self.pending.popleft()
                st.upstream_rq_pending_active.value -= 1
                st.upstream_rq_pending_failure_eject.value += 1
                waiter.on_pool_failure(err or UpstreamConnectError("connect failed"))
            return
        if self.draining and not self.pending:
            conn.state = CONN_IDLE
            conn.close()
            return
        self._give(conn)

    def __repr__(self) -> str:
        return (
            f"<HostPool {self.host.key} idle={len(self.idle)} busy={len(self.busy)} "
            f"pending={len(self.pending)} connecting={self.connecting}>"
        )
