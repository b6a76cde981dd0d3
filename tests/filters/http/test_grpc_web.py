"""The gRPC-Web filter in a real filter chain (FilterChainHandler, FilterManager) without sockets:
a recording router as the terminal, a recording sink for the response and a recording
connection for local replies. What the HTTP/1 side-by-side tests cannot reach yet is here:
response trailers (an HTTP/2 upstream's), which become the 0x80 body frame, in binary and text;
frames split across pieces; non-gRPC responses that end in trailers; the 16 KiB grpc-message
bound. And the config: the filter's models, v2 names, per-route FilterConfig."""

from __future__ import annotations

import base64
from types import MappingProxyType
from typing import Any

import pytest

from podproxy.config.normalize import normalize
from podproxy.config.schema import HttpFilter as HttpFilterModel
from podproxy.filters.http import HTTP_FILTERS
from podproxy.filters.http.common import FilterContext
from podproxy.filters.http.grpc_web import (
    BAD_BASE64,
    NAME,
    base64_decode,
    percent_encode,
)
from podproxy.http.conn_manager import FilterChainHandler, FilterManager, HttpConnManagerStats
from podproxy.http.stream import Exchange, Headers, RequestHead, ResponseHead
from podproxy.stats import Store

FRAME = b"\x00\x00\x00\x00\x03abc"
FRAME2 = b"\x01\x00\x00\x00\x02xy"


class Conn:
    """The connection: records local replies as the HTTP/1 one would send them."""

    def __init__(self) -> None:
        self.loop: Any = None
        self.flow = None
        self.remote = ("127.0.0.1", 1)
        self.draining = False
        self.replies: list[tuple[int, bytes, Headers, bytes]] = []

    def write(self, data: bytes) -> None:
        raise AssertionError("the chain writes through send_local_reply or its sink")

    def response_head_sent(self, ex: Exchange, status: int) -> None:
        ex.response_started = True

    def finish(self, ex: Exchange, keep_alive: bool) -> None:
        ex.response_complete = True

    def send_local_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        *,
        flags: str = "-",
        close: bool = False,
        extra: Headers | None = None,
        content_type: bytes = b"text/plain",
    ) -> None:
        # What the request says at reply time decides a gRPC-shaped reply (as the HTTP/1
        # connection does): record it.
        request_type = ex.head.get(b"content-type") or b""
        self.replies.append((status, body, list(extra or []), request_type))
        ex.response_complete = True


class Router:
    """The terminal: the request head as it left the chain, and the body pieces."""

    def __init__(self) -> None:
        self.head: RequestHead | None = None
        self.body: list[bytes] = []
        self.ended = False

    def on_request_head(self, ex: Exchange) -> None:
        self.head = ex.head

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        self.body.append(data)

    def on_request_end(self, ex: Exchange) -> None:
        self.ended = True

    def on_downstream_reset(self, ex: Exchange) -> None: ...
    def on_downstream_write_paused(self, ex: Exchange) -> None: ...
    def on_downstream_write_resumed(self, ex: Exchange) -> None: ...


class Sink:
    """Where the response goes once the filters let it through."""

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.head_end = False
        self.body: list[bytes] = []
        self.ended = False
        self.trailers: Headers | None = None

    def encode_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.head = head
        self.head_end = self.ended = end_stream

    def encode_body(self, data: bytes, end_stream: bool) -> None:
        self.body.append(data)
        self.ended = end_stream

    def encode_trailers(self, trailers: Headers) -> None:
        self.trailers = list(trailers)
        self.ended = True


class Route:
    def __init__(self, per_filter_config: dict[str, Any] | None = None) -> None:
        self.per_filter_config = MappingProxyType(per_filter_config or {})


class Stream:
    """One request through a chain of just one filter (the gRPC-Web one unless `name` says;
    `cfg` its typed config)."""

    def __init__(
        self,
        content_type: str | None = "application/grpc-web",
        *headers: tuple[str, str],
        body: bool = True,
        route: Route | None = None,
        name: str = NAME,
        cfg: Any = None,
        target: bytes = b"/pkg.Svc/Call",
        version: str = "1.1",
    ) -> None:
        stats = Store().scope("http.t.").make(HttpConnManagerStats)
        factory = HTTP_FILTERS[name](cfg, FilterContext(stats=Store().scope("http.t.")))
        self.router = Router()
        self.route = route or Route()
        self.matched = 0
        self.handler = FilterChainHandler(
            [(name, factory, False)], self.router, lambda ex: self.route_of(ex), stats
        )
        fields = [(b"host", b"app")]
        if content_type is not None:
            fields.append((b"content-type", content_type.encode()))
        fields += [(k.encode(), v.encode()) for k, v in headers]
        if body:
            fields.append((b"content-length", b"99"))
        head = RequestHead(b"POST", target, version, fields, True, b"app")
        self.conn = Conn()
        self.ex = Exchange(self.conn, head, 0.0)  # type: ignore[arg-type]
        self.handler.on_request_head(self.ex)
        self.sink = Sink()

    def route_of(self, ex: Exchange) -> Route:
        self.matched += 1  # how many times the route was matched
        return self.route

    @property
    def fm(self) -> FilterManager:
        assert isinstance(self.ex.filters, FilterManager)
        return self.ex.filters

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.handler.on_request_body(self.ex, piece)
        self.handler.on_request_end(self.ex)

    def respond(
        self, status: int = 200, *headers: tuple[bytes, bytes], end: bool = False
    ) -> ResponseHead:
        head = ResponseHead(status, list(headers), True, None, True)
        self.fm.encode_headers(head, end, self.sink)
        return head

    def upstream_headers(self) -> dict[bytes, bytes]:
        assert self.router.head is not None
        return dict(self.router.head.headers)

    def client_body(self) -> bytes:
        return b"".join(self.sink.body)


GRPC = (b"content-type", b"application/grpc")


def trailers_frame(block: bytes) -> bytes:
    return b"\x80" + len(block).to_bytes(4, "big") + block


# --- requests -------------------------------------------------------------------------------


def test_a_binary_request_goes_upstream_as_grpc() -> None:
    s = Stream("application/grpc-web+proto", ("te", "deflate"))
    s.send(FRAME[:3], FRAME[3:])
    assert s.upstream_headers() == {
        b"host": b"app",
        b"content-type": b"application/grpc",
        b"te": b"trailers",
        b"transfer-encoding": b"chunked",
        b"grpc-accept-encoding": b"identity",
    }
    assert s.router.body == [FRAME[:3], FRAME[3:]] and s.router.ended


def test_the_clients_grpc_accept_encoding_stays() -> None:
    s = Stream("application/grpc-web", ("grpc-accept-encoding", "gzip"))
    assert s.upstream_headers()[b"grpc-accept-encoding"] == b"gzip"


def test_a_request_without_body_says_content_length_0() -> None:
    s = Stream("application/grpc-web", body=False)
    assert s.upstream_headers()[b"content-length"] == b"0"
    assert b"transfer-encoding" not in s.upstream_headers()


@pytest.mark.parametrize(
    "content_type",
    [None, "application/grpc", "application/grpc-web; charset=utf-8", "APPLICATION/GRPC-WEB"],
)
def test_other_requests_pass_untouched(content_type: str | None) -> None:
    s = Stream(content_type)
    before = list(s.ex.head.headers)
    s.send(b"hello")
    assert s.router.head is not None and s.router.head.headers == before
    assert s.router.body == [b"hello"]
    head = s.respond(503, (b"content-length", b"4"))
    s.fm.encode_data(b"down", True)
    assert s.sink.head is head and head.headers == [(b"content-length", b"4")]
    assert s.client_body() == b"down"


def test_a_text_request_is_decoded_in_groups_of_four_across_pieces() -> None:
    text = base64.b64encode(FRAME) + base64.b64encode(FRAME2)  # "AAAAAANhYmM=AQAAAAJ4eQ=="
    s = Stream("application/grpc-web-text")
    s.send(text[:2], text[2:7], text[7:13], text[13:])
    # Nothing goes before four characters are in; then every whole group in at once, the
    # rest waiting for the next piece ("AA", "AAA|AN", "hYmM=|A", "QAAAAJ4eQ==").
    assert s.router.body == [FRAME[:3], FRAME[3:], FRAME2]
    assert s.router.ended


@pytest.mark.parametrize(
    "pieces, details_size",
    [
        ((b"AAAAAANhYmM",), True),  # 11 characters
        ((b"AAA", b"AANhYmM"), True),
        ((b"AB==",), False),  # spare bits set
        ((b"AA==AAAA",), False),  # padding inside
        ((b"AA-A",), False),
        ((b"AAAA", b"A==="), False),
    ],
)
def test_bad_base64_is_a_400_turned_grpc_web(pieces: tuple[bytes, ...], details_size: bool) -> None:
    s = Stream("application/grpc-web-text")
    s.send(*pieces)
    ((status, body, extra, request_type),) = s.conn.replies
    # Through the filter's own encoder: a gRPC-Web error; the connection sees the client's
    # request type again (else it would make a gRPC trailers-only 200 of it).
    assert (status, body) == (400, b"")
    assert dict(extra) == {
        b"content-type": b"application/grpc-web+proto",
        b"grpc-status": b"13",
        b"grpc-message": BAD_BASE64,
    }
    assert request_type == b"application/grpc-web-text"
    assert not s.router.ended


def test_envoys_base64_rules() -> None:
    assert base64_decode(b"AAAAAANhYmM=") == FRAME
    assert base64_decode(b"YWI=") == b"ab" and base64_decode(b"YQ==") == b"a"
    for bad in (b"YR==", b"YWJ=", b"Y===", b"====", b"YQ==YQ==", b"YQ\n=", b"Y*=="):
        assert base64_decode(bad) == b""


# --- responses ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [False, True])
def test_trailers_become_the_last_body_frame(text: bool) -> None:
    accept = ("accept", "application/grpc-web-text") if text else ("x-a", "1")
    s = Stream("application/grpc-web", accept)
    s.send(FRAME)
    head = s.respond(200, GRPC, (b"content-length", b"16"))
    assert head.get(b"content-length") is None and head.content_length is None
    want_type = b"application/grpc-web-text+proto" if text else b"application/grpc-web+proto"
    assert head.get(b"content-type") == want_type
    s.fm.encode_data(FRAME + FRAME2[:4], False)
    s.fm.encode_data(FRAME2[4:], False)
    trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"fine"), (b"x-md", b"v")]
    s.fm.encode_trailers(trailers)
    last = trailers_frame(b"grpc-status:0\r\ngrpc-message:fine\r\nx-md:v\r\n")
    if text:
        # Each frame base64-encoded on its own; a frame split across pieces waits for its rest.
        assert s.sink.body == [
            base64.b64encode(FRAME),
            base64.b64encode(FRAME2),
            base64.b64encode(last),
        ]
    else:
        assert s.client_body() == FRAME + FRAME2 + last
    assert s.sink.trailers == [] and s.sink.ended  # the trailers are in the body now


def test_a_trailers_only_response_passes_with_its_status() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(200, GRPC, (b"grpc-status", b"7"), (b"content-length", b"0"), end=True)
    assert s.sink.head is head and s.sink.head_end
    assert head.content_length == 0 and head.get(b"content-length") is None
    assert head.get(b"grpc-status") == b"7"
    assert head.get(b"content-type") == b"application/grpc-web+proto"


def test_an_error_page_becomes_grpc_status_and_message() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(503, (b"content-type", b"text/plain"))
    assert s.sink.head is None  # held until the body is known
    s.fm.encode_data(b"no ", False)
    s.fm.encode_data(b"way\n", True)
    assert s.sink.head is head and s.sink.ended and s.client_body() == b""
    assert head.status == 503 and head.content_length == 0
    assert dict(head.headers) == {
        b"content-type": b"application/grpc-web+proto",
        b"grpc-message": b"no way%0A",
        b"grpc-status": b"14",
        b"content-length": b"0",
    }


def test_an_error_page_keeps_16k_of_what_was_buffered() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(500)
    s.fm.encode_data(b"a" * 10000, False)
    s.fm.encode_data(b"b" * 10000, False)  # buffered: the buffer was under 16 KiB
    s.fm.encode_data(b"c" * 10, False)  # dropped: it was over
    s.fm.encode_data(b"d", True)
    assert head.get(b"grpc-message") == b"a" * 10000 + b"b" * 6384
    assert head.get(b"grpc-status") == b"2"


def test_a_one_piece_error_body_is_kept_whole() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(404)
    s.fm.encode_data(b"x" * 20000, True)
    assert head.get(b"grpc-message") == b"x" * 20000 and head.get(b"grpc-status") == b"12"


def test_a_non_grpc_response_with_trailers() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(200, (b"content-type", b"text/plain"))
    s.fm.encode_data(b"odd", False)
    s.fm.encode_trailers([(b"x-t", b"1")])
    assert s.sink.head is head and s.client_body() == b""
    assert head.get(b"grpc-message") == b"odd" and head.get(b"grpc-status") == b"2"
    assert s.sink.trailers == [(b"x-t", b"1")]  # not framed: Envoy leaves them


def test_a_grpc_web_response_from_upstream_passes() -> None:
    s = Stream("application/grpc-web")
    s.send(FRAME)
    head = s.respond(200, (b"content-type", b"Application/GRPC-Web+Proto ; q=1"))
    s.fm.encode_data(FRAME, True)
    assert s.client_body() == FRAME and head.get(b"grpc-status") is None


def test_a_local_reply_becomes_grpc_web() -> None:
    s = Stream("application/grpc-web-text", ("accept", "application/grpc-web-text+proto"))
    s.fm.send_local_reply(503, b"no healthy upstream")
    ((status, body, extra, request_type),) = s.conn.replies
    assert (status, body, request_type) == (503, b"", b"application/grpc-web-text")
    assert dict(extra) == {
        b"content-type": b"application/grpc-web-text+proto",
        b"grpc-status": b"14",
        b"grpc-message": b"no healthy upstream",
    }


def test_percent_encoding() -> None:
    assert percent_encode(b"plain text ~") == b"plain text ~"
    assert percent_encode("50% ü\n".encode()) == b"50%25 %C3%BC%0A"


def test_disabled_per_route_leaves_the_request() -> None:
    off = {NAME: _filter_config(disabled=True)}
    s = Stream("application/grpc-web", route=Route(off))
    s.send(FRAME)
    assert s.upstream_headers()[b"content-type"] == b"application/grpc-web"
    assert s.fm.filters == []


def _filter_config(**fields: Any) -> Any:
    from podproxy.config.schema import RouteFilterConfig

    return RouteFilterConfig.model_validate(
        {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", **fields}
    )


# --- config ---------------------------------------------------------------------------------


def test_config_v3_and_v2_names() -> None:
    web = HttpFilterModel.model_validate(
        {
            "name": NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
            },
        }
    )
    assert web.name == NAME
    with pytest.raises(ValueError, match="no_such"):
        HttpFilterModel.model_validate({"name": NAME, "typed_config": {"no_such": 1}})


def test_v2_config_is_normalized() -> None:
    v2 = {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.http_connection_manager",
                                    "config": {
                                        "stat_prefix": "t",
                                        "route_config": {"virtual_hosts": []},
                                        "http_filters": [
                                            {"name": "envoy.grpc_web", "config": {}},
                                            {"name": "envoy.router", "config": {}},
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }
    out = normalize(v2).v3
    listener = out["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    first = hcm["http_filters"][0]
    assert first["name"] == NAME
    assert first["typed_config"]["@type"].endswith("grpc_web.v3.GrpcWeb")
