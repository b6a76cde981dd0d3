# ruff: noqa: E501  (the embedded Envoy config keeps its long type URLs on one line)
"""STRICT_DNS side by side: real Envoy and podproxy on the same cluster DNS follow the same pods.

Both run the same v3 config (the post's cluster, pointed at the project's cluster DNS through
`typed_dns_resolver_config`, refresh 1 s) as subprocesses. After each change to the Service's
endpoints, both `/clusters` host sets must become the same set; the time each took to converge
on a scale-up is printed (`pytest -s` shows it) for the closing note.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from integration.backends import ProxyProcess, free_port
from integration.sidebyside import next_base_id
from podproxy.sandbox.cluster_dns import ClusterDNS
from podproxy.sandbox.scenario import SERVICE_MANIFEST, parse_membership

pytestmark = pytest.mark.envoy

ENVOY = Path(sys.executable).parent / "envoy"
NS = "mynamespace"
FQDN = "httpd-discovery.mynamespace.svc.cluster.local."

StartProxy = Callable[..., Awaitable[ProxyProcess]]

CONFIG = """
static_resources:
  listeners:
  - name: listener_0
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{host_rewrite_literal: httpd, cluster: httpd}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: httpd
    connect_timeout: 0.25s
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    dns_refresh_rate: 1s
    lb_policy: ROUND_ROBIN
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {dns_port}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
    load_assignment:
      cluster_name: httpd
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: "{name}", port_value: 8080}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""


async def membership(proc: ProxyProcess) -> list[str]:
    r = await proc.admin_get("/clusters")
    return parse_membership(r.body.decode())


@pytest.fixture
async def dns_server() -> AsyncIterator[ClusterDNS]:
    server = ClusterDNS(port=0, ttl=1)
    await server.start()
    server.apply(SERVICE_MANIFEST)
    try:
        yield server
    finally:
        await server.stop()


async def test_same_host_sets_after_each_change(
    dns_server: ClusterDNS,
    podproxy_process: StartProxy,
    loopback_ip: Callable[[int], str],
) -> None:
    ips = [loopback_ip(i) for i in range(4)]
    for i in range(2):
        dns_server.add_pod(f"httpd-{i}", NS, ips[i], labels={"app": "httpd"})
    dns_port = dns_server.address[1]

    def config() -> str:
        return CONFIG.format(listen=free_port(), admin=free_port(), dns_port=dns_port, name=FQDN)

    envoy = await podproxy_process(
        config(), command=[str(ENVOY), "--concurrency", "1", "--base-id", str(next_base_id())]
    )
    ours = await podproxy_process(config())

    async def converge(expected: list[str], timeout: float = 10.0) -> dict[str, float]:
        want = sorted(f"{ip}:8080" for ip in expected)
        start = time.monotonic()
        took: dict[str, float] = {}
        while time.monotonic() - start < timeout and len(took) < 2:
            for name, proc in (("envoy", envoy), ("podproxy", ours)):
                if name not in took and await membership(proc) == want:
                    took[name] = time.monotonic() - start
            await asyncio.sleep(0.05)
        assert set(took) == {"envoy", "podproxy"}, (
            f"expected {want}; envoy {await membership(envoy)}, podproxy {await membership(ours)}"
        )
        return took

    await converge(ips[:2])
    # converge() returns just after one of them refreshed: change at a random phase instead,
    # so neither proxy's timer is favoured in the figures.
    await asyncio.sleep(random.uniform(0.0, 1.0))
    dns_server.add_pod("httpd-2", NS, ips[2], labels={"app": "httpd"})
    dns_server.add_pod("httpd-3", NS, ips[3], labels={"app": "httpd"})
    took = await converge(ips[:4])
    print(
        f"\nscale-up convergence (refresh 1 s): envoy {took['envoy']:.2f}s, "
        f"podproxy {took['podproxy']:.2f}s"
    )
    dns_server.set_terminating("httpd-0", NS)
    await converge(ips[1:4])
    for i in (1, 2, 3):
        dns_server.set_ready(f"httpd-{i}", NS, False)
    await converge([])  # NXDOMAIN: both drop every host (Envoy >= 1.23)
    dns_server.set_ready("httpd-2", NS, True)
    await converge([ips[2]])
    await dns_server.stop()  # DNS down: both keep what they have
    await asyncio.sleep(2.5)
    assert await membership(envoy) == await membership(ours) == [f"{ips[2]}:8080"]
