"""The local rate limit filter side by side with real Envoy 1.40: a bucket of N tokens (N pass,
the next are refused), the headers on passed and refused responses, filter_enabled and
filter_enforced at 0% (counted, not refused), the runtime overriding them, per-route and
virtual-host buckets, and per-connection buckets.

Same harness as test_envoy_filters.py. Every bucket refills once per 1000 s, so no token comes
back during a test: the outcomes (and the x-ratelimit values) do not depend on timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from integration.scripted import ScriptedRequest
from integration.test_envoy_filters import filters, request, to_app, with_routes
from integration.test_envoy_hcm_fields import Pair, Seen, StartPair, echo, pair  # noqa: F401

pytestmark = pytest.mark.envoy

NAME = "envoy.filters.http.local_ratelimit"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALWAYS = {"default_value": {"numerator": 100}}
NEVER = {"default_value": {"numerator": 0}}
X_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-limited")


def bucket(n: int) -> dict[str, Any]:
    return {"max_tokens": n, "tokens_per_fill": 1, "fill_interval": "1000s"}


def limiter(**cfg: Any) -> dict[str, Any]:
    return {"name": NAME, "typed_config": {"@type": TYPE, "stat_prefix": "rl", **cfg}}


def per_route(prefix: str, **cfg: Any) -> dict[str, Any]:
    return {NAME: {"@type": TYPE, "stat_prefix": prefix, **cfg}}


def shown(seen: Seen) -> list[tuple[int, bytes, list[tuple[str, str | None]]]]:
    """Status, body and the rate limit headers of each response."""
    return [(r.status, r.body, [(h, r.header(h)) for h in X_HEADERS]) for r in seen.responses]


async def same_stats(p: Pair, prefix: str) -> dict[str, int]:
    got = {}
    for name in ("enabled", "enforced", "ok", "rate_limited"):
        stat = f"{prefix}.http_local_rate_limit.{name}"
        got[name] = await p.envoy_counter(stat)
        assert p.pod.counter(stat) == got[name], stat
    return got


async def sequence(p: Pair, paths: list[str]) -> list[tuple[Seen, Seen]]:
    """Each path on a connection of its own, one after the other."""
    return [await p.both([request(path)]) for path in paths]


async def test_bucket_of_n_then_refused_with_envoys_headers(pair: StartPair) -> None:  # noqa: F811
    rl = limiter(
        token_bucket=bucket(3),
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        status={"code": "ServiceUnavailable"},
        response_headers_to_add=[{"header": {"key": "x-limited", "value": "yes"}}],
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )
    p = await pair(echo, hcm=filters(rl))
    got = await sequence(p, ["/a"] * 5)
    for envoy, pod in got:
        assert pod.summary() == envoy.summary()
        assert shown(pod) == shown(envoy)
    statuses = [pod.responses[0].status for _, pod in got]
    assert statuses == [200, 200, 200, 503, 503]
    limited = got[3][1].responses[0]
    assert limited.body == b"local_rate_limited"
    assert limited.header("x-ratelimit-remaining") == "0"
    assert [len(pod.upstream) for _, pod in got] == [1, 1, 1, 0, 0]
    assert await same_stats(p, "rl") == {"enabled": 5, "enforced": 2, "ok": 3, "rate_limited": 2}


async def test_not_enabled_or_not_enforced(pair: StartPair) -> None:  # noqa: F811
    shadow = limiter(
        token_bucket=bucket(1),
        filter_enabled=ALWAYS,
        filter_enforced=NEVER,
        request_headers_to_add_when_not_enforced=[
            {"header": {"key": "x-over-limit", "value": "1"}}
        ],
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )
    p = await pair(echo, hcm=filters(shadow))
    got = await sequence(p, ["/a"] * 3)
    for envoy, pod in got:
        assert pod.summary() == envoy.summary()
        assert shown(pod) == shown(envoy)
        assert pod.responses[0].status == 200
        marked = [r.header(b"x-over-limit") for r in pod.upstream]
        assert marked == [r.header(b"x-over-limit") for r in envoy.upstream]
    assert [pod.upstream[0].header(b"x-over-limit") for _, pod in got] == [None, b"1", b"1"]
    assert await same_stats(p, "rl") == {"enabled": 3, "enforced": 0, "ok": 1, "rate_limited": 2}

    off = limiter(token_bucket=bucket(1), filter_enforced=ALWAYS)  # filter_enabled: 0%
    p = await pair(echo, hcm=filters(off))
    for envoy, pod in await sequence(p, ["/a"] * 2):
        assert pod.summary() == envoy.summary()
    assert await same_stats(p, "rl") == {"enabled": 0, "enforced": 0, "ok": 0, "rate_limited": 0}


@pytest.mark.parametrize("enforce", [0, 100])
async def test_runtime_key_decides_enforcement(pair: StartPair, enforce: int) -> None:  # noqa: F811
    layers = {
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {"rl.enforce": enforce}}]}
    }
    rl = limiter(
        token_bucket=bucket(1),
        filter_enabled=ALWAYS,
        filter_enforced={"default_value": {"numerator": 50}, "runtime_key": "rl.enforce"},
    )
    p = await pair(echo, hcm=filters(rl), bootstrap=layers)
    got = await sequence(p, ["/a"] * 3)
    for envoy, pod in got:
        assert pod.summary() == envoy.summary()
    assert got[2][1].responses[0].status == (429 if enforce else 200)
    assert (await same_stats(p, "rl"))["enforced"] == (2 if enforce else 0)


async def test_buckets_per_route_and_per_virtual_host(pair: StartPair) -> None:  # noqa: F811
    on = {"filter_enabled": ALWAYS, "filter_enforced": ALWAYS}
    x = {"enable_x_ratelimit_headers": "DRAFT_VERSION_03"}
    hcm = with_routes(
        filters(limiter()),  # in the chain with no bucket: the routes carry them
        [
            to_app("/one", typed_per_filter_config=per_route("one", token_bucket=bucket(1), **on)),
            to_app(
                "/two", typed_per_filter_config=per_route("two", token_bucket=bucket(2), **on, **x)
            ),
            to_app("/"),
        ],
    )
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["routes"].insert(0, to_app("/shared-b"))
    vhost["routes"].insert(0, to_app("/shared-a"))
    vhost["typed_per_filter_config"] = per_route("vh", token_bucket=bucket(2), **on, **x)
    vhost["routes"][-1]["typed_per_filter_config"] = per_route("free", token_bucket=bucket(9))
    p = await pair(echo, hcm=hcm)
    paths = ["/one", "/one", "/two", "/two", "/two", "/shared-a", "/shared-b", "/shared-a"]
    paths += ["/x", "/x"]
    got = await sequence(p, paths)
    for (envoy, pod), path in zip(got, paths, strict=True):
        assert pod.summary() == envoy.summary(), path
        assert shown(pod) == shown(envoy), path
    statuses = [pod.responses[0].status for _, pod in got]
    assert statuses == [200, 429, 200, 200, 429, 200, 200, 429, 200, 200]
    for prefix in ("one", "two", "vh", "free"):
        await same_stats(p, prefix)
    assert (await same_stats(p, "vh"))["ok"] == 2
    assert (await same_stats(p, "free"))["enabled"] == 0


async def answer_keepalive(req: ScriptedRequest) -> None:
    req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_bucket_per_downstream_connection(pair: StartPair) -> None:  # noqa: F811
    rl = limiter(
        token_bucket=bucket(1),
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        local_rate_limit_per_downstream_connection=True,
    )
    p = await pair(answer_keepalive, hcm=filters(rl))
    keep = b"GET /a HTTP/1.1\r\nhost: app\r\n\r\n"
    for _ in range(2):  # each connection has a token of its own, and only one
        envoy, pod = await p.both([keep, 0.3, request("/a")], wait=1.0)
        assert pod.summary() == envoy.summary()
        assert [r.status for r in pod.responses] == [200, 429]
    assert await same_stats(p, "rl") == {"enabled": 4, "enforced": 2, "ok": 2, "rate_limited": 2}
