"""Forwarder pieces that need no sockets: request ids and the route-timeout queue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from podproxy.router.forwarder import TimeoutQueue, new_request_id


def test_request_ids_are_uuid4() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:200]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122 and len(rid) == 36


class FakeRequest:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name = name
        self.fired = fired

    def on_timeout(self) -> None:
        self.fired.append(self.name)


async def test_timeout_queue_fires_live_entries_in_order_and_skips_completed() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.05)
    entries: dict[str, list[Any]] = {}
    for name in "abcd":
        entries[name] = q.add(FakeRequest(name, fired), loop)  # type: ignore[arg-type]
        await asyncio.sleep(0.005)
    entries["a"][1] = None  # a and c completed in time: their entries are cleared
    entries["c"][1] = None
    await asyncio.sleep(0.12)
    assert fired == ["b", "d"]
    assert not q.entries
    # Completed entries at the front are dropped as new ones arrive: memory stays bounded.
    for i in range(1000):
        q.add(FakeRequest(str(i), fired), loop)[1] = None  # type: ignore[arg-type]
    assert len(q.entries) <= 1
    q.close()


async def test_timeout_queue_rearms_after_emptying() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.02)
    q.add(FakeRequest("x", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    q.add(FakeRequest("y", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    assert fired == ["x", "y"]
    q.close()
