"""Loading a bootstrap: YAML/JSON text → v3 mapping → typed `Bootstrap` → cross-checks.

The only entry point is `load()`. Every problem found is collected and raised together as one
`ConfigErrors`, each naming the YAML path the user wrote (v2 paths included, via the aliases
`normalize` returns). `--config-yaml` is merged over the file with protobuf MergeFrom rules,
as Envoy does: scalars replace, mappings merge, lists concatenate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from podproxy.config.normalize import Normalized, normalize
from podproxy.config.schema import (
    TYPED_CONFIGS,
    UNSUPPORTED_WHY,
    Address,
    Bootstrap,
    Cluster,
    DiscoveryType,
    HttpConnectionManager,
    Message,
    is_ip_address,
    message_in,
    show,
)
from podproxy.errors import ConfigError, ConfigErrors

CONFIG_YAML = "--config-yaml"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated bootstrap: the typed model, and the v3 mapping it came from."""

    bootstrap: Bootstrap
    v3: dict[str, Any]


def load(config_path: str | None = None, config_yaml: str | None = None) -> LoadedConfig:
    """Load `-c config_path` and/or `--config-yaml` text; raise `ConfigErrors` on any problem."""
    if config_path is None and config_yaml is None:
        raise ConfigErrors([ConfigError("", "no configuration given (use -c or --config-yaml)")])
    parts: list[Normalized] = []
    if config_path is not None:
        parts.append(normalize(_parse(_read(config_path), config_path)))
    if config_yaml is not None:
        parts.append(normalize(_parse(config_yaml, CONFIG_YAML, json_ok=False)))
    errors = [e for part in parts for e in part.errors]
    v3 = parts[0].v3
    for part in parts[1:]:
        v3 = merge(v3, part.v3)
    # Indices written in the file survive the merge (lists concatenate after them).
    aliases = parts[0].aliases
    try:
        bootstrap = Bootstrap.model_validate(v3)
    except ValidationError as exc:
        errors += [_translate(err, aliases) for err in _root_causes(exc.errors())]
        raise ConfigErrors(errors) from None
    errors += [ConfigError(_user_path(p, aliases), m) for p, m in cross_check(bootstrap)]
    if errors:
        raise ConfigErrors(errors)
    return LoadedConfig(bootstrap=bootstrap, v3=v3)


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Protobuf MergeFrom on mappings: scalars replace, mappings merge, lists concatenate."""
    out = dict(base)
    for key, value in overlay.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = old + value
        else:
            out[key] = value
    return out


# --- reading and parsing --------------------------------------------------------------------


def _fail(where: str, msg: str) -> ConfigErrors:
    return ConfigErrors([ConfigError(where, msg)])


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise _fail(path, "config file not found") from None
    except UnicodeDecodeError as exc:
        raise _fail(path, f"config file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise _fail(path, f"cannot read config file: {exc.strerror or exc}") from None


def _parse(text: str, where: str, json_ok: bool = True) -> dict[str, Any]:
    data: object
    if json_ok and where.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(
                where, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = exc.problem or exc.context or "invalid YAML"
            raise _fail(where, f"YAML syntax error{at}: {problem}") from None
        except yaml.YAMLError as exc:
            raise _fail(where, f"YAML syntax error: {exc}") from None
    if data is None:
        raise _fail(where, "empty configuration")
    if not isinstance(data, dict):
        raise _fail(where, f"expected a mapping at the top level, got {show(data)}")
    bad = list(_non_string_keys(data, ""))
    if bad:
        raise ConfigErrors([ConfigError(p, "keys must be strings") for p in bad])
    return data


def _non_string_keys(value: object, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield _join(path, repr(key))
            else:
                yield from _non_string_keys(item, _join(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_string_keys(item, f"{path}[{i}]")


# --- pydantic errors → ConfigError ----------------------------------------------------------

# Error types raised by `config.schema` whose message is complete as it is.
_OWN_TYPES = frozenset(
    {"duration", "enum", "uint", "string", "unsupported", "type_url", "regex", "file", "base64"}
    | {"percent", "struct", "int64"}
)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and part in TYPED_CONFIGS:
            continue  # the tag of a typed_config union member: not in the user's YAML
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


def _user_path(path: str, aliases: dict[str, str]) -> str:
    # Longest first: an alias's target keeps its v3 parent path, which a shorter alias
    # (e.g. `typed_config` → `config` above a `host_rewrite`) then rewrites in turn.
    for v3_path in sorted(aliases, key=len, reverse=True):
        if path == v3_path or path.startswith((v3_path + ".", v3_path + "[")):
            path = aliases[v3_path] + path[len(v3_path) :]
    return path


def _model_at(loc: Sequence[int | str]) -> type[Message] | None:
    """The config model that the mapping at `loc` is validated as."""
    model: type[BaseModel] = Bootstrap
    for part in loc:
        if isinstance(part, int):
            continue
        if part in TYPED_CONFIGS:
            model = TYPED_CONFIGS[part]
            continue
        fields = model.model_fields
        info = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        found = message_in(info.annotation) if info is not None else None
        if found is None:
            return None
        model = found
    return model if issubclass(model, Message) else None


def _message(err: Any) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        if model is not None and loc[-1] in model.UNSUPPORTED:
            why = UNSUPPORTED_WHY.get((model.__name__, str(loc[-1])))
            if why is not None:
                return f"Envoy field not supported by podproxy: {why}"
            return "Envoy field not supported by podproxy yet"
        return "unknown field"
    if kind == "type_url" and isinstance(got, dict) and "@type" in got:
        return f"{show(got['@type'])}: {err['msg']}"
    if kind in _OWN_TYPES:
        return str(err["msg"])
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return "missing required field"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {show(got)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {show(got)}"
    if kind == "bool_type":
        return f"expected true or false, got {show(got)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {show(got)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got {len(got)}"
    if kind == "too_long":
        return f"podproxy supports at most {ctx.get('max_length')} item(s) here, got {len(got)}"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {show(got)}"
    return f"{err['msg']}, got {show(got)}"


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop errors that only follow from another one (list lengths, foreign typed_configs)."""
    bad = [tuple(e["loc"]) for e in errors]

    def echo(e: Any) -> bool:
        loc = tuple(e["loc"])
        return e["type"] in ("too_short", "too_long") and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in bad
        )

    # A typed_config of another Envoy type: its fields are not ours to judge. (The error is
    # on its `@type`, or on the whole typed_config when a union found no member for it.)
    foreign = [
        tuple(e["loc"])[:-1] if tuple(e["loc"])[-1:] == ("@type",) else tuple(e["loc"])
        for e in errors
        if e["type"] == "type_url"
    ]

    def inside_foreign(e: Any) -> bool:
        loc = tuple(e["loc"])
        return e["type"] != "type_url" and any(loc[: len(f)] == f for f in foreign)

    return [e for e in errors if not echo(e) and not inside_foreign(e)]


def _translate(err: Any, aliases: dict[str, str]) -> ConfigError:
    return ConfigError(_user_path(_loc_path(err["loc"]), aliases), _message(err))


# --- checks across messages -----------------------------------------------------------------


def _hcms(b: Bootstrap) -> Iterator[tuple[str, HttpConnectionManager]]:
    for i, listener in enumerate(b.static_resources.listeners):
        chains = [(f"filter_chains[{j}]", c) for j, c in enumerate(listener.filter_chains)]
        if listener.default_filter_chain is not None:
            chains.append(("default_filter_chain", listener.default_filter_chain))
        for where, chain in chains:
            for k, flt in enumerate(chain.filters):
                path = f"static_resources.listeners[{i}].{where}.filters[{k}]"
                yield f"{path}.typed_config", flt.typed_config


def _duplicates(names: Sequence[str]) -> Iterator[int]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name and name in seen:
            yield i
        seen.add(name)


def _check_ip(address: Address, path: str, what: str) -> Iterator[tuple[str, str]]:
    text = address.socket_address.address
    if not is_ip_address(text):
        yield f"{path}.socket_address.address", f"{what} must be an IP address, got {show(text)}"


def cross_check(b: Bootstrap) -> list[tuple[str, str]]:
    """Checks that need more than one message; (v3 path, message) pairs in config order."""
    out: list[tuple[str, str]] = []
    listeners = b.static_resources.listeners
    clusters = b.static_resources.clusters
    for i in _duplicates([li.name for li in listeners]):
        out.append(
            (
                f"static_resources.listeners[{i}].name",
                f"duplicate listener name {show(listeners[i].name)}",
            )
        )
    for i, listener in enumerate(listeners):
        out += _check_ip(
            listener.address, f"static_resources.listeners[{i}].address", "a listener address"
        )
    if b.admin is not None:
        out += _check_ip(b.admin.address, "admin.address", "the admin address")
    for i in _duplicates([c.name for c in clusters]):
        out.append(
            (
                f"static_resources.clusters[{i}].name",
                f"duplicate cluster name {show(clusters[i].name)}",
            )
        )
    names = {c.name for c in clusters}
    for path, hcm in _hcms(b):
        rc = hcm.route_config
        vhosts = rc.virtual_hosts
        for i in _duplicates([v.name for v in vhosts]):
            out.append(
                (
                    f"{path}.route_config.virtual_hosts[{i}].name",
                    f"duplicate virtual host name {show(vhosts[i].name)}",
                )
            )
        seen_domains: set[str] = set()
        for i, vh in enumerate(vhosts):
            vpath = f"{path}.route_config.virtual_hosts[{i}]"
            for j, domain in enumerate(vh.domains):
                if domain.lower() in seen_domains:
                    out.append(
                        (
                            f"{vpath}.domains[{j}]",
                            f"duplicate domain {show(domain)} (only unique domains are permitted)",
                        )
                    )
                seen_domains.add(domain.lower())
            for j, route in enumerate(vh.routes):
                action = route.route
                if action is None:
                    continue
                if action.cluster is not None and action.cluster not in names:
                    out.append(
                        (
                            f"{vpath}.routes[{j}].route.cluster",
                            f"unknown cluster {show(action.cluster)}",
                        )
                    )
                wc = action.weighted_clusters
                for k, cw in enumerate(wc.clusters if wc is not None else ()):
                    # Envoy: "route: unknown weighted cluster 'x'" (a cluster_header entry
                    # names its cluster per request, and is not checked).
                    if cw.name and cw.name not in names:
                        out.append(
                            (
                                f"{vpath}.routes[{j}].route.weighted_clusters.clusters[{k}].name",
                                f"unknown weighted cluster {show(cw.name)}",
                            )
                        )
    for i, cluster in enumerate(clusters):
        out += _check_cluster(cluster, f"static_resources.clusters[{i}]")
    if b.layered_runtime is not None:
        out += _check_runtime_layers(b.layered_runtime.layers)
    return out


def _check_runtime_layers(layers: Sequence[Any]) -> Iterator[tuple[str, str]]:
    # Envoy's LoaderImpl constructor checks these, with these words (runtime_impl.cc).
    for i in _duplicates([layer.name for layer in layers]):
        yield f"layered_runtime.layers[{i}].name", f"Duplicate layer name: {layers[i].name}"
    admins = [i for i, layer in enumerate(layers) if layer.admin_layer is not None]
    for i in admins[1:]:
        yield (
            f"layered_runtime.layers[{i}].admin_layer",
            "Too many admin layers specified in LayeredRuntime, at most one may be specified",
        )


def _check_cluster(cluster: Cluster, path: str) -> Iterator[tuple[str, str]]:
    la = cluster.load_assignment
    endpoints = (
        []
        if la is None
        else [
            (f"{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address", lb)
            for i, loc in enumerate(la.endpoints)
            for j, lb in enumerate(loc.lb_endpoints)
        ]
    )
    kind = cluster.type
    if kind is DiscoveryType.LOGICAL_DNS and len(endpoints) != 1:
        yield (
            f"{path}.load_assignment",
            f"LOGICAL_DNS clusters must have exactly one endpoint, got {len(endpoints)}",
        )
    for epath, lb in endpoints:
        sa = lb.endpoint.address.socket_address
        if (
            kind in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS)
            and sa.resolver_name is not None
        ):
            yield (
                f"{epath}.socket_address.resolver_name",
                f"{kind.name} clusters must not have a custom resolver name",
            )
        if kind is DiscoveryType.STATIC:
            yield from _check_ip(lb.endpoint.address, epath, "a STATIC cluster's endpoint")
