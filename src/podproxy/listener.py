"""Listeners: a bound socket, its HTTP connection manager, and its live connections.

`HttpListener` is built from a typed `Listener` (one filter chain with the HTTP connection
manager, as podproxy supports) and opened only once clusters are warm. Stopping is two steps,
as Envoy drains: stop accepting, then let the tracker drain keep-alive connections.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from podproxy.http.downstream import (
    ConnectionManagerConfig,
    ConnectionTracker,
    HttpConnManagerStats,
    ListenerStats,
    StreamHandler,
)
from podproxy.router.forwarder import Forwarder, ForwarderConfig
from podproxy.router.routes import build_route_table
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster

LISTEN_BACKLOG = 1024


def listener_stat_name(address: str, port: int) -> str:
    """Envoy's listener stat scope: `0.0.0.0_10000` (`:` becomes `_`)."""
    return f"{address}_{port}".replace(":", "_")


def _name(v: Any) -> str:
    return str(getattr(v, "name", v))


class BoundListener:
    """A listening socket whose connections are handled by one `ConnectionTracker`."""

    def __init__(self, name: str, address: str, port: int, tracker: ConnectionTracker) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.tracker = tracker
        self.server: asyncio.AbstractServer | None = None

    async def start(self, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self.server = await loop.create_server(
            self.tracker.protocol_factory,
            self.address,
            self.port,
            family=family,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )
        if self.port == 0 and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        self.tracker.start()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def drain(self) -> None:
        self.tracker.drain()

    def close(self) -> None:
        self.stop_accepting()
        self.tracker.stop()
        self.tracker.close_all()

    @property
    def address_str(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


def build_http_listener(
    cfg: Any,
    clusters: dict[str, Cluster],
    store: Store,
    access_logger: Any = None,
) -> BoundListener:
    """A listener from its typed config: route table, forwarder and connection manager."""
    sa = cfg.address.socket_address
    hcm = cfg.filter_chains[0].filters[0].typed_config
    http_stats = store.scope(f"http.{hcm.stat_prefix}.").make(HttpConnManagerStats)
    lstats = store.scope(f"listener.{listener_stat_name(sa.address, sa.port_value)}.").make(
        ListenerStats
    )
    suppress = False
    for f in hcm.http_filters:
        tc = f.typed_config
        if tc is not None and getattr(tc, "suppress_envoy_headers", False):
            suppress = True
    fcfg = ForwarderConfig(
        server_name=hcm.server_name.encode(),
        server_header_transformation=_name(hcm.server_header_transformation),
        use_remote_address=hcm.use_remote_address,
        skip_xff_append=hcm.skip_xff_append,
        generate_request_id=hcm.generate_request_id,
        preserve_external_request_id=hcm.preserve_external_request_id,
        always_set_request_id_in_response=hcm.always_set_request_id_in_response,
        suppress_envoy_headers=suppress,
    )
    handler: StreamHandler = Forwarder(
        build_route_table(hcm.route_config), clusters, fcfg, http_stats
    )
    h1 = hcm.http_protocol_options
    default_host = getattr(h1, "default_host_for_http_10", None)
    ccfg = ConnectionManagerConfig(
        stats=http_stats,
        listener_stats=lstats,
        server_name=hcm.server_name.encode(),
        idle_timeout=hcm.common_http_protocol_options.idle_timeout,
        stream_idle_timeout=hcm.stream_idle_timeout,
        request_timeout=hcm.request_timeout,
        delayed_close_timeout=hcm.delayed_close_timeout,
        codec_type=hcm.codec_type.name,
        max_connection_duration=hcm.common_http_protocol_options.max_connection_duration,
        buffer_limit=cfg.per_connection_buffer_limit_bytes,
        max_headers_bytes=hcm.max_request_headers_kb * 1024,
        max_headers_count=hcm.common_http_protocol_options.max_headers_count,
        accept_http_10=bool(getattr(h1, "accept_http_10", False)),
        default_host_for_http_10=default_host.encode() if default_host else None,
        access_logger=access_logger,
    )
    return BoundListener(cfg.name, sa.address, sa.port_value, ConnectionTracker(ccfg, handler))
