"""gRPC "pods" for `podproxy sandbox --grpc`: one grpcio server per 127.0.1.x address.

A `GrpcPod` serves the small service `podproxy.sandbox.Pods` through grpcio's generic handlers
with bytes (de)serialisers, so no protoc or protobuf is involved: `Hello` (unary) answers the
pod's name, `Watch` (server streaming) answers N messages, `Chat` (bidirectional) answers each
message it gets; `x-delay: <seconds>` request metadata makes `Hello` answer slowly (for drain
scenarios). Every answer message starts with the pod's name, and the pod's name is also sent
as `x-pod` initial metadata. A pod counts its calls and the peers (client connections) they came
on, and stops as grpcio's graceful stop does: GOAWAY, no new calls, in-flight calls finish within
the grace period.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, Self

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

SERVICE_NAME: Final = "podproxy.sandbox.Pods"
HELLO: Final = f"/{SERVICE_NAME}/Hello"
WATCH: Final = f"/{SERVICE_NAME}/Watch"
CHAT: Final = f"/{SERVICE_NAME}/Chat"

# Bounds that keep one call from holding a pod (or a test) for long.
MAX_WATCH: Final = 100  # messages one Watch may ask for
MAX_CHAT: Final = 1000  # messages one Chat may send
MAX_MESSAGE: Final = 64 * 1024  # bytes of one request message
MAX_DELAY: Final = 60.0  # cap on `x-delay`, as the HTTP pods cap `?delay=`

# grpcio sets SO_REUSEPORT by default, which would let a second pod bind a taken ip:port and
# split its connections silently; each pod owns its address, as a pod's network namespace does.
SERVER_OPTIONS: Final = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)


def as_bytes(data: bytes) -> bytes:
    """The (de)serialiser of every method: messages are the bytes themselves."""
    return data


def pod_of(message: bytes) -> str:
    """The pod named by an answer message (its first word)."""
    return message.split(b" ", 1)[0].decode("ascii", "replace")


class GrpcPod:
    """One gRPC backend on `ip:port`; `port=0` picks a free port, read it after start()."""

    def __init__(self, name: str, ip: str, port: int = 50051, *, ready: bool = True) -> None:
        self.name = name
        self.ip = ip
        self.port = port
        # Only the sandbox's DNS reads it (a readiness probe's verdict); the pod serves anyway.
        self.ready = ready
        self.requests = 0  # calls served, named as Pod's counter so the view reads either
        self.calls: Counter[str] = Counter()  # by method: Hello, Watch, Chat
        self.peers: Counter[str] = Counter()  # calls per client connection (grpc peer string)
        self._server: Any = None
        self._stopping = False
        self._name_bytes = name.encode("ascii")
        self._metadata = (("x-pod", name),)

    def __repr__(self) -> str:
        state = "serving" if self.serving else "stopping" if self._stopping else "stopped"
        return (
            f"<GrpcPod {self.name} {self.ip}:{self.port} {state} ready={self.ready} "
            f"calls={self.requests} peers={len(self.peers)}>"
        )

    @property
    def serving(self) -> bool:
        return self._server is not None and not self._stopping

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def target(self) -> str:
        """The address as a grpcio channel target."""
        return f"{self.ip}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self!r} already started")
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Hello": grpc.unary_unary_rpc_method_handler(
                    self._hello, request_deserializer=as_bytes, response_serializer=as_bytes
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self._watch, request_deserializer=as_bytes, response_serializer=as_bytes
                ),
                "Chat": grpc.stream_stream_rpc_method_handler(
                    self._chat, request_deserializer=as_bytes, response_serializer=as_bytes
                ),
            },
        )
        server = grpc.aio.server(handlers=(handler,), options=SERVER_OPTIONS)
        try:
            port = server.add_insecure_port(self.target)
        except RuntimeError as exc:
            raise OSError(f"{self.name}: cannot listen on {self.target}: {exc}") from exc
        if port == 0:  # older grpcio reports a failed bind this way
            raise OSError(f"{self.name}: cannot listen on {self.target}")
        self.port = port
        await server.start()
        self._stopping = False
        self._server = server

    async def stop(self, grace: float = 5.0) -> None:
        """GOAWAY and refuse new calls at once; cancel calls still running after `grace`."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        await server.stop(max(grace, 0.0))
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=1.0)

    def _count(self, method: str, context: Any) -> None:
        self.requests += 1
        self.calls[method] += 1
        self.peers[str(context.peer())] += 1

    async def _hello(self, request: bytes, context: Any) -> bytes:
        self._count("Hello", context)
        await context.send_initial_metadata(self._metadata)
        delay = _delay_of(context.invocation_metadata())
        if delay > 0:
            await asyncio.sleep(delay)
        return self._name_bytes

    async def _watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        """`request` is the number of messages wanted, in ASCII digits (1..MAX_WATCH)."""
        self._count("Watch", context)
        try:
            n = int(request or b"1")
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_WATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Watch takes 1..{MAX_WATCH} messages"
            )
        await context.send_initial_metadata(self._metadata)
        for i in range(n):
            yield b"%s %d/%d" % (self._name_bytes, i + 1, n)

    async def _chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self._count("Chat", context)
        await context.send_initial_metadata(self._metadata)
        seen = 0
        async for message in requests:
            seen += 1
            if seen > MAX_CHAT:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"Chat takes at most {MAX_CHAT} messages"
                )
            yield self._name_bytes + b" " + message


def _delay_of(metadata: Any) -> float:
    for key, value in metadata or ():
        if key == "x-delay":
            try:
                return min(max(float(value), 0.0), MAX_DELAY)
            except ValueError:
                return 0.0
    return 0.0
