"""Sans-I/O HTTP/1.1 on httptools: bytes in, head/body/end calls out; heads serialised as bytes.

Theory of operation: a `RequestDecoder`/`ResponseDecoder` owns one httptools parser and turns
its callbacks into three calls on a sink (`on_head`, `on_body`, `on_end`). Header names are
lower-cased once, as Envoy does for HTTP/1 (RFC 9110 §5.1: names are case-insensitive), and kept
as a flat list of `(name, value)` byte pairs; nothing else copies them. Framing checks that
llhttp does not make (header size and count limits) live here too; every violation becomes a
`ProtocolError` with the status to answer (400, 431). Serialisation builds a head with one join.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from typing import Protocol

import httptools

from podproxy.errors import ProtocolError

Headers = list[tuple[bytes, bytes]]

# HttpConnectionManager.max_request_headers_kb default (Envoy: 60 KiB, over it answers 431).
DEFAULT_MAX_HEADERS_BYTES = 60 * 1024
# common_http_protocol_options.max_headers_count default (Envoy: 100, over it answers 431).
DEFAULT_MAX_HEADERS_COUNT = 100

# RFC 9110 §7.6.1 connection-specific fields, plus the ones Envoy also strips
# (conn_manager_utility.cc): never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"http2-settings",
    }
)


def _status_line(code: int) -> bytes:
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1")


# Precomputed status lines for every registered code (hot path: one dict lookup).
STATUS_LINES: dict[int, bytes] = {s.value: _status_line(s.value) for s in HTTPStatus}


def status_line(code: int) -> bytes:
    line = STATUS_LINES.get(code)
    return line if line is not None else _status_line(code)


class _DateCache:
    """The `date` header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode("ascii")
        return self._value


http_date = _DateCache()


class RequestHead:
    """A parsed request line and headers. `headers` names are lower-case; `host` is the
    (first) Host value, picked out while parsing because every request needs it."""

    __slots__ = ("headers", "host", "keep_alive", "method", "target", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        host: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.host = host

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

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status}>"


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


class RequestDecoder:
    """Decodes a stream of (possibly pipelined) requests into calls on a `RequestSink`."""

    __slots__ = (
        "_connection",
        "_headers",
        "_host",
        "_parser",
        "_size",
        "_url",
        "in_head",
        "max_headers_bytes",
        "max_headers_count",
        "sink",
    )

    def __init__(
        self,
        sink: RequestSink,
        max_headers_bytes: int = DEFAULT_MAX_HEADERS_BYTES,
        max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
    ) -> None:
        self.sink = sink
        self.max_headers_bytes = max_headers_bytes
        self.max_headers_count = max_headers_count
        self._parser = httptools.HttpRequestParser(self)
        self._headers: Headers = []
        self._url = b""
        self._size = 0
        self._host: bytes | None = None
        self._connection = False  # a Connection (or Proxy-Connection) header is in this head
        # In a request head, or between requests (where the next bytes start one).
        self.in_head = True

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises `ProtocolError` (with a status hint) on a malformed stream."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise ProtocolError("upgrade requests are not supported", 400) from exc
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"bad request: {exc}", 400) from exc
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"bad request: {exc}", 400) from exc

    def close(self) -> None:
        """Let go of the parser and the sink (the connection is gone): no reference cycle
        is left for the garbage collector. `feed` must not be called after this."""
        del self._parser
        del self.sink

    # httptools callbacks (no on_message_begin: per-message state is reset when a head is
    # handed on, which saves a call per message) -----------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._size += len(url)
        if self._size > self.max_headers_bytes:
            raise ProtocolError("request headers too large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        headers = self._headers
        if self._size > self.max_headers_bytes or len(headers) >= self.max_headers_count:
            raise ProtocolError("request headers too large", 431)
        name = name.lower()
        if name == b"host":
            if self._host is None:
                self._host = value
        elif name == b"connection" or name == b"proxy-connection":
            self._connection = True  # llhttp reads both for keep-alive
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        keep_alive = p.should_keep_alive()
        if keep_alive and not self._connection:
            # Without Connection/Proxy-Connection llhttp keeps a request alive exactly when it is
            # HTTP/1.1 (major and minor above 0; 1.1 is the only such version it accepts), so
            # the version string, which httptools formats on each call, is not asked for.
            version = "1.1"
        else:
            version = p.get_http_version()
            self._connection = False
        head = RequestHead(
            p.get_method(), self._url, version, self._headers, keep_alive, self._host
        )
        self._headers = []
        self._url = b""
        self._size = 0
        self._host = None
        self.in_head = False
        self.sink.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self.sink.on_request_body(body)

    def on_message_complete(self) -> None:
        self.in_head = True
        self.sink.on_request_end()


class _SkipBody(Exception):
    """Raised from a callback to stop httptools after the head of a response to HEAD."""


class ResponseDecoder:
    """Decodes one response at a time into calls on a `ResponseSink`.

    `expect_no_body()` must be called before feeding the response to a HEAD request: httptools
    cannot be told that such a response has no body, so the decoder stops after its head and
    starts a fresh parser (RFC 9112 §6.3 rule 1). 1xx interim responses are reported through
    `on_informational` and not as the final head. `eof()` ends a close-delimited body.
    """

    __slots__ = (
        "_body_until_close",
        "_headers",
        "_no_body",
        "_parser",
        "_size",
        "in_message",
        "max_headers_bytes",
        "on_informational",
        "sink",
    )

    def __init__(
        self, sink: ResponseSink, max_headers_bytes: int = DEFAULT_MAX_HEADERS_BYTES
    ) -> None:
        self.sink = sink
        self.max_headers_bytes = max_headers_bytes
        self.on_informational: object = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._size = 0
        self._no_body = False
        self._body_until_close = False
        self.in_message = False

    def expect_no_body(self, no_body: bool = True) -> None:
        self._no_body = no_body

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _SkipBody):
                self._parser = httptools.HttpResponseParser(self)
                self.in_message = False
                self.sink.on_response_end()
                return
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"bad response: {exc}", 503) from exc
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"bad response: {exc}", 503) from exc

    def close(self) -> None:
        """As `RequestDecoder.close`: no cycle left behind. `feed` must not follow."""
        del self._parser
        del self.sink
        self.on_informational = None

    def eof(self) -> bool:
        """The peer closed. True if that ended a close-delimited body (a complete response)."""
        if self.in_message and self._body_until_close:
            self.in_message = False
            self.sink.on_response_end()
            return True
        return False

    # httptools callbacks (no on_message_begin, as in RequestDecoder) ---------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > self.max_headers_bytes:
            raise ProtocolError("response headers too large", 503)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = p.get_status_code()
        headers = self._headers
        self._headers = []
        self._size = 0
        self.in_message = True
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols", 503)
            cb = self.on_informational
            if callable(cb):
                cb(status, headers)
            return
        content_length: int | None = None
        chunked = False
        for k, v in headers:
            if k == b"content-length":
                content_length = int(v)
            elif k == b"transfer-encoding":
                chunked = v.lower().rstrip().endswith(b"chunked")
        no_body = self._no_body or status == 204 or status == 304
        self._body_until_close = not no_body and not chunked and content_length is None
        keep_alive = p.should_keep_alive() and not self._body_until_close
        self.sink.on_response_head(
            ResponseHead(status, headers, keep_alive, content_length, chunked)
        )
        if self._no_body:
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        if body:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if not self.in_message:
            return
        if self._parser.get_status_code() < 200:
            return
        self.in_message = False
        self.sink.on_response_end()


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def format_headers(headers: Headers) -> bytes:
    return b"".join([k + b": " + v + b"\r\n" for k, v in headers])


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"text/plain",
    extra: Headers | None = None,
    server: bytes | None = None,
    close: bool = False,
) -> bytes:
    """A complete response with a content-length body: local replies and admin answers."""
    parts = [status_line(status)]
    if body or status not in (204, 304):
        parts.append(b"content-length: %d\r\n" % len(body))
    if body:
        parts.append(b"content-type: " + content_type + b"\r\n")
    if extra:
        parts.append(format_headers(extra))
    parts.append(b"date: " + http_date.get() + b"\r\n")
    if server:
        parts.append(b"server: " + server + b"\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)
