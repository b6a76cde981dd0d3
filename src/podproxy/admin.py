"""Envoy's admin interface as pure request -> response logic (no sockets).

`Admin` is the handler registry (Envoy's AdminImpl::addHandler): paths match exactly, the query
string is ignored for matching; mutating handlers answer 405 unless POSTed; unknown paths get
404 with the help text. The built-in endpoints print what Envoy 1.40 prints (reference/envoy.md
§5); the server reaches them through `AdminContext`, and another layer serves `AdminResponse`s
over HTTP.
"""

from __future__ import annotations

import enum
import html
import json
import os
import re
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from podproxy import stats as _stats
from podproxy.runtime import NoAdminLayer, Runtime, runtime_json
from podproxy.stats import Store
from podproxy.tls import CertSource, certs_json
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.host import HealthFlag, Host, health_flags_str

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"

# Every Envoy admin response carries these (admin.cc, AdminImpl::runCallback).
COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("cache-control", "no-cache, max-age=0"),
    ("x-content-type-options", "nosniff"),
)


@dataclass(slots=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


class ServerState(enum.Enum):
    """envoy.admin.v3.ServerInfo.State; `/ready` is 200 only when LIVE."""

    LIVE = "LIVE"
    DRAINING = "DRAINING"
    PRE_INITIALIZING = "PRE_INITIALIZING"
    INITIALIZING = "INITIALIZING"


class AdminContext(Protocol):
    """What the admin reads from (and asks of) the server."""

    store: Store
    healthcheck_failed: bool
    start_time: float
    version: str
    runtime: Runtime

    def clusters(self) -> Iterable[Cluster]: ...
    def state(self) -> ServerState: ...
    def set_healthcheck_failed(self, failed: bool) -> None: ...
    def config_dump(self) -> dict[str, Any]: ...
    def listeners(self) -> list[tuple[str, str]]: ...
    def command_line_options(self) -> dict[str, Any]: ...
    def node_info(self) -> dict[str, Any]: ...
    def request_shutdown(self) -> None: ...
    def reopen_logs(self) -> None: ...
    def tls_certificates(self) -> list[CertSource]: ...


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""
    # The query string as sent (after `?`), and the request's content-type, for handlers that
    # parse parameters as Envoy does (/runtime_modify).
    raw_query: str = ""
    content_type: str = ""


Handler = Callable[[AdminRequest], AdminResponse]


@dataclass(frozen=True, slots=True)
class _Entry:
    prefix: str
    help_text: str
    handler: Handler
    mutates: bool
    params: tuple[tuple[str, str], ...] = field(default=())


def text(body: str, status: int = 200) -> AdminResponse:
    return AdminResponse(status, body.encode(), TEXT)


def json_response(obj: Any, status: int = 200) -> AdminResponse:
    # Envoy pretty-prints admin JSON with a one-space indent (proto JSON printer).
    return AdminResponse(status, json.dumps(obj, indent=1).encode(), JSON)


def _rfc3339_ms(t: float) -> str:
    """`2026-11-26T06:00:00.123Z`, the timestamp spelling of Envoy's proto JSON."""
    whole, us = divmod(round(t * 1_000_000), 1_000_000)
    ms = us // 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def _split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port) if port.isdigit() else 0


def _host_stats(host: Host) -> list[tuple[str, int, bool]]:
    """(name, value, is_gauge) sorted by name; Envoy 1.40 also has the rq_pending_active gauge."""
    gauges = set(host.stats.GAUGES) | {"rq_pending_active"}
    items = dict(host.stats.items())
    items.setdefault("rq_pending_active", 0)
    return [(k, items[k], k in gauges) for k in sorted(items)]


class Admin:
    """The handler table plus Envoy's built-in endpoints."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self._handlers: dict[str, _Entry] = {}
        stats_params = (
            ("usedonly", "Only include stats that have been written by system since restart"),
            ("filter", "Regular expression (Python re) for filtering stats"),
        )
        self.add_handler("/", "Admin home page", self._home)
        self.add_handler(
            "/clusters",
            "upstream cluster status",
            self._clusters,
            params=(
                ("filter", "Regular expression (Python re) for filtering clusters by name"),
                ("format", "File format to use; One of (text, json)"),
            ),
        )
        self.add_handler("/certs", "print certs on machine", self._certs)
        self.add_handler("/config_dump", "dump current Envoy configs", self._config_dump)
        self.add_handler(
            "/healthcheck/fail",
            "cause the server to fail health checks",
            self._healthcheck_fail,
            mutates=True,
        )
        self.add_handler(
            "/healthcheck/ok",
            "cause the server to pass health checks",
            self._healthcheck_ok,
            mutates=True,
        )
        self.add_handler("/help", "print out list of admin commands", self._help)
        self.add_handler(
            "/listeners",
            "print listener info",
            self._listeners,
            params=(("format", "File format to use; One of (text, json)"),),
        )
        self.add_handler("/memory", "print current allocation/heap usage", self._memory)
        self.add_handler("/quitquitquit", "exit the server", self._quit, mutates=True)
        self.add_handler(
            "/ready", "print server state, return 200 if LIVE, otherwise return 503", self._ready
        )
        self.add_handler("/reopen_logs", "reopen access logs", self._reopen_logs, mutates=True)
        self.add_handler(
            "/reset_counters", "reset all counters to zero", self._reset_counters, mutates=True
        )
        self.add_handler("/runtime", "print runtime values", self._runtime)
        self.add_handler(
            "/runtime_modify",
            "Adds or modifies runtime values as passed in query parameters. To delete a "
            "previously added key, use an empty string as the value. Note that deletion only "
            "applies to overrides added via this endpoint; values loaded from disk can be "
            "modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
            self._runtime_modify,
            mutates=True,
        )
        self.add_handler(
            "/server_info", "print server version/status information", self._server_info
        )
        self.add_handler(
            "/stats",
            "print server stats",
            self._stats,
            params=(
                *stats_params,
                ("format", "Format to use; One of (text, json, prometheus)"),
            ),
        )
        self.add_handler(
            "/stats/prometheus",
            "print server stats in prometheus format",
            self._stats_prometheus,
            params=stats_params,
        )

    def add_handler(
        self,
        prefix: str,
        help_text: str,
        handler: Handler,
        *,
        mutates: bool = False,
        params: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Register `handler` for exactly `prefix`; a second registration of a path is an error."""
        if prefix in self._handlers:
            raise ValueError(f"admin handler for {prefix} already registered")
        self._handlers[prefix] = _Entry(prefix, help_text, handler, mutates, params)

    def handle(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> AdminResponse:
        parts = urlsplit(path)
        entry = self._handlers.get(parts.path)
        if entry is None:
            resp = text("invalid path. " + self.help_text(), 404)
        elif entry.mutates and method != "POST":
            resp = text(f"Method {method} not allowed, POST required.", 405)
        else:
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            req = AdminRequest(method, parts.path, query, body, parts.query, content_type)
            resp = entry.handler(req)
        resp.headers = COMMON_HEADERS + resp.headers
        return resp

    def help_text(self) -> str:
        lines = ["admin commands are:\n"]
        for prefix in sorted(self._handlers):
            e = self._handlers[prefix]
            post = " (POST)" if e.mutates else ""
            lines.append(f"  {prefix}{post}: {e.help_text}\n")
            lines.extend(f"      {name}: {help}\n" for name, help in e.params)
        return "".join(lines)

    def server_state(self) -> ServerState:
        # /healthcheck/fail makes Envoy report DRAINING (server.live 0, /ready 503).
        if self.ctx.healthcheck_failed:
            return ServerState.DRAINING
        return self.ctx.state()

    # --- endpoints -----------------------------------------------------------------------

    def _home(self, req: AdminRequest) -> AdminResponse:
        rows = []
        for prefix in sorted(self._handlers):
            e = self._handlers[prefix]
            if prefix == "/":
                continue
            name = html.escape(prefix[1:])
            if e.mutates:
                link = (
                    f"<form action='{name}' method='post'>"
                    f"<button class='home-data'>{name}</button></form>"
                )
            else:
                link = f"<a href='{name}'>{name}</a>"
            rows.append(
                f"<tr><td class='home-data'>{link}</td>"
                f"<td class='home-data'>{html.escape(e.help_text)}</td></tr>\n"
            )
        page = (
            "<!DOCTYPE html>\n<html lang='en'>\n<head><title>podproxy admin</title></head>\n"
            "<body>\n<table class='home-table'>\n"
            "<thead><th>Command</th><th>Description</th></thead>\n<tbody>\n"
            + "".join(rows)
            + "</tbody>\n</table>\n</body>\n</html>\n"
        )
        return AdminResponse(200, page.encode(), HTML)

    def _help(self, req: AdminRequest) -> AdminResponse:
        return text(self.help_text())

    def _ready(self, req: AdminRequest) -> AdminResponse:
        st = self.server_state()
        return text(f"{st.value}\n", 200 if st is ServerState.LIVE else 503)

    def _server_info(self, req: AdminRequest) -> AdminResponse:
        uptime = f"{max(0, int(time.time() - self.ctx.start_time))}s"
        opts = self.ctx.command_line_options()
        info = {
            "version": self.ctx.version,
            "state": self.server_state().value,
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": uptime,
            # podproxy has no hot restart; Envoy prints this when hot restart is disabled.
            "hot_restart_version": "disabled",
            "command_line_options": opts,
            "node": self.ctx.node_info(),
        }
        return json_response(info)

    def _selected_clusters(self, req: AdminRequest) -> list[Cluster] | AdminResponse:
        pattern = req.query.get("filter")
        clusters = list(self.ctx.clusters())
        if pattern:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                return text(f"Invalid regex: {e}", 400)
            clusters = [c for c in clusters if rx.search(c.info.name)]
        return clusters

    def _clusters(self, req: AdminRequest) -> AdminResponse:
        clusters = self._selected_clusters(req)
        if isinstance(clusters, AdminResponse):
            return clusters
        fmt = req.query.get("format", "text")
        if fmt == "json":
            return json_response({"cluster_statuses": [clusters_json(c) for c in clusters]})
        return text("".join(clusters_text(c) for c in clusters))

    def _config_dump(self, req: AdminRequest) -> AdminResponse:
        dump = {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                    "bootstrap": self.ctx.config_dump(),
                    "last_updated": _rfc3339_ms(self.ctx.start_time),
                }
            ]
        }
        return json_response(dump)

    def _certs(self, req: AdminRequest) -> AdminResponse:
        # admin.v3.Certificates, one entry per TLS context (source/server/admin/admin.cc).
        return json_response(certs_json(self.ctx.tls_certificates()))

    def _listeners(self, req: AdminRequest) -> AdminResponse:
        listeners = self.ctx.listeners()
        if req.query.get("format") == "json":
            statuses = []
            for name, addr in listeners:
                host, port = _split_host_port(addr)
                statuses.append(
                    {
                        "name": name,
                        "local_address": {"socket_address": {"address": host, "port_value": port}},
                    }
                )
            return json_response({"listener_statuses": statuses})
        return text("".join(f"{name}::{addr}\n" for name, addr in listeners))

    def _quit(self, req: AdminRequest) -> AdminResponse:
        self.ctx.request_shutdown()
        return text("OK\n")

    def _reopen_logs(self, req: AdminRequest) -> AdminResponse:
        self.ctx.reopen_logs()
        return text("OK\n")

    def _healthcheck_fail(self, req: AdminRequest) -> AdminResponse:
        self.ctx.set_healthcheck_failed(True)
        return text("OK\n")

    def _healthcheck_ok(self, req: AdminRequest) -> AdminResponse:
        self.ctx.set_healthcheck_failed(False)
        return text("OK\n")

    def _reset_counters(self, req: AdminRequest) -> AdminResponse:
        _stats.reset_counters(self.ctx.store)
        return text("OK\n")

    def _memory(self, req: AdminRequest) -> AdminResponse:
        rss, data = _memory_usage()
        # Envoy reports tcmalloc figures as uint64 strings; Python has no equivalent, so
        # allocated = resident set, heap_size = data segment (both from /proc/self/statm).
        return json_response(
            {
                "allocated": str(rss),
                "heap_size": str(data),
                "pageheap_unmapped": "0",
                "pageheap_free": "0",
                "total_thread_cache": "0",
                "total_physical_bytes": str(rss),
            }
        )

    def _runtime(self, req: AdminRequest) -> AdminResponse:
        return json_response(runtime_json(self.ctx.runtime.snapshot))

    def _runtime_modify(self, req: AdminRequest) -> AdminResponse:
        # Envoy (runtime_handler.cc, AdminFilter::queryParams): the query's parameters, or,
        # when it has none, a form body (only with exactly this content-type); the first
        # value of a repeated key wins.
        params = parse_params(req.raw_query)
        if not params and req.content_type == FORM:
            params = parse_params(req.body.decode("utf-8", "replace"))
        if not params:
            return text(
                "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                "       or send the parameters as form values\n"
                "use an empty value to remove a previously added override",
                400,
            )
        try:
            self.ctx.runtime.merge_values(params)
        except NoAdminLayer as exc:
            return text(str(exc), 503)
        return text("OK\n")

    def _stats(self, req: AdminRequest) -> AdminResponse:
        fmt = req.query.get("format", "text")
        if fmt not in ("text", "json", "prometheus"):
            return text("usage: /stats?format=(json|prometheus|text)\n", 400)
        return self._render_stats(req, fmt)

    def _stats_prometheus(self, req: AdminRequest) -> AdminResponse:
        return self._render_stats(req, "prometheus")

    def _render_stats(self, req: AdminRequest, fmt: str) -> AdminResponse:
        pattern = req.query.get("filter")
        used_only = "usedonly" in req.query
        try:
            _stats.compile_filter(pattern)
        except re.error as e:
            return text(f"Invalid regex: {e}", 400)
        store = self.ctx.store
        if fmt == "json":
            body = _stats.render_json(store, pattern, used_only)
            return AdminResponse(200, body.encode(), JSON)
        if fmt == "prometheus":
            return text(_stats.render_prometheus(store, pattern, used_only))
        return text(_stats.render_text(store, pattern, used_only))


FORM = "application/x-www-form-urlencoded"


def parse_params(data: str) -> dict[str, str]:
    """Envoy's QueryParamsMulti::parseParameters with decoding, keeping each key's first
    value: `&`-separated, `key=value` or a bare `key` (empty value), percent-decoded only
    (`+` stays a plus, unlike HTML forms)."""
    params: dict[str, str] = {}
    start = 0
    while start < len(data):
        end = data.find("&", start)
        if end == -1:
            end = len(data)
        key, _, value = data[start:end].partition("=")
        params.setdefault(unquote(key, errors="replace"), unquote(value, errors="replace"))
        start = end + 1
    return params


def _memory_usage() -> tuple[int, int]:
    """(resident bytes, data-segment bytes); falls back to peak RSS without /proc."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[5]) * page
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak


def clusters_text(cluster: Cluster) -> str:
    """One cluster in `/clusters` text, line for line as Envoy 1.40 prints it."""
    info = cluster.info
    name = info.name
    out = [f"{name}::observability_name::{info.observability_name}\n"]
    for prio in ("default_priority", "high_priority"):
        for key in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            out.append(f"{name}::{prio}::{key}::{info.thresholds[key]}\n")
    out.append(f"{name}::added_via_api::{'true' if info.added_via_api else 'false'}\n")
    for h in cluster.hosts:
        p = f"{name}::{h.key}::"
        out.extend(f"{p}{k}::{v}\n" for k, v, _ in _host_stats(h))
        out.append(f"{p}hostname::{h.hostname}\n")
        out.append(f"{p}health_flags::{health_flags_str(h.health_flags)}\n")
        out.append(f"{p}weight::{h.weight}\n")
        out.append(f"{p}region::\n{p}zone::\n{p}sub_zone::\n")
        out.append(f"{p}canary::false\n")
        out.append(f"{p}priority::{h.priority}\n")
        # -1: no outlier-detection success-rate data (Envoy's value when none is computed).
        out.append(f"{p}success_rate::-1\n")
        out.append(f"{p}local_origin_success_rate::-1\n")
    return "".join(out)


# HealthFlag -> envoy.admin.v3.HostHealthStatus boolean field (proto3 JSON omits false ones).
_HEALTH_FIELDS = {
    HealthFlag.FAILED_ACTIVE_HC: "failed_active_health_check",
    HealthFlag.FAILED_OUTLIER_CHECK: "failed_outlier_check",
    HealthFlag.DEGRADED_ACTIVE_HC: "failed_active_degraded_check",
    HealthFlag.PENDING_DYNAMIC_REMOVAL: "pending_dynamic_removal",
    HealthFlag.PENDING_ACTIVE_HC: "pending_active_hc",
    HealthFlag.EXCLUDED_VIA_IMMEDIATE_HC_FAIL: "excluded_via_immediate_hc_fail",
    HealthFlag.ACTIVE_HC_TIMEOUT: "active_hc_timeout",
}


def _health_status(flags: HealthFlag) -> dict[str, Any]:
    out: dict[str, Any] = {f: True for flag, f in _HEALTH_FIELDS.items() if flag in flags}
    if HealthFlag.FAILED_EDS_HEALTH in flags:
        eds = "UNHEALTHY"
    elif HealthFlag.EDS_STATUS_DRAINING in flags:
        eds = "DRAINING"
    elif HealthFlag.DEGRADED_EDS_HEALTH in flags:
        eds = "DEGRADED"
    else:
        eds = "HEALTHY"
    out["eds_health_status"] = eds
    return out


def clusters_json(cluster: Cluster) -> dict[str, Any]:
    """envoy.admin.v3.ClusterStatus in proto3 JSON as Envoy prints it: uint64 as strings,
    zero/false/empty fields omitted, keys in Envoy's output order."""
    info = cluster.info
    hosts = []
    for h in cluster.hosts:
        host_stats: list[dict[str, str]] = []
        # Envoy lists counters first, then gauges, each sorted by name.
        for gauge_pass in (False, True):
            for k, v, is_gauge in _host_stats(h):
                if is_gauge != gauge_pass:
                    continue
                st: dict[str, str] = {}
                if v:
                    st["value"] = str(v)
                if is_gauge:
                    st["type"] = "GAUGE"
                st["name"] = k
                host_stats.append(st)
        address, port = h.address, h.port
        hs: dict[str, Any] = {
            "address": {"socket_address": {"address": address, "port_value": port}},
            "stats": host_stats,
            "health_status": _health_status(h.health_flags),
            "weight": h.weight,
        }
        if h.hostname:
            hs["hostname"] = h.hostname
        hs["locality"] = {}
        if h.priority:
            hs["priority"] = h.priority
        hosts.append(hs)
    thresholds = {k: info.thresholds[k] for k in _THRESHOLD_KEYS}
    status: dict[str, Any] = {"name": info.name}
    if info.added_via_api:
        status["added_via_api"] = True
    if hosts:
        status["host_statuses"] = hosts
    status["circuit_breakers"] = {"thresholds": [thresholds, {"priority": "HIGH", **thresholds}]}
    status["observability_name"] = info.observability_name
    return status


_THRESHOLD_KEYS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
