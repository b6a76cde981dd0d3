"""A scriptable HTTP/1.1 upstream for proxy tests, run in-process on the test's event loop.

The request path picks the behaviour (table in `Backend`), so one server serves many tests. Every
request is recorded in `Backend.requests` with the connection it came on, so tests can assert what
the proxy sent and whether it reused connections. Also the harness the fixtures in
tests/conftest.py are made of: addresses (`free_port`, `LoopbackAllocator`), raw-socket client
helpers (`raw_exchange`, `parse_responses`, `http_get`) and `ProxyProcess`, a podproxy subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httptools
import yaml

from podproxy.errors import ProtocolError
from podproxy.sandbox.pods import RequestHead, RequestReader

# Bounds so that a wrong path in a test cannot hang or exhaust the machine.
MAX_BYTES = 64 * 1024 * 1024
MAX_SLEEP = 60.0
MAX_SLOW_SECONDS = 10.0
SLOW_UPLOAD_SLEEP_BUDGET = 2.0  # /upload?slow=1 sleeps at most this long in total
WRITE_PIECE = 64 * 1024

PATTERN = b"abcdefghijklmnopqrstuvwxyz0123456789"


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """`n` bytes of a repeating pattern, as `/bytes`, `/chunked` and `/slow-body` send them."""
    reps = (offset + n) // len(PATTERN) + 1
    return (PATTERN * reps)[offset : offset + n]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- addresses ---------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on `host` a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LoopbackAllocator:
    """Hands each test its own block of 127.0.1.x addresses, to keep concurrent runs apart.

    Blocks of `BLOCK` addresses rotate through 127.0.1.1-127.0.1.240, starting at a point derived
    from the process id so that two pytest processes on the machine rarely share a block. A test
    that needs more (many pods) gets them past the block, from a /24 of the block's own:
    n >= BLOCK is 127.0.(16 + block index).(n - BLOCK + 1).
    """

    BLOCK = 16
    BLOCKS = 15  # 15 * 16 = 240 addresses: 127.0.1.1 .. 127.0.1.240
    EXTRA = 254  # addresses past the block: 127.0.16-30.1 .. .254

    def __init__(self) -> None:
        self._next = itertools.count(os.getpid())
        # Under pytest-xdist (`make test` runs the suite on several workers) each worker
        # takes its own share of the blocks, so two tests running at once never share one.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        self._worker = int(worker[2:]) if worker.startswith("gw") else 0
        self._workers = max(1, min(workers, self.BLOCKS))

    @property
    def share(self) -> int:
        """How many blocks this process takes turns with (all, without xdist)."""
        return self.BLOCKS // self._workers

    def block(self) -> Callable[[int], str]:
        index = self._worker + self._workers * (next(self._next) % self.share)
        base = 1 + index * self.BLOCK
        limit = self.BLOCK + self.EXTRA

        def loopback_ip(n: int = 0) -> str:
            if not 0 <= n < limit:
                raise ValueError(f"loopback_ip(n) takes 0 <= n < {limit}, got {n}")
            if n < self.BLOCK:
                return f"127.0.1.{base + n}"
            return f"127.0.{16 + index}.{n - self.BLOCK + 1}"

        return loopback_ip


# --- client helpers ----------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def json(self) -> object:
        return json.loads(self.body)


class _ResponseEvents:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[Response] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.responses.append(Response(status, self._headers, b"".join(self._body)))


def parse_responses(data: bytes) -> list[Response]:
    """All complete responses in `data`, 1xx interim responses included, in order.

    Not for answers to HEAD: the parser would take the next response as the body.
    """
    events = _ResponseEvents()
    with contextlib.suppress(httptools.HttpParserUpgrade):
        events.parser.feed_data(data)
    return events.responses


async def raw_exchange(
    host: str,
    port: int,
    data: bytes,
    *,
    timeout: float = 5.0,
    until: Callable[[bytes], bool] | None = None,
) -> bytes:
    """Send `data`, read until EOF (or until `until(received)` is true); bounded by `timeout`."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    received = bytearray()
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            while not (until and until(bytes(received))):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    finally:
        writer.close()
    return bytes(received)


class RawClient:
    """One client connection for raw-socket tests: send bytes, read parsed responses, see EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._events = _ResponseEvents()
        self._taken = 0
        self.eof = False

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float = 5.0) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read_more(self) -> None:
        chunk = await self.reader.read(65536)
        if not chunk:
            self.eof = True
            raise EOFError("connection closed by the server")
        self._events.parser.feed_data(chunk)

    async def responses(self, n: int = 1, *, timeout: float = 5.0) -> list[Response]:
        """The next `n` complete responses (1xx interim ones count); EOFError if it closes."""
        got = self._events.responses
        async with asyncio.timeout(timeout):
            while len(got) < self._taken + n:
                await self._read_more()
        out = got[self._taken : self._taken + n]
        self._taken += n
        return out

    async def response(self, *, timeout: float = 5.0) -> Response:
        return (await self.responses(1, timeout=timeout))[0]

    async def closed_by_peer(self, *, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (after any pending responses)."""
        with contextlib.suppress(EOFError, ConnectionError):
            async with asyncio.timeout(timeout):
                while True:
                    await self._read_more()
        return self.eof

    def close(self) -> None:
        self.writer.close()


async def http_get(host: str, port: int, path: str, *, timeout: float = 2.0) -> Response:
    """One GET with `connection: close`; raises OSError/TimeoutError/ValueError on failure."""
    data = await raw_exchange(
        host,
        port,
        f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n\r\n".encode(),
        timeout=timeout,
    )
    responses = [r for r in parse_responses(data) if r.status >= 200]
    if not responses:
        raise ValueError(f"no HTTP response from {host}:{port}{path}: {data[:200]!r}")
    return responses[0]


# --- the backend -------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request as the backend received it."""

    method: str
    path: str  # the request-target, query included
    headers: list[tuple[str, str]]
    http_version: str
    connection: int  # 1-based number of the connection it arrived on
    body_length: int = 0

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)


@dataclass(slots=True, eq=False)
class _Conn:
    number: int
    reader: RequestReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None


_REASONS = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Close(Exception):
    """Raised by a behaviour to end the connection without further answer."""


@dataclass(slots=True)
class _Exchange:
    head: RequestHead
    record: RecordedRequest
    conn: _Conn
    backend: Backend
    parts: list[str] = field(default_factory=list)

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self.conn.writer

    async def read_body(self, piece: int = 65536, sleep: float = 0.0) -> bytes:
        chunks = []
        slept = 0.0
        while chunk := await self.conn.reader.read_body(piece):
            chunks.append(chunk)
            self.record.body_length += len(chunk)
            if sleep and slept < SLOW_UPLOAD_SLEEP_BUDGET:
                await asyncio.sleep(sleep)
                slept += sleep
        return b"".join(chunks)

    def head_bytes(
        self, status: int, headers: Iterable[tuple[str, str]] = (), *, close: bool = False
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines.append(f"x-backend: {self.backend.name}")
        lines.extend(f"{n}: {v}" for n, v in headers)
        if close or not self.head.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_type: str = "text/plain",
    ) -> None:
        hdrs = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        self.writer.write(self.head_bytes(status, hdrs))
        if self.head.method != "HEAD":
            await self.write_body(body)
        await self.writer.drain()

    async def write_body(self, body: bytes) -> None:
        for i in range(0, len(body), WRITE_PIECE):
            self.writer.write(body[i : i + WRITE_PIECE])
            await self.writer.drain()

    async def respond_json(self, status: int, obj: object) -> None:
        body = (json.dumps(obj, indent=1) + "\n").encode()
        await self.respond(status, body, content_type="application/json")


Behaviour = Callable[[_Exchange, list[str]], Awaitable[None]]


async def _echo(ex: _Exchange, args: list[str]) -> None:
    body = await ex.read_body()
    await ex.respond_json(
        200,
        {
            "method": ex.head.method,
            "path": ex.head.target,
            "http_version": ex.head.http_version,
            "headers": [list(h) for h in ex.head.headers],
            "body_length": len(body),
            "body_sha256": sha256(body),
            "connection": ex.conn.number,
        },
    )


def _int_arg(args: list[str], i: int, default: int | None = None) -> int:
    try:
        return int(args[i])
    except (IndexError, ValueError):
        if default is None:
            raise ProtocolError(f"expected an integer path segment at {i}") from None
        return default


async def _status(ex: _Exchange, args: list[str]) -> None:
    code = _int_arg(args, 0)
    await ex.read_body()
    if code < 200 or code > 999:
        raise ProtocolError(f"/status/{code}: use /info/<code> for 1xx")
    if code in (204, 304):
        # RFC 9110 §8.6: no content-length in a 204; a 304 has no body either.
        ex.writer.write(ex.head_bytes(code))
        await ex.writer.drain()
        return
    await ex.respond(code, f"status {code}\n".encode())


async def _info(ex: _Exchange, code: int) -> None:
    await ex.read_body()
    extra = [("link", "</style.css>; rel=preload")] if code == 103 else []
    lines = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Informational')}"]
    lines.extend(f"{n}: {v}" for n, v in extra)
    ex.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await ex.respond(200, f"after {code}\n".encode())


async def _info100(ex: _Exchange, args: list[str]) -> None:
    await _info(ex, 103)


async def _info_code(ex: _Exchange, args: list[str]) -> None:
    code = _int_arg(args, 0)
    if not 100 <= code <= 199 or code == 101:
        raise ProtocolError(f"/info/{code}: expected a 1xx other than 101")
    await _info(ex, code)


async def _bytes(ex: _Exchange, args: list[str]) -> None:
    n = min(_int_arg(args, 0), MAX_BYTES)
    await ex.read_body()
    await ex.respond(200, pattern_bytes(n), content_type="application/octet-stream")


async def _chunked(ex: _Exchange, args: list[str]) -> None:
    n = min(_int_arg(args, 0), MAX_BYTES)
    chunks = max(_int_arg(args, 1, 1), 1)
    await ex.read_body()
    w = ex.writer
    w.write(
        ex.head_bytes(
            200,
            [("content-type", "application/octet-stream"), ("transfer-encoding", "chunked")],
        )
    )
    if ex.head.method == "HEAD":
        await w.drain()
        return
    size, rest = divmod(n, chunks)
    sent = 0
    for i in range(chunks):
        piece = size + (1 if i < rest else 0)
        if piece == 0:
            continue
        w.write(b"%x\r\n%s\r\n" % (piece, pattern_bytes(piece, sent)))
        sent += piece
        await w.drain()
    w.write(b"0\r\n\r\n")
    await w.drain()


async def _slow_body(ex: _Exchange, args: list[str]) -> None:
    n = min(_int_arg(args, 0), MAX_BYTES)
    duration = min(float(ex.head.query.get("duration", ["1.0"])[0]), MAX_SLOW_SECONDS)
    await ex.read_body()
    pieces = 10 if n >= 10 else max(n, 1)
    ex.writer.write(
        ex.head_bytes(
            200, [("content-type", "application/octet-stream"), ("content-length", str(n))]
        )
    )
    await ex.writer.drain()
    size, rest = divmod(n, pieces)
    sent = 0
    for i in range(pieces):
        piece = size + (1 if i < rest else 0)
        await asyncio.sleep(duration / pieces)
        ex.writer.write(pattern_bytes(piece, sent))
        sent += piece
        await ex.writer.drain()


async def _sleep(ex: _Exchange, args: list[str]) -> None:
    try:
        seconds = min(max(float(args[0]), 0.0), MAX_SLEEP)
    except (IndexError, ValueError):
        raise ProtocolError("/sleep/<seconds>") from None
    await ex.read_body()
    await asyncio.sleep(seconds)
    await ex.respond(200, f"slept {seconds}\n".encode())


async def _garbage(ex: _Exchange, args: list[str]) -> None:
    ex.writer.write(b"this is not HTTP at all\r\n\xff\xfe\x00\r\n\r\n")
    await ex.writer.drain()
    raise _Close


async def _close_before_headers(ex: _Exchange, args: list[str]) -> None:
    raise _Close


async def _close_mid_body(ex: _Exchange, args: list[str]) -> None:
    ex.writer.write(ex.head_bytes(200, [("content-length", "1000")]) + pattern_bytes(10))
    await ex.writer.drain()
    raise _Close


async def _close_after_response(ex: _Exchange, args: list[str]) -> None:
    await ex.read_body()
    ex.writer.write(ex.head_bytes(200, [("content-length", "6")], close=True) + b"closed")
    await ex.writer.drain()
    raise _Close


async def _close_delimited(ex: _Exchange, args: list[str]) -> None:
    await ex.read_body()
    ex.writer.write(ex.head_bytes(200, close=True) + b"body until close")
    await ex.writer.drain()
    raise _Close


async def _upload(ex: _Exchange, args: list[str]) -> None:
    slow = ex.head.query.get("slow", ["0"])[0] == "1"
    body = await ex.read_body(piece=1024, sleep=0.01) if slow else await ex.read_body()
    await ex.respond_json(200, {"length": len(body), "sha256": sha256(body)})


async def _expect(ex: _Exchange, args: list[str]) -> None:
    expect = ex.head.header("expect")
    if ex.head.expects_continue:
        ex.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await ex.writer.drain()
    body = await ex.read_body()
    await ex.respond_json(200, {"length": len(body), "sha256": sha256(body), "expect": expect})


async def _response_headers(ex: _Exchange, args: list[str]) -> None:
    await ex.read_body()
    extra = [(k, v) for k, vs in ex.head.query.items() for v in vs]
    await ex.respond(200, b"headers\n", extra)


BEHAVIOURS: dict[str, Behaviour] = {
    "echo": _echo,
    "status": _status,
    "info100": _info100,
    "info": _info_code,
    "bytes": _bytes,
    "chunked": _chunked,
    "slow-body": _slow_body,
    "sleep": _sleep,
    "garbage": _garbage,
    "close-before-headers": _close_before_headers,
    "close-mid-body": _close_mid_body,
    "close-after-response": _close_after_response,
    "close-delimited": _close_delimited,
    "upload": _upload,
    "expect": _expect,
    "response-headers": _response_headers,
}


class Backend:
    """A test upstream on `host:port` (port 0 picks one); the first path segment picks what it does.

    /echo[/...]                 200, JSON: method, path, http_version, headers [[name, value]...],
                                body_length, body_sha256, connection
    /status/<code>              that status (204 and 304 without body)
    /info100                    `103 Early Hints` interim, then 200 (`/info/<code>` for any 1xx)
    /bytes/<n>                  n pattern bytes with content-length
    /chunked/<n>/<chunks>       n pattern bytes in `chunks` chunks
    /slow-body/<n>?duration=s   content-length n, sent in 10 pieces over `duration` (default 1 s)
    /sleep/<seconds>            waits, then 200
    /garbage                    non-HTTP bytes, then close
    /close-before-headers       closes without answering
    /close-mid-body             content-length 1000, 10 bytes, close
    /close-after-response       200 with `connection: close`, then close
    /close-delimited            200 with no length: the body ends when the backend closes
    /upload[?slow=1]            reads the body (slowly: 1 KiB pieces), JSON {length, sha256}
    /expect                     sends `100 Continue` if asked, reads the body, JSON {length, ...}
    /response-headers?k=v&...   200 carrying the given response headers
    anything else               404
    """

    def __init__(self, host: str = "127.0.1.1", port: int = 0, *, name: str = "backend") -> None:
        self.host = host
        self.port = port
        self.name = name
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return (
            f"<Backend {self.name} {self.host}:{self.port} requests={len(self.requests)} "
            f"connections={self.connections_opened} open={len(self._conns)}>"
        )

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def reset(self) -> None:
        """Forget recorded requests and the connection count (open connections stay open)."""
        self.requests.clear()
        self.connections_opened = 0

    async def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{self!r} already started")
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection at once (tests want fast teardown)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            conn.writer.transport.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_opened += 1
        conn = _Conn(self.connections_opened, RequestReader(reader), writer, asyncio.current_task())
        self._conns.add(conn)
        try:
            while (head := await conn.reader.next_request()) is not None:
                record = RecordedRequest(
                    head.method, head.target, list(head.headers), head.http_version, conn.number
                )
                self.requests.append(record)
                ex = _Exchange(head, record, conn, self)
                segments = head.path.strip("/").split("/")
                behaviour = BEHAVIOURS.get(segments[0], _not_found)
                try:
                    await behaviour(ex, segments[1:])
                except ProtocolError as exc:
                    await ex.respond(400, f"{exc}\n".encode())
                if not head.keep_alive:
                    break
        except ProtocolError as exc:
            with contextlib.suppress(OSError):
                writer.write(b"HTTP/1.1 %d Bad Request\r\ncontent-length: 0\r\n" % exc.status_hint)
                writer.write(b"connection: close\r\n\r\n")
        except (_Close, OSError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(conn)
            writer.close()


async def _not_found(ex: _Exchange, args: list[str]) -> None:
    await ex.read_body()
    await ex.respond(404, f"no behaviour for {ex.head.path}\n".encode())


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll `predicate` until true; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --- podproxy as a subprocess ------------------------------------------------------------------


def admin_address(config_text: str) -> tuple[str, int] | None:
    """The admin `socket_address` of a bootstrap (YAML or JSON, v2 or v3), as a connectable pair.

    Wildcard addresses become loopback; None when there is no admin or its port is 0.
    """
    try:
        sa = yaml.safe_load(config_text)["admin"]["address"]["socket_address"]
        host, port = str(sa.get("address", "127.0.0.1")), int(sa["port_value"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    if port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return host, port


class ProxyProcess:
    """A podproxy (or stand-in) subprocess with its output in files; always stopped by PID."""

    def __init__(
        self,
        argv: list[str],
        config_path: Path,
        log_prefix: Path,
        admin: tuple[str, int] | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.config_path = config_path
        self.stdout_path = log_prefix.with_name(log_prefix.name + ".stdout")
        self.stderr_path = log_prefix.with_name(log_prefix.name + ".stderr")
        self.admin = admin
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            # Its own process group: a Ctrl-C meant for pytest does not hit it before teardown,
            # and workers it forks can be killed with it as a last resort.
            start_new_session=True,
        )

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} returncode={self.returncode} admin={self.admin}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def admin_url(self) -> str:
        if self.admin is None:
            raise ValueError("the config has no admin address with a fixed port")
        host, port = self.admin
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    async def admin_get(self, path: str, *, timeout: float = 2.0) -> Response:
        if self.admin is None:
            raise ValueError("the config has no admin address with a fixed port")
        return await http_get(*self.admin, path, timeout=timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll admin `GET /ready` until 200; RuntimeError if it exits, TimeoutError if slow."""
        if self.admin is None:
            raise ValueError("cannot wait for readiness: no admin address with a fixed port")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self.returncode} before it was ready; "
                    f"stderr:\n{self.stderr_tail()}"
                )
            try:
                resp = await self.admin_get("/ready", timeout=1.0)
            except (OSError, TimeoutError, ValueError) as exc:
                last = repr(exc)
            else:
                if resp.status == 200:
                    return
                last = f"{resp.status} {resp.body[:100]!r}"
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"{self!r} not ready after {timeout}s (last: {last}); stderr:\n{self.stderr_tail()}"
        )

    async def wait(self, timeout: float) -> int | None:
        """Wait (without blocking the loop) for the process to exit; its return code or None."""
        deadline = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process, then anything left in the process group it leads."""
        self.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; returns the exit code."""
        try:
            self.send_signal(signal.SIGTERM)
            if await self.wait(timeout) is None:
                self.kill()
                await self.wait(5.0)
        finally:
            if self.returncode is None:  # cancelled mid-wait: do not leave it running
                self.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5.0)
            self._out.close()
            self._err.close()
        rc = self.returncode
        return -signal.SIGKILL if rc is None else rc
