"""The CORS filter without sockets: preflights answered or forwarded, the headers added to
responses, each policy field taken from the most specific policy that sets it, the deprecated
`cors` fields, filter_enabled / shadow_enabled (with the runtime), the stats; and the config:
CorsPolicy models and the v2 rewrites of normalize.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.config.schema import RouteConfiguration
from podproxy.errors import ConfigErrors
from podproxy.filters.http import HTTP_FILTERS
from podproxy.filters.http.common import FilterContext
from podproxy.filters.http.cors import NAME, CorsFilter
from podproxy.http.filter import CONTINUE, STOP_ITERATION
from podproxy.http.stream import Headers, RequestHead, ResponseHead
from podproxy.router.routes import Route, build_route_table
from podproxy.stats import Store

POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
ORIGIN = "http://127.0.0.1:8080"


def policy(**fields: Any) -> dict[str, Any]:
    return {NAME: {"@type": POLICY, **fields}}


def allow(*origins: str) -> list[dict[str, str]]:
    return [{"exact": o} for o in origins]


def route_of(
    vh: dict[str, Any] | None = None, route: dict[str, Any] | None = None, **action: Any
) -> Route:
    """The compiled route of a one-route virtual host: `vh` and `route` add fields to those
    levels, `action` to the route action."""
    r = {"match": {"prefix": "/"}, "route": {"cluster": "app", **action}, **(route or {})}
    rc = {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [r], **(vh or {})}]}
    table = build_route_table(RouteConfiguration.model_validate(rc))
    got = table.route(b"app", b"/", [])
    assert got is not None
    return got


class FakeRuntime:
    """Runtime overrides by key, as fractions over 100; other keys take their defaults."""

    def __init__(self, percents: dict[str, int]) -> None:
        self.percents = percents

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        if key in self.percents:
            numerator, denominator = self.percents[key], 100
        return random_value % denominator < numerator

    def get_integer(self, key: str, default: int | None) -> int | None:
        return default


class Callbacks:
    """The filter manager as one filter sees it: the stream's route and its local replies."""

    def __init__(self, route: Route | None) -> None:
        self._route = route
        self.replies: list[tuple[int, bytes, Headers, str]] = []

    def route(self) -> Route | None:
        return self._route

    def send_local_reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Headers | None = None,
        details: str = "",
        flags: str = "-",
    ) -> None:
        self.replies.append((status, body, list(headers or []), details))


class Harness:
    def __init__(self, runtime: dict[str, int] | None = None, randoms: Iterable[int] = ()) -> None:
        self.store = Store()
        ctx = FilterContext(stats=self.store.scope("http.test."))
        if runtime is not None:
            ctx.runtime = FakeRuntime(runtime)
        # The random values the filter draws, in order (then 0, 1, 2, ...).
        values = itertools.chain(randoms, itertools.count())
        ctx.random = lambda: next(values)
        self.factory = HTTP_FILTERS[NAME](None, ctx)

    def stream(self, route: Route | None) -> tuple[CorsFilter, Callbacks]:
        cb = Callbacks(route)
        f = self.factory(cb)
        assert isinstance(f, CorsFilter)
        return f, cb

    def counts(self) -> tuple[int, int]:
        valid = self.store.counter("http.test.cors.origin_valid").value
        return valid, self.store.counter("http.test.cors.origin_invalid").value


def req(method: str = "GET", *headers: tuple[str, str]) -> RequestHead:
    fields = [(k.encode(), v.encode()) for k, v in headers]
    return RequestHead(method.encode(), b"/", "1.1", [(b"host", b"app"), *fields], True, b"app")


def preflight(origin: str = ORIGIN, *more: tuple[str, str]) -> RequestHead:
    return req("OPTIONS", ("origin", origin), ("access-control-request-method", "PUT"), *more)


def response(*headers: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(200, list(headers), True, 0, False)


FULL = policy(
    allow_origin_string_match=allow(ORIGIN),
    allow_methods="GET, PUT",
    allow_headers="x-a, x-b",
    expose_headers="x-exposed",
    max_age="600",
    allow_credentials=True,
)


# --- preflights ---------------------------------------------------------------------------


def test_preflight_from_an_allowed_origin_is_answered_here() -> None:
    h = Harness()
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": FULL}))
    assert f.decode_headers(preflight(), True) == STOP_ITERATION
    assert cb.replies == [
        (
            200,
            b"",
            [
                (b"access-control-allow-origin", ORIGIN.encode()),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-allow-methods", b"GET, PUT"),
                (b"access-control-allow-headers", b"x-a, x-b"),
                (b"access-control-max-age", b"600"),
            ],
            "cors_response",
        )
    ]
    assert h.counts() == (1, 0)


def test_preflight_from_another_origin_goes_upstream_unless_told_not_to() -> None:
    h = Harness()
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": FULL}))
    assert f.decode_headers(preflight("http://127.0.0.9"), True) == CONTINUE
    assert not cb.replies
    head = response()
    f.encode_headers(head, True)
    assert head.headers == []  # nothing to allow
    assert h.counts() == (0, 1)

    strict = policy(
        allow_origin_string_match=allow(ORIGIN),
        allow_methods="GET",
        forward_not_matching_preflights=False,
    )
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": strict}))
    assert f.decode_headers(preflight("http://127.0.0.9"), True) == STOP_ITERATION
    # Answered, without an allow-origin.
    assert cb.replies == [(200, b"", [(b"access-control-allow-methods", b"GET")], "cors_response")]
    assert h.counts() == (0, 2)


@pytest.mark.parametrize(
    "head",
    [
        req("GET", ("origin", ORIGIN), ("access-control-request-method", "PUT")),
        req("OPTIONS", ("origin", ORIGIN)),
        req("OPTIONS", ("origin", ORIGIN), ("access-control-request-method", "")),
        req("options", ("origin", ORIGIN), ("access-control-request-method", "PUT")),
    ],
    ids=["not-options", "no-request-method", "empty-request-method", "lower-case-method"],
)
def test_not_a_preflight_goes_on(head: RequestHead) -> None:
    h = Harness()
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": FULL}))
    assert f.decode_headers(head, True) == CONTINUE
    assert not cb.replies
    assert h.counts() == (1, 0)


def test_star_methods_and_headers_echo_the_preflight() -> None:
    h = Harness()
    stars = policy(allow_origin_string_match=allow(ORIGIN), allow_methods="*", allow_headers="*")
    route = route_of(vh={"typed_per_filter_config": stars})
    f, cb = h.stream(route)
    f.decode_headers(preflight(ORIGIN, ("access-control-request-headers", "x-q")), True)
    assert cb.replies[0][2][1:] == [
        (b"access-control-allow-methods", b"PUT"),
        (b"access-control-allow-headers", b"x-q"),
    ]
    f, cb = h.stream(route)
    f.decode_headers(preflight(), True)
    # Nothing asked for: the header is there, empty (as Envoy's setInline of an empty value).
    assert cb.replies[0][2][2] == (b"access-control-allow-headers", b"")


def test_repeated_request_fields_are_one_value() -> None:
    """Envoy reads origin and the access-control-request-* fields as inline headers: several
    fields are one value, joined by commas."""
    h = Harness()
    anyone = policy(allow_origin_string_match=[{"exact": "*"}], allow_methods="*")
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": anyone}))
    head = req(
        "OPTIONS",
        ("origin", ORIGIN),
        ("access-control-request-method", "PUT"),
        ("origin", "http://127.0.0.2"),
        ("access-control-request-method", "GET"),
    )
    f.decode_headers(head, True)
    assert cb.replies[0][2] == [
        (b"access-control-allow-origin", ORIGIN.encode() + b",http://127.0.0.2"),
        (b"access-control-allow-methods", b"PUT,GET"),
    ]
    only = policy(allow_origin_string_match=allow(ORIGIN))
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": only}))
    f.decode_headers(req("GET", ("origin", ORIGIN), ("origin", ORIGIN)), True)
    assert h.counts() == (1, 1)


def test_private_network_access_only_when_asked_for() -> None:
    h = Harness()
    pna = policy(allow_origin_string_match=allow(ORIGIN), allow_private_network_access=True)
    route = route_of(vh={"typed_per_filter_config": pna})
    f, cb = h.stream(route)
    f.decode_headers(preflight(ORIGIN, ("access-control-request-private-network", "true")), True)
    assert (b"access-control-allow-private-network", b"true") in cb.replies[0][2]
    f, cb = h.stream(route)
    f.decode_headers(preflight(ORIGIN, ("access-control-request-private-network", "yes")), True)
    assert all(k != b"access-control-allow-private-network" for k, _ in cb.replies[0][2])


# --- responses ------------------------------------------------------------------------------


def test_response_to_an_allowed_origin_gets_the_headers_set() -> None:
    h = Harness()
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": FULL}))
    assert f.decode_headers(req("GET", ("origin", ORIGIN)), True) == CONTINUE
    head = response(
        (b"access-control-allow-origin", b"http://127.0.0.5"),
        (b"x-up", b"1"),
        (b"access-control-allow-origin", b"http://127.0.0.6"),
    )
    assert f.encode_headers(head, False) == CONTINUE
    # Set, not added: the upstream's values give way (in the first one's place).
    assert head.headers == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"x-up", b"1"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-exposed"),
    ]
    assert not cb.replies


def test_no_origin_no_cors() -> None:
    h = Harness()
    f, _ = h.stream(route_of(vh={"typed_per_filter_config": FULL}))
    for head in (req("GET"), req("GET", ("origin", ""))):
        assert f.decode_headers(head, True) == CONTINUE
    out = response()
    f.encode_headers(out, True)
    assert out.headers == []
    assert h.counts() == (0, 0)


@pytest.mark.parametrize(
    "matcher, origin, allowed",
    [
        ({"exact": "*"}, "http://127.0.0.42", True),
        # What configs in the wild write for "any origin": matchers that match "*" itself.
        ({"prefix": "*"}, "http://127.0.0.42", True),
        ({"safe_regex": {"regex": r"\*"}}, "http://127.0.0.42", True),
        ({"safe_regex": {"regex": ".*"}}, "http://127.0.0.42", True),
        ({"prefix": "http://127.0.0."}, "http://127.0.0.42", True),
        ({"exact": ORIGIN.upper(), "ignore_case": True}, ORIGIN, True),
        ({"exact": ORIGIN.upper()}, ORIGIN, False),
        ({"suffix": ":8080"}, "http://127.0.0.42", False),
        ({"safe_regex": {"regex": r"http://127\.0\.0\.\d+"}}, "http://127.0.0.42:1", False),
    ],
    ids=[
        "exact-star",
        "prefix-star",
        "regex-star",
        "regex-matching-star",
        "prefix",
        "ignore-case",
        "case",
        "suffix",
        "regex",
    ],
)
def test_origin_matchers(matcher: dict[str, Any], origin: str, allowed: bool) -> None:
    h = Harness()
    f, _ = h.stream(
        route_of(vh={"typed_per_filter_config": policy(allow_origin_string_match=[matcher])})
    )
    f.decode_headers(req("GET", ("origin", origin)), True)
    out = response()
    f.encode_headers(out, True)
    assert out.headers == ([(b"access-control-allow-origin", origin.encode())] if allowed else [])
    assert h.counts() == ((1, 0) if allowed else (0, 1))


def test_no_policy_no_route_or_a_direct_response_means_no_cors() -> None:
    h = Harness()
    direct = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    rc = {
        "virtual_hosts": [
            {"name": "d", "domains": ["*"], "routes": [direct], "typed_per_filter_config": FULL}
        ]
    }
    direct_route = build_route_table(RouteConfiguration.model_validate(rc)).route(b"a", b"/", [])
    for route in (None, route_of(), direct_route):
        f, cb = h.stream(route)
        assert f.decode_headers(preflight(), True) == CONTINUE
        assert not cb.replies
    assert h.counts() == (0, 0)


# --- which policy ----------------------------------------------------------------------------


def test_each_field_from_the_most_specific_policy_that_sets_it() -> None:
    h = Harness()
    vh = policy(
        allow_origin_string_match=allow(ORIGIN),
        allow_methods="GET",
        max_age="60",
        allow_credentials=True,
        filter_enabled={"default_value": {"numerator": 0}},
    )
    # The route's policy sets no filter_enabled: enabled, whatever the virtual host says
    # (filter_enabled and shadow_enabled come from the most specific policy alone).
    rt = policy(allow_methods="PUT", allow_credentials=False)
    f, cb = h.stream(
        route_of(vh={"typed_per_filter_config": vh}, route={"typed_per_filter_config": rt})
    )
    assert f.decode_headers(preflight(), True) == STOP_ITERATION
    assert cb.replies[0][2] == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-methods", b"PUT"),
        (b"access-control-max-age", b"60"),
    ]


def test_route_origins_replace_the_virtual_hosts() -> None:
    h = Harness()
    vh = policy(allow_origin_string_match=allow(ORIGIN))
    rt = policy(allow_origin_string_match=allow("http://127.0.0.2"))
    route = route_of(vh={"typed_per_filter_config": vh}, route={"typed_per_filter_config": rt})
    f, _ = h.stream(route)
    f.decode_headers(req("GET", ("origin", ORIGIN)), True)
    assert h.counts() == (0, 1)


def test_filter_config_wrapping_a_policy_counts_as_one() -> None:
    h = Harness()
    wrapped = {NAME: {"@type": FILTER_CONFIG, "config": FULL[NAME]}}
    f, cb = h.stream(route_of(route={"typed_per_filter_config": wrapped}))
    assert f.decode_headers(preflight(), True) == STOP_ITERATION
    assert cb.replies[0][2][0] == (b"access-control-allow-origin", ORIGIN.encode())


def test_deprecated_cors_fields_only_without_typed_policies() -> None:
    h = Harness()
    legacy_vh = {"cors": {"allow_origin_string_match": allow(ORIGIN), "max_age": "5"}}
    legacy_action = {"allow_methods": "PATCH"}
    f, cb = h.stream(route_of(vh=legacy_vh, cors=legacy_action))
    assert f.decode_headers(preflight(), True) == STOP_ITERATION
    assert cb.replies[0][2] == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-methods", b"PATCH"),
        (b"access-control-max-age", b"5"),
    ]
    typed = policy(allow_origin_string_match=allow("http://127.0.0.3"))
    route = route_of(vh={**legacy_vh, "typed_per_filter_config": typed}, cors=legacy_action)
    f, cb = h.stream(route)
    # A typed policy anywhere: the deprecated fields are not read at all.
    assert f.decode_headers(preflight(), True) == CONTINUE
    assert h.counts() == (1, 1)


# --- filter_enabled, shadow_enabled, runtime -------------------------------------------------


def percent(numerator: int, key: str = "") -> dict[str, Any]:
    return {"default_value": {"numerator": numerator}, "runtime_key": key}


def test_disabled_by_filter_enabled_zero() -> None:
    h = Harness()
    off = policy(allow_origin_string_match=allow(ORIGIN), filter_enabled=percent(0))
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": off}))
    assert f.decode_headers(preflight(), True) == CONTINUE
    out = response()
    f.encode_headers(out, True)
    assert not cb.replies and out.headers == []
    assert h.counts() == (0, 0)


def test_shadow_mode_counts_and_changes_nothing() -> None:
    h = Harness()
    shadow = policy(
        allow_origin_string_match=allow(ORIGIN),
        filter_enabled=percent(0),
        shadow_enabled=percent(100),
    )
    route = route_of(vh={"typed_per_filter_config": shadow})
    for origin in (ORIGIN, "http://127.0.0.9"):
        f, cb = h.stream(route)
        assert f.decode_headers(preflight(origin), True) == CONTINUE
        out = response()
        f.encode_headers(out, True)
        assert not cb.replies and out.headers == []
    assert h.counts() == (1, 1)


def test_shadow_with_the_filter_enabled_enforces() -> None:
    h = Harness()
    both = policy(allow_origin_string_match=allow(ORIGIN), shadow_enabled=percent(100))
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": both}))
    assert f.decode_headers(preflight(), True) == STOP_ITERATION
    assert cb.replies[0][2][0] == (b"access-control-allow-origin", ORIGIN.encode())


@pytest.mark.parametrize("value, on", [(0, False), (100, True)])
def test_runtime_key_overrides_filter_enabled(value: int, on: bool) -> None:
    h = Harness(runtime={"cors.on": value})
    cfg = policy(allow_origin_string_match=allow(ORIGIN), filter_enabled=percent(50, "cors.on"))
    route = route_of(vh={"typed_per_filter_config": cfg})
    for _ in range(4):  # the random values run 0, 1, 2, ...: 50% alone would alternate
        f, cb = h.stream(route)
        f.decode_headers(preflight(), True)
        assert bool(cb.replies) is on


@pytest.mark.parametrize(
    "randoms, answered", [((10, 0, 20), True), ((10, 0, 70), False), ((70, 0, 20), True)]
)
def test_each_fraction_check_draws_its_own_random_value(
    randoms: tuple[int, ...], answered: bool
) -> None:
    """As Envoy's decodeHeaders: `!enabled() && !shadowEnabled()`, then `shadowEnabled() &&
    !enabled()`, each call a new random value: enabled at first and shadow-enabled, a second
    draw can still make it shadow-only."""
    h = Harness(randoms=randoms)
    half = policy(
        allow_origin_string_match=allow(ORIGIN),
        filter_enabled=percent(50),
        shadow_enabled=percent(100),
    )
    f, cb = h.stream(route_of(vh={"typed_per_filter_config": half}))
    f.decode_headers(preflight(), True)
    assert bool(cb.replies) is answered
    assert h.counts() == (1, 0)


# --- config ----------------------------------------------------------------------------------


def bootstrap(vh_extra: dict[str, Any], action_extra: dict[str, Any], cors_filter: Any) -> str:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "app", **action_extra}}
    hcm = {
        "stat_prefix": "ingress_http",
        "http_filters": [cors_filter, {"name": "envoy.router"}],
        "route_config": {
            "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [route], **vh_extra}]
        },
    }
    cfg = {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.http_connection_manager", "config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "connect_timeout": "1s",
                    "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": 9}}],
                }
            ],
        }
    }
    return yaml.safe_dump(cfg)


def loaded_vhost(text: str) -> Any:
    b = load(config_yaml=text).bootstrap
    hcm = b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    assert hcm.http_filters[0].name == NAME
    return hcm.route_config.virtual_hosts[0]


def test_v2_cors_is_rewritten_to_v3() -> None:
    vh_cors = {
        "cors": {
            "allow_origin": [ORIGIN, "*"],
            "allow_origin_regex": [r"http://127\.0\.1\.\d+"],
            "enabled": False,
        }
    }
    action_cors = {"cors": {"allow_origin": "http://127.0.0.2", "enabled": True}}
    vh = loaded_vhost(bootstrap(vh_cors, action_cors, {"name": "envoy.cors", "config": {}}))
    origins = vh.cors.allow_origin_string_match
    assert [(m.exact, m.safe_regex and m.safe_regex.regex) for m in origins] == [
        (ORIGIN, None),
        ("*", None),
        (None, r"http://127\.0\.1\.\d+"),
    ]
    assert vh.cors.filter_enabled.default_value.numerator == 0
    action = vh.routes[0].route.cors
    assert [m.exact for m in action.allow_origin_string_match] == ["http://127.0.0.2"]
    assert action.filter_enabled.default_value.numerator == 100


def test_v2_filter_type_url() -> None:
    v2 = {
        "name": "envoy.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.config.filter.http.cors.v2.Cors"},
    }
    loaded_vhost(bootstrap({}, {}, v2))


@pytest.mark.parametrize(
    "vh_cors, action_cors, path, message",
    [
        (
            {"cors": {"enabled": True, "filter_enabled": percent(5)}},
            {},
            "virtual_hosts[0].cors.enabled",
            "cannot be combined with filter_enabled",
        ),
        (
            {"cors": {"enabled": "yes"}},
            {},
            "virtual_hosts[0].cors.enabled",
            'expected true or false, got "yes"',
        ),
        (
            {},
            {"cors": {"allow_origin": ["ok", 5]}},
            "routes[0].route.cors.allow_origin[1]",
            "expected a string, got 5",
        ),
        (
            {"cors": {"allow_origin_regex": ["("]}},
            {},
            "virtual_hosts[0].cors.allow_origin_regex[0]",
            "invalid regex",
        ),
        (
            {"cors": {"max_age": "1\r\nx-evil: 1"}},
            {},
            "virtual_hosts[0].cors.max_age",
            "expected a header value (no CR, LF or NUL)",
        ),
        (
            {"cors": {"allow_origin_string_match": [{}]}},
            {},
            "virtual_hosts[0].cors.allow_origin_string_match[0]",
            "exactly one of exact, prefix, suffix, contains, safe_regex must be set",
        ),
        (
            {"cors": {"filter_enabled": {"runtime_key": "k"}}},
            {},
            "virtual_hosts[0].cors.filter_enabled.default_value",
            "",
        ),
        (
            {"cors": {"@type": POLICY}},
            {},
            "virtual_hosts[0].cors.@type",
            "unknown field",
        ),
        (
            {"typed_per_filter_config": policy(allow_origin=[ORIGIN])},
            {},
            f"virtual_hosts[0].typed_per_filter_config.{NAME}.allow_origin",
            "unknown field",
        ),
    ],
    ids=[
        "enabled-and-filter-enabled",
        "enabled-not-bool",
        "allow-origin-not-string",
        "allow-origin-regex-invalid",
        "header-value-with-crlf",
        "empty-matcher",
        "filter-enabled-without-default",
        "route-policy-has-no-type",
        "v3-policy-has-no-allow-origin",
    ],
)
def test_cors_config_errors_name_the_path(
    vh_cors: dict[str, Any], action_cors: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigErrors) as exc:
        load(config_yaml=bootstrap(vh_cors, action_cors, {"name": "envoy.filters.http.cors"}))
    text = str(exc.value)
    assert path in text and message in text, text


def test_filter_takes_no_settings() -> None:
    bad = {
        "name": "envoy.filters.http.cors",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
            "allow_methods": "GET",
        },
    }
    with pytest.raises(ConfigErrors, match=r"http_filters\[0\]\.typed_config\.allow_methods"):
        load(config_yaml=bootstrap({}, {}, bad))
