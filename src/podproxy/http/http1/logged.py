"""Downstream connections whose streams are access-logged (HCM or admin `access_log`).

Used only when access logs are configured, so the common path pays nothing for them: the
listener picks `LoggedConnection` (or `LoggedHeadTimedConnection`) at config time. Their
exchanges are `LoggedExchange`s, which record what the log reads (times, the heads as sent,
upstream details) and satisfy `access_log.StreamInfo`. The line is written when the response
ends (`finish`) or the client goes away mid-stream (flag `DC`, as Envoy logs a reset stream).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from podproxy.access_log.stream_info import Headers
from podproxy.http.conn_manager import expects_body, trusted_xff_address
from podproxy.http.http1.downstream import DownstreamConnection, HeadTimedConnection
from podproxy.http.stream import AccessLogger, Exchange


def socket_address(sock: Any) -> str | None:
    """`ip:port` (`[ip]:port` for IPv6) as Envoy's Address::asString prints it."""
    if not sock or not isinstance(sock, tuple):
        return None
    host, port = sock[0], sock[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_head(head: bytes) -> tuple[bytes, Headers]:
    """A serialised HTTP/1 head as (start line, [(lower-case name, value)])."""
    end = head.find(b"\r\n\r\n")
    lines = (head if end < 0 else head[:end]).split(b"\r\n")
    # The heads podproxy writes have lower-case names and `name: value` lines.
    fields: Headers = [(n, v.strip()) for n, _, v in (line.partition(b": ") for line in lines[1:])]
    return lines[0], fields


@dataclass(slots=True)
class LoggedExchange(Exchange):
    """An `Exchange` that keeps what its access log reads (an `access_log.StreamInfo`)."""

    start_time: float = 0.0
    request_end: float | None = None
    first_upstream_byte: float | None = None
    response_end: float | None = None
    # The heads as written: to the upstream (Envoy's request header map after the connection
    # manager and router mutated it) and to the client. Parsed only if the log reads them.
    upstream_head: bytes | None = None
    response_head: bytes | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    upstream_transport_failure_reason: str | None = None
    route_name: str | None = None
    # Made up to answer a request whose head could not be read: it has no method or path.
    headless: bool = False
    # The heads above, parsed once (at log time, by the first operator that reads them).
    parsed_upstream_head: tuple[bytes, Headers] | None = field(default=None, repr=False)
    parsed_response_head: Headers | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # A request without a body ends with its head (Envoy: headers with end_stream), even
        # if the reply leaves before the decoder reports the end.
        if not expects_body(self.head):
            self.request_end = self.start

    def _forwarded(self) -> tuple[bytes, Headers] | None:
        parsed = self.parsed_upstream_head
        if parsed is None:
            head = self.upstream_head
            if head is None:
                return None
            line, fields = parse_head(head)
            # The header map Envoy logs holds the authority as :authority, not Host.
            host = next((v for k, v in fields if k == b"host"), None)
            fields = [(k, v) for k, v in fields if k != b"host"]
            parsed = self.parsed_upstream_head = (line, [*fields, (b":authority", host or b"")])
        return parsed

    @property
    def request_headers(self) -> Headers:
        fwd = self._forwarded()
        if fwd is None:
            return self.head.headers
        return fwd[1][:-1]

    @property
    def method(self) -> bytes | None:
        return None if self.headless else self.head.method

    @property
    def path(self) -> bytes | None:
        if self.headless:
            return None
        fwd = self._forwarded()
        if fwd is None:
            return self.head.target
        return fwd[0].split(b" ")[1]

    @property
    def authority(self) -> bytes | None:
        if self.headless:
            return None
        fwd = self._forwarded()
        if fwd is not None:
            return fwd[1][-1][1] or None
        return self.head.host

    @property
    def scheme(self) -> bytes:
        return b"http"

    @property
    def protocol(self) -> str:
        return "HTTP/" + self.head.version

    @property
    def response_headers(self) -> Headers | None:
        parsed = self.parsed_response_head
        if parsed is None and self.response_head is not None:
            parsed = self.parsed_response_head = parse_head(self.response_head)[1]
        return parsed

    @property
    def response_trailers(self) -> Headers | None:
        return None  # the HTTP/1 codec passes no trailers on

    @property
    def downstream_direct_remote_address(self) -> str:
        return downstream_direct_remote_address(self)

    @property
    def downstream_remote_address(self) -> str:
        return downstream_remote_address(self)

    @property
    def downstream_local_address(self) -> str | None:
        return downstream_local_address(self)


# The downstream addresses of any exchange on an HTTP/1 connection (the access log's and the
# formatted header values' `StreamInfo`s both read them).


def downstream_direct_remote_address(ex: Exchange) -> str:
    return socket_address(ex.conn.remote) or "-"


def downstream_remote_address(ex: Exchange) -> str:
    # Envoy's remote address: with use_remote_address off (or trusted hops), the address
    # from the client's x-forwarded-for (getLastAddressFromXFF), port 0; else the peer.
    skip = cast(DownstreamConnection, ex.conn).config.remote_from_xff
    if skip is not None:
        xff = b",".join(v for k, v in ex.head.headers if k == b"x-forwarded-for")
        client = trusted_xff_address(xff, skip) if xff else None
        if client is not None:
            return f"[{client}]:0" if ":" in client else f"{client}:0"
    return downstream_direct_remote_address(ex)


def downstream_local_address(ex: Exchange) -> str | None:
    transport = cast(DownstreamConnection, ex.conn).transport
    return None if transport is None else socket_address(transport.get_extra_info("sockname"))


def note_route(ex: Exchange, route_name: str, cluster: str | None) -> None:
    """The router's choice, for a stream answered before it went upstream."""
    if isinstance(ex, LoggedExchange):
        ex.route_name = route_name
        ex.upstream_cluster = cluster


class LoggedConnection(DownstreamConnection):
    """A `DownstreamConnection` that access-logs each stream it ends."""

    exchange_type = LoggedExchange

    def on_request_end(self) -> None:
        ex = self.decoding
        if isinstance(ex, LoggedExchange) and ex.request_end is None:
            ex.request_end = self.loop.time()
        super().on_request_end()

    def local_reply_written(self, ex: Exchange, data: bytes) -> None:
        if isinstance(ex, LoggedExchange):
            ex.response_head = data[: data.index(b"\r\n\r\n") + 4]

    def _headless_exchange(self) -> Exchange:
        ex = super()._headless_exchange()
        if isinstance(ex, LoggedExchange):
            ex.headless = True
            ex.request_end = None
        return ex

    def finish(self, ex: Exchange, keep_alive: bool) -> None:
        if not ex.response_complete and isinstance(ex, LoggedExchange):
            self._log(ex)
        super().finish(ex, keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        ex = self.active
        super().connection_lost(exc)
        if isinstance(ex, LoggedExchange) and ex.response_end is None:
            # The client went away mid-stream: Envoy logs the stream with flag DC.
            ex.add_flag("DC")
            self._log(ex)

    def _log(self, ex: LoggedExchange) -> None:
        log_ended(ex, self.loop.time(), self.config.access_logger)


def log_ended(ex: LoggedExchange, now: float, logger: AccessLogger | None) -> None:
    """The stream ended (or was reset) at loop time `now`: stamp it and write its log line
    (either codec's connection calls this)."""
    ex.response_end = now
    ex.start_time = time.time() - (now - ex.start)
    if logger is not None:
        logger.log_exchange(ex)


class LoggedHeadTimedConnection(LoggedConnection, HeadTimedConnection):
    """Both: access-logged, and timing request heads (`HeadTimedConnection`)."""


def connection_class(times_heads: bool, logged: bool) -> type[DownstreamConnection]:
    """The downstream connection type a listener's config calls for."""
    if logged:
        return LoggedHeadTimedConnection if times_heads else LoggedConnection
    return HeadTimedConnection if times_heads else DownstreamConnection
