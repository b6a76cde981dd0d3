"""A tiny RFC 6455 WebSocket echo server and client for the upgrade tests.

`EchoServer` answers an upgrade request with `101 Switching Protocols` (RFC 6455 §4.2.2: the
`Sec-WebSocket-Accept` of the client's key) and then echoes every data frame back, unmasked;
a close frame is answered with a close frame and the connection closed. When the client
half-closes, the server sends one last text frame, `eof-seen`, and closes: a test can tell
whether the proxy passed the half-close on and kept the other direction open. It records the
head of every request it gets. A request without `upgrade` gets a plain `200 plain`; one for a
path under `/refuse` gets `400 refused`, as a server that declines the upgrade; one whose path
has `/hang` in it gets no answer at all. After the 101, `/sink` reads nothing more and `/flood`
sends frames as fast as it may: the back-pressure tests.
The client side is a handshake on a raw socket plus frame encode/decode helpers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Self

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"  # RFC 6455 §1.3

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
_HEAD_LIMIT = 64 * 1024


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def frame(payload: bytes, opcode: int = OP_TEXT, *, masked: bool = True) -> bytes:
    """One final frame (RFC 6455 §5.2); a client's frames are masked."""
    first = 0x80 | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame's opcode and (unmasked) payload."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


def parse_head(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The start line and the header fields (names lower-cased) of a head."""
    lines = raw.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
    return lines[0], fields


@dataclass
class Seen:
    """One request head the server got, and what it did."""

    start: bytes
    headers: list[tuple[bytes, bytes]]
    frames: list[bytes] = field(default_factory=list)
    half_closed: bool = False

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class EchoServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.seen: list[Seen] = []
        self.closed = 0  # upgraded connections that ended
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

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
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # close(): ended quietly (asyncio logs a handler task that ends cancelled)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            start, headers = parse_head(raw[:-4])
            seen = Seen(start, headers)
            self.seen.append(seen)
            target = start.split(b" ")[1] if start.count(b" ") >= 2 else b"/"
            key = seen.header(b"sec-websocket-key")
            if seen.header(b"upgrade") is None or key is None:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                await writer.drain()
                continue
            if b"/hang" in target:
                await reader.read()  # never answers; waits for the proxy to close
                return
            if target.startswith(b"/refuse"):
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 7\r\n\r\nrefused")
                await writer.drain()
                continue
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: " + accept_key(key) + b"\r\n\r\n"
            )
            await writer.drain()
            if target.startswith(b"/sink"):
                await asyncio.Event().wait()  # reads nothing more: the proxy must hold back
            elif target.startswith(b"/flood"):
                chunk = frame(b"f" * 65536, OP_BINARY, masked=False)
                while True:  # until the proxy stops reading (drain waits) or closes
                    writer.write(chunk)
                    await writer.drain()
            await self._echo(reader, writer, seen)
            self.closed += 1
            return

    async def _echo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
    ) -> None:
        while True:
            try:
                opcode, payload = await read_frame(reader)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                seen.half_closed = True
                writer.write(frame(b"eof-seen", masked=False))
                await writer.drain()
                return
            seen.frames.append(payload)
            writer.write(frame(payload, opcode, masked=False))
            await writer.drain()
            if opcode == OP_CLOSE:
                return


@dataclass
class Client:
    """A client connection after its upgrade request: the response head it got."""

    status: int
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def echo(self, payload: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
        self.writer.write(frame(payload))
        await self.writer.drain()
        return await asyncio.wait_for(read_frame(self.reader), timeout)

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the proxy closes the connection (EOF or reset) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def upgrade_request(path: str = "/ws", host: str = "app", upgrade: str = "websocket") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: {upgrade}\r\n"
        f"connection: Upgrade\r\nsec-websocket-key: {key}\r\n"
        "sec-websocket-version: 13\r\n\r\n"
    ).encode()


async def connect(port: int, request: bytes, *, extra: bytes = b"", timeout: float = 5.0) -> Client:
    """Send `request` (and `extra` in the same write) and read the response head, and the
    body of a response with a content-length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_HEAD_LIMIT)
    try:
        writer.write(request + extra)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        start, headers = parse_head(raw[:-4])
        status = int(start.split(b" ")[1])
        client = Client(status, raw, headers, b"", reader, writer)
        length = client.header(b"content-length")
        if length is not None and status != 101:
            client.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
        return client
    except BaseException:
        writer.close()
        raise
