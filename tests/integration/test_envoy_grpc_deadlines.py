"""gRPC deadlines and the gRPC answers of filters, side by side with real Envoy 1.40, over
HTTP/1 with content-type application/grpc: what reaches the upstream (grpc-timeout,
x-envoy-expected-rq-timeout-ms) under max_grpc_timeout / grpc_timeout_offset and
max_stream_duration.grpc_timeout_header_max / _offset; the answer when such a deadline passes
(504 → UNAVAILABLE from the router, DEADLINE_EXCEEDED from the stream duration); the fault
filter's grpc_status aborts (configured and by header) and the local rate limit's
rate_limited_as_resource_exhausted.

Same harness as test_envoy_filters.py. The slow upstream answers after 1.5 s, and every
deadline that should pass is at most 400 ms, so the outcomes do not depend on timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from integration.scripted import ScriptedRequest
from integration.test_envoy_filters import ALWAYS, FAULT, ROUTER, fault, filters, with_routes
from integration.test_envoy_hcm_fields import StartPair, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.envoy

RATELIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
SLOW = 1.5


async def answer(req: ScriptedRequest) -> None:
    if b"/slow" in req.target:
        await asyncio.sleep(SLOW)
    req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def call(path: str, *headers: tuple[str, str], grpc: bool = True) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    ctype = "content-type: application/grpc\r\n" if grpc else ""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: app\r\n{ctype}{lines}te: trailers\r\n"
        "content-length: 5\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + b"\x00\x00\x00\x00\x00"


def to_app(prefix: str, **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "app", **action}}


def shown(seen: Any) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    skip = {"date", "x-envoy-upstream-service-time", "server"}
    return [
        (r.status, sorted((k, v) for k, v in r.headers if k not in skip), r.body)
        for r in seen.responses
    ]


TIMEOUT_HEADERS = (b"grpc-timeout", b"x-envoy-expected-rq-timeout-ms")


def upstream_timeouts(seen: Any) -> list[tuple[bytes | None, ...]]:
    return [tuple(r.header(h) for h in TIMEOUT_HEADERS) for r in seen.upstream]


ROUTES = [
    to_app("/legacy0", max_grpc_timeout="0s"),
    to_app("/legacy", max_grpc_timeout="3s", grpc_timeout_offset="0.1s"),
    to_app("/msd0", max_stream_duration={"grpc_timeout_header_max": "0s"}),
    to_app("/msdonly", max_stream_duration={"max_stream_duration": "5s"}),
    to_app("/msdzero", max_stream_duration={"max_stream_duration": "0s"}),
    to_app(
        "/msd",
        max_stream_duration={
            "grpc_timeout_header_max": "3s",
            "grpc_timeout_header_offset": "0.1s",
        },
    ),
    to_app("/plain", timeout="2s"),
]


@pytest.mark.parametrize(
    "path, grpc_timeout, grpc",
    [
        ("/legacy/a", "1S", True),  # less the offset: 900m
        ("/legacy/a", "50m", True),  # offset not below it: kept
        ("/legacy/a", None, True),  # none: the maximum
        ("/legacy/a", "10S", True),  # capped
        ("/legacy/a", "2500u", True),  # rounded up to 3 ms
        ("/legacy/a", "100n", True),
        ("/legacy/a", "+5S", True),  # invalid: as if absent
        ("/legacy/a", "000000001S", True),
        ("/legacy/a", "123456789m", True),  # over 8 digits' worth: invalid
        ("/legacy/a", "1S", False),  # not gRPC: the route timeout, grpc-timeout untouched
        ("/legacy0/a", "1S", True),
        ("/legacy0/a", None, True),  # no cap and no header: no timeout, no headers
        ("/legacy0/a", "junk", True),
        ("/legacy0/a", "99999999H", True),
        ("/msd/a", "1S", True),
        ("/msd/a", "10S", True),  # capped, then offset: 2900m
        ("/msd/a", None, True),
        ("/msd/a", "junk", True),
        ("/msd/a", "1S", False),
        ("/msd0/a", "1S", True),
        ("/msdonly/a", "1S", True),  # the route's duration replaces the client's
        ("/msdonly/a", None, True),
        ("/msdzero/a", "1S", True),  # 0: nothing limits the stream, the client's stays
        ("/plain/a", "1S", True),
    ],
)
async def test_timeout_headers_sent_upstream(
    pair: StartPair,  # noqa: F811
    path: str,
    grpc_timeout: str | None,
    grpc: bool,
) -> None:
    p = await pair(answer, hcm=with_routes({"http_filters": [ROUTER]}, ROUTES))
    headers = [("grpc-timeout", grpc_timeout)] if grpc_timeout is not None else []
    envoy, pod = await p.both([call(path, *headers, grpc=grpc)])
    assert shown(pod) == shown(envoy)
    assert upstream_timeouts(pod) == upstream_timeouts(envoy)
    assert len(pod.upstream) == 1


@pytest.mark.parametrize(
    "path, grpc_timeout, grpc, status, grpc_status",
    [
        ("/legacy/slow", "300m", True, 200, "14"),  # the router's 504, as UNAVAILABLE
        ("/legacy0/slow", "400m", True, 200, "14"),
        ("/plain/slow", "300m", False, 200, None),  # not gRPC, no max: 2 s, the answer comes
        ("/msd/slow", "400m", True, 200, "4"),  # the stream's duration: DEADLINE_EXCEEDED
        ("/msd/slow", "400m", False, 504, None),  # any request with grpc-timeout there
        ("/msd/a", "50m", True, 200, "4"),  # the offset leaves nothing: at once
    ],
)
async def test_deadline_answers(
    pair: StartPair,  # noqa: F811
    path: str,
    grpc_timeout: str,
    grpc: bool,
    status: int,
    grpc_status: str | None,
) -> None:
    p = await pair(answer, hcm=with_routes({"http_filters": [ROUTER]}, ROUTES))
    envoy, pod = await p.both([call(path, ("grpc-timeout", grpc_timeout), grpc=grpc)], wait=3.0)
    assert shown(pod) == shown(envoy)
    got = pod.responses[0]
    assert (got.status, got.header("grpc-status")) == (status, grpc_status)


def fault_route(prefix: str, **abort: Any) -> dict[str, Any]:
    cfg = {"@type": FAULT, "abort": {**abort, "percentage": ALWAYS}}
    return {**to_app(prefix), "typed_per_filter_config": {"envoy.filters.http.fault": cfg}}


@pytest.mark.parametrize(
    "path, headers, grpc",
    [
        ("/grpc-abort", [], True),
        ("/grpc-abort", [], False),  # not gRPC: a plain 200 `fault filter abort`
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "5")], True),
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "5")], False),
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "99")], True),
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "0")], True),
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "-1")], True),  # ignored
        ("/by-header", [("x-envoy-fault-abort-grpc-request", "junk")], True),
        (
            "/by-header",
            [("x-envoy-fault-abort-grpc-request", "5"), ("x-envoy-fault-abort-request", "429")],
            True,
        ),  # the HTTP header wins
        (
            "/by-header",
            [("x-envoy-fault-abort-grpc-request", "5"), ("x-envoy-fault-abort-request", "700")],
            True,
        ),
        ("/http-abort", [("x-envoy-fault-abort-grpc-request", "5")], True),
    ],
)
async def test_fault_grpc_aborts(
    pair: StartPair,  # noqa: F811
    path: str,
    headers: list[tuple[str, str]],
    grpc: bool,
) -> None:
    routes = [
        fault_route("/grpc-abort", grpc_status=8),
        fault_route("/by-header", header_abort={}),
        fault_route("/http-abort", http_status=503),
    ]
    p = await pair(answer, hcm=with_routes(filters(fault()), routes))
    envoy, pod = await p.both([call(path, *headers, grpc=grpc)])
    assert shown(pod) == shown(envoy)
    assert pod.summary() == envoy.summary()
    assert len(pod.upstream) == len(envoy.upstream)


async def test_rate_limited_as_resource_exhausted(pair: StartPair) -> None:  # noqa: F811
    on = {"default_value": {"numerator": 100}}

    def limited(prefix: str, **cfg: Any) -> dict[str, Any]:
        rl = {
            "@type": RATELIMIT,
            "stat_prefix": prefix.strip("/"),
            "token_bucket": {"max_tokens": 1, "fill_interval": "1000s"},
            "filter_enabled": on,
            "filter_enforced": on,
            **cfg,
        }
        return {
            **to_app(prefix),
            "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": rl},
        }

    limiter = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {"@type": RATELIMIT, "stat_prefix": "rl"},
    }
    routes = [
        limited("/re503", rate_limited_as_resource_exhausted=True, status={"code": 503}),
        limited("/re", rate_limited_as_resource_exhausted=True),
        limited("/plain"),
    ]
    p = await pair(answer, hcm=with_routes(filters(limiter), routes))
    got = []
    for path, grpc in [
        ("/re", True),
        ("/re", True),
        ("/re", False),
        ("/re503", True),
        ("/re503", True),
        ("/plain", True),
        ("/plain", True),
    ]:
        envoy, pod = await p.both([call(path, grpc=grpc)])
        assert shown(pod) == shown(envoy), path
        got.append((pod.responses[0].status, pod.responses[0].header("grpc-status")))
    assert got == [
        (200, None),
        (200, "8"),
        (429, None),
        (200, None),
        (200, "8"),
        (200, None),
        (200, "14"),
    ]
