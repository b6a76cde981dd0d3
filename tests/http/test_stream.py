"""The codec-neutral stream helpers: gRPC detection and the gRPC form of local replies."""

from __future__ import annotations

import pytest

from podproxy.http.stream import grpc_local_reply, is_grpc_request


@pytest.mark.parametrize(
    "content_type, grpc",
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc-web", False),
        (b"application/grpcx", False),
        (b"Application/grpc", False),
        (b"application/json", False),
    ],
)
def test_is_grpc_request(content_type: bytes, grpc: bool) -> None:
    assert is_grpc_request([(b"host", b"a"), (b"content-type", content_type)]) is grpc


@pytest.mark.parametrize(
    "status, grpc_status",
    [
        (400, b"13"),
        (401, b"16"),
        (403, b"7"),
        (404, b"12"),
        (429, b"14"),
        (500, b"2"),
        (503, b"14"),
    ],
)
def test_http_status_maps_as_envoy_maps_it(status: int, grpc_status: bytes) -> None:
    assert grpc_local_reply(status, b"")[0] == (b"grpc-status", grpc_status)


def test_grpc_message_is_the_body_percent_encoded() -> None:
    assert grpc_local_reply(503, b"")[1:] == []
    assert grpc_local_reply(503, b"no healthy upstream")[1] == (
        b"grpc-message",
        b"no healthy upstream",
    )
    assert grpc_local_reply(503, b"50% \xc3\xa9\n")[1] == (b"grpc-message", b"50%25 %C3%A9%0A")
