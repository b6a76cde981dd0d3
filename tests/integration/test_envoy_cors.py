"""The CORS filter side by side with real Envoy 1.40: preflights from allowed and other origins,
simple requests, credentials, expose headers, wildcards, per-route policies over the virtual
host's, the deprecated `cors` fields, filter_enabled 0, shadow mode, local replies, and the
`cors.origin_valid` / `origin_invalid` stats.

Same harness as test_envoy_filters.py (the `pair` fixture): one config for both proxies, the
same bytes sent to each; compared are the status, every header name and value (less the clock's
and the server's name) and the body of each response, and how many requests reached upstream.
"""

from __future__ import annotations

from typing import Any

import pytest

from integration.scripted import ScriptedRequest
from integration.test_envoy_filters import ALWAYS, ROUTER, fault, with_routes
from integration.test_envoy_hcm_fields import Seen, StartPair, echo, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.envoy

CORS = {
    "name": "envoy.filters.http.cors",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
}
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ORIGIN = "http://127.0.0.1:8080"
OTHER = "http://127.0.0.9"
STATS = ("http.ingress_http.cors.origin_valid", "http.ingress_http.cors.origin_invalid")
# Headers whose values differ by nature: the clock, and each proxy's own name.
VARYING = {"date", "x-envoy-upstream-service-time", "server"}


def policy(**fields: Any) -> dict[str, Any]:
    return {"envoy.filters.http.cors": {"@type": POLICY, **fields}}


def allow(*origins: str) -> list[dict[str, str]]:
    return [{"exact": o} for o in origins]


def hcm(
    vh_extra: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    chain: tuple[dict[str, Any], ...] = (CORS,),
) -> dict[str, Any]:
    """The `app` virtual host (with `vh_extra`) and `routes` (default: all to `app`)."""
    out = with_routes({"http_filters": [*chain, ROUTER]}, routes or [to_app("/")])
    out["route_config"]["virtual_hosts"][0].update(vh_extra or {})
    return out


def to_app(prefix: str, route: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "app", **(route or {})}, **extra}


def request(method: str, path: str, *headers: tuple[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"{method} {path} HTTP/1.1\r\nhost: app\r\n{lines}connection: close\r\n\r\n".encode()


def preflight(path: str = "/p", origin: str = ORIGIN, *more: tuple[str, str]) -> bytes:
    return request(
        "OPTIONS", path, ("origin", origin), ("access-control-request-method", "PUT"), *more
    )


def simple(path: str = "/s", origin: str | None = ORIGIN) -> bytes:
    return request("GET", path, *([("origin", origin)] if origin is not None else []))


def wire(seen: Seen) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """Each response: status, every header (name, value), less the varying ones' values, and
    body. Sorted: a local reply's content-length comes first from podproxy's codec and last
    from Envoy's, and no client can tell."""
    return [
        (
            r.status,
            sorted((k, "<varies>" if k in VARYING else v) for k, v in r.headers),
            r.body,
        )
        for r in seen.responses
    ]


async def same(p: Any, sent: bytes) -> Seen:
    """Send `sent` to both; both answer the same and pass the same to upstream."""
    envoy, pod = await p.both([sent])
    assert wire(pod) == wire(envoy), f"podproxy {wire(pod)}\n   envoy {wire(envoy)}"
    assert len(pod.upstream) == len(envoy.upstream)
    return pod


async def same_stats(p: Any) -> tuple[int, ...]:
    got = tuple(p.pod.counter(s) for s in STATS)
    assert got == tuple([await p.envoy_counter(s) for s in STATS])
    return got


def cors_headers(seen: Seen) -> dict[str, str]:
    (r,) = seen.responses
    return {k: v for k, v in r.headers if k.startswith("access-control-")}


FULL = policy(
    allow_origin_string_match=allow(ORIGIN),
    allow_methods="GET, PUT",
    allow_headers="x-a, x-b",
    expose_headers="x-exposed, x-other",
    max_age="600",
    allow_credentials=True,
)


async def test_preflight_and_simple_requests(pair: StartPair) -> None:  # noqa: F811
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": FULL}))
    answered = await same(p, preflight())
    assert answered.responses[0].status == 200 and not answered.upstream
    assert cors_headers(answered)["access-control-allow-origin"] == ORIGIN
    # From an origin not allowed: forwarded to the upstream as it is.
    forwarded = await same(p, preflight("/p", OTHER))
    assert len(forwarded.upstream) == 1 and not cors_headers(forwarded)
    got = await same(p, simple())
    assert cors_headers(got) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-exposed, x-other",
    }
    assert not cors_headers(await same(p, simple("/s", OTHER)))
    assert not cors_headers(await same(p, simple("/s", None)))
    # Not preflights: OPTIONS without access-control-request-method, and a GET with it.
    await same(p, request("OPTIONS", "/o", ("origin", ORIGIN)))
    await same(
        p, request("GET", "/g", ("origin", ORIGIN), ("access-control-request-method", "PUT"))
    )
    # A preflight answered here leaves the connection open for the request it was for.
    kept = preflight().replace(b"connection: close\r\n", b"")
    both = await same(p, kept + simple("/after"))
    assert [r.status for r in both.responses] == [200, 200] and len(both.upstream) == 1
    # Two Origin fields (Envoy reads them as one, joined by a comma).
    await same(p, request("GET", "/two", ("origin", ORIGIN), ("origin", OTHER)))
    assert await same_stats(p) == (6, 3)


async def answer_with_cors_headers(req: ScriptedRequest) -> None:
    req.conn.write(
        b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: http://127.0.0.77\r\n"
        b"access-control-allow-credentials: false\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nup"
    )


async def test_upstream_cors_headers_are_replaced(pair: StartPair) -> None:  # noqa: F811
    p = await pair(answer_with_cors_headers, hcm=hcm({"typed_per_filter_config": FULL}))
    got = await same(p, simple())
    assert cors_headers(got)["access-control-allow-origin"] == ORIGIN
    untouched = await same(p, simple("/s", OTHER))
    assert cors_headers(untouched)["access-control-allow-origin"] == "http://127.0.0.77"


@pytest.mark.parametrize(
    "fields",
    [
        {"forward_not_matching_preflights": False, "allow_methods": "GET"},
        {"allow_methods": "*", "allow_headers": "*"},
        {"allow_private_network_access": True},
        {"allow_credentials": False, "expose_headers": "x-e"},
    ],
    ids=["not-forwarded", "star-echo", "private-network", "no-credentials"],
)
async def test_preflight_variants(pair: StartPair, fields: dict[str, Any]) -> None:  # noqa: F811
    cfg = policy(allow_origin_string_match=allow(ORIGIN), **fields)
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": cfg}))
    for origin in (ORIGIN, OTHER):
        await same(p, preflight("/p", origin))
        await same(p, preflight("/p", origin, ("access-control-request-headers", "x-q, x-r")))
        await same(p, preflight("/p", origin, ("access-control-request-private-network", "true")))
        asks = (
            ("access-control-request-headers", "x-q"),
            ("access-control-request-headers", "x-r"),
        )
        await same(p, preflight("/p", origin, *asks))
        await same(p, simple("/s", origin))
    await same_stats(p)


@pytest.mark.parametrize(
    "matcher",
    [
        {"exact": "*"},
        {"prefix": "*"},
        {"safe_regex": {"regex": r"\*"}},
        {"safe_regex": {"regex": ".*"}},
        {"prefix": "http://127.0.0."},
        {"suffix": ":8080", "ignore_case": True},
        {"contains": "0.0.9"},
    ],
    ids=["exact-star", "prefix-star", "regex-star", "regex-all", "prefix", "suffix", "contains"],
)
async def test_origin_matchers(pair: StartPair, matcher: dict[str, Any]) -> None:  # noqa: F811
    cfg = policy(allow_origin_string_match=[matcher], allow_methods="GET")
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": cfg}))
    for origin in (ORIGIN, OTHER, "HTTP://127.0.0.1:8080", "null"):
        await same(p, preflight("/p", origin))
        await same(p, simple("/s", origin))
    # Several fields of a CORS request header are one value to Envoy, joined by commas.
    two = (("origin", ORIGIN), ("origin", OTHER))
    await same(p, request("GET", "/two", *two))
    methods = (("access-control-request-method", "PUT"), ("access-control-request-method", "GET"))
    await same(p, request("OPTIONS", "/two", *two, *methods))
    await same_stats(p)


async def test_route_policy_over_the_virtual_hosts(pair: StartPair) -> None:  # noqa: F811
    vh = policy(
        allow_origin_string_match=allow(ORIGIN),
        allow_methods="GET",
        max_age="60",
        expose_headers="x-vh",
        filter_enabled={"default_value": {"numerator": 0}},
    )
    routes = [
        # Overrides some fields; the rest come from the virtual host; enabled (its own
        # filter_enabled is unset, and only the most specific policy's counts).
        to_app("/methods", typed_per_filter_config=policy(allow_methods="PATCH")),
        to_app("/origins", typed_per_filter_config=policy(allow_origin_string_match=allow(OTHER))),
        to_app("/", {}),
    ]
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": vh}, routes))
    for path in ("/methods", "/origins", "/vh"):
        for origin in (ORIGIN, OTHER):
            await same(p, preflight(path, origin))
            await same(p, simple(path, origin))
    await same_stats(p)


async def test_deprecated_cors_fields(pair: StartPair) -> None:  # noqa: F811
    vh = {"cors": {"allow_origin_string_match": allow(ORIGIN), "max_age": "5"}}
    routes = [
        to_app("/action", {"cors": {"allow_methods": "PATCH", "allow_credentials": True}}),
        # A typed policy on the route: the deprecated fields are not read at all.
        to_app("/typed", typed_per_filter_config=policy(allow_methods="PUT")),
        to_app("/"),
    ]
    p = await pair(echo, hcm=hcm(vh, routes))
    for path in ("/action", "/typed", "/vh"):
        await same(p, preflight(path))
        await same(p, simple(path))
    await same_stats(p)


async def test_disabled_and_shadow(pair: StartPair) -> None:  # noqa: F811
    off = {"default_value": {"numerator": 0}}
    on = {"default_value": {"numerator": 100}}
    base = {"allow_origin_string_match": allow(ORIGIN), "allow_methods": "GET"}
    routes = [
        to_app("/off", typed_per_filter_config=policy(**base, filter_enabled=off)),
        to_app(
            "/shadow", typed_per_filter_config=policy(**base, filter_enabled=off, shadow_enabled=on)
        ),
        to_app("/both", typed_per_filter_config=policy(**base, shadow_enabled=on)),
    ]
    p = await pair(echo, hcm=hcm({}, routes))
    for path in ("/off", "/shadow", "/both"):
        for origin in (ORIGIN, OTHER):
            await same(p, preflight(path, origin))
            await same(p, simple(path, origin))
    # /off counts nothing; /shadow and /both count each request with an Origin.
    assert await same_stats(p) == (4, 4)


@pytest.mark.parametrize("percent", [0, 100])
async def test_filter_enabled_reads_the_runtime(pair: StartPair, percent: int) -> None:  # noqa: F811
    layers = {
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": {"cors.www.enabled": percent}}]
        }
    }
    enabled = {"default_value": {"numerator": 50}, "runtime_key": "cors.www.enabled"}
    cfg = policy(allow_origin_string_match=allow(ORIGIN), filter_enabled=enabled)
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": cfg}), bootstrap=layers)
    for _ in range(3):
        got = await same(p, preflight())
        assert bool(got.upstream) is (percent == 0)


async def test_local_replies_get_the_headers(pair: StartPair) -> None:  # noqa: F811
    """A fault abort after the CORS filter is a local reply that passes through it; a direct
    response route has no route entry, so no CORS."""
    routes = [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}},
        to_app("/"),
    ]
    abort = fault(abort={"http_status": 503, "percentage": ALWAYS})
    p = await pair(echo, hcm=hcm({"typed_per_filter_config": FULL}, routes, (CORS, abort)))
    aborted = await same(p, simple("/s"))
    assert aborted.responses[0].status == 503
    assert cors_headers(aborted)["access-control-allow-origin"] == ORIGIN
    await same(p, preflight("/p"))
    await same(p, preflight("/p", OTHER))
    assert not cors_headers(await same(p, simple("/direct")))
    assert not cors_headers(await same(p, preflight("/direct")))
    await same_stats(p)


async def test_v2_names_and_fields(pair: StartPair) -> None:  # noqa: F811
    """The filter under its v2 name `envoy.cors` (still registered in Envoy 1.40), with a
    virtual host's deprecated `cors`. (v2's allow_origin / allow_origin_regex, which Envoy 1.40
    refuses, are rewritten into these matchers: tests/filters/http/test_cors.py.)"""
    v2_filter = {"name": "envoy.cors", "typed_config": CORS["typed_config"]}
    vh = {
        "cors": {
            "allow_origin_string_match": [
                {"exact": ORIGIN},
                {"safe_regex": {"regex": r"http://127\.0\.0\.[0-9]+"}},
            ],
            "allow_methods": "GET",
        }
    }
    p = await pair(echo, hcm=hcm(vh, chain=(v2_filter,)))
    for origin in (ORIGIN, OTHER, "http://127.0.1.1"):
        await same(p, preflight("/p", origin))
    await same_stats(p)


async def test_disabled_filter_on_where_a_route_has_a_policy(pair: StartPair) -> None:  # noqa: F811
    """`disabled: true` in the chain: only routes whose typed_per_filter_config holds a policy
    run it (the virtual host's deprecated `cors` does not turn it on)."""
    off = {**CORS, "disabled": True}
    vh = {"cors": {"allow_origin_string_match": allow(ORIGIN), "allow_methods": "GET"}}
    routes = [
        to_app("/on", typed_per_filter_config=policy(allow_origin_string_match=allow(ORIGIN))),
        to_app("/"),
    ]
    p = await pair(echo, hcm=hcm(vh, routes, (off,)))
    for path in ("/on", "/off"):
        await same(p, preflight(path))
        await same(p, simple(path))
    assert await same_stats(p) == (2, 0)
