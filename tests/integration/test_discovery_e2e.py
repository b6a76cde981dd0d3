"""The post, end to end: pods behind a headless Service, found and followed through DNS.

Real sockets everywhere: the project's cluster DNS (and dnsmasq for interop), pods on
127.0.1.x, podproxy in-process on the post's config with only the DNS server and the search list
supplied from outside (as a pod's resolv.conf would), and a steady load through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from integration.backends import free_port, http_get
from podproxy.config.loader import load
from podproxy.config.schema import CARES_TYPE, DNS_CLUSTER_TYPE, HCM_TYPE, ROUTER_TYPE
from podproxy.sandbox.cluster_dns import ClusterDNS, write_resolv_conf
from podproxy.sandbox.load import LoadGenerator
from podproxy.sandbox.pods import Pod
from podproxy.sandbox.scenario import SERVICE_MANIFEST, parse_membership
from podproxy.sandbox.seed_config import SEED_V2_YAML
from podproxy.server import Options, Server

NS = "mynamespace"
FQDN = "httpd-discovery.mynamespace.svc.cluster.local"


# Failure tests shorten the c-ares style 5 s x 4 tries so that a dead server is seen quickly.
FAST_FAILURE = """    typed_dns_resolver_config:
      typed_config:
        query_timeout_seconds: 1
        query_tries: 1
"""


def seed_config(
    listen_port: int,
    admin_port: int,
    *,
    refresh: str | None = "1s",
    name: str = "httpd-discovery",
    extra: str = "",
) -> str:
    """The post's v2 config; only ports (and, for speed, the refresh rate) differ."""
    text = SEED_V2_YAML.replace("port_value: 10000", f"port_value: {listen_port}")
    text = text.replace("port_value: 9901", f"port_value: {admin_port}")
    text = text.replace("address: 0.0.0.0", "address: 127.0.0.1")
    text = text.replace("address: httpd-discovery", f"address: {name}")
    text = text.replace("access_log_path: /tmp/admin_access.log", "access_log_path: /dev/null")
    if refresh is not None:
        extra += f"    dns_refresh_rate: {refresh}\n"
    return text.replace("    lb_policy: ROUND_ROBIN\n", "    lb_policy: ROUND_ROBIN\n" + extra)


class World:
    """Cluster DNS + pods + podproxy, all on this test's loop; torn down in reverse."""

    def __init__(self, tmp: Path, loopback_ip: Callable[[int], str]) -> None:
        self.tmp = tmp
        self.ip = loopback_ip  # pod i gets this test's address i
        self.dns = ClusterDNS(port=0, ttl=5)
        self.pods: dict[str, Pod] = {}
        self.server: Server | None = None
        self.task: asyncio.Task[int] | None = None
        self.listen_port = free_port()
        self.admin_port = free_port()

    async def start_dns(self) -> None:
        await self.dns.start()
        self.dns.apply(SERVICE_MANIFEST)

    async def add_pod(self, i: int, *, in_dns: bool = True) -> Pod:
        pod = Pod(
            f"httpd-{i}", self.ip(i), 0 if not self.pods else next(iter(self.pods.values())).port
        )
        await pod.start()
        self.pods[pod.name] = pod
        if in_dns:
            self.dns.add_pod(pod.name, NS, pod.ip, labels={"app": "httpd"})
        return pod

    @property
    def pod_port(self) -> int:
        return next(iter(self.pods.values())).port

    async def start_proxy(
        self,
        *,
        refresh: str | None = "1s",
        name: str = "httpd-discovery",
        dns_address: tuple[str, int] | None = None,
        extra: str = "",
    ) -> Server:
        text = seed_config(
            self.listen_port, self.admin_port, refresh=refresh, name=name, extra=extra
        )
        text = text.replace("port_value: 8080", f"port_value: {self.pod_port}")
        host, port = dns_address or self.dns.address
        resolv = write_resolv_conf(self.tmp / "resolv.conf", port, NS, nameserver=host)
        self.server = Server(
            load(config_yaml=text),
            Options(drain_time_s=1, resolv_conf=str(resolv), dns_servers=((host, port),)),
        )
        self.server.build()
        self.task = asyncio.get_running_loop().create_task(self.server.run())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = (await admin(self, "/ready"))[0]
            if status == 200:
                return self.server
            assert not self.task.done(), self.task
            await asyncio.sleep(0.05)
        raise AssertionError("proxy did not become ready")

    async def close(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.request_shutdown()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
        await asyncio.gather(
            *(p.stop(grace=0.2) for p in self.pods.values()), return_exceptions=True
        )
        await self.dns.stop()

    def membership(self) -> list[str]:
        assert self.server is not None
        return sorted(h.key for h in self.server.cluster_manager.clusters["httpd"].hosts)


async def admin(world: World, path: str) -> tuple[int, str]:
    try:
        r = await http_get("127.0.0.1", world.admin_port, path)
    except OSError:
        return 0, ""
    return r.status, r.body.decode()


async def get(world: World) -> tuple[int, str]:
    r = await http_get("127.0.0.1", world.listen_port, "/")
    return r.status, (r.header("x-pod") or r.body.decode())


async def wait_for(pred: Callable[[], bool], timeout: float) -> float:
    """Seconds until `pred()` held; fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
async def world(tmp_path: Path, loopback_ip: Callable[[int], str]) -> AsyncIterator[World]:
    w = World(tmp_path, loopback_ip)
    await w.start_dns()
    try:
        yield w
    finally:
        await w.close()


async def test_the_post_as_written_two_pods_alternate_and_scale_up_follows(world: World) -> None:
    # The post's config with its 5 s default refresh: nothing but ports changed.
    for i in range(2):
        await world.add_pod(i)
    await world.start_proxy(refresh=None)
    seen = [(await get(world))[1] for _ in range(6)]
    assert set(seen) == {"httpd-0", "httpd-1"}
    assert all(a != b for a, b in itertools.pairwise(seen))  # exact alternation
    t0 = time.monotonic()
    await world.add_pod(2)
    load = LoadGenerator("127.0.0.1", world.listen_port, rps=40, connections=2)
    load.start()
    try:
        took = await wait_for(lambda: load.stats.by_pod["httpd-2"] > 0, 8.0)
    finally:
        await load.stop()
    assert took <= 5.0 + 1.0, f"third pod took traffic after {took:.2f}s"
    assert load.stats.errors == 0
    assert time.monotonic() - t0 < 8


async def test_scale_down_the_kubernetes_way_loses_no_request(world: World) -> None:
    for i in range(3):
        await world.add_pod(i)
    await world.start_proxy(refresh="1s")
    load = LoadGenerator("127.0.0.1", world.listen_port, rps=100, connections=4)
    load.start()
    try:
        await asyncio.sleep(1.0)
        # Kubernetes: the endpoint leaves DNS (terminating) while the pod keeps serving for its
        # grace period, then the pod stops gracefully.
        world.dns.set_terminating("httpd-2", NS)
        await wait_for(lambda: len(world.membership()) == 2, 4.0)
        await asyncio.sleep(0.5)
        await world.pods["httpd-2"].stop(grace=2.0)
        world.dns.delete_pod("httpd-2", NS)
        served_before = load.stats.by_pod["httpd-2"]
        await asyncio.sleep(1.5)
        assert load.stats.by_pod["httpd-2"] == served_before
    finally:
        await load.stop()
    assert load.stats.ok > 200
    assert load.stats.errors == 0, load.stats.error_reasons


async def test_dns_down_keeps_hosts_and_updates_resume(world: World) -> None:
    for i in range(2):
        await world.add_pod(i)
    server = await world.start_proxy(refresh="0.5s", extra=FAST_FAILURE)
    stats = server.cluster_manager.clusters["httpd"].info.stats
    await world.dns.stop()
    failures = stats.update_failure.value
    await wait_for(lambda: stats.update_failure.value > failures, 8.0)
    assert world.membership() == [
        f"{world.ip(0)}:{world.pod_port}",
        f"{world.ip(1)}:{world.pod_port}",
    ]
    assert [(await get(world))[0] for _ in range(4)] == [200] * 4
    await world.add_pod(2)
    await world.dns.start()  # same port
    await wait_for(lambda: len(world.membership()) == 3, 8.0)


async def test_dns_drops_queries_timeouts_keep_hosts(world: World) -> None:
    await world.add_pod(0)
    server = await world.start_proxy(refresh="0.5s")
    stats = server.cluster_manager.clusters["httpd"].info.stats
    world.dns.servfail = True
    failures = stats.update_failure.value
    await wait_for(lambda: stats.update_failure.value > failures, 5.0)
    assert len(world.membership()) == 1
    assert (await get(world))[0] == 200


async def test_all_pods_unready_is_503_no_healthy_upstream_then_back(world: World) -> None:
    for i in range(2):
        await world.add_pod(i)
    await world.start_proxy(refresh="0.5s")
    for i in range(2):
        world.dns.set_ready(f"httpd-{i}", NS, False)
    await wait_for(lambda: world.membership() == [], 5.0)
    r = await http_get("127.0.0.1", world.listen_port, "/")
    assert (r.status, r.body) == (503, b"no healthy upstream")
    world.dns.set_ready("httpd-1", NS, True)
    await wait_for(lambda: len(world.membership()) == 1, 5.0)
    assert await get(world) == (200, "httpd-1")


async def test_sixty_pods_come_over_tcp_after_truncation(world: World) -> None:
    for i in range(60):
        await world.add_pod(i)
    await world.start_proxy(refresh="1s")
    assert len(world.membership()) == 60
    status, body = await admin(world, "/clusters")
    assert status == 200 and len(parse_membership(body)) == 60


@pytest.mark.parametrize("name", [FQDN, FQDN + ".", "httpd-discovery.mynamespace"])
async def test_names_full_with_and_without_trailing_dot(world: World, name: str) -> None:
    await world.add_pod(0)
    await world.start_proxy(name=name)
    assert await get(world) == (200, "httpd-0")


async def test_proxy_waits_for_first_resolution_before_listening(
    world: World, tmp_path: Path
) -> None:
    await world.add_pod(0)
    world.dns.delay = 1.0
    text = seed_config(world.listen_port, world.admin_port).replace(
        "port_value: 8080", f"port_value: {world.pod_port}"
    )
    host, port = world.dns.address
    resolv = write_resolv_conf(tmp_path / "r.conf", port, NS, nameserver=host)
    world.server = Server(
        load(config_yaml=text),
        Options(drain_time_s=1, resolv_conf=str(resolv), dns_servers=((host, port),)),
    )
    world.server.build()
    world.task = asyncio.get_running_loop().create_task(world.server.run())
    await wait_for(
        lambda: (
            world.server is not None
            and world.server.admin_listener is not None
            and world.server.admin_listener.server is not None
        ),
        5.0,
    )
    status, body = await admin(world, "/ready")
    assert (status, body.strip()) == (503, "INITIALIZING")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", world.listen_port)) != 0  # listener not open yet
    await wait_for(lambda: bool(world.membership()), 5.0)
    await asyncio.sleep(0.2)
    assert (await admin(world, "/ready"))[0] == 200
    assert await get(world) == (200, "httpd-0")


@pytest.fixture
def dnsmasq_hosts(tmp_path: Path) -> AsyncIterator[tuple[Path, int, Callable[[], None]]]:  # type: ignore[misc]
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(exe).exists():
        pytest.fail("dnsmasq is not installed: `make test` installs it")
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            "--local=/cluster.local/",
            "--local-ttl=1",
            "--user=root",
            "--log-facility=-",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def reload() -> None:
        proc.send_signal(1)  # SIGHUP re-reads --addn-hosts

    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield hosts, port, reload
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_interop_with_dnsmasq(
    world: World, dnsmasq_hosts: tuple[Path, int, Callable[[], None]]
) -> None:
    hosts, port, reload = dnsmasq_hosts
    for i in range(3):
        await world.add_pod(i, in_dns=False)
    hosts.write_text("".join(f"{world.ip(i)} {FQDN}\n" for i in range(2)))
    reload()
    await world.start_proxy(refresh="0.5s", dns_address=("127.0.0.1", port))
    assert len(world.membership()) == 2
    seen = {(await get(world))[1] for _ in range(4)}
    assert seen == {"httpd-0", "httpd-1"}
    hosts.write_text("".join(f"{world.ip(i)} {FQDN}\n" for i in range(3)))
    reload()
    await wait_for(lambda: len(world.membership()) == 3, 5.0)
    hosts.write_text(f"{world.ip(2)} {FQDN}\n")
    reload()
    await wait_for(lambda: len(world.membership()) == 1, 5.0)
    assert re.fullmatch(r"httpd-2", (await get(world))[1])


async def test_removed_host_finishes_in_flight_then_its_connections_close(world: World) -> None:
    for i in range(2):
        await world.add_pod(i)
    await world.start_proxy(refresh="0.3s")
    gone = world.pods["httpd-1"]
    # Warm keep-alive connections to both pods, then start a slow request on httpd-1.
    for _ in range(4):
        assert (await get(world))[0] == 200
    assert gone.open_connections >= 1
    slow: asyncio.Task[object] | None = None
    for _ in range(4):  # round robin: one of the next two requests lands on httpd-1
        task = asyncio.ensure_future(
            http_get("127.0.0.1", world.listen_port, "/?delay=1.5", timeout=5)
        )
        await asyncio.sleep(0.1)
        if gone.in_flight:
            slow = task
            break
        await task
    assert slow is not None
    world.dns.set_ready("httpd-1", NS, False)
    await wait_for(lambda: len(world.membership()) == 1, 3.0)
    assert gone.in_flight == 1  # removed from the proxy, its request still running
    before = gone.requests
    for _ in range(6):
        assert await get(world) == (200, "httpd-0")  # no new requests for the removed host
    assert gone.requests == before
    r = await slow
    assert r.status == 200 and r.header("x-pod") == "httpd-1"  # in-flight finished
    await wait_for(lambda: gone.open_connections == 0, 3.0)  # ...and then its connection closed


async def test_envoy_1_40_cluster_type_form(world: World) -> None:
    await world.add_pod(0)
    host, port = world.dns.address
    text = f"""
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {world.listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: httpd}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER_TYPE}}}
  clusters:
  - name: httpd
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    cluster_type:
      name: envoy.cluster.dns
      typed_config:
        "@type": {DNS_CLUSTER_TYPE}
        dns_refresh_rate: 0.5s
        dns_lookup_family: V4_ONLY
        typed_dns_resolver_config:
          name: envoy.network.dns_resolver.cares
          typed_config:
            "@type": {CARES_TYPE}
            resolvers: [{{socket_address: {{address: {host}, port_value: {port}}}}}]
    load_assignment:
      cluster_name: httpd
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: "{FQDN}.", port_value: {world.pod_port}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {world.admin_port}}}}}
"""
    world.server = Server(load(config_yaml=text), Options(drain_time_s=1))
    world.server.build()
    assert world.server.cluster_manager.clusters["httpd"].info.type_name == "STRICT_DNS"
    world.task = asyncio.get_running_loop().create_task(world.server.run())
    await wait_for(lambda: bool(world.membership()), 5.0)
    await world.add_pod(1)
    await wait_for(lambda: len(world.membership()) == 2, 5.0)
