"""Httpd-like backends ("pods") for the sandbox, one small HTTP/1.1 server per 127.0.1.x address.

A `Pod` answers every request with 200 and a body naming itself, counts what it served, and stops
like `httpd -k graceful-stop`: stop accepting, finish in-flight requests, close idle keep-alive
connections, all bounded by a grace period. `ready` only changes `/healthz`: a pod failing its
readiness probe still serves. `RequestReader` is the pull-based HTTP/1.1 request reader on
httptools (keep-alive, pipelining, content-length and chunked bodies) shared with the test backends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self
from urllib.parse import parse_qs

import httptools

from podproxy.errors import ProtocolError

# Bounds that keep a misbehaving client from growing a pod without limit.
MAX_HEAD_BYTES: Final = 64 * 1024  # request line + headers; httpd's default is about the same
READ_SIZE: Final = 64 * 1024  # bytes fed to the parser per read
MAX_DELAY: Final = 60.0  # cap on `?delay=` so a typo cannot hang a test or a scenario

_END: Final = object()  # end-of-message marker in the event queue


@dataclass(slots=True, frozen=True)
class RequestHead:
    """A request line and headers as received; names keep their case, values are latin-1."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    http_version: str
    keep_alive: bool

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.target.partition("?")[2])

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    @property
    def expects_continue(self) -> bool:
        """RFC 9110 §10.1.1: the client waits for `100 Continue` before sending the body."""
        value = self.header("expect")
        return value is not None and value.strip().lower() == "100-continue"


class _ParserEvents:
    """httptools callbacks; turns bytes into a queue of heads, body pieces and ends."""

    __slots__ = ("_head_bytes", "_headers", "_url", "events", "in_message", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.events: deque[object] = deque()
        self.in_message = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        self.in_message = True
        self._url = b""
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        p = self.parser
        self.events.append(
            RequestHead(
                method=p.get_method().decode("ascii"),
                target=self._url.decode("latin-1"),
                headers=tuple(self._headers),
                http_version=p.get_http_version(),
                keep_alive=p.should_keep_alive(),
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.events.append(_END)

    @property
    def head_too_large(self) -> bool:
        return self.in_message and self._head_bytes > MAX_HEAD_BYTES


class RequestReader:
    """Reads HTTP/1.1 requests from a stream one at a time: `next_request()`, then `read_body()`.

    Pipelined requests already received stay queued until asked for. Protocol errors raise
    `ProtocolError` with the status to answer; the connection is unusable afterwards.
    """

    __slots__ = ("_eof", "_in_body", "_p", "_stream", "_upgraded")

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._p = _ParserEvents()
        self._eof = False
        self._upgraded = False
        self._in_body = False  # the last head returned still has body (or its end) to read

    @property
    def idle(self) -> bool:
        """True between requests: nothing of a next request has been received."""
        return not self._p.events and not self._p.in_message

    async def _fill(self, size: int) -> None:
        if self._eof:
            raise ProtocolError("connection closed mid-request")
        data = await self._stream.read(size)
        if not data:
            self._eof = True
            if self._p.in_message:
                raise ProtocolError("connection closed mid-request")
            return
        if self._upgraded:
            return  # bytes after an Upgrade request are not HTTP; we do not switch protocols
        try:
            self._p.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded = True
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed request: {exc}") from exc
        if self._p.head_too_large:
            raise ProtocolError("request head too large", status_hint=431)

    async def next_request(self) -> RequestHead | None:
        """The next request's head; skips any unread body of the previous one. None at EOF."""
        events = self._p.events
        while True:
            while events:
                ev = events.popleft()
                if isinstance(ev, RequestHead):
                    self._in_body = True
                    return ev
            if self._eof or self._upgraded:
                return None
            await self._fill(READ_SIZE)
            if self._eof and not events:
                return None

    async def read_body(self, max_bytes: int = READ_SIZE) -> bytes:
        """The next piece (at most `max_bytes`) of the current body; b"" once it has ended.

        Reads from the socket in pieces of at most `max_bytes`, so a small value reads slowly
        and lets TCP push back on the sender.
        """
        if not self._in_body:
            return b""
        events = self._p.events
        while not events:
            if self._upgraded:
                self._in_body = False
                return b""
            await self._fill(max_bytes)
        ev = events[0]
        if not isinstance(ev, bytes):  # the end marker
            events.popleft()
            self._in_body = False
            return b""
        if len(ev) <= max_bytes:
            events.popleft()
            return ev
        events[0] = ev[max_bytes:]
        return ev[:max_bytes]

    async def skip_body(self) -> int:
        """Read and discard the rest of the current body; returns its length."""
        total = 0
        while chunk := await self.read_body():
            total += len(chunk)
        return total


_REASONS: Final = {200: b"OK", 400: b"Bad Request", 431: b"Request Header Fields Too Large"}


def _response(status: bytes, pod_name: str, text: str) -> tuple[bytes, bytes]:
    """A precomputed response head (without its final CRLF) and body."""
    body = text.encode()
    head = b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nx-pod: %s\r\n" % (
        status,
        len(body),
        pod_name.encode(),
    )
    return head, body


@dataclass(slots=True, eq=False)  # identity-hashed: kept in a set
class _Connection:
    reader: RequestReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    busy: bool = False  # a request has been taken and its response is not written yet

    @property
    def idle(self) -> bool:
        return not self.busy and self.reader.idle


class Pod:
    """One httpd-like backend on `ip:port`; `port=0` picks a free port, read it after start()."""

    def __init__(self, name: str, ip: str, port: int = 8080, *, ready: bool = True) -> None:
        self.name = name
        self.ip = ip
        self.port = port
        self.ready = ready
        self.requests = 0  # requests served, /healthz excluded so load-balancing counts stay clean
        self.health_checks = 0  # /healthz requests served
        self.connections_opened = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._head, self._body = _response(b"200 OK", name, f"pod {name} ({ip})\n")
        self._healthz = _response(b"200 OK", name, "ok\n")
        self._unready = _response(b"503 Service Unavailable", name, "not ready\n")

    def __repr__(self) -> str:
        state = "serving" if self.serving else "stopping" if self._stopping else "stopped"
        return (
            f"<Pod {self.name} {self.ip}:{self.port} {state} ready={self.ready} "
            f"requests={self.requests} connections={len(self._connections)}>"
        )

    @property
    def serving(self) -> bool:
        return self._server is not None and not self._stopping

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Connections with a request begun and not yet answered."""
        return sum(1 for c in self._connections if not c.idle)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self!r} already started")
        self._stopping = False
        self._server = await asyncio.start_server(
            self._serve, self.ip, self.port, reuse_address=True, start_serving=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, finish in-flight requests, close idle connections; abort at `grace`."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        # Idle keep-alive connections are closed now (RFC 9112 §9.5 lets a server do so at any
        # time); busy ones finish their current request, answer with `connection: close`, exit.
        for conn in list(self._connections):
            if conn.idle and conn.task is not None:
                conn.task.cancel()
        tasks = {c.task for c in self._connections if c.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            for conn in list(self._connections):
                conn.writer.transport.abort()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(RequestReader(reader), writer, asyncio.current_task())
        self._connections.add(conn)
        self.connections_opened += 1
        try:
            await self._serve_connection(conn)
        except ProtocolError as exc:
            status = exc.status_hint or 400
            reason = _REASONS.get(status, b"Bad Request")
            with contextlib.suppress(OSError):
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    % (status, reason)
                )
        except OSError:
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # closed by stop(): an idle keep-alive connection, or the grace period ran out
        finally:
            self._connections.discard(conn)
            writer.close()

    async def _serve_connection(self, conn: _Connection) -> None:
        reader, writer = conn.reader, conn.writer
        while not (self._stopping and conn.idle):
            head = await reader.next_request()
            if head is None:
                return
            conn.busy = True
            if head.expects_continue:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await reader.skip_body()
            if head.path == "/healthz":
                self.health_checks += 1
                resp_head, body = self._healthz if self.ready else self._unready
            else:
                delay = _delay_of(head)
                if delay > 0:
                    await asyncio.sleep(delay)
                self.requests += 1
                resp_head, body = self._head, self._body
            closing = not head.keep_alive or self._stopping
            parts = [resp_head, b"connection: close\r\n\r\n" if closing else b"\r\n"]
            if head.method != "HEAD":
                parts.append(body)
            writer.write(b"".join(parts))
            await writer.drain()
            conn.busy = False
            if closing:
                return


def _delay_of(head: RequestHead) -> float:
    """`?delay=<seconds>` makes the pod answer slowly, for drain and timeout scenarios."""
    if "delay=" not in head.target:
        return 0.0
    try:
        return min(max(float(head.query["delay"][0]), 0.0), MAX_DELAY)
    except (KeyError, ValueError):
        return 0.0


def pod_ip(base_ip: str, index: int) -> str:
    """The address of pod `index`: `base_ip` + index (127.0.1.1, 127.0.1.2, ...)."""
    return str(ipaddress.IPv4Address(base_ip) + index)


class PodSet:
    """N pods named `<prefix>-0..N-1` on consecutive addresses from `base_ip`, all on one port.

    Like the pods behind a headless Service, every pod listens on the same port; with `port=0`
    the first pod picks a free one and the others reuse it.
    """

    def __init__(
        self,
        count: int,
        *,
        prefix: str = "httpd",
        port: int = 8080,
        base_ip: str = "127.0.1.1",
    ) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.prefix = prefix
        self.port = port
        self.base_ip = base_ip
        self.pods: list[Pod] = [self._make(i) for i in range(count)]

    def _make(self, index: int) -> Pod:
        return Pod(f"{self.prefix}-{index}", pod_ip(self.base_ip, index), self.port)

    def __repr__(self) -> str:
        return f"<PodSet {self.prefix} port={self.port} pods={[p.name for p in self.pods]}>"

    def __len__(self) -> int:
        return len(self.pods)

    def __iter__(self) -> Iterator[Pod]:
        return iter(self.pods)

    def __getitem__(self, index: int) -> Pod:
        return self.pods[index]

    @property
    def ips(self) -> list[str]:
        return [p.ip for p in self.pods]

    @property
    def requests(self) -> dict[str, int]:
        """Requests served per pod name."""
        return {p.name: p.requests for p in self.pods}

    async def _start(self, pods: Sequence[Pod]) -> None:
        started: list[Pod] = []
        try:
            for pod in pods:
                pod.port = self.port
                await pod.start()
                self.port = pod.port
                started.append(pod)
        except BaseException:
            await asyncio.gather(*(p.stop(grace=0.0) for p in started))
            raise

    async def start(self) -> None:
        await self._start(self.pods)

    async def stop(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(p.stop(grace) for p in self.pods))

    async def scale(self, count: int, grace: float = 5.0) -> tuple[list[Pod], list[Pod]]:
        """Grow or shrink to `count` pods, like a StatefulSet; returns (added, removed).

        New pods take the next indices and addresses; removal stops the highest indices
        gracefully, all at once.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        have = len(self.pods)
        if count >= have:
            added = [self._make(i) for i in range(have, count)]
            await self._start(added)
            self.pods.extend(added)
            return added, []
        removed = self.pods[count:]
        del self.pods[count:]
        await asyncio.gather(*(p.stop(grace) for p in removed))
        return [], removed

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=1.0)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m podproxy.sandbox.pods",
        description="Run httpd-like pods on consecutive loopback addresses until Ctrl-C/SIGTERM.",
    )
    ap.add_argument("--count", type=int, default=3, help="number of pods (default 3)")
    ap.add_argument("--port", type=int, default=8080, help="port every pod listens on")
    ap.add_argument("--prefix", default="httpd", help="pod names are <prefix>-<index>")
    ap.add_argument("--base-ip", default="127.0.1.1", help="address of pod 0 (default 127.0.1.1)")
    ap.add_argument("--grace", type=float, default=5.0, help="graceful stop bound, seconds")
    return ap.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    pods = PodSet(args.count, prefix=args.prefix, port=args.port, base_ip=args.base_ip)
    await pods.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for pod in pods:
            print(f"{pod.name} {pod.url}", flush=True)
        await stop.wait()
    finally:
        print("stopping pods", file=sys.stderr, flush=True)
        await pods.stop(args.grace)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but pods work without it
        asyncio.run(_run(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
