"""The five unsafe cases the adversarial suite found, and the class of bug behind each.

One test (or family) per case, named after it: request trailers leaking into the next request,
an h2c upgrade answered twice, a POST sent twice, and a response meant for nobody delivered to
another client (response poisoning), this last one over every shape of "bytes after the
response" we could think of. The upstream is `ScriptedUpstream`, which answers with exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yaml

from integration.backends import RawClient, parse_responses, raw_exchange
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.test_proxy_http import (
    RESET_PREFIX,
    InProcessProxy,
    StartProxy,
    bootstrap,
    cluster,
    proxy,
    request,
)

__all__ = ["proxy"]  # the fixture, re-exported so pytest finds it here

Answer = Callable[[ScriptedRequest], Awaitable[None]]
CLOSE = [("connection", "close")]


def ok(body: bytes, *, close: bool = False) -> bytes:
    conn = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), conn, body)


def two_hosts(upstream: tuple[str, int], **hcm: Any) -> str:
    """`app` (any host) proxies to `upstream`; `other.test` answers `other` itself."""
    text = bootstrap([cluster("app", [upstream])], hcm=hcm or None)
    cfg = yaml.safe_load(text)
    manager = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"]["route_config"]["virtual_hosts"].insert(
        0,
        {
            "name": "other",
            "domains": ["other.test"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "other"}},
                }
            ],
        },
    )
    return yaml.safe_dump(cfg, sort_keys=False)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Answer], Awaitable[ScriptedUpstream]]]:
    started: list[ScriptedUpstream] = []

    async def start(answer: Answer) -> ScriptedUpstream:
        up = await ScriptedUpstream(answer).start()
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            await up.close()


StartScripted = Callable[[Answer], Awaitable[ScriptedUpstream]]


async def echo_path(req: ScriptedRequest) -> None:
    req.conn.write(ok(req.target))


# --- 1. request trailers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "trailer", [b"X-Trailer-Leak: yes", b"Host: other.test"], ids=["x-header", "host"]
)
async def test_request_trailers_leak_into_the_next_request(
    proxy: StartProxy, scripted: StartScripted, trailer: bytes
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address))
    post = (
        b"POST /first HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"
    )
    async with await RawClient.open(*p.address) as client:
        client.send(post)
        assert (await client.response()).body == b"/first"
        client.send(b"GET /second HTTP/1.1\r\nhost: app\r\n\r\n")
        second = await client.response()
        # The GET reached its own virtual host (not other.test's direct response) ...
        assert (second.status, second.body) == (200, b"/second")
    # ... and no trailer field reached the upstream, on the POST or on the GET.
    assert [r.target for r in up.requests] == [b"/first", b"/second"]
    for r in up.requests:
        assert r.header(b"x-trailer-leak") is None
        assert r.header(b"host") == b"app"
    assert b"trailer-leak" not in up.received().lower()
    assert b"other.test" not in up.received()
    await p.assert_healthy()


async def test_request_trailers_count_against_the_header_size_limit(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, max_request_headers_kb=1))
    big = b"x-big: " + b"a" * 2000
    data = (
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\n" + big + b"\r\n\r\n"
    )
    raw = await raw_exchange(*p.address, data)
    assert raw.startswith(b"HTTP/1.1 431 ")
    await p.assert_healthy()


# --- 2. h2c upgrade ----------------------------------------------------------------------------

H2C = (
    b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
    b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


@pytest.mark.parametrize(
    "first",
    [
        b"GET /up HTTP/1.1\r\nhost: app\r\n" + H2C + b"\r\n",
        b"POST /up HTTP/1.1\r\nhost: app\r\n" + H2C + b"content-length: 5\r\n\r\nhello",
        b"POST /up HTTP/1.1\r\nhost: app\r\n"
        + H2C
        + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["get", "post-length", "post-chunked"],
)
@pytest.mark.parametrize("pipelined", [False, True], ids=["apart", "pipelined"])
async def test_h2c_upgrade_request_got_two_answers(
    proxy: StartProxy, scripted: StartScripted, first: bytes, pipelined: bool
) -> None:
    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(ok(req.target + b" " + req.body))

    up = await scripted(answer)
    p = await proxy(two_hosts(up.address))
    second = b"GET /next HTTP/1.1\r\nhost: app\r\n\r\n"
    async with await RawClient.open(*p.address) as client:
        if pipelined:
            client.send(first + second)
            responses = await client.responses(2)
        else:
            client.send(first)
            responses = [await client.response()]
            client.send(second)
            responses.append(await client.response())
        # Exactly one answer each, on HTTP/1.1, and the connection stays open.
        assert [(r.status, r.body) for r in responses] == [
            (200, b"/up " + (b"hello" if first.startswith(b"POST") else b"")),
            (200, b"/next "),
        ]
        assert all(r.header("connection") is None for r in responses)
        client.send(second)
        assert (await client.response()).status == 200
    assert p.counter("http.ingress_http.downstream_cx_protocol_error") == 0
    for r in up.requests:
        assert r.header(b"upgrade") is None and r.header(b"http2-settings") is None
    await p.assert_healthy()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: websocket\r\n", 403),
        (b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: foo\r\n", 403),
        (b"CONNECT svc.test:443 HTTP/1.1\r\nhost: svc.test:443\r\n", 404),
    ],
    ids=["websocket", "other-protocol", "connect"],
)
async def test_upgrade_without_upgrade_configs_is_refused_as_envoy_does(
    proxy: StartProxy, scripted: StartScripted, head: bytes, status: int
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, delayed_close_timeout="0.2s"))
    # What follows the head is another protocol's bytes: never parsed as a request.
    raw = await raw_exchange(*p.address, head + b"\r\n" + b"GET /smuggled HTTP/1.1\r\n\r\n")
    responses = parse_responses(raw)
    assert [(r.status, r.body) for r in responses] == [(status, b"")]
    assert responses[0].header("connection") == "close"
    assert up.requests == []
    if status == 403:
        assert p.counter("http.ingress_http.downstream_rq_ws_on_non_ws_route") == 1
    await p.assert_healthy()


# --- 3. a POST sent twice ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "resent"),
    [("POST", False), ("PATCH", False), ("GET", True), ("PUT", True), ("DELETE", True)],
)
async def test_post_was_sent_twice(
    proxy: StartProxy, scripted: StartScripted, method: str, resent: bool
) -> None:
    """A reused connection closes after reading the whole request, without answering."""

    async def answer(req: ScriptedRequest) -> None:
        if req.conn.number == 0 and req.number_on_conn == 1:
            req.conn.close()  # read it all, answer nothing
            return
        req.conn.write(ok(b"%s %d" % (req.method, req.conn.number)))

    up = await scripted(answer)
    p = await proxy(two_hosts(up.address))
    async with await RawClient.open(*p.address) as client:
        client.send(request("GET", "/warm"))
        assert (await client.response()).body == b"GET 0"
        client.send(request(method, "/once", body=b"payload"))
        resp = await client.response()
    sent = [r for r in up.requests if r.target == b"/once"]
    if resent:
        # The keep-alive race rule: an idempotent request is sent again on a new connection.
        assert (resp.status, resp.body) == (200, method.encode() + b" 1")
        assert len(sent) == 2
    else:
        assert (resp.status, resp.body) == (503, RESET_PREFIX + b"connection termination")
        assert len(sent) == 1  # the upstream may have processed it: never sent again
    await p.assert_healthy("/warm")


async def test_post_is_sent_again_when_no_byte_of_it_left(
    proxy: StartProxy, scripted: StartScripted, free_port: Callable[..., int]
) -> None:
    """A refused connect sent nothing: any method may go to another host (rule (a))."""

    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(ok(req.body))

    up = await scripted(answer)
    closed = ("127.0.0.1", free_port())  # nothing listens there
    cfg = bootstrap([cluster("app", [closed, up.address], connect_timeout="1s")])
    p = await proxy(cfg)
    for _ in range(4):  # round robin: some of these start on the closed host
        raw = await raw_exchange(
            *p.address, request("POST", "/p", body=b"data", headers=[("connection", "close")])
        )
        resp = parse_responses(raw)[0]
        assert (resp.status, resp.body) == (200, b"data")
    assert len(up.requests) == 4
    await p.assert_healthy("/p")


# --- 4 and 5. bytes after the response: response poisoning -------------------------------------

POISON = b"POISONED"
EXTRA = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n" + POISON


async def _wait(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _shapes() -> dict[str, Callable[[ScriptedRequest], Awaitable[None]]]:
    """How an upstream may send bytes nobody asked for, each after answering request A."""

    async def extra_response(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + EXTRA)

    async def garbage(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + POISON + b"\r\n\r\n")

    async def split_extra(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + EXTRA[:20])
        await req.conn.writer.drain()
        await _wait(0.3)
        req.conn.write(EXTRA[20:])

    async def extra_while_idle(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A"))
        await req.conn.writer.drain()
        await _wait(0.3)
        req.conn.write(EXTRA)

    async def extra_after_chunked(req: ScriptedRequest) -> None:
        req.conn.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n" + EXTRA
        )

    async def extra_after_head(req: ScriptedRequest) -> None:
        # A response to HEAD has no body: a body sent anyway is bytes after the response.
        req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n" + POISON)

    async def interim_after_final(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + b"HTTP/1.1 103 Early Hints\r\n\r\n" + EXTRA)

    async def one_byte(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + b"H")
        await req.conn.writer.drain()
        await _wait(0.3)
        req.conn.write(EXTRA[1:])

    return {
        "extra-response": extra_response,
        "garbage": garbage,
        "extra-split-over-writes": split_extra,
        "extra-while-idle-in-pool": extra_while_idle,
        "extra-after-chunked": extra_after_chunked,
        "body-after-head-response": extra_after_head,
        "interim-after-final": interim_after_final,
        "one-byte-then-rest": one_byte,
    }


SHAPES = _shapes()


async def test_one_client_got_another_requests_response(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    """Case 4 as the suite found it: an extra response in the same write as A's."""
    await _stray_bytes_reach_nobody(proxy, scripted, "extra-response")


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_extra_bytes_after_the_response_never_reach_a_client(
    proxy: StartProxy, scripted: StartScripted, shape: str
) -> None:
    """Case 5: the class of case 4, every shape of bytes after a response."""
    await _stray_bytes_reach_nobody(proxy, scripted, shape)


async def _stray_bytes_reach_nobody(proxy: StartProxy, scripted: StartScripted, shape: str) -> None:
    misbehave = SHAPES[shape]
    misbehaved = asyncio.Event()

    async def answer(req: ScriptedRequest) -> None:
        if req.target == b"/a":
            await misbehave(req)
            misbehaved.set()
        else:
            req.conn.write(ok(req.target))

    up = await scripted(answer)
    p = await proxy(two_hosts(up.address))
    method = "HEAD" if shape == "body-after-head-response" else "GET"
    async with await RawClient.open(*p.address) as client:
        client.send(request(method, "/a"))
        if method == "HEAD":
            raw = b""
            async with asyncio.timeout(5.0):
                while b"\r\n\r\n" not in raw:
                    raw += await client.reader.read(65536)
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and POISON not in raw
        else:
            first = await client.response()
            assert (first.status, first.body) == (200, b"A")
    # Other clients, one after another and then together, once every stray byte was sent while
    # no request was outstanding on that connection. (A byte that arrives after the next request
    # was sent is, on HTTP/1.1, indistinguishable from that request's response.)
    async with asyncio.timeout(5.0):
        await misbehaved.wait()
    await asyncio.sleep(0.1)
    seen: list[bytes] = []
    for i in range(4):
        raw = await raw_exchange(*p.address, request("GET", f"/b{i}", headers=CLOSE))
        seen.append(raw)
        await asyncio.sleep(0.1)
    together = await asyncio.gather(
        *(raw_exchange(*p.address, request("GET", f"/c{i}", headers=CLOSE)) for i in range(4))
    )
    for i, raw in enumerate([*seen, *together]):
        assert POISON not in raw
        (resp,) = parse_responses(raw)
        assert resp.status == 200
        assert resp.body == (f"/b{i}" if i < 4 else f"/c{i - 4}").encode()
    assert p.counter("cluster.app.upstream_cx_protocol_error") >= 1
    await p.assert_healthy("/z")


async def test_crlf_after_a_response_is_harmless(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    """llhttp skips CR and LF between messages: no byte of them can reach a client."""

    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(ok(req.target) + (b"\r\n" if req.target == b"/a" else b""))

    up = await scripted(answer)
    p = await proxy(two_hosts(up.address))
    async with await RawClient.open(*p.address) as client:
        for path in ("/a", "/b", "/c"):
            client.send(request("GET", path))
            assert (await client.response()).body == path.encode()
    await p.assert_healthy("/z")


# --- bookkeeping: nothing left open ------------------------------------------------------------


async def test_poisoned_connections_are_closed_and_counted(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(ok(b"A") + EXTRA)

    up = await scripted(answer)
    p: InProcessProxy = await proxy(two_hosts(up.address))
    for _ in range(3):
        raw = await raw_exchange(*p.address, request("GET", "/a", headers=CLOSE))
        assert parse_responses(raw)[0].body == b"A"
    # Each broken connection was closed, never reused: three requests, three connections.
    assert len(up.conns) == 3
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while p.gauge("cluster.app.upstream_cx_active") != 0:
                await asyncio.sleep(0.02)
    assert p.gauge("cluster.app.upstream_cx_active") == 0
    assert p.counter("cluster.app.upstream_cx_protocol_error") == 3


# --- limits on responses, and the delayed close ------------------------------------------------


@pytest.mark.parametrize(
    ("options", "headers", "status"),
    [
        ({"max_response_headers_kb": 8}, [b"x-big: " + b"a" * 9000], 502),
        ({"max_response_headers_kb": 8}, [b"x-big: " + b"a" * 7000], 200),
        ({"max_headers_count": 10}, [b"x-h%d: v" % i for i in range(10)], 502),
        ({"max_headers_count": 10}, [b"x-h%d: v" % i for i in range(9)], 200),
    ],
    ids=["kb-over", "kb-under", "count-over", "count-at-limit"],
)
async def test_cluster_limits_on_response_heads(
    proxy: StartProxy,
    scripted: StartScripted,
    options: dict[str, int],
    headers: list[bytes],
    status: int,
) -> None:
    async def answer(req: ScriptedRequest) -> None:
        lines = b"".join(h + b"\r\n" for h in headers)
        req.conn.write(b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\nok")

    up = await scripted(answer)
    text = bootstrap([cluster("app", [up.address], common_http_protocol_options=options)])
    p = await proxy(text)
    raw = await raw_exchange(*p.address, request(headers=CLOSE))
    resp = parse_responses(raw)[0]
    assert resp.status == status
    if status == 502:
        assert resp.body == RESET_PREFIX + b"protocol error"


async def _reply_then_eof(p: InProcessProxy, data: bytes, *, close_first: bool) -> bytes:
    reader, writer = await asyncio.open_connection(*p.address)
    try:
        writer.write(data)
        raw = b""
        async with asyncio.timeout(5.0):
            while not parse_responses(raw):
                raw += await reader.read(65536)
            if close_first:
                writer.write_eof()
            assert await reader.read(65536) == b""  # the proxy closed (FIN, not a reset)
    finally:
        writer.close()
    return raw


@pytest.mark.parametrize("close_first", [False, True], ids=["quiet-client", "client-closes"])
async def test_delayed_close_after_an_error_reply(
    proxy: StartProxy, scripted: StartScripted, close_first: bool
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, delayed_close_timeout="0.3s"))
    bad = b"GET / HTTP/1.1\r\nhost: app\r\nbad header line\r\n\r\nmore bytes in flight"
    raw = await _reply_then_eof(p, bad, close_first=close_first)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # The timer closed it only when the client did not close first.
    assert p.counter("http.ingress_http.downstream_cx_delayed_close_timeout") == (
        0 if close_first else 1
    )
    await p.assert_healthy()


async def test_delayed_close_timeout_zero_closes_at_once(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, delayed_close_timeout="0s"))
    raw = await _reply_then_eof(p, b"GET / HTTP/1.2\r\nhost: app\r\n\r\n", close_first=False)
    assert raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert p.counter("http.ingress_http.downstream_cx_delayed_close_timeout") == 0


async def test_a_complete_request_with_connection_close_is_closed_at_once(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    """Envoy delays only closes where the client may still be sending (2f in the facts)."""
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, delayed_close_timeout="30s"))
    raw = await _reply_then_eof(p, request(headers=CLOSE), close_first=False)
    assert parse_responses(raw)[0].status == 200


async def test_delayed_close_abandons_a_reply_the_client_never_reads(
    proxy: StartProxy, scripted: StartScripted
) -> None:
    """A response cut short (route timeout mid-body) to a client that reads nothing: the
    delayed close cannot flush, makes no progress, and aborts: nothing is held forever."""
    body = b"x" * (32 * 1024 * 1024)

    async def answer(req: ScriptedRequest) -> None:
        if req.target != b"/never-read":
            await echo_path(req)
            return
        req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (2 * len(body)))
        req.conn.write(body)
        with contextlib.suppress(ConnectionError):
            await req.conn.writer.drain()
        await asyncio.sleep(10)  # never finishes the body

    up = await scripted(answer)
    routes = [
        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0.5s"}},
    ]
    text = bootstrap(
        [cluster("app", [up.address])], routes=routes, hcm={"delayed_close_timeout": "0.3s"}
    )
    p = await proxy(text)
    _, writer = await asyncio.open_connection(*p.address)
    try:
        writer.write(request(path="/never-read"))  # and never read
        async with asyncio.timeout(10.0):
            while p.counter("http.ingress_http.downstream_cx_delayed_close_timeout") == 0:
                await asyncio.sleep(0.05)
            while p.gauge("http.ingress_http.downstream_cx_active") != 0:
                await asyncio.sleep(0.05)
        assert p.counter("http.ingress_http.rq_reset_after_downstream_response_started") == 1
    finally:
        writer.close()
    await p.assert_healthy()


# --- stricter than Envoy, on purpose (README) --------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nhost: app\r\nx-a: 1\rx-b: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: app\r\nx-a: 1\nx-b: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        b'1;a="\r\n"\r\nz\r\n0\r\n\r\n',
        b"GET\t/ HTTP/1.1\r\nhost: app\r\n\r\n",
        b"GET / HTTP/1.1 \r\nhost: app\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: app\r\nhost: other.test\r\n\r\n",
    ],
    ids=[
        "bare-cr",
        "bare-lf",
        "chunk-ext-quoted-crlf",
        "tab-in-request-line",
        "space-after-version",
        "two-hosts",
    ],
)
async def test_ambiguous_requests_are_400_where_envoy_forwards_them(
    proxy: StartProxy, scripted: StartScripted, data: bytes
) -> None:
    up = await scripted(echo_path)
    p = await proxy(two_hosts(up.address, delayed_close_timeout="0.1s"))
    raw = await raw_exchange(*p.address, data)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert up.requests == []  # nothing reached the upstream
    await p.assert_healthy()
