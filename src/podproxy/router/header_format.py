"""Formatted header values (`%COMMAND%`) of route header mutations, and what they read.

Envoy 1.40's HeaderParser runs every request/response_headers_to_add value through its
substitution formatter with omit_empty_values: an operator without a value renders as "", and
a header whose value renders empty is not added unless keep_empty_value. `header_value` compiles
a value once, with the access log's formatter: a literal stays bytes, so only a mutation that has
operators does anything per request. That one is handed a `HeaderInfo`, the formatter's
`StreamInfo` read off the plain `Exchange` at the moment Envoy evaluates it (the router's
finalizeRequestHeaders / finalizeResponseHeaders, or a direct response's local reply).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from podproxy.access_log.formatter import TextFormatter, parse
from podproxy.access_log.stream_info import Headers
from podproxy.http.http1.logged import (
    downstream_direct_remote_address,
    downstream_local_address,
    downstream_remote_address,
    parse_head,
    socket_address,
)
from podproxy.http.stream import Exchange

# The operators whose values podproxy gives in headers as Envoy 1.40 does (each checked side
# by side). Refused: REQUEST_DURATION and RESPONSE_TX_DURATION (a plain Exchange keeps neither
# the request's end nor, mid-stream, anything Envoy would print), and every operator the access
# log does not have.
HEADER_OPERATORS = frozenset(
    {
        "REQ",
        "RESP",
        "TRAILER",
        "START_TIME",
        "HOSTNAME",
        "PROTOCOL",
        "RESPONSE_CODE",
        "RESPONSE_FLAGS",
        "RESPONSE_FLAGS_LONG",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "RESPONSE_DURATION",
        "UPSTREAM_HOST",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        "ROUTE_NAME",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        *(
            f"{prefix}_{suffix}"
            for prefix in (
                "UPSTREAM_LOCAL",
                "UPSTREAM_REMOTE",
                "DOWNSTREAM_REMOTE",
                "DOWNSTREAM_DIRECT_REMOTE",
                "DOWNSTREAM_LOCAL",
            )
            for suffix in ("ADDRESS", "ADDRESS_WITHOUT_PORT", "PORT")
        ),
    }
)

FormattedValue = Callable[["HeaderInfo"], bytes]


def header_value(fmt: str) -> bytes | FormattedValue:
    """A header value as Envoy parses it: bytes when it has no operator (`%%` is a literal
    `%`), else a function of the stream. Raises `FormatError` with Envoy's message (or
    podproxy's for an operator it cannot render in a header)."""
    segments = parse(fmt, HEADER_OPERATORS)
    if all(isinstance(s, str) for s in segments):
        return "".join(s for s in segments if isinstance(s, str)).encode()
    # Typed as taking a HeaderInfo: mypy checks that one is a formatter's StreamInfo.
    return TextFormatter(fmt, omit_empty_values=True, allowed=HEADER_OPERATORS).format


class HeaderInfo:
    """The formatter's `StreamInfo` while a header mutation runs on one side of a stream.

    `bind` hands it the header list being mutated (the request's or the response's): a level
    reads what the levels before it added, as Envoy's formatter reads the live header map.
    Values that only exist once the stream ends are absent (Envoy prints none either), and
    DURATION is the time so far (Envoy's currentDuration).
    """

    __slots__ = (
        "_cluster",
        "_forwarded",
        "_live",
        "_response",
        "_xfp",
        "ex",
        "first_upstream_byte",
        "response_end",
        "route_name",
        "status",
        "upstream_host",
        "upstream_local_address",
    )

    def __init__(
        self,
        ex: Exchange,
        route_name: str,
        *,
        response: bool,
        status: int = 0,
        forwarded: bytes | None = None,
        cluster: Callable[[], str | None] | None = None,
        upstream_host: str = "-",
        upstream_local_address: str | None = None,
        xfp: bytes | None = None,
    ) -> None:
        self.ex = ex
        self._xfp = xfp
        self.route_name = route_name or None
        self._response = response
        self.status = status
        self._forwarded: bytes | tuple[bytes, Headers] | None = forwarded
        self._cluster = cluster
        self.upstream_host = upstream_host
        self.upstream_local_address = upstream_local_address
        self._live: Headers | None = None
        now = ex.conn.loop.time()
        self.response_end = now
        # RESPONSE_DURATION: the upstream's first byte is what is being answered.
        self.first_upstream_byte = now if upstream_host != "-" else None

    def bind(self, headers: Headers) -> None:
        self._live = headers

    def _request_head(self) -> tuple[bytes, Headers] | None:
        """The request line and fields as forwarded upstream (with `:authority` last)."""
        fwd = self._forwarded
        if fwd is None or isinstance(fwd, tuple):
            return fwd
        line, fields = parse_head(fwd)
        host = next((v for k, v in fields if k == b"host"), b"")
        parsed = (line, [*(f for f in fields if f[0] != b"host"), (b":authority", host)])
        self._forwarded = parsed
        return parsed

    @property
    def request_headers(self) -> Headers:
        live = self._live
        if not self._response and live is not None:
            # The lines the router mutates lack the body's framing, which it writes after
            # them; Envoy's header map has content-length all along.
            length = self.ex.head.get(b"content-length")
            return live if length is None else [*live, (b"content-length", length)]
        fwd = self._request_head()
        if fwd is not None:
            return fwd[1][:-1]
        xfp = self._xfp
        headers = self.ex.head.headers
        if xfp is None:
            return headers
        # A local reply's request never reached the router's forwarding step: give it the
        # x-forwarded-proto Envoy's connection manager sets before any filter runs.
        return [*(h for h in headers if h[0] != b"x-forwarded-proto"), (b"x-forwarded-proto", xfp)]

    @property
    def method(self) -> bytes:
        return self.ex.head.method

    @property
    def path(self) -> bytes:
        fwd = self._request_head()
        return self.ex.head.target if fwd is None else fwd[0].split(b" ")[1]

    @property
    def authority(self) -> bytes | None:
        fwd = self._request_head()
        return self.ex.head.host if fwd is None else fwd[1][-1][1]

    @property
    def scheme(self) -> bytes:
        return b"http"

    @property
    def protocol(self) -> str:
        return "HTTP/" + self.ex.head.version

    @property
    def response_headers(self) -> Headers | None:
        return self._live if self._response else None

    @property
    def response_trailers(self) -> Headers | None:
        return None

    @property
    def flags(self) -> str:
        return self.ex.flags

    @property
    def bytes_received(self) -> int:
        return self.ex.bytes_received

    @property
    def bytes_sent(self) -> int:
        return self.ex.bytes_sent

    @property
    def request_id(self) -> bytes:
        return self.ex.request_id

    @property
    def start(self) -> float:
        return self.ex.start

    @property
    def start_time(self) -> float:
        return time.time() - (self.response_end - self.ex.start)

    @property
    def request_end(self) -> float | None:
        return None  # REQUEST_DURATION is refused in headers

    @property
    def upstream_cluster(self) -> str | None:
        return None if self._cluster is None else self._cluster()

    @property
    def upstream_transport_failure_reason(self) -> str | None:
        return None

    @property
    def downstream_remote_address(self) -> str:
        return downstream_remote_address(self.ex)

    @property
    def downstream_direct_remote_address(self) -> str:
        return downstream_direct_remote_address(self.ex)

    @property
    def downstream_local_address(self) -> str | None:
        return downstream_local_address(self.ex)


def request_info(ex: Exchange, route: Any, clusters: Mapping[str, Any]) -> HeaderInfo:
    """For the route's request mutations, before the upstream host is known (Envoy runs
    finalizeRequestHeaders before the router picks it: no UPSTREAM_HOST yet)."""

    def cluster() -> str | None:
        name = route.cluster
        if name is None and route.cluster_header is not None:
            name = ex.head.get(route.cluster_header)
            name = name.decode("latin-1") if name else None
        c = clusters.get(name) if name is not None else None
        return None if c is None else str(c.info.observability_name)

    return HeaderInfo(ex, route.name, response=False, cluster=cluster)


def response_info(
    ex: Exchange, route: Any, status: int, forwarded: bytes, cluster: str, upstream: Any
) -> HeaderInfo:
    """For the route's response mutations on an upstream's response: the request as it was
    forwarded (rewrites and request mutations applied), the host and connection it went on."""
    transport = getattr(upstream, "transport", None)
    local = None if transport is None else socket_address(transport.get_extra_info("sockname"))
    return HeaderInfo(
        ex,
        route.name,
        response=True,
        status=status,
        forwarded=forwarded,
        cluster=lambda: cluster,
        upstream_host=ex.upstream_host,
        upstream_local_address=local,
    )


def local_reply_info(ex: Exchange, route: Any, forwarded_proto: bytes) -> HeaderInfo:
    """For a direct response or redirect: the request as the client sent it, with the
    x-forwarded-proto it would be forwarded with. Envoy's RESPONSE_CODE is still 0 when the
    route's response headers are added to a local reply (checked side by side with Envoy 1.40)."""
    return HeaderInfo(ex, route.name, response=True, xfp=forwarded_proto)
