"""The composition root: build everything from a loaded config, run it, drain it, stop.

Init phases as Envoy's: the admin listener opens first (`/ready` answers 503
`PRE_INITIALIZING`/`INITIALIZING`), clusters warm (first discovery round), then the listeners
open and the server is `LIVE`. SIGTERM/SIGINT or POST /quitquitquit start the drain: listeners
stop accepting, keep-alive connections close as their responses end, and the process exits once
no request is in flight or `--drain-time-s` has passed. With `--concurrency` above 1 this process
is the main one (discovery and admin) and the listeners open in worker processes; see
podproxy.workers for that split.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from podproxy import __version__
from podproxy.access_log import AccessLogManager, build_access_logs
from podproxy.admin import Admin, ServerState
from podproxy.config.loader import LoadedConfig
from podproxy.errors import ConfigError
from podproxy.filters.http.common import LiveRuntime, ServerHealth
from podproxy.http.conn_manager import ConnectionManagerConfig, HttpConnManagerStats
from podproxy.http.http1 import codec
from podproxy.http.http1.downstream import ConnectionTracker
from podproxy.http.http1.logged import connection_class
from podproxy.http.stream import Exchange
from podproxy.listener import BoundListener, LocalInfo, build_http_listener
from podproxy.runtime import Runtime, RuntimeStats
from podproxy.stats import Counter, Gauge, Store
from podproxy.tls import CertSource
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.cluster_manager import ClusterManager
from podproxy.upstream.dns import DnspythonResolver, Resolver, resolver_config_from_cluster
from podproxy.workers import Supervisor, WorkerSpec, reserve_port, run_worker

log = logging.getLogger("podproxy.main")

# Admin request bodies are tiny; anything bigger is refused (413).
ADMIN_MAX_BODY = 1024 * 1024

# Admin paths whose answers read stats that worker processes keep (refreshed before answering).
_WORKER_STATS_PATHS = (b"/stats", b"/clusters")


@dataclass(slots=True)
class ServerStats:
    """`server.*`."""

    live: Gauge
    state: Gauge
    uptime: Gauge
    concurrency: Gauge
    total_connections: Gauge
    days_until_first_cert_expiring: Gauge
    hot_restart_epoch: Gauge
    memory_allocated: Gauge
    memory_physical_size: Gauge
    parent_connections: Gauge
    version: Gauge
    envoy_bug_failures: Counter
    static_unknown_fields: Counter


# Envoy's server.state gauge values.
_STATE_VALUE = {
    ServerState.LIVE: 0,
    ServerState.DRAINING: 1,
    ServerState.PRE_INITIALIZING: 2,
    ServerState.INITIALIZING: 3,
}


@dataclass
class Options:
    """Command-line options the server runs with (shown by /server_info)."""

    config_path: str | None = None
    config_yaml: str | None = None
    log_level: str = "info"
    concurrency: int = 1
    drain_time_s: float = 600.0
    mode: str = "Serve"
    service_cluster: str = ""
    service_node: str = ""
    # Where STRICT_DNS/LOGICAL_DNS clusters find their nameservers when their config names none
    # (the sandbox and tests point these at their own cluster DNS).
    resolv_conf: str = "/etc/resolv.conf"
    dns_servers: tuple[tuple[str, int], ...] = ()
    # Set in a `--concurrency` worker process (the private `--worker` flag).
    worker: WorkerSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def worker_argv(self) -> list[str]:
        """The flags a worker process is started with: same config, same logging and drain."""
        argv: list[str] = []
        if self.config_path is not None:
            argv += ["-c", self.config_path]
        if self.config_yaml is not None:
            argv += ["--config-yaml", self.config_yaml]
        argv += ["--service-cluster", self.service_cluster, "--service-node", self.service_node]
        return [*argv, "-l", self.log_level, "--drain-time-s", f"{self.drain_time_s:g}"]


class AdminStreamHandler:
    """Serves admin requests on the same HTTP code as the proxy."""

    def __init__(self, admin: Admin, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.admin = admin
        # With worker processes: fetch their fresh stats before answering a stats request.
        self.refresh = refresh
        self._pending: set[asyncio.Task[None]] = set()

    def on_request_head(self, ex: Exchange) -> None:
        ex.state = bytearray()

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        body = ex.state
        if body is None:
            return
        if len(body) + len(data) > ADMIN_MAX_BODY:
            ex.state = None
            ex.conn.send_local_reply(ex, 413, b"Payload Too Large", close=True)
            return
        body.extend(data)

    def on_request_end(self, ex: Exchange) -> None:
        body = ex.state
        if body is None:
            return
        if self.refresh is not None and ex.head.target.startswith(_WORKER_STATS_PATHS):
            task = ex.conn.loop.create_task(self._refresh_then_respond(ex, body))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        ex.state = None
        self._respond(ex, body)

    async def _refresh_then_respond(self, ex: Exchange, body: bytearray) -> None:
        assert self.refresh is not None
        await self.refresh()
        if ex.state is not body:
            return  # the client went away meanwhile
        ex.state = None
        self._respond(ex, body)

    def _respond(self, ex: Exchange, body: bytearray) -> None:
        try:
            content_type = ex.head.get(b"content-type") or b""
            resp = self.admin.handle(
                ex.head.method.decode("latin-1"),
                ex.head.target.decode("latin-1"),
                bytes(body),
                content_type.decode("latin-1"),
            )
        except Exception:  # an admin bug must not take the server down
            log.exception("admin handler failed")
            ex.conn.send_local_reply(ex, 500, b"internal error")
            return
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
        data = codec.simple_response(
            resp.status,
            resp.body,
            content_type=resp.content_type.encode("latin-1"),
            extra=extra,
            server=None,
            close=not ex.head.keep_alive,
        )
        ex.bytes_sent = len(resp.body)
        ex.conn.response_head_sent(ex, resp.status)
        ex.conn.write(data)
        ex.conn.finish(ex, keep_alive=True)

    def on_downstream_reset(self, ex: Exchange) -> None:
        ex.state = None

    def on_downstream_write_paused(self, ex: Exchange) -> None:
        pass

    def on_downstream_write_resumed(self, ex: Exchange) -> None:
        pass


class Server:
    """One podproxy process."""

    def __init__(self, loaded: LoadedConfig, options: Options) -> None:
        self.loaded = loaded
        self.options = options
        self.version = __version__
        self.store = Store()
        self.stats = self.store.scope("server.").make(ServerStats)
        self.cluster_manager = ClusterManager(
            self.store, resolver_factory=self._resolver, pushed=options.worker is not None
        )
        self.supervisor: Supervisor | None = None
        self.http_listeners: list[BoundListener] = []
        self.admin_listener: BoundListener | None = None
        self.start_time = time.time()
        self.healthcheck_failed = False
        # The same state as filters read it (the health check filter); see set_healthcheck_failed.
        self.health = ServerHealth()
        self._state = ServerState.PRE_INITIALIZING
        self._stop: asyncio.Event | None = None
        # Every access-log file of this process (HCM and admin), opened by run().
        self.access_log_manager = AccessLogManager()
        self._workers_live: asyncio.Event | None = None
        self._reserved: list[Any] = []
        # The one runtime of this process, handed to whatever reads it (listeners, admin,
        # the supervisor that pushes its snapshots to workers); a worker's is replaced by the
        # main's snapshots as they arrive.
        self.runtime = Runtime(
            loaded.bootstrap.layered_runtime,
            service_cluster=self.local_info().cluster,
            stats=self.store.scope("runtime.").make(RuntimeStats),
        )

    def _resolver(self, cluster_cfg: Any) -> Resolver:
        """A DNS cluster's resolver: its own settings over the process' (built, not started)."""
        return DnspythonResolver(
            resolver_config_from_cluster(cluster_cfg),
            resolv_conf=self.options.resolv_conf,
            default_nameservers=self.options.dns_servers,
            stats=self.cluster_manager.dns_stats,
        )

    # AdminContext -------------------------------------------------------------------
    def clusters(self) -> list[Cluster]:
        return list(self.cluster_manager.clusters.values())

    def state(self) -> ServerState:
        return self._state

    def set_healthcheck_failed(self, failed: bool) -> None:
        """`/healthcheck/fail|ok`: Envoy reports DRAINING and `server.live` 0 while failed; the
        health check filter answers 503 and marks every response, and each connection's next
        response starts its drain (`ConnectionTracker.set_health_check_failed`). With worker
        processes the main tells them, as it tells them runtime changes."""
        self.healthcheck_failed = failed
        self.health.failed = failed
        for lst in self.http_listeners:
            lst.tracker.set_health_check_failed(failed)
        if self.supervisor is not None:
            self.supervisor.push_healthcheck(failed)
        self._update_live()

    def config_dump(self) -> dict[str, Any]:
        return self.loaded.v3

    def listeners(self) -> list[tuple[str, str]]:
        return [(lst.name, lst.address_str) for lst in self.http_listeners]

    def tls_certificates(self) -> list[CertSource]:
        """Every TLS context's certificates, for admin `/certs`: clusters', then listeners'
        (the order Envoy creates them in)."""
        out = [t.certs for t in self.cluster_manager.tls.values()]
        return out + [t.certs for lst in self.http_listeners for t in lst.tls_contexts]

    def local_info(self) -> LocalInfo:
        """Envoy's LocalInfo: `--service-cluster` / `--service-node`, when given, override the
        bootstrap node's `cluster` / `id`."""
        node = self.loaded.bootstrap.node
        o = self.options
        return LocalInfo(o.service_cluster or node.cluster, o.service_node or node.id)

    def node_info(self) -> dict[str, Any]:
        """The node as /server_info shows it."""
        local = self.local_info()
        info: dict[str, Any] = {"id": local.node, "cluster": local.cluster}
        locality = self.loaded.bootstrap.node.locality
        if locality is not None:
            info["locality"] = {
                k: v
                for k, v in (
                    ("region", locality.region),
                    ("zone", locality.zone),
                    ("sub_zone", locality.sub_zone),
                )
                if v
            }
        info["user_agent_name"] = "podproxy"
        return info

    def command_line_options(self) -> dict[str, Any]:
        o = self.options
        return {
            "config_path": o.config_path or "",
            "config_yaml": o.config_yaml or "",
            "log_level": o.log_level,
            "concurrency": o.concurrency,
            "drain_time": f"{o.drain_time_s:g}s",
            "mode": o.mode,
            "service_cluster": o.service_cluster,
            "service_node": o.service_node,
            **o.extra,
        }

    def request_shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # lifecycle ----------------------------------------------------------------------
    def _set_state(self, state: ServerState) -> None:
        self._state = state
        self.stats.state.set(_STATE_VALUE[state])
        self._update_live()

    def _update_live(self) -> None:
        # server.live: 1 unless draining, whether by signal or by /healthcheck/fail.
        draining = self.healthcheck_failed or self._state is ServerState.DRAINING
        self.stats.live.set(0 if draining else 1)

    def build(self) -> None:
        """Build clusters and listeners from config; unsupported things fail here."""
        b = self.loaded.bootstrap
        for i, c in enumerate(b.static_resources.clusters):
            self.cluster_manager.add_cluster(c, f"static_resources.clusters[{i}]")
        # add_user_agent sends these upstream (as Envoy's LocalInfo).
        local = self.local_info()
        for i, lc in enumerate(b.static_resources.listeners):
            self.http_listeners.append(
                build_http_listener(
                    lc,
                    self.cluster_manager.clusters,
                    self.store,
                    local_info=local,
                    runtime=self.runtime,
                    server_health=self.health,
                    access_logs=self.access_log_manager,
                    path=f"static_resources.listeners[{i}]",
                )
            )
        if self.options.concurrency > 1 and self.options.worker is None:
            self.supervisor = Supervisor(
                self.options.concurrency,
                self.options.worker_argv(),
                self.cluster_manager.clusters,
                self.store,
                on_change=self._on_workers_changed,
                runtime=self.runtime,
            )
        if b.admin is not None and self.options.worker is None:
            self.admin_listener = self._build_admin(b.admin)

    def _build_admin(self, admin_cfg: Any) -> BoundListener:
        sa = admin_cfg.address.socket_address
        # Files are opened by run(), not here: `--mode validate` builds but touches nothing.
        logger = build_access_logs(
            admin_cfg.access_log,
            "admin.access_log",
            self.access_log_manager,
            LiveRuntime(self.runtime),
            admin_path=admin_cfg.access_log_path,
        )
        stats = self.store.scope("http.admin.").make(HttpConnManagerStats)
        ccfg = ConnectionManagerConfig(
            stats=stats, server_name=b"envoy", accept_http_10=True, access_logger=logger
        )
        admin = Admin(self)
        refresh = self._refresh_worker_stats if self.supervisor is not None else None
        handler = AdminStreamHandler(admin, refresh)
        tracker = ConnectionTracker(ccfg, handler, connection_class(False, logger is not None))
        return BoundListener("admin", sa.address, sa.port_value, tracker)

    async def _refresh_worker_stats(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.refresh_stats()

    def _on_workers_changed(self) -> None:
        sup, live = self.supervisor, self._workers_live
        if sup is not None and live is not None and sup.all_listening:
            live.set()

    async def run(self) -> int:
        if self.options.worker is not None:
            self._open_access_logs()
            try:
                return await run_worker(self, self.options.worker)
            finally:
                self.access_log_manager.close()
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # SIGUSR1 reopens the access logs (logrotate), as Envoy's.
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        self.stats.concurrency.set(self.options.concurrency)
        self._update_live()
        # Envoy loads the runtime snapshot when its loader is built and once more as the
        # server initialises: a fresh Envoy 1.40 shows runtime.load_success 2.
        self.runtime.load()
        uptime_task = loop.create_task(self._tick())
        try:
            self._open_access_logs()
            if self.admin_listener is not None:
                await self._bind(self.admin_listener)
                log.info("admin address: %s", self.admin_listener.address_str)
            self._set_state(ServerState.INITIALIZING)
            if self.supervisor is not None:
                # Workers import and load the config while discovery warms the clusters.
                self._reserve_ports()
                await self.supervisor.start()
            log.info("cm init: initializing %d cluster(s)", len(self.cluster_manager.clusters))
            init = loop.create_task(self.cluster_manager.initialize())
            stop_wait = loop.create_task(self._stop.wait())
            await asyncio.wait({init, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not init.done():
                init.cancel()
                return 0
            stop_wait.cancel()
            init.result()
            log.info("cm init: all clusters initialized")
            if self.supervisor is not None:
                if not await self._start_workers():
                    return 0
            else:
                for lst in self.http_listeners:
                    await self._bind(lst)
                    log.info("listener '%s' listening on %s", lst.name, lst.address_str)
            self._set_state(ServerState.LIVE)
            log.info("starting main dispatch loop")
            await self._stop.wait()
            await self._drain()
            return 0
        finally:
            # Embedded runs (run_example, tests) get their loop's signals back.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            uptime_task.cancel()
            if self.supervisor is not None:
                self.supervisor.close()
            for sock in self._reserved:
                sock.close()
            for lst in self.http_listeners:
                lst.close()
            self.cluster_manager.shutdown()
            if self.admin_listener is not None:
                self.admin_listener.close()
            self.access_log_manager.close()
            log.info("exiting")

    def _open_access_logs(self) -> None:
        try:
            self.access_log_manager.open()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            sink = self.access_log_manager.sinks.get(str(exc.filename))
            where = sink.where if sink is not None else "access_log"
            raise ConfigError(where, f"cannot open {exc.filename!r}: {reason}") from exc

    def reopen_logs(self) -> None:
        """SIGUSR1 and POST /reopen_logs: every access-log file of every process reopens."""
        log.info("reopening access logs")
        self.access_log_manager.reopen()
        if self.supervisor is not None:
            self.supervisor.reopen_logs()

    async def _bind(self, lst: BoundListener) -> None:
        try:
            await lst.start()
        except OSError as exc:
            # asyncio wraps the errno in a long message; the errno's own text is the clear part.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(
                "", f"cannot bind listener '{lst.name}' to {lst.address_str}: {reason}"
            ) from exc

    def _reserve_ports(self) -> None:
        """Fix each listener's port (workers bind it with SO_REUSEPORT); fail early if taken."""
        for lst in self.http_listeners:
            try:
                sock = reserve_port(lst.address, lst.port)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(
                    "", f"cannot bind listener '{lst.name}' to {lst.address_str}: {reason}"
                ) from exc
            self._reserved.append(sock)
            lst.port = sock.getsockname()[1]

    async def _start_workers(self) -> bool:
        """Hand the warm host sets to the workers; True once all listen, False on a stop."""
        sup = self.supervisor
        assert sup is not None and sup.fatal is not None and self._stop is not None
        loop = asyncio.get_running_loop()
        self._workers_live = asyncio.Event()
        sup.serve([lst.port for lst in self.http_listeners])
        self._on_workers_changed()
        live_wait = loop.create_task(self._workers_live.wait())
        stop_wait = loop.create_task(self._stop.wait())
        waits: set[asyncio.Future[Any]] = {live_wait, stop_wait, sup.fatal}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        live_wait.cancel()
        stop_wait.cancel()
        if sup.fatal.done():
            raise ConfigError("", sup.fatal.result())
        if self._stop.is_set():
            await sup.drain(self.options.drain_time_s + 5.0)
            return False
        for lst in self.http_listeners:
            log.info(
                "listener '%s' listening on %s in %d workers (pids %s)",
                lst.name,
                lst.address_str,
                sup.count,
                ", ".join(map(str, sup.pids)),
            )
        return True

    def _on_signal(self, sig: signal.Signals) -> None:
        log.warning("caught %s", sig.name)
        self.request_shutdown()

    async def drain(self) -> None:
        """Stop accepting and wait for in-flight requests (a worker's drain, and the server's)."""
        await self._drain()

    async def _drain(self) -> None:
        self._set_state(ServerState.DRAINING)
        log.info("shutting down: draining listeners for up to %gs", self.options.drain_time_s)
        if self.supervisor is not None:
            await self.supervisor.drain(self.options.drain_time_s + 5.0)
            return
        for lst in self.http_listeners:
            lst.stop_accepting()
            lst.drain()
        deadline = time.monotonic() + self.options.drain_time_s
        while time.monotonic() < deadline:
            if not any(lst.tracker.active_requests for lst in self.http_listeners):
                break
            await asyncio.sleep(0.05)

    async def _tick(self) -> None:
        while True:
            self.stats.uptime.set(int(time.time() - self.start_time))
            if self.supervisor is not None:
                self.stats.total_connections.set(self.supervisor.merger.connections)
                self.supervisor.push_all()
            else:
                self.stats.total_connections.set(
                    sum(len(lst.tracker.connections) for lst in self.http_listeners)
                )
            await asyncio.sleep(1.0)


def pid() -> int:
    return os.getpid()
