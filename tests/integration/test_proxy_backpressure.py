"""Back-pressure: a slow peer on either side never makes podproxy buffer a whole body.

podproxy runs as a real subprocess (the CLI, on uvloop) so its memory can be read from
/proc/<pid>/status while a large body streams through it. The issue asks for 1 GiB bodies; these
tests use 256 MiB, which is already far above the bound asserted (+64 MiB over the baseline), so
a proxy that buffered would fail just the same, and each test stays under ~20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from integration.backends import Backend, RawClient, pattern_bytes
from integration.test_proxy_http import bootstrap, cluster, read_until, send

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads VmRSS from /proc/<pid>/status"
)

MiB = 1024 * 1024
BODY_SIZE = 256 * MiB
RSS_BOUND = 64 * MiB
PIECE = 256 * 1024
TEST_BUDGET = 20.0


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process' RSS every 20 ms in a task; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@contextlib.asynccontextmanager
async def big_body_server(host: str, size: int) -> AsyncIterator[tuple[str, int]]:
    """An upstream answering every request with `size` pattern bytes (content-length).

    The shared test backend caps bodies at 64 MiB; this one streams any size from one buffer.
    """
    block = pattern_bytes(MiB)
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                    b"content-length: %d\r\n\r\n" % size
                )
                sent = 0
                while sent < size:
                    n = min(len(block), size - sent)
                    writer.write(block[:n] if n < len(block) else block)
                    sent += n
                    await writer.drain()
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, host, 0)
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await server.wait_closed()


async def start_proxy(
    podproxy_process: Callable[..., Awaitable[Any]],
    free_port: Callable[..., int],
    endpoint: tuple[str, int],
) -> tuple[Any, int]:
    port = free_port()
    config = bootstrap(
        [cluster("app", [endpoint])],
        routes=[{"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}],
        listener_port=port,
        admin_port=free_port(),
    )
    proc = await podproxy_process(config)
    return proc, port


async def test_large_upload_to_slow_upstream_bounded_memory(
    podproxy_process: Callable[..., Awaitable[Any]],
    backend: Callable[..., Awaitable[Backend]],
    free_port: Callable[..., int],
) -> None:
    b = await backend()
    proc, port = await start_proxy(podproxy_process, free_port, b.address)
    piece = pattern_bytes(PIECE)
    digest = hashlib.sha256()
    async with asyncio.timeout(TEST_BUDGET):
        async with await RawClient.open("127.0.0.1", port) as client:
            # Warm up (first request, imports, pool) before taking the baseline.
            client.send(b"GET /echo HTTP/1.1\r\nhost: app\r\n\r\n")
            assert (await client.response()).status == 200
            async with RssSampler(proc.pid) as sampler:
                client.send(
                    b"POST /upload?slow=1 HTTP/1.1\r\nhost: app\r\n"
                    b"content-length: %d\r\n\r\n" % BODY_SIZE
                )
                started = time.monotonic()
                for _ in range(BODY_SIZE // PIECE):
                    await send(client, piece)
                    digest.update(piece)
                resp = await client.response(timeout=15)
            elapsed = time.monotonic() - started
    assert json.loads(resp.body) == {"length": BODY_SIZE, "sha256": digest.hexdigest()}
    # The upstream read slowly for its first 2 s; the proxy must not have soaked up the body.
    assert elapsed > 1.5
    assert sampler.growth < RSS_BOUND, (
        f"proxy RSS grew by {sampler.growth / MiB:.1f} MiB (baseline "
        f"{sampler.baseline / MiB:.1f} MiB) for a {BODY_SIZE // MiB} MiB upload"
    )


async def test_large_download_to_slow_client_bounded_memory(
    podproxy_process: Callable[..., Awaitable[Any]],
    loopback_ip: Callable[[int], str],
    free_port: Callable[..., int],
) -> None:
    async with big_body_server(loopback_ip(0), BODY_SIZE) as endpoint:
        proc, port = await start_proxy(podproxy_process, free_port, endpoint)
        async with asyncio.timeout(TEST_BUDGET):
            async with await RawClient.open("127.0.0.1", port) as client:
                client.send(b"GET /warmup HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                client.writer.transport.abort()
            await asyncio.sleep(0.2)
            client = await RawClient.open("127.0.0.1", port)
            async with client, RssSampler(proc.pid) as sampler:
                client.send(b"GET /big HTTP/1.1\r\nhost: app\r\n\r\n")
                head = await read_until(client, lambda b: b"\r\n\r\n" in b)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"\r\ncontent-length: %d\r\n" % BODY_SIZE in head
                received = len(head.partition(b"\r\n\r\n")[2])
                # Slow phase: 64 KiB every 20 ms (~3 MiB/s) for 3 s, while the upstream
                # could send at loopback speed.
                slow_until = time.monotonic() + 3.0
                while time.monotonic() < slow_until:
                    chunk = await client.reader.read(64 * 1024)
                    assert chunk
                    received += len(chunk)
                    await asyncio.sleep(0.02)
                slow_growth = sampler.peak - sampler.baseline
                # Then drain the rest at full speed: the whole body arrives.
                while received < BODY_SIZE:
                    chunk = await client.reader.read(1024 * 1024)
                    assert chunk, f"closed after {received} bytes"
                    received += len(chunk)
    assert received == BODY_SIZE
    assert slow_growth < RSS_BOUND
    assert sampler.growth < RSS_BOUND, (
        f"proxy RSS grew by {sampler.growth / MiB:.1f} MiB (baseline "
        f"{sampler.baseline / MiB:.1f} MiB) for a {BODY_SIZE // MiB} MiB download"
    )
