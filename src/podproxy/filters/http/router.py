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
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podproxy.errors import UpstreamConnectError, UpstreamError, UpstreamResetError
from podproxy.filters.http.deadlines import Deadlines
from podproxy.filters.http.shadow import MirroredRequest, ShadowStream, shadow_head
from podproxy.http.conn_manager import (
    CONTINUE_100,
    EDGE_ONLY,
    INTERNAL_ONLY,
    LOOPBACK_PEERS,
    local_reply,
    new_request_id,
    trusted_xff_address,
)
from podproxy.http.flow import HANDLER_HOLD, PEER_WRITE_BLOCKED
from podproxy.http.http1 import codec
from podproxy.http.http1.codec import HOP_BY_HOP
from podproxy.http.http1.logged import LoggedExchange, note_route
from podproxy.http.http1.pool import HostPool
from podproxy.http.http1.tunnel import start_tunnel
from podproxy.http.http1.upstream import UpstreamConnection
from podproxy.http.stream import Exchange, Headers, ResponseHead, is_grpc_request
from podproxy.router.grpc_timeout import GRPC_TIMEOUT, GrpcTimeoutPolicy, to_grpc_timeout
from podproxy.router.header_format import local_reply_info, request_info, response_info
from podproxy.router.routes import Route, RouteTable
from podproxy.upstream.cluster import Cluster, ClusterInfo
from podproxy.upstream.host import Host

NO_HEALTHY_UPSTREAM = b"no healthy upstream"
UPSTREAM_TIMEOUT = b"upstream request timeout"
RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "

# What the router writes when it rewrites the path or the host: a client's value then goes.
_REWRITE_MARKS = frozenset({b"x-envoy-original-path", b"x-envoy-original-host"})

# Request headers the forwarder rewrites itself; dropped from the copy loop.
_REQ_HANDLED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# The one `te` a request keeps upstream (RFC 9110 §10.1.4; Envoy reduces te to trailers).
_TE_TRAILERS = b"te: trailers\r\n"
# Response headers the forwarder rewrites itself.
_RESP_HANDLED = HOP_BY_HOP | {b"content-length"}

# Request bodies up to this size are kept so a request that met a dead keep-alive
# connection, or a host that refused the connection, can be sent again.
REPLAY_LIMIT = 64 * 1024
# Hosts one request may try when connecting fails (nothing was sent, so any host may serve it).
MAX_HOST_ATTEMPTS = 3
# RFC 9110 §9.2.2: the methods whose repetition has the effect of one request. Only these are
# sent again, without a retry policy, after a reused connection failed before any response.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


# Header lines for the values most responses have, made once (formatting an int into bytes
# costs ~0.2 µs on the path to the client's first byte): service times under 100 ms, and the
# content lengths seen, up to a bound.
_SERVICE_TIME_LINES = tuple(b"x-envoy-upstream-service-time: %d\r\n" % ms for ms in range(100))
_CONTENT_LENGTH_LINES: dict[int, bytes] = {}
_CONTENT_LENGTH_LINES_MAX = 4096


def _content_length_line(n: int) -> bytes:
    """A content-length line not in `_CONTENT_LENGTH_LINES` yet (the hot path looks there)."""
    line = b"content-length: %d\r\n" % n
    if len(_CONTENT_LENGTH_LINES) < _CONTENT_LENGTH_LINES_MAX:
        _CONTENT_LENGTH_LINES[n] = line
    return line


@dataclass(slots=True)
class ForwarderConfig:
    """HTTP connection manager settings the forwarder applies to every request."""

    server_name: bytes = b"podproxy"
    server_header_transformation: str = "OVERWRITE"
    use_remote_address: bool = False
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    suppress_envoy_headers: bool = False
    # Router dynamic_stats: per-response cluster stats (codes, classes, completed, time).
    dynamic_stats: bool = True
    scheme: bytes = b"http"
    # HCM xff_num_trusted_hops: with use_remote_address, the client is the address this many
    # entries from the right of the x-forwarded-for received, and its x-forwarded-proto holds.
    xff_num_trusted_hops: int = 0
    # What use_remote_address appends to x-forwarded-for for a peer at 127.0.0.1 or ::1:
    # Envoy's local address (the host's first IPv4 address other than 127.0.0.1).
    local_address: bytes = b"127.0.0.1"
    # HCM scheme_header_transformation.scheme_to_overwrite: the x-forwarded-proto sent up.
    scheme_to_overwrite: bytes | None = None
    # HCM add_user_agent: the server's service cluster (`--service-cluster`), sent as
    # x-envoy-downstream-service-cluster and as user-agent when the request has none; None
    # when add_user_agent is off. `service_node` (`--service-node`) goes with it if not empty.
    user_agent: bytes | None = None
    service_node: bytes = b""
    # The HCM has access logs: streams note what the log reads (LoggedUpstreamRequest).
    access_logged: bool = False
    # What a mirrored request may hold unsent (per_connection_buffer_limit_bytes, Envoy's
    # retry_shadow_buffer_limit), and the node's address its copies append to
    # x-forwarded-for (Envoy's async client sends it from the node's local address).
    buffer_limit: int = 1024 * 1024
    node_address: bytes = b"127.0.0.1"


class TimeoutQueue:
    """Route timeouts without a timer per request.

    Requests sharing one timeout value expire in the order they finished sending, so a FIFO of
    `[deadline, request]` entries and one loop timer armed for the oldest live entry suffice.
    A request that completes clears its entry (the request is dropped at once; the entry is
    popped when it reaches the front), so memory is bounded by requests in flight plus the
    entries behind the oldest live one.
    """

    __slots__ = ("_loop", "_timer", "entries", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.entries: deque[list[Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, ureq: UpstreamRequest, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """Queue `ureq` to time out; `loop` is passed in because asking asyncio for it costs
        a getpid() syscall on Python 3.11."""
        entries = self.entries
        while entries and entries[0][1] is None:
            entries.popleft()
        self._loop = loop
        entry: list[Any] = [loop.time() + self.timeout, ureq]
        entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry[0], self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # set by add(), the only place that arms the timer
        now = loop.time()
        entries = self.entries
        while entries:
            deadline, ureq = entries[0]
            if ureq is None:
                entries.popleft()
                continue
            if deadline > now:
                self._timer = loop.call_at(deadline, self._fire)
                return
            entries.popleft()
            ureq.on_timeout()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.entries.clear()


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
        # Precomputed header lines and decisions (hot path: used as they are).
        scheme = config.scheme_to_overwrite or config.scheme
        self._xfp_line = b"x-forwarded-proto: " + scheme + b"\r\n"
        # A client's x-forwarded-proto is dropped (and ours sent) when the scheme is forced,
        # or at the edge unless trusted hops set it (conn_manager_utility.cc).
        self._drop_xfp = config.scheme_to_overwrite is not None or (
            config.use_remote_address and config.xff_num_trusted_hops == 0
        )
        strip = INTERNAL_ONLY | EDGE_ONLY if config.use_remote_address else INTERNAL_ONLY
        self._req_handled = _REQ_HANDLED
        self._ua_lines: bytes | None = None
        if config.user_agent is not None:
            # Envoy overwrites these two; user-agent only when absent or empty.
            strip |= {b"x-envoy-downstream-service-cluster"}
            lines = b"x-envoy-downstream-service-cluster: " + config.user_agent + b"\r\n"
            if config.service_node:
                strip |= {b"x-envoy-downstream-service-node"}
                lines += b"x-envoy-downstream-service-node: " + config.service_node + b"\r\n"
            self._ua_lines = lines
            self._ua_default = b"user-agent: " + config.user_agent + b"\r\n"
            self._req_handled = _REQ_HANDLED | {b"user-agent"}
        self._strip = strip
        # x-envoy-attempt-count: the client's goes where the vhost has the router set it.
        self._x_special = strip | _REWRITE_MARKS | {b"x-envoy-attempt-count"}
        self._regenerate_edge_id = (
            config.use_remote_address and not config.preserve_external_request_id
        )
        self.dynamic_stats = config.dynamic_stats
        self._server_line = b"server: " + config.server_name + b"\r\n"
        self._drop_upstream_server = config.server_header_transformation == "OVERWRITE"
        self._add_server = config.server_header_transformation != "PASS_THROUGH"
        self._timeouts: dict[float, TimeoutQueue] = {}
        # Per-request deadlines of routes with gRPC-aware timeouts (no others add to it).
        self.deadlines = Deadlines()
        # Decided once: only access-logged HCMs pay for noting what the log reads.
        self._filtered_upstream_request: type[UpstreamRequest] = (
            LoggedFilteredUpstreamRequest if config.access_logged else FilteredUpstreamRequest
        )
        self._logged = config.access_logged
        # The id of the next request that needs one, made after the previous request was
        # sent upstream: generating it costs a microsecond the critical path need not wait.
        self._spare_id: bytes | None = None

    def timeout_queue(self, timeout: float) -> TimeoutQueue:
        q = self._timeouts.get(timeout)
        if q is None:
            q = self._timeouts[timeout] = TimeoutQueue(timeout)
        return q

    # StreamHandler ---------------------------------------------------------------------
    def match_route(self, ex: Exchange) -> Route | None:
        """The route of `ex` as filters see it (None without a Host: nothing can match): for
        weighted clusters, the entry picked for this request, with its own per-filter config
        (Envoy resolves the weighted cluster with the route); the router then serves that
        entry."""
        head = ex.head
        authority = head.host
        if authority is None:
            return None
        route = self.routes.route(authority, head.target, head.headers)
        if route is not None and route.weighted is not None:
            route = route.choose_cluster(head.headers)[0]
        return route

    def on_request_head(self, ex: Exchange) -> None:
        head = ex.head
        conn = ex.conn
        authority = head.host
        if authority is None:
            # RFC 9112 §3.2: a 1.1 request without Host is a 400; Envoy 1.40 sends no body.
            local_reply(ex, 400, b"", flags="DPE", close=True)
            return
        self.stats.rq_total.value += 1
        fm = ex.filters
        if fm is None:
            route = self.routes.route(authority, head.target, head.headers)
        else:
            route = fm.route()  # matched already if a filter asked for it
        if route is None:
            if head.target[:1] != b"/":
                # `OPTIONS *`, or an absolute URI with no path: Envoy 404s before routing
                # (details absolute_path_rejected, no NR flag).
                local_reply(ex, 404, b"")
                return
            self.stats.no_route.value += 1
            local_reply(ex, 404, b"", flags="NR")
            return
        if route.direct_status is not None:
            if self._logged:
                note_route(ex, route.name, None)
            self._local_route_reply(ex, route)
            return
        cluster_name = route.cluster
        if cluster_name is None:
            # Weighted clusters or cluster_header: the entry chosen serves the request.
            route, cluster_name = route.choose_cluster(head.headers)
        cluster = self.clusters.get(cluster_name) if cluster_name is not None else None
        if cluster is None:
            self.stats.no_cluster.value += 1
            if self._logged:
                note_route(ex, route.name, None)
            self.route_local_reply(ex, route, route.cluster_not_found_status, b"", "NC", [])
            return
        host = cluster.choose_host()
        if host is None:
            cluster.info.stats.upstream_cx_none_healthy.value += 1
            if self.dynamic_stats:
                # Envoy charges the cluster its 503 (router.cc, no host: chargeUpstreamCode).
                charge_local_reply(cluster.info, 503)
            if self._logged:
                note_route(ex, route.name, cluster.info.observability_name)
            self.route_local_reply(ex, route, 503, NO_HEALTHY_UPSTREAM, "UH", [])
            return
        ex.idle_timeout = route.idle_timeout
        head_bytes, chunked, expect_continue = self.request_head(ex, route, host)
        if expect_continue:
            # Envoy answers 100-continue itself and strips Expect (proxy_100_continue false).
            conn.write(CONTINUE_100)
        pool: HostPool
        if cluster.by_request:
            # The client's protocol, or upstream_http_protocol_options' names: the Host as
            # it goes up (Envoy's getRequestHostValue: after host_rewrite_literal).
            pool = cluster.pool_for_request(
                host, head.version == "2", route.host_rewrite or authority, head.headers
            )
        else:
            pool = cluster.pools.get(host) or cluster.pool_for(host)
        mirror_chunked = chunked  # a mirror's pool decides its own framing
        if chunked and pool.multiplexed:
            chunked = False  # HTTP/2 frames the body itself
        upstream = pool.take_idle()
        if upstream is not None:
            # The head leaves before the exchange's bookkeeping is made: nothing can answer
            # it before this callback returns to the loop.
            upstream.write(head_bytes)
        ureq: UpstreamRequest
        if fm is None:
            if self._logged:
                ureq = LoggedUpstreamRequest(
                    self, ex, route, cluster, host, pool, head_bytes, chunked
                )
            else:
                ureq = UpstreamRequest(self, ex, route, cluster, host, pool, head_bytes, chunked)
        else:
            ureq = self._filtered_upstream_request(
                self, ex, route, cluster, host, pool, head_bytes, chunked
            )
        ex.state = ureq
        ureq.start(upstream)
        if route.mirrors is not None:
            self._mirror(ex, ureq, route, head_bytes, mirror_chunked)
        # The request is on its way upstream: what is left is off the critical path.
        if self._spare_id is None and self.config.generate_request_id:
            self._spare_id = new_request_id()

    def _mirror(
        self, ex: Exchange, ureq: UpstreamRequest, route: Route, head: bytes, chunked: bool
    ) -> None:
        """Start the route's mirror policies that apply (router.cc decodeHeaders: after the
        real request's upstream request; never for CONNECT; a cluster that does not exist is
        skipped, with only a debug log, as Envoy's ShadowWriterImpl does)."""
        if ex.head.method == b"CONNECT" or not route.mirrors:
            return
        shadows = []
        for policy in route.mirrors:
            if not policy.enabled():
                continue
            name = policy.cluster_name(ex.head.headers)
            cluster = self.clusters.get(name) if name is not None else None
            if cluster is None:
                continue
            host = cluster.choose_host()
            if host is None:
                cluster.info.stats.upstream_cx_none_healthy.value += 1
                continue
            mirror_head = shadow_head(head, policy, self.config.node_address)
            if cluster.auto_sni is None:
                pool = cluster.pool_for(host, ex.head.version == "2")
            else:
                # Envoy's mirror runs the router again on its copy: its Host (with the
                # -shadow suffix) names the connection.
                pool = cluster.pool_for_request(
                    host, ex.head.version == "2", head_authority(mirror_head), ex.head.headers
                )
            shadows.append(
                ShadowStream(
                    ex,
                    cluster,
                    host,
                    pool,
                    mirror_head,
                    chunked,
                    timeout=self._shadow_timeout(ex, route),
                    limit=self.config.buffer_limit,
                    loop=ex.conn.loop,
                    on_abandon=ureq.cluster,
                )
            )
        if not shadows:
            return
        state = MirroredRequest(ureq, shadows)
        ex.state = state
        for shadow in shadows:
            shadow.start(state)

    @staticmethod
    def _shadow_timeout(ex: Exchange, route: Route) -> float | None:
        """A mirror's timeout: the real request's (Envoy's async client gets the router's
        final timeout), decided per request on a route with gRPC-aware timeouts."""
        policy = route.grpc_timeouts
        if policy is None:
            return route.timeout
        headers = ex.head.headers
        ms = policy.router_timeout(is_grpc_request(headers), headers)
        return ms / 1000 if ms else None

    def route_reply_headers(self, ex: Exchange, route: Route) -> Headers | None:
        """The route's response header mutations, for a local reply once the route is known
        (router.cc modify_headers_: direct responses, redirects, and the router's own 503s
        and 504s get them, as checked side by side with Envoy 1.40)."""
        mutation = route.response_mutation
        if mutation is None:
            return None
        info = (
            local_reply_info(ex, route, self._forwarded_proto(ex)) if mutation.formatted else None
        )
        return route.local_reply_headers(info)

    def route_local_reply(
        self, ex: Exchange, route: Route, status: int, body: bytes, flags: str, extra: Headers
    ) -> None:
        """A local reply of the router's once the route is known: with the route's response
        headers (and `extra`), through the encoder filters when there are any."""
        headers = (self.route_reply_headers(ex, route) or []) + extra
        local_reply(ex, status, body, flags=flags, headers=headers or None)

    def _local_route_reply(self, ex: Exchange, route: Route) -> None:
        """A direct response or a redirect, with the route's response header mutations."""
        headers = self.route_reply_headers(ex, route)
        redirect = route.redirect
        status = route.direct_status or 200
        body = route.direct_body
        if redirect is None:
            self.stats.rq_direct_response.value += 1
        else:
            self.stats.rq_redirect.value += 1
            head = ex.head
            location = redirect.location(head.host or b"", head.target, self._forwarded_proto(ex))
            headers = [(b"location", location), *(headers or ())]
            status, body = redirect.status, b""
        local_reply(ex, status, body, headers=headers)

    def _forwarded_proto(self, ex: Exchange) -> bytes:
        """The x-forwarded-proto the upstream would get (the redirect's default scheme)."""
        if not self._drop_xfp:
            for k, v in ex.head.headers:
                if k == b"x-forwarded-proto":
                    return v
        return self.config.scheme_to_overwrite or self.config.scheme

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
    def _rewrites(self, name: bytes, route: Route, host: Host) -> bool:
        """Whether the router writes `name` (x-envoy-original-path or -host) for this request,
        replacing the client's, as Envoy's does; otherwise the client's passes unless the
        request is an edge one."""
        if name == b"x-envoy-original-path":
            return route.prefix_rewrite is not None and route.prefix is not None
        if name == b"x-envoy-attempt-count":
            return bool(route.attempt_count_line)
        rewritten = route.host_rewrite is not None or (route.auto_host_rewrite and host.hostname)
        return (
            bool(rewritten)
            and route.original_host_header
            and not self.config.suppress_envoy_headers
        )

    def _grpc_timeout_lines(
        self, headers: Headers, policy: GrpcTimeoutPolicy, out: list[bytes]
    ) -> list[bytes]:
        """The timeout headers of a request on a route with gRPC-aware timeouts: `out` (header
        groups of four from index 6) with the client's grpc-timeout replaced when Envoy
        replaces it, and x-envoy-expected-rq-timeout-ms (router.cc setTimeoutHeaders).

        Legacy: the router's timeout (from grpc-timeout for a gRPC request) goes in both; 0
        means none, and then neither is written. New timeouts: the router has no timeout, and
        a gRPC upstream gets the stream's duration (refreshDurationTimeout), the client's
        grpc-timeout staying when nothing limits the stream."""
        grpc = is_grpc_request(headers)
        value: bytes | None = None
        ms: int | None = None
        if policy.new_timeouts:
            if grpc:
                ms = policy.stream_duration(headers)
                if ms is None:
                    ms = policy.max_stream_duration_ms or None
                if ms is not None:
                    value = to_grpc_timeout(ms)
        else:
            ms = policy.router_timeout(grpc, headers)
            if ms and grpc and policy.max_grpc_timeout_ms is not None:
                value = to_grpc_timeout(ms)
        if value is not None:
            kept = out[:6]
            for n in range(6, len(out), 4):
                if out[n] != GRPC_TIMEOUT:
                    kept += out[n : n + 4]
            out = kept
            out += (b"grpc-timeout: ", value, b"\r\n")
        if not policy.new_timeouts and ms and not self.config.suppress_envoy_headers:
            out += (b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms,)
        return out

    def arm_grpc_deadline(self, ureq: UpstreamRequest, policy: GrpcTimeoutPolicy) -> None:
        """Once the request has been received: its router timeout (legacy: from now, as
        Envoy's onRequestComplete starts it) or its stream duration from grpc-timeout (new
        timeouts: from the stream's start) in the deadline heap, as `ureq.timer`, which its
        completion cancels."""
        ex = ureq.ex
        headers = ex.head.headers
        loop = ex.conn.loop
        if policy.new_timeouts:
            ms = policy.stream_duration(headers)
            if ms is not None:
                ureq.timer = self.deadlines.add(
                    ex.start + ms / 1000, ureq, _stream_duration_reached, loop
                )
            return
        ms = policy.router_timeout(is_grpc_request(headers), headers)
        if ms:
            ureq.timer = self.deadlines.add(
                loop.time() + ms / 1000, ureq, UpstreamRequest.on_timeout, loop
            )

    def request_head(self, ex: Exchange, route: Route, host: Host) -> tuple[bytes, bool, bool]:
        """The upstream request head bytes, whether the body goes chunked, and whether the
        client asked for `100-continue`. One pass over the headers, one join."""
        cfg = self.config
        head = ex.head
        target = head.target
        out: list[bytes] = [head.method, b" ", target, b" HTTP/1.1\r\nhost: ", b"", b"\r\n"]
        extra: list[bytes] = []
        te_trailers = False
        authority = head.host or b""
        xff: bytes | None = None
        has_xfp = False
        has_user_agent = False
        request_id: bytes | None = None
        chunked = False
        expect_continue = False
        connection_tokens: set[bytes] | None = None
        drop_xfp = self._drop_xfp
        x_special = self._x_special
        req_handled = self._req_handled
        for k, v in head.headers:
            if k in req_handled:
                if k == b"content-length":
                    extra += (b"content-length: ", v, b"\r\n")
                elif k == b"transfer-encoding":
                    chunked = True
                elif k == b"connection":
                    toks = {t.strip().lower() for t in v.split(b",")}
                    toks -= {b"close", b"keep-alive", b""}
                    if toks:
                        connection_tokens = toks
                elif k == b"expect":
                    expect_continue = v.lower() == b"100-continue"
                elif k == b"te" and v.strip().lower() == b"trailers":
                    te_trailers = True
                elif k == b"user-agent" and v:  # handled only with add_user_agent
                    has_user_agent = True
                    out += (k, b": ", v, b"\r\n")
                continue
            if k[:2] == b"x-":
                if k == b"x-forwarded-for":
                    xff = v if xff is None else xff + b"," + v
                    continue
                if k == b"x-forwarded-proto":
                    if drop_xfp:
                        continue
                    has_xfp = True
                elif k == b"x-request-id":
                    request_id = v
                    continue
                elif k in x_special and (k in self._strip or self._rewrites(k, route, host)):
                    continue
            out += (k, b": ", v, b"\r\n")
        if connection_tokens:
            # RFC 9110 §7.6.1: fields named in Connection are hop-by-hop too (rare: rebuild).
            kept = out[:6]
            for n in range(6, len(out), 4):
                if out[n] not in connection_tokens:
                    kept += out[n : n + 4]
            out = kept
        if head.upgrade is not None:
            # An upgrade the connection manager let through (http1.tunnel) keeps its upgrade
            # fields, which Envoy forwards as the client sent them.
            for k, v in head.headers:
                if k == b"upgrade" or k == b"connection":
                    out += (k, b": ", v, b"\r\n")
        policy = route.grpc_timeouts
        if policy is not None:
            out = self._grpc_timeout_lines(head.headers, policy, out)

        if cfg.use_remote_address:
            # An edge request (conn_manager_utility.cc mutateRequestHeaders): the client is the
            # peer, or with trusted hops an address from the XFF received; the peer is appended.
            peer = ex.conn.remote[0]
            client = peer
            hops = cfg.xff_num_trusted_hops
            if hops and xff is not None:
                client = trusted_xff_address(xff, hops - 1) or peer
            if not cfg.skip_xff_append:
                own = cfg.local_address if peer in LOOPBACK_PEERS else peer.encode()
                xff = xff + b"," + own if xff else own
            out += (b"x-envoy-external-address: ", client.encode(), b"\r\n")
        if xff is not None:
            out += (b"x-forwarded-for: ", xff, b"\r\n")
        if not has_xfp:
            out.append(self._xfp_line)
        ua_lines = self._ua_lines
        if ua_lines is not None:
            out.append(ua_lines)
            if not has_user_agent:
                out.append(self._ua_default)
        # Envoy: a new id when there is none, and for every edge request unless
        # preserve_external_request_id; generate_request_id false leaves the client's alone.
        if cfg.generate_request_id and (request_id is None or self._regenerate_edge_id):
            request_id = self._spare_id or new_request_id()
            self._spare_id = None
        if request_id is not None:
            out += (b"x-request-id: ", request_id, b"\r\n")
            ex.request_id = request_id
        if not cfg.suppress_envoy_headers:
            out.append(route.timeout_header)  # with x-envoy-attempt-count when the vhost says
        elif route.attempt_count_line:
            out.append(route.attempt_count_line)  # not an envoy header suppress removes
        mutation = route.request_mutation
        if mutation is not None:
            # Envoy's finalizeRequestHeaders: the route's header mutations see what the
            # connection manager and router added, and run before the path and host rewrites
            # (so REQ(:path) is the client's, and x-envoy-original-* cannot be removed).
            info = request_info(ex, route, self.clusters) if mutation.formatted else None
            out[6:] = [mutation.apply_to_lines(b"".join(out[6:]), info)]
        if route.prefix_rewrite is not None and route.prefix is not None:
            out += (b"x-envoy-original-path: ", target, b"\r\n")
            out[2] = route.prefix_rewrite + target[len(route.prefix) :]
        rewritten: bytes | None = None
        if route.host_rewrite is not None:
            rewritten = route.host_rewrite
        elif route.auto_host_rewrite and host.hostname:
            rewritten = host.hostname.encode()
        if rewritten is not None:
            # Envoy keeps the Host the client sent in x-envoy-original-host (checked against
            # Envoy 1.40 side by side).
            if not cfg.suppress_envoy_headers and route.original_host_header:
                out += (b"x-envoy-original-host: ", authority, b"\r\n")
            authority = rewritten
        out[4] = authority
        if chunked:
            extra = [b"transfer-encoding: chunked\r\n"]  # never with content-length (llhttp)
        if te_trailers:
            # gRPC needs it end to end (a gRPC server refuses a call without it).
            extra.append(_TE_TRAILERS)
        extra.append(b"\r\n")
        out += extra
        return b"".join(out), chunked, expect_continue


def head_authority(head: bytes) -> bytes:
    """The Host of an upstream request head as `Forwarder.request_head` builds it (`host: `
    is its first field)."""
    start = head.index(b"\r\n") + 8  # after the request line and "host: "
    return head[start : head.index(b"\r\n", start)]


def charge_local_reply(info: ClusterInfo, status: int) -> None:
    """The cluster stats of a reply the router made in place of the upstream's (Envoy's
    chargeUpstreamCode for a 503 or 504: upstream_rq_completed and the code)."""
    st = info.stats
    st.upstream_rq_completed.value += 1
    info.code_counter(status).value += 1
    if status >= 500:
        st.upstream_rq_5xx.value += 1
    elif status >= 400:
        st.upstream_rq_4xx.value += 1


def _stream_duration_reached(ureq: UpstreamRequest) -> None:
    """A stream duration from grpc-timeout ran out: the connection answers as for
    max_stream_duration (504, or DEADLINE_EXCEEDED to a gRPC client)."""
    ureq.timer = None
    if not ureq.done:
        ureq.ex.conn.max_duration_reached(ureq.ex)


def _is_attempt_count(line: bytes) -> bool:
    return line[:22].lower() == b"x-envoy-attempt-count:"


def _with_attempt_count(head: bytes, attempts: int) -> bytes:
    """`head` with its x-envoy-attempt-count set to `attempts` (Envoy's doRetry sets it
    again on each attempt; added if a header mutation took it away)."""
    lines = head[:-2].split(b"\r\n")[:-1]
    kept = [ln for ln in lines if not _is_attempt_count(ln)]
    kept.append(b"x-envoy-attempt-count: %d" % attempts)
    return b"\r\n".join(kept) + b"\r\n\r\n"


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
        self,
        fwd: Forwarder,
        ex: Exchange,
        route: Route,
        cluster: Cluster,
        host: Host,
        pool: HostPool,
        head_bytes: bytes,
        body_chunked: bool,
    ) -> None:
        self.fwd = fwd
        self.ex = ex
        self.route = route
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.conn: UpstreamConnection | None = None
        self.head_bytes = head_bytes  # from Forwarder.request_head
        self.body_chunked = body_chunked
        self.pending_body: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.request_ended = False
        self.response_head: ResponseHead | None = None
        self.response_chunked = False
        self.held_head: bytes | None = None
        self.timer: list[Any] | None = None  # its TimeoutQueue entry
        self.sent_at = 0.0
        self.done = False
        self.retried = False
        self.tried: tuple[Host, ...] = ()
        ex.upstream_host = host.key

    # request direction -----------------------------------------------------------------
    def start(self, sent_on: UpstreamConnection | None) -> None:
        """Take over the exchange: its head was already written on `sent_on`, or (None, no
        connection was idle) it waits for one from the pool."""
        self.sent_at = time.monotonic()
        if sent_on is not None:
            self.conn = sent_on
            sent_on.attach(self, self.ex.head.method == b"HEAD")
        else:
            self.pool.enqueue(self)
            if self.ex.conn.flow is not None:
                # Hold the client's body until there is a connection to send it on.
                self.ex.conn.flow.pause_reading(HANDLER_HOLD)
        # Counted after the head was sent or queued (nothing above reads these).
        st = self.cluster.info.stats
        st.upstream_rq_total.value += 1
        st.upstream_rq_active.value += 1
        hst = self.host.stats
        hst.rq_total += 1
        hst.rq_active += 1

    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        if self.done:
            self.pool.release(conn, True)
            return
        dflow = self.ex.conn.flow
        if dflow is not None and dflow.reasons & HANDLER_HOLD:
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
            elif self.ex.request_trailers is not None:
                self._pass_trailers(conn)
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
        cluster.info.stats.upstream_rq_retry.value += 1
        self.host = host
        head = self.ex.head
        self.pool = cluster.pool_for_request(
            host, head.version == "2", self.route.host_rewrite or head.host or b"", head.headers
        )
        self.ex.upstream_host = host.key
        self._resend()
        return True

    @property
    def attempts(self) -> int:
        """Envoy's attempt_count_: 1, and one more each time the request is sent again."""
        return 1 + len(self.tried) + self.retried

    def _resend(self) -> None:
        """Send the request again from its replay copy, on a connection from `self.pool`."""
        assert self.replay is not None
        self.conn = None
        if self.route.attempt_count_line:
            self.head_bytes = _with_attempt_count(self.head_bytes, self.attempts)
        self.pending_body = list(self.replay)
        conn = self.pool.acquire(self)
        if conn is not None:
            self.on_pool_ready(conn)

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.body_chunked:
            if not data:
                # An empty DATA frame from an HTTP/2 client is no chunk: encoded, it would be
                # the last chunk (Envoy's HTTP/1 encoder writes nothing for it either).
                return
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
            self.timer = self.fwd.timeout_queue(timeout).add(self, self.ex.conn.loop)
        elif self.route.grpc_timeouts is not None and not self.done:
            # Only routes without a fixed timeout get here (0, or decided per request).
            self.fwd.arm_grpc_deadline(self, self.route.grpc_timeouts)
        conn = self.conn
        if conn is not None and not self.done:
            if self.body_chunked:
                conn.write(codec.LAST_CHUNK)
            elif self.ex.request_trailers is not None:
                self._pass_trailers(conn)
            conn.request_done = True

    def _pass_trailers(self, conn: UpstreamConnection) -> None:
        """The request ended with trailers (an HTTP/2 client's): an HTTP/2 upstream stream
        sends them; an HTTP/1 one has no place for them (Envoy's HTTP/1 codec drops them
        without enable_trailers)."""
        if self.pool.multiplexed:
            conn.request_trailers = self.ex.request_trailers

    # response direction ----------------------------------------------------------------
    def on_response_head(self, head: ResponseHead) -> None:
        if self.done:
            return
        self.response_head = head
        ex = self.ex
        fwd = self.fwd
        status = head.status
        out = [codec.STATUS_LINES.get(status) or codec.status_line(status)]
        has_date = False
        server_seen = False
        drop_server = fwd._drop_upstream_server
        for k, v in head.headers:
            if k in _RESP_HANDLED:
                continue
            if k == b"server":
                if drop_server:
                    continue
                server_seen = True
            elif k == b"date":
                has_date = True
            out += (k, b": ", v, b"\r\n")
        keep_alive = True
        if head.content_length is not None:
            if status != 204:
                n = head.content_length
                out.append(_CONTENT_LENGTH_LINES.get(n) or _content_length_line(n))
        elif not (ex.head.method == b"HEAD" or status == 204 or status == 304):
            version = ex.head.version
            if head.end_stream and version != "2":
                # An HTTP/2 upstream's head that ended its stream: Envoy's HTTP/1 codec
                # frames the empty body with a length (gRPC trailers-only answers).
                out.append(b"content-length: 0\r\n")
            elif version == "1.1":
                self.response_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                keep_alive = False  # close-delimited for an HTTP/1.0 client
        if not has_date:
            out += (b"date: ", codec.http_date.get(), b"\r\n")
        if fwd._add_server and not server_seen:
            out.append(fwd._server_line)
        cfg = fwd.config
        if not cfg.suppress_envoy_headers:
            ms = int((time.monotonic() - self.sent_at) * 1000)
            if ms < 100:
                out.append(_SERVICE_TIME_LINES[ms])
            else:
                out.append(b"x-envoy-upstream-service-time: %d\r\n" % ms)
        if cfg.always_set_request_id_in_response and ex.request_id:
            out += (b"x-request-id: ", ex.request_id, b"\r\n")
        if self.route.attempt_count_in_response:
            # The vhost's include_attempt_count_in_response: the router's count replaces any
            # the upstream sent (unaffected by suppress_envoy_headers, as in Envoy).
            lines = b"".join(out[1:]).split(b"\r\n")[:-1]
            kept = [ln + b"\r\n" for ln in lines if not _is_attempt_count(ln)]
            out[1:] = [*kept, b"x-envoy-attempt-count: %d\r\n" % self.attempts]
        mutation = self.route.response_mutation
        if mutation is not None:
            info = None
            if mutation.formatted:
                name = self.cluster.info.observability_name
                info = response_info(ex, self.route, status, self.head_bytes, name, self.conn)
            out[1:] = [mutation.apply_to_lines(b"".join(out[1:]), info)]
        conn = ex.conn
        if not keep_alive or not ex.head.keep_alive or conn.draining:
            out.append(b"connection: close\r\n")
            if conn.draining:
                conn.drain_on_response()
        elif ex.head.version != "1.1":
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        conn.response_head_sent(ex, status)
        # Held back so that the head and the first body bytes (usually the whole body, in
        # the same read) leave in one write: on loopback each write is a costly syscall.
        self.held_head = b"".join(out)

    def on_response_body(self, data: bytes) -> None:
        if self.done:
            return
        self.ex.bytes_sent += len(data)
        if self.response_chunked:
            if not data:
                # An HTTP/2 pod's empty DATA frame: as a chunk it would end the body early.
                return
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
        # The connection is back in its pool (maybe already serving another request): a
        # write below that fills the client's buffer must not pause it.
        self.conn = None
        # The client's bytes first, the bookkeeping after: the response leaves sooner.
        ex = self.ex
        tail = codec.LAST_CHUNK if self.response_chunked else b""
        head_bytes = self.held_head
        if head_bytes is not None:
            self.held_head = None
            tail = head_bytes + tail
        if tail:
            ex.conn.write(tail)
        self._complete()
        status = head.status
        info = self.cluster.info
        st = info.stats
        if self.tried:
            st.upstream_rq_retry_success.value += 1
        if self.fwd.dynamic_stats:
            # Envoy's "dynamic" stats (router.cc chargeUpstreamCode), unless the router's
            # dynamic_stats is false (checked side by side: then none of these is made).
            st.upstream_rq_completed.value += 1
            info.code_counter(status).value += 1
            if status < 300:
                st.upstream_rq_2xx.value += 1
            elif status < 400:
                st.upstream_rq_3xx.value += 1
            elif status < 500:
                st.upstream_rq_4xx.value += 1
            else:
                st.upstream_rq_5xx.value += 1
            st.upstream_rq_time.record((time.monotonic() - self.sent_at) * 1000.0)
        hst = self.host.stats
        if status >= 500:
            hst.rq_error += 1
        else:
            hst.rq_success += 1
        keep_alive = (
            ex.head.version == "1.1" or head.content_length is not None or head.status in (204, 304)
        )
        ex.conn.finish(ex, keep_alive=keep_alive and ex.head.keep_alive)

    def on_response_trailers(self, trailers: Headers) -> None:
        """The response's trailers (an HTTP/2 upstream's): the client's codec sends them
        (HTTP/2) or drops them (HTTP/1, as Envoy's does without enable_trailers). The
        response's end follows."""
        if self.done:
            return
        self._flush_held_head()
        self.ex.conn.write_trailers(self.ex, trailers)

    def on_upstream_error(self, err: UpstreamError) -> None:
        if self.done:
            return
        conn = self.conn
        if (
            isinstance(err, UpstreamResetError)
            and not self.retried
            and conn is not None
            and self.response_head is None
            and self.replay is not None
            and (
                err.refused
                or (conn.requests_served > 0 and self.ex.head.method in IDEMPOTENT_METHODS)
            )
        ):
            # The keep-alive race: a reused connection closed before any response byte. An
            # idempotent request may be sent again on a fresh one; any other may have been
            # processed already, so it gets the reset reply (README, when a request is resent).
            # A stream the pod refused (HTTP/2 REFUSED_STREAM, or above its GOAWAY's last
            # stream) was not processed: any request may go again.
            self.retried = True
            self._resend()
            return
        self._fail(err)

    def on_upgrade(self, conn: UpstreamConnection, head: ResponseHead, tail: bytes) -> bool:
        """The upstream switched protocols (101). If the request asked for an upgrade, the 101
        goes to the client (through the encoder filters) and a tunnel (http1.tunnel) takes the
        exchange over; False otherwise: an unexpected upgrade (Envoy's 503)."""
        ex = self.ex
        if self.done or ex.head.upgrade is None:
            return False
        if self.timer is not None:
            # Envoy's router turns the route timeout off once an upgrade completes.
            self.timer[1] = None
            self.timer = None
        self.conn = None
        self.on_response_head(head)
        built, self.held_head = self.held_head, None
        if self.fwd.dynamic_stats:
            st = self.cluster.info.stats
            st.upstream_rq_completed.value += 1
            st.upstream_rq_1xx.value += 1
            self.cluster.info.code_counter(101).value += 1
        start_tunnel(ex, conn, head, built, tail, self.route, self._tunnel_ended)
        return True

    def _tunnel_ended(self) -> None:
        self._complete()
        self.host.stats.rq_success += 1

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
            self.timer[1] = None  # the queue drops the entry when it reaches the front
            self.timer = None
        st = self.cluster.info.stats
        st.upstream_rq_active.value -= 1
        self.host.stats.rq_active -= 1
        flow = self.ex.conn.flow
        if flow is not None and flow.reasons & PEER_WRITE_BLOCKED:
            flow.resume_reading(PEER_WRITE_BLOCKED)

    def _let_go(self) -> None:
        """Give up the upstream side: close a connection mid-exchange, or stop waiting."""
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        else:
            self.pool.cancel(self)

    def _fail(self, err: UpstreamError) -> None:
        self._complete()
        self._let_go()
        self.host.stats.rq_error += 1
        if not isinstance(err, UpstreamConnectError):
            self.cluster.info.stats.upstream_rq_rx_reset.value += 1
        self._charge_abort(err.status)
        self._flush_held_head()
        body = RESET_BEFORE_HEADERS + err.reset_reason.encode()
        self._reply(err.status, body, err.flag)

    def _flush_held_head(self) -> None:
        """Before a response is cut short: its head is the client's already (Envoy would
        have sent it), so it goes out before the connection is closed."""
        if self.held_head is not None:
            self.ex.conn.write(self.held_head)
            self.held_head = None

    def on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        self._complete()
        st = self.cluster.info.stats
        st.upstream_rq_timeout.value += 1
        self.host.stats.rq_timeout += 1
        self._charge_abort(504)
        self._let_go()
        self._flush_held_head()
        self._reply(504, UPSTREAM_TIMEOUT, "UT")

    def _charge_abort(self, status: int) -> None:
        """Envoy's chargeUpstreamAbort: a request the router ends with its own 503/504
        before any response began is charged to the cluster as that code, as a response
        would be (router.cc chargeUpstreamCode; checked side by side with Envoy 1.40)."""
        if self.response_head is None and self.fwd.dynamic_stats:
            charge_local_reply(self.cluster.info, status)

    def _reply(self, status: int, body: bytes, flags: str) -> None:
        """The router's local reply once a host was chosen: with x-envoy-attempt-count when
        the vhost puts it on responses (router.cc modify_headers_, which its 503s and 504s
        get too)."""
        extra = []
        if self.route.attempt_count_in_response:
            extra.append((b"x-envoy-attempt-count", b"%d" % self.attempts))
        self.fwd.route_local_reply(self.ex, self.route, status, body, flags, extra)

    def reset(self) -> None:
        """The client went away: abandon the upstream side."""
        if self.done:
            return
        self._complete()
        self.cluster.info.stats.upstream_rq_tx_reset.value += 1
        self.cluster.info.stats.upstream_rq_cancelled.value += 1
        self._let_go()


class FilteredUpstreamRequest(UpstreamRequest):
    """An `UpstreamRequest` whose response goes through the stream's encoder filters (the HCM
    has filters besides the router): the upstream connection's calls go to the filter
    manager, and what the filters let through comes back to `UpstreamRequest`'s writers
    (`encode_head` / `encode_body`, the filter manager's sink). Unfiltered streams never
    pay for this."""

    __slots__ = ("ended_in_head", "trailered")

    def on_response_head(self, head: ResponseHead) -> None:
        if self.done:
            return
        self.response_head = head
        status = head.status
        # A response without a body ends with its head (as Envoy's codec tells the filters).
        end = (
            head.end_stream
            or head.content_length == 0
            or status == 204
            or status == 304
            or self.ex.head.method == b"HEAD"
        )
        self.ended_in_head = end
        self.trailered = False
        self.ex.filters.encode_headers(head, end, self)

    def on_response_body(self, data: bytes) -> None:
        if not self.done:
            self.ex.filters.encode_data(data, False)

    def on_response_trailers(self, trailers: Headers) -> None:
        if not self.done:
            self.trailered = True
            self.ex.filters.encode_trailers(trailers)

    def on_response_end(self) -> None:
        if self.done:
            return
        # The upstream connection is back in its pool: whatever the filters still hold is
        # this stream's alone, and the route timeout is over (Envoy cancels it when the
        # upstream response ends, whatever the encoder filters still do with it).
        self.conn = None
        if self.timer is not None:
            self.timer[1] = None
            self.timer = None
        if not self.ended_in_head and not self.trailered:
            self.ex.filters.encode_data(b"", True)

    # the filter manager's sink ---------------------------------------------------------
    def encode_head(self, head: ResponseHead, end_stream: bool) -> None:
        super().on_response_head(head)
        if end_stream:
            super().on_response_end()

    def encode_body(self, data: bytes, end_stream: bool) -> None:
        if data:
            super().on_response_body(data)
        if end_stream:
            super().on_response_end()

    def encode_trailers(self, trailers: Headers) -> None:
        # The response ends with them (an HTTP/1 client's codec drops them, as Envoy's
        # without enable_trailers).
        super().on_response_trailers(trailers)
        super().on_response_end()


class LoggedUpstreamRequest(UpstreamRequest):
    """An `UpstreamRequest` of an access-logged HCM: notes on its `LoggedExchange` what the
    log reads, where it happens (the heads as sent, the first response byte's time, the
    upstream connection's local address, the cluster and route)."""

    __slots__ = ()

    def __init__(
        self,
        fwd: Forwarder,
        ex: Exchange,
        route: Route,
        cluster: Cluster,
        host: Host,
        pool: HostPool,
        head_bytes: bytes,
        body_chunked: bool,
    ) -> None:
        super().__init__(fwd, ex, route, cluster, host, pool, head_bytes, body_chunked)
        if isinstance(ex, LoggedExchange):
            ex.upstream_head = head_bytes
            ex.upstream_cluster = cluster.info.observability_name
            ex.route_name = route.name

    def _note_local_address(self, conn: UpstreamConnection) -> None:
        ex = self.ex
        if isinstance(ex, LoggedExchange) and conn.transport is not None:
            sock = conn.transport.get_extra_info("sockname")
            if sock:
                host, port = sock[0], sock[1]
                ex.upstream_local_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self, sent_on: UpstreamConnection | None) -> None:
        if sent_on is not None:
            self._note_local_address(sent_on)
        super().start(sent_on)

    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        if not self.done:
            self._note_local_address(conn)
        super().on_pool_ready(conn)

    def on_response_head(self, head: ResponseHead) -> None:
        ex = self.ex
        if isinstance(ex, LoggedExchange) and not self.done:
            ex.first_upstream_byte = ex.conn.loop.time()
            super().on_response_head(head)
            ex.response_head = self.held_head
            return
        super().on_response_head(head)


class LoggedFilteredUpstreamRequest(FilteredUpstreamRequest, LoggedUpstreamRequest):
    """Both: the response goes through the encoder filters, and the access log notes it."""

    __slots__ = ()
