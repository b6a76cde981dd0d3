"""The HTTP filters, by Envoy's v3 name: each module builds a per-stream filter factory from its
typed config (`build(config, FilterContext) -> FilterFactory`). The router is not here: it is
the chain's terminal, built by the listener."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podproxy.filters.http import (
    buffer,
    cors,
    fault,
    grpc_http1_bridge,
    grpc_stats,
    grpc_web,
    health_check,
    local_ratelimit,
)
from podproxy.filters.http.common import FilterContext
from podproxy.http.filter import FilterFactory

HTTP_FILTERS: dict[str, Callable[[Any, FilterContext], FilterFactory]] = {
    fault.NAME: fault.build,
    buffer.NAME: buffer.build,
    local_ratelimit.NAME: local_ratelimit.build,
    health_check.NAME: health_check.build,
    cors.NAME: cors.build,
    grpc_web.NAME: grpc_web.build,
    grpc_http1_bridge.NAME: grpc_http1_bridge.build,
    grpc_stats.NAME: grpc_stats.build,
}
