"""The grpc_web and grpc_http1_bridge filters side by side with real Envoy 1.40, over HTTP/1
upstreams (which carry no trailers): what a gRPC-Web request becomes upstream (binary and text,
base64 split across packets), the 400s for broken base64, how each kind of upstream response
comes back (gRPC, trailers-only, an error page, gRPC-Web already), local replies, requests of
other types left alone, the filter disabled on a route, and CORS preflights in front of it.

Same harness as test_envoy_cors.py (the `pair` fixture): one config for both proxies, the same
bytes to each; compared are every header the upstream got, and the status, every header and
the body of each response.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from integration.scripted import ScriptedRequest
from integration.test_envoy_filters import ROUTER, with_routes
from integration.test_envoy_hcm_fields import Seen, StartPair, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.envoy

GRPC_WEB = {
    "name": "envoy.filters.http.grpc_web",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
    },
}
CORS = {
    "name": "envoy.filters.http.cors",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
}
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
# Headers whose values differ by nature: the clock, each proxy's name, request ids.
VARYING = {"date", "x-envoy-upstream-service-time", "server", "x-request-id"}

# One gRPC message frame: flag 0, length 3, "abc".
FRAME = b"\x00\x00\x00\x00\x03abc"


def hcm(
    routes: list[dict[str, Any]] | None = None, chain: tuple[dict[str, Any], ...] = (GRPC_WEB,)
) -> dict[str, Any]:
    return with_routes(
        {"http_filters": [*chain, ROUTER]},
        routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
    )


def post(
    path: str, content_type: str | None, body: bytes, *headers: tuple[str, str], chunks: int = 0
) -> list[bytes | float]:
    """A POST of `body`; with `chunks`, chunked in that many pieces sent apart."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if content_type is not None:
        lines += f"content-type: {content_type}\r\n"
    head = f"POST {path} HTTP/1.1\r\nhost: app\r\n{lines}connection: close\r\n"
    if not chunks:
        return [(head + f"content-length: {len(body)}\r\n\r\n").encode() + body]
    steps: list[bytes | float] = [(head + "transfer-encoding: chunked\r\n\r\n").encode()]
    size = -(-len(body) // chunks)
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        steps += [b"%x\r\n%b\r\n" % (len(piece), piece), 0.05]
    steps.append(b"0\r\n\r\n")
    return steps


def answer_with(raw: bytes) -> Any:
    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(raw)

    return answer


def response(status: str, *headers: tuple[str, str], body: bytes = b"") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"HTTP/1.1 {status}\r\n{lines}content-length: {len(body)}\r\n\r\n".encode() + body


GRPC_OK = response("200 OK", ("content-type", "application/grpc"), body=FRAME + FRAME)
TRAILERS_ONLY = response(
    "200 OK",
    ("content-type", "application/grpc"),
    ("grpc-status", "7"),
    ("grpc-message", "denied"),
)
ERROR_PAGE = response("503 Service Unavailable", ("content-type", "text/plain"), body=b"down\n")
CHUNKED_GRPC = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%b\r\n0\r\n\r\n" % (len(FRAME), FRAME)
)


def wire(seen: Seen) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    return [
        (r.status, sorted((k, "<v>" if k in VARYING else v) for k, v in r.headers), r.body)
        for r in seen.responses
    ]


def upstream(seen: Seen) -> list[tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    return [
        (
            req.target,
            sorted((k, b"<v>" if k.decode() in VARYING else v) for k, v in req.headers),
            req.body,
        )
        for req in seen.upstream
    ]


async def same(p: Any, steps: list[bytes | float], wait: float = 1.0) -> Seen:
    envoy, pod = await p.both(steps, wait=wait)
    assert wire(pod) == wire(envoy), f"\npodproxy {wire(pod)}\n   envoy {wire(envoy)}"
    assert upstream(pod) == upstream(envoy), (
        f"\npodproxy {upstream(pod)}\n   envoy {upstream(envoy)}"
    )
    return pod


TEXT = base64.b64encode(FRAME)


@pytest.mark.parametrize(
    "steps",
    [
        post("/svc/M", "application/grpc-web", FRAME),
        post("/svc/M", "application/grpc-web+proto", FRAME, ("te", "gzip")),
        post("/svc/M", "application/grpc-web-text", TEXT),
        post("/svc/M", "application/grpc-web-text+proto", TEXT, chunks=3),
        post("/svc/M", "application/grpc-web-text", TEXT + base64.b64encode(b"xy"), chunks=4),
        post("/svc/M", "application/grpc-web", FRAME, ("grpc-accept-encoding", "gzip")),
        post("/svc/M", "application/grpc-web", b""),
        post("/svc/M", "application/grpc-web", FRAME, chunks=2),
        post("/svc/M", "application/grpc-web; charset=utf-8", FRAME),
        post("/svc/M", "Application/grpc-web", FRAME),
        post("/svc/M", "application/grpc", FRAME),
        post("/svc/M", None, FRAME),
    ],
    ids=[
        "binary",
        "proto-te",
        "text",
        "text-split",
        "text-two-groups",
        "accept-encoding",
        "empty",
        "binary-chunked",
        "params-not-web",
        "case-not-web",
        "grpc-not-web",
        "no-type",
    ],
)
async def test_requests_upstream(pair: StartPair, steps: list[bytes | float]) -> None:  # noqa: F811
    p = await pair(answer_with(GRPC_OK), hcm=hcm())
    await same(p, steps)


@pytest.mark.parametrize(
    "body",
    [TEXT[:-1], b"AB==", b"AA==AAAA", b"AA-A", b"====", b"A==="],
    ids=["bad-size", "spare-bits", "inner-padding", "bad-char", "all-padding", "three-pads"],
)
async def test_bad_base64_is_400(pair: StartPair, body: bytes) -> None:  # noqa: F811
    p = await pair(answer_with(GRPC_OK), hcm=hcm())
    got = await same(p, post("/svc/M", "application/grpc-web-text", body))
    assert got.responses[0].status == 400


@pytest.mark.parametrize(
    "raw",
    [
        GRPC_OK,
        TRAILERS_ONLY,
        ERROR_PAGE,
        response("404 Not Found"),
        response("200 OK", ("content-type", "application/grpc-web+proto; x=y"), body=FRAME),
        response("200 OK", ("content-type", "text/html"), body=b"<p>hi</p>"),
        response("200 OK", body=b""),
        response("200 OK", ("grpc-status", "0")),
        response("500 Oops", body=b"x" * 20000),
    ],
    ids=[
        "grpc",
        "trailers-only",
        "error-page",
        "empty-404",
        "already-web",
        "html",
        "empty-200",
        "status-no-type",
        "big-error",
    ],
)
@pytest.mark.parametrize("accept", [None, "application/grpc-web-text"], ids=["binary", "text"])
async def test_responses(pair: StartPair, raw: bytes, accept: str | None) -> None:  # noqa: F811
    p = await pair(answer_with(raw), hcm=hcm())
    headers = [("accept", accept)] if accept else []
    await same(p, post("/svc/M", "application/grpc-web", FRAME, *headers))


async def test_local_replies(pair: StartPair) -> None:  # noqa: F811
    routes = [
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 503, "body": {"inline_string": "not today%"}},
        },
        {"match": {"prefix": "/svc"}, "route": {"cluster": "app"}},
    ]
    p = await pair(answer_with(GRPC_OK), hcm=hcm(routes))
    await same(p, post("/direct", "application/grpc-web", FRAME))
    await same(p, post("/nowhere", "application/grpc-web-text", TEXT))
    await same(p, post("/nowhere", "application/grpc", FRAME))


async def test_disabled_on_a_route(pair: StartPair) -> None:  # noqa: F811
    off = {"envoy.filters.http.grpc_web": {"@type": FILTER_CONFIG, "disabled": True}}
    routes = [
        {"match": {"prefix": "/off"}, "route": {"cluster": "app"}, "typed_per_filter_config": off},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}},
    ]
    p = await pair(answer_with(GRPC_OK), hcm=hcm(routes))
    off_seen = await same(p, post("/off/M", "application/grpc-web", FRAME))
    assert off_seen.upstream[0].header(b"content-type") == b"application/grpc-web"
    on_seen = await same(p, post("/on/M", "application/grpc-web", FRAME))
    assert on_seen.upstream[0].header(b"content-type") == b"application/grpc"


async def test_cors_preflight_before_grpc_web(pair: StartPair) -> None:  # noqa: F811
    policy = {
        "envoy.filters.http.cors": {
            "@type": POLICY,
            "allow_origin_string_match": [{"exact": "http://127.0.0.1:8080"}],
            "allow_methods": "POST",
            "allow_headers": "content-type,x-grpc-web,x-user-agent",
            "expose_headers": "grpc-status,grpc-message",
        }
    }
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    cfg = hcm(routes, chain=(CORS, GRPC_WEB))
    cfg["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = policy
    p = await pair(answer_with(GRPC_OK), hcm=cfg)
    origin = ("origin", "http://127.0.0.1:8080")
    preflight = (
        b"OPTIONS /svc/M HTTP/1.1\r\nhost: app\r\norigin: http://127.0.0.1:8080\r\n"
        b"access-control-request-method: POST\r\n"
        b"access-control-request-headers: content-type,x-grpc-web\r\nconnection: close\r\n\r\n"
    )
    answered = await same(p, [preflight])
    assert answered.responses[0].status == 200 and not answered.upstream
    got = await same(p, post("/svc/M", "application/grpc-web-text", TEXT, origin))
    assert got.responses[0].header("access-control-expose-headers") == "grpc-status,grpc-message"


async def test_text_response_ending_with_an_empty_chunk_never_ends(pair: StartPair) -> None:  # noqa: F811
    """Envoy's quirk, kept: for a text client, the end of a response that comes without a
    whole frame (an HTTP/1 upstream's last, empty chunk) stops in the filter, so the client
    gets the frames but never the end of the response. A binary client gets it all."""
    p = await pair(answer_with(CHUNKED_GRPC), hcm=hcm())
    await same(p, post("/svc/M", "application/grpc-web", FRAME), wait=2.0)
    text = ("accept", "application/grpc-web-text")
    envoy, pod = await p.both(post("/svc/M", "application/grpc-web", FRAME, text), wait=2.0)
    assert not envoy.closed and not pod.closed
    body = b"c\r\n" + base64.b64encode(FRAME) + b"\r\n"
    assert envoy.raw.endswith(b"\r\n\r\n" + body) and pod.raw.endswith(b"\r\n\r\n" + body)


BRIDGE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"


def bridge(**cfg: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_http1_bridge",
        "typed_config": {
            "@type": BRIDGE_TYPE,
            **cfg,
        },
    }


@pytest.mark.parametrize(
    "cfg", [{}, {"upgrade_protobuf_to_grpc": True, "ignore_query_parameters": True}]
)
@pytest.mark.parametrize("raw", [GRPC_OK, TRAILERS_ONLY, ERROR_PAGE], ids=["ok", "only", "error"])
async def test_bridge_over_http1(pair: StartPair, cfg: dict[str, Any], raw: bytes) -> None:  # noqa: F811
    """Without upstream trailers the bridge only holds the response: it comes as it came.
    Upstream get the request as the options make it (framed protobuf, no query)."""
    routes = [
        {"match": {"prefix": "/svc"}, "route": {"cluster": "app"}},
        {"match": {"prefix": "/grpc-only", "grpc": {}}, "route": {"cluster": "app"}},
    ]
    p = await pair(answer_with(raw), hcm=hcm(routes, chain=(bridge(**cfg),)))
    await same(p, post("/svc/M?x=1", "application/grpc", FRAME))
    await same(p, post("/svc/M?x=1", "application/x-protobuf", b"abc", chunks=2))
    # Matched as gRPC only once upgraded (the route is matched again); else no route, and
    # the 404 is plain for the protobuf client, gRPC-shaped for a gRPC one.
    await same(p, post("/grpc-only/M", "application/x-protobuf", b"abc"))
    await same(p, post("/nowhere", "application/x-protobuf", b"abc"))
    await same(p, post("/nowhere", "application/grpc", FRAME))
