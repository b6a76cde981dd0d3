"""gRPC sandbox pods on real loopback sockets, called by real grpcio clients without a proxy:
answers name the pod, the three call shapes, bounds, one address per pod, graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest

from podproxy.sandbox.grpc_load import Caller, open_channel
from podproxy.sandbox.grpc_pods import CHAT, HELLO, WATCH, GrpcPod, as_bytes, pod_of

TIMEOUT = 5.0


@pytest.fixture
async def pod(loopback_ip: Callable[[int], str]) -> AsyncIterator[GrpcPod]:
    p = GrpcPod("grpc-0", loopback_ip(0), port=0)
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=0.5)


@pytest.fixture
async def channel(pod: GrpcPod) -> AsyncIterator[grpc.aio.Channel]:
    ch = open_channel(pod.target)
    try:
        yield ch
    finally:
        await ch.close()


async def test_every_answer_names_the_pod(pod: GrpcPod, channel: grpc.aio.Channel) -> None:
    hello = channel.unary_unary(HELLO, request_serializer=as_bytes, response_deserializer=as_bytes)
    call = hello(b"", timeout=TIMEOUT)
    assert await call == b"grpc-0"
    assert ("x-pod", "grpc-0") in tuple(await call.initial_metadata())

    watch = channel.unary_stream(WATCH, request_serializer=as_bytes, response_deserializer=as_bytes)
    assert [m async for m in watch(b"3", timeout=TIMEOUT)] == [
        b"grpc-0 1/3",
        b"grpc-0 2/3",
        b"grpc-0 3/3",
    ]

    chat = channel.stream_stream(CHAT, request_serializer=as_bytes, response_deserializer=as_bytes)

    async def messages() -> AsyncIterator[bytes]:
        for m in (b"a", b"bc"):
            yield m

    assert [m async for m in chat(messages(), timeout=TIMEOUT)] == [b"grpc-0 a", b"grpc-0 bc"]
    assert pod.requests == 3
    assert dict(pod.calls) == {"Hello": 1, "Watch": 1, "Chat": 1}
    # One channel, one connection: every call came from the same peer.
    assert len(pod.peers) == 1 and sum(pod.peers.values()) == 3
    assert pod_of(b"grpc-0 2/3") == "grpc-0"


async def test_caller_reports_the_pod_of_each_call_shape(pod: GrpcPod) -> None:
    ch = open_channel(pod.target)
    try:
        caller = Caller(ch)
        assert [await caller.call(k) for k in ("Hello", "Watch", "Chat")] == ["grpc-0"] * 3
        with pytest.raises(ValueError, match="unknown call kind"):
            await caller.call("Shout")
    finally:
        await ch.close()


@pytest.mark.parametrize("count", [b"0", b"101", b"lots"])
async def test_watch_is_bounded(channel: grpc.aio.Channel, count: bytes) -> None:
    watch = channel.unary_stream(WATCH, request_serializer=as_bytes, response_deserializer=as_bytes)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [m async for m in watch(count, timeout=TIMEOUT)]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_taken_address_is_an_error(pod: GrpcPod) -> None:
    # grpcio's SO_REUSEPORT default would let this bind and steal half the connections.
    other = GrpcPod("grpc-1", pod.ip, pod.port)
    with pytest.raises(OSError, match="cannot listen"):
        await other.start()
    assert not other.serving


async def test_graceful_stop_finishes_calls_in_flight_and_refuses_new_ones(
    pod: GrpcPod, channel: grpc.aio.Channel
) -> None:
    hello = channel.unary_unary(HELLO, request_serializer=as_bytes, response_deserializer=as_bytes)
    slow = asyncio.ensure_future(hello(b"", timeout=TIMEOUT, metadata=(("x-delay", "0.5"),)))
    while pod.requests == 0 and not slow.done():
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(pod.stop(grace=3.0))
    assert await slow == b"grpc-0"
    await stopping
    assert not pod.serving
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hello(b"", timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_calls_past_the_grace_period(
    pod: GrpcPod, channel: grpc.aio.Channel
) -> None:
    hello = channel.unary_unary(HELLO, request_serializer=as_bytes, response_deserializer=as_bytes)
    slow = asyncio.ensure_future(hello(b"", timeout=TIMEOUT, metadata=(("x-delay", "30"),)))
    while pod.requests == 0 and not slow.done():
        await asyncio.sleep(0.01)
    await pod.stop(grace=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow
    assert info.value.code() != grpc.StatusCode.OK
