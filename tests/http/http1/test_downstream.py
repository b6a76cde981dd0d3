"""The client-side connection without sockets: a fake transport, a scripted stream handler and
the sweep driven with explicit times (`check_timeouts(now, cfg)`), for the connection-manager
timeouts and Envoy's HTTP/1 drain sequence (request_headers_timeout, max_stream_duration,
drain_timeout, the idle timeout and max_connection_duration that start a drain)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from podproxy.http.conn_manager import ConnectionManagerConfig, HttpConnManagerStats
from podproxy.http.http1.downstream import (
    DOWNSTREAM_DURATION_TIMEOUT,
    REQUEST_HEADER_TIMEOUT,
    ConnectionTracker,
    DownstreamConnection,
    HeadTimedConnection,
    _earliest,
)
from podproxy.http.stream import Exchange
from podproxy.stats import Store

GET = b"GET /a HTTP/1.1\r\nhost: app\r\n\r\n"


class Transport:
    """Keeps what is written; closing is a flag."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class Handler:
    """A stream handler that answers each request when it ends (if `answer` is set), through
    the connection's local reply, and records what the connection told it."""

    def __init__(self) -> None:
        self.heads: list[Exchange] = []
        self.resets: list[Exchange] = []
        self.answer = True

    def on_request_head(self, ex: Exchange) -> None:
        self.heads.append(ex)

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        pass

    def on_request_end(self, ex: Exchange) -> None:
        if self.answer:
            ex.conn.send_local_reply(ex, 200, b"ok")

    def on_downstream_reset(self, ex: Exchange) -> None:
        self.resets.append(ex)

    def on_downstream_write_paused(self, ex: Exchange) -> None:
        pass

    def on_downstream_write_resumed(self, ex: Exchange) -> None:
        pass


class Rig:
    """One tracker, its connections over fake transports, and the sweep at chosen times."""

    def __init__(self, **config: Any) -> None:
        self.stats = Store().scope("http.t.").make(HttpConnManagerStats)
        config.setdefault("delayed_close_timeout", None)  # close at once: easier to see
        self.config = ConnectionManagerConfig(stats=self.stats, **config)
        self.handler = Handler()
        self.tracker = ConnectionTracker(self.config, self.handler)
        self.loop = self.tracker.loop = asyncio.get_running_loop()  # no sweep timer: by hand
        self.conns: list[tuple[DownstreamConnection, Transport]] = []

    def connect(self) -> tuple[DownstreamConnection, Transport]:
        conn = self.tracker.protocol_factory()
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        self.conns.append((conn, transport))
        return conn, transport

    def sweep(self, at: float) -> None:
        """The sweep, `at` seconds after now on the loop's clock."""
        now = self.loop.time() + at
        for conn in list(self.tracker.connections):
            conn.check_timeouts(now, self.config)

    def close(self) -> None:
        for conn, _ in self.conns:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.close()
            conn.connection_lost(None)


@pytest.fixture
async def rig() -> Iterator[Any]:
    made: list[Rig] = []

    def make(**config: Any) -> Rig:
        r = Rig(**config)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_earliest_picks_the_timeout_that_passed_first() -> None:
    assert _earliest(None, 5.0, 1, now=4.0) is None  # not passed yet
    assert _earliest(None, 3.0, 1, now=4.0) == (3.0, 1)
    assert _earliest((2.0, 0), 3.0, 1, now=4.0) == (2.0, 0)
    assert _earliest((3.5, 0), 3.0, 1, now=4.0) == (3.0, 1)


async def test_heads_are_timed_only_when_a_timeout_needs_it(rig: Any) -> None:
    assert type(rig().connect()[0]) is DownstreamConnection
    assert type(rig(request_headers_timeout=1.0).connect()[0]) is HeadTimedConnection
    assert type(rig(max_stream_duration=1.0).connect()[0]) is HeadTimedConnection


# --- request_headers_timeout ------------------------------------------------------------------


async def test_request_headers_timeout_is_a_408_from_the_heads_first_byte(rig: Any) -> None:
    r = rig(request_headers_timeout=1.0)
    conn, transport = r.connect()
    conn.data_received(b"GET /a HTTP/1.1\r\n")
    r.sweep(0.6)
    conn.data_received(b"x-more: 1\r\n")  # more bytes do not restart the clock (Envoy's)
    r.sweep(0.9)
    assert transport.out == b"" and not conn.closing
    r.sweep(1.0)
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in reply and reply.endswith(
        b"\r\n\r\n" + REQUEST_HEADER_TIMEOUT
    )
    assert conn.closing and r.handler.heads == []
    st = r.stats
    assert st.downstream_rq_header_timeout.value == 1 and st.downstream_rq_4xx.value == 1
    assert (st.downstream_rq_total.value, st.downstream_rq_active.value) == (1, 0)


async def test_request_headers_timeout_spares_idle_connections_and_bodies(rig: Any) -> None:
    r = rig(request_headers_timeout=1.0)
    conn, transport = r.connect()
    r.sweep(5.0)  # no byte yet: the clock has not started
    conn.data_received(GET)
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    r.sweep(5.0)  # idle between requests
    r.handler.answer = False
    conn.data_received(b"POST /b HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nab")
    r.sweep(5.0)  # the head came whole: the body's pace is not this timeout's business
    assert transport.out == b"" and not conn.closing
    assert r.stats.downstream_rq_header_timeout.value == 0


async def test_request_headers_timeout_of_a_second_request(rig: Any) -> None:
    r = rig(request_headers_timeout=1.0)
    conn, transport = r.connect()
    conn.data_received(GET)
    transport.take()
    r.sweep(3.0)
    conn.data_received(b"GE")  # the next head starts now
    r.sweep(0.9)
    assert transport.out == b""
    r.sweep(1.0)
    assert transport.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_the_exchange_starts_at_its_heads_first_byte(rig: Any) -> None:
    r = rig(request_headers_timeout=10.0)
    r.handler.answer = False
    conn, _ = r.connect()
    before = r.loop.time()
    conn.data_received(b"GET /a HTTP/1.1\r\n")
    await asyncio.sleep(0.05)
    conn.data_received(b"host: app\r\n\r\n")
    (ex,) = r.handler.heads
    assert before <= ex.start < before + 0.04
    assert conn.head_started is None


# --- max_stream_duration ----------------------------------------------------------------------


async def test_max_stream_duration_of_a_head_still_arriving(rig: Any) -> None:
    r = rig(max_stream_duration=1.0)
    conn, transport = r.connect()
    conn.data_received(b"GET /a HT")
    r.sweep(1.0)
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert reply.endswith(DOWNSTREAM_DURATION_TIMEOUT) and conn.closing
    assert r.stats.downstream_rq_max_duration_reached.value == 1


async def test_max_stream_duration_of_a_body_still_arriving(rig: Any) -> None:
    r = rig(max_stream_duration=1.0)
    conn, transport = r.connect()
    conn.data_received(b"POST /b HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nab")
    r.sweep(1.0)
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and conn.closing
    assert reply.endswith(b"\r\nconnection: close\r\n\r\n" + DOWNSTREAM_DURATION_TIMEOUT)
    assert r.handler.resets == r.handler.heads  # the upstream side was let go


async def test_max_stream_duration_before_the_response_is_a_504_and_keeps_the_connection(
    rig: Any,
) -> None:
    r = rig(max_stream_duration=1.0)
    r.handler.answer = False
    conn, transport = r.connect()
    conn.data_received(GET)
    r.sweep(0.9)
    assert transport.out == b""
    r.sweep(1.0)
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert reply.endswith(b"\r\n\r\n" + DOWNSTREAM_DURATION_TIMEOUT)
    assert b"connection: close" not in reply and not conn.closing and conn.active is None
    assert r.handler.resets == r.handler.heads
    r.handler.answer = True
    conn.data_received(GET)  # the connection serves the next request
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")


async def test_max_stream_duration_after_the_response_began_is_a_reset(rig: Any) -> None:
    r = rig(max_stream_duration=1.0)
    r.handler.answer = False
    conn, transport = r.connect()
    conn.data_received(GET)
    (ex,) = r.handler.heads
    conn.response_head_sent(ex, 200)
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    transport.take()
    r.sweep(1.0)
    assert transport.out == b"" and conn.closing and transport.closed  # cut short
    assert r.stats.downstream_rq_tx_reset.value == 1
    assert r.stats.downstream_rq_max_duration_reached.value == 1
    assert r.stats.downstream_rq_active.value == 0


async def test_timeouts_that_passed_together_fire_in_order(rig: Any) -> None:
    # request_timeout at 2 s, max_stream_duration at 1 s: one sweep late sees both passed.
    r = rig(max_stream_duration=1.0, request_timeout=2.0)
    conn, transport = r.connect()
    conn.data_received(b"POST /b HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nab")
    r.sweep(3.0)
    assert transport.take().endswith(DOWNSTREAM_DURATION_TIMEOUT)
    assert r.stats.downstream_rq_timeout.value == 0


# --- the drain sequence (drain_timeout) -------------------------------------------------------


async def test_idle_timeout_drains_then_closes_after_drain_timeout(rig: Any) -> None:
    r = rig(idle_timeout=1.0, drain_timeout=2.0)
    conn, transport = r.connect()
    conn.data_received(GET)
    assert b"connection: close" not in transport.take()
    r.sweep(1.0)
    # Envoy's onIdleTimeout: not closed, draining for drain_timeout.
    assert conn.draining and not conn.closing
    assert r.stats.downstream_cx_idle_timeout.value == 1
    conn.data_received(GET)  # a request in the window is served, with connection: close
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nconnection: close\r\n" in reply
    assert not conn.closing  # open until the drain deadline, as Envoy's
    r.sweep(2.9)
    assert not conn.closing
    r.sweep(3.0)
    assert conn.closing and transport.closed
    assert r.stats.downstream_cx_idle_timeout.value == 1  # counted once


async def test_idle_timeout_without_a_byte_closes_at_once(rig: Any) -> None:
    # Envoy has no codec before the first byte, so nothing to drain.
    r = rig(idle_timeout=1.0, drain_timeout=2.0)
    conn, transport = r.connect()
    r.sweep(1.0)
    assert conn.closing and transport.closed and not conn.draining


async def test_drain_deadline_with_a_request_in_flight_closes_after_its_response(
    rig: Any,
) -> None:
    r = rig(idle_timeout=1.0, drain_timeout=0.5)
    conn, transport = r.connect()
    conn.data_received(GET)
    transport.take()
    r.sweep(1.0)
    r.handler.answer = False
    conn.data_received(GET)
    r.sweep(2.0)  # past the deadline, the response still to come
    assert not conn.closing and conn.closing_after_response
    (_, ex) = r.handler.heads
    conn.send_local_reply(ex, 200, b"ok")
    assert b"\r\nconnection: close\r\n" in transport.take() and conn.closing


async def test_drain_timeout_zero_closes_at_once(rig: Any) -> None:
    r = rig(idle_timeout=1.0, drain_timeout=0.0)
    conn, transport = r.connect()
    conn.data_received(GET)
    r.sweep(1.0)
    assert conn.draining and conn.closing and transport.closed


async def test_max_connection_duration_drains(rig: Any) -> None:
    r = rig(max_connection_duration=1.0, drain_timeout=2.0)
    conn, transport = r.connect()
    r.handler.answer = False
    conn.data_received(GET)
    r.sweep(1.0)
    assert conn.draining and r.stats.downstream_cx_max_duration_reached.value == 1
    (ex,) = r.handler.heads
    conn.send_local_reply(ex, 200, b"ok")
    assert b"\r\nconnection: close\r\n" in transport.take() and not conn.closing
    r.sweep(1.5)
    assert r.stats.downstream_cx_max_duration_reached.value == 1
    r.sweep(3.0)
    assert conn.closing


async def test_listener_drain_starts_every_connections_drain(rig: Any) -> None:
    r = rig(drain_timeout=2.0)
    idle, idle_t = r.connect()
    idle.data_received(GET)
    idle_t.take()
    busy, busy_t = r.connect()
    r.handler.answer = False
    busy.data_received(GET)
    r.tracker.drain()
    assert idle.draining and busy.draining and not idle.closing
    assert r.stats.downstream_cx_drain_close.value == 2
    (_, ex) = r.handler.heads
    busy.send_local_reply(ex, 200, b"ok")
    assert b"\r\nconnection: close\r\n" in busy_t.take() and not busy.closing
    late, _ = r.connect()  # accepted before the listener stopped: drains too
    assert late.draining and r.stats.downstream_cx_drain_close.value == 3
    r.sweep(2.0)
    assert idle.closing and busy.closing and late.closing
