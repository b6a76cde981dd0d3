"""The filter chain's walk (FilterManager), driven without sockets: recording filters, a
recording router and a recording connection. What each test pins is one rule of Envoy's
filter manager: order, stop and continue, buffering, local replies, the end of a stream."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from podproxy.http.conn_manager import (
    FilterChainHandler,
    FilterManager,
    HttpConnManagerStats,
    new_request_id,
    trusted_xff_address,
)
from podproxy.http.filter import (
    CONTINUE,
    STOP_ALL_ITERATION_AND_BUFFER,
    STOP_ITERATION,
    STOP_ITERATION_AND_BUFFER,
    STOP_ITERATION_NO_BUFFER,
    FilterCallbacks,
    HttpFilter,
)
from podproxy.http.stream import Exchange, Headers, RequestHead, ResponseHead
from podproxy.stats import Store

Log = list[tuple[str, ...]]


class Conn:
    """The connection side of a stream: records local replies."""

    def __init__(self) -> None:
        self.loop: Any = None  # nothing here arms a timer
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
        self.replies.append((status, body, list(extra or []), content_type))
        ex.response_complete = True


class Router:
    """The terminal: records what reached it."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def on_request_head(self, ex: Exchange) -> None:
        self.log.append(("router", "headers"))

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        self.log.append(("router", "data", data.decode()))

    def on_request_end(self, ex: Exchange) -> None:
        self.log.append(("router", "end"))

    def on_downstream_reset(self, ex: Exchange) -> None:
        self.log.append(("router", "reset"))

    def on_downstream_write_paused(self, ex: Exchange) -> None: ...
    def on_downstream_write_resumed(self, ex: Exchange) -> None: ...


class Scripted(HttpFilter):
    """Answers each callback from a script (default CONTINUE) and records it."""

    __slots__ = ("destroyed", "log", "name", "script")

    def __init__(
        self, callbacks: FilterCallbacks, name: str, log: Log, script: dict[str, Any]
    ) -> None:
        super().__init__(callbacks)
        self.name = name
        self.log = log
        self.script = script
        self.destroyed = 0

    def _answer(self, what: str, *args: Any) -> int:
        self.log.append((self.name, what, *(a.decode() for a in args if isinstance(a, bytes))))
        step = self.script.get(what, CONTINUE)
        if callable(step):
            return int(step(self))
        return int(step)

    def decode_headers(self, head: Any, end_stream: bool) -> int:
        return self._answer("decode_headers")

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        return self._answer("decode_data", data)

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> int:
        return self._answer("encode_headers")

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        return self._answer("encode_data", data)

    def decode_trailers(self, trailers: Headers) -> int:
        return self._answer("decode_trailers")

    def encode_trailers(self, trailers: Headers) -> int:
        return self._answer("encode_trailers")

    def on_destroy(self) -> None:
        self.destroyed += 1
        self.log.append((self.name, "destroy"))


class Sink:
    def __init__(self, log: Log) -> None:
        self.log = log

    def encode_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.log.append(("sink", "head", str(head.status), str(end_stream)))

    def encode_body(self, data: bytes, end_stream: bool) -> None:
        self.log.append(("sink", "body", data.decode(), str(end_stream)))

    def encode_trailers(self, trailers: Headers) -> None:
        self.log.append(("sink", "trailers"))


class Route:
    def __init__(self, per_filter_config: dict[str, Any] | None = None) -> None:
        self.per_filter_config = MappingProxyType(per_filter_config or {})
        self.cluster = "app"


def chain(
    log: Log,
    scripts: dict[str, dict[str, Any]],
    *,
    route: Route | None = None,
    disabled: frozenset[str] = frozenset(),
    limit: int | None = None,
) -> tuple[FilterChainHandler, list[Scripted]]:
    made: list[Scripted] = []

    def factory(name: str) -> Callable[[FilterCallbacks], HttpFilter]:
        def make(cb: FilterCallbacks) -> HttpFilter:
            f = Scripted(cb, name, log, scripts[name])
            made.append(f)
            return f

        return make

    stats = Store().scope("http.t.").make(HttpConnManagerStats)
    handler = FilterChainHandler(
        [(name, factory(name), name in disabled) for name in scripts],
        Router(log),
        lambda ex: route if route is not None else Route(),
        stats,
        limit,
    )
    return handler, made


def stream(body: bool = True) -> Exchange:
    headers = [(b"host", b"app")]
    if body:
        headers.append((b"content-length", b"5"))
    head = RequestHead(b"POST" if body else b"GET", b"/", "1.1", headers, True, b"app")
    return Exchange(Conn(), head, 0.0)  # type: ignore[arg-type]


def fm_of(ex: Exchange) -> FilterManager:
    assert isinstance(ex.filters, FilterManager)
    return ex.filters


def test_decoders_in_order_encoders_in_reverse_and_destroy_at_the_end() -> None:
    log: Log = []
    h, made = chain(log, {"a": {}, "b": {}})
    ex = stream(body=False)
    h.on_request_head(ex)
    assert log == [
        ("a", "decode_headers"),
        ("b", "decode_headers"),
        ("router", "headers"),
        ("router", "end"),
    ]
    log.clear()
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(200, [], True, 2, False), False, Sink(log))
    fm.encode_data(b"ok", True)
    assert log == [
        ("b", "encode_headers"),
        ("a", "encode_headers"),
        ("sink", "head", "200", "False"),
        ("b", "encode_data", "ok"),
        ("a", "encode_data", "ok"),
        ("sink", "body", "ok", "True"),
        ("a", "destroy"),
        ("b", "destroy"),
    ]
    assert [f.destroyed for f in made] == [1, 1]


def test_body_through_a_filter_that_stopped_the_headers_moves_them_on_first() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {}, "b": {"decode_headers": STOP_ITERATION}, "c": {}})
    ex = stream()
    h.on_request_head(ex)
    assert log == [("a", "decode_headers"), ("b", "decode_headers")]
    h.on_request_body(ex, b"12")
    h.on_request_body(ex, b"345")
    h.on_request_end(ex)
    # b stopped the headers but let the body on (CONTINUE on data): as Envoy's
    # commonContinue, the headers go on first, the body after them.
    assert log[2:] == [
        ("a", "decode_data", "12"),
        ("b", "decode_data", "12"),
        ("c", "decode_headers"),
        ("router", "headers"),
        ("c", "decode_data", "12"),
        ("router", "data", "12"),
        ("a", "decode_data", "345"),
        ("b", "decode_data", "345"),
        ("c", "decode_data", "345"),
        ("router", "data", "345"),
        ("a", "decode_data", ""),
        ("b", "decode_data", ""),
        ("c", "decode_data", ""),
        ("router", "end"),
    ]


def test_continue_decoding_after_stop_iteration() -> None:
    log: Log = []
    holds = {"decode_headers": STOP_ITERATION, "decode_data": STOP_ITERATION_AND_BUFFER}
    h, _ = chain(log, {"a": holds, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12")
    h.on_request_end(ex)
    assert ("router", "headers") not in log
    log.clear()
    fm_of(ex).continue_decoding()
    assert log == [
        ("b", "decode_headers"),
        ("router", "headers"),
        ("b", "decode_data", "12"),
        ("router", "data", "12"),
        ("router", "end"),
    ]


def test_stop_all_keeps_the_body_from_the_stopping_filter_until_continue() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {"decode_headers": STOP_ALL_ITERATION_AND_BUFFER}, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12345")
    h.on_request_end(ex)
    assert log == [("a", "decode_headers")]
    fm_of(ex).continue_decoding()
    assert log[1:] == [
        ("b", "decode_headers"),
        ("router", "headers"),
        ("a", "decode_data", "12345"),
        ("b", "decode_data", "12345"),
        ("router", "data", "12345"),
        ("router", "end"),
    ]


def test_a_buffering_filter_passes_the_whole_body_as_one() -> None:
    log: Log = []

    def until_end(f: Scripted) -> int:
        ended = f.log[-1] == ("a", "decode_data", "")  # the end comes as an empty piece
        return CONTINUE if ended else STOP_ITERATION_AND_BUFFER

    h, _ = chain(log, {"a": {"decode_data": until_end}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12")
    h.on_request_body(ex, b"345")
    h.on_request_end(ex)
    assert [e for e in log if e[0] == "router"] == [
        ("router", "headers"),
        ("router", "data", "12345"),
        ("router", "end"),
    ]


def test_buffering_past_the_limit_is_413() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {"decode_data": STOP_ITERATION_AND_BUFFER}}, limit=4)
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"123")
    h.on_request_body(ex, b"45")
    conn = ex.conn
    assert isinstance(conn, Conn)
    assert [r[:2] for r in conn.replies] == [(413, b"Payload Too Large")]
    assert ("router", "data", "12345") not in log
    assert ("router", "reset") in log  # the router had the headers: it lets go


def test_local_reply_from_a_decoder_goes_through_the_encoders() -> None:
    log: Log = []

    def reply(f: Scripted) -> int:
        f.callbacks.send_local_reply(418, b"teapot", headers=[(b"x-why", b"a")])
        return STOP_ITERATION

    def tag(f: Scripted) -> int:
        fm = f.callbacks
        assert isinstance(fm, FilterManager) and fm.e_head is not None
        fm.e_head.headers.append((b"x-seen-by", f.name.encode()))
        return CONTINUE

    h, _ = chain(log, {"a": {"encode_headers": tag}, "b": {"decode_headers": reply}, "c": {}})
    ex = stream(body=False)
    h.on_request_head(ex)
    conn = ex.conn
    assert isinstance(conn, Conn)
    assert conn.replies == [
        (418, b"teapot", [(b"x-why", b"a"), (b"x-seen-by", b"a")], b"text/plain")
    ]
    assert ("c", "decode_headers") not in log and ("router", "headers") not in log


def test_encoder_stop_and_continue_encoding() -> None:
    log: Log = []
    holds = {"encode_headers": STOP_ITERATION, "encode_data": STOP_ITERATION_AND_BUFFER}
    h, _ = chain(log, {"a": {}, "b": holds})
    ex = stream(body=False)
    h.on_request_head(ex)
    log.clear()
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(200, [], True, 2, False), False, Sink(log))
    fm.encode_data(b"ok", True)
    assert log == [("b", "encode_headers"), ("b", "encode_data", "ok")]
    fm.continue_encoding()
    assert log[2:] == [
        ("a", "encode_headers"),
        ("sink", "head", "200", "False"),
        ("a", "encode_data", "ok"),
        ("sink", "body", "ok", "True"),
        ("a", "destroy"),
        ("b", "destroy"),
    ]


def test_body_through_an_encoder_that_stopped_the_headers_moves_them_on_first() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {}, "b": {"encode_headers": STOP_ITERATION}})
    ex = stream(body=False)
    h.on_request_head(ex)
    log.clear()
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(200, [], True, 2, False), False, Sink(log))
    fm.encode_data(b"ok", True)
    assert log == [
        ("b", "encode_headers"),
        ("b", "encode_data", "ok"),
        ("a", "encode_headers"),
        ("sink", "head", "200", "False"),
        ("a", "encode_data", "ok"),
        ("sink", "body", "ok", "True"),
        ("a", "destroy"),
        ("b", "destroy"),
    ]


# --- trailers ------------------------------------------------------------------------------


def test_request_trailers_follow_the_body_through_each_filter() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {}, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12")
    fm_of(ex).decode_trailers([(b"x-t", b"1")])
    assert log[6:] == [
        ("a", "decode_trailers"),
        ("b", "decode_trailers"),
        ("router", "end"),
    ]


def test_a_buffering_filter_lets_its_buffer_go_at_the_trailers() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {"decode_data": STOP_ITERATION_AND_BUFFER}, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12")
    h.on_request_body(ex, b"345")
    fm_of(ex).decode_trailers([(b"x-t", b"1")])
    assert [e for e in log if e[0] != "a"][2:] == [
        ("b", "decode_data", "12345"),
        ("b", "decode_trailers"),
        ("router", "data", "12345"),
        ("router", "end"),
    ]


def test_a_filter_that_stops_at_the_trailers_holds_the_end_until_continue() -> None:
    log: Log = []
    h, _ = chain(log, {"a": {"decode_trailers": STOP_ITERATION}, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"12")
    fm = fm_of(ex)
    fm.decode_trailers([(b"x-t", b"1")])
    assert ("b", "decode_trailers") not in log and ("router", "end") not in log
    fm.continue_decoding()
    assert log[-2:] == [("b", "decode_trailers"), ("router", "end")]


def test_encode_trailers_may_add_body_before_them() -> None:
    """What grpc_web does: the upstream's trailers become a body frame."""
    log: Log = []

    def frame(f: Scripted) -> int:
        f.callbacks.add_encoded_data(b"[trailers]")
        return CONTINUE

    h, _ = chain(log, {"a": {}, "b": {"encode_trailers": frame}})
    ex = stream(body=False)
    h.on_request_head(ex)
    log.clear()
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(200, [], True, None, True), False, Sink(log))
    fm.encode_data(b"ok", False)
    fm.encode_trailers([(b"grpc-status", b"0")])
    assert [e for e in log if e[0] != "b"] == [
        ("a", "encode_headers"),
        ("sink", "head", "200", "False"),
        ("a", "encode_data", "ok"),
        ("sink", "body", "ok", "False"),
        ("a", "encode_data", "[trailers]"),
        ("a", "encode_trailers"),
        ("sink", "body", "[trailers]", "False"),
        ("sink", "trailers"),
        ("a", "destroy"),
    ]


def test_reset_destroys_the_filters_once() -> None:
    log: Log = []
    h, made = chain(log, {"a": {"decode_headers": STOP_ITERATION}})
    ex = stream()
    h.on_request_head(ex)
    h.on_downstream_reset(ex)
    h.on_downstream_reset(ex)
    assert [f.destroyed for f in made] == [1]
    assert ("router", "reset") not in log  # the router never had it


@pytest.mark.parametrize(
    "per_route, expected",
    [({}, ["b"]), ({"a": object()}, ["a", "b"])],
    ids=["default-off", "route-turns-it-on"],
)
def test_a_disabled_filter_joins_only_where_its_route_has_config(
    per_route: dict[str, Any], expected: list[str]
) -> None:
    log: Log = []
    h, made = chain(log, {"a": {}, "b": {}}, route=Route(per_route), disabled=frozenset({"a"}))
    h.on_request_head(stream(body=False))
    assert [f.name for f in made] == expected


# --- request ids and x-forwarded-for ----------------------------------------------------


def test_request_ids_are_uuid4() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:200]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122 and len(rid) == 36


@pytest.mark.parametrize(
    ("xff", "skip", "want"),
    [
        (b"127.0.113.1", 0, "127.0.113.1"),
        (b"127.0.113.128, 127.0.113.10, 127.0.113.1", 0, "127.0.113.1"),
        (b"127.0.113.128, 127.0.113.10, 127.0.113.1", 1, "127.0.113.10"),
        (b"127.0.113.128, 127.0.113.10, 127.0.113.1", 2, "127.0.113.128"),
        (b"127.0.113.10, 127.0.113.1", 2, None),  # fewer entries than trusted hops
        (b"127.0.10.5, garbage", 0, None),
        (b"127.0.10.5, garbage", 1, "127.0.10.5"),
        (b",127.0.10.1", 0, "127.0.10.1"),
        (b"127.0.10.1,", 0, None),  # a trailing comma leaves the whole text: invalid
        (b"127.0.10.1,", 1, "127.0.10.1"),
        (b" 127.0.10.7 ", 0, "127.0.10.7"),
        (b"127.0.168.1:8080", 0, None),
        (b"[::1]", 0, None),
        (b"0:0:0::1", 0, "::1"),  # as Envoy prints it (inet_ntop)
        (b"127.0.010.1", 0, None),
        (b"", 0, None),
    ],
)
def test_trusted_xff_address(xff: bytes, skip: int, want: str | None) -> None:
    """Envoy's Utility::getLastAddressFromXFF; the cases Envoy 1.40 was seen to agree on
    (x-envoy-external-address with xff_num_trusted_hops skip + 1)."""
    assert trusted_xff_address(xff, skip) == want


def test_a_local_reply_once_the_response_began_resets_the_stream_once() -> None:
    """A filter's late local reply (e.g. a fault timer after the upstream answered): the
    router lets go of the upstream, the connection gets one reply (its too-late path resets
    the stream), and the encoders are not walked a second time."""
    log: Log = []
    h, made = chain(log, {"a": {}})
    ex = stream(body=False)
    h.on_request_head(ex)
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(200, [], True, 5, False), False, Sink(log))
    ex.response_started = True
    log.clear()
    made[0].callbacks.send_local_reply(503, b"late")
    made[0].callbacks.send_local_reply(503, b"again")
    conn = ex.conn
    assert isinstance(conn, Conn)
    assert [r[:2] for r in conn.replies] == [(503, b"late")]
    assert log == [("router", "reset"), ("a", "destroy")]


def test_injected_body_replaces_the_piece_a_filter_took() -> None:
    """What a body-rewriting filter does (grpc_web): take each piece, pass on another."""
    log: Log = []

    def upper(f: Scripted) -> int:
        data = log[-1][2]
        f.callbacks.inject_decoded_data(f, data.upper().encode(), False)
        return STOP_ITERATION_NO_BUFFER

    def upper_out(f: Scripted) -> int:
        data = log[-1][2]
        f.callbacks.inject_encoded_data(f, data.upper().encode(), data == "z")
        return STOP_ITERATION_NO_BUFFER

    h, _ = chain(log, {"a": {"decode_data": upper, "encode_data": upper_out}, "b": {}})
    ex = stream()
    h.on_request_head(ex)
    h.on_request_body(ex, b"abc")
    fm = fm_of(ex)
    # Headers stopped at the filter: the injected body moves them on first.
    fm.encode_headers(ResponseHead(200, [], True, None, True), False, Sink(log))
    fm.encode_data(b"z", True)
    assert [e for e in log if e[1] != "destroy"] == [
        ("a", "decode_headers"),
        ("b", "decode_headers"),
        ("router", "headers"),
        ("a", "decode_data", "abc"),
        ("b", "decode_data", "ABC"),
        ("router", "data", "ABC"),
        ("b", "encode_headers"),
        ("a", "encode_headers"),
        ("sink", "head", "200", "False"),
        ("b", "encode_data", "z"),
        ("a", "encode_data", "z"),
        ("sink", "body", "Z", "True"),
    ]


def test_injected_body_moves_on_headers_the_filter_stopped() -> None:
    log: Log = []

    def hold(f: Scripted) -> int:
        return STOP_ITERATION

    def release(f: Scripted) -> int:
        f.callbacks.inject_encoded_data(f, b"new", True)
        return STOP_ITERATION_NO_BUFFER

    h, _ = chain(log, {"a": {"encode_headers": hold, "encode_data": release}})
    ex = stream(body=False)
    h.on_request_head(ex)
    log.clear()
    fm = fm_of(ex)
    fm.encode_headers(ResponseHead(503, [], True, None, True), False, Sink(log))
    fm.encode_data(b"old", True)
    assert log[:4] == [
        ("a", "encode_headers"),
        ("a", "encode_data", "old"),
        ("sink", "head", "503", "False"),
        ("sink", "body", "new", "True"),
    ]


def test_clear_route_cache_matches_the_route_again() -> None:
    log: Log = []
    routes = [Route(), Route()]
    h, _ = chain(log, {"a": {}})
    h.match_route = lambda ex: routes.pop(0)
    ex = stream(body=False)
    h.on_request_head(ex)
    fm = fm_of(ex)
    first = fm.route()
    assert fm.route() is first
    fm.clear_route_cache()
    assert fm.route() is not first and not routes
