"""The Python ceiling the issue names: a bare uvloop + httptools forwarder (bench only).

`python bench/bare_forwarder.py PORT HOST:PORT...`: raw request bytes passed through to a
pooled upstream connection picked round robin, raw response bytes passed back; httptools only
finds where each message ends. No routing, header rewriting, stats, timeouts, flow control or
error handling: it is what any Python proxy on uvloop costs at least on this machine, so
podproxy's distance to it is the price of being a real proxy. One request at a time per client
connection (no pipelining); `Connection: close` from the client closes it after the response
and is not sent upstream, so upstream connections are reused as by every other proxy here.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys

import httptools
import uvloop

_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close[ \t]*(?=\r\n)", re.I)
_KEEP_ALIVE = re.compile(rb"\r\nconnection:[ \t]*keep-alive[ \t]*(?=\r\n)", re.I)


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            if not client.keep_alive and not client.told_close:
                # Say we close (the head is in the first read on loopback), or clients count
                # the close after a `keep-alive` response as an error.
                client.told_close = True
                data = _KEEP_ALIVE.sub(b"\r\nConnection: close", data, count=1)
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if self.parser.should_keep_alive():
            self.pool.append(self)
        elif self.transport is not None:
            self.transport.close()  # the client's `Connection: close` went upstream too
        if client is not None:
            client.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, backends: itertools.cycle[tuple[str, int]], pools: dict) -> None:  # type: ignore[type-arg]
        self.backends = backends
        self.pools = pools
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buf: list[bytes] = []
        self.keep_alive = True
        self.told_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        data, self.buf = b"".join(self.buf), []
        if not self.keep_alive:
            # Keep the upstream connection for the next client, as every proxy here does.
            data = _CONNECTION_CLOSE.sub(b"", data, count=1)
        addr = next(self.backends)
        pool = self.pools[addr]
        if pool:
            up = pool.pop()
            up.client = self
            assert up.transport is not None
            up.transport.write(data)
        else:
            asyncio.get_running_loop().create_task(self.connect(addr, pool, data))

    async def connect(self, addr: tuple[str, int], pool: list[Upstream], data: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(pool), *addr)
        up.client = self
        assert up.transport is not None
        up.transport.write(data)

    def response_done(self) -> None:
        if not self.keep_alive and self.transport is not None:
            self.transport.close()


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    rr = itertools.cycle(backends)
    pools: dict[tuple[str, int], list[Upstream]] = {b: [] for b in backends}
    server = await loop.create_server(lambda: Client(rr, pools), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    backends = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in sys.argv[2:])]
    uvloop.run(serve(port, backends))


if __name__ == "__main__":
    main()
