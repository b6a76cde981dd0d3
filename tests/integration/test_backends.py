"""The test upstream's behaviours on real sockets, and the podproxy-process fixture machinery
driven with a stand-in command (so it is tested before the real CLI exists)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from integration.backends import (
    Backend,
    LoopbackAllocator,
    ProxyProcess,
    RawClient,
    admin_address,
    free_port,
    http_get,
    pattern_bytes,
    raw_exchange,
    wait_until,
)

StartBackend = Callable[..., Awaitable[Backend]]
StartProxy = Callable[..., Awaitable[ProxyProcess]]


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: backend", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_echo_reports_what_was_sent(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(request("POST", "/echo/x?y=1", b"hello", "X-Custom: One", "x-custom: two"))
        resp = await c.response()
    assert resp.status == 200 and resp.header("content-type") == "application/json"
    data = resp.json()
    assert isinstance(data, dict)
    assert data["method"] == "POST" and data["path"] == "/echo/x?y=1"
    assert ["X-Custom", "One"] in data["headers"] and ["x-custom", "two"] in data["headers"]
    assert data["body_length"] == 5
    assert data["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    [rec] = b.requests
    assert (rec.method, rec.path, rec.body_length, rec.connection) == ("POST", "/echo/x?y=1", 5, 1)
    assert rec.header("x-custom") == "One"


async def test_keep_alive_and_pipelining_are_recorded_per_connection(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(request("GET", "/echo") + request("GET", "/status/404") + request("GET", "/bytes/3"))
        echo, missing, three = await c.responses(3)
        assert (echo.status, missing.status, three.body) == (200, 404, b"abc")
    await http_get(*b.address, "/echo")
    assert [r.connection for r in b.requests] == [1, 1, 1, 2]
    assert b.connections_opened == 2


async def test_chunked_response(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(request("GET", "/chunked/100/7"))
        resp = await c.response()
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == pattern_bytes(100)


async def test_chunked_request_body_is_read(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(
            b"POST /upload HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await c.response()).json() == {
            "length": 5,
            "sha256": hashlib.sha256(b"abcde").hexdigest(),
        }


async def test_garbage_and_early_closes(backend: StartBackend) -> None:
    b = await backend()
    garbage = await raw_exchange(*b.address, request("GET", "/garbage"))
    assert garbage and not garbage.startswith(b"HTTP/")
    assert await raw_exchange(*b.address, request("GET", "/close-before-headers")) == b""
    mid = await raw_exchange(*b.address, request("GET", "/close-mid-body"))
    head, _, body = mid.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head and len(body) == 10


async def test_no_body_statuses_and_interim_responses(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(request("GET", "/status/204") + request("GET", "/status/503"))
        no_content, unavailable = await c.responses(2)
        assert no_content.status == 204 and no_content.header("content-length") is None
        assert unavailable.status == 503
        c.send(request("GET", "/info100"))
        early, final = await c.responses(2)
        assert (early.status, early.header("link"), final.status) == (
            103,
            "</style.css>; rel=preload",
            200,
        )
        c.send(request("GET", "/info/100"))
        assert [r.status for r in await c.responses(2)] == [100, 200]


async def test_expect_sends_100_before_reading(backend: StartBackend) -> None:
    b = await backend()
    async with await RawClient.open(*b.address) as c:
        c.send(
            b"PUT /expect HTTP/1.1\r\nhost: b\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
        )
        assert (await c.response()).status == 100
        c.send(b"xyz")
        data = (await c.response()).json()
        assert isinstance(data, dict) and data["length"] == 3 and data["expect"] == "100-continue"


async def test_slow_body_sleep_and_slow_upload(backend: StartBackend) -> None:
    b = await backend()
    start = time.monotonic()
    resp = await http_get(*b.address, "/slow-body/25?duration=0.2")
    assert resp.body == pattern_bytes(25) and time.monotonic() - start >= 0.2
    assert (await http_get(*b.address, "/sleep/0.1")).body == b"slept 0.1\n"
    body = bytes(4096)
    async with await RawClient.open(*b.address) as c:
        c.send(request("POST", "/upload?slow=1", body))
        data = (await c.response()).json()
    assert data == {"length": 4096, "sha256": hashlib.sha256(body).hexdigest()}


async def test_response_headers_and_close_after_response(backend: StartBackend) -> None:
    b = await backend()
    resp = await http_get(*b.address, "/response-headers?x-a=1&connection=keep-alive")
    assert resp.header("x-a") == "1"
    async with await RawClient.open(*b.address) as c:
        c.send(request("GET", "/close-after-response"))
        assert (await c.response()).header("connection") == "close"
        assert await c.closed_by_peer()


async def test_close_drops_open_connections(loopback_ip: Callable[[int], str]) -> None:
    b = Backend(loopback_ip(0))
    async with b:
        c = await RawClient.open(*b.address)
        c.send(request("GET", "/sleep/30"))
        await wait_until(lambda: len(b.requests) == 1)
    assert await c.closed_by_peer(timeout=2.0)
    c.close()
    with pytest.raises(OSError):
        await RawClient.open(*b.address, timeout=2.0)


def test_admin_address_from_config() -> None:
    v2 = textwrap.dedent(
        """\
        admin:
          access_log_path: /tmp/admin_access.log
          address:
            socket_address:
              protocol: TCP
              address: 0.0.0.0
              port_value: 9901
        """
    )
    assert admin_address(v2) == ("127.0.0.1", 9901)
    as_json = json.dumps({"admin": {"address": {"socket_address": {"port_value": 19000}}}})
    assert admin_address(as_json) == ("127.0.0.1", 19000)
    assert admin_address("static_resources: {}") is None


STAND_IN = """\
import http.server, signal, sys, yaml
cfg = yaml.safe_load(open(sys.argv[sys.argv.index("-c") + 1]))
sa = cfg["admin"]["address"]["socket_address"]
if "--ignore-sigterm" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))

class Admin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"LIVE\\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("stand-in admin: " + fmt % args + "\\n")

server = http.server.HTTPServer((sa["address"], sa["port_value"]), Admin)
print("stand-in up", " ".join(sys.argv[1:]), file=sys.stderr, flush=True)
server.serve_forever()
"""


def admin_config(port: int) -> str:
    return f"admin:\n  address:\n    socket_address: {{address: 127.0.0.1, port_value: {port}}}\n"


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script)]


async def test_proxy_fixture_starts_waits_and_terminates(
    podproxy_process: StartProxy, stand_in: list[str]
) -> None:
    port = free_port()
    proc = await podproxy_process(admin_config(port), "--drain-time-s", "1", command=stand_in)
    assert proc.admin_url == f"http://127.0.0.1:{port}"
    assert (await proc.admin_get("/ready")).body == b"LIVE\n"
    assert "-l info --drain-time-s 1" in proc.stderr_text()
    assert "GET /ready" in proc.stderr_text()
    assert await proc.terminate() == 0
    assert proc.returncode == 0
    assert "stand-in up" in proc.stderr_tail()  # still readable after the process is gone


async def test_proxy_fixture_kills_what_ignores_sigterm(
    podproxy_process: StartProxy, stand_in: list[str]
) -> None:
    proc = await podproxy_process(admin_config(free_port()), "--ignore-sigterm", command=stand_in)
    start = time.monotonic()
    assert await proc.terminate(timeout=0.3) == -9
    assert time.monotonic() - start < 5.0


async def test_proxy_fixture_reports_an_early_exit(podproxy_process: StartProxy) -> None:
    dies = [sys.executable, "-c", "import sys; sys.exit('bad config, says stderr')"]
    with pytest.raises(RuntimeError, match="bad config, says stderr"):
        await podproxy_process(admin_config(free_port()), command=dies)


def test_loopback_blocks_are_valid_and_disjoint_including_their_extra_addresses() -> None:
    # Every block the allocator can hand out, with every n a test may ask for: valid IPv4
    # loopback addresses, never shared between blocks (sixty pods once ran past 127.0.1.255).
    alloc = LoopbackAllocator()
    seen: set[str] = set()
    limit = LoopbackAllocator.BLOCK + LoopbackAllocator.EXTRA
    for _ in range(alloc.share):
        ip = alloc.block()
        addrs = {ip(n) for n in range(limit)}
        assert len(addrs) == limit and not addrs & seen
        assert all(ipaddress.IPv4Address(a).is_loopback for a in addrs)
        seen |= addrs
        with pytest.raises(ValueError):
            ip(limit)
