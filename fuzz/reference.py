"""A strict, readable HTTP/1.1 framing reference (RFC 9112) that the codec fuzzer compares with.

It decides where each message starts and ends, its head and body bytes, and the first byte at
which the stream stops being HTTP/1.1 it accepts, reading the whole stream at once (so the
answer cannot depend on how bytes were split). llhttp leniencies that move no message boundary
are mirrored and named in LENIENCIES; it has no size limits (a stricter decoder is fine).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

Field = tuple[bytes, bytes]
T = TypeVar("T")

# llhttp leniencies the reference accepts too, and why each moves no message boundary.
LENIENCIES = {
    "empty lines": "any CR or LF between messages is skipped (RFC 9112 §2.2 allows CRLF)",
    "request-line whitespace": "several SP between request-line words (RFC 9112 §3 MAY)",
    "versions": "HTTP/0.9 and HTTP/2.0 are parsed as HTTP/1.0 (never kept alive)",
    "HTTP/0.9": "a request line without a version (LF or CRLF): llhttp takes it as HTTP/0.9;"
    " the stream after it is not judged, as podproxy answers 426 and closes",
    "target": "any visible ASCII in the request-target, '#' included (routing, not framing)",
    "asterisk": "'*' is accepted as the target of any method, not only OPTIONS",
    "coding names": "transfer-coding names are not checked: only the final coding frames",
    "status-line": "a status line without the SP before an empty reason phrase",
    "reason": "any byte but CR and LF in the reason phrase (RFC 9112 §4: a client ignores it)",
    "userinfo": "userinfo in an absolute-form target is dropped, as Envoy does (RFC 9110 "
    "§4.2.4 would have it an error; the authority after it routes)",
    "status 600-999": "passed on as Envoy passes them (RFC 9110 §15 defines 100-599)",
    "HTTP/1.0 chunked response": "kept alive when it says keep-alive, as llhttp keeps it (RFC "
    "9112 §6.1 would close after it): its framing is read the same either way, and telling "
    "1.0 from 1.1 costs a string format per chunked response",
}

# RFC 9110 §5.6.2 tchar, as a regex class.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# RFC 9112 §3: method SP request-target SP HTTP-version (several SP allowed, see LENIENCIES).
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) +([\x21-\x7e]+) +HTTP/([0-9])\.([0-9])")
# llhttp's HTTP/0.9 request line: method SP target, then LF or CRLF (see LENIENCIES).
_SIMPLE_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) +([\x21-\x7e]*)\r?")
# RFC 9112 §4: HTTP-version SP 3DIGIT SP reason-phrase.
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?")
# RFC 9112 §5: field-name ":" OWS field-value OWS; no whitespace before the colon.
_FIELD_LINE = re.compile(rb"(" + _TCHAR + rb"+):(.*)", re.DOTALL)
# RFC 9110 §5.5: field-value characters (VCHAR, SP, HTAB, obs-text).
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(.*)", re.DOTALL)
# RFC 9112 §7.1.1 chunk-ext: skipped, but only BWS ";" ... without control characters.
_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)([^#]*)(?:#.*)?", re.DOTALL)
_PORT = re.compile(rb"(.*):([0-9]*)", re.DOTALL)
_OWS = b" \t"

# llhttp's versions: 1.0 and 1.1, and 0.9 and 2.0 (see LENIENCIES); any other is rejected.
_VERSIONS = {(1, 0): "1.0", (1, 1): "1.1", (0, 9): "0.9", (2, 0): "2.0"}
# The connection tokens of an h2c upgrade that the decoder removes with Upgrade/HTTP2-Settings.
_H2C_TOKENS = frozenset({b"upgrade", b"http2-settings"})


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes  # origin-form: an absolute-form target becomes its path and query
    version: str
    host: bytes | None  # the first Host value, or the authority of an absolute-form target
    keep_alive: bool
    upgrade: bytes | None  # the Upgrade value (or b"CONNECT") where HTTP parsing stops
    fields: tuple[Field, ...]  # lower-case names, values without surrounding OWS


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    keep_alive: bool
    content_length: int | None
    chunked: bool
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Interim:
    """A 1xx response other than 101: reported, and the final response is still to come."""

    status: int
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class End:
    """The end of a message."""


END = End()
Event = RequestHead | ResponseHead | Interim | bytes | End


@dataclass(frozen=True, slots=True)
class Rejection:
    """The stream is invalid once the byte at `offset` is read; `rule` names why."""

    offset: int
    rule: str


@dataclass(slots=True)
class Result:
    events: list[Event] = field(default_factory=list)
    rejection: Rejection | None = None
    # Set where the reference stops judging (see LENIENCIES): only the first `judged` events
    # count, and whatever the decoder does after them is not a finding.
    judged: int | None = None


class _Reject(Exception):
    def __init__(self, offset: int, rule: str) -> None:
        super().__init__(rule)
        self.rejection = Rejection(offset, rule)


class _Incomplete(Exception):
    """The stream ends inside a message part that is only used whole (a line, a head)."""


class _Reader:
    """A cursor over the whole stream. An error inside a line is reported at the line's LF:
    by then every parser has seen it, so a decoder that notices it later is not flagged."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def line(self) -> tuple[bytes, int]:
        """The next line without its CRLF, and the offset of its LF (RFC 9112 §2.2: no bare
        CR, and no LF without CR, anywhere in a head or in chunk framing)."""
        data = self.data
        lf = data.find(b"\n", self.pos)
        if lf < 0:
            raise _Incomplete
        if lf == self.pos or data[lf - 1] != 0x0D:
            raise _Reject(lf, "bare-lf")
        text = data[self.pos : lf - 1]
        if b"\r" in text:
            raise _Reject(lf, "bare-cr")
        self.pos = lf + 1
        return text, lf

    def head(self, parse_start: Callable[[bytes, int], T]) -> tuple[T, int, list[Field]]:
        """A start line (checked by `parse_start` as soon as it is read), its field lines (each
        checked as read) and the offset of the LF of the empty line that ends the head.
        Nothing is consumed when the stream ends inside the head."""
        start_pos = self.pos
        try:
            text, lf = self.line()
            start = parse_start(text, lf)
            fields = _FieldLines()
            while True:
                text, lf = self.line()
                if not text:
                    return start, lf, fields.fields()
                fields.add(text, lf)
        except _Incomplete:
            self.pos = start_pos
            raise

    def skip_empty_lines(self) -> None:
        """llhttp skips any CR and LF between messages (see LENIENCIES)."""
        data = self.data
        while self.pos < len(data) and data[self.pos] in b"\r\n":
            self.pos += 1


class _FieldLines:
    """Field lines as (lower-case name, value). An obs-fold line (RFC 9112 §5.2) is joined to
    the value before it by deleting the CRLF, as the request decoder does."""

    def __init__(self) -> None:
        self._raw: list[list[bytes]] = []

    def add(self, text: bytes, lf: int) -> None:
        if text[:1] in (b" ", b"\t"):
            if not self._raw:
                # RFC 9112 §2.2: whitespace between the start line and the first field.
                raise _Reject(lf, "space-before-first-field")
            if not _FIELD_VALUE.fullmatch(text):
                raise _Reject(lf, "field-value-char")
            self._raw[-1][1] += text
            return
        match = _FIELD_LINE.fullmatch(text)
        if match is None:
            raise _Reject(lf, "field-line")
        if not _FIELD_VALUE.fullmatch(match[2]):
            raise _Reject(lf, "field-value-char")
        self._raw.append([match[1].lower(), match[2]])

    def fields(self) -> list[Field]:
        return [(name, value.strip(_OWS)) for name, value in self._raw]


def _tokens(fields: Sequence[Field], *names: bytes) -> list[bytes]:
    """The comma-separated list elements of every field line named one of `names`, lower-cased,
    without OWS and empty elements (RFC 9110 §5.6.1)."""
    out: list[bytes] = []
    for name, value in fields:
        if name in names:
            out += [t.strip(_OWS).lower() for t in value.split(b",") if t.strip(_OWS)]
    return out


@dataclass(slots=True)
class _Framing:
    """How the body of a message is delimited, from its fields (RFC 9112 §6.3)."""

    content_length: int | None
    codings: list[bytes] | None  # Transfer-Encoding codings, None without the field

    @property
    def chunked(self) -> bool:
        return self.codings is not None and self.codings[-1:] == [b"chunked"]


def _framing(fields: Sequence[Field], end: int, request: bool) -> _Framing:
    lengths = [v for k, v in fields if k == b"content-length"]
    if len(lengths) > 1:
        raise _Reject(end, "duplicate-content-length")
    if lengths and not lengths[0].isdigit():
        raise _Reject(end, "bad-content-length")
    codings: list[bytes] | None = None
    if any(k == b"transfer-encoding" for k, _ in fields):
        codings = _tokens(fields, b"transfer-encoding")
        if request and codings[-1:] != [b"chunked"]:
            # RFC 9112 §6.3 rule 4: a request's length cannot be determined: 400 and close.
            raise _Reject(end, "request-transfer-encoding-not-chunked")
        if request and len(codings) > 1:
            # RFC 9112 §6.1: a coding the server does not implement is answered 501 (as Envoy
            # does): the proxy would forward the still-coded body without its coding.
            raise _Reject(end, "request-transfer-coding-unsupported")
        if not codings:
            raise _Reject(end, "empty-transfer-encoding")
        if codings.count(b"chunked") > 1:
            # RFC 9112 §7: a sender must not apply chunked more than once. Not final, it is
            # an error in a request (below) and a body read to EOF in a response (§6.3).
            raise _Reject(end, "chunked-twice")
        if lengths:
            # RFC 9112 §6.1: a sender must not send both; a recipient may reject, and does
            # here (request smuggling, RFC 9112 §11.2).
            raise _Reject(end, "content-length-and-transfer-encoding")
    return _Framing(int(lengths[0]) if lengths else None, codings)


def _keep_alive(version: str, fields: Sequence[Field], request: bool = True) -> bool:
    """llhttp's rule (it also reads Proxy-Connection): HTTP/1.1 persists unless `close`, other
    versions only with `keep-alive`; RFC 9112 §6.1: an HTTP/1.0 request with Transfer-Encoding
    has faulty framing, and the connection is closed after it (for a response, see
    LENIENCIES)."""
    tokens = _tokens(fields, b"connection", b"proxy-connection")
    if b"close" in tokens:
        return False
    if version == "1.1":
        return True
    if request and any(k == b"transfer-encoding" for k, _ in fields):
        return False
    return b"keep-alive" in tokens


def _body(reader: _Reader, framing: _Framing, events: list[Event]) -> bool:
    """Read a body framed by length or chunked coding; True when the message is complete.
    Body bytes are reported as far as the stream goes, as a decoder reports them."""
    if framing.chunked:
        return _chunked_body(reader, events)
    length = framing.content_length or 0
    data = reader.data[reader.pos : reader.pos + length]
    if data:
        events.append(data)
    reader.pos += len(data)
    return len(data) == length


def _chunked_body(reader: _Reader, events: list[Event]) -> bool:
    """RFC 9112 §7.1: chunks, the last chunk, trailer fields (parsed, then dropped), CRLF."""
    data = reader.data
    while True:
        text, lf = reader.line()
        match = _CHUNK_SIZE.fullmatch(text)
        if match is None or not _CHUNK_EXT.fullmatch(match[2]):
            raise _Reject(lf, "chunk-size")
        size = int(match[1], 16)
        if size == 0:
            break
        chunk = data[reader.pos : reader.pos + size]
        events.append(chunk)
        reader.pos += len(chunk)
        if len(chunk) < size:
            raise _Incomplete
        for expected in b"\r\n":
            if reader.at_end():
                raise _Incomplete
            if data[reader.pos] != expected:
                raise _Reject(reader.pos, "chunk-data-crlf")
            reader.pos += 1
    trailers = _FieldLines()
    while True:
        text, lf = reader.line()
        if not text:
            return True
        trailers.add(text, lf)


def _request_line(text: bytes, lf: int) -> tuple[bytes, bytes, str]:
    match = _REQUEST_LINE.fullmatch(text)
    if match is None:
        raise _Reject(lf, "request-line")
    version = _VERSIONS.get((int(match[3]), int(match[4])))
    if version is None:
        raise _Reject(lf, "version")
    return match[1], match[2], version


def _request_target(method: bytes, target: bytes, end: int) -> tuple[bytes, bytes | None]:
    """The target as the decoder hands it on, and the authority of an absolute-form one. Judged
    at the end of the head, where the decoder looks at it."""
    if target[:1] == b"/" or target == b"*" or method == b"CONNECT":
        return target, None
    match = _ABSOLUTE.fullmatch(target)
    if match is None or match[1].lower() not in (b"http", b"https") or not match[2]:
        raise _Reject(end, "request-target")
    authority, rest = match[2], match[3]
    # userinfo is dropped, as Envoy drops it (see LENIENCIES).
    authority = authority.rpartition(b"@")[2]
    port = _PORT.fullmatch(authority)
    if port is not None and b":" in port[1] and not port[1].endswith(b"]"):
        port = None  # a colon inside an unbracketed host: not host:port
    if port is not None:
        # The same authority, normalised: an empty port is no port, leading zeros go.
        host = port[1] if not port[2] else b"%b:%d" % (port[1], int(port[2]))
    else:
        host = authority
    if not host or host.startswith(b":"):
        raise _Reject(end, "request-target")
    path, _, query = rest.partition(b"?")
    if not query:
        rest = path  # an empty query is no query (the decoder's URL parser drops it)
    return rest or b"/", host


def _request_head(reader: _Reader) -> tuple[RequestHead, _Framing | None, str]:
    """The next request head; framing None when HTTP parsing stops after it (an upgrade); the
    rule that bytes after it break if it does not keep the connection alive."""
    (method, target, version), end, fields = reader.head(_request_line)
    if method == b"PRI":
        # llhttp takes any PRI request for the HTTP/2 connection preface (RFC 9113 §3.4) and
        # reads on to its end ("SM" CRLF CRLF) before it stops: rejected there at the latest.
        raise _Reject(end + len(b"SM\r\n\r\n"), "http2-preface")
    target, authority = _request_target(method, target, end)
    framing = _framing(fields, end, request=True)
    hosts = [v for k, v in fields if k == b"host"]
    if len(hosts) > 1:
        # RFC 9112 §3.2: a request with more than one Host field line is answered 400.
        raise _Reject(end, "duplicate-host")
    host = authority if authority is not None else (hosts[0] if hosts else None)
    keep_alive = _keep_alive(version, fields)
    after_close = "data-after-close"
    if version != "1.1" and any(k == b"transfer-encoding" for k, _ in fields):
        after_close = "data-after-http10-transfer-encoding"
    upgrade: bytes | None = None
    upgrades = [v for k, v in fields if k == b"upgrade"]
    if method == b"CONNECT":
        upgrade = b"CONNECT"
    elif any(upgrades) and b"upgrade" in _tokens(fields, b"connection", b"proxy-connection"):
        if upgrades[-1].lower() == b"h2c":
            # Answered on HTTP/1.1 without the upgrade (as Envoy): its fields are removed.
            fields = _without_h2c(fields)
            after_close = "data-after-close-h2c"
        else:
            upgrade = upgrades[-1]
    head = RequestHead(method, target, version, host, keep_alive, upgrade, tuple(fields))
    return head, None if upgrade is not None else framing, after_close


def _without_h2c(fields: list[Field]) -> list[Field]:
    out: list[Field] = []
    for name, value in fields:
        if name in (b"upgrade", b"http2-settings"):
            continue
        if name == b"connection":
            tokens = [t for t in value.split(b",") if t.strip(_OWS).lower() not in _H2C_TOKENS]
            if not tokens:
                continue
            value = b",".join(tokens).strip(_OWS)
        out.append((name, value))
    return out


def _simple_request(reader: _Reader) -> bool:
    lf = reader.data.find(b"\n", reader.pos)
    return lf >= 0 and _SIMPLE_REQUEST_LINE.fullmatch(reader.data, reader.pos, lf) is not None


def parse_requests(data: bytes) -> Result:
    """The requests in a client's byte stream, as a server must frame them."""
    result = Result()
    events = result.events
    reader = _Reader(data)
    after_close: str | None = None  # the rule broken by more bytes, once one is not persistent
    try:
        while True:
            reader.skip_empty_lines()
            if reader.at_end():
                break
            if after_close is not None:
                raise _Reject(reader.pos, after_close)
            if _simple_request(reader):
                result.judged = len(events)
                break
            head, framing, rule = _request_head(reader)
            events.append(head)
            if framing is None:
                events.append(END)
                break  # an upgrade or CONNECT: what follows is not HTTP/1.1
            after_close = None if head.keep_alive else rule
            if not _body(reader, framing, events):
                break
            events.append(END)
    except _Incomplete:
        pass
    except _Reject as exc:
        result.rejection = exc.rejection
    return result


def _status_line(text: bytes, lf: int) -> tuple[str, int]:
    match = _STATUS_LINE.fullmatch(text)
    if match is None:
        raise _Reject(lf, "status-line")
    version = _VERSIONS.get((int(match[1]), int(match[2])))
    if version is None:
        raise _Reject(lf, "version")
    return version, int(match[3])


def parse_responses(data: bytes, no_body: Sequence[bool], cuts: Sequence[int]) -> Result:
    """The responses in a server's byte stream, as a client must frame them.

    `no_body[i]` says response i answers a HEAD. Response i+1 is expected (the client sent its
    request) only from the first cut at or after the end of response i: the decoder is told
    between two reads, and a response that starts before that is unsolicited. The stream ends
    with EOF, which ends a body delimited by the close.
    """
    result = Result()
    events = result.events
    reader = _Reader(data)
    persistent = True
    expected_from = 0
    index = 0
    try:
        while True:
            reader.skip_empty_lines()
            if reader.at_end():
                break
            if not persistent:
                raise _Reject(reader.pos, "data-after-close")
            if reader.pos < expected_from:
                raise _Reject(reader.pos, "unsolicited-response")
            final = _response(reader, bool(no_body[index % len(no_body)]), events)
            if final is None:
                break  # read to EOF
            persistent = final
            index += 1
            expected_from = min((c for c in cuts if c >= reader.pos), default=len(data))
    except _Incomplete:
        pass
    except _Reject as exc:
        result.rejection = exc.rejection
    return result


def _response(reader: _Reader, head_request: bool, events: list[Event]) -> bool | None:
    """One response with its 1xx interim responses; whether the connection persists after it,
    or None when its body ran to the end of the stream."""
    while True:
        (version, status), end, fields = reader.head(_status_line)
        # RFC 9110 §15: every valid status code is within 100..599. Judged at the end of the
        # head, where a decoder may look at it.
        if status < 100:
            raise _Reject(end, "status-code-below-100")
        if status == 101:
            raise _Reject(end, "unexpected-101")  # no request asked for an upgrade
        framing = _framing(fields, end, request=False)
        if status >= 200:
            break
        events.append(Interim(status, tuple(fields)))  # 1xx: no body (RFC 9112 §6.3 rule 1)
        reader.skip_empty_lines()
    no_body = head_request or status in (204, 304)
    until_close = not no_body and not framing.chunked and framing.content_length is None
    keep_alive = _keep_alive(version, fields, request=False) and not until_close
    length = framing.content_length
    events.append(ResponseHead(status, keep_alive, length, framing.chunked, tuple(fields)))
    if no_body:
        events.append(END)
        return keep_alive
    if until_close:
        rest = reader.data[reader.pos :]
        if rest:
            events.append(rest)
        reader.pos = len(reader.data)
        events.append(END)  # EOF ends it (RFC 9112 §6.3 rule 8)
        return None
    if not _body(reader, framing, events):
        raise _Incomplete
    events.append(END)
    return keep_alive
