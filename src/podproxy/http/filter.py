"""What an HTTP filter is: Envoy's StreamDecoderFilter and StreamEncoderFilter, for one stream.

A filter is made per stream by its factory (built once from the filter's typed config). The
connection manager calls `decode_headers`, `decode_data` for the request in config order and
`encode_headers`, `encode_data` for the response in reverse; each returns whether the walk goes
on to the next filter (CONTINUE) or stops at this one. A filter that stopped resumes the walk
with `callbacks.continue_decoding()` / `continue_encoding()`, or ends the stream with
`callbacks.send_local_reply()`. Filters see only the codec-neutral stream (`http/stream.py`) and
these callbacks, never a connection or a codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from podproxy.http.stream import Exchange, Headers, ResponseHead

# FilterHeadersStatus / FilterDataStatus (envoy/http/filter.h), as small ints for the hot path.
CONTINUE = 0
# Headers: the next filters see nothing until continue; this filter still gets the body.
STOP_ITERATION = 1
# Headers: nor does this filter get the body; it is buffered until continue
# (StopAllIterationAndBuffer).
STOP_ALL_ITERATION_AND_BUFFER = 2
# Data: the chunk is kept, with any before it, and handed on as one at continue (or when this
# filter later returns CONTINUE for a chunk).
STOP_ITERATION_AND_BUFFER = 3
# Data: the chunk is dropped from the walk; the filter keeps or discards it itself.
STOP_ITERATION_NO_BUFFER = 4


class FilterCallbacks(Protocol):
    """What a filter may ask of the connection manager about its stream."""

    @property
    def exchange(self) -> Exchange: ...
    def route(self) -> Any: ...
    def per_filter_config(self, name: str) -> Any: ...
    def continue_decoding(self) -> None: ...
    def continue_encoding(self) -> None: ...
    def decoding_buffer(self) -> bytes: ...
    def add_decoded_data(self, data: bytes) -> None: ...
    def add_encoded_data(self, data: bytes) -> None: ...
    def inject_decoded_data(self, f: HttpFilter, data: bytes, end_stream: bool) -> None: ...
    def inject_encoded_data(self, f: HttpFilter, data: bytes, end_stream: bool) -> None: ...
    def clear_route_cache(self) -> None: ...
    def set_buffer_limit(self, limit: int) -> None: ...
    def send_local_reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Headers | None = None,
        details: str = "",
        flags: str = "-",
    ) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


class HttpFilter:
    """Base of a per-stream filter: every callback continues unless overridden."""

    __slots__ = ("callbacks",)

    def __init__(self, callbacks: FilterCallbacks) -> None:
        self.callbacks = callbacks

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def decode_trailers(self, trailers: Headers) -> int:
        """The request's trailers, after its body (CONTINUE or STOP_ITERATION); body may be
        added before them with `callbacks.add_decoded_data`."""
        return CONTINUE

    def encode_trailers(self, trailers: Headers) -> int:
        """The response's trailers, after its body; `callbacks.add_encoded_data` adds body
        before them (grpc_web turns trailers into a body frame so)."""
        return CONTINUE

    def on_destroy(self) -> None:
        """The stream ended (completed or reset): drop timers and counts."""


# A filter factory: made once from the filter's config, called once per stream.
FilterFactory = Callable[[FilterCallbacks], HttpFilter]
