"""The terminal stream handler: route, pick a host, stream both bodies, reply as Envoy does.

Theory of operation: the downstream connection calls `Forwarder.on_request_head()` for each
request. The forwarder matches a route, answers locally when it must (404 no route, 503 no
cluster / no healthy upstream, direct responses) or builds the upstream request head with one
join and asks the host's pool for a connection. An `UpstreamRequest` then carries the exchange:
it streams the request body up (re-chunking when the client sent chunks), the response head
and body down, propagates back-pressure both ways, and runs the route timeout. Every upstream
failure maps to exactly one local reply and response flag (reference/envoy.md §4.1). No asyncio
task is created per request; only a new upstream connection costs one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podproxy.errors import UpstreamConnectError, UpstreamError, UpstreamResetError
from podproxy.http import codec
from podproxy.http.codec import HOP_BY_HOP, Headers, ResponseHead
from podproxy.http.downstream import Exchange
from podproxy.http.flow import HANDLER_HOLD, PEER_WRITE_BLOCKED
from podproxy.http.pool import HostPool
from podproxy.http.upstream import UpstreamConnection
from podproxy.router.routes import Route, RouteTable
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.host import Host

NO_HEALTHY_UPSTREAM = b"no healthy upstream"
UPSTREAM_TIMEOUT = b"upstream request timeout"
RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "

# Headers only a trusted (internal) peer may set; stripped from external requests
# (conn_manager_utility.cc, reference/envoy.md §4.4).
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
        b"x-envoy-internal",
        b"x-envoy-original-path",
    }
)

# Request headers the forwarder rewrites itself; dropped from the copy loop.
_REQ_HANDLED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Response headers the forwarder rewrites itself.
_RESP_HANDLED = HOP_BY_HOP | {b"content-length"}

# Request bodies up to this size are kept so a request that met a dead keep-alive
# connection, or a host that refused the connection, can be sent again.
REPLAY_LIMIT = 64 * 1024
# Hosts one request may try when connecting fails (nothing was sent, so any host may serve it).
MAX_HOST_ATTEMPTS = 3

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def _is_internal_address(addr: str) -> bool:
    """RFC 1918 / RFC 4193 / loopback, Envoy's test for an internal XFF address."""
    if addr.startswith(("10.", "192.168.", "127.")):
        return True
    if addr.startswith("172."):
        try:
            second = int(addr.split(".")[1])
        except (IndexError, ValueError):
            return False
        return 16 <= second <= 31
    return addr.lower().startswith(("fc", "fd")) or addr == "::1"


def new_request_id() -> bytes:
    """A random UUID4 as 36 ASCII bytes, cheaper than uuid.uuid4()."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


@dataclass(slots=True)
class ForwarderConfig:
    """HTTP connection manager settings the forwarder applies to every request."""

    server_name: bytes = b"podproxy"
    server_header_transformation: str = "OVERWRITE"
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    suppress_envoy_headers: bool = False
    scheme: bytes = b"http"


class Forwarder:
    """Envoy's router filter as a `StreamHandler`."""

    def __init__(
        self,
        routes: RouteTable,
        clusters: Mapping[str, Cluster],
        config: ForwarderConfig,
        stats: Any,
    ) -> None:
        self.routes = routes
        self.clusters = clusters
        self.config = config
        self.stats = stats

    # StreamHandler ---------------------------------------------------------------------
    def on_request_head(self, ex: Exchange) -> None:
        head = ex.head
        conn = ex.conn
        authority = head.get(b"host")
        if authority is None:
            # RFC 9112 §3.2: a 1.1 request without Host is a 400.
            conn.send_local_reply(ex, 400, b"missing host header", flags="DPE", close=True)
            return
        self.stats.rq_total.inc()
        route = self.routes.route(authority, head.target, head.headers)
        if route is None:
            self.stats.no_route.inc()
            conn.send_local_reply(ex, 404, b"", flags="NR")
            return
        if route.direct_status is not None:
            self.stats.rq_direct_response.inc()
            conn.send_local_reply(ex, route.direct_status, route.direct_body)
            return
        assert route.cluster is not None
        cluster = self.clusters.get(route.cluster)
        if cluster is None:
            self.stats.no_cluster.inc()
            conn.send_local_reply(ex, route.cluster_not_found_status, b"", flags="NC")
            return
        host = cluster.choose_host()
        if host is None:
            cluster.info.stats.upstream_cx_none_healthy.inc()
            conn.send_local_reply(ex, 503, NO_HEALTHY_UPSTREAM, flags="UH")
            return
        if head.get(b"expect") == b"100-continue":
            # Envoy answers 100-continue itself and strips Expect (proxy_100_continue false).
            conn.write(CONTINUE_100)
        ureq = UpstreamRequest(self, ex, route, cluster, host)
        ex.state = ureq
        ureq.start()

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        ureq = ex.state
        if ureq is not None:
            ureq.send_body(data)

    def on_request_end(self, ex: Exchange) -> None:
        ureq = ex.state
        if ureq is not None:
            ureq.end_request()

    def on_downstream_reset(self, ex: Exchange) -> None:
        ureq = ex.state
        if ureq is not None:
            ureq.reset()

    def on_downstream_write_paused(self, ex: Exchange) -> None:
        ureq = ex.state
        if ureq is not None and ureq.conn is not None and ureq.conn.flow is not None:
            ureq.conn.flow.pause_reading(PEER_WRITE_BLOCKED)

    def on_downstream_write_resumed(self, ex: Exchange) -> None:
        ureq = ex.state
        if ureq is not None and ureq.conn is not None and ureq.conn.flow is not None:
            ureq.conn.flow.resume_reading(PEER_WRITE_BLOCKED)

    # Building the upstream request -----------------------------------------------------
    def request_head(self, ex: Exchange, route: Route, host: Host) -> tuple[bytes, bool]:
        """The upstream request head bytes, and whether the body is sent chunked."""
        cfg = self.config
        head = ex.head
        target = head.target
        out: list[bytes] = []
        extra: list[bytes] = []
        authority = b""
        xff: bytes | None = None
        has_xfp = False
        request_id: bytes | None = None
        chunked = False
        content_length: bytes | None = None
        connection_tokens: set[bytes] | None = None
        for k, v in head.headers:
            if k in _REQ_HANDLED:
                if k == b"host":
                    authority = v
                elif k == b"content-length":
                    content_length = v
                elif k == b"transfer-encoding":
                    chunked = True
                elif k == b"connection":
                    toks = {t.strip().lower() for t in v.split(b",")}
                    toks -= {b"close", b"keep-alive", b""}
                    if toks:
                        connection_tokens = toks
                elif k == b"te" and v.strip().lower() == b"trailers":
                    extra.append(b"te: trailers\r\n")
                continue
            if k == b"x-forwarded-for":
                xff = v if xff is None else xff + b"," + v
                continue
            if k == b"x-forwarded-proto":
                has_xfp = True
            elif k == b"x-request-id":
                request_id = v
                continue
            elif k.startswith(b"x-envoy-") and k in INTERNAL_ONLY:
                continue
            out.append(k + b": " + v + b"\r\n")
        if connection_tokens:
            # RFC 9110 §7.6.1: fields named in Connection are hop-by-hop too.
            out = [line for line in out if line.split(b":", 1)[0] not in connection_tokens]

        internal = False
        if cfg.use_remote_address:
            remote = ex.conn.remote[0]
            internal = _is_internal_address(remote)
            if not cfg.skip_xff_append:
                xff = remote.encode() if xff is None else xff + b"," + remote.encode()
        elif xff is not None and b"," not in xff:
            internal = _is_internal_address(xff.strip().decode("latin-1"))
        if xff is not None:
            out.append(b"x-forwarded-for: " + xff + b"\r\n")
        if internal:
            out.append(b"x-envoy-internal: true\r\n")
        if not has_xfp or cfg.use_remote_address:
            if has_xfp:
                out = [line for line in out if not line.startswith(b"x-forwarded-proto:")]
            out.append(b"x-forwarded-proto: " + cfg.scheme + b"\r\n")
        if (
            request_id is None
            or (not internal and cfg.use_remote_address and not cfg.preserve_external_request_id)
        ) and (cfg.generate_request_id or request_id is not None):
            request_id = new_request_id()
        if request_id is not None:
            out.append(b"x-request-id: " + request_id + b"\r\n")
            ex.request_id = request_id
        if route.timeout is not None and not cfg.suppress_envoy_headers:
            out.append(b"x-envoy-expected-rq-timeout-ms: %d\r\n" % int(route.timeout * 1000))
        if route.prefix_rewrite is not None and route.prefix is not None:
            out.append(b"x-envoy-original-path: " + target + b"\r\n")
            target = route.prefix_rewrite + target[len(route.prefix) :]
        rewritten: bytes | None = None
        if route.host_rewrite is not None:
            rewritten = route.host_rewrite
        elif route.auto_host_rewrite and host.hostname:
            rewritten = host.hostname.encode()
        if rewritten is not None:
            # Envoy keeps the Host the client sent in x-envoy-original-host (checked against
            # Envoy 1.40 side by side).
            if not cfg.suppress_envoy_headers:
                out.append(b"x-envoy-original-host: " + authority + b"\r\n")
            authority = rewritten
        if chunked:
            extra.append(b"transfer-encoding: chunked\r\n")
        elif content_length is not None:
            extra.append(b"content-length: " + content_length + b"\r\n")
        return (
            b"".join(
                [
                    head.method,
                    b" ",
                    target,
                    b" HTTP/1.1\r\nhost: ",
                    authority,
                    b"\r\n",
                    *out,
                    *extra,
                    b"\r\n",
                ]
            ),
            chunked,
        )


class UpstreamRequest:
    """One exchange between a downstream request and an upstream host."""

    __slots__ = (
        "body_chunked",
        "cluster",
        "conn",
        "done",
        "ex",
        "fwd",
        "head_bytes",
        "held_head",
        "host",
        "pending_body",
        "pool",
        "replay",
        "replay_size",
        "request_ended",
        "response_chunked",
        "response_head",
        "retried",
        "route",
        "sent_at",
        "timer",
        "tried",
    )

    def __init__(
        self, fwd: Forwarder, ex: Exchange, route: Route, cluster: Cluster, host: Host
    ) -> None:
        self.fwd = fwd
        self.ex = ex
        self.route = route
        self.cluster = cluster
        self.host = host
        self.pool: HostPool = cluster.pool_for(host)
        self.conn: UpstreamConnection | None = None
        self.head_bytes, self.body_chunked = fwd.request_head(ex, route, host)
        self.pending_body: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.request_ended = False
        self.response_head: ResponseHead | None = None
        self.response_chunked = False
        self.held_head: bytes | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = 0.0
        self.done = False
        self.retried = False
        self.tried: tuple[Host, ...] = ()
        ex.upstream_host = host.key

    # request direction -----------------------------------------------------------------
    def start(self) -> None:
        st = self.cluster.info.stats
        st.upstream_rq_total.inc()
        st.upstream_rq_active.inc()
        self.host.stats.rq_total += 1
        self.host.stats.rq_active += 1
        self.sent_at = time.monotonic()
        conn = self.pool.acquire(self)
        if conn is not None:
            self.on_pool_ready(conn)
        elif self.ex.conn.flow is not None:
            # Hold the client's body until there is a connection to send it on.
            self.ex.conn.flow.pause_reading(HANDLER_HOLD)

    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        if self.done:
            self.pool.release(conn, True)
            return
        dflow = self.ex.conn.flow
        if dflow is not None:
            dflow.resume_reading(HANDLER_HOLD)
        self.conn = conn
        conn.attach(self, self.ex.head.method == b"HEAD")
        data = [self.head_bytes]
        if self.pending_body:
            data.extend(self.pending_body)
            self.pending_body = []
        if self.request_ended:
            if self.body_chunked:
                data.append(codec.LAST_CHUNK)
            conn.request_done = True
        conn.write(b"".join(data) if len(data) > 1 else data[0])

    def on_pool_failure(self, err: UpstreamError) -> None:
        if self.done:
            return
        if self._try_another_host():
            return
        dflow = self.ex.conn.flow
        if dflow is not None:
            dflow.resume_reading(HANDLER_HOLD)
        self._fail(err)

    def _try_another_host(self) -> bool:
        """After a failed connect, send the request to another host of the cluster.

        No byte of the request left, so this is safe for every method. It covers a pod that
        stopped before DNS said so (Envoy answers 503 here unless a retry policy is set).
        """
        if (
            self.replay is None
            or self.response_head is not None
            or self.route.auto_host_rewrite
            or len(self.tried) + 1 >= MAX_HOST_ATTEMPTS
        ):
            return False
        failed = self.host
        tried = (*self.tried, failed)
        cluster = self.cluster
        host = None
        for _ in range(len(cluster.hosts)):
            candidate = cluster.choose_host()
            if candidate is None:
                return False
            if candidate not in tried:
                host = candidate
                break
        if host is None:
            return False
        self.tried = tried
        failed.stats.rq_active -= 1
        failed.stats.rq_error += 1
        host.stats.rq_total += 1
        host.stats.rq_active += 1
        cluster.info.stats.upstream_rq_retry.inc()
        self.host = host
        self.pool = cluster.pool_for(host)
        self.ex.upstream_host = host.key
        self.conn = None
        self.pending_body = list(self.replay)
        conn = self.pool.acquire(self)
        if conn is not None:
            self.on_pool_ready(conn)
        return True

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.body_chunked:
            data = codec.encode_chunk(data)
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size <= REPLAY_LIMIT:
                replay.append(data)
            else:
                self.replay = None
        conn = self.conn
        if conn is None:
            self.pending_body.append(data)
        else:
            conn.write(data)

    def end_request(self) -> None:
        self.request_ended = True
        timeout = self.route.timeout
        if timeout is not None and not self.done:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)
        conn = self.conn
        if conn is not None and not self.done:
            if self.body_chunked:
                conn.write(codec.LAST_CHUNK)
            conn.request_done = True

    # response direction ----------------------------------------------------------------
    def on_informational(self, status: int, headers: Headers) -> None:
        # 100 Continue was already answered locally; other 1xx (102, 103) are passed on.
        if status != 100 and not self.ex.response_started:
            self.ex.conn.write(codec.status_line(status) + codec.format_headers(headers) + b"\r\n")

    def on_response_head(self, head: ResponseHead) -> None:
        if self.done:
            return
        self.response_head = head
        ex = self.ex
        cfg = self.fwd.config
        status = head.status
        out = [codec.status_line(status)]
        has_date = False
        server_seen = False
        append = out.append
        for k, v in head.headers:
            if k in _RESP_HANDLED:
                continue
            if k == b"server":
                if cfg.server_header_transformation == "OVERWRITE":
                    continue
                server_seen = True
            elif k == b"date":
                has_date = True
            append(k + b": " + v + b"\r\n")
        no_body = ex.head.method == b"HEAD" or status == 204 or status == 304
        keep_alive = True
        if head.content_length is not None:
            if status != 204:
                append(b"content-length: %d\r\n" % head.content_length)
        elif not no_body:
            if ex.head.version == "1.1":
                self.response_chunked = True
                append(b"transfer-encoding: chunked\r\n")
            else:
                keep_alive = False  # close-delimited for an HTTP/1.0 client
        if not has_date:
            append(b"date: " + codec.http_date.get() + b"\r\n")
        if cfg.server_header_transformation != "PASS_THROUGH" and not server_seen:
            append(b"server: " + cfg.server_name + b"\r\n")
        if not cfg.suppress_envoy_headers:
            ms = int((time.monotonic() - self.sent_at) * 1000)
            append(b"x-envoy-upstream-service-time: %d\r\n" % ms)
        if cfg.always_set_request_id_in_response and ex.request_id:
            append(b"x-request-id: " + ex.request_id + b"\r\n")
        conn = ex.conn
        if not keep_alive or not ex.head.keep_alive or conn.tracker.draining:
            append(b"connection: close\r\n")
        elif ex.head.version != "1.1":
            append(b"connection: keep-alive\r\n")
        append(b"\r\n")
        conn.response_head_sent(ex, status)
        # Held back so that the head and the first body bytes (usually the whole body, in
        # the same read) leave in one write: on loopback each write is a costly syscall.
        self.held_head = b"".join(out)

    def on_response_body(self, data: bytes) -> None:
        if self.done:
            return
        self.ex.bytes_sent += len(data)
        if self.response_chunked:
            data = codec.encode_chunk(data)
        head = self.held_head
        if head is not None:
            self.held_head = None
            data = head + data
        self.ex.conn.write(data)

    def on_response_end(self) -> None:
        if self.done:
            return
        head = self.response_head
        assert head is not None
        self._complete()
        status = head.status
        info = self.cluster.info
        st = info.stats
        st.upstream_rq_completed.inc()
        info.code_counter(status).inc()
        if self.tried:
            st.upstream_rq_retry_success.inc()
        if status < 300:
            st.upstream_rq_2xx.inc()
        elif status < 400:
            st.upstream_rq_3xx.inc()
        elif status < 500:
            st.upstream_rq_4xx.inc()
        else:
            st.upstream_rq_5xx.inc()
        st.upstream_rq_time.record((time.monotonic() - self.sent_at) * 1000.0)
        hst = self.host.stats
        if status >= 500:
            hst.rq_error += 1
        else:
            hst.rq_success += 1
        ex = self.ex
        tail = codec.LAST_CHUNK if self.response_chunked else b""
        head_bytes = self.held_head
        if head_bytes is not None:
            self.held_head = None
            tail = head_bytes + tail
        if tail:
            ex.conn.write(tail)
        keep_alive = (
            ex.head.version == "1.1" or head.content_length is not None or head.status in (204, 304)
        )
        ex.conn.finish(ex, keep_alive=keep_alive and ex.head.keep_alive)

    def on_upstream_error(self, err: UpstreamError) -> None:
        if self.done:
            return
        conn = self.conn
        if (
            isinstance(err, UpstreamResetError)
            and not self.retried
            and conn is not None
            and conn.requests_served > 0
            and self.response_head is None
            and self.replay is not None
        ):
            # The keep-alive connection died under us before any response byte: the
            # request never reached the application, so send it again on a fresh one.
            self.retried = True
            self.conn = None
            self.pending_body = list(self.replay)
            fresh = self.pool.acquire(self)
            if fresh is not None:
                self.on_pool_ready(fresh)
            return
        self._fail(err)

    def on_upstream_write_paused(self) -> None:
        flow = self.ex.conn.flow
        if flow is not None:
            flow.pause_reading(PEER_WRITE_BLOCKED)

    def on_upstream_write_resumed(self) -> None:
        flow = self.ex.conn.flow
        if flow is not None:
            flow.resume_reading(PEER_WRITE_BLOCKED)

    # endings ---------------------------------------------------------------------------
    def _complete(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        st = self.cluster.info.stats
        st.upstream_rq_active.dec()
        self.host.stats.rq_active -= 1
        flow = self.ex.conn.flow
        if flow is not None:
            flow.resume_reading(PEER_WRITE_BLOCKED)

    def _fail(self, err: UpstreamError) -> None:
        self._complete()
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        else:
            self.pool.cancel(self)
        self.host.stats.rq_error += 1
        st = self.cluster.info.stats
        if isinstance(err, UpstreamConnectError):
            pass
        else:
            st.upstream_rq_rx_reset.inc()
        ex = self.ex
        body = RESET_BEFORE_HEADERS + err.reset_reason.encode()
        ex.conn.send_local_reply(ex, 503, body, flags=err.flag)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        self._complete()
        st = self.cluster.info.stats
        st.upstream_rq_timeout.inc()
        self.host.stats.rq_timeout += 1
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        else:
            self.pool.cancel(self)
        ex = self.ex
        ex.conn.send_local_reply(ex, 504, UPSTREAM_TIMEOUT, flags="UT")

    def reset(self) -> None:
        """The client went away: abandon the upstream side."""
        if self.done:
            return
        self._complete()
        self.cluster.info.stats.upstream_rq_tx_reset.inc()
        self.cluster.info.stats.upstream_rq_cancelled.inc()
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        else:
            self.pool.cancel(self)
