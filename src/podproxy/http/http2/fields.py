"""Received header blocks, checked in one pass: h2's inbound normalization and validation
(RFC 9113 §8.2, §8.3), the same rules with the same outcome (`ProtocolError`, which h2 turns
into a connection error), at a fraction of the cost.

h2 runs a received block through eight generators, one per rule, and tests names and values a
character at a time in Python; that was a tenth of the proxy's time per HTTP/2 exchange. Here
names are tested by one regular expression each (and remembered), values by one search.
`Stream` is h2's stream with this in place of its pipeline; `_Connection` (codec.py) creates
its streams with it.
"""

from __future__ import annotations

import re
from typing import Any

from h2.exceptions import ProtocolError
from h2.stream import H2Stream
from hpack.struct import NeverIndexedHeaderTuple

# RFC 9113 §8.2.1: no 0x00-0x20, 0x41-0x5a (upper case) or 0x7f-0xff in a name; a colon only
# first (a pseudo-header).
_NAME = re.compile(rb":?[^\x00-\x20A-Z\x7f-\xff:]+")
# No NUL, CR or LF anywhere in a value, no SP or HTAB at either end.
_WHITESPACE = (0x20, 0x09)
# Connection-specific fields (§8.2.2).
CONNECTION_FIELDS = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
REQUEST_PSEUDO = frozenset({b":scheme", b":path", b":authority", b":method", b":protocol"})

# Fields that passed, so a field seen again (most are) costs one lookup. Bounded: cleared
# whole when full; values unique to a request are not kept.
_good: set[tuple[bytes, bytes]] = set()
GOOD_MAX = 4096
UNIQUE = frozenset({b"x-request-id"})


class FieldError(ProtocolError):
    """A received header block breaks RFC 9113 §8.2/§8.3 (Envoy's `rx_messaging_error`)."""


def _check_field(header: tuple[bytes, bytes]) -> None:
    name, value = header
    if not name:
        raise FieldError("Received header name with zero length.")
    if _NAME.fullmatch(name) is None:
        raise FieldError(f"Illegal character in header name: {name!r}")
    if value and (
        value[0] in _WHITESPACE
        or value[-1] in _WHITESPACE
        or b"\r" in value
        or b"\n" in value
        or b"\x00" in value
    ):
        raise FieldError(f"Illegal character or surrounding whitespace in value: {value!r}")
    if name not in UNIQUE:
        if len(_good) >= GOOD_MAX:
            _good.clear()
        _good.add(header)


def check_block(headers: list[Any], response: bool, trailer: bool) -> list[Any]:
    """`headers` (bytes pairs, as HPACK decoded them) with split cookies joined (§8.2.3),
    or FieldError naming the first rule broken."""
    pseudo: set[bytes] = set()
    regular = False
    method = None
    authority = None
    host = None
    path = None
    cookies: list[bytes] | None = None
    out: list[Any] = []
    for header in headers:
        if header not in _good:
            _check_field(header)
        name, value = header
        if name[0] == 0x3A:  # ":"
            if name in pseudo:
                raise FieldError(f"Received duplicate pseudo-header field {name!r}")
            if regular:
                raise FieldError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in PSEUDO:
                raise FieldError(f"Received custom pseudo-header field {name!r}")
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path":
                path = value
        else:
            regular = True
            if name in CONNECTION_FIELDS:
                raise FieldError(f"Connection-specific header field present: {name!r}.")
            if name == b"te" and value.lower() != b"trailers":
                raise FieldError(f"Invalid value for TE header: {value!r}")
            if name == b"cookie":
                if cookies is None:
                    cookies = []
                cookies.append(value)
                continue
            if name == b"host" and not response and not trailer:
                if host is not None:
                    raise FieldError("Request header block has multiple Host headers.")
                host = value
        out.append(header)
    if cookies is not None:
        # Checked once joined too, as h2 checks it: `a=1` then an empty crumb is `a=1; `.
        cookie = NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies))
        if len(cookies) > 1:
            _check_field(cookie)
        out.append(cookie)
    if trailer:
        if pseudo:
            raise FieldError(f"Received pseudo-header in trailer {pseudo}")
        return out
    if response:
        if b":status" not in pseudo:
            raise FieldError("Header block missing mandatory b':status' header")
        if pseudo & REQUEST_PSEUDO:
            raise FieldError(f"Encountered request-only headers {pseudo & REQUEST_PSEUDO}")
        return out
    _check_request(pseudo, method)
    if authority is None and host is None:
        raise FieldError("Request header block does not have an :authority or Host header.")
    if authority is not None and host is not None and authority != host:
        raise FieldError("Request header block has mismatched :authority and Host headers")
    if path is not None and not path:
        raise FieldError("An empty :path header is forbidden")
    return out


def _check_request(pseudo: set[bytes], method: bytes | None) -> None:
    if b":method" not in pseudo:
        raise FieldError("Header block missing mandatory b':method' header")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        # Ordinary CONNECT (§8.5): no :scheme, no :path.
        if b":scheme" in pseudo or b":path" in pseudo:
            raise FieldError("Ordinary CONNECT MUST NOT include :scheme or :path")
    else:
        for required in (b":scheme", b":path"):
            if required not in pseudo:
                raise FieldError(f"Header block missing mandatory {required!r} header")
    if b":status" in pseudo:
        raise FieldError("Encountered response-only headers {b':status'}")
    if not connect and b":protocol" in pseudo:
        raise FieldError("Encountered connect-request-only headers {b':protocol'}")


class Stream(H2Stream):
    """h2's stream, checking what it receives with `check_block`."""

    def _process_received_headers(
        self, headers: Any, header_validation_flags: Any, header_encoding: Any
    ) -> list[Any]:
        flags = header_validation_flags
        return check_block(
            headers if isinstance(headers, list) else list(headers),
            bool(flags.is_response_header),
            bool(flags.is_trailer),
        )
