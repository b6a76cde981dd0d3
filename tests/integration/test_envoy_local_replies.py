"""Local replies to gRPC requests, side by side with Envoy 1.40: Envoy answers a gRPC request
(content-type application/grpc...) it cannot route or serve with a gRPC status instead of an
HTTP error page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from integration.test_envoy_filters import (
    ALWAYS,
    FAULT,
    ROUTER,
    fault,
    filters,
    request,
    with_routes,
)
from integration.test_envoy_hcm_fields import StartPair, echo, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.envoy


def grpc_call(path: str, content_type: str = "application/grpc") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: app\r\ncontent-type: {content_type}\r\n"
        "te: trailers\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + b"\x00\x00\x00\x00\x00"


def values(seen: Any) -> list[tuple[int, list[tuple[str, str]]]]:
    skip = {"date", "x-envoy-upstream-service-time", "server"}
    return [
        (r.status, sorted((k, v) for k, v in r.headers if k not in skip)) for r in seen.responses
    ]


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/nowhere", "application/grpc"),
        ("/nowhere", "application/grpc+proto"),
        ("/nowhere", "application/grpc-web"),
        ("/direct", "application/grpc"),
        ("/nocluster", "application/grpc"),
        ("/fault", "application/grpc"),
        ("/nowhere", "application/json"),
    ],
)
async def test_grpc_local_replies(pair: StartPair, path: str, content_type: str) -> None:  # noqa: F811
    routes = [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 503}},
        {"match": {"prefix": "/nocluster"}, "route": {"cluster_header": "x-target"}},
        {
            "match": {"prefix": "/fault"},
            "route": {"cluster": "app"},
            "typed_per_filter_config": {
                "envoy.filters.http.fault": {
                    "@type": FAULT,
                    "abort": {"http_status": 429, "percentage": ALWAYS},
                }
            },
        },
    ]
    hcm = with_routes(filters(fault()), routes)
    p = await pair(echo, hcm=hcm)
    envoy, pod = await p.both([grpc_call(path, content_type)])
    assert values(pod) == values(envoy)
    assert pod.summary() == envoy.summary()


async def _answer(req: Any) -> None:
    if req.target.startswith(b"/reset"):
        req.conn.transport.close()
        return
    if req.target.startswith(b"/slow"):
        await asyncio.sleep(1.0)
    req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_the_routers_own_replies_get_the_routes_response_headers(
    pair: StartPair,  # noqa: F811
) -> None:
    """Once the route is known, the router's own local replies (no cluster, a reset, a
    timeout) carry the route's response_headers_to_add, as Envoy's modify_headers_ does."""
    add = [{"header": {"key": "x-route", "value": "r"}}]
    routes = [
        {
            "match": {"prefix": "/nc"},
            "route": {"cluster_header": "x-target"},
            "response_headers_to_add": add,
        },
        {
            "match": {"prefix": "/slow"},
            "route": {"cluster": "app", "timeout": "0.3s"},
            "response_headers_to_add": add,
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}, "response_headers_to_add": add},
    ]
    p = await pair(_answer, hcm=with_routes({"http_filters": [ROUTER]}, routes))
    for path, status in (("/nc", 503), ("/slow", 504), ("/reset", 503), ("/ok", 200)):
        envoy, pod = await p.both([request(path)], wait=1.5)
        assert values(pod) == values(envoy), path
        assert pod.responses[0].status == status
        assert pod.responses[0].header("x-route") == "r", path
