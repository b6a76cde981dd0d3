"""Envoy's substitution formatter: command operators, text lines and JSON lines.

A format string is parsed once, at config time, into literal strings and small callables (one
per `%COMMAND(SUBCOMMAND):LENGTH%`), each reading one `StreamInfo` value; rendering a line is one
pass over that list. Parsing follows Envoy's SubstitutionFormatParser
(source/common/formatter/substitution_formatter.cc): `%%` is a literal `%`, a command matches
`^%([A-Z0-9_]+)(\\(([^)]*)\\))?(:[0-9]+)?%`, and each command checks its own syntax
(CommandSyntaxChecker) with Envoy's error messages. Values are typed (str, int or None): text
prints None as `-` (`""` with omit_empty_values), JSON prints it as null; an operator renders
typed only when it is a JSON value's whole string (Envoy's StructFormatter).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from podproxy.access_log.stream_info import LONG_FLAG_NAMES, Headers, StreamInfo

# SubstitutionFormatUtils::DEFAULT_FORMAT, byte for byte (reference/envoy-hcm.md §4.2).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

Value = str | int | None
Op = Callable[[StreamInfo], Value]
Segment = str | Op

_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")


class FormatError(ValueError):
    """A format string Envoy would refuse; the message is Envoy's where it has one."""


# --- CommandSyntaxChecker -----------------------------------------------------------------

_COMMAND_ONLY, _PARAMS_REQUIRED, _PARAMS_OPTIONAL = range(3)


def _check(name: str, kind: int, sub: str, length: int | None, length_ok: bool) -> None:
    if kind == _COMMAND_ONLY and (sub or length is not None):
        raise FormatError(f"{name} does not take any parameters or length")
    if kind == _PARAMS_REQUIRED and not sub:
        raise FormatError(f"{name} requires parameters")
    if not length_ok and length is not None:
        raise FormatError(f"{name} does not allow length to be specified.")


# --- START_TIME -----------------------------------------------------------------------------

_TIME_TOKEN = re.compile(r"%%|%([1-9]?)f|%s")


def format_start_time(t: float) -> str:
    """`2026-11-26T06:00:00.123Z` (UTC, milliseconds truncated), Envoy's default START_TIME."""
    # Round to microseconds (a float epoch holds no more), then truncate to milliseconds like
    # Envoy's %E3S, so 0.123 does not print as .122.
    whole, us = divmod(round(t * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{us // 1000:03d}Z"


def start_time_formatter(fmt: str) -> Callable[[float], str]:
    """`START_TIME(fmt)`: strftime in UTC plus Envoy's DateFormatter specifiers `%s` (epoch
    seconds) and `%f` / `%1f`..`%9f` (fractional second digits, 9 by default, truncated)."""
    if not fmt:
        return format_start_time
    pieces: list[str | int] = []  # strftime text, or digits of the fraction (0: epoch secs)
    pos = 0
    for m in _TIME_TOKEN.finditer(fmt):
        if m.group(0) == "%%":
            continue  # strftime prints it
        pieces.append(fmt[pos : m.start()])
        pieces.append(0 if m.group(0) == "%s" else int(m.group(1) or 9))
        pos = m.end()
    pieces.append(fmt[pos:])

    def render(t: float) -> str:
        ns = round(t * 1_000_000) * 1000  # microseconds are what a float epoch holds
        whole, frac = divmod(ns, 1_000_000_000)
        tm = time.gmtime(whole)
        out = []
        for p in pieces:
            if isinstance(p, str):
                if p:
                    out.append(time.strftime(p, tm))
            elif p == 0:
                out.append(str(whole))
            else:
                out.append(f"{frac:09d}"[:p])
        return "".join(out)

    return render


# --- values ---------------------------------------------------------------------------------


def _text(b: bytes) -> str:
    # Header bytes pass through as they came: surrogateescape keeps non-UTF-8 bytes for the
    # encode at write time (text lines are written with the same error handler).
    return b.decode("utf-8", "surrogateescape")


def _header_op(where: Callable[[StreamInfo], Headers | None], sub: str, length: int | None) -> Op:
    """REQ / RESP / TRAILER: `main?alternative`, case-insensitive, first value, truncated."""
    names = sub.split("?")
    if len(names) > 2:
        raise FormatError(f"More than 1 alternative header specified in token: {sub}")
    if any("\n" in n for n in names):
        raise FormatError("Invalid header configuration. Format string contains newline.")
    wanted = [n.lower().encode() for n in names if n]
    pseudo = [_PSEUDO.get(n) if where is _request_headers else None for n in wanted]

    def op(info: StreamInfo) -> Value:
        headers = None
        for name, get in zip(wanted, pseudo, strict=True):
            if get is not None:
                b = get(info)
                if b is None:
                    continue
                s = _text(b)
                return s[:length] if length is not None else s
            if headers is None:
                headers = where(info)
                if headers is None:
                    return None
            for k, v in headers:
                if k == name:
                    s = _text(v)
                    return s[:length] if length is not None else s
        return None

    return op


def _request_headers(info: StreamInfo) -> Headers:
    return info.request_headers


# Request pseudo-headers, read from the stream directly. Envoy's HTTP/1 codec turns Host into
# :authority; REQ(HOST) finds it there too.
_PSEUDO: dict[bytes, Callable[[StreamInfo], bytes | None]] = {
    b":method": lambda i: i.method,
    b":path": lambda i: i.path,
    b":scheme": lambda i: i.scheme,
    b":authority": lambda i: i.authority,
    b"host": lambda i: i.authority,
}


def _ms(later: float | None, earlier: float | None) -> int | None:
    if later is None or earlier is None:
        return None
    return int((later - earlier) * 1000)  # duration_cast<milliseconds>: truncates


def _without_port(addr: str | None) -> str | None:
    if addr is None:
        return None
    host = addr.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def _port(addr: str | None) -> str | None:
    return None if addr is None else addr.rpartition(":")[2]


def _address_ops(name: str, get: Callable[[StreamInfo], str | None]) -> dict[str, Op]:
    return {
        f"{name}_ADDRESS": get,
        f"{name}_ADDRESS_WITHOUT_PORT": lambda i: _without_port(get(i)),
        f"{name}_PORT": lambda i: _port(get(i)),
    }


def _flags(info: StreamInfo) -> str:
    # ResponseFlagUtils::toShortString prints `-` itself: a string, even in typed JSON.
    return info.flags or "-"


def _flags_long(info: StreamInfo) -> str:
    f = _flags(info)
    return f if f == "-" else ",".join(LONG_FLAG_NAMES.get(x, x) for x in f.split(","))


def _upstream_host(info: StreamInfo) -> str | None:
    h = info.upstream_host
    return None if h == "-" or not h else h


# gRPC status names (grpc/status.h), index = number.
GRPC_STATUS_NAMES = (
    "OK",
    "CANCELED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
_GRPC_CAMEL = tuple(
    "Canceled" if n == "CANCELED" else "".join(w.title() for w in n.split("_"))
    for n in GRPC_STATUS_NAMES
)


def grpc_status(info: StreamInfo) -> int | None:
    """grpc-status from the trailers, else the response headers (Grpc::Common::getGrpcStatus)."""
    for headers in (info.response_trailers, info.response_headers):
        if headers is None:
            continue
        for k, v in headers:
            if k == b"grpc-status":
                try:
                    return int(v)
                except ValueError:
                    return 2  # an unparseable status is UNKNOWN
    return None


def _grpc_op(sub: str) -> Op:
    if sub in ("", "CAMEL_STRING"):
        names: Sequence[str] | None = _GRPC_CAMEL
    elif sub == "SNAKE_STRING":
        names = GRPC_STATUS_NAMES
    elif sub == "NUMBER":
        names = None
    else:
        raise FormatError(f"GRPC_STATUS only supports CAMEL_STRING, SNAKE_STRING or NUMBER: {sub}")

    def op(info: StreamInfo) -> Value:
        n = grpc_status(info)
        if n is None or names is None:
            return n
        return names[n] if 0 <= n < len(names) else str(n)

    return op


def _simple_ops() -> dict[str, Op]:
    ops: dict[str, Op] = {
        "PROTOCOL": lambda i: i.protocol,
        "RESPONSE_CODE": lambda i: i.status,
        "RESPONSE_FLAGS": _flags,
        "RESPONSE_FLAGS_LONG": _flags_long,
        "BYTES_RECEIVED": lambda i: i.bytes_received,
        "BYTES_SENT": lambda i: i.bytes_sent,
        "DURATION": lambda i: _ms(i.response_end, i.start),
        "REQUEST_DURATION": lambda i: _ms(i.request_end, i.start),
        "RESPONSE_DURATION": lambda i: _ms(i.first_upstream_byte, i.start),
        "RESPONSE_TX_DURATION": lambda i: _ms(i.response_end, i.first_upstream_byte),
        "UPSTREAM_HOST": _upstream_host,
        "UPSTREAM_CLUSTER": lambda i: i.upstream_cluster,
        "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda i: i.upstream_transport_failure_reason,
        "ROUTE_NAME": lambda i: i.route_name or None,
        "GRPC_STATUS_NUMBER": grpc_status,
    }
    ops |= _address_ops("UPSTREAM_LOCAL", lambda i: i.upstream_local_address)
    ops |= _address_ops("UPSTREAM_REMOTE", _upstream_host)
    ops |= _address_ops("DOWNSTREAM_REMOTE", lambda i: i.downstream_remote_address)
    ops |= _address_ops("DOWNSTREAM_DIRECT_REMOTE", lambda i: i.downstream_direct_remote_address)
    ops |= _address_ops("DOWNSTREAM_LOCAL", lambda i: i.downstream_local_address)
    return ops


_SIMPLE = _simple_ops()

# Operators Envoy 1.40 knows that podproxy does not implement: refused with a clear error
# rather than printing a `-` that would look like data.
ENVOY_ONLY = frozenset(
    str.split(
        """
    RESPONSE_CODE_DETAILS CONNECTION_TERMINATION_DETAILS REQUEST_TX_DURATION
    DOWNSTREAM_HANDSHAKE_DURATION ROUNDTRIP_DURATION UPSTREAM_CONNECTION_POOL_READY_DURATION
    REQUEST_HEADERS_BYTES RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES
    UPSTREAM_WIRE_BYTES_SENT UPSTREAM_WIRE_BYTES_RECEIVED UPSTREAM_HEADER_BYTES_SENT
    UPSTREAM_HEADER_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_SENT DOWNSTREAM_WIRE_BYTES_RECEIVED
    DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_HEADER_BYTES_RECEIVED UPSTREAM_PROTOCOL
    UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_CONNECTION_ID CONNECTION_ID STREAM_ID
    VIRTUAL_CLUSTER_NAME REQUESTED_SERVER_NAME DYNAMIC_METADATA CLUSTER_METADATA
    UPSTREAM_METADATA FILTER_STATE UPSTREAM_FILTER_STATE LOCAL_REPLY_BODY FILTER_CHAIN_NAME
    ENVIRONMENT ACCESS_LOG_TYPE UNIQUE_ID TRACE_ID CUSTOM_FLAGS
    DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_PEER_SUBJECT
    DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_PEER_ISSUER DOWNSTREAM_TLS_SESSION_ID
    DOWNSTREAM_TLS_CIPHER DOWNSTREAM_TLS_VERSION DOWNSTREAM_PEER_FINGERPRINT_256
    DOWNSTREAM_PEER_FINGERPRINT_1 DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_CERT
    DOWNSTREAM_PEER_CERT_V_START DOWNSTREAM_PEER_CERT_V_END UPSTREAM_PEER_SUBJECT
    UPSTREAM_PEER_ISSUER UPSTREAM_TLS_SESSION_ID UPSTREAM_TLS_CIPHER UPSTREAM_TLS_VERSION
    UPSTREAM_PEER_CERT UPSTREAM_PEER_CERT_V_START UPSTREAM_PEER_CERT_V_END
    DOWNSTREAM_TRANSPORT_FAILURE_REASON REQ_WITHOUT_QUERY QUERY_PARAM PATH
    """
    )
)


def _command(name: str, sub: str, length: int | None) -> Op:
    op = _SIMPLE.get(name)
    if op is not None:
        _check(name, _COMMAND_ONLY, sub, length, False)
        return op
    if name in ("REQ", "RESP", "TRAILER"):
        _check(name, _PARAMS_REQUIRED, sub, length, True)
        if name == "REQ":
            return _header_op(_request_headers, sub, length)
        if name == "RESP":
            return _header_op(lambda i: i.response_headers, sub, length)
        return _header_op(lambda i: i.response_trailers, sub, length)
    if name == "START_TIME":
        _check(name, _PARAMS_OPTIONAL, sub, length, False)
        if re.search(r"%[-_0^#]*[1-9]*[EO]?n", sub):
            raise FormatError("Invalid header configuration. Format string contains newline.")
        render = start_time_formatter(sub)
        return lambda i: render(i.start_time)
    if name == "GRPC_STATUS":
        _check(name, _PARAMS_OPTIONAL, sub, length, False)
        return _grpc_op(sub)
    if name == "HOSTNAME":
        _check(name, _COMMAND_ONLY, sub, length, False)
        hostname = socket.gethostname() or None
        return lambda i: hostname
    if name in ENVOY_ONLY:
        raise FormatError(f"%{name}%: Envoy command operator not supported by podproxy yet")
    raise FormatError(f"Not supported field in StreamInfo: {name}")


def parse(fmt: str, allowed: Container[str] | None = None) -> list[Segment]:
    """A format string as literal strings and operators (adjacent literals merged).
    `allowed`, when given, names the operators this use of the formatter can render (header
    values read a stream mid-way, not a finished one); any other is refused."""
    out: list[Segment] = []
    literal: list[str] = []
    pos = 0
    n = len(fmt)
    while pos < n:
        c = fmt[pos]
        if c != "%":
            literal.append(c)
            pos += 1
            continue
        if fmt.startswith("%%", pos):
            literal.append("%")
            pos += 2
            continue
        m = _COMMAND.match(fmt, pos)
        if m is None:
            raise FormatError(
                f"Incorrect configuration: {fmt}. Couldn't find valid command at position {pos}"
            )
        if literal:
            out.append("".join(literal))
            literal = []
        length = int(m.group(3)) if m.group(3) is not None else None
        name = m.group(1)
        op = _command(name, m.group(2) or "", length)
        if allowed is not None and name not in allowed:
            raise FormatError(f"%{name}%: not supported in this field by podproxy yet")
        out.append(op)
        pos = m.end()
    if literal:
        out.append("".join(literal))
    return out


# --- rendering ------------------------------------------------------------------------------


def _joiner(segments: list[Segment], empty: str) -> Callable[[StreamInfo], str]:
    def render(info: StreamInfo) -> str:
        out = []
        for s in segments:
            if isinstance(s, str):
                out.append(s)
            else:
                v = s(info)
                out.append(empty if v is None else v if isinstance(v, str) else str(v))
        return "".join(out)

    return render


class TextFormatter:
    """A text format: one line per stream, exactly the format (no newline is added)."""

    __slots__ = ("render",)

    def __init__(
        self, fmt: str, omit_empty_values: bool = False, allowed: Container[str] | None = None
    ) -> None:
        self.render = _joiner(parse(fmt, allowed), "" if omit_empty_values else "-")

    def format(self, info: StreamInfo) -> bytes:
        return self.render(info).encode("utf-8", "surrogateescape")


JsonNode = Callable[[StreamInfo], Any]
_DROP = object()  # an omitted value (omit_empty_values)


# Keys are in order already (JsonFormatter._node sorts them once).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class JsonFormatter:
    """A JSON format: one object per line, keys sorted at every level (Envoy 1.40 builds a
    protobuf Struct, a map its JSON printer writes in key order; checked side by side).

    An operator that is a value's whole string renders typed (numbers, null when unset);
    inside a longer string it prints as text. Envoy 1.40 does this for all three JSON fields
    (log_format.json_format, FileAccessLog typed_json_format and json_format: checked side by
    side). Number values in the format are printed as given.
    """

    __slots__ = ("_root",)

    def __init__(self, fmt: Mapping[str, Any], omit_empty_values: bool = False) -> None:
        self._root = self._node(dict(fmt), omit_empty_values)

    def _node(self, value: Any, omit: bool) -> JsonNode:
        if isinstance(value, bool) or value is None:
            raise FormatError(
                "Only string values, nested structs, list values and number values are "
                "supported in structured access log format."
            )
        if isinstance(value, int | float):
            number: float | int = int(value) if float(value).is_integer() else value
            return lambda i: number
        if isinstance(value, str):
            return self._string(value, omit)
        if isinstance(value, dict):
            # Sorted once here: the line's dict keeps this order, so no sort per line.
            items = sorted((str(k), self._node(v, omit)) for k, v in value.items())

            def obj(info: StreamInfo) -> Any:
                out = {}
                for k, node in items:
                    v = node(info)
                    if v is not _DROP:
                        out[k] = v
                return out

            return obj
        if isinstance(value, list):
            nodes = [self._node(v, omit) for v in value]
            return lambda i: [v for v in (n(i) for n in nodes) if v is not _DROP]
        raise FormatError(f"unexpected value in a JSON format: {value!r}")

    @staticmethod
    def _string(fmt: str, omit: bool) -> JsonNode:
        segments = parse(fmt)
        if len(segments) == 1 and not isinstance(segments[0], str):
            op = segments[0]
            if not omit:
                return op  # None renders as null: no wrapper call per field

            def single(info: StreamInfo) -> Any:
                v = op(info)
                return _DROP if v is None and omit else v

            return single
        if all(isinstance(s, str) for s in segments):
            text = "".join(s for s in segments if isinstance(s, str))
            return lambda i: text
        return _joiner(segments, "" if omit else "-")

    def format(self, info: StreamInfo) -> bytes:
        line = _dumps(self._root(info))
        return (line + "\n").encode("utf-8", "surrogateescape")


Formatter = TextFormatter | JsonFormatter
