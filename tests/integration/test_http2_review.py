"""Regression tests for what a review of the HTTP/2 code found: requests an HTTP/2 client could
use to smuggle a second request to an HTTP/1 pod (a content-length the body does not have, a
space in :path, a method that is no token), a mirror misframing the body, a response cut short
when the client's END_STREAM came after it, a pod's malformed :status, a pod that allows no
streams, and a connection whose peer stopped reading. Each runs on raw frames
(integration.h2raw) against podproxy in-process, with a recording HTTP/1 pod."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from integration.backends import Backend
from integration.h2raw import H2Raw, request_fields
from integration.test_proxy_http import StartProxy, bootstrap, cluster, proxy

__all__ = ["proxy"]  # the fixture, re-exported so pytest finds it here

PROTOCOL_ERROR = int(ErrorCodes.PROTOCOL_ERROR)


async def _pod_and_proxy(proxy: StartProxy, backend: Any, **hcm: Any) -> tuple[Backend, Any]:
    b: Backend = await backend()
    pp = await proxy(bootstrap([cluster("app", [b.address])], hcm=hcm or None))
    return b, pp


async def _refused(port: int, send: Any) -> bool:
    """Whether what `send(conn)` puts on stream 1 of a new connection is refused as
    malformed: the stream reset (PROTOCOL_ERROR) or, where h2 judges it a connection error
    (Envoy's default for an invalid message), the connection closed with that GOAWAY."""
    async with await H2Raw.open(port) as c:
        send(c)
        a = await c.answer(1)
        if a.reset == PROTOCOL_ERROR:
            return True
        goaway = c.goaway
        return goaway is not None and goaway.error_code == PROTOCOL_ERROR and c.closed


def _post(length: str | list[str]) -> list[tuple[bytes, bytes]]:
    lengths = [length] if isinstance(length, str) else length
    return request_fields("/echo", method="POST", extra=[("content-length", v) for v in lengths])


async def test_content_length_the_body_does_not_have_is_refused(
    proxy: StartProxy, backend: Any
) -> None:
    b, pp = await _pod_and_proxy(proxy, backend)

    def ended_on_headers(c: H2Raw) -> None:
        c.headers(1, _post("60"), end=True)  # no body can follow

    def short_then_trailers(c: H2Raw) -> None:
        c.headers(1, _post("10"), end=False)
        c.data(1, b"abc")
        c.headers(1, [(b"x-t", b"1")], end=True)

    def short_then_end(c: H2Raw) -> None:
        c.headers(1, _post("10"), end=False)
        c.data(1, b"abc", end=True)

    def not_a_number(c: H2Raw) -> None:
        c.headers(1, _post("+3"), end=False)

    def two_lengths(c: H2Raw) -> None:
        c.headers(1, _post(["3", "4"]), end=False)

    cases = [ended_on_headers, short_then_trailers, short_then_end, not_a_number, two_lengths]
    refused = [await _refused(pp.port, case) for case in cases]
    assert refused == [True] * len(cases)
    async with await H2Raw.open(pp.port) as c:
        ok = await c.get(1, "/echo/ok")
    assert ok.status == 200
    # No short request was ever completed at the pod: a head that went up (the body comes
    # after it) had its connection closed before its body was whole, never reused.
    broken = [r for r in b.requests if r.path == "/echo"]
    (good,) = [r for r in b.requests if r.path == "/echo/ok"]
    assert all(r.body_length < 10 and r.connection != good.connection for r in broken)
    assert pp.gauge("http.ingress_http.downstream_rq_active") == 0
    assert pp.errors == []


async def test_request_line_the_http1_side_would_read_differently_is_reset(
    proxy: StartProxy, backend: Any
) -> None:
    b, pp = await _pod_and_proxy(proxy, backend)
    bad = [
        request_fields("/echo", method="GET /admin?"),
        request_fields("/echo HTTP/1.1\tx"),
        request_fields("/echo x"),
        request_fields("echo"),
        request_fields("*"),  # * is for OPTIONS only
        request_fields("/echo", authority="app /x"),
    ]
    async with await H2Raw.open(pp.port) as c:
        answers = []
        for i, fields in enumerate(bad):
            c.headers(1 + 2 * i, fields)
            answers.append(await c.answer(1 + 2 * i))
        ok = await c.get(101, "/echo/ok")
    assert [a.reset for a in answers] == [PROTOCOL_ERROR] * len(bad)
    assert ok.status == 200
    assert [r.path for r in b.requests] == ["/echo/ok"]
    assert pp.errors == []


async def test_response_waiting_for_window_survives_the_clients_late_end(
    proxy: StartProxy,
) -> None:
    """The answer is complete (a direct response) before the client's END_STREAM, and most
    of it waits for the client's window: the late END_STREAM must not drop it."""
    body = "x" * 200_000
    text = bootstrap(
        [cluster("app", [])],
        routes=[
            {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": body}},
            }
        ],
    )
    pp = await proxy(text)
    async with await H2Raw.open(pp.port) as c:
        c.headers(1, request_fields("/", method="POST"), end=False)
        await c.wait_for(lambda: len(c.streams.get(1, _EMPTY).body) >= 65_535 - 1)
        c.data(1, b"", end=True)
        await asyncio.sleep(0.05)
        for _ in range(4):
            c.window_update(1, 65_535)
            c.window_update(0, 65_535)
        a = await c.answer(1)
    assert a.ended and len(a.body) == 200_000
    assert pp.errors == []


class _Empty:
    body = b""


_EMPTY: Any = _Empty()


async def _h2_pod(handler: Any) -> tuple[asyncio.Server, int]:
    """A raw h2c pod on 127.0.1.x whose requests `handler(conn, event)` answers."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        handler.setup(conn)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        handler(conn, event)
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.1.250", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_malformed_status_from_an_http2_pod_is_a_502(proxy: StartProxy) -> None:
    class Bad:
        def setup(self, conn: Any) -> None:
            pass

        def __call__(self, conn: Any, event: Any) -> None:
            conn.send_headers(event.stream_id, [(b":status", b"2xx")])
            conn.send_data(event.stream_id, b"RAWBODY", end_stream=True)

    server, port = await _h2_pod(Bad())
    try:
        pp = await proxy(
            bootstrap([cluster("app", [("127.0.1.250", port)], http2_protocol_options={})])
        )
        reader, writer = await asyncio.open_connection(*pp.address)
        writer.write(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 502 ")
        assert b"RAWBODY" not in raw
        assert pp.errors == []
    finally:
        server.close()


async def test_a_pod_that_allows_no_streams_is_not_reconnected_in_a_loop(
    proxy: StartProxy,
) -> None:
    class NoStreams:
        connections = 0

        def setup(self, conn: Any) -> None:
            NoStreams.connections += 1
            conn.local_settings = h2.settings.Settings(
                client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: 0}
            )

        def __call__(self, conn: Any, event: Any) -> None:
            raise AssertionError("no stream may come")

    server, port = await _h2_pod(NoStreams())
    try:
        pp = await proxy(
            bootstrap([cluster("app", [("127.0.1.250", port)], http2_protocol_options={})])
        )
        reader, writer = await asyncio.open_connection(*pp.address)
        writer.write(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 503 ")
        assert NoStreams.connections <= 2
        assert pp.errors == []
    finally:
        server.close()


async def test_mirror_to_http1_of_a_chunked_request_to_an_http2_pod(
    proxy: StartProxy, backend: Any
) -> None:
    """The primary cluster speaks HTTP/2 (the body goes unframed), the mirror HTTP/1.1: the
    mirror still gets the body in chunks, so a body that looks like requests stays a body."""

    class Ok:
        def setup(self, conn: Any) -> None:
            pass

        def __call__(self, conn: Any, event: Any) -> None:
            conn.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)

    server, port = await _h2_pod(Ok())
    try:
        mirror: Backend = await backend()
        route = {
            "match": {"prefix": "/"},
            "route": {"cluster": "app", "request_mirror_policies": [{"cluster": "mirror"}]},
        }
        text = bootstrap(
            [
                cluster("app", [("127.0.1.250", port)], http2_protocol_options={}),
                cluster("mirror", [mirror.address]),
            ],
            routes=[route],
        )
        pp = await proxy(text)
        body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: evil\r\n\r\n"
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        reader, writer = await asyncio.open_connection(*pp.address)
        writer.write(
            b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n\r\n" + chunked
        )
        raw = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200 ")

        async def mirrored() -> None:
            while not mirror.requests:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(mirrored(), 5)
        await asyncio.sleep(0.2)
        assert [r.path for r in mirror.requests] == ["/upload"]
        assert mirror.requests[0].body_length == len(body)
        assert pp.errors == []
    finally:
        server.close()
