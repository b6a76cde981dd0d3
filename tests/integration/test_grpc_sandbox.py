# ruff: noqa: E501  (the embedded resolver config keeps its long type URL on one line)
"""The sandbox's gRPC mode through a real proxy, Envoy and podproxy on the same config.

Real grpcio pods behind the cluster DNS's headless Service `grpc-discovery`, the proxy on the
sandbox's gRPC config (h2c listener, HTTP/2 cluster; pointed at the cluster DNS by
`typed_dns_resolver_config` so Envoy finds it too), and grpcio clients: calls on ONE channel
spread round robin over the pods and follow scaling, while the connection-pinned Service puts
every call on one pod.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from integration.backends import ProxyProcess, free_port
from integration.sidebyside import next_base_id
from podproxy.sandbox.cluster_dns import ClusterDNS
from podproxy.sandbox.grpc_config import (
    GRPC_LABELS,
    GRPC_NAMESPACE,
    GRPC_SERVICE_MANIFEST,
    GRPC_V3_YAML,
)
from podproxy.sandbox.grpc_load import KINDS, Caller, PinnedChannel, open_channel
from podproxy.sandbox.grpc_pods import GrpcPod
from podproxy.sandbox.scenario import parse_membership

ENVOY = Path(sys.executable).parent / "envoy"
FQDN = "grpc-discovery.mynamespace.svc.cluster.local."
CALLS_PER_POD = 100

StartProxy = Callable[..., Awaitable[ProxyProcess]]

RESOLVER = """\
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {dns_port}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
"""


def proxy_config(listen: int, admin: int, pod_port: int, dns_port: int) -> str:
    """The sandbox's gRPC config with this test's ports, resolving through the cluster DNS."""
    text = (
        GRPC_V3_YAML.replace("port_value: 10000", f"port_value: {listen}")
        .replace("port_value: 9901", f"port_value: {admin}")
        .replace("port_value: 50051", f"port_value: {pod_port}")
        .replace("address: grpc-discovery", f"address: {FQDN}")
        .replace(
            "    lb_policy: ROUND_ROBIN\n",
            "    lb_policy: ROUND_ROBIN\n" + RESOLVER.format(dns_port=dns_port),
        )
    )
    assert text.count(f"port_value: {pod_port}") == 1 and FQDN in text
    return text


@pytest.fixture
async def dns_server() -> AsyncIterator[ClusterDNS]:
    server = ClusterDNS(port=0, ttl=1)
    await server.start()
    server.apply(GRPC_SERVICE_MANIFEST)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def pods(loopback_ip: Callable[[int], str]) -> AsyncIterator[list[GrpcPod]]:
    """Four pods on one port (not started); whichever were started are stopped at teardown."""
    port = free_port(loopback_ip(0))
    made = [GrpcPod(f"grpc-{i}", loopback_ip(i), port) for i in range(4)]
    try:
        yield made
    finally:
        await asyncio.gather(*(p.stop(grace=0.5) for p in made))


async def add(dns: ClusterDNS, pod: GrpcPod) -> None:
    await pod.start()
    dns.add_pod(pod.name, GRPC_NAMESPACE, pod.ip, labels=GRPC_LABELS)


async def membership(proc: ProxyProcess) -> list[str]:
    r = await proc.admin_get("/clusters")
    return parse_membership(r.body.decode(), "grpc")


async def converge(proc: ProxyProcess, pods: list[GrpcPod], timeout: float = 15.0) -> None:
    want = sorted(p.target for p in pods)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await membership(proc) == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"proxy hosts {await membership(proc)}, expected {want}")


async def spread(caller: Caller, n: int) -> Counter[str]:
    """`n` calls one after another, cycling unary / server streaming / bidirectional."""
    seen: Counter[str] = Counter()
    for i in range(n):
        seen[await caller.call(KINDS[i % len(KINDS)])] += 1
    return seen


def assert_round_robin(seen: Counter[str], pods: list[GrpcPod]) -> None:
    assert set(seen) == {p.name for p in pods}, seen
    for p in pods:
        assert abs(seen[p.name] - CALLS_PER_POD) <= 1, seen


async def stat(proc: ProxyProcess, name: str) -> int:
    r = await proc.admin_get("/stats")
    for line in r.body.decode().splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"no stat {name} in /stats")


@pytest.fixture(params=[pytest.param("envoy", marks=pytest.mark.envoy), "podproxy"])
async def proxy(
    request: pytest.FixtureRequest,
    dns_server: ClusterDNS,
    pods: list[GrpcPod],
    podproxy_process: StartProxy,
) -> ProxyProcess:
    for pod in pods[:3]:
        await add(dns_server, pod)
    config = proxy_config(free_port(), free_port(), pods[0].port, dns_server.address[1])
    if request.param == "envoy":
        command = [str(ENVOY), "--concurrency", "1", "--base-id", str(next_base_id())]
        proc = await podproxy_process(config, command=command)
    else:
        proc = await podproxy_process(config)
    await converge(proc, pods[:3])
    return proc


def listen_target(proc: ProxyProcess) -> str:
    import yaml

    sa = yaml.safe_load(proc.config_path.read_text())["static_resources"]["listeners"][0]
    sa = sa["address"]["socket_address"]
    return f"{sa['address']}:{sa['port_value']}"


async def test_one_channel_spreads_over_the_pods_and_follows_scaling(
    proxy: ProxyProcess, dns_server: ClusterDNS, pods: list[GrpcPod]
) -> None:
    channel = open_channel(listen_target(proxy))
    try:
        caller = Caller(channel)
        assert_round_robin(await spread(caller, 3 * CALLS_PER_POD), pods[:3])
        # One downstream connection carried them; the proxy multiplexed its own HTTP/2
        # connection to each pod rather than opening one per call.
        assert await stat(proxy, "http.ingress_grpc.downstream_cx_total") == 1
        for p in pods[:3]:
            assert len(p.peers) == 1, (p.name, p.peers)

        await add(dns_server, pods[3])  # scale up: the new pod gets its share
        await converge(proxy, pods)
        assert_round_robin(await spread(caller, 4 * CALLS_PER_POD), pods)

        dns_server.set_terminating(pods[0].name, GRPC_NAMESPACE)  # scale down: out of DNS
        await converge(proxy, pods[1:])
        before = pods[0].requests
        assert_round_robin(await spread(caller, 3 * CALLS_PER_POD), pods[1:])
        assert pods[0].requests == before
        assert await stat(proxy, "http.ingress_grpc.downstream_cx_total") == 1
    finally:
        await channel.close()


async def test_a_connection_balanced_service_pins_every_call_to_one_pod(
    proxy: ProxyProcess, dns_server: ClusterDNS, pods: list[GrpcPod]
) -> None:
    # The same load, side by side: through the proxy it spreads, through a plain Service (one
    # connection to a pod picked when it connects) it all lands on one pod, even after scaling.
    channel = open_channel(listen_target(proxy))
    pinned = PinnedChannel(lambda: [p.target for p in pods if p.serving], random.Random(11))
    try:
        caller = Caller(channel)
        through_proxy = await spread(caller, 3 * CALLS_PER_POD)
        service: Counter[str] = Counter()
        for i in range(3 * CALLS_PER_POD):
            c = pinned.caller()
            assert c is not None
            service[await c.call(KINDS[i % len(KINDS)])] += 1
        assert_round_robin(through_proxy, pods[:3])
        assert len(service) == 1 and pinned.connections == 1, service

        await add(dns_server, pods[3])
        await converge(proxy, pods)
        c = pinned.caller()
        assert c is not None
        after = await spread(c, 3 * CALLS_PER_POD)
        assert set(after) == set(service) and pinned.connections == 1, after
    finally:
        await pinned.close()
        await channel.close()
