"""Listeners: a bound socket, its HTTP connection manager, and its live connections.

`HttpListener` is built from a typed `Listener` (one filter chain with the HTTP connection
manager, as podproxy supports) and opened only once clusters are warm. Stopping is two steps,
as Envoy drains: stop accepting, then let the tracker drain keep-alive connections (each closes
`drain_timeout` after its drain began, or after the response in flight then).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
from dataclasses import dataclass
from typing import Any

from podproxy.access_log import AccessLogManager, DefaultRuntime, build_access_logs
from podproxy.filters.http import HTTP_FILTERS
from podproxy.filters.http.common import FilterContext, LiveRuntime, ServerHealth
from podproxy.filters.http.router import Forwarder, ForwarderConfig
from podproxy.http.conn_manager import (
    ConnectionManagerConfig,
    FilterChainHandler,
    HttpConnManagerStats,
    ListenerStats,
)
from podproxy.http.http1.downstream import ConnectionTracker
from podproxy.http.http1.logged import connection_class
from podproxy.http.http2.codec import http2_settings
from podproxy.http.http2.downstream import H2DownstreamConnection, LoggedH2DownstreamConnection
from podproxy.http.stream import StreamHandler
from podproxy.http.upgrade import upgrade_policy
from podproxy.router.routes import build_route_table
from podproxy.runtime import Runtime
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster

LISTEN_BACKLOG = 1024
# Linux ioctl: an interface's (first) IPv4 address (<linux/sockios.h>).
_SIOCGIFADDR = 0x8915


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """Envoy's LocalInfo as the connection manager reads it: the service cluster and node
    (the bootstrap node's, or `--service-cluster` / `--service-node`; `Server.local_info`)
    that `add_user_agent` sends upstream. Empty when not given, as in Envoy."""

    cluster: str = ""
    node: str = ""


def local_address() -> str:
    """Envoy's local address (Network::Utility::getLocalAddress, IPv4 as its default
    `--local-address-ip-version`): the first IPv4 address of the host's interfaces, in
    interface order, that is not 127.0.0.1; 127.0.0.1 when there is none. `use_remote_address`
    appends it to x-forwarded-for for a peer at 127.0.0.1 or ::1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface (or not Linux)
            address = socket.inet_ntoa(answer[20:24])
            if address != "127.0.0.1":
                return address
    return "127.0.0.1"


def listener_stat_name(address: str, port: int) -> str:
    """Envoy's listener stat scope: `0.0.0.0_10000` (`:` becomes `_`)."""
    return f"{address}_{port}".replace(":", "_")


def _name(v: Any) -> str:
    return str(getattr(v, "name", v))


class BoundListener:
    """A listening socket whose connections are handled by one `ConnectionTracker`."""

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        tracker: ConnectionTracker,
        traffic_direction: str = "UNSPECIFIED",
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.tracker = tracker
        # Listener.traffic_direction (INBOUND, OUTBOUND, UNSPECIFIED): kept for what reads it
        # (Envoy: tracing, `/drain_listeners?inboundonly`); it changes no request.
        self.traffic_direction = traffic_direction
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
    local_info: LocalInfo | None = None,
    runtime: Runtime | None = None,
    server_health: ServerHealth | None = None,
    access_logs: AccessLogManager | None = None,
    path: str = "",
) -> BoundListener:
    """A listener from its typed config (at YAML `path`): route table, forwarder and
    connection manager.

    `local_info` carries the server's service cluster and node for `add_user_agent`;
    without it they are empty, as in an Envoy started without them. `runtime` is the
    server's; the connection manager config holds it (`ConnectionManagerConfig.runtime`) for
    filters, access-log filters and route matching to read `runtime.snapshot` per request.
    `server_health` is the server's `/healthcheck/fail` state, which filters read (the health
    check filter). The HCM's access logs get their sinks from `access_logs` (a throwaway
    manager when None)."""
    sa = cfg.address.socket_address
    hcm = cfg.filter_chains[0].filters[0].typed_config
    live = LiveRuntime(runtime) if runtime is not None else None
    access_logger = build_access_logs(
        hcm.access_log,
        f"{path}.filter_chains[0].filters[0].typed_config.access_log".lstrip("."),
        access_logs if access_logs is not None else AccessLogManager(),
        live if live is not None else DefaultRuntime(),
    )
    http_stats = store.scope(f"http.{hcm.stat_prefix}.").make(HttpConnManagerStats)
    lstats = store.scope(f"listener.{listener_stat_name(sa.address, sa.port_value)}.").make(
        ListenerStats
    )
    suppress = False
    for f in hcm.http_filters:
        tc = f.typed_config
        if tc is not None and getattr(tc, "suppress_envoy_headers", False):
            suppress = True
    info = local_info or LocalInfo()
    overwrite = hcm.scheme_header_transformation.scheme_to_overwrite
    # scheme_header_transformation.match_upstream sets :scheme to the upstream transport's,
    # which is always plaintext here and which HTTP/1 does not send: nothing to do.
    appends_xff = hcm.use_remote_address and not hcm.skip_xff_append
    fcfg = ForwarderConfig(
        server_name=hcm.server_name.encode(),
        server_header_transformation=_name(hcm.server_header_transformation),
        use_remote_address=hcm.use_remote_address,
        skip_xff_append=hcm.skip_xff_append,
        generate_request_id=hcm.generate_request_id,
        preserve_external_request_id=hcm.preserve_external_request_id,
        always_set_request_id_in_response=hcm.always_set_request_id_in_response,
        suppress_envoy_headers=suppress,
        dynamic_stats=hcm.router().dynamic_stats,
        xff_num_trusted_hops=hcm.xff_num_trusted_hops,
        local_address=local_address().encode() if appends_xff else b"127.0.0.1",
        scheme_to_overwrite=overwrite.encode() if overwrite is not None else None,
        user_agent=info.cluster.encode() if hcm.add_user_agent else None,
        service_node=info.node.encode(),
        access_logged=access_logger is not None,
        buffer_limit=cfg.per_connection_buffer_limit_bytes,
        node_address=local_address().encode(),
    )
    routes = build_route_table(hcm.route_config, runtime=live)
    router = Forwarder(routes, clusters, fcfg, http_stats)
    upgrades = upgrade_policy(hcm, routes)
    handler: StreamHandler = router
    chain = [f for f in hcm.http_filters[:-1] if not f.skipped]
    if chain:
        # Filters besides the router: each stream walks them (with the router alone the
        # connection calls the router directly, and pays nothing for the chain).
        ctx = FilterContext(
            stats=store.scope(f"http.{hcm.stat_prefix}."),
            clusters=clusters,
            service_cluster=info.cluster,
        )
        if server_health is not None:
            ctx.server_health = server_health
        if live is not None:
            ctx.runtime = live
        factories = [(f.name, HTTP_FILTERS[f.name](f.typed_config, ctx), f.disabled) for f in chain]
        handler = FilterChainHandler(
            factories,
            router,
            router.match_route,
            http_stats,
            cfg.per_connection_buffer_limit_bytes,
        )
    h1 = hcm.http_protocol_options
    default_host = getattr(h1, "default_host_for_http_10", None)
    common = hcm.common_http_protocol_options
    ccfg = ConnectionManagerConfig(
        stats=http_stats,
        listener_stats=lstats,
        server_name=hcm.server_name.encode(),
        idle_timeout=common.idle_timeout,
        stream_idle_timeout=hcm.stream_idle_timeout,
        request_timeout=hcm.request_timeout,
        request_headers_timeout=hcm.request_headers_timeout,
        max_stream_duration=getattr(common, "max_stream_duration", None),
        drain_timeout=hcm.drain_timeout,
        delayed_close_timeout=hcm.delayed_close_timeout,
        codec_type=hcm.codec_type.name,
        max_connection_duration=common.max_connection_duration,
        buffer_limit=cfg.per_connection_buffer_limit_bytes,
        max_headers_bytes=hcm.max_request_headers_kb * 1024,
        max_headers_count=common.max_headers_count,
        accept_http_10=bool(getattr(h1, "accept_http_10", False)),
        default_host_for_http_10=default_host.encode() if default_host else None,
        access_logger=access_logger,
        runtime=runtime,
        # use_remote_address off: the remote address is the XFF's (after the trusted hops);
        # on: the peer, unless trusted hops pick an XFF entry (as for x-envoy-external-address).
        remote_from_xff=hcm.xff_num_trusted_hops
        if not hcm.use_remote_address
        else (hcm.xff_num_trusted_hops - 1 if hcm.xff_num_trusted_hops else None),
        upgrades=upgrades,
    )
    tracker = ConnectionTracker(
        ccfg, handler, connection_class(ccfg.times_heads, access_logger is not None)
    )
    if ccfg.codec_type != "HTTP1":
        tracker.h2_connection_class = (
            LoggedH2DownstreamConnection if access_logger is not None else H2DownstreamConnection
        )
        tracker.h2_settings = http2_settings(hcm.http2_protocol_options, ccfg.max_headers_bytes)
    direction = _name(cfg.traffic_direction)
    return BoundListener(cfg.name, sa.address, sa.port_value, tracker, direction)
