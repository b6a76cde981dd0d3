"""Resident memory per idle keep-alive client connection (issue 4, item 4).

Opens N connections to a proxy in batches; each sends one request and reads its response, so
the connection has been through the HTTP layer, then stays open and idle. The proxy's RSS
(with its children) after, minus before, divided by N, is the cost of one idle connection.
`measure(..., h2c=True)` does the same over h2c by prior knowledge: each connection exchanges
SETTINGS and one GET stream, then idles with the proxy's HTTP/2 session open. The caller
raises RLIMIT_NOFILE first (`run.raise_nofile`).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

BATCH = 200
SETTLE_S = 2.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` and its children (nginx/haproxy/podproxy workers), in KiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def _open_one(host: str, port: int) -> asyncio.StreamWriter | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            return None
        return writer
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        return None


async def _open_one_h2(host: str, port: int) -> asyncio.StreamWriter | None:
    """One h2c connection after one 200 stream; the client's h2 state is dropped after it
    (an idle connection needs none: no proxy here pings), so only the proxy's side grows."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "http"), (":authority", "bench"), (":path", "/")],
            end_stream=True,
        )
        writer.write(conn.data_to_send())
        status = b""
        ended = False
        while not ended:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                writer.close()
                return None
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status", b"")
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            # SETTINGS ACKs and WINDOW_UPDATEs for what was read.
            writer.write(conn.data_to_send())
        if status != b"200":
            writer.close()
            return None
        return writer
    except (TimeoutError, OSError, h2.exceptions.H2Error):
        return None


async def measure(host: str, port: int, pid: int, n: int, *, h2c: bool = False) -> dict[str, Any]:
    opener = _open_one_h2 if h2c else _open_one
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    writers: list[asyncio.StreamWriter] = []
    failed = 0
    try:
        for start in range(0, n, BATCH):
            got = await asyncio.gather(*(opener(host, port) for _ in range(min(BATCH, n - start))))
            writers += [w for w in got if w is not None]
            failed += sum(1 for w in got if w is None)
        await asyncio.sleep(SETTLE_S)
        after = rss_kib(pid)
    finally:
        for w in writers:
            with contextlib.suppress(Exception):
                w.close()
        await asyncio.sleep(0.5)
    held = len(writers)
    return {
        "connections": held,
        "failed": failed,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round((after - before) * 1024 / held) if held else None,
    }


def table(mem: dict[str, dict[str, Any]], what: str = "idle keep-alive connections") -> str:
    lines = [
        f"### {what}: resident memory",
        "",
        "| system | connections held | RSS before | RSS after | per connection |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for system, m in mem.items():
        per = m["bytes_per_connection"]
        lines.append(
            f"| {system} | {m['connections']:,}"
            + (f" ({m['failed']} failed)" if m["failed"] else "")
            + f" | {m['rss_before_kib'] / 1024:.1f} MiB | {m['rss_after_kib'] / 1024:.1f} MiB"
            f" | {per / 1024:.1f} KiB |"
            if per is not None
            else f"| {system} | 0 | - | - | - |"
        )
    return "\n".join(lines)
