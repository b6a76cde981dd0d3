"""Python cost of one proxied request, without sockets: the real codec, forwarder and pools.

A downstream connection and one idle upstream connection per host run over fake transports;
each round feeds a wrk-like request, answers the upstream write with an nginx-like response,
and clears the client's bytes. What it measures is podproxy's own per-request work (no
syscalls), which is what the hot-path changes are about.

    .venv/bin/python bench/hotpath.py [CONFIG] [N] [--close]   # µs per request (CPU time)

`--close` opens a new client connection for every request and asks for `Connection: close`
(wrk's close50 scenario): the connection's setup and teardown are counted too.

For a figure that does not depend on the machine's load, count instructions with callgrind
at two values of N and divide the difference (startup cancels out):

    valgrind --tool=callgrind .venv/bin/python bench/hotpath.py CONFIG 1000
    valgrind --tool=callgrind .venv/bin/python bench/hotpath.py CONFIG 4000
    # (I(4000) - I(1000)) / 3000 instructions per request

CONFIG must have a STATIC cluster named `httpd` (default: examples/static.yaml).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from podproxy.config.loader import load
from podproxy.http.http1.upstream import ConnState, UpstreamConnection
from podproxy.server import Options, Server

ROOT = Path(__file__).resolve().parents[1]
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nUser-Agent: wrk\r\n\r\n"
REQUEST_CLOSE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello world!\n"
)
WARMUP = 2000


class FakeTransport:
    """Enough of asyncio.Transport for the protocols: writes are kept, nothing is sent."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def measure(config: str, n: int, close: bool = False) -> float:
    server = Server(load(config), Options())
    server.build()
    cluster = server.cluster_manager.clusters["httpd"]
    cluster.discovery.start()
    upstreams = []
    for host in cluster.hosts:
        pool = cluster.pool_for(host)
        conn = UpstreamConnection(pool)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.state = ConnState.IDLE
        conn.idle_since = time.monotonic()
        pool.idle.append(conn)
        upstreams.append((conn, transport))
    tracker = server.http_listeners[0].tracker
    client = tracker.protocol_factory()
    client_transport = FakeTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]

    def upstream_answers() -> None:
        for conn, transport in upstreams:
            if transport.out:
                transport.out.clear()
                conn.data_received(RESPONSE)
                break
        else:
            raise RuntimeError("the request reached no upstream")

    def one_keep_alive() -> None:
        client.data_received(REQUEST)
        upstream_answers()
        if not client_transport.out:
            raise RuntimeError("no response reached the client")
        client_transport.out.clear()

    def one_close() -> None:
        conn = tracker.protocol_factory()
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(REQUEST_CLOSE)
        upstream_answers()
        if not transport.out or not transport.closed:
            raise RuntimeError("no response, or the connection stayed open")
        conn.connection_lost(None)

    one = one_close if close else one_keep_alive
    for _ in range(WARMUP):
        one()
    start = time.process_time()
    for _ in range(n):
        one()
    return (time.process_time() - start) / n


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--close"]
    config = args[0] if args else str(ROOT / "examples" / "static.yaml")
    n = int(args[1]) if len(args) > 1 else 50_000
    per = uvloop.run(measure(config, n, "--close" in sys.argv))
    print(f"{per * 1e6:.2f} µs of CPU per proxied request (Python only), {1 / per:,.0f}/s")


if __name__ == "__main__":
    main()
