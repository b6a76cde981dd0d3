"""Forwarder pieces that need no sockets: request ids, the route-timeout queue, and the
hand-back of an upstream connection under client back-pressure (fake transports)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from podproxy.router.forwarder import TimeoutQueue, new_request_id


def test_request_ids_are_uuid4() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:200]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122 and len(rid) == 36


class FakeRequest:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name = name
        self.fired = fired

    def on_timeout(self) -> None:
        self.fired.append(self.name)


async def test_timeout_queue_fires_live_entries_in_order_and_skips_completed() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.05)
    entries: dict[str, list[Any]] = {}
    for name in "abcd":
        entries[name] = q.add(FakeRequest(name, fired), loop)  # type: ignore[arg-type]
        await asyncio.sleep(0.005)
    entries["a"][1] = None  # a and c completed in time: their entries are cleared
    entries["c"][1] = None
    await asyncio.sleep(0.12)
    assert fired == ["b", "d"]
    assert not q.entries
    # Completed entries at the front are dropped as new ones arrive: memory stays bounded.
    for i in range(1000):
        q.add(FakeRequest(str(i), fired), loop)[1] = None  # type: ignore[arg-type]
    assert len(q.entries) <= 1
    q.close()


async def test_timeout_queue_rearms_after_emptying() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.02)
    q.add(FakeRequest("x", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    q.add(FakeRequest("y", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    assert fired == ["x", "y"]
    q.close()


class _Transport:
    """A transport that keeps what is written; `on_write` runs after each write."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.reading = True
        self.on_write: Any = None

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if self.on_write is not None:
            self.on_write()

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_upstream_connection_paused_by_a_slow_client_goes_back_to_the_pool_reading() -> None:
    """The write that ends a response can fill the client's buffer (pause_writing). The
    upstream connection is already back in its pool then: it must not be left paused, or the
    next request sent on it never gets its response read."""
    from integration.test_proxy_http import bootstrap, cluster

    from podproxy.config.loader import load
    from podproxy.http.upstream import ConnState, UpstreamConnection
    from podproxy.server import Options, Server

    server = Server(load(config_yaml=bootstrap([cluster("app", [("127.0.1.1", 8080)])])), Options())
    server.build()
    app = server.cluster_manager.clusters["app"]
    app.discovery.start()
    (host,) = app.hosts
    pool = app.pool_for(host)
    upstream = UpstreamConnection(pool)
    up_transport = _Transport()
    upstream.connection_made(up_transport)  # type: ignore[arg-type]
    upstream.state = ConnState.IDLE
    upstream.idle_since = time.monotonic()
    pool.idle.append(upstream)
    client = server.http_listeners[0].tracker.protocol_factory()
    client_transport = _Transport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    client_transport.on_write = client.pause_writing  # every write fills the client's buffer

    for _ in range(2):
        client.data_received(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        assert up_transport.out, "the request was not sent on the pooled connection"
        up_transport.out.clear()
        upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert b"".join(client_transport.out).endswith(b"\r\n\r\nok")
        client_transport.out.clear()
        assert upstream.state is ConnState.IDLE
        assert up_transport.reading and not upstream.flow.reasons  # type: ignore[union-attr]
        client.resume_writing()
