"""The gRPC-Web filter (envoy.filters.http.grpc_web): a browser's gRPC-Web call goes upstream as
a gRPC call, and the gRPC response comes back as gRPC-Web, its trailers carried in the body.

Request: one of the four gRPC-Web content types (exact match) becomes `application/grpc`, with
`te: trailers` and a `grpc-accept-encoding`; a `-text` body is base64, decoded in groups of four
characters as it streams. Response: the content type goes back to gRPC-Web, the trailers become
a body frame flagged 0x80, and a text client gets every frame base64-encoded. A response that is
not gRPC (an upstream error page, any local reply) becomes a gRPC-Web error: grpc-status from its
HTTP status, its body (at most 16 KiB kept) as grpc-message (Envoy's grpc_web_filter.cc).
Requests of any other content type pass untouched, and cost one header lookup.
"""

from __future__ import annotations

import binascii
import struct
from typing import Any

from podproxy.filters.http.common import FilterContext
from podproxy.http.filter import (
    CONTINUE,
    STOP_ITERATION,
    STOP_ITERATION_NO_BUFFER,
    FilterCallbacks,
    FilterFactory,
    HttpFilter,
)
from podproxy.http.stream import Headers, ResponseHead, first_value

NAME = "envoy.filters.http.grpc_web"

GRPC = b"application/grpc"
GRPC_WEB = b"application/grpc-web"
GRPC_WEB_PROTO = b"application/grpc-web+proto"
GRPC_WEB_TEXT = b"application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = b"application/grpc-web-text+proto"
# The request content types the filter acts on: compared as they are, parameters and case
# included (GrpcWebFilter::isGrpcWebRequest).
TEXT_TYPES = frozenset({GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
WEB_TYPES = frozenset({GRPC_WEB, GRPC_WEB_PROTO}) | TEXT_TYPES
# What an upstream gRPC-Web response may say it is (lower-cased, parameters dropped) to pass
# without being turned into an error (hasProtoEncodedGrpcWebContentType).
PROTO_WEB_TYPES = frozenset({GRPC_WEB, GRPC_WEB_PROTO})

# Envoy adds this when the client named no encodings (CustomHeaders GrpcAcceptEncodingValues
# Default; older Envoys sent "identity,deflate,gzip").
GRPC_ACCEPT_ENCODING = b"identity"
# How much of a non-gRPC response body becomes grpc-message once it was buffered
# (MAX_BUFFERED_PLAINTEXT_LENGTH); further body is dropped.
MAX_BUFFERED_PLAINTEXT = 16384
# The flag byte of the trailers frame (GRPC_WEB_TRAILER).
TRAILERS_FLAG = 0x80

BAD_BASE64 = b"Bad gRPC-web request, invalid base64 data."
DETAILS_BAD_SIZE = "grpc_base_64_decode_failed_bad_size"
DETAILS_BAD_DATA = "grpc_base_64_decode_failed"

# Grpc::Utility::httpToGrpcStatus: what a non-gRPC response's HTTP status means in gRPC.
_GRPC_STATUS_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN = 2
# What Envoy's PercentEncoding::encode leaves as it is: printable ASCII except %.
_PLAIN = frozenset(range(0x20, 0x7F)) - {0x25}
_LENGTH = struct.Struct(">I")


def percent_encode(data: bytes) -> bytes:
    """grpc-message's escaping (Http::Utility::PercentEncoding::encode)."""
    if all(b in _PLAIN for b in data):
        return data
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in data)


def base64_decode(text: bytes) -> bytes:
    """Envoy's Base64::decode of a length divisible by 4: padding only at the end, no other
    characters, and the unused bits of the last one zero; b"" when the text breaks a rule."""
    try:
        out = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return b""
    # A canonical encoding is the one text that encodes back to itself: this rejects the
    # non-zero spare bits (and stray padding) Envoy's decodeLast rejects.
    if binascii.b2a_base64(out, newline=False) != text:
        return b""
    return out


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Set header `name` to one value, where it was if it was there (Envoy's setInline)."""
    at = -1
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0] == name:
            if at >= 0:
                del headers[at]
            at = i
    if at >= 0:
        headers[at] = (name, value)
    else:
        headers.append((name, value))


def _remove(headers: Headers, name: bytes) -> None:
    headers[:] = [(k, v) for k, v in headers if k != name]


def _media_type(value: bytes) -> bytes:
    """A content type without its parameters, trimmed and lower-cased (media types are
    case-insensitive, RFC 9110 §8.3.1)."""
    return value.split(b";", 1)[0].rstrip().lower()


class GrpcWebFilter(HttpFilter):
    """One stream: `on` once its request turned out to be gRPC-Web (nothing else is done
    otherwise). `pending` keeps what could not be decoded yet: fewer than four base64
    characters of a text request, or part of a gRPC frame of the response to a text client."""

    __slots__ = (
        "body",
        "body_size",
        "head",
        "on",
        "pending",
        "request_type",
        "response_pending",
        "text_request",
        "text_response",
        "transform",
    )

    def __init__(self, callbacks: FilterCallbacks) -> None:
        super().__init__(callbacks)
        self.on = False
        self.request_type = b""
        self.text_request = False
        self.text_response = False
        self.pending = b""
        self.response_pending = b""
        # A response to turn into a gRPC-Web error: its held head, and its body so far (None
        # until a piece was held, as Envoy's encoding buffer that does not exist before).
        self.transform = False
        self.head: ResponseHead | None = None
        self.body: list[bytes] | None = None
        self.body_size = 0

    # request ---------------------------------------------------------------------------
    def decode_headers(self, head: Any, end_stream: bool) -> int:
        headers: Headers = head.headers
        content_type = first_value(headers, b"content-type")
        if content_type not in WEB_TYPES or not head.target:
            return CONTINUE
        self.on = True
        self.request_type = content_type
        self.text_request = content_type in TEXT_TYPES
        self.text_response = first_value(headers, b"accept") in TEXT_TYPES
        # The client's content-length counts gRPC-Web bytes (base64 ones for text), not what
        # goes upstream: Envoy removes it, and its HTTP/1 codec then sends the body chunked
        # (or, with no body, `content-length: 0`).
        kept: Headers = []
        chunked = False
        for k, v in headers:
            if k == b"content-length":
                continue
            if k == b"transfer-encoding":
                chunked = True
            kept.append((k, v))
        if end_stream:
            kept.append((b"content-length", b"0"))
        elif not chunked:
            kept.append((b"transfer-encoding", b"chunked"))
        headers[:] = kept
        set_header(headers, b"content-type", GRPC)
        # gRPC servers require te: trailers (a test for proxies that drop trailers).
        set_header(headers, b"te", b"trailers")
        if first_value(headers, b"grpc-accept-encoding") is None:
            headers.append((b"grpc-accept-encoding", GRPC_ACCEPT_ENCODING))
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.text_request:
            return CONTINUE
        pending = self.pending
        available = len(pending) + len(data)
        if end_stream:
            if available == 0:
                return CONTINUE
            if available % 4:
                # Base64 padding is mandatory: a body that ends mid-group is broken.
                self.callbacks.send_local_reply(400, BAD_BASE64, details=DETAILS_BAD_SIZE)
                return STOP_ITERATION_NO_BUFFER
        elif available < 4:
            self.pending = pending + data
            return STOP_ITERATION_NO_BUFFER
        whole = available - available % 4
        text = pending + data
        decoded = base64_decode(text[:whole])
        if not decoded:
            self.callbacks.send_local_reply(400, BAD_BASE64, details=DETAILS_BAD_DATA)
            return STOP_ITERATION_NO_BUFFER
        self.pending = text[whole:]
        self.callbacks.inject_decoded_data(self, decoded, end_stream)
        return STOP_ITERATION_NO_BUFFER

    # response --------------------------------------------------------------------------
    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        if not self.on:
            return CONTINUE
        if getattr(self.callbacks, "replied", False):
            # A local reply: Envoy decided whether it is a gRPC reply from the request as the
            # client sent it, before any filter; the connection asks the request headers now,
            # so they get back the client's gRPC-Web type (the upstream has had them).
            set_header(self.callbacks.exchange.head.headers, b"content-type", self.request_type)
        headers = head.headers
        content_type = first_value(headers, b"content-type")
        if end_stream:
            # A trailers-only response is gRPC if it carries a grpc-status.
            grpc = first_value(headers, b"grpc-status") is not None
        else:
            grpc = head.status == 200 and _is_grpc_type(content_type)
        proto_web = (
            head.status == 200
            and content_type is not None
            and _media_type(content_type) in PROTO_WEB_TYPES
        )
        self.transform = not grpc and not proto_web
        # The body changes length: no content-length (HTTP/1 then chunks it, or a response
        # with no body says 0, as Envoy's HTTP/1 codec does).
        _remove(headers, b"content-length")
        head.content_length = 0 if end_stream else None
        head.chunked = not end_stream
        set_header(
            headers,
            b"content-type",
            GRPC_WEB_TEXT_PROTO if self.text_response else GRPC_WEB_PROTO,
        )
        if end_stream or not self.transform:
            # (Envoy leaves a body-less non-gRPC response as it is, bar these two.)
            return CONTINUE
        self.head = head
        return STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.on:
            return CONTINUE
        if self.transform:
            if not end_stream:
                if self.body is None:
                    self.body = []
                elif self.body_size >= MAX_BUFFERED_PLAINTEXT:
                    return STOP_ITERATION_NO_BUFFER  # more than grpc-message will keep
                self.body.append(data)
                self.body_size += len(data)
                return STOP_ITERATION_NO_BUFFER
            if self.body is None:
                message = data  # one piece, never buffered: kept whole, as Envoy does
            else:
                message = (b"".join(self.body) + data)[:MAX_BUFFERED_PLAINTEXT]
            self._to_grpc_web_error(message)
            self.callbacks.inject_encoded_data(self, b"", True)
            return STOP_ITERATION_NO_BUFFER
        if not self.text_response:
            return CONTINUE
        out = self._encode_frames(data)
        if not out:
            # Not one whole frame yet (Envoy stops here even at the end of the stream).
            return STOP_ITERATION_NO_BUFFER
        self.callbacks.inject_encoded_data(self, out, end_stream)
        return STOP_ITERATION_NO_BUFFER

    def encode_trailers(self, trailers: Headers) -> int:
        if not self.on:
            return CONTINUE
        if self.transform:
            body = self.body
            self._to_grpc_web_error(b"".join(body)[:MAX_BUFFERED_PLAINTEXT] if body else b"")
            return CONTINUE
        # The trailers frame: `name:value\r\n` for each, after the flag and the length.
        block = b"".join(k + b":" + v + b"\r\n" for k, v in trailers)
        frame = bytes((TRAILERS_FLAG,)) + _LENGTH.pack(len(block)) + block
        if self.text_response:
            frame = binascii.b2a_base64(frame, newline=False)
        self.callbacks.add_encoded_data(frame)
        del trailers[:]  # they travel in the body now
        return CONTINUE

    def _encode_frames(self, data: bytes) -> bytes:
        """The whole gRPC frames received so far, each base64-encoded on its own (a text
        client decodes frame by frame); a partial one waits for the rest."""
        buf = self.response_pending + data if self.response_pending else data
        out: list[bytes] = []
        at = 0
        n = len(buf)
        while n - at >= 5:
            length = _LENGTH.unpack_from(buf, at + 1)[0]
            end = at + 5 + length
            if end > n:
                break
            out.append(binascii.b2a_base64(buf[at:end], newline=False))
            at = end
        self.response_pending = buf[at:]
        return b"".join(out)

    def _to_grpc_web_error(self, message: bytes) -> None:
        """Envoy's setTransformedNonProtoEncodedResponseHeaders: the held head gets the gRPC
        status its HTTP status stands for and the body as grpc-message; the body goes."""
        self.transform = False
        self.body = None
        head = self.head
        assert head is not None
        headers = head.headers
        set_header(headers, b"grpc-message", percent_encode(message))
        grpc_status = _GRPC_STATUS_OF_HTTP.get(head.status, _GRPC_UNKNOWN)
        set_header(headers, b"grpc-status", b"%d" % grpc_status)
        set_header(headers, b"content-length", b"0")
        head.content_length = 0
        head.chunked = False


def _is_grpc_type(content_type: bytes | None) -> bool:
    """Grpc::Common::hasGrpcContentType: `application/grpc` or `application/grpc+...`."""
    if content_type is None or not content_type.startswith(GRPC):
        return False
    return len(content_type) == len(GRPC) or content_type[len(GRPC)] == 0x2B  # "+"


def build(cfg: Any, ctx: FilterContext) -> FilterFactory:
    return GrpcWebFilter
