"""Raw HTTP/2 peers on the `h2` library, for tests that must see every header and frame.

`h2_request` is a prior-knowledge (h2c) client for one request on a new connection: it
records the interim (1xx) heads, the response head, the body, the trailers and a RST_STREAM,
exactly as they arrived. `H2Pod` is an h2c server that records every request it got (header
list in order, body, trailers) and answers by the first path segment (table in its
docstring). Both respect flow control both ways, so bodies of any size go through; every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError

from integration.backends import pattern_bytes

Headers = list[tuple[bytes, bytes]]

MAX_BYTES = 16 * 1024 * 1024
MAX_SLEEP = 10.0


class _Peer:
    """One HTTP/2 connection on asyncio streams: a reader task dispatching `h2` events, and
    a body sender that waits for window. Subclasses handle the events."""

    def __init__(self, client: bool, reader: asyncio.StreamReader, writer: Any) -> None:
        config = H2Configuration(client_side=client, header_encoding=None)
        self.h2 = H2Connection(config=config)
        self.reader = reader
        self.writer = writer
        self.window_opened = asyncio.Event()
        self.lost = asyncio.Event()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                try:
                    events = self.h2.receive_data(data)
                except ProtocolError:
                    self.flush()
                    break
                for event in events:
                    if isinstance(event, ev.DataReceived):
                        # Consumed at once: hand the window back as it arrives.
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, ev.WindowUpdated | ev.RemoteSettingsChanged):
                        self.window_opened.set()
                    self.on_event(event)
                self.flush()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.lost.set()
            self.on_lost()

    def on_event(self, event: ev.Event) -> None:
        raise NotImplementedError

    def on_lost(self) -> None:
        pass

    async def send_body(self, sid: int, body: bytes, end: bool, timeout: float = 10.0) -> None:
        """`body` on stream `sid` as the windows allow (END_STREAM after it if `end`)."""
        view = memoryview(body)
        async with asyncio.timeout(timeout):
            while view:
                window = min(
                    self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size
                )
                if window <= 0:
                    self.window_opened.clear()
                    if self.lost.is_set():
                        raise ConnectionError("lost while sending")
                    await self.window_opened.wait()
                    continue
                piece, view = view[:window], view[window:]
                self.h2.send_data(sid, bytes(piece), end_stream=end and not view)
                self.flush()
                await self.writer.drain()
            if end and not body:
                self.h2.end_stream(sid)
                self.flush()


# --- the client ---------------------------------------------------------------------------


@dataclass
class H2Answer:
    """What came back on one stream, as it came."""

    interim: list[Headers] = field(default_factory=list)  # 1xx heads
    headers: Headers = field(default_factory=list)  # the final head, :status first
    body: bytes = b""
    trailers: Headers | None = None
    reset: ErrorCodes | int | None = None  # RST_STREAM's code
    ended: bool = False  # END_STREAM arrived
    data_frames: int = 0  # DATA frames (with or without payload)

    @property
    def status(self) -> int:
        return int(dict(self.headers).get(b":status", b"0"))

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class _Client(_Peer):
    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        super().__init__(True, reader, writer)
        self.answer = H2Answer()
        self.done = asyncio.Event()
        self.sid = 1

    def on_event(self, event: ev.Event) -> None:
        a = self.answer
        if getattr(event, "stream_id", self.sid) != self.sid:
            return
        if isinstance(event, ev.InformationalResponseReceived):
            a.interim.append(list(event.headers or []))
        elif isinstance(event, ev.ResponseReceived):
            a.headers = list(event.headers or [])
        elif isinstance(event, ev.DataReceived):
            a.body += event.data or b""
            a.data_frames += 1
        elif isinstance(event, ev.TrailersReceived):
            a.trailers = list(event.headers or [])
        elif isinstance(event, ev.StreamEnded):
            a.ended = True
            self.done.set()
        elif isinstance(event, ev.StreamReset):
            a.reset = event.error_code
            self.done.set()

    def on_lost(self) -> None:
        self.done.set()


async def h2_request(
    port: int,
    headers: Sequence[tuple[str, str]],
    body: bytes | None = None,
    *,
    trailers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> H2Answer:
    """One request over h2c prior knowledge to 127.0.0.1:`port`, on a new connection.

    `headers` are sent as given (pseudo-headers first, as the caller lists them); `body`
    None ends the stream with the HEADERS frame, else DATA follows (then `trailers`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = _Client(reader, writer)
    task = asyncio.ensure_future(peer.read_loop())
    try:
        async with asyncio.timeout(timeout):
            peer.h2.initiate_connection()
            fields = [(k.encode(), v.encode()) for k, v in headers]
            peer.h2.send_headers(1, fields, end_stream=body is None)
            peer.flush()
            if body is not None:
                await peer.send_body(1, body, end=not trailers, timeout=timeout)
                if trailers:
                    peer.h2.send_headers(
                        1, [(k.encode(), v.encode()) for k, v in trailers], end_stream=True
                    )
                    peer.flush()
            await peer.done.wait()
        return peer.answer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()


# --- the pod ------------------------------------------------------------------------------


@dataclass
class PodRequest:
    """One request as the pod received it."""

    headers: Headers  # in order, pseudo-headers included
    body: bytes = b""
    trailers: Headers | None = None
    reset: bool = False  # the proxy reset the stream

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def path(self) -> str:
        return (self.header(b":path") or b"").decode()


class _PodConn(_Peer):
    def __init__(self, pod: H2Pod, reader: asyncio.StreamReader, writer: Any) -> None:
        super().__init__(False, reader, writer)
        self.pod = pod
        self.requests: dict[int, PodRequest] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RequestReceived):
            req = PodRequest(list(event.headers or []))
            self.requests[event.stream_id] = req
            self.pod.requests.append(req)
        elif isinstance(event, ev.DataReceived):
            req = self.requests[event.stream_id]
            req.body += event.data or b""
        elif isinstance(event, ev.TrailersReceived):
            self.requests[event.stream_id].trailers = list(event.headers or [])
        elif isinstance(event, ev.StreamReset):
            if event.stream_id in self.requests:
                self.requests[event.stream_id].reset = True
        elif isinstance(event, ev.StreamEnded) and event.stream_id in self.requests:
            # h2 reports END_STREAM on its own event, also when it came on HEADERS.
            task = asyncio.ensure_future(self.answer(event.stream_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def on_lost(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def answer(self, sid: int) -> None:
        req = self.requests[sid]
        segments = req.path.partition("?")[0].strip("/").split("/")
        with contextlib.suppress(StreamClosedError, ProtocolError, ConnectionError, TimeoutError):
            await self.pod.behave(self, sid, req, segments[0], segments[1:])

    def respond(self, sid: int, status: int, fields: Headers, end: bool) -> None:
        self.h2.send_headers(sid, [(b":status", b"%d" % status), *fields], end_stream=end)
        self.flush()


class H2Pod:
    """An h2c server on `host` (port 0 picks one); the first path segment picks the answer.

    /echo                 200, JSON {headers: [[name, value]...] in order, body_length,
                          trailers}, with content-length
    /status/<code>        that status; no body for 204 and 304 (content-length on neither)
    /info/<code>          that 1xx head first, then 200 "after"
    /bytes/<n>            n pattern bytes with content-length
    /nolength/<n>         n pattern bytes, no content-length
    /empty-data           200 without length: an empty DATA frame, text, an empty DATA frame
                          with END_STREAM
    /trailers             200 "body" then trailers x-trailer: t1, grpc-status: 0
    /trailers-only        200 HEADERS with END_STREAM carrying grpc-status 7 (no DATA)
    /reset-mid            200 with content-length 1000, 11 bytes, then RST_STREAM
    /reset[/<code>]       RST_STREAM (INTERNAL_ERROR, or the code given) instead of an answer
    /sleep/<s>            waits, then 200
    anything else         404
    """

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[PodRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_PodConn] = set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _PodConn(self, reader, writer)
        self._conns.add(conn)
        conn.h2.initiate_connection()
        conn.flush()
        try:
            await conn.read_loop()
        finally:
            self._conns.discard(conn)
            writer.close()

    async def behave(
        self, c: _PodConn, sid: int, req: PodRequest, what: str, args: list[str]
    ) -> None:
        text = b"text/plain"
        if what == "echo":
            body = json.dumps(
                {
                    "headers": [[k.decode(), v.decode()] for k, v in req.headers],
                    "body_length": len(req.body),
                    "trailers": [[k.decode(), v.decode()] for k, v in req.trailers or []],
                }
            ).encode()
            fields = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            c.respond(sid, 200, fields, False)
            await c.send_body(sid, body, True)
        elif what == "status":
            code = int(args[0])
            if code in (204, 304):
                c.respond(sid, code, [(b"x-pod", b"h2")], True)
            else:
                body = b"status %d\n" % code
                c.respond(
                    sid,
                    code,
                    [(b"content-type", text), (b"content-length", b"%d" % len(body))],
                    False,
                )
                await c.send_body(sid, body, True)
        elif what == "info":
            c.h2.send_headers(sid, [(b":status", args[0].encode()), (b"x-info", b"1")])
            c.flush()
            c.respond(sid, 200, [(b"content-type", text), (b"content-length", b"6")], False)
            await c.send_body(sid, b"after\n", True)
        elif what in ("bytes", "nolength"):
            n = min(int(args[0]), MAX_BYTES)
            fields = [(b"content-type", b"application/octet-stream")]
            if what == "bytes":
                fields.append((b"content-length", b"%d" % n))
            head = req.header(b":method") == b"HEAD"
            c.respond(sid, 200, fields, head)
            if not head:
                await c.send_body(sid, pattern_bytes(n), True)
        elif what == "empty-data":
            c.respond(sid, 200, [(b"content-type", text)], False)
            c.h2.send_data(sid, b"")
            c.flush()
            await c.send_body(sid, b"after an empty DATA frame\n", False)
            c.h2.send_data(sid, b"", end_stream=True)
            c.flush()
        elif what == "trailers":
            c.respond(sid, 200, [(b"content-type", b"application/grpc")], False)
            await c.send_body(sid, b"body", False)
            c.h2.send_headers(sid, [(b"x-trailer", b"t1"), (b"grpc-status", b"0")], end_stream=True)
            c.flush()
        elif what == "trailers-only":
            fields = [
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"7"),
                (b"grpc-message", b"nope"),
            ]
            c.respond(sid, 200, fields, True)
        elif what == "reset-mid":
            c.respond(sid, 200, [(b"content-type", text), (b"content-length", b"1000")], False)
            await c.send_body(sid, b"part of it\n", False)
            await asyncio.sleep(0.1)  # the proxy has the head and body before the reset
            c.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            c.flush()
        elif what == "reset":
            code = int(args[0]) if args else ErrorCodes.INTERNAL_ERROR
            c.h2.reset_stream(sid, code)
            c.flush()
        elif what == "sleep":
            await asyncio.sleep(min(float(args[0]), MAX_SLEEP))
            c.respond(sid, 200, [(b"content-length", b"6")], False)
            await c.send_body(sid, b"slept\n", True)
        else:
            body = b"no behaviour\n"
            c.respond(
                sid, 404, [(b"content-type", text), (b"content-length", b"%d" % len(body))], False
            )
            await c.send_body(sid, body, True)
