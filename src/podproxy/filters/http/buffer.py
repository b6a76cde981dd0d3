"""The buffer filter (envoy.filters.http.buffer): the router gets the request only once all of
it has arrived, up to `max_request_bytes` (over it: 413, as Envoy's decoder buffer limit).

A request that came without content-length (chunked) leaves with the length it turned out to
have, as Envoy's filter sets it. A route's BufferPerRoute turns the filter off or sets another
limit.
"""

from __future__ import annotations

from typing import Any

from podproxy.filters.http.common import FilterContext
from podproxy.http.filter import (
    CONTINUE,
    STOP_ITERATION,
    STOP_ITERATION_AND_BUFFER,
    FilterCallbacks,
    FilterFactory,
    HttpFilter,
)

NAME = "envoy.filters.http.buffer"


class BufferFilter(HttpFilter):
    __slots__ = ("length", "limit", "on")

    def __init__(self, callbacks: FilterCallbacks, limit: int) -> None:
        super().__init__(callbacks)
        self.limit = limit
        self.on = False
        self.length = 0

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        if end_stream:
            return CONTINUE  # nothing to wait for
        per_route = self.callbacks.per_filter_config(NAME)
        limit = self.limit
        if per_route is not None:
            if per_route.disabled:
                return CONTINUE
            limit = per_route.buffer.max_request_bytes
        self.on = True
        self.callbacks.set_buffer_limit(limit)
        return STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not self.on:
            return CONTINUE
        self.length += len(data)
        if not end_stream:
            return STOP_ITERATION_AND_BUFFER
        head = self.callbacks.exchange.head
        if head.get(b"content-length") is None:
            # Envoy's maybeAddContentLength: the whole body is known now.
            head.headers[:] = [(k, v) for k, v in head.headers if k != b"transfer-encoding"]
            head.headers.append((b"content-length", b"%d" % self.length))
        return CONTINUE


def build(cfg: Any, ctx: FilterContext) -> FilterFactory:
    limit = cfg.max_request_bytes

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return BufferFilter(callbacks, limit)

    return factory
