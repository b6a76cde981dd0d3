"""The sans-I/O codec: framing, limits, smuggling defences, HEAD and 1xx handling."""

from __future__ import annotations

import contextlib

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podproxy.errors import ProtocolError
from podproxy.http.http1 import codec
from podproxy.http.http1.codec import RequestDecoder, ResponseDecoder
from podproxy.http.stream import RequestHead, ResponseHead


class Sink:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.events.append(head)

    def on_request_body(self, data: bytes) -> None:
        self.events.append(data)

    def on_request_end(self) -> None:
        self.events.append("end")

    on_response_head = on_request_head  # type: ignore[assignment]
    on_response_body = on_request_body
    on_response_end = on_request_end


def decode(data: bytes, **kw: int) -> list[object]:
    sink = Sink()
    RequestDecoder(sink, **kw).feed(data)
    return sink.events


def test_headers_lowercased_and_pipelined_requests_in_order() -> None:
    ev = decode(
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Thing: V\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    )
    a, end_a, b, body, end_b = ev
    assert isinstance(a, RequestHead) and isinstance(b, RequestHead)
    assert (a.method, a.target, a.headers) == (b"GET", b"/a", [(b"host", b"x"), (b"x-thing", b"V")])
    assert (b.method, body, end_a, end_b) == (b"POST", b"abc", "end", "end")


def test_chunked_body_is_decoded() -> None:
    ev = decode(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert b"".join(e for e in ev if isinstance(e, bytes)) == b"abcde"
    assert ev[-1] == "end"


@pytest.mark.parametrize(
    "raw",
    [
        # request smuggling: CL and TE together, two different CLs
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        # bad chunk framing
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n",
        # malformed request line and header
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
)
def test_malformed_requests_are_400(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.status_hint == 400


def test_oversized_headers_are_431() -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        decode(big)
    assert info.value.status_hint == 431


def test_too_many_headers_are_431() -> None:
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(ProtocolError) as info:
        decode(many)
    assert info.value.status_hint == 431
    decode(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(99)) + b"\r\n")


@given(st.binary(max_size=200))
def test_fuzzed_input_never_raises_anything_but_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


def test_response_to_head_has_no_body_and_parser_is_reusable() -> None:
    sink = Sink()
    dec = ResponseDecoder(sink)
    dec.expect_response(no_body=True)
    dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert isinstance(sink.events[0], ResponseHead) and sink.events[1:] == ["end"]
    dec.expect_response(no_body=False)
    dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.events[-2:] == [b"ok", "end"]


def test_interim_1xx_is_reported_apart_from_the_final_head() -> None:
    sink = Sink()
    seen: list[int] = []
    dec = ResponseDecoder(sink)
    dec.on_informational = lambda status, headers: seen.append(status)
    dec.expect_response(no_body=False)
    dec.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert seen == [103]
    head = sink.events[0]
    assert isinstance(head, ResponseHead) and head.status == 204 and sink.events[1:] == ["end"]


def test_close_delimited_body_ends_at_eof() -> None:
    sink = Sink()
    dec = ResponseDecoder(sink)
    dec.expect_response(no_body=False)
    dec.feed(b"HTTP/1.1 200 OK\r\n\r\nhello")
    head = sink.events[0]
    assert isinstance(head, ResponseHead) and not head.keep_alive
    assert dec.eof() is True
    assert sink.events[1:] == [b"hello", "end"]


def test_garbage_response_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        dec = ResponseDecoder(Sink())
        dec.expect_response(no_body=False)
        dec.feed(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_simple_response_and_chunks() -> None:
    out = codec.simple_response(503, b"no healthy upstream", server=b"podproxy")
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\n")
    assert b"content-type: text/plain\r\n" in out and out.endswith(b"\r\n\r\nno healthy upstream")
    assert codec.encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


class _Versions:
    """What httptools itself says of each request's version (the decoder avoids asking)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.seen: list[tuple[str, bool]] = []

    def on_headers_complete(self) -> None:
        self.seen.append((self.parser.get_http_version(), self.parser.should_keep_alive()))


@pytest.mark.parametrize("version", [b"0.9", b"1.0", b"1.1", b"1.2", b"2.0", b"3.1", b"9.9"])
@pytest.mark.parametrize(
    "connection",
    [
        b"",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
        b"Connection: x\r\n",
        b"Proxy-Connection: keep-alive\r\n",
        b"Proxy-Connection: close\r\n",
    ],
)
def test_request_version_is_the_one_llhttp_parsed(version: bytes, connection: bytes) -> None:
    # Two requests on one stream: the state of the first must not leak into the second (a
    # stream llhttp rejects, e.g. bytes after a request that did not keep the connection alive,
    # is rejected by the decoder too, after the same heads).
    data = b"GET / HTTP/" + version + b"\r\nHost: x\r\n" + connection + b"\r\n"
    stream = data + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    want = _Versions()
    want_error = False
    try:
        want.parser.feed_data(stream)
    except httptools.HttpParserError:
        want_error = True
    sink = Sink()
    got_error = False
    decoder = RequestDecoder(sink)
    try:
        decoder.feed(stream)
    except ProtocolError:
        got_error = True
    heads = [e for e in sink.events if isinstance(e, RequestHead)]
    assert [(h.version, h.keep_alive) for h in heads] == want.seen
    # Where llhttp errs on bytes after a request that closes the connection, the decoder has
    # stopped parsing after it instead (RFC 9112 §9.6: nothing after it is processed).
    assert got_error == want_error or (decoder.stopped and not heads[-1].keep_alive)


def _request_head_of(size: int) -> bytes:
    """A GET head of exactly `size` bytes, request line to the blank line."""
    start = b"GET / HTTP/1.1\r\nhost: a\r\nx-big: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def test_request_head_limit_is_counted_as_envoy_counts_it() -> None:
    # Envoy 1.40: a head of 61440 bytes (60 KiB) passes, 61441 gets 431.
    assert len(_request_head_of(61440)) == 61440
    decode(_request_head_of(61440))
    with pytest.raises(ProtocolError) as info:
        decode(_request_head_of(61441))
    assert info.value.status_hint == 431


def _response_head_of(size: int) -> bytes:
    start = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-big: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def test_response_head_limit_is_80_kib_as_envoy() -> None:
    dec = ResponseDecoder(Sink())
    dec.expect_response(no_body=False)
    dec.feed(_response_head_of(81920))
    dec = ResponseDecoder(Sink())
    dec.expect_response(no_body=False)
    with pytest.raises(ProtocolError) as info:
        dec.feed(_response_head_of(81921))
    assert info.value.status_hint == 502


def _heads(events: list[object]) -> list[RequestHead]:
    return [e for e in events if isinstance(e, RequestHead)]


@pytest.mark.parametrize(
    ("fold", "joined"),
    [(b"a\r\n b", b"a b"), (b"a\r\n\tb", b"a\tb"), (b"a \r\n  b\r\n c", b"a   b c")],
)
def test_obs_fold_is_joined_as_envoy_joins_it(fold: bytes, joined: bytes) -> None:
    head = b"GET /f HTTP/1.1\r\nHost: x\r\nX-Fold: " + fold + b"\r\nX-After: 1\r\n\r\n"
    # Alone, and with a body after it. (Behind another request in the same read, where it
    # starts is not known for sure: 400, see the next test.)
    (one,) = _heads(decode(head))
    assert one.headers == [(b"host", b"x"), (b"x-fold", joined), (b"x-after", b"1")]
    post = head.replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n")
    events = decode(post + b"a\r\n b")  # a body that looks like a fold stays as it is
    assert events[1:] == [b"a\r\n b", "end"]


def test_obs_fold_in_host_or_where_the_head_start_is_unsure_is_400() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b"GET / HTTP/1.1\r\nHost: a\r\n .test\r\n\r\n")
    assert info.value.status_hint == 400
    # Pipelined behind a request with the same request line: re-parsing "from the head's
    # line" could pick the first one again (found by the fuzzer with a search from the end).
    same = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"
    sink = Sink()
    with pytest.raises(ProtocolError):
        RequestDecoder(sink).feed(same + b"GET /f HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n")
    assert len(_heads(sink.events)) == 1  # the first request once, never twice
    dec = RequestDecoder(Sink())
    dec.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n")
    with pytest.raises(ProtocolError):
        dec.feed(b" b\r\n\r\n")


def test_trailers_never_reach_a_request() -> None:
    events = decode(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nz\r\n0\r\nHost: other\r\nProxy-Connection: x\r\nX-T: 1\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    a, b = _heads(events)
    assert b.headers == [(b"host", b"x")] and b.host == b"x" and b.keep_alive
    assert a.headers == [(b"host", b"x"), (b"transfer-encoding", b"chunked")]


def test_a_connection_close_trailer_is_refused_for_what_follows() -> None:
    # RFC 9110 §6.5.1: Connection may not be a trailer. llhttp takes it as the end of the
    # connection, so a request after it is a 400 (stricter than Envoy, which ignores it).
    with pytest.raises(ProtocolError) as info:
        decode(
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert info.value.status_hint == 400


def test_many_pipelined_h2c_upgrades_in_one_read() -> None:
    up = (
        b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n"
    )
    heads = _heads(decode(up * 2000))  # a loop, not 2000 nested calls
    assert len(heads) == 2000
    assert all(h.upgrade is None and h.get(b"upgrade") is None for h in heads)


@pytest.mark.parametrize("split", [1, 7, 50])
def test_h2c_upgrade_with_a_body_is_framed_as_a_body(split: int) -> None:
    data = (
        b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    sink = Sink()
    dec = RequestDecoder(sink)
    for i in range(0, len(data), split):
        dec.feed(data[i : i + split])
    heads = _heads(sink.events)
    assert [h.target for h in heads] == [b"/u", b"/next"]
    assert b"".join(e for e in sink.events if isinstance(e, bytes)) == b"hello"
    assert sink.events.count("end") == 2


@pytest.mark.parametrize(
    ("head", "upgrade"),
    [
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n",
            b"websocket",
        ),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n", b"CONNECT"),
    ],
)
def test_other_upgrades_stop_parsing(head: bytes, upgrade: bytes) -> None:
    events = decode(head + b"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    (only,) = _heads(events)
    assert only.upgrade == upgrade


@pytest.mark.parametrize(
    ("version", "status"),
    [(b"HTTP/1.2", 426), (b"HTTP/3.0", 426), (b"HTTP/1.10", 400), (b"http/1.1", 400)],
)
def test_bad_versions(version: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b"GET / " + version + b"\r\nHost: x\r\n\r\n")
    assert info.value.status_hint == status


def test_http2_preface_has_no_answer() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert info.value.status_hint is None


@pytest.mark.parametrize(
    ("target", "path", "host"),
    [
        (b"http://svc.test/abs", b"/abs", b"svc.test"),
        (b"HTTPS://svc.test:8443/a?b=c", b"/a?b=c", b"svc.test:8443"),
        (b"http://user:pw@svc.test/x", b"/x", b"svc.test"),
        (b"http://svc.test", b"/", b"svc.test"),
        (b"http://svc.test?q=1", b"?q=1", b"svc.test"),
    ],
)
def test_absolute_form_targets(target: bytes, path: bytes, host: bytes) -> None:
    (head,) = _heads(decode(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\n\r\n"))
    assert (head.target, head.host) == (path, host)


def test_absolute_form_with_another_scheme_is_400() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b"GET ftp://svc.test/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.status_hint == 400


def test_response_trailers_never_reach_the_next_response() -> None:
    sink = Sink()
    dec = ResponseDecoder(sink)
    dec.expect_response(no_body=False)
    dec.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\nX-T: 1\r\n\r\n")
    dec.expect_response(no_body=False)
    dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    second = [e for e in sink.events if isinstance(e, ResponseHead)][1]
    assert second.headers == [(b"content-length", b"0")]


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED",
        b"garbage",
        b"H",
        b"HTTP/1.1 103 Early Hints\r\n\r\n",
    ],
)
@pytest.mark.parametrize("no_body", [False, True], ids=["get", "head"])
def test_bytes_after_the_response_are_an_error_after_it_ended(extra: bytes, no_body: bool) -> None:
    sink = Sink()
    dec = ResponseDecoder(sink)
    dec.expect_response(no_body=no_body)
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + (b"" if no_body else b"ok")
    with pytest.raises(ProtocolError):
        dec.feed(response + extra)
    assert sink.events[-1] == "end"  # the response itself was complete
    assert b"POISONED" not in sink.events


def test_a_response_to_head_split_anywhere_is_framed_exactly() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    for split in range(1, len(data)):
        sink = Sink()
        dec = ResponseDecoder(sink)
        dec.expect_response(no_body=True)
        dec.feed(data[:split])
        dec.feed(data[split:])
        assert sink.events[-1] == "end", split
        dec.expect_response(no_body=False)
        dec.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert sink.events[-1] == "end"


def _limit_outcome(reads: list[bytes], limit: int) -> tuple[int, int | None]:
    """How many heads a request decoder with a `limit`-byte head limit hands on for `reads`,
    and the status of the error it raises (None if none)."""
    sink = Sink()
    dec = RequestDecoder(sink, max_headers_bytes=limit)
    try:
        for r in reads:
            dec.feed(r)
    except ProtocolError as exc:
        return _heads_in(sink), exc.status_hint
    return _heads_in(sink), None


def _heads_in(sink: Sink) -> int:
    return sum(isinstance(e, RequestHead) for e in sink.events)


@given(
    sizes=st.lists(st.integers(min_value=40, max_value=400), min_size=1, max_size=4),
    body=st.integers(min_value=0, max_value=600),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_head_limit_does_not_depend_on_how_the_bytes_arrive(
    sizes: list[int], body: int, cuts: list[int]
) -> None:
    """Heads are counted only once they could be over the limit (bytes fed since they could
    have begun): wherever the reads are cut, and after bodies of any size in the same read,
    every head is accepted or refused (431) exactly as when all arrive in one read."""
    limit = 300
    stream = b""
    for size in sizes:
        head = _request_head_of(size)
        stream += head.replace(b"\r\n\r\n", b"\r\ncontent-length: %d\r\n\r\n" % body) + b"b" * body
    whole = _limit_outcome([stream], limit)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    reads = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _limit_outcome(reads, limit) == whole
    # And what the limit means: the first head over it is the one refused.
    over = [
        i for i, size in enumerate(sizes) if size + len(b"content-length: %d\r\n" % body) > limit
    ]
    assert whole == ((over[0], 431) if over else (len(sizes), None))


def test_bytes_after_an_upgrade_head_are_kept_for_the_tunnel() -> None:
    sink = Sink()
    dec = RequestDecoder(sink)
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    dec.feed(head + b"\x81\x85frame")
    assert dec.stopped and dec.upgrade_tail == b"\x81\x85frame"
    (only,) = _heads(sink.events)
    assert only.upgrade == b"websocket"


@pytest.mark.parametrize("no_body", [False, True], ids=["get", "head"])
def test_a_101_is_handed_on_with_the_bytes_after_it(no_body: bool) -> None:
    dec = ResponseDecoder(Sink())
    dec.expect_response(no_body)
    with pytest.raises(codec.SwitchingProtocols) as info:
        dec.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n\x81\x02hi"
        )
    assert info.value.head.status == 101
    assert info.value.head.headers == [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    assert info.value.tail == b"\x81\x02hi"
    assert info.value.status_hint == 503  # what it means to a request that asked no upgrade


def test_a_101_without_upgrade_switches_to_nothing() -> None:
    dec = ResponseDecoder(Sink())
    dec.expect_response(False)
    with pytest.raises(codec.UnexpectedUpgrade) as info:
        dec.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\nxx")
    assert not isinstance(info.value, codec.SwitchingProtocols)
    assert info.value.status_hint == 503
