"""Real gRPC peers for the HTTP/2 tests: grpcio servers as pods, and a grpcio client.

A `GrpcPod` is a grpcio server on a loopback address serving the `t.Echo` service with
generic handlers (bytes in, bytes out: no protobuf build step): every answer names the pod.
The client side is grpcio's blocking API, run off the event loop (`in_thread`), because the
proxy under test runs in-process on the test's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc

SERVICE = "t.Echo"
T = TypeVar("T")


def _unary(pod: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def handler(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        # Metadata the client sent comes back as trailing metadata (x-echo-*).
        echoed = [(k, v) for k, v in ctx.invocation_metadata() if k.startswith("x-echo-")]
        if echoed:
            ctx.set_trailing_metadata(tuple(echoed))
        return pod.encode() + b"|" + req

    return handler


def _sleep(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    """Sleeps the seconds in the request (bounded), or until the call is cancelled."""
    deadline = time.monotonic() + min(float(req or b"0"), 10.0)
    while time.monotonic() < deadline and ctx.is_active():
        time.sleep(0.01)
    return b"slept"


def _fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    """Aborts with the status code in the request (a number) and trailing metadata."""
    ctx.set_trailing_metadata((("x-why", "asked"),))
    n = int(req or b"13")
    ctx.abort(next(c for c in grpc.StatusCode if c.value[0] == n), "failed on purpose")
    raise AssertionError("unreachable")


def _server_stream(pod: str) -> Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]:
    def handler(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(req or b"3")):
            yield b"%d|%s" % (i, pod.encode())

    return handler


def _client_stream(pod: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], bytes]:
    def handler(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        total = 0
        count = 0
        for r in reqs:
            total += len(r)
            count += 1
        return b"%d messages, %d bytes|%s" % (count, total, pod.encode())

    return handler


def _bidi(pod: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
    def handler(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for r in reqs:
            yield r + b"|" + pod.encode()

    return handler


class GrpcPod:
    """A grpcio server on `address:port` (its name in answers: `address:port`)."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.address = address
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.port = self.server.add_insecure_port(f"{address}:{port}")
        name = f"{address}:{self.port}"
        self.name = name
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary(name)),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream(name)),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream(name)),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi(name)),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )

    def start(self) -> GrpcPod:
        self.server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait(10)


class Client:
    """A grpcio channel (one HTTP/2 connection) to `host:port` and its callables."""

    def __init__(self, host: str, port: int, **options: Any) -> None:
        opts = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            *options.items(),
        ]
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=opts)
        path = f"/{SERVICE}/"
        self.unary = self.channel.unary_unary(path + "Unary")
        self.sleep = self.channel.unary_unary(path + "Sleep")
        self.fail = self.channel.unary_unary(path + "Fail")
        self.server_stream = self.channel.unary_stream(path + "ServerStream")
        self.client_stream = self.channel.stream_unary(path + "ClientStream")
        self.bidi = self.channel.stream_stream(path + "Bidi")
        self.missing = self.channel.unary_unary(f"/{SERVICE}/Missing")

    def close(self) -> None:
        self.channel.close()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking grpcio call off the loop the proxy runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)
