"""The server's life as a process: ready, drain on SIGTERM/SIGINT, /quitquitquit, health checks.

Each test runs the real CLI (`python -m podproxy`) through the `podproxy_process` fixture against
in-process backends; slow requests come from the backend's `/sleep/<seconds>`.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from integration.backends import (
    Backend,
    ProxyProcess,
    RawClient,
    parse_responses,
    raw_exchange,
    wait_until,
)
from integration.configs import bootstrap_yaml

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]

# Envoy's default access-log format (admin and HCM alike):
# [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
# %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
# "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
# "%UPSTREAM_HOST%"
ACCESS_LOG_LINE = re.compile(
    r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" '
    r"(?P<code>\d{3}) (?P<flags>\S+) \d+ (?P<sent>\d+) \d+ \S+ "
    r'"[^"]*" "(?P<ua>[^"]*)" "[^"]*" "(?P<authority>[^"]*)" "[^"]*"$'
)


def config(listener_port: int, admin_port: int, upstream: Backend, access_log: Path | None) -> str:
    return bootstrap_yaml(
        listener_port,
        admin_port,
        [(upstream.host, upstream.port)],
        route_timeout="30s",
        access_log=access_log,
    )


class Running:
    """A started podproxy with one backend, and its listener port."""

    def __init__(self, proc: ProxyProcess, backend: Backend, port: int) -> None:
        self.proc = proc
        self.backend = backend
        self.port = port

    async def get(self, path: str, *, timeout: float = 5.0) -> bytes:
        req = f"GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode()
        return await raw_exchange("127.0.0.1", self.port, req, timeout=timeout)

    async def admin(self, method: str, path: str) -> tuple[int, bytes]:
        assert self.proc.admin is not None
        req = f"{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n"
        req += "user-agent: lifecycle-test\r\ncontent-length: 0\r\n\r\n"
        data = await raw_exchange(*self.proc.admin, req.encode(), timeout=5.0)
        (resp,) = parse_responses(data)
        return resp.status, resp.body

    async def start_slow_request(self, seconds: float) -> RawClient:
        """A request the backend holds for `seconds`; returns once the backend has it."""
        client = await RawClient.open("127.0.0.1", self.port)
        client.send(f"GET /sleep/{seconds} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
        await wait_until(lambda: len(self.backend.requests) >= 1, timeout=5.0)
        return client

    async def refuses_connections(self, timeout: float = 3.0) -> bool:
        """True once a new connection to the listener is refused (polled: signals are async)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 1.0
                )
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the connect landed in the backlog of a listening socket that closed
                # before accepting it; refused once it is gone. Both: no longer listening.
                return True
            writer.close()
            await asyncio.sleep(0.02)
        return False


@pytest.fixture
async def running(
    podproxy_process: StartProxy,
    backend: StartBackend,
    free_port: Callable[..., int],
    tmp_path: Path,
) -> Callable[..., Awaitable[Running]]:
    async def start(*args: str, access_log: Path | None = None) -> Running:
        b = await backend()
        port = free_port()
        proc = await podproxy_process(config(port, free_port(), b, access_log), *args)
        return Running(proc, b, port)

    return start


async def test_ready_is_live_after_start(running: Callable[..., Awaitable[Running]]) -> None:
    r = await running()
    assert await r.admin("GET", "/ready") == (200, b"LIVE\n")
    (resp,) = parse_responses(await r.get("/echo"))
    assert resp.status == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_request_then_exits_0(
    running: Callable[..., Awaitable[Running]], sig: signal.Signals
) -> None:
    drain_time = 10.0
    r = await running("--drain-time-s", str(drain_time))
    async with await r.start_slow_request(2) as client:
        started = time.monotonic()
        r.proc.send_signal(sig)
        assert await r.refuses_connections(), "the listener still accepts after the signal"
        resp = await client.response(timeout=5.0)
        assert resp.status == 200
        assert resp.body == b"slept 2.0\n"
        rc = await r.proc.wait(drain_time)
    assert rc == 0
    # Well within the drain time: it left as soon as the request was done.
    assert time.monotonic() - started < drain_time / 2


async def test_drain_time_bounds_the_wait(running: Callable[..., Awaitable[Running]]) -> None:
    r = await running("--drain-time-s", "1")
    async with await r.start_slow_request(10) as client:
        started = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        rc = await r.proc.wait(8.0)
        elapsed = time.monotonic() - started
        # The unfinished request's connection is closed without a response.
        assert await client.closed_by_peer(timeout=2.0)
    assert rc == 0
    assert 0.9 <= elapsed < 5.0, elapsed


async def test_post_quitquitquit_exits_0(running: Callable[..., Awaitable[Running]]) -> None:
    r = await running()
    assert await r.admin("POST", "/quitquitquit") == (200, b"OK\n")
    assert await r.proc.wait(10.0) == 0


async def test_get_quitquitquit_is_405_and_keeps_running(
    running: Callable[..., Awaitable[Running]],
) -> None:
    r = await running()
    status, _ = await r.admin("GET", "/quitquitquit")
    assert status == 405
    await asyncio.sleep(0.2)
    assert r.proc.returncode is None
    assert await r.admin("GET", "/ready") == (200, b"LIVE\n")


async def _server_live(r: Running) -> str:
    _, body = await r.admin("GET", "/stats?filter=^server.live$")
    return body.decode().strip()


async def test_healthcheck_fail_and_ok(running: Callable[..., Awaitable[Running]]) -> None:
    r = await running()
    assert await _server_live(r) == "server.live: 1"
    assert await r.admin("POST", "/healthcheck/fail") == (200, b"OK\n")
    assert await r.admin("GET", "/ready") == (503, b"DRAINING\n")
    assert await _server_live(r) == "server.live: 0"
    # Still proxying: failing health checks only tells load balancers in front to go away.
    (resp,) = parse_responses(await r.get("/echo"))
    assert resp.status == 200
    assert await r.admin("POST", "/healthcheck/ok") == (200, b"OK\n")
    assert await r.admin("GET", "/ready") == (200, b"LIVE\n")
    assert await _server_live(r) == "server.live: 1"


async def test_admin_requests_go_to_the_admin_access_log(
    running: Callable[..., Awaitable[Running]], tmp_path: Path
) -> None:
    log_path = tmp_path / "admin_access.log"
    r = await running(access_log=log_path)
    ready_polls = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    asked = [("GET", "/ready"), ("GET", "/clusters"), ("POST", "/healthcheck/ok"), ("GET", "/nope")]
    for method, path in asked:
        await r.admin(method, path)
    assert await r.proc.terminate(10.0) == 0  # closing flushes the log
    lines = log_path.read_text().splitlines()
    # The fixture's own readiness polls come first; ours are the last four, one line each.
    assert len(lines) >= ready_polls + len(asked)
    ours = lines[-len(asked) :]
    for line, (method, path) in zip(ours, asked, strict=True):
        m = ACCESS_LOG_LINE.match(line)
        assert m is not None, line
        assert (m["method"], m["path"], m["ua"]) == (method, path, "lifecycle-test")
        assert m["authority"] == "admin"
    codes = [ACCESS_LOG_LINE.match(line)["code"] for line in ours]  # type: ignore[index]
    assert codes == ["200", "200", "200", "404"]
    for line in lines:
        assert ACCESS_LOG_LINE.match(line), line
