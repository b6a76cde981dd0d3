"""The local rate limit filter without sockets: its token bucket on a manual clock, its config
(the errors name the field), and the filter's decisions, stats, headers and local replies
through fake callbacks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.config.schema import LocalRateLimit
from podproxy.errors import ConfigErrors
from podproxy.filters.http import HTTP_FILTERS
from podproxy.filters.http.common import FilterContext
from podproxy.filters.http.local_ratelimit import (
    NAME,
    LocalRateLimitConfig,
    LocalRateLimitFilter,
    TokenBucket,
)
from podproxy.http.filter import CONTINUE, STOP_ITERATION
from podproxy.http.stream import ResponseHead
from podproxy.stats import Store

TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALWAYS = {"default_value": {"numerator": 100}}
NEVER = {"default_value": {"numerator": 0}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the bucket -------------------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_once_empty() -> None:
    clock = Clock()
    b = TokenBucket(3, 1, 60.0, clock)
    assert (b.remaining(), b.reset_seconds()) == (3, 0)
    assert [b.consume() for _ in range(4)] == [True, True, True, False]
    assert (b.remaining(), b.reset_seconds()) == (0, 60)


def test_bucket_refills_continuously_at_tokens_per_fill_over_the_interval() -> None:
    clock = Clock()
    b = TokenBucket(4, 2, 10.0, clock)  # 0.2 tokens a second
    for _ in range(4):
        assert b.consume()
    clock.now += 4.0  # 0.8 of a token: not a whole one yet
    assert not b.consume()
    assert b.reset_seconds() == 1  # 0.2 token to go, at 0.2/s, rounded up
    clock.now += 1.0
    assert b.consume()
    assert not b.consume()
    clock.now += 1000.0  # never more than max_tokens
    assert b.remaining() == 4
    assert [b.consume() for _ in range(5)] == [True, True, True, True, False]


def test_bucket_reset_rounds_up_what_is_left_of_the_next_token() -> None:
    # As Envoy 1.40 answered with 1 token per 10 s: 10 at once, 9 after 1.7 s, 7 after 3.4 s.
    clock = Clock()
    b = TokenBucket(1, 1, 10.0, clock)
    assert b.consume()
    got = []
    for after in (0.0, 1.7, 3.4):
        clock.now = 1000.0 + after
        got.append(b.reset_seconds())
    assert got == [10, 9, 7]


# --- config -----------------------------------------------------------------------------------


def bootstrap(rl: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    route: dict[str, Any] = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200},
    }
    if per_route is not None:
        route["typed_per_filter_config"] = {NAME: {"@type": TYPE, **per_route}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {"name": NAME, "typed_config": {"@type": TYPE, **rl}},
            {"name": "envoy.filters.http.router"},
        ],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return yaml.safe_dump({"static_resources": {"listeners": [listener]}})


FILTER = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
    ".typed_config"
)
ROUTE = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
    f".virtual_hosts[0].routes[0].typed_per_filter_config.{NAME}"
)
BUCKET = {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "60s"}


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def test_config_loads_with_envoy_defaults() -> None:
    b = load(config_yaml=bootstrap({"stat_prefix": "rl"})).bootstrap
    hcm = b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    cfg = hcm.http_filters[0].typed_config
    assert isinstance(cfg, LocalRateLimit)
    assert cfg.token_bucket is None and cfg.filter_enabled is None and cfg.status is None
    assert cfg.always_consume_default_token_bucket is True
    full = {
        "stat_prefix": "rl",
        "status": {"code": "ServiceUnavailable"},
        "token_bucket": {"max_tokens": 5, "fill_interval": "0.05s"},
        "filter_enabled": ALWAYS,
        "enable_x_ratelimit_headers": "draft_version_03",
    }
    hcm = load(config_yaml=bootstrap(full)).bootstrap.static_resources.listeners[0]
    cfg = hcm.filter_chains[0].filters[0].typed_config.http_filters[0].typed_config
    assert cfg.status.code == 503
    assert cfg.token_bucket.tokens_per_fill == 1
    assert cfg.enable_x_ratelimit_headers.name == "DRAFT_VERSION_03"


@pytest.mark.parametrize(
    "rl, per_route, want",
    [
        ({"stat_prefix": ""}, None, f"{FILTER}.stat_prefix: must not be empty"),
        (
            {"stat_prefix": "rl", "token_bucket": {**BUCKET, "fill_interval": "0.049s"}},
            None,
            f"{FILTER}.token_bucket: local rate limit token bucket fill timer must be >= 50ms",
        ),
        (
            {"stat_prefix": "rl", "token_bucket": {**BUCKET, "fill_interval": "0s"}},
            None,
            f"{FILTER}.token_bucket.fill_interval: value must be greater than 0s",
        ),
        (
            {"stat_prefix": "rl", "token_bucket": {**BUCKET, "tokens_per_fill": 0}},
            None,
            f"{FILTER}.token_bucket.tokens_per_fill: must be >= 1, got 0",
        ),
        (
            {"stat_prefix": "rl", "token_bucket": {"max_tokens": 1}},
            None,
            f"{FILTER}.token_bucket.fill_interval: missing required field",
        ),
        (
            {"stat_prefix": "rl"},
            {"stat_prefix": "route"},
            f"{ROUTE}: local rate limit token bucket must be set for per filter configs",
        ),
        (
            {"stat_prefix": "rl", "descriptors": []},
            None,
            f"{FILTER}.descriptors: Envoy field not supported by podproxy yet",
        ),
        (
            {"stat_prefix": "rl", "status": {"code": 999}},
            None,
            f"{FILTER}.status.code: expected an HTTP status Envoy's StatusCode defines"
            " (e.g. 429 or TooManyRequests), got 999",
        ),
        (
            {"stat_prefix": "rl", "status": {"code": 0}},
            None,
            f"{FILTER}.status.code: expected an HTTP status Envoy's StatusCode defines"
            " (e.g. 429 or TooManyRequests), got 0",
        ),
        (
            {
                "stat_prefix": "rl",
                "response_headers_to_add": [
                    {"header": {"key": f"x-{i}", "value": "v"}} for i in range(11)
                ],
            },
            None,
            f"{FILTER}.response_headers_to_add: podproxy supports at most 10 item(s) here, got 11",
        ),
        (
            {"stat_prefix": "rl", "enable_x_ratelimit_headers": "DRAFT_VERSION_04"},
            None,
            f"{FILTER}.enable_x_ratelimit_headers: expected one of OFF, DRAFT_VERSION_03,"
            ' got "DRAFT_VERSION_04"',
        ),
        (
            {"stat_prefix": "rl", "filter_enabled": {"runtime_key": "k"}},
            None,
            f"{FILTER}.filter_enabled.default_value: missing required field",
        ),
    ],
    ids=[
        "empty-stat-prefix",
        "fill-under-50ms",
        "fill-zero",
        "tokens-per-fill-zero",
        "no-fill-interval",
        "per-route-without-bucket",
        "descriptors",
        "status-undefined",
        "status-empty",
        "too-many-headers",
        "x-ratelimit-version",
        "fraction-without-default",
    ],
)
def test_config_errors_name_the_field(
    rl: dict[str, Any], per_route: dict[str, Any] | None, want: str
) -> None:
    assert want in errors_of(bootstrap(rl, per_route))


def test_registered_by_its_v3_name() -> None:
    from podproxy.filters.http import local_ratelimit

    assert HTTP_FILTERS[NAME] is local_ratelimit.build


# --- the filter -------------------------------------------------------------------------------


class Head:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = [(b"host", b"app")]


class Conn:
    """A downstream connection: only its identity matters here."""


class Ex:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn


class Callbacks:
    def __init__(self, per_route: Any = None, conn: Conn | None = None) -> None:
        self.per_route = per_route
        self.exchange = Ex(conn or Conn())
        self.replies: list[tuple[int, bytes, list[tuple[bytes, bytes]], str, str]] = []

    def per_filter_config(self, name: str) -> Any:
        assert name == NAME
        return self.per_route

    def send_local_reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Any = None,
        details: str = "",
        flags: str = "-",
    ) -> None:
        self.replies.append((status, body, list(headers or []), details, flags))


class Runtime:
    """Scripted runtime: keys it has override the default fraction (as 0 or 100%)."""

    def __init__(self, values: dict[str, bool]) -> None:
        self.values = values

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        if key in self.values:
            return self.values[key]
        return random_value % denominator < numerator

    def get_integer(self, key: str, default: int | None) -> int | None:
        return default


def model(**cfg: Any) -> LocalRateLimit:
    return LocalRateLimit.model_validate({"stat_prefix": "rl", **cfg})


def make(
    cfg: LocalRateLimit, runtime: Runtime | None = None
) -> tuple[LocalRateLimitConfig, Store, Clock]:
    store = Store()
    ctx = FilterContext(stats=store.scope("http.ingress_http."), random=lambda: 7)
    if runtime is not None:
        ctx.runtime = runtime
    clock = Clock()
    return LocalRateLimitConfig(cfg, ctx, clock), store, clock


def run(config: LocalRateLimitConfig, cb: Callbacks) -> tuple[int, Head, LocalRateLimitFilter]:
    f = LocalRateLimitFilter(cb, config)  # type: ignore[arg-type]
    head = Head()
    return f.decode_headers(head, True), head, f


def counts(store: Store, prefix: str = "rl") -> dict[str, int]:
    names = ("enabled", "enforced", "ok", "rate_limited", "shadow_mode")
    return {n: store.counters[f"{prefix}.http_local_rate_limit.{n}"].value for n in names}


def test_enforced_bucket_lets_n_through_then_replies_locally() -> None:
    headers = [{"header": {"key": "x-limited", "value": "yes"}}]
    cfg = model(
        token_bucket=BUCKET,
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        status={"code": 503},
        response_headers_to_add=headers,
    )
    config, store, _ = make(cfg)
    cb = Callbacks()
    assert [run(config, cb)[0] for _ in range(3)] == [CONTINUE, CONTINUE, STOP_ITERATION]
    assert cb.replies == [
        (503, b"local_rate_limited", [(b"x-limited", b"yes")], "local_rate_limited", "RL")
    ]
    assert counts(store) == {
        "enabled": 3,
        "enforced": 1,
        "ok": 2,
        "rate_limited": 1,
        "shadow_mode": 0,
    }


def test_defaults_count_nothing_and_status_under_400_is_429() -> None:
    config, store, _ = make(model(token_bucket={**BUCKET, "max_tokens": 1}))
    cb = Callbacks()
    assert [run(config, cb)[0] for _ in range(3)] == [CONTINUE] * 3
    assert counts(store)["enabled"] == 0 and not cb.replies
    cfg = model(
        token_bucket={**BUCKET, "max_tokens": 1},
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        status={"code": 302},
    )
    config, store, _ = make(cfg)
    run(config, cb)
    run(config, cb)
    assert cb.replies[0][0] == 429


def test_not_enforced_counts_and_adds_the_request_headers() -> None:
    cfg = model(
        token_bucket={**BUCKET, "max_tokens": 1},
        filter_enabled=ALWAYS,
        filter_enforced=NEVER,
        request_headers_to_add_when_not_enforced=[{"header": {"key": "x-rl", "value": "over"}}],
    )
    config, store, _ = make(cfg)
    cb = Callbacks()
    status, head, _ = run(config, cb)
    assert status == CONTINUE and (b"x-rl", b"over") not in head.headers
    status, head, _ = run(config, cb)
    assert status == CONTINUE and head.headers[-1] == (b"x-rl", b"over")
    assert not cb.replies
    assert counts(store) == {
        "enabled": 2,
        "enforced": 0,
        "ok": 1,
        "rate_limited": 1,
        "shadow_mode": 0,
    }


def test_runtime_keys_override_enabled_and_enforced() -> None:
    cfg = model(
        token_bucket={**BUCKET, "max_tokens": 1},
        filter_enabled={**ALWAYS, "runtime_key": "rl.on"},
        filter_enforced={**ALWAYS, "runtime_key": "rl.enforce"},
    )
    config, store, _ = make(cfg, Runtime({"rl.on": False}))
    run(config, Callbacks())
    assert counts(store)["enabled"] == 0
    config, store, _ = make(cfg, Runtime({"rl.enforce": False}))
    cb = Callbacks()
    run(config, cb)
    assert run(config, cb)[0] == CONTINUE and not cb.replies
    assert counts(store)["rate_limited"] == 1


def test_x_ratelimit_headers_report_the_bucket_at_response_time() -> None:
    cfg = model(
        token_bucket={"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "10s"},
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )
    config, _, clock = make(cfg)
    got = []
    for _ in range(3):
        _, _, f = run(config, Callbacks())
        clock.now += 1.0
        head = ResponseHead(200, [], True, 0, False)
        assert f.encode_headers(head, True) == CONTINUE
        got.append(head.headers)
    assert got == [
        [
            (b"x-ratelimit-limit", b"2"),
            (b"x-ratelimit-remaining", b"1"),
            (b"x-ratelimit-reset", b"0"),
        ],
        [
            (b"x-ratelimit-limit", b"2"),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", b"8"),
        ],
        [
            (b"x-ratelimit-limit", b"2"),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", b"7"),
        ],
    ]


def test_no_bucket_lets_all_through_and_zero_tokens_none_without_headers() -> None:
    on = {"filter_enabled": ALWAYS, "filter_enforced": ALWAYS}
    x = {"enable_x_ratelimit_headers": "DRAFT_VERSION_03"}
    config, store, _ = make(model(**on, **x))
    cb = Callbacks()
    for _ in range(3):
        status, _, f = run(config, cb)
        head = ResponseHead(200, [], True, 0, False)
        f.encode_headers(head, True)
        assert status == CONTINUE and head.headers == []
    assert counts(store)["ok"] == 3
    config, store, _ = make(model(**on, **x, token_bucket={**BUCKET, "max_tokens": 0}))
    status, _, f = run(config, cb)
    head = ResponseHead(429, [], True, 0, False)
    f.encode_headers(head, True)
    assert status == STOP_ITERATION and head.headers == []
    assert counts(store)["enforced"] == 1


def test_per_route_configs_have_their_own_buckets_and_stats() -> None:
    on = {"filter_enabled": ALWAYS, "filter_enforced": ALWAYS}
    config, store, _ = make(model())  # the chain's filter: no bucket, not enabled
    one = LocalRateLimit.model_validate(
        {"stat_prefix": "one", "token_bucket": {**BUCKET, "max_tokens": 1}, **on}
    )
    two = LocalRateLimit.model_validate({"stat_prefix": "two", "token_bucket": BUCKET, **on})
    same_as_one = one.model_copy()  # equal, but another route's config: its own bucket
    results = [
        run(config, Callbacks(per_route=r))[0] for r in (one, one, two, two, two, same_as_one)
    ]
    assert results == [CONTINUE, STOP_ITERATION, CONTINUE, CONTINUE, STOP_ITERATION, CONTINUE]
    assert counts(store, "one")["ok"] == 2 and counts(store, "one")["enforced"] == 1
    assert counts(store, "two")["ok"] == 2 and counts(store, "two")["enforced"] == 1
    assert counts(store)["enabled"] == 0


def test_per_connection_buckets() -> None:
    cfg = model(
        token_bucket={**BUCKET, "max_tokens": 1},
        filter_enabled=ALWAYS,
        filter_enforced=ALWAYS,
        local_rate_limit_per_downstream_connection=True,
    )
    config, _, _ = make(cfg)
    a, b = Conn(), Conn()
    order = (a, a, b, b, a)
    results = [run(config, Callbacks(conn=c))[0] for c in order]
    assert results == [CONTINUE, STOP_ITERATION, CONTINUE, STOP_ITERATION, STOP_ITERATION]
    assert len(config.buckets) == 2
    del a, order
    assert len(config.buckets) == 1  # a closed connection's bucket goes with it


def test_stats_live_at_the_root_not_under_the_hcm() -> None:
    _, store, _ = make(model(stat_prefix="edge"))
    assert "edge.http_local_rate_limit.enabled" in store.counters
    assert not any(n.startswith("http.ingress_http.") for n in store.counters)
