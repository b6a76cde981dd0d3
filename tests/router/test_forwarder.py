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


def _proxy_with_one_idle_upstream() -> tuple[Any, _Transport, Any, _Transport]:
    """A built server whose one host has one idle pooled connection, and a client connection;
    all over `_Transport`s. Returns (client, client transport, upstream, upstream transport)."""
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
    return client, client_transport, upstream, up_transport


async def test_upstream_connection_paused_by_a_slow_client_goes_back_to_the_pool_reading() -> None:
    """The write that ends a response can fill the client's buffer (pause_writing). The
    upstream connection is already back in its pool then: it must not be left paused, or the
    next request sent on it never gets its response read."""
    from podproxy.http.upstream import ConnState

    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
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


async def test_head_that_fills_the_upstream_buffer_holds_the_client_body() -> None:
    """The head goes out on an idle connection before the exchange takes the connection over:
    a pause_writing raised by that very write must still stop reading the client's body."""
    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
    up_transport.on_write = upstream.pause_writing  # the head alone fills the buffer
    client.data_received(b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n")
    assert up_transport.out and up_transport.out[0].startswith(b"POST / HTTP/1.1\r\n")
    assert not client_transport.reading, "the client's body is read into a full buffer"
    up_transport.on_write = None
    upstream.resume_writing()
    assert client_transport.reading


async def test_body_in_the_same_read_follows_the_head_on_an_idle_connection() -> None:
    client, _, upstream, up_transport = _proxy_with_one_idle_upstream()
    client.data_received(b"POST /p HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello")
    sent = b"".join(up_transport.out)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /p HTTP/1.1\r\n") and b"content-length: 5" in head
    assert body == b"hello" and upstream.request_done


async def test_expect_100_continue_on_an_idle_connection() -> None:
    """Envoy answers 100-continue itself and does not pass Expect on; the body follows."""
    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
    client.data_received(
        b"PUT /u HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
    )
    assert b"".join(client_transport.out) == b"HTTP/1.1 100 Continue\r\n\r\n"
    head = b"".join(up_transport.out)
    assert head.startswith(b"PUT /u HTTP/1.1\r\n") and b"\r\nexpect:" not in head.lower()
    client.data_received(b"abc")
    assert b"".join(up_transport.out).endswith(b"\r\n\r\nabc") and upstream.request_done
    upstream.data_received(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
    assert b"HTTP/1.1 201 Created\r\n" in b"".join(client_transport.out)
