"""Request mirroring: a copy of a routed request sent to another cluster, fire and forget.

Envoy's ShadowWriterImpl and the router's streaming shadows (router.cc, shadow_writer_impl.cc):
the copy carries the head the real request went up with (authority `-shadow`-suffixed, the
policy's header mutations, then `x-envoy-internal: true` and the node's address appended to
x-forwarded-for, as Envoy's async client adds them), and its body is streamed as it arrives.
Its response is read and dropped. Invariants: a `ShadowStream` never touches the downstream
exchange (nothing it meets can delay, fail or change the real response); it lives at most until
the route timeout after its request ended, holds at most `limit` unsent bytes (else it is
abandoned: `retry_or_shadow_abandoned`), and is cancelled if the real stream ends before the
request body did (Envoy's router cancels its shadow streams in onDestroy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from podproxy.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError
from podproxy.http.http1 import codec
from podproxy.http.stream import Exchange, ResponseHead
from podproxy.router.routes import MirrorPolicy

if TYPE_CHECKING:
    from podproxy.http.http1.pool import HostPool
    from podproxy.http.http1.upstream import UpstreamConnection
    from podproxy.upstream.cluster import Cluster
    from podproxy.upstream.host import Host

log = logging.getLogger(__name__)

# How often a shadow whose request body is still arriving checks that the real stream is
# alive (a stream that ended early leaves its shadow's request unfinished: cancel it).
WATCH_INTERVAL = 1.0
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def shadow_head(head: bytes, policy: MirrorPolicy, node_address: bytes) -> bytes:
    """The mirror's request head from the head sent upstream (`METHOD target HTTP/1.1`, then
    `host: <authority>` as the first field, as Forwarder.request_head builds it)."""
    first = head.index(b"\r\n") + 2
    host_end = head.index(b"\r\n", first) + 2
    authority = head[first + 6 : host_end - 2]  # after "host: "
    fields = head[host_end:-2]  # without the blank line
    headers: list[tuple[bytes, bytes]] = []
    framing: list[tuple[bytes, bytes]] = []
    for line in fields.split(b"\r\n")[:-1]:
        k, _, v = line.partition(b": ")
        if k in _FRAMING:
            framing.append((k, v))  # the body's framing is the real request's: kept whole
        else:
            headers.append((k, v))
    if policy.mutations is not None:
        policy.mutations.apply(headers)
    # AsyncStreamImpl::sendHeaders (send_internal, send_xff): the copy is Envoy's own request.
    out: list[tuple[bytes, bytes]] = []
    xff: bytes | None = None
    for k, v in headers:
        if k == b"x-forwarded-for":
            xff = v if xff is None else xff + b"," + v
        elif k not in _FRAMING and k != b"x-envoy-internal":
            out.append((k, v))
    out.append((b"x-envoy-internal", b"true"))
    out.append((b"x-forwarded-for", xff + b"," + node_address if xff else node_address))
    lines = b"".join(b"%s: %s\r\n" % h for h in (*out, *framing))
    host = b"host: " + policy.authority(authority) + b"\r\n"
    return head[:first] + host + lines + b"\r\n"


class ShadowStream:
    """One mirrored request: a pool waiter and an upstream stream of the mirror cluster.

    Counts on the mirror cluster what Envoy's async client router counts there (requests,
    response codes, timeouts, resets, pending requests and connections through the pool)."""

    __slots__ = (
        "attached",
        "body_chunked",
        "cluster",
        "conn",
        "done",
        "ex",
        "head",
        "host",
        "limit",
        "loop",
        "on_abandon",
        "pending",
        "pending_size",
        "pool",
        "request_ended",
        "sent_at",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        ex: Exchange,
        cluster: Cluster,
        host: Host,
        pool: HostPool,
        head: bytes,
        body_chunked: bool,
        *,
        timeout: float | None,
        limit: int,
        loop: asyncio.AbstractEventLoop,
        on_abandon: Cluster,
    ) -> None:
        self.ex = ex
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.head = head
        # A multiplexed (HTTP/2) pool takes the body as it is, without HTTP/1 chunks.
        self.body_chunked = body_chunked and not getattr(pool, "multiplexed", False)
        self.timeout = timeout
        self.limit = limit
        self.loop = loop
        self.on_abandon = on_abandon  # the primary cluster: Envoy counts the give-up there
        self.conn: UpstreamConnection | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.request_ended = False
        self.done = False
        self.attached = False  # on a connection: counted in upstream_rq_total and _active
        self.sent_at = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def start(self, state: object) -> None:
        """Ask the pool for a connection; `state` is what the exchange holds while its
        request is in flight (the watch compares it to tell the stream ended)."""
        self.timer = self.loop.call_later(WATCH_INTERVAL, self._watch, state)
        conn = self.pool.acquire(self)
        if conn is not None:
            self.on_pool_ready(conn)

    # request direction -------------------------------------------------------------------
    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.body_chunked:
            data = codec.encode_chunk(data)
        conn = self.conn
        if conn is None:
            self.pending_size += len(data)
            if self.pending_size > self.limit:
                self._abandon()
                return
            self.pending.append(data)
            return
        transport = conn.transport
        if transport is not None and transport.get_write_buffer_size() + len(data) > self.limit:
            # A mirror that reads slower than the client sends: never hold the client back
            # (Envoy would, through watermarks); give the copy up instead.
            self._abandon()
            return
        conn.write(data)

    def end_request(self) -> None:
        if self.done:
            return
        self.request_ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.timeout is not None:
            # The async client's timeout is the route's, from the end of the request.
            self.timer = self.loop.call_later(self.timeout, self.on_timeout)
        conn = self.conn
        if conn is not None:
            if self.body_chunked:
                conn.write(codec.LAST_CHUNK)
            conn.request_done = True

    def _watch(self, state: object) -> None:
        self.timer = None
        if self.done or self.request_ended:
            return
        if self.ex.state is not state or self.ex.response_complete:
            self.cancel()  # the real stream ended with the request unfinished
            return
        self.timer = self.loop.call_later(WATCH_INTERVAL, self._watch, state)

    # PoolWaiter --------------------------------------------------------------------------
    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        if self.done:
            self.pool.release(conn, True)
            return
        self.conn = conn
        # Envoy counts a request on its cluster once a connection takes it.
        self.attached = True
        st = self.cluster.info.stats
        st.upstream_rq_total.value += 1
        st.upstream_rq_active.value += 1
        hst = self.host.stats
        hst.rq_total += 1
        hst.rq_active += 1
        conn.attach(self, self.head.startswith(b"HEAD "))
        data = [self.head, *self.pending]
        self.pending = []
        self.pending_size = 0
        if self.request_ended:
            if self.body_chunked:
                data.append(codec.LAST_CHUNK)
            conn.request_done = True
        conn.write(b"".join(data))

    def on_pool_failure(self, err: UpstreamError) -> None:
        if self.done:
            return
        self._finish()
        self.host.stats.rq_error += 1
        self._charge(err.status)
        log.debug("mirror to %s failed: %s", self.cluster.info.name, err)

    # UpstreamStream: the response is read and dropped --------------------------------------
    def on_response_head(self, head: ResponseHead) -> None:
        if self.done:
            return
        status = head.status
        self._code(status)
        if status >= 500:
            self.host.stats.rq_error += 1
        else:
            self.host.stats.rq_success += 1

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self) -> None:
        if self.done:
            return
        self.conn = None  # back in its pool
        st = self.cluster.info.stats
        st.upstream_rq_completed.value += 1
        st.upstream_rq_time.record((time.monotonic() - self.sent_at) * 1000.0)
        self._finish()

    def on_upstream_error(self, err: UpstreamError) -> None:
        if self.done:
            return
        self.conn = None
        if not isinstance(err, (UpstreamConnectError, UpstreamProtocolError)):
            self.cluster.info.stats.upstream_rq_rx_reset.value += 1
        self.host.stats.rq_error += 1
        self._finish()
        self._charge(err.status)

    def on_upstream_write_paused(self) -> None:
        pass  # the send_body check bounds what waits in the transport

    def on_upstream_write_resumed(self) -> None:
        pass

    # endings -----------------------------------------------------------------------------
    def on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        self.cluster.info.stats.upstream_rq_timeout.value += 1
        self.host.stats.rq_timeout += 1
        self._let_go()
        self._charge(504)

    def cancel(self) -> None:
        """The real stream ended before its request did: reset the copy."""
        if self.done:
            return
        st = self.cluster.info.stats
        st.upstream_rq_tx_reset.value += 1
        st.upstream_rq_cancelled.value += 1
        self._let_go()

    def _code(self, status: int) -> None:
        info = self.cluster.info
        info.code_counter(status).value += 1
        st = info.stats
        if status < 300:
            st.upstream_rq_2xx.value += 1
        elif status < 400:
            st.upstream_rq_3xx.value += 1
        elif status < 500:
            st.upstream_rq_4xx.value += 1
        else:
            st.upstream_rq_5xx.value += 1

    def _charge(self, status: int) -> None:
        """A copy that ended without a response: Envoy's router charges the cluster the code
        of the local reply it would have sent (chargeUpstreamCode)."""
        self._code(status)
        self.cluster.info.stats.upstream_rq_completed.value += 1

    def _abandon(self) -> None:
        self.on_abandon.info.stats.retry_or_shadow_abandoned.value += 1
        self.cancel()

    def _let_go(self) -> None:
        conn = self.conn
        self._finish()
        if conn is not None:
            conn.detach()
        else:
            self.pool.cancel(self)

    def _finish(self) -> None:
        self.done = True
        self.conn = None
        self.pending = []
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.attached:
            self.attached = False
            self.cluster.info.stats.upstream_rq_active.value -= 1
            self.host.stats.rq_active -= 1


class MirroredRequest:
    """What a mirrored exchange holds as its state (`Exchange.state`): the real
    `UpstreamRequest` and its shadows. Body and end go to both; everything else is the real
    request's. Only mirrored requests pay for it."""

    __slots__ = ("real", "shadows")

    def __init__(self, real: Any, shadows: list[ShadowStream]) -> None:
        self.real = real
        self.shadows = shadows

    @property
    def conn(self) -> Any:
        return self.real.conn

    def send_body(self, data: bytes) -> None:
        self.real.send_body(data)
        for s in self.shadows:
            s.send_body(data)

    def end_request(self) -> None:
        self.real.end_request()
        for s in self.shadows:
            s.end_request()

    def reset(self) -> None:
        self.real.reset()
        for s in self.shadows:
            if not s.request_ended:
                s.cancel()
