"""The codec-neutral request/response model: what every codec produces and every filter sees.

A codec (HTTP/1 today, HTTP/2 next) decodes a request head into a `RequestHead` (method, target
or :path, authority, header pairs with lower-case names) and hands it, with the body and the
end, to a `StreamHandler` as an `Exchange` (Envoy's ActiveStream). The response travels back as
a `ResponseHead` plus body bytes. An `Exchange` holds its connection only through
`StreamConnection`, the few calls a handler may make, so nothing above the codec imports one.
Header lists are the codec's own, never copied: a filter that changes headers edits them in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from podproxy.http.flow import FlowControl

Headers = list[tuple[bytes, bytes]]

# HttpConnectionManager.max_request_headers_kb default (Envoy: 60 KiB, over it answers 431).
DEFAULT_MAX_HEADERS_BYTES = 60 * 1024
# common_http_protocol_options.max_headers_count default (Envoy: 100, over it answers 431).
DEFAULT_MAX_HEADERS_COUNT = 100


def first_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


class RequestHead:
    """A parsed request line and headers. `headers` names are lower-case; `host` is the
    (first) Host value, picked out while parsing because every request needs it."""

    __slots__ = ("headers", "host", "keep_alive", "method", "target", "upgrade", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        host: bytes | None = None,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.host = host
        # The protocol an upgrade request asks for (`websocket`, `CONNECT` for a CONNECT
        # request); None for a plain request. Set only where llhttp saw an upgrade.
        self.upgrade = upgrade

    def get(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.version}>"


class ResponseHead:
    """A parsed status line and headers. `headers` names are lower-case.

    No HTTP version: nothing downstream depends on it (keep-alive is `keep_alive`), and asking
    httptools for it formats a string (half a microsecond a response)."""

    __slots__ = ("chunked", "content_length", "end_stream", "headers", "keep_alive", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        end_stream: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        # The head ended the response (an HTTP/2 HEADERS frame with END_STREAM): no body
        # follows, whatever the framing fields say.
        self.end_stream = end_stream

    def get(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status}>"


_GRPC = b"application/grpc"


def is_grpc_request(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: content-type exactly `application/grpc` or
    `application/grpc+...` (case-sensitive; `application/grpc-web` is not gRPC)."""
    for k, ct in headers:
        if k == b"content-type":
            return ct.startswith(_GRPC) and (len(ct) == 16 or ct[16] == 43)  # "+"
    return False


# Grpc::Utility::httpToGrpcStatus: the gRPC status a local reply's HTTP status stands for.
_GRPC_STATUS_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN = 2
# What grpc-message leaves as it is (the gRPC spec's percent-encoding: printable ASCII but %).
_GRPC_MESSAGE_PLAIN = frozenset(range(0x20, 0x7F)) - {0x25}


# gRPC status codes local replies name (grpc/status.h WellKnownGrpcStatus).
GRPC_DEADLINE_EXCEEDED = 4
GRPC_RESOURCE_EXHAUSTED = 8


def given_grpc_status(extra: Headers | None) -> bytes | None:
    """The grpc-status a local reply's headers already carry (a filter's own gRPC status:
    Envoy's prepareLocalReply keeps a grpc-status it finds there), or None."""
    if extra:
        for k, v in extra:
            if k == b"grpc-status":
                return v
    return None


def grpc_local_reply(status: int, body: bytes, grpc_status: bytes | None = None) -> Headers:
    """The fields of Envoy's local reply to a gRPC request (trailers-only, answered 200 with
    no body): `grpc_status` when given, else the gRPC status that `status` maps to, and the
    body as grpc-message."""
    if grpc_status is None:
        grpc_status = b"%d" % _GRPC_STATUS_OF_HTTP.get(status, _GRPC_UNKNOWN)
    fields: Headers = [(b"grpc-status", grpc_status)]
    if body:
        if all(b in _GRPC_MESSAGE_PLAIN for b in body):
            message = body
        else:
            message = b"".join(
                bytes((b,)) if b in _GRPC_MESSAGE_PLAIN else b"%%%02X" % b for b in body
            )
        fields.append((b"grpc-message", message))
    return fields


# What a gRPC local reply sets itself, dropped from the reply's other headers.
_GRPC_REPLY_OWN = frozenset({b"content-type", b"grpc-status"})
# onStreamMaxDurationReached gives a gRPC client DEADLINE_EXCEEDED (not 504's UNAVAILABLE).
DEADLINE_EXCEEDED_FIELDS: Headers = [(b"grpc-status", b"%d" % GRPC_DEADLINE_EXCEEDED)]


def grpc_shaped_reply(
    request_headers: Sequence[tuple[bytes, bytes]],
    status: int,
    body: bytes,
    extra: Headers | None,
) -> tuple[int, bytes, Headers | None]:
    """A local reply as Envoy's sendLocalReply sends it to a gRPC request (200, trailers-only:
    a head with no body, the status as grpc-status, the body as grpc-message; a grpc-status
    the reply carries already, a filter's own, is the one sent); any other request's reply
    as it is. Both codecs answer through this."""
    given = given_grpc_status(extra)
    if (status == 200 and given is None) or not is_grpc_request(request_headers):
        return status, body, extra
    grpc = [(b"content-type", b"application/grpc"), *grpc_local_reply(status, body, given)]
    return 200, b"", grpc + [(k, v) for k, v in extra or () if k not in _GRPC_REPLY_OWN]


class StreamConnection(Protocol):
    """What a stream's handler may ask of the downstream connection that carries it."""

    loop: asyncio.AbstractEventLoop
    flow: FlowControl | None
    remote: tuple[str, int]
    draining: bool

    def write(self, data: bytes) -> None: ...
    def write_trailers(self, ex: Exchange, trailers: Headers) -> None: ...
    def max_duration_reached(self, ex: Exchange) -> None: ...
    def drain_on_response(self) -> None: ...
    def response_head_sent(self, ex: Exchange, status: int) -> None: ...
    def finish(self, ex: Exchange, keep_alive: bool) -> None: ...
    def send_local_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        *,
        flags: str = "-",
        close: bool = False,
        extra: Headers | None = None,
        content_type: bytes = b"text/plain",
    ) -> None: ...


@dataclass(slots=True)
class Exchange:
    """One request and its response on a downstream connection (Envoy's ActiveStream)."""

    conn: StreamConnection
    head: RequestHead
    start: float
    request_complete: bool = False
    response_started: bool = False
    response_complete: bool = False
    status: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    flags: str = "-"
    upstream_host: str = "-"
    request_id: bytes = b""
    # The route's idle_timeout, when it overrides the connection manager's stream idle timeout.
    idle_timeout: float | None = None
    # Body received while the exchange waited behind another (pipelining; None until then).
    buffered: list[bytes] | None = None
    # The handler's own per-request state.
    state: Any = None
    # The stream's filter manager when the HCM has filters besides the router (else None).
    filters: Any = None
    # The trailers the request ended with (an HTTP/2 client's; HTTP/1 drops them).
    request_trailers: Headers | None = None

    @property
    def health_check(self) -> bool:
        """Whether the health check filter took this request for a health check (Envoy's
        StreamInfo::healthCheck()): the access log's `not_health_check` filter skips these.
        Kept on the stream's filter manager, which only that filter sets, so a stream without
        it pays nothing."""
        return bool(getattr(self.filters, "health_check", False))

    @health_check.setter
    def health_check(self, value: bool) -> None:
        self.filters.health_check = value

    def add_flag(self, flag: str) -> None:
        """Note a response flag (`UH`, `DI` ...); a stream may collect several."""
        self.flags = flag if self.flags == "-" else f"{self.flags},{flag}"


class StreamHandler(Protocol):
    """What the connection calls; `router.forwarder.Forwarder` and the admin implement it."""

    def on_request_head(self, ex: Exchange) -> None: ...
    def on_request_body(self, ex: Exchange, data: bytes) -> None: ...
    def on_request_end(self, ex: Exchange) -> None: ...
    def on_downstream_reset(self, ex: Exchange) -> None: ...
    def on_downstream_write_paused(self, ex: Exchange) -> None: ...
    def on_downstream_write_resumed(self, ex: Exchange) -> None: ...


class AccessLogger(Protocol):
    """Called by `http1.logged.LoggedConnection` for each stream it ends (the stream is an
    `access_log.StreamInfo` then)."""

    def log_exchange(self, ex: Any) -> None: ...
