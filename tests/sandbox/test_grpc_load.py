"""gRPC sandbox load against real grpcio pods, no proxy: the connection-pinned Service and the
paced one-channel load with its accounting."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from podproxy.sandbox.grpc_load import GrpcLoad, PinnedChannel, record_error, record_ok
from podproxy.sandbox.grpc_pods import GrpcPod
from podproxy.sandbox.load import LoadStats


@pytest.fixture
async def pods(loopback_ip: Callable[[int], str]) -> AsyncIterator[list[GrpcPod]]:
    started: list[GrpcPod] = []
    try:
        port = 0
        for i in range(3):
            p = GrpcPod(f"grpc-{i}", loopback_ip(i), port)
            await p.start()
            port = p.port
            started.append(p)
        yield started
    finally:
        await asyncio.gather(*(p.stop(grace=0.5) for p in started))


async def wait_for(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def test_record() -> None:
    st = LoadStats()
    record_ok(st, "grpc-0")
    record_ok(st, "grpc-0")
    record_error(st, "UNAVAILABLE")
    assert (st.sent, st.ok, st.errors) == (3, 2, 1)
    assert st.by_pod == Counter({"grpc-0": 2})
    assert st.error_reasons == Counter({"UNAVAILABLE": 1})
    assert "grpc-0" in st.first_seen and len(st.recent_by_pod["grpc-0"]) == 2


async def test_pinned_channel_keeps_one_pod_until_its_connection_goes(
    pods: list[GrpcPod],
) -> None:
    serving = lambda: [p.target for p in pods if p.serving]  # noqa: E731
    pinned = PinnedChannel(serving, random.Random(7))
    try:
        seen: Counter[str] = Counter()
        for i in range(30):
            caller = pinned.caller()
            assert caller is not None
            seen[await caller.call(("Hello", "Watch", "Chat")[i % 3])] += 1
        assert len(seen) == 1 and pinned.connections == 1, seen
        first = next(p for p in pods if p.name in seen)
        assert pinned.target == first.target
        assert len(first.peers) == 1

        await first.stop(grace=1.0)  # GOAWAY: the connection ends, the next call picks again
        after: Counter[str] = Counter()
        errors = 0
        for _ in range(30):
            caller = pinned.caller()
            assert caller is not None
            try:
                after[await caller.call("Hello", timeout=2.0)] += 1
            except Exception:
                errors += 1
                pinned.lost(caller)
        assert len(after) == 1 and first.name not in after, after
        assert pinned.connections == 2
        assert errors <= 1
    finally:
        await pinned.close()


async def test_pinned_channel_without_endpoints(pods: list[GrpcPod]) -> None:
    pinned = PinnedChannel(list, random.Random(1))
    assert pinned.caller() is None
    assert pinned.connections == 0
    await pinned.close()


async def test_load_on_one_channel_with_the_service_beside(pods: list[GrpcPod]) -> None:
    # No proxy here: the "proxy" target is pod 0 itself, so every proxied call lands there.
    load = GrpcLoad(
        pods[0].ip,
        pods[0].port,
        rps=200,
        concurrency=3,
        endpoints=lambda: [p.target for p in pods[1:]],
        rng=random.Random(3),
    )
    load.start()
    try:
        await wait_for(lambda: load.stats.ok >= 30 and load.service.ok >= 30, 10)
    finally:
        await load.stop()
    assert set(load.stats.by_pod) == {"grpc-0"}
    assert load.stats.errors == 0, load.stats.error_reasons
    assert len(load.service.by_pod) == 1 and "grpc-0" not in load.service.by_pod
    assert load.service.errors == 0, load.service.error_reasons
    assert load.proxy_connections == 1
    # Each of the three call shapes went through; one connection from the load's channel.
    assert set(pods[0].calls) == {"Hello", "Watch", "Chat"}
    assert len(pods[0].peers) == 1
    sent = load.stats.sent
    await asyncio.sleep(0.2)
    assert load.stats.sent == sent  # stopped means stopped
