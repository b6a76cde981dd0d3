"""The compiled route table: virtual host by authority, then the first route whose match holds.

Pure and precompiled: domains are sorted into exact, suffix (`*.example.com`), prefix
(`example.*`) and catch-all (`*`) tables as Envoy's config_impl.cc does (exact first, then the
longest suffix wildcard, then the longest prefix wildcard, then `*`). Matching works on bytes as
they came off the wire; the path for matching excludes the query string.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from podproxy.http.stream import first_value, is_grpc_request
from podproxy.router.grpc_timeout import GrpcTimeoutPolicy

Headers = Sequence[tuple[bytes, bytes]]
HeaderPredicate = Callable[[Headers], bool]

_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})
_NO_LEVELS: Mapping[str, tuple[Any, ...]] = MappingProxyType({})
# v2 filter names a typed_per_filter_config may be keyed by (normalize.py's LEGACY_NAMES).
_FILTER_NAMES = {
    "envoy.fault": "envoy.filters.http.fault",
    "envoy.buffer": "envoy.filters.http.buffer",
    "envoy.health_check": "envoy.filters.http.health_check",
    "envoy.cors": "envoy.filters.http.cors",
}


class Runtime(Protocol):
    """The runtime seam a route asks whether `runtime_fraction` lets a request match."""

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool: ...


class DefaultFractionRuntime:
    """A runtime with no layers: every key takes its configured default fraction, as Envoy's
    ProtobufPercentHelper::evaluateFractionalPercent does (`random_value % denominator <
    numerator`). The real runtime replaces it through the same method."""

    __slots__ = ()

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return random_value % denominator < numerator


def _random_u64() -> int:
    # Envoy draws one uint64 per stream (ActiveStream::stream_id_, from the connection
    # manager's random generator) for runtime_fraction and weighted clusters alike; the
    # x-request-id plays no part (checked against Envoy 1.40: one id, both clusters).
    return _getrandbits(64)


_getrandbits = random.getrandbits

# HeaderValueOption.HeaderAppendAction values, as plain ints on the mutation path.
APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

# A header value to add: literal bytes, or (a value with `%COMMAND%` operators) the access
# log's formatter over the stream's `header_format.HeaderInfo`.
HeaderValueSource = bytes | Callable[[Any], bytes]


class HeaderContext(Protocol):
    """What a formatted value reads (`header_format.HeaderInfo`); `bind` gives it the header
    list the mutation is editing."""

    def bind(self, headers: list[tuple[bytes, bytes]]) -> None: ...


@dataclass(frozen=True, slots=True)
class HeaderToAdd:
    name: bytes
    value: HeaderValueSource
    action: int
    keep_empty: bool


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """One level's `*_headers_to_remove` and `*_headers_to_add`, applied as Envoy's
    HeaderParser::evaluateHeaders does: removals first; then each addition decided against
    the headers as they were before this level's additions; overwrites (which move the
    header to the end) before appends."""

    remove: frozenset[bytes]
    add: tuple[HeaderToAdd, ...]

    def apply(self, headers: list[tuple[bytes, bytes]], context: Any = None) -> None:
        remove = self.remove
        if remove:
            headers[:] = [h for h in headers if h[0] not in remove]
        present = {k for k, _ in headers}
        overwrite: list[tuple[bytes, bytes]] = []
        append: list[tuple[bytes, bytes]] = []
        for h in self.add:
            value = h.value if isinstance(h.value, bytes) else h.value(context)
            if not value and not h.keep_empty:
                continue  # keep_empty_value false: an empty value adds nothing
            action = h.action
            if action == APPEND_IF_EXISTS_OR_ADD:
                append.append((h.name, value))
            elif action == ADD_IF_ABSENT:
                if h.name not in present:
                    append.append((h.name, value))
            elif action == OVERWRITE_IF_EXISTS_OR_ADD or h.name in present:
                overwrite.append((h.name, value))
        for name, value in overwrite:
            headers[:] = [h for h in headers if h[0] != name]
            headers.append((name, value))
        headers.extend(append)


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """Every level that applies to one direction of a route, in Envoy's order."""

    levels: tuple[HeaderMutation, ...]
    # Whether a value has operators: only then does the router build a context to apply with
    # (decided here, at config time).
    formatted: bool = field(init=False)

    def __post_init__(self) -> None:
        formatted = any(not isinstance(h.value, bytes) for lv in self.levels for h in lv.add)
        object.__setattr__(self, "formatted", formatted)

    def apply(
        self, headers: list[tuple[bytes, bytes]], context: HeaderContext | None = None
    ) -> None:
        if context is not None:
            context.bind(headers)
        for level in self.levels:
            level.apply(headers, context)

    def apply_to_lines(self, block: bytes, context: HeaderContext | None = None) -> bytes:
        """The same on serialized `name: value\r\n` lines (what the forwarder builds)."""
        headers = []
        for line in block.split(b"\r\n")[:-1]:
            k, _, v = line.partition(b": ")
            headers.append((k, v))
        self.apply(headers, context)
        return b"".join(b"%s: %s\r\n" % h for h in headers)


@dataclass(frozen=True, slots=True)
class Redirect:
    """A RedirectAction, answered locally with `location` (Envoy's RouteEntryImplBase::newUri
    and processRequestHost, checked side by side with Envoy 1.40)."""

    status: int
    scheme: bytes | None = None  # https_redirect or scheme_redirect
    host: bytes | None = None
    port: bytes | None = None  # ":8443" from port_redirect
    path: bytes | None = None
    prefix: bytes | None = None  # the route's matched prefix, for prefix_rewrite
    prefix_rewrite: bytes | None = None
    regex: re.Pattern[bytes] | None = None
    substitution: bytes = b""
    strip_query: bool = False

    def location(self, authority: bytes, target: bytes, forwarded_proto: bytes) -> bytes:
        scheme = self.scheme or forwarded_proto
        host = self.host
        if host is None:
            host = _redirect_host(authority, scheme, forwarded_proto, self.port is not None)
        if self.port is not None:
            host = _strip_port(host) + self.port
        q = target.find(b"?")
        path, query = (target, b"") if q < 0 else (target[:q], target[q:])
        if self.path is not None:
            # A path_redirect with its own query replaces the request's query.
            if b"?" in self.path or self.strip_query:
                return scheme + b"://" + host + self.path
            return scheme + b"://" + host + self.path + query
        if self.prefix_rewrite is not None and self.prefix is not None:
            path = self.prefix_rewrite + path[len(self.prefix) :]
        elif self.regex is not None:
            path = self.regex.sub(self.substitution, path)
        return scheme + b"://" + host + path + (b"" if self.strip_query else query)


def _port_start(host: bytes) -> int:
    """Where `:port` starts in an authority, or -1 (an IPv6 literal keeps its colons)."""
    if host[:1] == b"[":
        end = host.rfind(b"]:")
        return end + 1 if end >= 0 else -1
    return host.rfind(b":")


def _strip_port(host: bytes) -> bytes:
    i = _port_start(host)
    return host if i < 0 else host[:i]


def _redirect_host(
    authority: bytes, scheme: bytes, forwarded_proto: bytes, new_port: bool
) -> bytes:
    # processRequestHost: a port goes when a new one is set, or when the scheme changes and
    # it is the old scheme's default (so http://h:80 becomes https://h).
    i = _port_start(authority)
    if i < 0:
        return authority
    port = authority[i:]
    remove = new_port
    if scheme != forwarded_proto:
        remove = remove or (forwarded_proto == b"https" and port == b":443")
        remove = remove or (forwarded_proto == b"http" and port == b":80")
    return authority[:i] if remove else authority


@dataclass(frozen=True, slots=True)
class WeightedClusters:
    """Envoy's pickWeightedCluster: a random value modulo the sum of the weights falls in one
    cluster's [start, end) span (zero-weight clusters have none)."""

    ends: tuple[int, ...]  # cumulative weights
    entries: tuple[Route, ...]  # one route per cluster, with its cluster and mutations
    total: int
    random: Callable[[], int]

    def pick(self) -> Route:
        return self.entries[bisect.bisect_right(self.ends, self.random() % self.total)]


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """A compiled RequestMirrorPolicy (Envoy's ShadowPolicyImpl): which cluster gets a copy
    of the request, for which share of requests, and how the copy's head differs."""

    cluster: str | None  # None: named per request by `cluster_header`
    cluster_header: bytes | None
    # runtime_fraction: (runtime key, numerator, denominator); None mirrors every request.
    fraction: tuple[str, int, int] | None
    runtime: Runtime
    random: Callable[[], int]
    # The authority the copy carries: `-shadow` appended (before any port) unless
    # disable_shadow_host_suffix_append; host_rewrite_literal replaces it whole.
    suffix: bool = True
    host_rewrite: bytes | None = None
    mutations: HeaderMutations | None = None  # request_headers_mutations, in order

    def enabled(self) -> bool:
        """Envoy's FilterUtility::shouldShadow: the runtime decides on the stream's random
        value (a policy without runtime_fraction always mirrors)."""
        f = self.fraction
        if f is None:
            return True
        return self.runtime.feature_enabled(f[0], f[1], f[2], self.random())

    def cluster_name(self, headers: Headers) -> str | None:
        """The mirror cluster for this request; None when `cluster_header` is absent or empty
        (router.cc getShadowCluster: no shadow then)."""
        if self.cluster is not None:
            return self.cluster
        assert self.cluster_header is not None
        value = first_value(headers, self.cluster_header)
        return value.decode("latin-1") if value else None

    def authority(self, authority: bytes) -> bytes:
        """shadow_writer_impl.cc shadowAppendedHost: `-shadow` before the port, if any."""
        if self.host_rewrite is not None:
            return self.host_rewrite
        if not self.suffix or not authority:
            return authority
        i = _port_start(authority)
        if i < 0:
            return authority + b"-shadow"
        return authority[:i] + b"-shadow" + authority[i:]


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: how it matches and what it does.

    `cluster` is None only for a route that picks its cluster per request (weighted
    clusters, `cluster_header`), a redirect or a direct response, so a plain route costs the
    forwarder nothing more; `direct_status` is set for redirects too (with `redirect`).
    """

    name: str
    matches: Callable[[bytes, bytes, Headers], bool]
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
    # Every level's typed_per_filter_config of each filter, most specific first (Envoy's
    # perFilterConfigs, which the CORS filter reads field by field), and the deprecated `cors`
    # policies of the route action and the virtual host (RouteEntry / VirtualHost corsPolicy).
    filter_config_levels: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: _NO_LEVELS)
    cors_policies: tuple[Any, ...] = ()
    redirect: Redirect | None = None
    weighted: WeightedClusters | None = None
    cluster_header: bytes | None = None
    # Header mutations of every level, in Envoy's order; None when no level has any.
    request_mutation: HeaderMutations | None = None
    response_mutation: HeaderMutations | None = None
    # False for a weighted cluster's own host_rewrite_literal: Envoy sets Host there without
    # keeping the client's in x-envoy-original-host (checked side by side with Envoy 1.40).
    original_host_header: bool = True
    # request_mirror_policies of the most specific level that has any; None when none has.
    mirrors: tuple[MirrorPolicy, ...] | None = None
    # The route's max_stream_duration, overriding the connection manager's for the stream
    # (0.0: none at all); None leaves the manager's. Read by the connection's timeout sweep.
    max_stream_duration: float | None = None
    # A route with gRPC-aware timeouts (max_grpc_timeout, or a max_stream_duration message):
    # its timeouts are decided per request (`timeout` is then None and `timeout_header` holds
    # only the attempt count); None for every other route, which pays nothing for them.
    grpc_timeouts: GrpcTimeoutPolicy | None = None
    # The virtual host's include_request_attempt_count: `x-envoy-attempt-count: 1\r\n`
    # (also folded into `timeout_header`, so the common path adds nothing), else b"".
    attempt_count_line: bytes = b""
    # The virtual host's include_attempt_count_in_response.
    attempt_count_in_response: bool = False
    # RouteAction.upgrade_configs: lower-cased upgrade type -> enabled, overriding the
    # connection manager's (http.upgrade); None when the route has none.
    upgrades: Mapping[bytes, bool] | None = None

    def choose_cluster(self, headers: Headers) -> tuple[Route, str | None]:
        """For a route without a fixed cluster: the route entry that serves this request
        (a weighted cluster's own) and its cluster name, None when `cluster_header` names
        none (the header's first value, as Envoy reads it)."""
        route = self.weighted.pick() if self.weighted is not None else self
        if route.cluster is not None:
            return route, route.cluster
        assert route.cluster_header is not None
        value = first_value(headers, route.cluster_header)
        return route, (value.decode("latin-1") if value else None)

    def local_reply_headers(
        self, context: HeaderContext | None = None
    ) -> list[tuple[bytes, bytes]] | None:
        """The response header mutations on a direct response or redirect (Envoy applies
        them to those too); `context` for formatted values."""
        if self.response_mutation is None:
            return None
        headers: list[tuple[bytes, bytes]] = []
        self.response_mutation.apply(headers, context)
        return headers


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    routes: tuple[Route, ...]

    def route(self, path: bytes, target: bytes, headers: Headers) -> Route | None:
        for r in self.routes:
            if r.matches(path, target, headers):
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
        return vh.route(path, target, headers)


# Building from typed config ---------------------------------------------------------


def string_matcher(m: Any) -> Callable[[bytes], bool]:
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


# absl::SimpleAtoi: optional ASCII whitespace around an optional sign and decimal digits.
_INT64 = re.compile(rb"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*")


def _range_check(start: int, end: int) -> Callable[[bytes], bool]:
    def check(v: bytes) -> bool:
        if _INT64.fullmatch(v) is None:
            return False
        n = int(v)
        return -(2**63) <= n < 2**63 and start <= n < end

    return check


def header_predicate(hm: Any) -> HeaderPredicate:
    """A HeaderMatcher as a predicate over the request headers, as Envoy 1.40 matches them
    (checked side by side): a header sent more than once matches when any one of its values
    does (so `invert_match` holds when none does); a missing header never matches unless
    `treat_missing_header_as_empty` (then it is one empty value) or the matcher is
    `present_match`; `host` and `:authority` both name the request's authority."""
    name = hm.name.lower().encode()
    if name == b":authority":
        name = b"host"
    invert = bool(getattr(hm, "invert_match", False))
    missing_as_empty = bool(getattr(hm, "treat_missing_header_as_empty", False))
    check: Callable[[bytes], bool]
    present_match = getattr(hm, "present_match", None)
    if present_match is not None or _no_specifier(hm):
        # No match specifier: the header must be present (Envoy's default).
        want_present = True if present_match is None else bool(present_match)

        def present(headers: Headers) -> bool:
            for k, _ in headers:
                if k == name:
                    return want_present != invert
            return (not want_present) != invert

        return present
    if getattr(hm, "string_match", None) is not None:
        check = string_matcher(hm.string_match)
    elif getattr(hm, "exact_match", None) is not None:
        want = hm.exact_match.encode()
        # HeaderUtility: an empty exact_match matches any value.
        check = (lambda v: True) if not want else (lambda v: v == want)
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
        check = _range_check(hm.range_match.start, hm.range_match.end)

    def pred(headers: Headers) -> bool:
        seen = False
        for k, v in headers:
            if k == name:
                if check(v):
                    return not invert
                seen = True
        if not seen:
            if not missing_as_empty:
                return False  # a missing header never matches, even inverted (Envoy)
            return check(b"") != invert
        return invert

    return pred


_SPECIFIERS = (
    "exact_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "safe_regex_match",
    "range_match",
    "present_match",
    "string_match",
)


def _no_specifier(hm: Any) -> bool:
    return all(getattr(hm, n, None) is None for n in _SPECIFIERS)


def _first_query_value(target: bytes, name: bytes) -> bytes | None:
    """Http::Utility::QueryParamsMulti::parseQueryString then getFirstValue: `&`-separated,
    `name` or `name=value`, compared and returned as sent (no percent-decoding)."""
    q = target.find(b"?")
    if q < 0:
        return None
    for part in target[q + 1 :].split(b"&"):
        k, _, v = part.partition(b"=")
        if k == name:
            return v
    return None


def query_predicate(qm: Any) -> Callable[[bytes], bool]:
    """A QueryParameterMatcher as a predicate over the request target."""
    name = qm.name.encode()
    if qm.string_match is not None:
        check = string_matcher(qm.string_match)

        def matches(target: bytes) -> bool:
            v = _first_query_value(target, name)
            return v is not None and check(v)

        return matches

    # present_match (true or false) or no specifier: the parameter is there (Envoy
    # ConfigUtility::QueryParameterMatcher::matches returns true for any present one).
    def present(target: bytes) -> bool:
        return _first_query_value(target, name) is not None

    return present


def runtime_predicate(
    fraction: Any, runtime: Runtime, random_value: Callable[[], int]
) -> HeaderPredicate:
    """`match.runtime_fraction`: the route matches when the runtime says the key is enabled
    for a random value (Envoy's RouteEntryImplBase::evaluateRuntimeMatch)."""
    key = fraction.runtime_key
    numerator = fraction.default_value.numerator
    denominator = fraction.default_value.denominator.value
    enabled = runtime.feature_enabled

    def pred(headers: Headers) -> bool:
        return enabled(key, numerator, denominator, random_value())

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


def per_filter_configs(*levels: Mapping[str, Any]) -> Mapping[str, Any]:
    """Merge typed_per_filter_config maps, least specific first (Envoy: the most specific
    config of a filter wins whole; configs are not merged field by field)."""
    merged: dict[str, Any] = {}
    for level in levels:
        for name, cfg in level.items():
            merged[_FILTER_NAMES.get(name, name)] = cfg
    return MappingProxyType(merged) if merged else _NO_CONFIG


def filter_config_levels(*levels: Mapping[str, Any]) -> Mapping[str, tuple[Any, ...]]:
    """Each filter's typed_per_filter_config at every level that has one, given least
    specific first, returned most specific first."""
    merged: dict[str, tuple[Any, ...]] = {}
    for level in levels:
        for name, cfg in level.items():
            name = _FILTER_NAMES.get(name, name)
            merged[name] = (cfg, *merged.get(name, ()))
    return MappingProxyType(merged) if merged else _NO_LEVELS


def compile_route(
    r: Any,
    index: int,
    *,
    runtime: Runtime | None = None,
    random_value: Callable[[], int] = _random_u64,
    outer_levels: Sequence[Any] = (),
    most_specific_wins: bool = False,
    vhost_filter_config: Mapping[str, Any] = _NO_CONFIG,
) -> Route:
    """Compile one config Route. `outer_levels` are the virtual host and the route
    configuration (their header mutations), most specific first."""
    path_ok, prefix = _path_matcher(r.match)
    preds = tuple(header_predicate(h) for h in (r.match.headers or ()))
    if getattr(r.match, "grpc", None) is not None:
        preds += (is_grpc_request,)
    fraction = getattr(r.match, "runtime_fraction", None)
    if fraction is not None:
        preds = (
            runtime_predicate(fraction, runtime or DefaultFractionRuntime(), random_value),
            *preds,
        )
    query = tuple(query_predicate(q) for q in (getattr(r.match, "query_parameters", None) or ()))
    matches: Callable[[bytes, bytes, Headers], bool]
    if query:

        def matches(path: bytes, target: bytes, headers: Headers) -> bool:
            return (
                path_ok(path) and all(p(headers) for p in preds) and all(q(target) for q in query)
            )

    elif preds:

        def matches(path: bytes, target: bytes, headers: Headers) -> bool:
            return path_ok(path) and all(p(headers) for p in preds)

    elif prefix is not None and r.match.prefix is not None and r.match.case_sensitive is not False:
        # The common case (`prefix: "/"`): one call per match, not two.
        startswith = bytes.startswith
        pre = prefix

        def matches(path: bytes, target: bytes, headers: Headers) -> bool:
            return startswith(path, pre)

    else:

        def matches(path: bytes, target: bytes, headers: Headers) -> bool:
            return path_ok(path)

    # Envoy's ROUTE_NAME is the route's `name`, empty when it has none.
    name = r.name or ""
    # Envoy's order of header mutations: route, virtual host, route configuration (the least
    # specific applied last, so it wins an overwrite), or the reverse with
    # most_specific_header_mutations_wins; a weighted cluster's own always come first
    # (checked side by side with Envoy 1.40).
    levels = [r, *outer_levels]
    if most_specific_wins:
        levels.reverse()
    request_levels = [m for m in (_mutation(x, "request") for x in levels) if m is not None]
    response_levels = [m for m in (_mutation(x, "response") for x in levels) if m is not None]
    request_mutation = HeaderMutations(tuple(request_levels)) if request_levels else None
    response_mutation = HeaderMutations(tuple(response_levels)) if response_levels else None
    route_filter_config = getattr(r, "typed_per_filter_config", {})
    pfc = per_filter_configs(vhost_filter_config, route_filter_config)
    levels_pfc = filter_config_levels(vhost_filter_config, route_filter_config)
    if r.direct_response is not None:
        dr = r.direct_response
        return Route(
            name,
            matches,
            direct_status=dr.status,
            direct_body=dr.body_bytes(),
            prefix=prefix,
            per_filter_config=pfc,
            filter_config_levels=levels_pfc,
            response_mutation=response_mutation,
        )
    if getattr(r, "redirect", None) is not None:
        rd = _redirect(r.redirect, prefix)
        return Route(
            name,
            matches,
            direct_status=rd.status,
            redirect=rd,
            prefix=prefix,
            response_mutation=response_mutation,
            per_filter_config=pfc,
            filter_config_levels=levels_pfc,
        )
    a = r.route
    status = 503
    code = getattr(a, "cluster_not_found_response_code", None)
    if code is not None and getattr(code, "name", str(code)) == "NOT_FOUND":
        status = 404
    elif code is not None and getattr(code, "name", str(code)) == "INTERNAL_SERVER_ERROR":
        status = 500
    cluster_header = getattr(a, "cluster_header", None)
    vhost = outer_levels[0] if outer_levels else None
    cors = tuple(
        p for p in (getattr(a, "cors", None), getattr(vhost, "cors", None)) if p is not None
    )
    mirrors = _mirror_policies(
        (a, *outer_levels), runtime or DefaultFractionRuntime(), random_value
    )
    msd = getattr(a, "max_stream_duration", None)
    max_duration = msd.max_stream_duration if msd is not None else None
    grpc_timeouts = GrpcTimeoutPolicy.of(
        a.timeout,
        getattr(a, "max_grpc_timeout", None),
        getattr(a, "grpc_timeout_offset", None),
        msd,
    )
    # With a gRPC-aware policy the router decides the timeout and its header per request.
    timeout = a.timeout if grpc_timeouts is None else None
    attempt_line = (
        b"x-envoy-attempt-count: 1\r\n"
        if getattr(vhost, "include_request_attempt_count", False)
        else b""
    )
    route = Route(
        name,
        matches,
        cluster=a.cluster,
        host_rewrite=a.host_rewrite_literal.encode() if a.host_rewrite_literal else None,
        auto_host_rewrite=bool(getattr(a, "auto_host_rewrite", False)),
        prefix=prefix,
        prefix_rewrite=a.prefix_rewrite.encode() if a.prefix_rewrite is not None else None,
        timeout=timeout,
        idle_timeout=a.idle_timeout,
        cluster_not_found_status=status,
        timeout_header=(
            b"x-envoy-expected-rq-timeout-ms: %d\r\n" % int(timeout * 1000)
            if timeout is not None
            else b""
        )
        + attempt_line,
        per_filter_config=pfc,
        filter_config_levels=levels_pfc,
        cors_policies=cors,
        cluster_header=_header_name(cluster_header) if cluster_header else None,
        request_mutation=request_mutation,
        response_mutation=response_mutation,
        mirrors=mirrors,
        max_stream_duration=max_duration,
        grpc_timeouts=grpc_timeouts,
        attempt_count_line=attempt_line,
        attempt_count_in_response=bool(getattr(vhost, "include_attempt_count_in_response", False)),
        upgrades={
            u.upgrade_type.lower().encode(): u.enabled for u in getattr(a, "upgrade_configs", ())
        }
        or None,
    )
    wc = getattr(a, "weighted_clusters", None)
    if wc is None:
        return route
    entries = []
    ends = []
    total = 0
    for cw in wc.clusters:
        total += cw.weight
        ends.append(total)
        req = _mutation(cw, "request")
        resp = _mutation(cw, "response")
        entries.append(
            dataclasses.replace(
                route,
                cluster=cw.name or None,
                cluster_header=_header_name(cw.cluster_header) if cw.cluster_header else None,
                host_rewrite=(
                    cw.host_rewrite_literal.encode()
                    if cw.host_rewrite_literal
                    else route.host_rewrite
                ),
                original_host_header=not cw.host_rewrite_literal,
                request_mutation=_prepend(req, request_mutation),
                response_mutation=_prepend(resp, response_mutation),
                per_filter_config=per_filter_configs(
                    vhost_filter_config, route_filter_config, cw.typed_per_filter_config
                ),
                filter_config_levels=filter_config_levels(
                    vhost_filter_config, route_filter_config, cw.typed_per_filter_config
                ),
            )
        )
    weighted = WeightedClusters(tuple(ends), tuple(entries), total, random_value)
    return dataclasses.replace(route, weighted=weighted)


def _header_name(name: str) -> bytes:
    n = name.lower().encode()
    return b"host" if n == b":authority" else n


def _prepend(first: HeaderMutation | None, rest: HeaderMutations | None) -> HeaderMutations | None:
    if first is None:
        return rest
    return HeaderMutations((first, *(rest.levels if rest is not None else ())))


_ACTIONS = {
    "APPEND_IF_EXISTS_OR_ADD": APPEND_IF_EXISTS_OR_ADD,
    "ADD_IF_ABSENT": ADD_IF_ABSENT,
    "OVERWRITE_IF_EXISTS_OR_ADD": OVERWRITE_IF_EXISTS_OR_ADD,
    "OVERWRITE_IF_EXISTS": OVERWRITE_IF_EXISTS,
}


def _mutation(level: Any, direction: str) -> HeaderMutation | None:
    """One level's `<direction>_headers_to_add/remove`, or None when it has neither."""
    adds = getattr(level, f"{direction}_headers_to_add", None) or ()
    removes = getattr(level, f"{direction}_headers_to_remove", None) or ()
    if not adds and not removes:
        return None
    # Imported here: the access log package imports this module (its header matchers).
    from podproxy.router.header_format import header_value

    return HeaderMutation(
        frozenset(n.lower().encode() for n in removes),
        tuple(
            HeaderToAdd(
                o.header.key.lower().encode(),
                # Envoy 1.40 formats `value` only: a raw_value renders as "" (so it adds
                # nothing, or an empty header with keep_empty_value; checked side by side).
                header_value(o.header.value or ""),
                _ACTIONS[o.action().name],
                o.keep_empty_value,
            )
            for o in adds
        ),
    )


def _mirror_policies(
    levels: Sequence[Any], runtime: Runtime, random_value: Callable[[], int]
) -> tuple[MirrorPolicy, ...] | None:
    """request_mirror_policies of the first level (route action, virtual host, route
    configuration) that has any: Envoy takes the most specific non-empty list whole."""
    for level in levels:
        policies = getattr(level, "request_mirror_policies", None) or ()
        if policies:
            return tuple(_mirror_policy(p, runtime, random_value) for p in policies)
    return None


def _mirror_policy(p: Any, runtime: Runtime, random_value: Callable[[], int]) -> MirrorPolicy:
    fraction = None
    if p.runtime_fraction is not None:
        rf = p.runtime_fraction
        fraction = (rf.runtime_key, rf.default_value.numerator, rf.default_value.denominator.value)
    levels = []
    for m in p.request_headers_mutations:
        if m.remove is not None:
            levels.append(HeaderMutation(frozenset({m.remove.lower().encode()}), ()))
        else:
            o = m.append
            add = HeaderToAdd(
                o.header.key.lower().encode(),
                o.header.value_bytes(),
                _ACTIONS[o.action().name],
                o.keep_empty_value,
            )
            levels.append(HeaderMutation(frozenset(), (add,)))
    return MirrorPolicy(
        cluster=p.cluster or None,
        cluster_header=_header_name(p.cluster_header) if p.cluster_header else None,
        fraction=fraction,
        runtime=runtime,
        random=random_value,
        # host_rewrite_literal implies disable_shadow_host_suffix_append (the proto says so).
        suffix=not p.disable_shadow_host_suffix_append,
        host_rewrite=p.host_rewrite_literal.encode() if p.host_rewrite_literal else None,
        mutations=HeaderMutations(tuple(levels)) if levels else None,
    )


def _redirect(rd: Any, prefix: bytes | None) -> Redirect:
    scheme = b"https" if rd.https_redirect else None
    if rd.scheme_redirect is not None:
        scheme = rd.scheme_redirect.lower().encode()
    rx = rd.regex_rewrite
    return Redirect(
        status=rd.response_code.status,
        scheme=scheme,
        host=rd.host_redirect.encode() if rd.host_redirect else None,
        port=b":%d" % rd.port_redirect if rd.port_redirect else None,
        path=rd.path_redirect.encode() if rd.path_redirect is not None else None,
        prefix=prefix,
        prefix_rewrite=rd.prefix_rewrite.encode() if rd.prefix_rewrite is not None else None,
        regex=re.compile(rx.pattern.regex.encode()) if rx is not None else None,
        substitution=rx.substitution.encode() if rx is not None else b"",
        strip_query=rd.strip_query,
    )


def build_route_table(
    route_config: Any,
    *,
    runtime: Runtime | None = None,
    random_value: Callable[[], int] = _random_u64,
) -> RouteTable:
    """Compile a typed `RouteConfiguration` into a `RouteTable`. `runtime` answers
    `runtime_fraction` (default: `DefaultFractionRuntime`, every key at its default);
    `random_value` gives the per-request uint64 (seed it in tests)."""
    msw = bool(getattr(route_config, "most_specific_header_mutations_wins", False))
    vhosts = []
    for vh in route_config.virtual_hosts:
        vh_pfc = getattr(vh, "typed_per_filter_config", {})
        routes = tuple(
            compile_route(
                r,
                i,
                runtime=runtime,
                random_value=random_value,
                outer_levels=(vh, route_config),
                most_specific_wins=msw,
                vhost_filter_config=vh_pfc,
            )
            for i, r in enumerate(vh.routes)
        )
        vhosts.append((tuple(vh.domains), VirtualHost(vh.name, routes)))
    return RouteTable(vhosts)
