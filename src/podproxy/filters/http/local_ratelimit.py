"""The local rate limit filter (envoy.filters.http.local_ratelimit): one token per request from
a token bucket kept in this process; none left, and the request is answered
`429 local_rate_limited` (flag RL) instead of going on (a gRPC client: UNAVAILABLE, or
RESOURCE_EXHAUSTED with `rate_limited_as_resource_exhausted`).

Theory of operation. Each LocalRateLimit config (the filter's own, and each route's or virtual
host's in `typed_per_filter_config`, which replaces it whole) has its own bucket and its own
`<stat_prefix>.http_local_rate_limit.*` stats, at the root of the stats tree as Envoy has them.
With `local_rate_limit_per_downstream_connection` the bucket is per client connection instead
(one per connection, made from the first config that asked for it, as Envoy's connection
filter state holds a single limiter). The bucket is Envoy 1.40's AtomicTokenBucketImpl: it
starts full and refills continuously at `tokens_per_fill / fill_interval` tokens a second (no
timer), which `TokenBucket` keeps as one timestamp. `filter_enabled` (default 0%) decides
whether a request is counted at all and `filter_enforced` (default 0%) whether a limited one is
refused; both are read through the runtime seam. Envoy shares a bucket among its worker threads;
podproxy's `--concurrency N` workers are processes, each with its own buckets (N times the
tokens for the whole server).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podproxy.filters.http.common import FilterContext, Runtime
from podproxy.http.filter import CONTINUE, STOP_ITERATION, FilterCallbacks, HttpFilter
from podproxy.http.stream import GRPC_RESOURCE_EXHAUSTED, ResponseHead, is_grpc_request
from podproxy.router.routes import HeaderMutation, HeaderToAdd
from podproxy.stats import Counter, Scope

NAME = "envoy.filters.http.local_ratelimit"
BODY = b"local_rate_limited"
DETAILS = "local_rate_limited"
# LocalRateLimit.status below 400 is replaced by 429 (Envoy's toErrorCode).
DEFAULT_STATUS = 429
# Envoy's slowest refill: one token a year (token_bucket_impl.cc kMinFillRate).
MIN_FILL_RATE = 1.0 / (365 * 24 * 60 * 60)
# The draft-03 RateLimit header fields (enable_x_ratelimit_headers: DRAFT_VERSION_03).
LIMIT_HEADER = b"x-ratelimit-limit"
REMAINING_HEADER = b"x-ratelimit-remaining"
RESET_HEADER = b"x-ratelimit-reset"
_RESOURCE_EXHAUSTED = (b"grpc-status", b"%d" % GRPC_RESOURCE_EXHAUSTED)

Clock = Callable[[], float]


@dataclass(slots=True)
class LocalRateLimitStats:
    """`<stat_prefix>.http_local_rate_limit.*` (Envoy's ALL_LOCAL_RATE_LIMIT_STATS;
    shadow_mode counts shadow descriptors, which podproxy has not got, so it stays 0)."""

    enabled: Counter
    enforced: Counter
    ok: Counter
    rate_limited: Counter
    shadow_mode: Counter


class TokenBucket:
    """Envoy's AtomicTokenBucketImpl: the bucket holds `min(max, (now - since) * rate)` tokens,
    so taking one moves `since` on by 1/rate. `clock` is monotonic seconds."""

    __slots__ = ("clock", "fill_rate", "max_tokens", "since")

    def __init__(
        self, max_tokens: int, tokens_per_fill: int, fill_interval: float, clock: Clock
    ) -> None:
        self.clock = clock
        self.max_tokens = max_tokens
        self.fill_rate = max(tokens_per_fill / fill_interval, MIN_FILL_RATE)
        self.since = clock() - max_tokens / self.fill_rate  # starts full

    def consume(self) -> bool:
        """Take a token if there is a whole one."""
        now = self.clock()
        tokens = min(self.max_tokens, (now - self.since) * self.fill_rate)
        if tokens < 1:
            return False
        self.since = now - (tokens - 1) / self.fill_rate
        return True

    def tokens(self) -> float:
        return min(self.max_tokens, (self.clock() - self.since) * self.fill_rate)

    def remaining(self) -> int:
        """Whole tokens left (x-ratelimit-remaining)."""
        return int(self.tokens())

    def reset_seconds(self) -> int:
        """Seconds until the next whole token, rounded up; 0 while one is there
        (x-ratelimit-reset, as Envoy 1.40 answers it)."""
        tokens = self.tokens()
        if tokens >= 1:
            return 0
        return math.ceil((1 - tokens) / self.fill_rate)


def _mutation(options: Any) -> HeaderMutation | None:
    """HeaderValueOptions as the router's header mutation (Envoy's HeaderParser)."""
    if not options:
        return None
    return HeaderMutation(
        frozenset(),
        tuple(
            HeaderToAdd(
                o.header.key.lower().encode(),
                o.header.value_bytes(),
                o.action().value,
                o.keep_empty_value,
            )
            for o in options
        ),
    )


def _fraction(value: Any) -> tuple[str, int, int] | None:
    if value is None:
        return None
    d = value.default_value
    return (value.runtime_key, d.numerator, d.denominator.value)


class RateLimitSettings:
    """One LocalRateLimit config, compiled: its stats, its bucket and what to add where."""

    __slots__ = (
        "bucket",
        "buckets",
        "clock",
        "deny",
        "enabled",
        "enforced",
        "interval",
        "max_tokens",
        "per_connection",
        "request_headers",
        "resource_exhausted",
        "response_headers",
        "stats",
        "status",
        "tokens_per_fill",
        "x_headers",
    )

    def __init__(
        self,
        cfg: Any,
        root: Scope,
        clock: Clock,
        buckets: weakref.WeakKeyDictionary[Any, TokenBucket],
    ) -> None:
        self.stats = root.scope(f"{cfg.stat_prefix}.http_local_rate_limit.").make(
            LocalRateLimitStats
        )
        code = cfg.status.code if cfg.status is not None else DEFAULT_STATUS
        self.status = code if code >= 400 else DEFAULT_STATUS
        self.enabled = _fraction(cfg.filter_enabled)
        self.enforced = _fraction(cfg.filter_enforced)
        self.request_headers = _mutation(cfg.request_headers_to_add_when_not_enforced)
        self.response_headers = _mutation(cfg.response_headers_to_add)
        self.x_headers = cfg.enable_x_ratelimit_headers.name == "DRAFT_VERSION_03"
        self.per_connection = cfg.local_rate_limit_per_downstream_connection
        self.resource_exhausted = cfg.rate_limited_as_resource_exhausted
        self.clock = clock
        self.buckets = buckets
        tb = cfg.token_bucket
        # No bucket (the filter's own config, when routes carry the buckets): every request
        # passes. A bucket of 0 tokens: none does. Neither gives x-ratelimit headers (as
        # Envoy 1.40 answers both, checked side by side).
        self.deny = tb is not None and tb.max_tokens == 0
        self.max_tokens = tb.max_tokens if tb is not None else 0
        self.tokens_per_fill = tb.tokens_per_fill if tb is not None else 1
        self.interval = tb.fill_interval if tb is not None else 0.0
        self.bucket: TokenBucket | None = None
        if tb is not None and not self.deny and not self.per_connection:
            self.bucket = TokenBucket(tb.max_tokens, tb.tokens_per_fill, tb.fill_interval, clock)

    def bucket_for(self, conn: Any) -> TokenBucket | None:
        """The bucket a request on `conn` takes its token from (None: no bucket)."""
        if not self.per_connection or self.deny or self.interval == 0.0:
            return self.bucket
        bucket = self.buckets.get(conn)
        if bucket is None:
            bucket = self.buckets[conn] = TokenBucket(
                self.max_tokens, self.tokens_per_fill, self.interval, self.clock
            )
        return bucket


class LocalRateLimitConfig:
    """The filter's config and shared state, made once per HCM: its own settings and, as
    streams meet them, each route's."""

    def __init__(self, cfg: Any, ctx: FilterContext, clock: Clock = time.monotonic) -> None:
        self.root = ctx.stats.store.scope("")
        self.clock = clock
        # Per-connection buckets, by downstream connection (gone with it).
        self.buckets: weakref.WeakKeyDictionary[Any, TokenBucket] = weakref.WeakKeyDictionary()
        self.settings = RateLimitSettings(cfg, self.root, clock, self.buckets)
        self.route_settings: dict[int, RateLimitSettings] = {}
        self.runtime: Runtime = ctx.runtime
        self.random = ctx.random

    def settings_for(self, per_route: Any) -> RateLimitSettings:
        if per_route is None:
            return self.settings
        # By identity: each per-route config object has its own bucket (a virtual host's is
        # shared by its routes), as Envoy's per-route FilterConfig objects do.
        key = id(per_route)
        s = self.route_settings.get(key)
        if s is None:
            s = self.route_settings[key] = RateLimitSettings(
                per_route, self.root, self.clock, self.buckets
            )
        return s

    def on(self, fraction: tuple[str, int, int] | None) -> bool:
        """A RuntimeFractionalPercent (unset: 0%, Envoy's safe default)."""
        if fraction is None:
            return False
        key, numerator, denominator = fraction
        return self.runtime.feature_enabled(key, numerator, denominator, self.random())


class LocalRateLimitFilter(HttpFilter):
    __slots__ = ("bucket", "config")

    def __init__(self, callbacks: FilterCallbacks, config: LocalRateLimitConfig) -> None:
        super().__init__(callbacks)
        self.config = config
        # The bucket whose state the x-ratelimit headers report (None: no headers).
        self.bucket: TokenBucket | None = None

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        cfg = self.config
        s = cfg.settings_for(self.callbacks.per_filter_config(NAME))
        if not cfg.on(s.enabled):
            return CONTINUE
        stats = s.stats
        stats.enabled.value += 1
        if s.deny:
            allowed = False
        else:
            bucket = s.bucket_for(self.callbacks.exchange.conn)
            allowed = bucket is None or bucket.consume()
            if s.x_headers:
                self.bucket = bucket
        if allowed:
            stats.ok.value += 1
            return CONTINUE
        stats.rate_limited.value += 1
        if not cfg.on(s.enforced):
            if s.request_headers is not None:
                s.request_headers.apply(head.headers)
            return CONTINUE
        stats.enforced.value += 1
        headers: list[tuple[bytes, bytes]] = []
        if s.response_headers is not None:
            s.response_headers.apply(headers)
        if s.resource_exhausted and is_grpc_request(head.headers):
            # rate_limited_as_resource_exhausted: a gRPC client gets RESOURCE_EXHAUSTED, not
            # the UNAVAILABLE that 429 (or any configured status) maps to.
            headers.append(_RESOURCE_EXHAUSTED)
        self.callbacks.send_local_reply(
            s.status, BODY, headers=headers, details=DETAILS, flags="RL"
        )
        return STOP_ITERATION

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        bucket = self.bucket
        if bucket is not None:
            head.headers.append((LIMIT_HEADER, b"%d" % bucket.max_tokens))
            head.headers.append((REMAINING_HEADER, b"%d" % bucket.remaining()))
            head.headers.append((RESET_HEADER, b"%d" % bucket.reset_seconds()))
        return CONTINUE


def build(cfg: Any, ctx: FilterContext, clock: Clock = time.monotonic) -> Any:
    config = LocalRateLimitConfig(cfg, ctx, clock)

    def factory(callbacks: FilterCallbacks) -> HttpFilter:
        return LocalRateLimitFilter(callbacks, config)

    return factory
