"""WebSocket tunnels through podproxy on real sockets: back-pressure both ways, the stream idle
timeout, access-log byte counts, and the pool never getting a tunnel's connection back.
(What Envoy does the same way is compared side by side in test_envoy_websocket.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.test_proxy_http import InProcessProxy
from integration.websocket import EchoServer, connect, frame, read_frame, upgrade_request
from podproxy.http.flow import PEER_WRITE_BLOCKED
from podproxy.http.http1.tunnel import DownstreamEnd, Tunnel, UpstreamEnd

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
# Writes before a client (or upstream) that nobody reads must be held back; bounded.
MAX_CHUNKS = 4096
CHUNK = 64 * 1024


def ws_config(
    upstream: tuple[str, int], hcm: dict[str, Any] | None = None, buffer_limit: int = 65536
) -> str:
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
        **(hcm or {}),
    }
    address = {"socket_address": {"address": upstream[0], "port_value": upstream[1]}}
    cfg = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "per_connection_buffer_limit_bytes": buffer_limit,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "per_connection_buffer_limit_bytes": buffer_limit,
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
        }
    }
    return yaml.safe_dump(cfg, sort_keys=False)


Started = tuple[InProcessProxy, EchoServer]


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    started: list[Started] = []

    async def start(hcm: dict[str, Any] | None = None) -> Started:
        up = await EchoServer().start()
        pod = InProcessProxy(ws_config(up.address, hcm))
        started.append((pod, up))
        await pod.start()
        return pod, up

    try:
        yield start
    finally:
        for pod, up in started:
            await pod.stop()
            await up.close()
            assert pod.errors == []


def the_tunnel(pod: InProcessProxy) -> Tunnel:
    (conn,) = pod.server.http_listeners[0].tracker.connections
    assert conn.transport is not None
    end = conn.transport.get_protocol()
    assert isinstance(end, DownstreamEnd) and end.tunnel is not None
    return end.tunnel


async def test_a_slow_upstream_pauses_the_client(proxy: Callable[..., Awaitable[Started]]) -> None:
    pod, _ = await proxy()
    client = await connect(pod.port, upgrade_request("/sink"))
    assert client.status == 101
    sent = 0
    for _ in range(MAX_CHUNKS):
        client.writer.write(frame(b"x" * CHUNK))
        sent += CHUNK
        try:
            await asyncio.wait_for(client.writer.drain(), 1.0)
        except TimeoutError:
            break  # the proxy stopped reading the client
    else:
        pytest.fail(f"the proxy took {sent} bytes from the client without pushing back")
    tunnel = the_tunnel(pod)
    flow = tunnel.conn.flow
    assert flow is not None and flow.reasons & PEER_WRITE_BLOCKED
    # What the proxy holds for the upstream stays near its high-water mark, not `sent`.
    assert tunnel.up.get_write_buffer_size() < 4 * 65536 + 2 * CHUNK
    client.close()


async def test_a_slow_client_pauses_the_upstream(proxy: Callable[..., Awaitable[Started]]) -> None:
    pod, _ = await proxy()
    client = await connect(pod.port, upgrade_request("/flood"))
    assert client.status == 101
    tunnel = the_tunnel(pod)
    upstream_flow = tunnel.upstream.flow
    assert upstream_flow is not None
    for _ in range(200):  # the client reads nothing: the proxy must stop reading the upstream
        if upstream_flow.reasons & PEER_WRITE_BLOCKED:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the proxy never stopped reading an upstream its client does not read")
    transport = tunnel.conn.transport
    assert transport is not None and transport.get_write_buffer_size() < 4 * 65536 + 2 * CHUNK
    # And it reads again once the client does: far more than it ever held comes through.
    got = 0
    for _ in range(MAX_CHUNKS):
        got += len(await asyncio.wait_for(client.reader.read(1 << 20), 5))
        if got > 64 * CHUNK:
            break
    assert got > 64 * CHUNK
    client.close()


async def test_stream_idle_timeout_ends_a_quiet_tunnel(
    proxy: Callable[..., Awaitable[Started]],
) -> None:
    pod, up = await proxy({"stream_idle_timeout": "1s", "delayed_close_timeout": "0s"})
    client = await connect(pod.port, upgrade_request("/ws"))
    assert client.status == 101
    closed = await client.closed(8.0)
    client.close()
    assert closed
    for _ in range(100):
        if up.closed:
            break
        await asyncio.sleep(0.05)
    assert up.closed == 1  # the upstream side was closed too
    assert pod.counter("http.ingress.downstream_rq_idle_timeout") == 1
    assert pod.gauge("http.ingress.downstream_cx_upgrades_active") == 0


async def test_the_tunnel_connection_never_returns_to_the_pool(
    proxy: Callable[..., Awaitable[Started]],
) -> None:
    pod, _ = await proxy()
    client = await connect(pod.port, upgrade_request("/ws"))
    assert await client.echo(b"one") == (1, b"one")
    tunnel = the_tunnel(pod)
    pool = tunnel.upstream.pool
    assert isinstance(tunnel.up.get_protocol(), UpstreamEnd)
    assert tunnel.upstream in pool.busy and not pool.idle
    client.writer.write(frame(b"", 0x8))
    await client.writer.drain()
    closed = await client.closed(5.0)
    client.close()
    assert closed
    for _ in range(100):
        if not pool.busy:
            break
        await asyncio.sleep(0.05)
    assert not pool.busy and not pool.idle
    assert pod.gauge("cluster.app.upstream_rq_active") == 0
    assert pod.gauge("http.ingress.downstream_cx_upgrades_active") == 0
    assert pod.counter("cluster.app.upstream_rq_101") == 1


async def test_access_log_counts_tunnel_bytes(
    proxy: Callable[..., Awaitable[Started]], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    fmt = {
        "status": "%RESPONSE_CODE%",
        "rx": "%BYTES_RECEIVED%",
        "tx": "%BYTES_SENT%",
        "upgrade": "%REQ(UPGRADE)%",
    }
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": str(log),
                "log_format": {"json_format": fmt},
            },
        }
    ]
    pod, _ = await proxy({"access_log": access_log})
    client = await connect(pod.port, upgrade_request("/ws"))
    sent = [frame(b"a" * 10), frame(b"b" * 300)]
    for f in sent:
        client.writer.write(f)
        await read_frame(client.reader)
    client.writer.write(frame(b"", 0x8))
    await client.writer.drain()
    closed = await client.closed(5.0)
    client.close()
    assert closed
    entry: dict[str, Any] = {}
    for _ in range(100):
        with contextlib.suppress(FileNotFoundError, IndexError, json.JSONDecodeError):
            entry = json.loads(log.read_text().splitlines()[0])
            break
        await asyncio.sleep(0.05)
    close_frame = frame(b"", 0x8)
    assert entry["status"] == 101 and entry["upgrade"] == "websocket"
    assert entry["rx"] == sum(len(f) for f in sent) + len(close_frame)
    # Server frames are unmasked: 4 bytes shorter each (2-byte headers for these sizes).
    assert entry["tx"] == 2 + 10 + 4 + 300 + 2
