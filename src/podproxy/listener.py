"""Listeners: a bound socket, its filter chains (each an HTTP connection manager, maybe
TLS), and their live connections.

`BoundListener` is built from a typed `Listener` and opened only once clusters are warm. Each
filter chain has its own `ConnectionTracker`. When the chain can be chosen at config time (no
tls_inspector: nothing about a connection is known before it is handed over) the listener is
a plain `create_server` (with `ssl=` for a TLS chain); with tls_inspector the listener accepts
sockets itself, peeks the ClientHello (SNI, ALPN, transport protocol), picks the chain as
Envoy does and hands the socket to `connect_accepted_socket`. Stopping is two steps, as Envoy
drains: stop accepting, then let the trackers drain keep-alive connections (each closes
`drain_timeout` after its drain began, or after the response in flight then).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
from collections.abc import Iterator, Sequence
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
from podproxy.http.http2.codec import http2_settings, make_codec_stats
from podproxy.http.http2.downstream import H2DownstreamConnection, LoggedH2DownstreamConnection
from podproxy.http.stream import StreamHandler
from podproxy.http.upgrade import upgrade_policy
from podproxy.router.routes import build_route_table
from podproxy.runtime import Runtime
from podproxy.stats import Counter, Store
from podproxy.tls import (
    MAX_CLIENT_HELLO_SIZE,
    ClientHello,
    DownstreamTls,
    FilterChainSelector,
    HelloResult,
    parse_client_hello,
)
from podproxy.upstream.cluster import Cluster

log = logging.getLogger("podproxy.listener")

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


# Accepts taken per readiness event of a listening socket we accept on ourselves.
_ACCEPT_BATCH = 64
# A ClientHello not complete yet: look again after this long (peeked bytes keep a
# level-triggered socket readable, so waiting on readiness alone would spin).
_PEEK_RETRY_S = 0.005
# Envoy's transport protocol when no listener filter detected one.
RAW_BUFFER = "raw_buffer"


@dataclass(slots=True)
class ServedChain:
    """One filter chain at run time: its connection manager's tracker, and its TLS."""

    tracker: ConnectionTracker
    tls: DownstreamTls | None


@dataclass(slots=True)
class ChainSelectionStats:
    """`listener.<address>.*` counters of filter chain selection."""

    no_filter_chain_match: Counter
    downstream_pre_cx_timeout: Counter


@dataclass(slots=True)
class TlsInspectorStats:
    """`tls_inspector.*` (Envoy's tls_inspector stats; the filter's scope is the server's)."""

    client_hello_too_large: Counter
    tls_found: Counter
    tls_not_found: Counter
    alpn_found: Counter
    alpn_not_found: Counter
    sni_found: Counter
    sni_not_found: Counter


class ChainSet:
    """A listener's filter chains (then its default chain) and how one is chosen."""

    def __init__(
        self,
        chains: Sequence[ServedChain],
        selector: FilterChainSelector,
        default: ServedChain | None,
        stats: ChainSelectionStats,
        inspector: TlsInspectorStats | None = None,
        timeout: float | None = 15.0,
        continue_on_timeout: bool = False,
    ) -> None:
        self.chains = list(chains)
        self.selector = selector
        self.default = default
        self.stats = stats
        # Envoy's tls_inspector listener filter; without it nothing is known before a chain
        # is chosen: no server name, no ALPN, transport protocol raw_buffer.
        self.inspector = inspector
        self.timeout = timeout
        self.continue_on_timeout = continue_on_timeout

    def choose(self, server_name: str, transport: str, alpn: Sequence[str]) -> ServedChain | None:
        i = self.selector.select(server_name, transport, alpn)
        return self.chains[i] if i is not None else self.default

    def fixed(self) -> ServedChain | None:
        """The chain every connection gets, when it is known without looking at any."""
        return self.choose("", RAW_BUFFER, ())

    def all(self) -> Iterator[ServedChain]:
        yield from self.chains
        if self.default is not None:
            yield self.default


class TrackerGroup:
    """Several chains' trackers seen as one, for what the server asks of a listener's
    connections (health check failure, drain, active requests)."""

    def __init__(self, trackers: Sequence[ConnectionTracker]) -> None:
        self.trackers = list(trackers)

    @property
    def connections(self) -> list[Any]:
        return [c for t in self.trackers for c in t.connections]

    @property
    def active_requests(self) -> int:
        return sum(t.active_requests for t in self.trackers)

    def set_health_check_failed(self, failed: bool) -> None:
        for t in self.trackers:
            t.set_health_check_failed(failed)

    def start(self) -> None:
        for t in self.trackers:
            t.start()

    def drain(self) -> None:
        for t in self.trackers:
            t.drain()

    def stop(self) -> None:
        for t in self.trackers:
            t.stop()

    def close_all(self) -> None:
        for t in self.trackers:
            t.close_all()


class BoundListener:
    """A listening socket whose connections are handled by its chains' trackers."""

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        tracker: ConnectionTracker,
        traffic_direction: str = "UNSPECIFIED",
        chains: ChainSet | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        # One chain's tracker, or a group: what the server reads either way.
        self.tracker: ConnectionTracker | TrackerGroup = tracker
        self.chains = chains
        if chains is not None:
            trackers = [c.tracker for c in chains.all()]
            if len(trackers) > 1:
                self.tracker = TrackerGroup(trackers)
        # Listener.traffic_direction (INBOUND, OUTBOUND, UNSPECIFIED): kept for what reads it
        # (Envoy: tracing, `/drain_listeners?inboundonly`); it changes no request.
        self.traffic_direction = traffic_direction
        self.server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._pending: dict[socket.socket, asyncio.TimerHandle | None] = {}
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def tls_contexts(self) -> list[DownstreamTls]:
        """The TLS of each chain that has one (for admin `/certs`)."""
        if self.chains is None:
            return []
        return [c.tls for c in self.chains.all() if c.tls is not None]

    async def start(self, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        chains = self.chains
        fixed = chains.fixed() if chains is not None and chains.inspector is None else None
        if chains is None or fixed is not None:
            # The chain is known before any connection: the event loop accepts (hot path).
            tracker = fixed.tracker if fixed is not None else self.tracker
            assert isinstance(tracker, ConnectionTracker)
            tls = fixed.tls if fixed is not None else None
            self.server = await loop.create_server(
                tracker.protocol_factory,
                self.address,
                self.port,
                family=family,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=LISTEN_BACKLOG,
                ssl=tls.context if tls is not None else None,
            )
            if self.port == 0 and self.server.sockets:
                self.port = self.server.sockets[0].getsockname()[1]
        else:
            self._sock = _listening_socket(family, self.address, self.port, reuse_port)
            self.port = self._sock.getsockname()[1]
            loop.add_reader(self._sock.fileno(), self._accept, self._sock)
        self.tracker.start()

    # accepting ourselves: tls_inspector, or no chain for anyone ------------------------------
    def _accept(self, lsock: socket.socket) -> None:
        chains = self.chains
        assert chains is not None
        loop = asyncio.get_running_loop()
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next event
                log.warning("accept on %s failed: %s", self.address_str, exc)
                return
            sock.setblocking(False)
            if chains.inspector is None:
                self._dispatch(sock, "", RAW_BUFFER, ())
                continue
            timer = None
            if chains.timeout is not None:
                timer = loop.call_later(chains.timeout, self._inspect_timeout, sock)
            self._pending[sock] = timer
            loop.add_reader(sock.fileno(), self._peek, sock)

    def _peek(self, sock: socket.socket) -> None:
        chains = self.chains
        assert chains is not None and chains.inspector is not None
        st = chains.inspector
        loop = asyncio.get_running_loop()
        try:
            data = sock.recv(MAX_CLIENT_HELLO_SIZE + 5, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(sock)
            sock.close()
            return
        hello = parse_client_hello(data)
        if hello == HelloResult.NEED_MORE:
            loop.remove_reader(sock.fileno())
            loop.call_later(_PEEK_RETRY_S, self._peek_again, sock)
            return
        if hello == HelloResult.TOO_LARGE:
            st.client_hello_too_large.inc()
            self._forget(sock)
            sock.close()
            return
        self._forget(sock)
        if not isinstance(hello, ClientHello):
            st.tls_not_found.inc()
            self._dispatch(sock, "", RAW_BUFFER, ())
            return
        st.tls_found.inc()
        (st.sni_found if hello.server_name else st.sni_not_found).inc()
        (st.alpn_found if hello.alpn else st.alpn_not_found).inc()
        self._dispatch(sock, hello.server_name, "tls", hello.alpn)

    def _peek_again(self, sock: socket.socket) -> None:
        if sock in self._pending:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._peek, sock)

    def _inspect_timeout(self, sock: socket.socket) -> None:
        chains = self.chains
        assert chains is not None
        if sock not in self._pending:
            return
        self._pending[sock] = None
        self._forget(sock)
        chains.stats.downstream_pre_cx_timeout.inc()
        if chains.continue_on_timeout:
            self._dispatch(sock, "", RAW_BUFFER, ())
        else:
            sock.close()

    def _forget(self, sock: socket.socket) -> None:
        if sock not in self._pending:
            return
        timer = self._pending.pop(sock)
        if timer is not None:
            timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def _dispatch(
        self, sock: socket.socket, server_name: str, transport: str, alpn: Sequence[str]
    ) -> None:
        chains = self.chains
        assert chains is not None
        chain = chains.choose(server_name, transport, alpn)
        if chain is None:
            chains.stats.no_filter_chain_match.inc()
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(chain, sock))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _serve(self, chain: ServedChain, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                chain.tracker.protocol_factory,
                sock,
                ssl=chain.tls.context if chain.tls is not None else None,
            )
        except (OSError, EOFError) as exc:
            # A failed handshake: counted in `ssl.*` by the context's observer.
            log.debug("connection on %s failed: %s", self.address_str, exc)
            sock.close()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def drain(self) -> None:
        self.tracker.drain()

    def close(self) -> None:
        self.stop_accepting()
        for sock in list(self._pending):
            with contextlib.suppress(RuntimeError):
                self._forget(sock)
            sock.close()
        for task in list(self._handshakes):
            task.cancel()
        self.tracker.stop()
        self.tracker.close_all()

    @property
    def address_str(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


def _listening_socket(family: int, address: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
    manager when None). Each filter chain gets its own connection manager and, with a
    transport_socket, its TLS context."""
    sa = cfg.address.socket_address
    lscope = store.scope(f"listener.{listener_stat_name(sa.address, sa.port_value)}.")
    lstats = lscope.make(ListenerStats)
    paths = [f"{path}.filter_chains[{i}]" for i in range(len(cfg.filter_chains))]
    if cfg.default_filter_chain is not None:
        paths.append(f"{path}.default_filter_chain")
    served = []
    for cpath, chain in zip(paths, cfg.all_filter_chains(), strict=True):
        cpath = cpath.lstrip(".")
        tls_cfg = chain.tls()
        tls = (
            DownstreamTls(tls_cfg, f"{cpath}.transport_socket.typed_config", lscope)
            if tls_cfg is not None
            else None
        )
        tracker = _chain_tracker(
            cfg,
            chain.filters[0].typed_config,
            f"{cpath}.filters[0].typed_config",
            clusters,
            store,
            lstats,
            local_info,
            runtime,
            server_health,
            access_logs,
            tls is not None,
        )
        served.append(ServedChain(tracker, tls))
    default = served.pop() if cfg.default_filter_chain is not None else None
    inspector = None
    if cfg.listener_filters:  # only tls_inspector is accepted by the config
        inspector = store.scope("tls_inspector.").make(TlsInspectorStats)
    chains = ChainSet(
        served,
        FilterChainSelector([c.filter_chain_match for c in cfg.filter_chains]),
        default,
        lscope.make(ChainSelectionStats),
        inspector,
        cfg.listener_filters_timeout,
        cfg.continue_on_listener_filters_timeout,
    )
    first = next(chains.all())
    direction = _name(cfg.traffic_direction)
    return BoundListener(cfg.name, sa.address, sa.port_value, first.tracker, direction, chains)


def _chain_tracker(
    cfg: Any,
    hcm: Any,
    hcm_path: str,
    clusters: dict[str, Cluster],
    store: Store,
    lstats: ListenerStats,
    local_info: LocalInfo | None,
    runtime: Runtime | None,
    server_health: ServerHealth | None,
    access_logs: AccessLogManager | None,
    tls: bool,
) -> ConnectionTracker:
    """One filter chain's HTTP connection manager (at `hcm_path`) and its tracker."""
    live = LiveRuntime(runtime) if runtime is not None else None
    access_logger = build_access_logs(
        hcm.access_log,
        f"{hcm_path}.access_log",
        access_logs if access_logs is not None else AccessLogManager(),
        live if live is not None else DefaultRuntime(),
    )
    http_stats = store.scope(f"http.{hcm.stat_prefix}.").make(HttpConnManagerStats)
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
        # The downstream connection's scheme: x-forwarded-proto (Envoy sets it from the
        # connection when the client sent none, or always at the edge).
        scheme=b"https" if tls else b"http",
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
        tracker.h2_stats = make_codec_stats(store)
        tracker.alpn_h2 = tls
    return tracker
