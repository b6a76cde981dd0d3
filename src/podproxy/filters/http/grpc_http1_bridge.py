"""The gRPC HTTP/1.1 bridge (envoy.filters.http.grpc_http1_bridge): an HTTP/1 client posting a
gRPC call, which cannot read trailers, gets the call's status in the response headers.

For a gRPC request (content type `application/grpc[+...]` with a path) from an HTTP/1 client,
the response is held whole (so unary calls only); when its trailers come, a `grpc-status` other
than 0 turns the HTTP status into 503, grpc-status and grpc-message are copied into the headers
and content-length is set to the body held. A response that ends without trailers goes as it
came. With `upgrade_protobuf_to_grpc` an `application/x-protobuf` request becomes a gRPC call
(its body framed as one uncompressed message) and the response body loses its frame header;
`ignore_query_parameters` cuts the query off a bridged request's path
(Envoy's http1_bridge_filter.cc).
"""

from __future__ import annotations

import struct
from typing import Any

from podproxy.filters.http.common import FilterContext
from podproxy.filters.http.grpc_web import set_header
from podproxy.http.filter import (
    CONTINUE,
    STOP_ITERATION,
    STOP_ITERATION_NO_BUFFER,
    FilterCallbacks,
    FilterFactory,
    HttpFilter,
)
from podproxy.http.stream import Headers, ResponseHead, first_value, is_grpc_request

NAME = "envoy.filters.http.grpc_http1_bridge"

PROTOBUF = b"application/x-protobuf"
GRPC = b"application/grpc"
# A gRPC message's frame header: a flag byte (0: not compressed) and a big-endian length.
FRAME_HEADER_SIZE = 5
_FRAME_HEADER = struct.Struct(">BI")
# Downstream protocols below HTTP/2 (the only ones the bridge acts for).
_HTTP1_VERSIONS = frozenset({"1.0", "1.1"})


def _uint(value: bytes) -> int | None:
    """absl::SimpleAtoi into a uint64: optional surrounding whitespace and `+`, then digits."""
    text = value.strip(b" \t\n\v\f\r")
    if text[:1] == b"+":
        text = text[1:]
    if not text.isdigit():
        return None
    n = int(text)
    return n if n < 1 << 64 else None


class Http1BridgeFilter(HttpFilter):
    """One stream: `bridging` for a gRPC request from an HTTP/1 client; `framing` while an
    upgraded protobuf request's response still has its frame header to lose."""

    __slots__ = ("body", "bridging", "framing", "head", "ignore_query", "request_type", "upgrade")

    def __init__(self, callbacks: FilterCallbacks, upgrade: bool, ignore_query: bool) -> None:
        super().__init__(callbacks)
        self.upgrade = upgrade
        self.ignore_query = ignore_query
        self.bridging = False
        self.framing = False
        self.request_type = b""
        self.head: ResponseHead | None = None
        self.body: list[bytes] = []

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        headers: Headers = head.headers
        if self.upgrade and head.target:
            content_type = first_value(headers, b"content-type")
            if content_type == PROTOBUF:
                self.framing = True
                self.request_type = content_type
                set_header(headers, b"content-type", GRPC)
                # The length becomes part of the gRPC frame; without one an HTTP/1 upstream
                # gets the body chunked (Envoy's codec, once the filter removed it).
                kept = [(k, v) for k, v in headers if k != b"content-length"]
                if not end_stream and not any(k == b"transfer-encoding" for k, _ in kept):
                    kept.append((b"transfer-encoding", b"chunked"))
                headers[:] = kept
                # Routes may match gRPC requests (`grpc: {}`), which this one now is.
                self.callbacks.clear_route_cache()
        if head.version in _HTTP1_VERSIONS and head.target and is_grpc_request(headers):
            self.bridging = True
            if self.ignore_query:
                query = head.target.find(b"?")
                if query >= 0:
                    head.target = head.target[:query]
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.bridging or not self.framing:
            return CONTINUE
        # The whole protobuf message, then framed as one gRPC message.
        self.body.append(data)
        if not end_stream:
            return STOP_ITERATION_NO_BUFFER
        message = b"".join(self.body)
        self.body = []
        framed = _FRAME_HEADER.pack(0, len(message)) + message
        self.callbacks.inject_decoded_data(self, framed, True)
        return STOP_ITERATION_NO_BUFFER

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        if self.framing and getattr(self.callbacks, "replied", False):
            # A local reply: Envoy shaped it by the request the client sent (a protobuf one,
            # not gRPC); the connection reads the request headers now, so they say so again.
            set_header(self.callbacks.exchange.head.headers, b"content-type", self.request_type)
        if not self.bridging or end_stream:
            return CONTINUE
        self.head = head
        return STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.bridging:
            return CONTINUE
        if end_stream:
            # No trailers: the response goes as it came, all of it now.
            body = b"".join(self.body) + data
            self.body = []
            self.callbacks.inject_encoded_data(self, body, True)
            return STOP_ITERATION_NO_BUFFER
        if self.framing:
            # An upgraded call answers the protobuf client with the bare message: the first
            # piece loses the frame header (Envoy drains it from that piece alone).
            data = data[FRAME_HEADER_SIZE:]
            self.framing = False
        self.body.append(data)
        return STOP_ITERATION_NO_BUFFER

    def encode_trailers(self, trailers: Headers) -> int:
        if not self.bridging:
            return CONTINUE
        head = self.head
        assert head is not None
        headers = head.headers
        status = first_value(trailers, b"grpc-status")
        if status is not None:
            if _uint(status) != 0:
                head.status = 503
            set_header(headers, b"grpc-status", status)
        message = first_value(trailers, b"grpc-message")
        if message is not None:
            set_header(headers, b"grpc-message", message)
        # The whole body is here: its length tells an HTTP/1 client the response is complete.
        body = b"".join(self.body)
        self.body = []
        set_header(headers, b"content-length", b"%d" % len(body))
        head.content_length = len(body)
        head.chunked = False
        if body:
            self.callbacks.add_encoded_data(body)
        # The trailers still go on: an HTTP/1 client's codec drops them.
        return CONTINUE


def build(cfg: Any, ctx: FilterContext) -> FilterFactory:
    upgrade: bool = cfg.upgrade_protobuf_to_grpc
    ignore_query: bool = cfg.ignore_query_parameters

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return Http1BridgeFilter(callbacks, upgrade, ignore_query)

    return factory
