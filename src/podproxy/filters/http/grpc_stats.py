"""The gRPC statistics filter (envoy.filters.http.grpc_stats): counts gRPC calls per cluster.

A gRPC request (content-type `application/grpc` or `application/grpc+...`) whose route names a
cluster is charged under `cluster.<name>.grpc.`, with `<service>.<method>.` after it when
per-method names are on (every method, or the allowlisted ones): `<grpc-status>`, `success`
or `failure` and `total` when a grpc-status arrives (response headers of a trailers-only
response, or trailers; nothing without one), `request_message_count` /
`response_message_count` as gRPC frames start in either body, and the histogram
`upstream_rq_time` with `enable_upstream_stats` (Envoy's grpc_stats_filter.cc and
Grpc::ContextImpl). Counters are made on first use, as Envoy's dynamic stats are.
Other requests cost one header lookup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from podproxy.filters.http.common import FilterContext
from podproxy.http.filter import CONTINUE, FilterCallbacks, FilterFactory, HttpFilter
from podproxy.http.stream import (
    Headers,
    ResponseHead,
    first_value,
    grpc_local_reply,
    is_grpc_request,
)
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster

NAME = "envoy.filters.http.grpc_stats"

_GRPC = b"application/grpc"
# The frame flag of a Connect end-of-stream message (Grpc::CONNECT_FH_EOS): Envoy's
# ResponseFrameCounter does not count it, nor any frame after it.
_CONNECT_EOS = 0x02
# A gRPC frame header: one flag byte, then the message length (4 bytes, big-endian).
_HEADER = 5


class FrameCounter:
    """Counts gRPC length-prefixed messages in a body that arrives in pieces (Envoy's
    Grpc::FrameInspector): a message counts as soon as its flag byte is seen, so a piece that
    ends inside a frame header or message still counts the frame it started. Sans-I/O."""

    __slots__ = ("count", "header", "left", "response", "stopped")

    def __init__(self, response: bool = False) -> None:
        self.count = 0
        # Bytes of the current frame header seen so far (b"" between frames), and the bytes
        # of the current message still to skip.
        self.header = b""
        self.left = 0
        self.response = response
        self.stopped = False

    def inspect(self, data: bytes) -> int:
        """Feed the next piece of the body; returns how many frames started in it."""
        if self.stopped:
            return 0
        at = self.left
        n = len(data)
        if at >= n:
            self.left = at - n
            return 0
        header = self.header
        delta = 0
        while at < n:
            if not header:
                if self.response and data[at] & _CONNECT_EOS:
                    self.stopped = True
                    break
                delta += 1
            take = data[at : at + _HEADER - len(header)]
            header += take
            at += len(take)
            if len(header) < _HEADER:
                break
            at += int.from_bytes(header[1:_HEADER], "big")
            header = b""
        self.header = header
        self.left = at - n if at > n else 0
        self.count += delta
        return delta


def service_and_method(target: bytes) -> tuple[str, str] | None:
    """Grpc::Common::resolveServiceAndMethod: `/<service>/<method>` (the query cut off, empty
    segments skipped), None when the path has not exactly two segments."""
    path = target.split(b"?", 1)[0]
    parts = [p for p in path.split(b"/") if p]
    if len(parts) != 2:
        return None
    return parts[0].decode("latin-1"), parts[1].decode("latin-1")


def is_grpc_response(head: ResponseHead, end_stream: bool) -> bool:
    """Grpc::Common::isGrpcResponseHeaders: a trailers-only response needs only grpc-status;
    otherwise status 200 and a gRPC content-type."""
    headers = head.headers
    if end_stream:
        return first_value(headers, b"grpc-status") is not None
    if head.status != 200:
        return False
    ct = first_value(headers, b"content-type")
    return ct is not None and ct.startswith(_GRPC) and (len(ct) == 16 or ct[16] == 43)  # "+"


class GrpcStatsConfig:
    """The filter's config, made once per HCM: how a call's stat prefix is found."""

    __slots__ = ("all_methods", "allowlist", "clusters", "replace_dots", "store", "upstream_stats")

    def __init__(self, cfg: Any, ctx: FilterContext) -> None:
        self.store: Store = ctx.stats.store
        self.clusters: Mapping[str, Cluster] = ctx.clusters
        # Neither oneof field set: no per-method names (Envoy's default since 1.18).
        self.all_methods: bool = bool(cfg.stats_for_all_methods)
        allowlist = cfg.individual_method_stats_allowlist
        self.allowlist: frozenset[tuple[str, str]] = frozenset(
            (s.name, m)
            for s in (allowlist.services if allowlist is not None else ())
            for m in s.method_names
        )
        # Applies to names taken from the path only (stats_for_all_methods); an allowlisted
        # service keeps its name as configured (Envoy symbolizes the configured one).
        self.replace_dots: bool = cfg.replace_dots_in_grpc_service_name
        self.upstream_stats: bool = cfg.enable_upstream_stats

    def names(self, target: bytes) -> str | None:
        """The part of the stat names after `grpc.` for a call to `target`: `svc.method.`,
        or "" without per-method names (a method not allowlisted is counted so too); None
        when the path is not `/service/method`, and the call is not counted at all."""
        names = service_and_method(target)
        if names is None:
            return None
        service, method = names
        if self.all_methods:
            if self.replace_dots:
                service = service.replace(".", "_")
            return f"{service}.{method}."
        if names in self.allowlist:
            return f"{service}.{method}."
        return ""


def _routed_cluster(state: Any) -> Cluster | None:
    """The cluster the router sent the request to (a weighted cluster's pick is the router's,
    made once per request): its UpstreamRequest's, or a mirrored request's real one's."""
    real = getattr(state, "real", state)
    cluster = getattr(real, "cluster", None)
    return cluster if isinstance(cluster, Cluster) else None


class GrpcStatsFilter(HttpFilter):
    """One stream. `prefix` is its stats' prefix (`cluster.<name>.grpc.[svc.method.]`) once
    the call is tracked; a weighted-cluster call sets `names` and learns its cluster from
    the router when it first charges something."""

    __slots__ = (
        "config",
        "names",
        "prefix",
        "request_end",
        "requests",
        "response_body",
        "responses",
        "tracked",
    )

    def __init__(self, callbacks: FilterCallbacks, config: GrpcStatsConfig) -> None:
        super().__init__(callbacks)
        self.config = config
        self.tracked = False
        self.prefix = ""
        self.names = ""
        self.requests: FrameCounter | None = None
        self.responses: FrameCounter | None = None
        # When the request's end passed this filter on its way upstream (monotonic seconds,
        # 0.0 before): where upstream_rq_time starts (Envoy: the last byte sent upstream).
        self.request_end = 0.0
        self.response_body = False

    # request ---------------------------------------------------------------------------
    def decode_headers(self, head: Any, end_stream: bool) -> int:
        if not head.target or not is_grpc_request(head.headers):
            return CONTINUE
        route = self.callbacks.route()
        if route is None or route.direct_status is not None:
            return CONTINUE  # no route entry, so no cluster (Envoy's clusterInfo() is null)
        config = self.config
        names = config.names(head.target)
        if names is None:
            return CONTINUE
        if route.weighted is not None:
            self.names = names
        else:
            name = route.cluster
            if name is None:
                name = route.choose_cluster(head.headers)[1]  # cluster_header
            cluster = config.clusters.get(name) if name is not None else None
            if cluster is None:
                return CONTINUE
            self.prefix = cluster.info.scope.prefix + "grpc." + names
        self.tracked = True
        self.requests = FrameCounter()
        if end_stream:
            self._request_ended()
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        requests = self.requests
        if requests is None:
            return CONTINUE
        if data:
            delta = requests.inspect(data)
            if delta:
                self._add("request_message_count", delta)
        if end_stream:
            self._request_ended()
        return CONTINUE

    def decode_trailers(self, trailers: Headers) -> int:
        if self.tracked:
            self._request_ended()
        return CONTINUE

    def _request_ended(self) -> None:
        if self.config.upstream_stats:
            self.request_end = time.monotonic()

    # response --------------------------------------------------------------------------
    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        if not self.tracked:
            return CONTINUE
        status = first_value(head.headers, b"grpc-status")
        if getattr(self.callbacks, "replied", False):
            # A local reply: Envoy shapes it for a gRPC request before the encoder filters
            # (trailers-only, grpc-status from its HTTP status unless it carries one), so it
            # is charged as such; it has no upstream time (nothing came from upstream).
            if status is None and head.status != 200:
                status = grpc_local_reply(head.status, b"")[0][1]
            self._charge(status)
            return CONTINUE
        if is_grpc_response(head, end_stream):
            self.responses = FrameCounter(response=True)
        self._charge(status)
        if end_stream:
            self._upstream_time()
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if data:
            self.response_body = True
            responses = self.responses
            if responses is not None:
                delta = responses.inspect(data)
                if delta:
                    self._add("response_message_count", delta)
        elif end_stream and self.request_end and not self.response_body:
            # A response that ends with no body and no trailers: an HTTP/2 upstream's
            # trailers-only answer (HEADERS with END_STREAM) reaches the filters as its head,
            # then an empty end; Envoy's filter sees the end with the head and times it there.
            self._upstream_time()
        return CONTINUE

    def encode_trailers(self, trailers: Headers) -> int:
        if self.tracked:
            self._charge(first_value(trailers, b"grpc-status"))
            self._upstream_time()
        return CONTINUE

    # charging --------------------------------------------------------------------------
    def _stat_prefix(self) -> str | None:
        prefix = self.prefix
        if not prefix:
            cluster = _routed_cluster(self.callbacks.exchange.state)
            if cluster is None:
                return None
            prefix = self.prefix = cluster.info.scope.prefix + "grpc." + self.names
        return prefix

    def _add(self, name: str, n: int) -> None:
        prefix = self._stat_prefix()
        if prefix is not None:
            self.config.store.counter(prefix + name).value += n

    def _charge(self, status: bytes | None) -> None:
        """Grpc::ContextImpl::chargeStat: the status's own counter, success (status 0) or
        failure, and total; nothing when the response carried no grpc-status."""
        if status is None:
            return
        prefix = self._stat_prefix()
        if prefix is None:
            return
        counter = self.config.store.counter
        counter(prefix + status.decode("latin-1")).value += 1
        counter(prefix + ("success" if status == b"0" else "failure")).value += 1
        counter(prefix + "total").value += 1

    def _upstream_time(self) -> None:
        """upstream_rq_time with enable_upstream_stats: from the request's end going upstream
        to the response's end, in whole milliseconds; not recorded when the request never
        ended (Envoy needs both upstream timestamps)."""
        start = self.request_end
        if not start:
            return
        prefix = self._stat_prefix()
        if prefix is not None:
            elapsed = int((time.monotonic() - start) * 1000.0)
            self.config.store.histogram(prefix + "upstream_rq_time").record(elapsed)


def build(cfg: Any, ctx: FilterContext) -> FilterFactory:
    config = GrpcStatsConfig(cfg, ctx)
    return lambda callbacks: GrpcStatsFilter(callbacks, config)
