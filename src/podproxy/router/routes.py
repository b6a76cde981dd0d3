"""The compiled route table: virtual host by authority, then the first route whose match holds.

Pure and precompiled: domains are sorted into exact, suffix (`*.example.com`), prefix
(`example.*`) and catch-all (`*`) tables as Envoy's config_impl.cc does (exact first, then the
longest suffix wildcard, then the longest prefix wildcard, then `*`). Matching works on bytes as
they came off the wire; the path for matching excludes the query string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

Headers = Sequence[tuple[bytes, bytes]]
HeaderPredicate = Callable[[Headers], bool]

_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})
# v2 filter names a typed_per_filter_config may be keyed by (normalize.py's LEGACY_NAMES).
_FILTER_NAMES = {
    "envoy.fault": "envoy.filters.http.fault",
    "envoy.buffer": "envoy.filters.http.buffer",
}


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: how it matches and what it does."""

    name: str
    matches: Callable[[bytes, Headers], bool]
    cluster: str | None = None
    host_rewrite: bytes | None = None
    auto_host_rewrite: bool = False
    prefix: bytes | None = None
    prefix_rewrite: bytes | None = None
    timeout: float | None = 15.0
    idle_timeout: float | None = None
    direct_status: int | None = None
    direct_body: bytes = b""
    cluster_not_found_status: int = 503
    # `x-envoy-expected-rq-timeout-ms: N\r\n`, precomputed (empty when the timeout is off).
    timeout_header: bytes = b""
    # typed_per_filter_config of the virtual host and the route (the route's wins), by v3
    # filter name: a filter's own per-route config, or a route FilterConfig wrapping one.
    per_filter_config: Mapping[str, Any] = field(default_factory=lambda: _NO_CONFIG)


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    routes: tuple[Route, ...]

    def route(self, path: bytes, headers: Headers) -> Route | None:
        for r in self.routes:
            if r.matches(path, headers):
                return r
        return None


class RouteTable:
    """Virtual hosts by domain; `route(authority, target, headers)` is the one lookup."""

    def __init__(self, virtual_hosts: Sequence[tuple[Sequence[str], VirtualHost]]) -> None:
        self._exact: dict[bytes, VirtualHost] = {}
        suffix: list[tuple[bytes, VirtualHost]] = []
        prefix: list[tuple[bytes, VirtualHost]] = []
        self._default: VirtualHost | None = None
        for domains, vh in virtual_hosts:
            for d in domains:
                db = d.lower().encode()
                if db == b"*":
                    self._default = vh
                elif db.startswith(b"*"):
                    suffix.append((db[1:], vh))
                elif db.endswith(b"*"):
                    prefix.append((db[:-1], vh))
                else:
                    self._exact[db] = vh
        # Longest wildcard wins (Envoy sorts its wildcard maps by length, longest first).
        self._suffix = sorted(suffix, key=lambda p: -len(p[0]))
        self._prefix = sorted(prefix, key=lambda p: -len(p[0]))
        self._only_default = not self._exact and not suffix and not prefix

    def virtual_host(self, authority: bytes) -> VirtualHost | None:
        if self._only_default:
            return self._default
        host = authority.lower()
        vh = self._exact.get(host)
        if vh is not None:
            return vh
        for suf, vh in self._suffix:
            if host.endswith(suf) and len(host) > len(suf):
                return vh
        for pre, vh in self._prefix:
            if host.startswith(pre) and len(host) > len(pre):
                return vh
        return self._default

    def route(self, authority: bytes, target: bytes, headers: Headers) -> Route | None:
        vh = self._default if self._only_default else self.virtual_host(authority)
        if vh is None:
            return None
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        return vh.route(path, headers)


# Building from typed config ---------------------------------------------------------


def _header_value(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _string_matcher(m: Any) -> Callable[[bytes], bool]:
    """A StringMatcher (exact/prefix/suffix/contains/safe_regex, ignore_case) on bytes."""
    ignore_case = bool(getattr(m, "ignore_case", False))

    def norm(b: bytes) -> bytes:
        return b.lower() if ignore_case else b

    if getattr(m, "exact", None) is not None:
        want = norm(m.exact.encode())
        return lambda v: norm(v) == want
    if getattr(m, "prefix", None) is not None:
        pre = norm(m.prefix.encode())
        return lambda v: norm(v).startswith(pre)
    if getattr(m, "suffix", None) is not None:
        suf = norm(m.suffix.encode())
        return lambda v: norm(v).endswith(suf)
    if getattr(m, "contains", None) is not None:
        sub = norm(m.contains.encode())
        return lambda v: sub in norm(v)
    if getattr(m, "safe_regex", None) is not None:
        rx = re.compile(m.safe_regex.regex.encode(), re.IGNORECASE if ignore_case else 0)
        return lambda v: rx.fullmatch(v) is not None
    raise ValueError("string matcher without a match")


def header_predicate(hm: Any) -> HeaderPredicate:
    """A HeaderMatcher as a predicate over the request headers (route_components.proto)."""
    name = hm.name.lower().encode()
    invert = bool(getattr(hm, "invert_match", False))
    missing_as_empty = bool(getattr(hm, "treat_missing_header_as_empty", False))
    check: Callable[[bytes], bool]
    if getattr(hm, "present_match", None) is not None:
        want_present = bool(hm.present_match)

        def present(headers: Headers) -> bool:
            return ((_header_value(headers, name) is not None) == want_present) != invert

        return present
    if getattr(hm, "string_match", None) is not None:
        check = _string_matcher(hm.string_match)
    elif getattr(hm, "exact_match", None) is not None:
        want = hm.exact_match.encode()
        check = lambda v: v == want  # noqa: E731
    elif getattr(hm, "prefix_match", None) is not None:
        pre = hm.prefix_match.encode()
        check = lambda v: v.startswith(pre)  # noqa: E731
    elif getattr(hm, "suffix_match", None) is not None:
        suf = hm.suffix_match.encode()
        check = lambda v: v.endswith(suf)  # noqa: E731
    elif getattr(hm, "contains_match", None) is not None:
        sub = hm.contains_match.encode()
        check = lambda v: sub in v  # noqa: E731
    elif getattr(hm, "safe_regex_match", None) is not None:
        rx = re.compile(hm.safe_regex_match.regex.encode())
        check = lambda v: rx.fullmatch(v) is not None  # noqa: E731
    else:
        # No match specifier: the header must be present (Envoy's default).
        def present_only(headers: Headers) -> bool:
            return (_header_value(headers, name) is not None) != invert

        return present_only

    def pred(headers: Headers) -> bool:
        v = _header_value(headers, name)
        if v is None:
            if not missing_as_empty:
                return False  # a missing header never matches, even inverted (Envoy)
            v = b""
        return check(v) != invert

    return pred


def _path_matcher(match: Any) -> tuple[Callable[[bytes], bool], bytes | None]:
    case_sensitive = getattr(match, "case_sensitive", True)
    if case_sensitive is None:
        case_sensitive = True
    if match.prefix is not None:
        pre = match.prefix.encode()
        if case_sensitive:
            return (lambda p: p.startswith(pre)), pre
        lpre = pre.lower()
        return (lambda p: p[: len(lpre)].lower() == lpre), pre
    if match.path is not None:
        want = match.path.encode()
        if case_sensitive:
            return (lambda p: p == want), want
        lwant = want.lower()
        return (lambda p: p.lower() == lwant), want
    if match.safe_regex is not None:
        rx = re.compile(match.safe_regex.regex.encode())
        return (lambda p: rx.fullmatch(p) is not None), None
    raise ValueError("route match without prefix, path or safe_regex")


_GRPC = b"application/grpc"


def is_grpc_request(headers: Headers) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: content-type exactly `application/grpc` or
    `application/grpc+...` (case-sensitive; `application/grpc-web` is not gRPC)."""
    ct = _header_value(headers, b"content-type")
    return ct is not None and ct.startswith(_GRPC) and (len(ct) == 16 or ct[16] == 43)  # "+"


def per_filter_configs(*levels: Mapping[str, Any]) -> Mapping[str, Any]:
    """Merge typed_per_filter_config maps, least specific first (Envoy: the most specific
    config of a filter wins whole; configs are not merged field by field)."""
    merged: dict[str, Any] = {}
    for level in levels:
        for name, cfg in level.items():
            merged[_FILTER_NAMES.get(name, name)] = cfg
    return MappingProxyType(merged) if merged else _NO_CONFIG


def compile_route(r: Any, index: int, vhost_filter_config: Mapping[str, Any] = _NO_CONFIG) -> Route:
    path_ok, prefix = _path_matcher(r.match)
    preds = tuple(header_predicate(h) for h in (r.match.headers or ()))
    if getattr(r.match, "grpc", None) is not None:
        preds += (is_grpc_request,)
    matches: Callable[[bytes, Headers], bool]
    if preds:

        def matches(path: bytes, headers: Headers) -> bool:
            return path_ok(path) and all(p(headers) for p in preds)

    elif prefix is not None and r.match.prefix is not None and r.match.case_sensitive is not False:
        # The common case (`prefix: "/"`): one call per match, not two.
        startswith = bytes.startswith
        pre = prefix

        def matches(path: bytes, headers: Headers) -> bool:
            return startswith(path, pre)

    else:

        def matches(path: bytes, headers: Headers) -> bool:
            return path_ok(path)

    name = r.name or f"route_{index}"
    pfc = per_filter_configs(vhost_filter_config, getattr(r, "typed_per_filter_config", {}))
    if r.direct_response is not None:
        dr = r.direct_response
        return Route(
            name,
            matches,
            direct_status=dr.status,
            direct_body=dr.body_bytes(),
            prefix=prefix,
            per_filter_config=pfc,
        )
    a = r.route
    status = 503
    code = getattr(a, "cluster_not_found_response_code", None)
    if code is not None and getattr(code, "name", str(code)) == "NOT_FOUND":
        status = 404
    elif code is not None and getattr(code, "name", str(code)) == "INTERNAL_SERVER_ERROR":
        status = 500
    return Route(
        name,
        matches,
        cluster=a.cluster,
        host_rewrite=a.host_rewrite_literal.encode() if a.host_rewrite_literal else None,
        auto_host_rewrite=bool(getattr(a, "auto_host_rewrite", False)),
        prefix=prefix,
        prefix_rewrite=a.prefix_rewrite.encode() if a.prefix_rewrite is not None else None,
        timeout=a.timeout,
        idle_timeout=a.idle_timeout,
        cluster_not_found_status=status,
        timeout_header=(
            b"x-envoy-expected-rq-timeout-ms: %d\r\n" % int(a.timeout * 1000)
            if a.timeout is not None
            else b""
        ),
        per_filter_config=pfc,
    )


def build_route_table(route_config: Any) -> RouteTable:
    """Compile a typed `RouteConfiguration` into a `RouteTable`."""
    vhosts = []
    for vh in route_config.virtual_hosts:
        vh_pfc = getattr(vh, "typed_per_filter_config", {})
        routes = tuple(compile_route(r, i, vh_pfc) for i, r in enumerate(vh.routes))
        vhosts.append((tuple(vh.domains), VirtualHost(vh.name, routes)))
    return RouteTable(vhosts)
