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

from podproxy.errors import ProtocolError, UnexpectedUpgrade
from podproxy.http.stream import (
    DEFAULT_MAX_HEADERS_BYTES,
    DEFAULT_MAX_HEADERS_COUNT,
    Headers,
    RequestHead,
    ResponseHead,
)

# A cluster's max_response_headers_kb default (Envoy 1.40: 80 KiB, over it answers 502).
DEFAULT_MAX_RESPONSE_HEADERS_BYTES = 80 * 1024
# Head sizes are counted as Envoy counts them, from the request (status) line to the blank line
# that ends the head: the parts llhttp hands over, plus the framing it does not. A head starts
# at the framing of `GET <url> HTTP/1.1\r\n` and the final CRLF (17 bytes and the url; other
# methods are off by their extra letters), a response at `HTTP/1.1 200 OK\r\n` and the final
# CRLF; each field adds `name: value\r\n` (optional whitespace llhttp dropped is not counted).
_REQUEST_HEAD_START = 17
_RESPONSE_HEAD_START = 19

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


class SwitchingProtocols(UnexpectedUpgrade):
    """An upstream answered `101 Switching Protocols`: what follows its head is another
    protocol. Raised by `ResponseDecoder.feed` with the head and the bytes after it in that
    read; the connection decides whether its request asked for an upgrade (then the tunnel
    takes over) or not (then it is Envoy's 503 for an unexpected upgrade)."""

    def __init__(self, head: ResponseHead, tail: bytes) -> None:
        super().__init__("unexpected 101 Switching Protocols", 503)
        self.head = head
        self.tail = tail


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


class RequestDecoder:
    """Decodes a stream of (possibly pipelined) requests into calls on a `RequestSink`.

    Trailers of a chunked request are read and dropped, as Envoy's HTTP/1 codec does without
    `enable_trailers`: they never reach the request, or the next one. An `Upgrade: h2c` request
    is answered on HTTP/1.1 with its upgrade headers stripped (Envoy does not support h2c
    upgrades); any other upgrade, or CONNECT, reaches the sink with `head.upgrade` set, and
    the bytes after it are not parsed as HTTP (the sink answers and closes).
    """

    __slots__ = (
        "_bound",
        "_connection",
        "_counting",
        "_fed",
        "_h2c_body",
        "_head_began_earlier",
        "_headers",
        "_host",
        "_parser",
        "_size",
        "_special_end",
        "_synthetic",
        "_url",
        "in_head",
        "max_headers_bytes",
        "max_headers_count",
        "sink",
        "stopped",
        "upgrade_tail",
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
        # The head's size is counted exactly (`_size`, `_counting`) only once it could be over
        # the limit: `_bound`, the bytes fed since the head could have begun, says when. Most
        # heads arrive whole in a read smaller than the limit and are never counted.
        self._size = _REQUEST_HEAD_START
        self._counting = False
        self._bound = 0
        self._fed = 0  # the length of the read being parsed
        self._head_began_earlier = False
        self._host: bytes | None = None
        self._connection = False  # a Connection (or Proxy-Connection) header is in this head
        # An h2c upgrade request with a body: llhttp skipped the body, which is re-framed after
        # the upgrade pause (see `_resume_after_h2c`). Holds the framing header line.
        self._h2c_body: bytes | None = None
        self._synthetic = False  # parsing the re-framing head: no callbacks reach the sink
        # on_message_complete has more to do: the h2c body is still to come, or the request
        # is the connection's last: parsing stops after it.
        self._special_end = False
        # Parsing ended: what follows an upgrade request, or the connection's last request
        # (HTTP/1.0 with close), is not parsed; `feed` takes it and does nothing.
        self.stopped = False
        # In a request head, or between requests (where the next bytes start one).
        self.in_head = True
        # The bytes after an upgrade request's head in the read that ended it: the start of
        # the upgraded protocol, which a tunnel passes on (http1.tunnel).
        self.upgrade_tail = b""

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises `ProtocolError` (with a status hint) on a malformed stream.

        A loop, not recursion, goes on after each h2c upgrade or folded head in `data`: a
        client may pipeline hundreds of them in one read."""
        self._fed = len(data)
        self._bound += self._fed
        # A head already begun in an earlier read: a fold in it is never unfolded (see
        # `_unfolded`), even if this read happens to start like a request line.
        self._head_began_earlier = bool(self._url or self._headers)
        while not self.stopped:
            # The list the next head's fields go to: another one once a head ends in this read.
            fields = self._headers
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp paused after an upgrade request (or CONNECT) the sink has. After
                # websocket, CONNECT ... (`stopped`) nothing more is HTTP/1.1: the loop ends.
                data = data[exc.args[0] :]
                if self._h2c_body is not None:
                    self._reframe_h2c_body()
                if not data:
                    return
                if self.stopped:
                    self.upgrade_tail = data
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, ProtocolError):
                    raise cause from None
                if isinstance(cause, _Stop):
                    # httptools keeps the exception (its traceback holds this decoder): let go
                    # of the frames, or decoder and parser outlive the connection in a cycle.
                    cause.__traceback__ = None
                    return
                raise ProtocolError(f"bad request: {exc}", 400) from exc
            except httptools.HttpParserError as exc:
                if str(exc) != _OBS_FOLD_ERROR:
                    raise _request_error(exc) from exc
                data = self._unfolded(data, fields)

    def _reframe_h2c_body(self) -> None:
        """Parse the body of an h2c upgrade request, which llhttp skipped, as a body.

        A fresh parser is given a head with the request's framing and no callbacks reach the
        sink until its end, so the body (length or chunked) is framed by llhttp as usual."""
        framing = self._h2c_body
        assert framing is not None
        self._h2c_body = None
        self._parser = httptools.HttpRequestParser(self)
        self._synthetic = True
        try:
            self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        except httptools.HttpParserError as exc:  # framing was checked: not expected
            raise ProtocolError(f"bad request: {exc}", 400) from exc

    def _unfolded(self, data: bytes, fields: Headers) -> bytes:
        """llhttp rejected an obs-fold (RFC 9112 §5.2) in the head it was parsing: parse that
        head again, its folds joined as Envoy joins them. Nothing is scanned for folds on the
        common path. The head must be the first thing in `data` (no request ended in this
        read before it): where it starts is then known. Elsewhere (pipelined behind another
        request in one read, or begun in an earlier read) a fold stays a 400, which RFC 9112
        allows."""
        start = self._parser.get_method() + b" " + self._url + b" HTTP/"
        if (
            self._head_began_earlier
            or self._headers is not fields
            or not self._url
            or not data.startswith(start)
        ):
            raise ProtocolError("bad request: obs-fold where the head's start is not known")
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers = []
        self._host = None
        self._connection = False
        self._size = _REQUEST_HEAD_START
        self._counting = False
        self._bound = self._fed
        return _unfold(data)

    def close(self) -> None:
        """Let go of the parser and the sink (the connection is gone): no reference cycle
        is left for the garbage collector. `feed` must not be called after this."""
        del self._parser
        del self.sink

    # httptools callbacks (no on_message_begin: per-message state is reset when a head is
    # handed on, which saves a call per message) -----------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url
        if self._bound > self.max_headers_bytes:
            if self._counting:
                self._size += len(url)
            else:
                self._start_counting()
            if self._size > self.max_headers_bytes:
                raise ProtocolError("request headers too large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Also called for the trailers of a chunked request, after its head went to the sink:
        # they land in the next head's fresh state, which on_message_complete clears. The
        # field count is checked once per head (memory is bounded by the size check here).
        if self._bound > self.max_headers_bytes:
            if not self._counting:
                self._start_counting()
            self._size += len(name) + len(value) + 4
            if self._size > self.max_headers_bytes:
                raise ProtocolError("request headers too large", 431)
        name = name.lower()
        if name == b"host":
            if self._host is not None:
                # RFC 9112 §3.2: a request with more than one Host is a 400. (Envoy joins
                # them, `a,b`; a proxy and a backend that each take another one disagree.)
                raise ProtocolError("bad request: more than one Host header", 400)
            # llhttp leaves trailing whitespace on values; it is no part of an authority.
            # (rstrip returns the same object when there is nothing to strip: ~15 ns; a test
            # for the last byte first costs ten times that.)
            self._host = value.rstrip(b" \t")
        elif name in _FRAMING_FIELDS:  # one set lookup for the three: no cost per header
            if name == b"transfer-encoding":
                self._transfer_coding(value)
            else:
                self._connection = True  # llhttp reads both for keep-alive
        self._headers.append((name, value))

    def _start_counting(self) -> None:
        """The head may now be over the limit: count it exactly, so far (what llhttp handed
        over: the url, and the fields before the one being added)."""
        self._counting = True
        self._size = (
            _REQUEST_HEAD_START
            + len(self._url)
            + sum(len(k) + len(v) + 4 for k, v in self._headers)
        )

    def _transfer_coding(self, value: bytes) -> None:
        """Only `chunked`, once (RFC 9112 §6.1, §7): any other coding, or chunked twice, is
        answered 501 as Envoy does, before the request goes anywhere. (llhttp passes a final
        chunked after other codings, which would reach the upstream still coded but without
        the field that says so.)"""
        if value.rstrip(b" ").lower() != b"chunked" or any(
            k == b"transfer-encoding" for k, _ in self._headers
        ):
            raise ProtocolError("unsupported transfer coding", 501)

    def on_headers_complete(self) -> None:
        if self._synthetic:
            self._synthetic = False
            self._url = b""
            self._size = _REQUEST_HEAD_START
            self._counting = False
            self._bound = self._fed
            return
        if len(self._headers) > self.max_headers_count:
            raise ProtocolError("too many request headers", 431)
        p = self._parser
        keep_alive = p.should_keep_alive()
        method = p.get_method()
        upgrade: bytes | None = None
        if keep_alive and not self._connection and method != b"CONNECT":
            # Without Connection/Proxy-Connection llhttp keeps a request alive exactly when it is
            # HTTP/1.1 (major and minor above 0; 1.1 is the only such version it accepts), so
            # the version string, which httptools formats on each call, is not asked for.
            version = "1.1"
        else:
            version = p.get_http_version()
            self._connection = False
            if version != "1.1" and keep_alive and not _http10_keep_alive(self._headers):
                keep_alive = False  # (1.0, and 0.9 and 2.0, which llhttp parses as 1.0)
            if not keep_alive:
                # The connection's last request (RFC 9112 §9.6): nothing after it is parsed,
                # whatever llhttp makes of it (a Connection trailer can revive it).
                self._special_end = True
            if p.should_upgrade():
                upgrade = self._upgrade(method, keep_alive)
        url = self._url
        host = self._host
        if url[0] != 47 and url != b"*" and method != b"CONNECT":  # 47: not "/..."
            url, host = _origin_form(url)
        head = RequestHead(method, url, version, self._headers, keep_alive, host, upgrade)
        self._head_began_earlier = False  # the next head begins in this read at the earliest
        self._headers = []
        self._url = b""
        # The next head starts here unless trailers come first (on_message_complete resets).
        self._size = _REQUEST_HEAD_START
        self._counting = False
        self._bound = self._fed
        self._host = None
        self.in_head = False
        self.sink.on_request_head(head)

    def _upgrade(self, method: bytes, keep_alive: bool) -> bytes | None:
        """llhttp saw an upgrade (or CONNECT): the protocol asked for, or None for h2c, whose
        upgrade headers are stripped so the request is answered on HTTP/1.1 (as Envoy)."""
        if method == b"CONNECT":
            self.stopped = True
            return b"CONNECT"
        upgrade = b""
        framing: bytes | None = None
        kept: Headers = []
        for k, v in self._headers:
            if k == b"upgrade":
                upgrade = v.strip()
                continue
            if k == b"http2-settings":
                continue
            if k == b"connection":
                tokens = [t for t in v.split(b",") if t.strip().lower() not in _H2C_TOKENS]
                if not tokens:
                    continue
                v = b",".join(tokens).strip()
            elif k == b"content-length" and v.strip(b" \t0"):
                framing = b"content-length: " + v + b"\r\n"
            elif k == b"transfer-encoding":
                if v.rstrip(b" ").lower() != b"chunked":
                    raise ProtocolError("unsupported transfer coding", 501)
                framing = b"transfer-encoding: chunked\r\n"
            kept.append((k, v))
        if upgrade.lower() != b"h2c":
            self.stopped = True
            return upgrade
        self._headers = kept
        if framing is not None and not keep_alive:
            framing += b"connection: close\r\n"  # llhttp must still end the stream after it
        self._h2c_body = framing
        self._special_end = framing is not None
        return None

    def on_body(self, body: bytes) -> None:
        self.sink.on_request_body(body)

    def on_message_complete(self) -> None:
        if self._special_end:
            self._special_end = False
            if self._h2c_body is not None:
                return  # llhttp skipped the body of an h2c upgrade: it is parsed after this
            self.stopped = True  # the connection's last request: nothing after it is parsed
            self.in_head = True
            self.sink.on_request_end()
            raise _Stop
        self.in_head = True
        if self._headers:
            # Trailers (Envoy drops them without enable_trailers): never part of a request.
            self._headers = []
            self._host = None
            self._connection = False
            self._size = _REQUEST_HEAD_START
            self._counting = False
            self._bound = self._fed
        self.sink.on_request_end()


def _http10_keep_alive(headers: Headers) -> bool:
    """Whether an HTTP/1.0 request llhttp kept alive stays so (RFC 9112 §9.3 and §6.1): not
    when a Connection token says close (llhttp lets keep-alive win), nor when it has a
    Transfer-Encoding (its framing is suspect: close after it)."""
    for k, v in headers:
        if k == b"transfer-encoding":
            return False
        if k == b"connection" and b"close" in [t.strip().lower() for t in v.split(b",")]:
            return False
    return True


# Connection tokens of an h2c upgrade, removed with the Upgrade and HTTP2-Settings fields.
_H2C_TOKENS = frozenset({b"upgrade", b"http2-settings"})


# Header fields the request decoder looks at while parsing (besides Host).
_FRAMING_FIELDS = frozenset({b"connection", b"proxy-connection", b"transfer-encoding"})
# llhttp's error for a header line that starts with whitespace (an obs-fold).
_OBS_FOLD_ERROR = "Unexpected whitespace after header value"


def _unfold(data: bytes) -> bytes:
    """Join the obs-fold continuation lines (CRLF then SP or HTAB) of the head at the start of
    `data` to the line before, keeping their whitespace, as Envoy does (RFC 9112 §5.2 allows
    either this or a 400). A folded Host is a 400, as in Envoy (an authority has no spaces).
    What follows the head (a body, the next request) is untouched."""
    end = data.find(b"\r\n\r\n")
    head, rest = (data, b"") if end < 0 else (data[:end], data[end:])
    lines = head.split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and len(out) > 1:
            if out[-1][:5].lower() == b"host:":
                raise ProtocolError("bad request: folded Host header", 400)
            out[-1] += line
        else:
            out.append(line)
    return b"\r\n".join(out) + rest


def _origin_form(url: bytes) -> tuple[bytes, bytes | None]:
    """An absolute-form target (RFC 9112 §3.2.2) as (origin-form path, authority): Envoy routes
    by the URI's authority, which replaces the Host header, and sends only the path on."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError as exc:
        raise ProtocolError(f"bad request target: {exc}", 400) from exc
    if parsed.host is None or (parsed.schema or b"").lower() not in (b"http", b"https"):
        raise ProtocolError("bad request target", 400)  # Envoy: http1.invalid_scheme
    host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host  # IPv6 literal
    authority = host if parsed.port is None else b"%b:%d" % (host, parsed.port)
    path = parsed.path
    if path is None:
        # `http://svc` means `/`; `http://svc?q` keeps a path that is not one (the router
        # answers 404, as Envoy's absolute_path_rejected).
        path = b"/" if parsed.query is None else b""
    if parsed.query is not None:
        path += b"?" + parsed.query
    return path, authority


def _request_error(exc: httptools.HttpParserError) -> ProtocolError:
    """llhttp's verdict on a malformed request as the answer Envoy gives it."""
    reason = str(exc)
    if reason == "Pause on PRI/Upgrade":
        # The HTTP/2 connection preface on an HTTP/1 listener: Envoy closes, answering nothing.
        return ProtocolError("HTTP/2 connection preface on an HTTP/1.1 listener", None)
    if reason == "Invalid HTTP version":
        return ProtocolError("unsupported HTTP version", 426)
    if "`Transfer-Encoding`" in reason:
        # llhttp's own verdicts on a coding list (chunked twice, chunked not last): Envoy 501.
        return ProtocolError(f"unsupported transfer coding: {reason}", 501)
    return ProtocolError(f"bad request: {reason}", 400)


class _Stop(Exception):
    """Raised from a callback to stop httptools after the connection's last request."""


class _SkipBody(Exception):
    """Raised from a callback to stop httptools after the head of a response to HEAD."""


class ResponseDecoder:
    """Decodes one response at a time into calls on a `ResponseSink`.

    `expect_response(no_body)` is called before each response is fed: with `no_body` (the
    request was HEAD) httptools cannot be told that the response has no body, so the decoder
    feeds the bytes head by head, stops after the final head and starts a fresh parser (RFC 9112
    §6.3 rule 1). 1xx interim responses are reported through `on_informational`, not as the
    final head. `eof()` ends a close-delimited body. Trailers of a chunked response are dropped.

    A byte that starts a message when no response is expected (after the final response ended,
    in the same read or later) raises `ProtocolError`: the connection is broken and must never
    be reused, so an extra or unsolicited response cannot reach the next request.
    """

    __slots__ = (
        "_body_until_close",
        "_bound",
        "_counting",
        "_expecting",
        "_fed",
        "_headers",
        "_no_body",
        "_parser",
        "_size",
        "_switched",
        "_tail",
        "in_message",
        "max_headers_bytes",
        "max_headers_count",
        "on_informational",
        "sink",
    )

    def __init__(
        self,
        sink: ResponseSink,
        max_headers_bytes: int = DEFAULT_MAX_RESPONSE_HEADERS_BYTES,
        max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
    ) -> None:
        self.sink = sink
        self.max_headers_bytes = max_headers_bytes
        self.max_headers_count = max_headers_count
        self.on_informational: object = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        # Counted exactly only once a head could be over the limit (RequestDecoder's rule).
        self._size = _RESPONSE_HEAD_START
        self._counting = False
        self._bound = 0
        self._fed = 0
        self._no_body = False
        self._body_until_close = False
        self._expecting = False  # a request is outstanding: its response may begin
        self._tail = b""  # no-body mode: the last bytes fed, for a terminator split over reads
        self._switched: ResponseHead | None = None  # a 101's head, until feed raises it
        self.in_message = False

    def expect_response(self, no_body: bool) -> None:
        """A request was sent: its response may now arrive (`no_body`: it was a HEAD)."""
        self._expecting = True
        self._no_body = no_body

    def feed(self, data: bytes) -> None:
        self._fed = len(data)
        self._bound += self._fed
        if self._no_body:
            self._feed_heads(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"bad response: {exc}", 502) from exc
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after any 101 (what follows is not HTTP/1.1), at this offset.
            head = self._switched
            if head is None:
                raise ProtocolError(f"bad response: {exc}", 502) from exc
            self._switched = None
            raise SwitchingProtocols(head, data[exc.args[0] :]) from None
        except httptools.HttpParserError as exc:
            if self._switched is not None:
                # A 101 without `upgrade`: llhttp stops all the same, but httptools does not
                # say where. It switches to nothing (RFC 9110 §15.2.2 requires the field).
                raise UnexpectedUpgrade("101 Switching Protocols without upgrade", 503) from exc
            raise ProtocolError(f"bad response: {exc}", 502) from exc

    def _feed_heads(self, data: bytes) -> None:
        """Feed a response to HEAD one head at a time, so the end of the final head is known
        exactly: any byte after it is an error, not the start of the next response."""
        joined = self._tail + data
        shift = len(self._tail)
        start = 0
        while start < len(data):
            end = joined.find(b"\r\n\r\n", start + shift - 3 if start + shift >= 3 else 0)
            stop = len(data) if end < 0 else max(end + 4 - shift, start + 1)
            try:
                self._parser.feed_data(data[start:stop])
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if not isinstance(cause, _SkipBody):
                    if isinstance(cause, ProtocolError):
                        raise cause from None
                    raise ProtocolError(f"bad response: {exc}", 502) from exc
                self._parser = httptools.HttpResponseParser(self)
                self.in_message = False
                self._no_body = False
                self._size = _RESPONSE_HEAD_START
                self._counting = False
                self._bound = self._fed
                self._tail = b""  # for the next response to HEAD
                self.sink.on_response_end()
                if stop < len(data):
                    raise ProtocolError("bytes after the response to HEAD", 502) from None
                return
            except httptools.HttpParserUpgrade as exc:
                head = self._switched  # the response to a HEAD upgrade request was a 101
                if head is None:
                    raise ProtocolError(f"bad response: {exc}", 502) from exc
                self._switched = None
                raise SwitchingProtocols(head, data[start + exc.args[0] :]) from None
            except httptools.HttpParserError as exc:
                if self._switched is not None:
                    raise UnexpectedUpgrade("101 Switching Protocols without upgrade", 503) from exc
                raise ProtocolError(f"bad response: {exc}", 502) from exc
            start = stop
        self._tail = joined[-3:]

    def close(self) -> None:
        """As `RequestDecoder.close`: no cycle left behind. `feed` must not follow."""
        del self._parser
        del self.sink
        self.on_informational = None

    def eof(self) -> bool:
        """The peer closed. True if that ended a close-delimited body (a complete response)."""
        if self.in_message and self._body_until_close:
            self.in_message = False
            self._expecting = False
            self.sink.on_response_end()
            return True
        return False

    # httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if not self._expecting:
            raise ProtocolError("upstream sent bytes after the response, or unasked", 502)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailers of a chunked response land in a fresh list that on_message_complete drops.
        if self._bound > self.max_headers_bytes:
            if not self._counting:
                self._counting = True
                self._size = _RESPONSE_HEAD_START + sum(
                    len(k) + len(v) + 4 for k, v in self._headers
                )
            self._size += len(name) + len(value) + 4
            if self._size > self.max_headers_bytes:
                raise ProtocolError("response headers too large", 502)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = p.get_status_code()
        headers = self._headers
        if len(headers) > self.max_headers_count:
            raise ProtocolError("too many response headers", 502)
        self._headers = []
        self._size = _RESPONSE_HEAD_START
        self._counting = False
        self._bound = self._fed  # the next head's (or trailers') bytes: in this read at most
        self.in_message = True
        if status < 200:
            if status == 101:
                # Handed on by `feed` once llhttp stops after it (see SwitchingProtocols).
                self._switched = ResponseHead(101, headers, False, None, False)
                self._expecting = False
                return
            _check_interim(status, headers)
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
                if chunked or (v != b"chunked" and v.rstrip(b" ").lower() != b"chunked"):
                    # Envoy: 502, "unsupported transfer encoding" (gzip, chunked; xchunked;
                    # chunked twice, RFC 9112 §7.1 ...)
                    raise ProtocolError("unsupported transfer coding in a response", 502)
                chunked = True
        if self._no_body:
            # llhttp takes a response with no length for one whose body runs to the close; to
            # HEAD it has none, so only its version and Connection decide (as Envoy reuses it).
            self._body_until_close = False
            keep_alive = _keeps_alive(p.get_http_version(), headers)
        else:
            no_body = status == 204 or status == 304
            self._body_until_close = not no_body and not chunked and content_length is None
            keep_alive = p.should_keep_alive() and not self._body_until_close
        self.sink.on_response_head(
            ResponseHead(status, headers, keep_alive, content_length, chunked)
        )
        if self._no_body:
            self._expecting = False
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        if body:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._headers:
            self._headers = []  # trailers: dropped, as Envoy without enable_trailers
            self._size = _RESPONSE_HEAD_START
            self._counting = False
            self._bound = self._fed
        if not self.in_message:
            return
        self.in_message = False
        if self._parser.get_status_code() < 200:
            return  # an interim response: the final one is still expected
        self._expecting = False
        self.sink.on_response_end()


def _check_interim(status: int, headers: Headers) -> None:
    """A 1xx ends with its head (RFC 9110 §15.2); llhttp would give one with a length a body,
    and a status under 100 is none at all. Envoy answers 502 to both."""
    if status < 100:
        raise ProtocolError(f"bad response status {status}", 502)
    for k, _ in headers:
        if k == b"content-length" or k == b"transfer-encoding":
            raise ProtocolError("a 1xx response with a body", 502)


def _keeps_alive(version: str, headers: Headers) -> bool:
    """Persistence by RFC 9112 §9.3: close token, else HTTP/1.1, else a keep-alive token."""
    tokens: list[bytes] = []
    for k, v in headers:
        if k == b"connection":
            tokens += [t.strip().lower() for t in v.split(b",")]
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


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
