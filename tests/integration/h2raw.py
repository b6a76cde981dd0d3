"""A raw HTTP/2 client for conformance tests: frames built by hand (hyperframe, hpack), any
bytes at all on a plain socket, and every frame the server sends recorded and decoded.

Unlike a real client (h2, nghttp2) it never refuses to send what RFC 9113 forbids, which is
the point: a test sends the broken sequence and reads what the proxy answers (GOAWAY and its
code, RST_STREAM and its code, a response) and whether it closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Fields = Sequence[tuple[str | bytes, str | bytes]]


def _b(v: str | bytes) -> bytes:
    return v.encode() if isinstance(v, str) else v


def request_fields(
    path: str = "/", *, method: str = "GET", authority: str = "app", extra: Fields = ()
) -> list[tuple[bytes, bytes]]:
    """A well-formed request header list, then `extra` (as given, any case, any name)."""
    base: list[tuple[bytes, bytes]] = [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
    return base + [(_b(k), _b(v)) for k, v in extra]


@dataclass
class Answer:
    """A stream's frames as the client saw them."""

    headers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code

    @property
    def status(self) -> int | None:
        for block in self.headers:
            for k, v in block:
                if k == b":status":
                    return int(v)
        return None


class H2Raw:
    """One client connection. `frames` keeps every frame received, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self.streams: dict[int, Answer] = {}
        self.closed = False
        self.sent_bytes = 0
        self.received_bytes = 0
        self.auto_ack = True  # answer the server's SETTINGS with an ACK
        self._buf = bytearray()
        self._block: list[bytes] = []  # a header block still waiting for CONTINUATION
        self._block_sid = 0
        self._changed = asyncio.Event()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        preface: bool = True,
        settings: dict[int, int] | None = None,
        auto_ack: bool = True,
    ) -> Self:
        """Connect (and send the preface and SETTINGS). `auto_ack` False leaves the server's
        SETTINGS unacknowledged: nothing more is sent unasked, so a server that closes
        after an error reads everything first (and its frames arrive rather than a reset)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = cls(reader, writer)
        conn.auto_ack = auto_ack
        if preface:
            conn.send_raw(PREFACE)
            conn.send(SettingsFrame(0, settings=settings or {}))
        return conn

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # sending ------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.sent_bytes += len(data)
            self.writer.write(data)

    def send(self, *frames: Frame) -> None:
        self.send_raw(b"".join(f.serialize() for f in frames))

    def header_block(self, fields: Fields) -> bytes:
        return bytes(self.encoder.encode([(_b(k), _b(v)) for k, v in fields]))

    def headers(self, sid: int, fields: Fields, *, end: bool = True) -> None:
        frame = HeadersFrame(sid, self.header_block(fields))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def data(self, sid: int, data: bytes, *, end: bool = False) -> None:
        frame = DataFrame(sid, data)
        if end:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def rst(self, sid: int, code: int = 8) -> None:
        self.send(RstStreamFrame(sid, error_code=code))

    def window_update(self, sid: int, increment: int) -> None:
        self.send(WindowUpdateFrame(sid, window_increment=increment))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    # receiving ----------------------------------------------------------------------------
    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await self.reader.read(65536):
                self.received_bytes += len(chunk)
                self._buf.extend(chunk)
                self._parse()
                self._changed.set()
        self.closed = True
        self._changed.set()

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
            if len(buf) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(buf[9 : 9 + length])))
            del buf[: 9 + length]
            self.frames.append(frame)
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags and self.auto_ack:
                self.send(SettingsFrame(0, flags=["ACK"]))
            return
        sid = frame.stream_id
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = []
                self._block_sid = sid
            self._block.append(frame.data)
            if "END_HEADERS" in frame.flags:
                answer = self.streams.setdefault(self._block_sid, Answer())
                answer.headers.append(
                    [(_b(k), _b(v)) for k, v in self.decoder.decode(b"".join(self._block))]
                )
            if "END_STREAM" in frame.flags:
                self.streams.setdefault(sid, Answer()).ended = True
        elif isinstance(frame, DataFrame):
            answer = self.streams.setdefault(sid, Answer())
            answer.body += frame.data
            if "END_STREAM" in frame.flags:
                answer.ended = True
        elif isinstance(frame, RstStreamFrame):
            self.streams.setdefault(sid, Answer()).reset = frame.error_code

    async def wait_for(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Until `done()` holds (True) or the connection closed or `timeout` passed (False
        unless `done()` holds then)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if self.closed:
                return done()
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return done()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def answer(self, sid: int, timeout: float = 5.0) -> Answer:
        """The stream's answer once it ended or was reset (or the connection went)."""

        def finished() -> bool:
            a = self.streams.get(sid)
            return a is not None and (a.ended or a.reset is not None)

        await self.wait_for(finished, timeout)
        return self.streams.get(sid) or Answer()

    async def goaway_or_close(self, timeout: float = 5.0) -> GoAwayFrame | None:
        """Wait for a GOAWAY and the close that follows (or just the close)."""
        await self.wait_for(lambda: self.closed, timeout)
        return self.goaway

    @property
    def goaway(self) -> GoAwayFrame | None:
        found = [f for f in self.frames if isinstance(f, GoAwayFrame)]
        return found[-1] if found else None

    @property
    def goaways(self) -> list[GoAwayFrame]:
        return [f for f in self.frames if isinstance(f, GoAwayFrame)]

    def pings(self) -> list[PingFrame]:
        return [f for f in self.frames if isinstance(f, PingFrame)]

    async def get(self, sid: int, path: str = "/", timeout: float = 5.0) -> Answer:
        """One GET on stream `sid` and its answer."""
        self.headers(sid, request_fields(path))
        return await self.answer(sid, timeout)
