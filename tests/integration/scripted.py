"""A scripted upstream for wire-level tests: it reads requests and answers with raw bytes.

`Backend` (backends.py) answers like a well-behaved server; this one answers exactly what a
test scripts, broken framing included. Each request it reads is parsed with httptools and
handed, with the connection, to the test's `answer` coroutine, which writes whatever bytes it
likes or closes. Every byte received is recorded per connection, so a test can prove what did
(or did not) reach the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

import httptools


@dataclass(slots=True, eq=False)
class ScriptedConn:
    """One accepted connection: its number (from 0), its raw bytes, and its writer."""

    number: int
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    requests: int = 0

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class ScriptedRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    conn: ScriptedConn
    number_on_conn: int  # 0 for the first request on its connection

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


Answer = Callable[[ScriptedRequest], Awaitable[None]]


class _Parser:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.done.append((method, self._url, self._headers, bytes(self._body)))
        self._url, self._headers, self._body = b"", [], bytearray()


class ScriptedUpstream:
    """Listens on `host`; calls `answer(request)` for each complete request, in order."""

    def __init__(self, answer: Answer, host: str = "127.0.0.1") -> None:
        self.answer = answer
        self.host = host
        self.port = 0
        self.conns: list[ScriptedConn] = []
        self.requests: list[ScriptedRequest] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def received(self) -> bytes:
        """Every byte every connection received, in connection order."""
        return b"".join(bytes(c.received) for c in self.conns)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = ScriptedConn(len(self.conns), writer)
        self.conns.append(conn)
        parser = _Parser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                conn.received += data
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserError:
                    break  # what the proxy sent is not HTTP/1.1: the test sees `received`
                while parser.done:
                    method, target, headers, body = parser.done.pop(0)
                    req = ScriptedRequest(method, target, headers, body, conn, conn.requests)
                    conn.requests += 1
                    self.requests.append(req)
                    await self.answer(req)
                    if writer.is_closing():
                        return
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
