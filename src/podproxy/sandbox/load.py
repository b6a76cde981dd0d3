"""Steady load through the proxy: a few keep-alive connections, paced to a request rate.

Each response is attributed to the pod that served it (the pods' `x-pod` header); anything else
(a non-2xx status, a reset, a timeout) is an error, kept with its reason. Bounded: every request
has a timeout and the generator stops when told or when its deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 5.0
MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass
class LoadStats:
    """What the load generator saw."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    by_pod: Counter[str] = field(default_factory=Counter)
    error_reasons: Counter[str] = field(default_factory=Counter)
    first_seen: dict[str, float] = field(default_factory=dict)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    recent_errors: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    recent_by_pod: dict[str, deque[float]] = field(default_factory=dict)

    def pod_rate(self, pod: str, window: float = 2.0) -> float:
        now = time.monotonic()
        return sum(1 for t in self.recent_by_pod.get(pod, ()) if now - t <= window) / window

    def rate(self, window: float = 2.0) -> float:
        now = time.monotonic()
        return sum(1 for t in self.recent if now - t <= window) / window

    def error_rate(self, window: float = 2.0) -> float:
        now = time.monotonic()
        return sum(1 for t in self.recent_errors if now - t <= window) / window


class LoadGenerator:
    """`connections` clients sending GET / to host:port, `rps` requests a second in total."""

    def __init__(self, host: str, port: int, *, rps: float = 50.0, connections: int = 4) -> None:
        self.host = host
        self.port = port
        self.rps = rps
        self.connections = connections
        self.stats = LoadStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.connections):
            self._tasks.append(loop.create_task(self._client(i)))

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _error(self, reason: str) -> None:
        st = self.stats
        st.errors += 1
        st.error_reasons[reason] += 1
        st.recent_errors.append(time.monotonic())

    async def _client(self, index: int) -> None:
        interval = self.connections / self.rps if self.rps > 0 else 0.0
        next_at = time.monotonic() + interval * index / max(1, self.connections)
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self._stopping:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + interval, time.monotonic() - 1.0)
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(
                            asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT
                        )
                    self.stats.sent += 1
                    keep = await asyncio.wait_for(self._one(*conn), REQUEST_TIMEOUT)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self._error(type(exc).__name__)
                    keep = False
                except TimeoutError:
                    self._error("timeout")
                    keep = False
                if not keep and conn is not None:
                    conn[1].close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"GET / HTTP/1.1\r\nhost: sandbox\r\nuser-agent: podproxy-sandbox\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_RESPONSE_BYTES:
            raise ValueError("response too large")
        await reader.readexactly(length)
        st = self.stats
        if 200 <= status < 300:
            pod = headers.get("x-pod", "?")
            st.ok += 1
            st.by_pod[pod] += 1
            now = time.monotonic()
            st.first_seen.setdefault(pod, now)
            st.recent.append(now)
            recent = st.recent_by_pod.get(pod)
            if recent is None:
                recent = st.recent_by_pod[pod] = deque(maxlen=5_000)
            recent.append(now)
        else:
            self._error(f"HTTP {status}")
        return headers.get("connection", "").lower() != "close"
