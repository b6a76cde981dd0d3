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
from dataclasses import dataclass
from typing import Any, Protocol

from podproxy.http.flow import FlowControl

Headers = list[tuple[bytes, bytes]]

# HttpConnectionManager.max_request_headers_kb default (Envoy: 60 KiB, over it answers 431).
DEFAULT_MAX_HEADERS_BYTES = 60 * 1024
# common_http_protocol_options.max_headers_count default (Envoy: 100, over it answers 431).
DEFAULT_MAX_HEADERS_COUNT = 100


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
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.version}>"


class ResponseHead:
    """A parsed status line and headers. `headers` names are lower-case.

    No HTTP version: nothing downstream depends on it (keep-alive is `keep_alive`), and asking
    httptools for it formats a string (half a microsecond a response)."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status}>"


class StreamConnection(Protocol):
    """What a stream's handler may ask of the downstream connection that carries it."""

    loop: asyncio.AbstractEventLoop
    flow: FlowControl | None
    remote: tuple[str, int]
    draining: bool

    def write(self, data: bytes) -> None: ...
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
    # The route the request matched (set by the router, or earlier by a filter that asked).
    route: Any = None
    # The stream's filter manager when the HCM has filters besides the router (else None).
    filters: Any = None

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
    def log_exchange(self, ex: Exchange) -> None: ...
