"""Shared pieces of the side-by-side tests with real Envoy (test_envoy_wire.py,
test_envoy_hcm_fields.py): starting an Envoy on a config mapping, and one raw client exchange
that records every byte and whether (and when) the proxy closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from integration.backends import ProxyProcess

ENVOY = Path(sys.executable).parent / "envoy"
# --base-id keeps concurrent Envoys (other tests, other pytest runs, other xdist workers) off
# each other's shared memory: each process takes its own range of 1000 ids, from its pid.
_base_ids = itertools.count((os.getpid() % 4000) * 1000 + 1)


def next_base_id() -> int:
    """A --base-id no other Envoy of this machine's test runs is using."""
    return next(_base_ids)


Step = bytes | float  # bytes to send, or a pause in seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_envoy(
    cfg: dict[str, Any], tmp_path: Path, name: str, args: Sequence[str] = ()
) -> tuple[ProxyProcess, int]:
    """Envoy on `cfg` (its first listener and admin moved to free ports), ready; the process
    and its listener port. The caller terminates it."""
    listen, admin = free_port(), free_port()
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [str(ENVOY), "-c", str(path), "--concurrency", "1", *args]
    argv += ["--base-id", str(next_base_id()), "-l", "warning"]
    envoy = ProxyProcess(argv, path, tmp_path / name, ("127.0.0.1", admin))
    try:
        await envoy.wait_ready(15.0)
    except BaseException:
        await envoy.terminate(10.0)
        raise
    return envoy, listen


@dataclass
class Exchanged:
    raw: bytes  # every byte the client received
    closed: bool  # the proxy closed the connection (EOF or reset) within the wait
    closed_after: float | None  # seconds from the connect to the close


async def exchange(
    port: int, steps: Sequence[Step], *, src: str | None = None, wait: float = 1.0
) -> Exchanged:
    """Send each bytes step on a new connection (from `src`; a float step pauses that long),
    then read until the proxy closes or `wait` seconds pass with nothing more."""
    local = (src, 0) if src else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    got = bytearray()
    started = time.monotonic()
    closed_at: float | None = None

    async def read() -> None:
        nonlocal closed_at
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                got.extend(chunk)
        closed_at = time.monotonic()

    reading = asyncio.ensure_future(read())
    try:
        for step in steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif not writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    writer.write(step)
                    await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), wait)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
    after = None if closed_at is None else closed_at - started
    return Exchanged(bytes(got), closed_at is not None, after)
