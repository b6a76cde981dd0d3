"""The CORS filter (envoy.filters.http.cors): answers preflights itself and marks the responses
to cross-origin requests whose origin a policy allows.

Policies live on routes, not on the filter: a route's CorsPolicy in typed_per_filter_config,
the virtual host's, or (only when neither level has one) the deprecated `cors` of the route
action and the virtual host. Each setting comes from the most specific policy that sets it;
filter_enabled and shadow_enabled come from the most specific policy alone (Envoy's
CorsFilter::initializeCorsPolicies and its per-field getters). A route's merged policy is
compiled the first time a request takes the route, then reused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from podproxy.filters.http.common import FilterContext, Runtime
from podproxy.http.filter import CONTINUE, STOP_ITERATION, FilterCallbacks, HttpFilter
from podproxy.http.stream import Headers, ResponseHead
from podproxy.router.routes import Route, string_matcher
from podproxy.stats import Counter

NAME = "envoy.filters.http.cors"

ORIGIN = b"origin"
REQUEST_METHOD = b"access-control-request-method"
REQUEST_HEADERS = b"access-control-request-headers"
REQUEST_PRIVATE_NETWORK = b"access-control-request-private-network"
ALLOW_ORIGIN = b"access-control-allow-origin"
ALLOW_CREDENTIALS = b"access-control-allow-credentials"
ALLOW_METHODS = b"access-control-allow-methods"
ALLOW_HEADERS = b"access-control-allow-headers"
MAX_AGE = b"access-control-max-age"
EXPOSE_HEADERS = b"access-control-expose-headers"
ALLOW_PRIVATE_NETWORK = b"access-control-allow-private-network"


@dataclass(slots=True)
class CorsStats:
    """`http.<stat_prefix>.cors.*` (Envoy's ALL_CORS_STATS): requests with an Origin, by
    whether the policy allows it (counted in shadow mode too)."""

    origin_valid: Counter
    origin_invalid: Counter


# A RuntimeFractionalPercent, compiled: (runtime key, numerator, denominator).
Fraction = tuple[str, int, int]


def _fraction(rfp: Any) -> Fraction | None:
    if rfp is None:
        return None
    d = rfp.default_value
    return (rfp.runtime_key, d.numerator, d.denominator.value)


def _first(policies: Sequence[Any], name: str, unset: Any) -> Any:
    """The most specific policy's value of `name` that is set (Envoy's per-field getters)."""
    for p in policies:
        value = getattr(p, name)
        if value != unset:
            return value
    return unset


class RoutePolicy:
    """The CORS policies of one route, merged field by field (most specific first)."""

    __slots__ = (
        "allow_all",
        "allow_credentials",
        "allow_headers",
        "allow_methods",
        "allow_private_network_access",
        "expose_headers",
        "filter_enabled",
        "forward_not_matching_preflights",
        "max_age",
        "origins",
        "shadow_enabled",
    )

    def __init__(self, policies: Sequence[Any]) -> None:
        matchers = [string_matcher(m) for m in _first(policies, "allow_origin_string_match", ())]
        self.origins: tuple[Callable[[bytes], bool], ...] = tuple(matchers)
        # A matcher that matches "*" itself allows every origin (Envoy's isOriginAllowed).
        self.allow_all = any(m(b"*") for m in matchers)
        self.allow_methods: bytes = _first(policies, "allow_methods", "").encode()
        self.allow_headers: bytes = _first(policies, "allow_headers", "").encode()
        self.expose_headers: bytes = _first(policies, "expose_headers", "").encode()
        self.max_age: bytes = _first(policies, "max_age", "").encode()
        self.allow_credentials: bool = _first(policies, "allow_credentials", None) or False
        self.allow_private_network_access: bool = (
            _first(policies, "allow_private_network_access", None) or False
        )
        forward = _first(policies, "forward_not_matching_preflights", None)
        self.forward_not_matching_preflights: bool = forward is None or forward
        # Unset filter_enabled: always on; unset shadow_enabled: never.
        self.filter_enabled = _fraction(policies[0].filter_enabled)
        self.shadow_enabled = _fraction(policies[0].shadow_enabled)

    def origin_allowed(self, origin: bytes) -> bool:
        if self.allow_all:
            return True
        return any(m(origin) for m in self.origins)


def _route_policies(route: Route) -> list[Any]:
    """The route's policies, most specific first: its typed_per_filter_config levels (a
    FilterConfig's wrapped policy included), else the deprecated `cors` fields."""
    policies = []
    for cfg in route.filter_config_levels.get(NAME, ()):
        if getattr(cfg, "wraps_config", False):
            cfg = cfg.config
        if cfg is not None:
            policies.append(cfg)
    return policies or list(route.cors_policies)


class CorsConfig:
    """The filter's shared state, made once per HCM: stats, runtime, and each route's merged
    policy (None: the route has none), compiled on first use."""

    def __init__(self, ctx: FilterContext) -> None:
        self.stats = ctx.stats.scope("cors.").make(CorsStats)
        self.runtime: Runtime = ctx.runtime
        self.random = ctx.random
        # id(route) -> (route, its policy); the route is kept so that its id stays its own.
        self.policies: dict[int, tuple[Route, RoutePolicy | None]] = {}

    def policy_for(self, route: Route) -> RoutePolicy | None:
        got = self.policies.get(id(route))
        if got is not None:
            return got[1]
        found = _route_policies(route)
        policy = RoutePolicy(found) if found else None
        self.policies[id(route)] = (route, policy)
        return policy

    def on(self, fraction: Fraction | None, unset: bool) -> bool:
        """A RuntimeFractionalPercent's verdict for this request (a new random each time,
        as Envoy's featureEnabled draws one per call)."""
        if fraction is None:
            return unset
        key, numerator, denominator = fraction
        return self.runtime.feature_enabled(key, numerator, denominator, self.random())


def _inline(head: Any, name: bytes) -> bytes | None:
    """A request header as Envoy reads the CORS ones (inline headers): several fields of that
    name are one value, joined by commas (HeaderMapImpl::appendToHeader)."""
    found = None
    for k, v in head.headers:
        if k == name:
            found = v if found is None else found + b"," + v
    return found


def _set(headers: Headers, name: bytes, value: bytes) -> None:
    """Set a response header to one value (Envoy's setInline): in place if present."""
    at = -1
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0] == name:
            if at >= 0:
                del headers[at]
            at = i
    if at >= 0:
        headers[at] = (name, value)
    else:
        headers.append((name, value))


class CorsFilter(HttpFilter):
    __slots__ = ("config", "origin", "policy")

    def __init__(self, callbacks: FilterCallbacks, config: CorsConfig) -> None:
        super().__init__(callbacks)
        self.config = config
        self.policy: RoutePolicy | None = None
        # The allowed Origin of a CORS request (not in shadow mode): its response gets the
        # allow-origin headers.
        self.origin: bytes | None = None

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        route = self.callbacks.route()
        if route is None or route.direct_status is not None:
            return CONTINUE  # no route entry (none, a redirect or a direct response)
        cfg = self.config
        policy = cfg.policy_for(route)
        if policy is None:
            return CONTINUE
        # Envoy asks enabled() then shadowEnabled(), each drawing its own random value.
        if not cfg.on(policy.filter_enabled, True) and not cfg.on(policy.shadow_enabled, False):
            return CONTINUE
        origin = _inline(head, ORIGIN)
        if not origin:
            return CONTINUE
        allowed = policy.origin_allowed(origin)
        if allowed:
            cfg.stats.origin_valid.value += 1
        else:
            cfg.stats.origin_invalid.value += 1
        if cfg.on(policy.shadow_enabled, False) and not cfg.on(policy.filter_enabled, True):
            return CONTINUE  # shadow mode: counted, not enforced
        self.policy = policy
        if allowed:
            self.origin = origin
        if head.method != b"OPTIONS":
            return CONTINUE
        request_method = _inline(head, REQUEST_METHOD)
        if not request_method:
            return CONTINUE
        # A preflight (OPTIONS with an Origin and Access-Control-Request-Method).
        if not allowed and policy.forward_not_matching_preflights:
            return CONTINUE
        self.callbacks.send_local_reply(
            200, b"", headers=self._preflight_headers(head, request_method), details="cors_response"
        )
        return STOP_ITERATION

    def _preflight_headers(self, head: Any, request_method: bytes) -> Headers:
        p = self.policy
        assert p is not None
        headers: Headers = []
        if self.origin is not None:
            headers.append((ALLOW_ORIGIN, self.origin))
        if p.allow_credentials:
            headers.append((ALLOW_CREDENTIALS, b"true"))
        if p.allow_methods:
            # "*" echoes what the preflight asks for.
            methods = request_method if p.allow_methods == b"*" else p.allow_methods
            headers.append((ALLOW_METHODS, methods))
        if p.allow_headers:
            wanted = _inline(head, REQUEST_HEADERS) or b""
            headers.append((ALLOW_HEADERS, wanted if p.allow_headers == b"*" else p.allow_headers))
        if p.max_age:
            headers.append((MAX_AGE, p.max_age))
        if p.allow_private_network_access and _inline(head, REQUEST_PRIVATE_NETWORK) == b"true":
            headers.append((ALLOW_PRIVATE_NETWORK, b"true"))
        return headers

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        origin = self.origin
        if origin is None:
            return CONTINUE
        p = self.policy
        assert p is not None
        headers = head.headers
        _set(headers, ALLOW_ORIGIN, origin)
        if p.allow_credentials:
            _set(headers, ALLOW_CREDENTIALS, b"true")
        if p.expose_headers:
            _set(headers, EXPOSE_HEADERS, p.expose_headers)
        return CONTINUE


def build(cfg: Any, ctx: FilterContext) -> Any:
    config = CorsConfig(ctx)

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return CorsFilter(callbacks, config)

    return factory
