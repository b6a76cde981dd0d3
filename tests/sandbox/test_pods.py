"""Sandbox pods on real loopback sockets: naming, counting, keep-alive, pipelining, bodies,
graceful stop, readiness, PodSet scaling and the module CLI."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from integration.backends import RawClient, http_get, raw_exchange, wait_until

from podproxy.sandbox.pods import Pod, PodSet


def get(path: str = "/", *, close: bool = False) -> bytes:
    extra = b"connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nhost: pod\r\n%s\r\n" % (path.encode(), extra)


@pytest.fixture
async def pod(loopback_ip: Callable[[int], str]) -> AsyncIterator[Pod]:
    p = Pod("httpd-0", loopback_ip(0), port=0)
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=0.5)


async def test_names_itself(pod: Pod) -> None:
    resp = await http_get(pod.ip, pod.port, "/")
    assert resp.status == 200
    assert resp.body == f"pod httpd-0 ({pod.ip})\n".encode()
    assert resp.header("x-pod") == "httpd-0"
    assert resp.header("content-type") == "text/plain"
    assert pod.requests == 1


async def test_counts_requests_over_one_keep_alive_connection(pod: Pod) -> None:
    async with await RawClient.open(pod.ip, pod.port) as c:
        for i in range(5):
            c.send(get(f"/r{i}"))
            resp = await c.response()
            assert resp.status == 200
            assert resp.header("connection") is None
        c.send(get("/healthz"))
        assert (await c.response()).body == b"ok\n"
    assert pod.requests == 5  # /healthz is counted apart
    assert pod.health_checks == 1
    assert pod.connections_opened == 1


async def test_pipelined_requests_answered_in_order(pod: Pod) -> None:
    async with await RawClient.open(pod.ip, pod.port) as c:
        c.send(get("/a") + get("/healthz") + get("/b", close=True))
        a, health, b = await c.responses(3)
        assert (a.status, health.body, b.status) == (200, b"ok\n", 200)
        assert b.header("connection") == "close"
        assert await c.closed_by_peer()
    assert pod.requests == 2


async def test_chunked_and_content_length_bodies_are_consumed(pod: Pod) -> None:
    async with await RawClient.open(pod.ip, pod.port) as c:
        c.send(
            b"POST /upload HTTP/1.1\r\nhost: pod\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        await asyncio.sleep(0.05)  # the rest of the body arrives later, in another segment
        c.send(b"6\r\n world\r\n0\r\n\r\n")
        assert (await c.response()).status == 200
        c.send(b"PUT /x HTTP/1.1\r\nhost: pod\r\ncontent-length: 11\r\n\r\nhello")
        c.send(b" world" + get("/after"))
        put, after = await c.responses(2)
        assert (put.status, after.status) == (200, 200)
    assert pod.requests == 3
    assert pod.connections_opened == 1


async def test_expect_100_continue(pod: Pod) -> None:
    async with await RawClient.open(pod.ip, pod.port) as c:
        c.send(b"POST / HTTP/1.1\r\nhost: pod\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        assert (await c.response()).status == 100
        c.send(b"data")
        assert (await c.response()).status == 200


async def test_http10_closes_and_head_has_no_body(pod: Pod) -> None:
    data = await raw_exchange(pod.ip, pod.port, b"HEAD / HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in head
    assert body == b""


async def test_malformed_request_gets_400(pod: Pod) -> None:
    data = await raw_exchange(pod.ip, pod.port, b"NOT HTTP\x00\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")


async def test_healthz_follows_ready_and_pod_still_serves(pod: Pod) -> None:
    assert (await http_get(pod.ip, pod.port, "/healthz")).status == 200
    pod.ready = False
    resp = await http_get(pod.ip, pod.port, "/healthz")
    assert (resp.status, resp.body) == (503, b"not ready\n")
    assert (await http_get(pod.ip, pod.port, "/")).status == 200  # unready pods still serve
    pod.ready = True
    assert (await http_get(pod.ip, pod.port, "/healthz")).body == b"ok\n"


async def test_delay_query_makes_the_answer_slow(pod: Pod) -> None:
    start = time.monotonic()
    assert (await http_get(pod.ip, pod.port, "/?delay=0.2")).status == 200
    assert time.monotonic() - start >= 0.2


async def test_graceful_stop_finishes_in_flight_then_refuses(
    loopback_ip: Callable[[int], str],
) -> None:
    pod = Pod("httpd-0", loopback_ip(0), port=0)
    await pod.start()
    try:
        busy = await RawClient.open(pod.ip, pod.port)
        idle = await RawClient.open(pod.ip, pod.port)
        partial = await RawClient.open(pod.ip, pod.port)
        idle.send(get("/first"))
        assert (await idle.response()).status == 200  # now an idle keep-alive connection
        busy.send(get("/slow?delay=0.3"))
        partial.send(b"POST /p HTTP/1.1\r\nhost: pod\r\ncontent-length: 4\r\n\r\nab")
        await wait_until(lambda: pod.in_flight == 2)

        stopping = asyncio.create_task(pod.stop(grace=5.0))
        await wait_until(lambda: not pod.serving)
        assert await idle.closed_by_peer(timeout=2.0)
        with pytest.raises(OSError):
            await RawClient.open(pod.ip, pod.port, timeout=2.0)

        slow = await busy.response()
        assert slow.status == 200
        assert slow.header("connection") == "close"
        assert await busy.closed_by_peer(timeout=2.0)

        assert not stopping.done()  # still waiting for the partial request's body
        partial.send(b"cd")
        resp = await partial.response()
        assert (resp.status, resp.header("connection")) == (200, "close")
        await asyncio.wait_for(stopping, timeout=2.0)
        assert pod.requests == 3
        for c in (busy, idle, partial):
            c.close()
    finally:
        await pod.stop(grace=0.1)


async def test_stop_aborts_requests_still_running_after_grace(
    loopback_ip: Callable[[int], str],
) -> None:
    pod = Pod("httpd-0", loopback_ip(0), port=0)
    await pod.start()
    try:
        async with await RawClient.open(pod.ip, pod.port) as c:
            c.send(get("/?delay=30"))
            await wait_until(lambda: pod.in_flight == 1)
            start = time.monotonic()
            await asyncio.wait_for(pod.stop(grace=0.2), timeout=3.0)
            assert time.monotonic() - start < 2.0
            assert await c.closed_by_peer(timeout=2.0)
            assert pod.requests == 0
    finally:
        await pod.stop(grace=0.1)


async def test_pod_can_start_again_after_stop(pod: Pod) -> None:
    await pod.stop(grace=0.1)
    await pod.start()
    assert (await http_get(pod.ip, pod.port, "/")).status == 200


async def test_podset_names_addresses_and_one_port(loopback_ip: Callable[[int], str]) -> None:
    async with PodSet(3, prefix="web", port=0, base_ip=loopback_ip(0)) as pods:
        base = loopback_ip(0).rsplit(".", 1)[0]
        first = int(loopback_ip(0).rsplit(".", 1)[1])
        assert [p.name for p in pods] == ["web-0", "web-1", "web-2"]
        assert pods.ips == [f"{base}.{first + i}" for i in range(3)]
        assert len({p.port for p in pods}) == 1 and pods.port == pods[0].port
        for p in pods:
            resp = await http_get(p.ip, p.port, "/")
            assert resp.header("x-pod") == p.name
        assert pods.requests == {"web-0": 1, "web-1": 1, "web-2": 1}


async def test_podset_scales_up_and_down(pod_set: Callable[..., Awaitable[PodSet]]) -> None:
    pods = await pod_set(2, prefix="httpd")
    added, removed = await pods.scale(4)
    assert [p.name for p in added] == ["httpd-2", "httpd-3"] and removed == []
    assert all(p.port == pods.port for p in pods)
    assert (await http_get(added[1].ip, pods.port, "/")).header("x-pod") == "httpd-3"
    added, removed = await pods.scale(1, grace=0.5)
    assert added == [] and [p.name for p in removed] == ["httpd-1", "httpd-2", "httpd-3"]
    assert len(pods) == 1 and not any(p.serving for p in removed)
    with pytest.raises(OSError):
        await http_get(removed[0].ip, pods.port, "/")


async def test_cli_runs_pods_until_sigterm(loopback_ip: Callable[[int], str]) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "podproxy.sandbox.pods"),
            *("--count", "2", "--port", "0", "--prefix", "cli", "--base-ip", loopback_ip(0)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        lines = [
            await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 10.0)
            for _ in range(2)
        ]
        names_urls = [line.split() for line in lines]
        assert [n for n, _ in names_urls] == ["cli-0", "cli-1"]
        host, port = names_urls[1][1].removeprefix("http://").split(":")
        assert (await http_get(host, int(port), "/")).header("x-pod") == "cli-1"
        proc.send_signal(signal.SIGTERM)
        assert await loop.run_in_executor(None, proc.wait, 10.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5.0)
