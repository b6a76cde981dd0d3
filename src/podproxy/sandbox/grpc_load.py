"""gRPC load for `podproxy sandbox --grpc`: ONE grpcio channel through the proxy, and beside it
the same calls through a plain Kubernetes Service.

A grpcio channel to one address is one HTTP/2 connection that carries every call. Through
podproxy (an HTTP/2 upstream cluster, round robin per request) the calls on that connection
spread over the pods. A plain Service balances connections, not calls: kube-proxy picks a ready
endpoint when the connection is made and every call on it goes to that pod until the connection
ends; `PinnedChannel` models that with a channel straight to a pod picked at random when it
connects, and picked again only when that connection is lost (GOAWAY or failure). Every call has a
deadline; workers stop when told.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from podproxy.sandbox.grpc_pods import CHAT, HELLO, WATCH, as_bytes, pod_of
from podproxy.sandbox.load import LoadStats

log = logging.getLogger("podproxy.sandbox")

CALL_TIMEOUT: Final = 5.0  # the deadline of every call, so a stuck call cannot hang the load
WATCH_MESSAGES: Final = 3
CHAT_MESSAGES: Final = 3
KINDS: Final = ("Hello", "Watch", "Chat")  # the calls cycle through unary and both streamings

# Each channel keeps its own subchannels: with grpcio's global pool two channels to one address
# would share a connection, and "one channel = one connection" would no longer be ours to show.
CHANNEL_OPTIONS: Final = (("grpc.use_local_subchannel_pool", 1),)


def open_channel(target: str) -> Any:
    """An insecure (h2c, prior knowledge) grpcio channel to `host:port`."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class Caller:
    """The three methods of `podproxy.sandbox.Pods` on one channel."""

    __slots__ = ("_chat", "_hello", "_watch", "channel")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._hello = channel.unary_unary(
            HELLO, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        self._watch = channel.unary_stream(
            WATCH, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        self._chat = channel.stream_stream(
            CHAT, request_serializer=as_bytes, response_deserializer=as_bytes
        )

    async def call(self, kind: str, timeout: float = CALL_TIMEOUT) -> str:
        """Make one call of `kind`; the pod that answered. grpc.aio.AioRpcError on failure."""
        if kind == "Hello":
            answers = [await self._hello(b"", timeout=timeout)]
        elif kind == "Watch":
            call = self._watch(b"%d" % WATCH_MESSAGES, timeout=timeout)
            answers = [m async for m in call]
        elif kind == "Chat":
            call = self._chat(_chat_messages(CHAT_MESSAGES), timeout=timeout)
            answers = [m async for m in call]
        else:
            raise ValueError(f"unknown call kind {kind!r}; expected one of {', '.join(KINDS)}")
        pods = {pod_of(m) for m in answers}
        # A call is one HTTP/2 stream, and a proxy forwards a stream to one upstream stream.
        if len(pods) != 1:
            raise ValueError(f"{kind}: answers from {sorted(pods) or 'no pod'}")
        return pods.pop()


async def _chat_messages(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield b"message %d" % i


def record_ok(stats: LoadStats, pod: str) -> None:
    stats.sent += 1
    stats.ok += 1
    stats.by_pod[pod] += 1
    now = time.monotonic()
    stats.first_seen.setdefault(pod, now)
    stats.recent.append(now)
    recent = stats.recent_by_pod.get(pod)
    if recent is None:
        recent = stats.recent_by_pod[pod] = deque(maxlen=5_000)
    recent.append(now)


def record_error(stats: LoadStats, reason: str) -> None:
    stats.sent += 1
    stats.errors += 1
    stats.error_reasons[reason] += 1
    stats.recent_errors.append(time.monotonic())


class PinnedChannel:
    """A plain Service as a grpcio client sees it: one connection, to the pod picked at connect.

    `endpoints()` gives the Service's ready endpoints (`ip:port`); a pick is uniform among them,
    as kube-proxy's iptables rules are. The channel is kept while its connection lives; once it
    has been READY and leaves READY (the pod's GOAWAY, a reset) or fails to connect, the next call
    opens a new channel to a new pick, as a client's reconnect through the ClusterIP would.
    """

    def __init__(self, endpoints: Callable[[], Sequence[str]], rng: random.Random) -> None:
        self._endpoints = endpoints
        self._rng = rng
        self._caller: Caller | None = None
        self._was_ready = False
        self._closing: set[asyncio.Task[None]] = set()
        self.target: str | None = None
        self.connections = 0  # picks made: each is one TCP connection through the Service

    def caller(self) -> Caller | None:
        """The current connection's caller; None while the Service has no ready endpoint."""
        caller = self._caller
        if caller is not None:
            state = caller.channel.get_state(try_to_connect=False)
            if state == grpc.ChannelConnectivity.READY:
                self._was_ready = True
            elif self._was_ready or state in (
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN,
            ):
                self.lost(caller)
        if self._caller is None:
            endpoints = list(self._endpoints())
            if not endpoints:
                return None
            self.target = self._rng.choice(endpoints)
            self._caller = Caller(open_channel(self.target))
            self._was_ready = False
            self.connections += 1
        return self._caller

    def lost(self, caller: Caller) -> None:
        """`caller`'s connection is gone; the next call connects (and picks) again."""
        if caller is not self._caller:
            return
        self._caller = None
        self.target = None
        task = asyncio.get_running_loop().create_task(caller.channel.close(1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._caller is not None:
            self.lost(self._caller)
        await asyncio.gather(*self._closing, return_exceptions=True)


class GrpcLoad:
    """Calls at `rps` in total from `concurrency` workers on ONE channel to the proxy at host:port;
    with `endpoints`, each worker makes the same call through the pinned Service beside it.

    `stats` is what went through the proxy (the view reads it as it reads the HTTP load's),
    `service` what went through the Service. `proxy_connections` counts the times the proxy
    channel became READY: 1 while the one HTTP/2 connection lives.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rps: float = 50.0,
        concurrency: int = 4,
        endpoints: Callable[[], Sequence[str]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.target = f"{host}:{port}"
        self.rps = rps
        self.concurrency = concurrency
        self.stats = LoadStats()
        self.service = LoadStats()
        self.pinned = (
            PinnedChannel(endpoints, rng or random.Random()) if endpoints is not None else None
        )
        self.proxy_connections = 0
        self._proxy: Caller | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._proxy = Caller(open_channel(self.target))
        self._tasks.append(loop.create_task(self._count_connections(self._proxy.channel)))
        for i in range(self.concurrency):
            self._tasks.append(loop.create_task(self._worker(i, self._proxy)))

    async def stop(self) -> None:
        """Stop the workers and close the channels, each step bounded in time: a grpc.aio
        channel that stopped answering must not keep the sandbox from exiting."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await _bounded(asyncio.gather(*self._tasks, return_exceptions=True), "workers")
        self._tasks.clear()
        if self._proxy is not None:
            await _bounded(self._proxy.channel.close(1.0), "the proxy channel")
            self._proxy = None
        if self.pinned is not None:
            await _bounded(self.pinned.close(), "the Service channel")

    async def _count_connections(self, channel: Any) -> None:
        state = channel.get_state(try_to_connect=True)
        while not self._stopping:
            if state == grpc.ChannelConnectivity.READY:
                self.proxy_connections += 1
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=False)

    async def _worker(self, index: int, proxy: Caller) -> None:
        interval = self.concurrency / self.rps if self.rps > 0 else 0.0
        next_at = time.monotonic() + interval * index / max(1, self.concurrency)
        n = index
        while not self._stopping:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            kind = KINDS[n % len(KINDS)]
            n += 1
            if self.pinned is None:
                await _one(proxy, kind, self.stats)
            else:
                await asyncio.gather(
                    _one(proxy, kind, self.stats), self._through_service(self.pinned, kind)
                )

    async def _through_service(self, pinned: PinnedChannel, kind: str) -> None:
        caller = pinned.caller()
        if caller is None:
            record_error(self.service, "no endpoints")
            return
        if not await _one(caller, kind, self.service):
            pinned.lost(caller)


async def _one(caller: Caller, kind: str, stats: LoadStats) -> bool:
    """One call, recorded in `stats`; False when the connection looks lost (UNAVAILABLE)."""
    try:
        pod = await caller.call(kind)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        record_error(stats, code.name)
        return bool(code != grpc.StatusCode.UNAVAILABLE)
    except ValueError as exc:
        record_error(stats, str(exc))
        return True
    record_ok(stats, pod)
    return True


# How long stopping the load may wait for each step.
STOP_TIMEOUT = 5.0


async def _bounded(aw: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(aw, STOP_TIMEOUT)
    except TimeoutError:
        log.warning("gRPC load: %s did not stop within %gs; going on", what, STOP_TIMEOUT)
