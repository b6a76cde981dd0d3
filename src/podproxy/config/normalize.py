"""Envoy v2 → v3 rewrites on the raw bootstrap mapping, kept as tables.

`normalize()` never mutates its input and never rejects anything the typed models would reject
anyway: a value of the wrong shape is passed through for `config.schema` to report. It returns
the v3 mapping with every known filter's `@type` filled in and every repeated field a list (a
lone value stands for a list of one, as Envoy reads it), plus `aliases` from v3 paths back to
the paths the user wrote (`...clusters[0].load_assignment...` → `...clusters[0].hosts[0]`), so
errors name what is in the file.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

from podproxy.config.schema import (
    BUFFER_PER_ROUTE_TYPE,
    BUFFER_TYPE,
    CARES_TYPE,
    CORS_TYPE,
    DNS_CLUSTER_TYPE,
    DOWNSTREAM_TLS_TYPE,
    FAULT_TYPE,
    FILE_ACCESS_LOG_TYPE,
    GRPC_HTTP1_BRIDGE_TYPE,
    GRPC_STATS_TYPE,
    GRPC_WEB_TYPE,
    HCM_TYPE,
    HEALTH_CHECK_TYPE,
    LOCAL_RATELIMIT_TYPE,
    RAW_BUFFER_TYPE,
    ROUTER_TYPE,
    STDERR_ACCESS_LOG_TYPE,
    STDOUT_ACCESS_LOG_TYPE,
    TLS_INSPECTOR_TYPE,
    TLS_SOCKET_NAMES,
    TYPE_URL_PREFIX,
    TYPED_CONFIGS,
    UPSTREAM_TLS_TYPE,
    Bootstrap,
    Message,
    enum_name,
    is_repeated,
    message_in,
    show,
)
from podproxy.errors import ConfigError

# Deprecated well-known extension names (removed in Envoy 1.14+) → current names.
LEGACY_NAMES: dict[str, str] = {
    "envoy.http_connection_manager": "envoy.filters.network.http_connection_manager",
    "envoy.router": "envoy.filters.http.router",
    "envoy.file_access_log": "envoy.access_loggers.file",
    "envoy.fault": "envoy.filters.http.fault",
    "envoy.buffer": "envoy.filters.http.buffer",
    "envoy.health_check": "envoy.filters.http.health_check",
    "envoy.cors": "envoy.filters.http.cors",
    "envoy.listener.tls_inspector": "envoy.filters.listener.tls_inspector",
    "envoy.grpc_web": "envoy.filters.http.grpc_web",
    "envoy.grpc_http1_bridge": "envoy.filters.http.grpc_http1_bridge",
}

# Extension name → the v3 type URL its typed_config must carry (Envoy ≥ 1.22 looks it up).
TYPE_URL_BY_NAME: dict[str, str] = {
    "envoy.filters.network.http_connection_manager": HCM_TYPE,
    "envoy.filters.http.router": ROUTER_TYPE,
    "envoy.filters.http.fault": FAULT_TYPE,
    "envoy.filters.http.buffer": BUFFER_TYPE,
    "envoy.filters.http.local_ratelimit": LOCAL_RATELIMIT_TYPE,
    "envoy.filters.http.health_check": HEALTH_CHECK_TYPE,
    "envoy.filters.http.cors": CORS_TYPE,
    "envoy.filters.http.grpc_web": GRPC_WEB_TYPE,
    "envoy.filters.http.grpc_http1_bridge": GRPC_HTTP1_BRIDGE_TYPE,
    "envoy.filters.http.grpc_stats": GRPC_STATS_TYPE,
    "envoy.access_loggers.file": FILE_ACCESS_LOG_TYPE,
    "envoy.access_loggers.stdout": STDOUT_ACCESS_LOG_TYPE,
    "envoy.access_loggers.stderr": STDERR_ACCESS_LOG_TYPE,
    "envoy.cluster.dns": DNS_CLUSTER_TYPE,
    "envoy.clusters.dns": DNS_CLUSTER_TYPE,
    "envoy.network.dns_resolver.cares": CARES_TYPE,
    "envoy.filters.listener.tls_inspector": TLS_INSPECTOR_TYPE,
    "envoy.transport_sockets.raw_buffer": RAW_BUFFER_TYPE,
    "raw_buffer": RAW_BUFFER_TYPE,
}

# v2 type URLs → v3 type URLs.
V2_TYPE_URLS: dict[str, str] = {
    TYPE_URL_PREFIX
    + "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager": HCM_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.router.v2.Router": ROUTER_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.fault.v2.HTTPFault": FAULT_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.buffer.v2.Buffer": BUFFER_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.buffer.v2.BufferPerRoute": BUFFER_PER_ROUTE_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.health_check.v2.HealthCheck": HEALTH_CHECK_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.cors.v2.Cors": CORS_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.grpc_web.v2.GrpcWeb": GRPC_WEB_TYPE,
    TYPE_URL_PREFIX
    + "envoy.config.filter.http.grpc_http1_bridge.v2.Config": GRPC_HTTP1_BRIDGE_TYPE,
    TYPE_URL_PREFIX + "envoy.config.filter.http.grpc_stats.v2alpha.FilterConfig": GRPC_STATS_TYPE,
    TYPE_URL_PREFIX + "envoy.config.accesslog.v2.FileAccessLog": FILE_ACCESS_LOG_TYPE,
    TYPE_URL_PREFIX + "envoy.api.v2.auth.DownstreamTlsContext": DOWNSTREAM_TLS_TYPE,
    TYPE_URL_PREFIX + "envoy.api.v2.auth.UpstreamTlsContext": UPSTREAM_TLS_TYPE,
}

# The v2 bootstrap `runtime` message's fields (envoy.config.bootstrap.v2.Runtime).
V2_RUNTIME_FIELDS = frozenset({"symlink_root", "subdirectory", "override_subdirectory", "base"})

# Renamed fields: message kind → {v2 name: v3 name}.
RENAMED_FIELDS: dict[str, dict[str, str]] = {
    "RouteAction": {"host_rewrite": "host_rewrite_literal"},
    # sni_domains: the pre-1.7 name, deprecated for server_names in v2.
    "FilterChainMatch": {"sni_domains": "server_names"},
}

# Renamed enum values: (message kind, field) → {v2 name: v3 name}.
RENAMED_ENUM_VALUES: dict[tuple[str, str], dict[str, str]] = {
    ("Cluster", "lb_policy"): {"ORIGINAL_DST_LB": "CLUSTER_PROVIDED"},
}


@dataclass
class Normalized:
    v3: dict[str, Any]
    aliases: dict[str, str] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)


def normalize(raw: dict[str, Any]) -> Normalized:
    """Rewrite a v2 (or already v3) bootstrap mapping into v3; see the module docstring."""
    out = Normalized(copy.deepcopy(raw))
    _Walker(out).bootstrap(out.v3)
    repeated_as_lists(out.v3, Bootstrap)
    return out


# --- a lone value where a list is expected --------------------------------------------------
#
# Envoy reads YAML through protobuf's JSON parser with `allow_legacy_syntax` on (set by
# google/protobuf/json/json.cc for every JsonStringToMessage), and that parser "permits a single
# element in place of an array thereof" for every repeated field (json/internal/parser.cc,
# ParseField): `endpoints: {lb_endpoints: ...}` and `domains: "*"` are lists of one. `null` is
# not a value there, so it is left alone.


@functools.cache
def _fields(model: type[Message]) -> tuple[tuple[str, bool, type[Message] | None], ...]:
    """(key as written, repeated?, model of its values) for each field of `model`."""
    return tuple(
        (info.alias or name, is_repeated(info.annotation), message_in(info.annotation))
        for name, info in model.model_fields.items()
    )


def _lone(value: object, of_messages: bool) -> bool:
    """Whether `value` is one element of a repeated field (not a list, not another kind)."""
    if of_messages:
        return isinstance(value, dict)
    return value is not None and not isinstance(value, list | dict)


def repeated_as_lists(obj: dict[str, Any], model: type[Message]) -> None:
    """Wrap, in place, each lone value of a repeated field of `model` (and below) in a list."""
    for key, repeated, sub in _fields(model):
        if key not in obj:
            continue
        value = obj[key]
        if repeated and _lone(value, sub is not None):
            obj[key] = value = [value]
        if sub is None:
            continue
        for item in value if repeated and isinstance(value, list) else [value]:
            if isinstance(item, dict):
                # A typed_config union: the member its @type names.
                typed = TYPED_CONFIGS.get(item.get("@type"))  # type: ignore[arg-type]
                repeated_as_lists(item, typed or sub)


def _items(parent: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """The mappings in the repeated field `parent[key]`; a lone mapping becomes a list of one."""
    value = parent.get(key)
    if isinstance(value, dict):
        parent[key] = value = [value]
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _dict(parent: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = parent.get(key)
    return value if isinstance(value, dict) else None


class _Walker:
    def __init__(self, out: Normalized) -> None:
        self.out = out

    def alias(self, v3_path: str, user_path: str) -> None:
        if v3_path != user_path:
            self.out.aliases[v3_path] = user_path

    def error(self, path: str, msg: str) -> None:
        self.out.errors.append(ConfigError(path, msg))

    def rename(self, kind: str, obj: dict[str, Any], path: str) -> None:
        for old, new in RENAMED_FIELDS.get(kind, {}).items():
            if old not in obj:
                continue
            if new in obj:
                self.error(f"{path}.{old}", f"cannot be combined with {new}")
                continue
            obj[new] = obj.pop(old)
            self.alias(f"{path}.{new}", f"{path}.{old}")
        for (k, fld), table in RENAMED_ENUM_VALUES.items():
            value = obj.get(fld)
            name = enum_name(value)
            if k == kind and isinstance(name, str) and name in table:
                obj[fld] = table[name]

    def extension(self, obj: dict[str, Any], path: str) -> dict[str, Any] | None:
        """Fix one `{name, config | typed_config}` entry; return its typed_config if a mapping."""
        name = obj.get("name")
        if isinstance(name, str) and name in LEGACY_NAMES:
            obj["name"] = name = LEGACY_NAMES[name]
        url = TYPE_URL_BY_NAME.get(name) if isinstance(name, str) else None
        if "config" in obj:
            if "typed_config" in obj:
                self.error(f"{path}.config", "cannot be combined with typed_config")
                return None
            config = obj.pop("config")
            if isinstance(config, dict) and url is not None:
                config = {"@type": url, **config}
            obj["typed_config"] = config
            self.alias(f"{path}.typed_config", f"{path}.config")
        elif "typed_config" not in obj and url is not None:
            obj["typed_config"] = {"@type": url}
        typed = _dict(obj, "typed_config")
        if typed is not None:
            given = typed.get("@type")
            if isinstance(given, str) and given in V2_TYPE_URLS:
                typed["@type"] = V2_TYPE_URLS[given]
            elif given is None and url is not None:
                obj["typed_config"] = typed = {"@type": url, **typed}
        return typed

    def bootstrap(self, b: dict[str, Any]) -> None:
        static = _dict(b, "static_resources")
        if static is not None:
            for i, listener in _items(static, "listeners"):
                self.listener(listener, f"static_resources.listeners[{i}]")
            for i, cluster in _items(static, "clusters"):
                self.cluster(cluster, f"static_resources.clusters[{i}]")
        admin = _dict(b, "admin")
        if admin is not None:
            for i, log in _items(admin, "access_log"):
                self.extension(log, f"admin.access_log[{i}]")
        if "runtime" in b:
            self.v2_runtime(b)

    def v2_runtime(self, b: dict[str, Any]) -> None:
        """v2 `runtime` → v3 `layered_runtime`, layer for layer as Envoy's translateRuntime
        (source/common/config/runtime_utility.cc) did before v3 dropped the field: static
        "base", disk "root" and "override" (with the service cluster appended) when a
        symlink_root is set, then admin "admin"."""
        runtime = b.pop("runtime")
        if "layered_runtime" in b:
            self.error("runtime", "cannot be combined with layered_runtime")
            return
        if not isinstance(runtime, dict):
            self.error("runtime", f"expected a mapping, got {show(runtime)}")
            return
        unknown = sorted(set(runtime) - V2_RUNTIME_FIELDS)
        for key in unknown:
            self.error(f"runtime.{key}", "unknown field")
        if unknown:
            return
        base = runtime.get("base")
        layers: list[dict[str, Any]] = [{"name": "base", "static_layer": base or {}}]
        self.alias("layered_runtime.layers[0].static_layer", "runtime.base")
        root = runtime.get("symlink_root", "")
        if root:
            disk = {"symlink_root": root, "subdirectory": runtime.get("subdirectory", "")}
            layers.append({"name": "root", "disk_layer": disk})
            self.alias("layered_runtime.layers[1].disk_layer", "runtime")
            override = runtime.get("override_subdirectory", "")
            if override:
                disk = {"symlink_root": root, "subdirectory": override}
                layers.append(
                    {"name": "override", "disk_layer": {**disk, "append_service_cluster": True}}
                )
                self.alias(
                    "layered_runtime.layers[2].disk_layer.symlink_root", "runtime.symlink_root"
                )
                self.alias(
                    "layered_runtime.layers[2].disk_layer.subdirectory",
                    "runtime.override_subdirectory",
                )
        layers.append({"name": "admin", "admin_layer": {}})
        b["layered_runtime"] = {"layers": layers}
        self.alias("layered_runtime", "runtime")

    def health_check_endpoint(self, hc: dict[str, Any], path: str) -> None:
        """The health check filter's `endpoint` (v1/early v2, gone from v3) as Envoy 1.7 read
        it: an exact `:path` matcher first, and any `:path` matcher of `headers` dropped."""
        if "endpoint" not in hc:
            return
        endpoint = hc.pop("endpoint")
        if not isinstance(endpoint, str):
            self.error(f"{path}.endpoint", f"expected a string, got {show(endpoint)}")
            return
        if not endpoint:
            return  # empty: not set
        headers = hc.get("headers", [])
        if isinstance(headers, dict):
            headers = [headers]
        if not isinstance(headers, list):
            return  # the schema reports it
        kept = [h for h in headers if not (isinstance(h, dict) and h.get("name") == ":path")]
        hc["headers"] = [{"name": ":path", "exact_match": endpoint}, *kept]
        self.alias(f"{path}.headers[0]", f"{path}.endpoint")

    def listener(self, listener: dict[str, Any], path: str) -> None:
        chains = [(f"{path}.filter_chains[{i}]", c) for i, c in _items(listener, "filter_chains")]
        default = _dict(listener, "default_filter_chain")
        if default is not None:
            chains.append((f"{path}.default_filter_chain", default))
        for cpath, chain in chains:
            for j, flt in _items(chain, "filters"):
                fpath = f"{cpath}.filters[{j}]"
                typed = self.extension(flt, fpath)
                if typed is not None and typed.get("@type") == HCM_TYPE:
                    self.hcm(typed, f"{fpath}.typed_config")
            match = _dict(chain, "filter_chain_match")
            if match is not None:
                self.rename("FilterChainMatch", match, f"{cpath}.filter_chain_match")
            self.transport_socket(chain, cpath, DOWNSTREAM_TLS_TYPE)
        for i, flt in _items(listener, "listener_filters"):
            self.extension(flt, f"{path}.listener_filters[{i}]")

    def transport_socket(self, owner: dict[str, Any], path: str, tls_type: str) -> None:
        """v2 `tls_context` → `transport_socket` (envoy.transport_sockets.tls), and the TLS
        context's type filled in by name: Downstream on a filter chain, Upstream on a
        cluster (`tls_type`), which one the name alone cannot say."""
        if "tls_context" in owner:
            ctx = owner.pop("tls_context")
            if "transport_socket" in owner:
                self.error(f"{path}.tls_context", "cannot be combined with transport_socket")
                return
            if isinstance(ctx, dict):
                ctx = {"@type": tls_type, **ctx}
            owner["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": ctx}
            self.alias(f"{path}.transport_socket.typed_config", f"{path}.tls_context")
            self.alias(f"{path}.transport_socket", f"{path}.tls_context")
        ts = _dict(owner, "transport_socket")
        if ts is None:
            return
        tpath = f"{path}.transport_socket"
        typed = self.extension(ts, tpath)
        if ts.get("name") in TLS_SOCKET_NAMES:
            if "typed_config" not in ts:
                ts["typed_config"] = typed = {"@type": tls_type}
            elif typed is not None and "@type" not in typed:
                ts["typed_config"] = typed = {"@type": tls_type, **typed}
        common = _dict(typed, "common_tls_context") if typed is not None else None
        vc = _dict(common, "validation_context") if common is not None else None
        if vc is not None and "verify_subject_alt_name" in vc:
            # v2's exact SAN strings → v3's matchers (Envoy's v2 → v3 upgrade did the same).
            vpath = f"{tpath}.typed_config.common_tls_context.validation_context"
            names = vc.pop("verify_subject_alt_name")
            if "match_subject_alt_names" in vc:
                self.error(
                    f"{vpath}.verify_subject_alt_name",
                    "cannot be combined with match_subject_alt_names",
                )
                return
            names = names if isinstance(names, list) else [names]
            vc["match_subject_alt_names"] = [{"exact": n} for n in names]
            self.alias(f"{vpath}.match_subject_alt_names", f"{vpath}.verify_subject_alt_name")

    def hcm(self, hcm: dict[str, Any], path: str) -> None:
        for i, flt in _items(hcm, "http_filters"):
            typed = self.extension(flt, f"{path}.http_filters[{i}]")
            if typed is not None and typed.get("@type") == HEALTH_CHECK_TYPE:
                self.health_check_endpoint(typed, f"{path}.http_filters[{i}].typed_config")
        for i, log in _items(hcm, "access_log"):
            self.extension(log, f"{path}.access_log[{i}]")
        rc = _dict(hcm, "route_config")
        if rc is None:
            return
        for i, vh in _items(rc, "virtual_hosts"):
            vpath = f"{path}.route_config.virtual_hosts[{i}]"
            self.v2_cors(vh, vpath)
            for j, route in _items(vh, "routes"):
                rpath = f"{vpath}.routes[{j}]"
                action = _dict(route, "route")
                if action is not None:
                    self.rename("RouteAction", action, f"{rpath}.route")
                    self.v2_cors(action, f"{rpath}.route")

    def v2_cors(self, parent: dict[str, Any], path: str) -> None:
        """v2's CorsPolicy fields in `parent.cors` → v3's, as Envoy's CorsPolicyImpl read them
        before v3 dropped them: each `allow_origin` an exact matcher (`*` then allows every
        origin, as a matcher of "*" does), each `allow_origin_regex` a regex matcher (matching
        the whole origin), both after any allow_origin_string_match; `enabled` (a oneof with
        filter_enabled) a filter_enabled of 100% or 0%."""
        cors = _dict(parent, "cors")
        if cors is None:
            return
        path = f"{path}.cors"
        matchers = cors.get("allow_origin_string_match", [])
        if isinstance(matchers, dict):
            matchers = [matchers]
        for key, inner in (("allow_origin", "exact"), ("allow_origin_regex", "safe_regex")):
            if key not in cors:
                continue
            if not isinstance(matchers, list):
                self.error(f"{path}.{key}", "cannot be combined with allow_origin_string_match")
                return
            values = cors.pop(key)
            for i, value in enumerate(values if isinstance(values, list) else [values]):
                at = f"{path}.allow_origin_string_match[{len(matchers)}]"
                self.alias(at, f"{path}.{key}[{i}]")
                self.alias(f"{at}.{inner}", f"{path}.{key}[{i}]")
                if inner == "exact":
                    matchers.append({"exact": value})
                else:
                    self.alias(f"{at}.{inner}.regex", f"{path}.{key}[{i}]")
                    matchers.append({"safe_regex": {"regex": value}})
        if matchers:
            cors["allow_origin_string_match"] = matchers
        if "enabled" in cors:
            enabled = cors.pop("enabled")
            if "filter_enabled" in cors:
                self.error(f"{path}.enabled", "cannot be combined with filter_enabled")
            elif not isinstance(enabled, bool):
                self.error(f"{path}.enabled", f"expected true or false, got {show(enabled)}")
            else:
                percent = {"numerator": 100 if enabled else 0, "denominator": "HUNDRED"}
                cors["filter_enabled"] = {"default_value": percent}
                self.alias(f"{path}.filter_enabled", f"{path}.enabled")

    def cluster(self, cluster: dict[str, Any], path: str) -> None:
        self.rename("Cluster", cluster, path)
        self.transport_socket(cluster, path, UPSTREAM_TLS_TYPE)
        ct = _dict(cluster, "cluster_type")
        if ct is not None:
            typed = self.extension(ct, f"{path}.cluster_type")
            resolver = _dict(typed, "typed_dns_resolver_config") if typed else None
            if resolver is not None:
                self.extension(
                    resolver, f"{path}.cluster_type.typed_config.typed_dns_resolver_config"
                )
        resolver = _dict(cluster, "typed_dns_resolver_config")
        if resolver is not None:
            self.extension(resolver, f"{path}.typed_dns_resolver_config")
        if "hosts" not in cluster:
            return
        hosts = cluster.pop("hosts")
        if isinstance(hosts, dict):
            hosts = [hosts]  # v2 Cluster.hosts is a repeated Address: a lone one is a list of one
        if "load_assignment" in cluster:
            self.error(f"{path}.hosts", "cannot be combined with load_assignment")
            return
        if not isinstance(hosts, list):
            self.error(f"{path}.hosts", "expected a list of addresses")
            return
        ep = f"{path}.load_assignment.endpoints[0]"
        name = cluster.get("name")
        cluster["load_assignment"] = {
            # A missing or bad cluster name is reported once, on the cluster itself.
            "cluster_name": name if isinstance(name, str) and name else "unnamed",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": h}} for h in hosts]}],
        }
        self.alias(f"{path}.load_assignment", f"{path}.hosts")
        for i in range(len(hosts)):
            self.alias(f"{ep}.lb_endpoints[{i}].endpoint.address", f"{path}.hosts[{i}]")
