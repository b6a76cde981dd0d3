"""The gRPC HTTP/1.1 bridge in a real filter chain without sockets (the harness of
test_grpc_web.py): trailers mapped into an HTTP/1 client's response head (503 for a failed
call, grpc-status / grpc-message copied, content-length of the held body), responses without
trailers left alone, HTTP/2 clients not bridged, upgrade_protobuf_to_grpc framing both ways,
ignore_query_parameters; and the config model."""

from __future__ import annotations

from typing import Any

import pytest
from test_grpc_web import FRAME, GRPC, Stream

from podproxy.config.schema import GrpcHttp1Bridge
from podproxy.filters.http.grpc_http1_bridge import NAME


def bridge(
    content_type: str | None = "application/grpc",
    *headers: tuple[str, str],
    upgrade: bool = False,
    ignore_query: bool = False,
    **kw: Any,
) -> Stream:
    cfg = GrpcHttp1Bridge.model_validate(
        {
            "@type": GrpcHttp1Bridge.TYPE_URL,
            "upgrade_protobuf_to_grpc": upgrade,
            "ignore_query_parameters": ignore_query,
        }
    )
    return Stream(content_type, *headers, name=NAME, cfg=cfg, **kw)


@pytest.mark.parametrize(
    "grpc_status, http_status",
    [(b"0", 200), (b"14", 503), (b"+0", 200), (b" 0 ", 200), (b"x", 503), (b"-0", 503)],
)
def test_trailers_go_into_the_head(grpc_status: bytes, http_status: int) -> None:
    s = bridge()
    s.send(FRAME)
    head = s.respond(200, GRPC)
    s.fm.encode_data(FRAME[:4], False)
    s.fm.encode_data(FRAME[4:], False)
    assert s.sink.head is None  # held until the trailers
    s.fm.encode_trailers([(b"grpc-status", grpc_status), (b"grpc-message", b"m%20")])
    assert s.sink.head is head and head.status == http_status
    assert dict(head.headers) == {
        b"content-type": b"application/grpc",
        b"grpc-status": grpc_status,
        b"grpc-message": b"m%20",
        b"content-length": b"8",
    }
    assert head.content_length == 8 and s.client_body() == FRAME and s.sink.ended


def test_trailers_without_a_status_change_nothing_but_the_length() -> None:
    s = bridge()
    s.send(FRAME)
    head = s.respond(200, GRPC)
    s.fm.encode_trailers([(b"x-other", b"1")])
    assert head.status == 200 and dict(head.headers) == {
        b"content-type": b"application/grpc",
        b"content-length": b"0",
    }


def test_a_response_without_trailers_goes_as_it_came() -> None:
    s = bridge()
    s.send(FRAME)
    head = s.respond(200, GRPC, (b"content-length", b"8"))
    s.fm.encode_data(FRAME[:2], False)
    s.fm.encode_data(FRAME[2:], True)
    assert s.sink.head is head and head.headers == [GRPC, (b"content-length", b"8")]
    assert s.client_body() == FRAME and s.sink.ended


def test_a_trailers_only_response_passes() -> None:
    s = bridge()
    s.send(FRAME)
    head = s.respond(200, GRPC, (b"grpc-status", b"5"), end=True)
    assert s.sink.head is head and head.status == 200 and s.sink.head_end


@pytest.mark.parametrize(
    "content_type, version",
    [("application/grpc", "2"), ("application/grpc-web", "1.1"), (None, "1.1")],
)
def test_not_bridged(content_type: str | None, version: str) -> None:
    s = bridge(content_type, version=version, target=b"/s/m?x=1")
    s.send(FRAME)
    head = s.respond(200, GRPC)
    s.fm.encode_data(FRAME, False)
    assert s.sink.head is head and s.client_body() == FRAME  # not held
    s.fm.encode_trailers([(b"grpc-status", b"3")])
    assert head.status == 200 and head.get(b"grpc-status") is None
    assert s.router.head is not None and s.router.head.target == b"/s/m?x=1"


def test_ignore_query_parameters() -> None:
    s = bridge(ignore_query=True, target=b"/pkg.S/M?a=1&b=2")
    assert s.router.head is not None and s.router.head.target == b"/pkg.S/M"
    # Only a bridged request's.
    t = bridge("text/plain", ignore_query=True, target=b"/pkg.S/M?a=1")
    assert t.router.head is not None and t.router.head.target == b"/pkg.S/M?a=1"


def test_upgrade_protobuf_to_grpc() -> None:
    s = bridge("application/x-protobuf", upgrade=True)
    # The route is matched again (by the router) for the gRPC request it became.
    assert s.matched == 1 and s.fm.route() is s.route and s.matched == 2
    upstream = s.upstream_headers()
    assert upstream[b"content-type"] == b"application/grpc"
    assert b"content-length" not in upstream and upstream[b"transfer-encoding"] == b"chunked"
    s.send(b"ab", b"c")
    # The whole message, framed as one uncompressed gRPC message.
    assert s.router.body == [FRAME] and s.router.ended
    head = s.respond(200, GRPC)
    s.fm.encode_data(FRAME, False)
    s.fm.encode_trailers([(b"grpc-status", b"0")])
    # The client gets the bare message back (the frame header goes from the first piece).
    assert s.client_body() == b"abc" and head.get(b"content-length") == b"3"


def test_upgrade_leaves_other_types_and_is_off_by_default() -> None:
    s = bridge("application/x-protobuf")
    assert s.upstream_headers()[b"content-type"] == b"application/x-protobuf"
    s.send(b"abc")
    assert s.router.body == [b"abc"]


def test_a_local_reply_to_an_upgraded_request_is_not_grpc_shaped() -> None:
    s = bridge("application/x-protobuf", upgrade=True)
    s.fm.send_local_reply(503, b"no healthy upstream")
    ((status, body, _, request_type),) = s.conn.replies
    assert (status, body, request_type) == (503, b"no healthy upstream", b"application/x-protobuf")


def test_config_fields() -> None:
    cfg = GrpcHttp1Bridge.model_validate({"@type": GrpcHttp1Bridge.TYPE_URL})
    assert not cfg.upgrade_protobuf_to_grpc and not cfg.ignore_query_parameters
    with pytest.raises(ValueError, match="upgrade_protobuf_to_grpc"):
        GrpcHttp1Bridge.model_validate(
            {"@type": GrpcHttp1Bridge.TYPE_URL, "upgrade_protobuf_to_grpc": "yes"}
        )
    with pytest.raises(ValueError, match="no_such"):
        GrpcHttp1Bridge.model_validate({"@type": GrpcHttp1Bridge.TYPE_URL, "no_such": True})
