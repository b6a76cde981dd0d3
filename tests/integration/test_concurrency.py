"""`--concurrency 2`: worker processes share the listener, the main one discovers and merges.

The real CLI (`podproxy_process`) against in-process backends and pods. Which worker served
what is read from Envoy's per-worker listener stats and from /proc (which process owns an
upstream socket); every process is found by pid and checked gone at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from podproxy.sandbox.cluster_dns import ClusterDNS, write_resolv_conf
from podproxy.sandbox.pods import Pod
from podproxy.sandbox.scenario import SERVICE_MANIFEST

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]

NS = "mynamespace"


def static_config(port: int, admin_port: int, backends: list[Backend]) -> str:
    return bootstrap_yaml(
        port, admin_port, [(b.host, b.port) for b in backends], route_timeout="30s"
    )


def dns_config(port: int, admin_port: int, pod_port: int) -> str:
    return bootstrap_yaml(
        port,
        admin_port,
        [("httpd-discovery", pod_port)],
        cluster_type="STRICT_DNS",
        cluster_extra="    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 0.5s\n",
        route_timeout="30s",
    )


# --- process and socket inspection (Linux /proc) -------------------------------------------


def children(pid: int) -> set[int]:
    """Pids whose parent is `pid`."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The comm field may hold spaces; the ppid is the 2nd field after its closing paren.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _hex_ipv4(hexaddr: str) -> str:
    ip, port = hexaddr.split(":")
    return f"{socket.inet_ntoa(int(ip, 16).to_bytes(4, 'little'))}:{int(port, 16)}"


def peers_of(pid: int) -> set[str]:
    """`ip:port` of the remote end of every IPv4 TCP socket that process `pid` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[9] in inodes:
                out.add(_hex_ipv4(cols[2]))
    return out


# --- helpers -------------------------------------------------------------------------------


class Running:
    def __init__(self, proc: ProxyProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    async def get(self, path: str = "/echo", *, timeout: float = 5.0) -> int:
        req = f"GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode()
        data = await raw_exchange("127.0.0.1", self.port, req, timeout=timeout)
        responses = parse_responses(data)
        return responses[0].status if responses else 0

    async def get_many(self, n: int, parallel: int = 20) -> list[int]:
        """`n` requests, each on its own connection, `parallel` at a time."""
        sem = asyncio.Semaphore(parallel)

        async def one() -> int:
            async with sem:
                try:
                    return await self.get()
                except (OSError, TimeoutError):
                    return 0

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        assert self.proc.admin is not None
        req = f"{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n"
        req += "content-length: 0\r\n\r\n"
        data = await raw_exchange(*self.proc.admin, req.encode(), timeout=5.0)
        (resp,) = parse_responses(data)
        return resp.status, resp.body.decode()

    async def stats(self) -> dict[str, int]:
        _, body = await self.admin("/stats")
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def workers(self) -> set[int]:
        return children(self.proc.pid)


@pytest.fixture
async def two_workers(
    podproxy_process: StartProxy, backend: StartBackend, free_port: Callable[..., int]
) -> Callable[..., Awaitable[tuple[Running, list[Backend]]]]:
    async def start(*args: str) -> tuple[Running, list[Backend]]:
        backends = [await backend(), await backend()]
        port = free_port()
        proc = await podproxy_process(
            static_config(port, free_port(), backends), "--concurrency", "2", *args
        )
        r = Running(proc, port)
        await wait_until(lambda: len(r.workers()) == 2, timeout=5.0)
        return r, backends

    return start


# --- tests ---------------------------------------------------------------------------------


async def test_two_workers_serve_and_stats_read_as_one_proxy(
    two_workers: Callable[..., Awaitable[tuple[Running, list[Backend]]]],
) -> None:
    r, backends = await two_workers()
    statuses = await r.get_many(200)
    assert statuses == [200] * 200
    stats = await r.stats()
    assert stats["http.ingress_http.downstream_rq_total"] == 200
    assert stats["http.ingress_http.downstream_rq_2xx"] == 200
    assert stats["cluster.backend.upstream_rq_total"] == 200
    # Main-owned stats are not multiplied by the worker count.
    assert stats["cluster.backend.membership_total"] == 2
    assert stats["server.concurrency"] == 2
    # Both workers took connections (Envoy's per-worker listener stats), 200 in all.
    per_worker = [
        stats.get(f"listener.127.0.0.1_{r.port}.worker_{i}.downstream_cx_total", 0)
        for i in range(2)
    ]
    assert sum(per_worker) == 200
    assert min(per_worker) > 0, per_worker
    assert stats[f"listener.127.0.0.1_{r.port}.downstream_cx_total"] == 200
    # The backends saw the same 200, and /clusters sums the per-host stats.
    assert sum(len(b.requests) for b in backends) == 200
    _, clusters = await r.admin("/clusters")
    rq = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^backend::(\S+)::rq_total::(\d+)$", clusters, re.M)
    }
    assert rq == {f"{b.host}:{b.port}": len(b.requests) for b in backends}
    # Each worker round-robins on its own: the hosts are within one request per worker.
    assert abs(rq[f"{backends[0].host}:{backends[0].port}"] - 100) <= 2
    _, prom = await r.admin("/stats/prometheus")
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 200' in (
        prom
    )
    # /reset_counters zeroes merged counters too; later requests count from there.
    assert (await r.admin("/reset_counters", "POST"))[0] == 200
    assert await r.get_many(10) == [200] * 10
    assert (await r.stats())["http.ingress_http.downstream_rq_total"] == 10


async def test_sigterm_drains_every_worker_then_exits_0(
    two_workers: Callable[..., Awaitable[tuple[Running, list[Backend]]]],
) -> None:
    r, backends = await two_workers("--drain-time-s", "10")
    workers = r.workers()
    clients = []
    try:
        # Slow requests on several connections, so both workers are likely to hold one.
        for _ in range(6):
            c = await RawClient.open("127.0.0.1", r.port)
            c.send(b"GET /sleep/1.5 HTTP/1.1\r\nhost: test\r\n\r\n")
            clients.append(c)
        await wait_until(lambda: sum(len(b.requests) for b in backends) >= 6, timeout=5.0)
        started = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        for c in clients:
            resp = await c.response(timeout=5.0)
            assert resp.status == 200
            assert resp.body == b"slept 1.5\n"
        rc = await r.proc.wait(10.0)
    finally:
        for c in clients:
            c.close()
    assert rc == 0
    assert time.monotonic() - started < 5.0
    assert not [pid for pid in workers if alive(pid)]
    assert "exited with 0" in r.proc.stderr_text()


async def test_quitquitquit_stops_workers_and_main(
    two_workers: Callable[..., Awaitable[tuple[Running, list[Backend]]]],
) -> None:
    r, _ = await two_workers()
    workers = r.workers()
    assert await r.admin("/quitquitquit", "POST") == (200, "OK\n")
    assert await r.proc.wait(10.0) == 0
    assert not [pid for pid in workers if alive(pid)]


async def test_a_killed_worker_is_restarted_and_traffic_continues(
    two_workers: Callable[..., Awaitable[tuple[Running, list[Backend]]]],
) -> None:
    r, _ = await two_workers()
    assert await r.get_many(20) == [200] * 20
    before = await r.stats()
    victim = min(r.workers())
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: victim not in r.workers() and len(r.workers()) == 2, timeout=10.0)
    assert await r.admin("/ready") == (200, "LIVE\n")
    # The new worker takes its share once it listens; until then the other one serves.
    assert await r.get_many(60) == [200] * 60
    after = await r.stats()
    # The dead worker's requests still count.
    assert after["http.ingress_http.downstream_rq_total"] == 80
    assert (
        after["http.ingress_http.downstream_rq_total"]
        > before["http.ingress_http.downstream_rq_total"]
    )
    assert "exited unexpectedly" in r.proc.stderr_text()
    new = r.workers() - {victim}
    assert len(new) == 2


async def test_workers_die_with_a_killed_main(
    two_workers: Callable[..., Awaitable[tuple[Running, list[Backend]]]],
) -> None:
    r, _ = await two_workers()
    workers = r.workers()
    assert len(workers) == 2
    r.proc.popen.send_signal(signal.SIGKILL)
    await r.proc.wait(5.0)
    await wait_until(lambda: not [pid for pid in workers if alive(pid)], timeout=5.0)


# --- STRICT_DNS over the project's cluster DNS ----------------------------------------------


@pytest.fixture
async def cluster_dns() -> AsyncIterator[ClusterDNS]:
    dns = ClusterDNS(port=0, ttl=1)
    await dns.start()
    dns.apply(SERVICE_MANIFEST)
    try:
        yield dns
    finally:
        await dns.stop()


@pytest.fixture
async def pods() -> AsyncIterator[list[Pod]]:
    started: list[Pod] = []
    try:
        yield started
    finally:
        for p in started:
            await p.stop(grace=0.2)


async def test_strict_dns_scale_up_reaches_both_workers(
    podproxy_process: StartProxy,
    free_port: Callable[..., int],
    loopback_ip: Callable[[int], str],
    cluster_dns: ClusterDNS,
    pods: list[Pod],
    tmp_path: Path,
) -> None:
    async def add_pod(i: int) -> Pod:
        pod = Pod(f"httpd-{i}", loopback_ip(i), pods[0].port if pods else 0)
        await pod.start()
        pods.append(pod)
        cluster_dns.add_pod(pod.name, NS, pod.ip, labels={"app": "httpd"})
        return pod

    for i in range(2):
        await add_pod(i)
    host, dport = cluster_dns.address
    resolv = write_resolv_conf(tmp_path / "resolv.conf", dport, NS, nameserver=host)
    port = free_port()
    proc = await podproxy_process(
        dns_config(port, free_port(), pods[0].port),
        "--concurrency",
        "2",
        "--resolv-conf",
        str(resolv),
        "--dns-server",
        f"{host}:{dport}",
    )
    r = Running(proc, port)
    await wait_until(lambda: len(r.workers()) == 2, timeout=5.0)
    assert await r.get_many(20) == [200] * 20
    new = await add_pod(2)
    target = f"{new.ip}:{new.port}"

    async def both_workers_use_new_pod() -> bool:
        assert await r.get_many(20) == [200] * 20
        workers = r.workers()
        return len(workers) == 2 and all(target in peers_of(w) for w in workers)

    deadline = time.monotonic() + 10.0
    while not await both_workers_use_new_pod():
        assert time.monotonic() < deadline, "a worker never sent traffic to the new pod"
        await asyncio.sleep(0.2)
    _, clusters = await r.admin("/clusters")
    assert f"backend::{target}::health_flags::healthy" in clusters
    stats = await r.stats()
    assert stats["cluster.backend.membership_total"] == 3
