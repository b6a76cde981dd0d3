"""The deadline heap: entries fire in time order whatever order they were added in, cancelled
ones never fire, and cancelled entries do not pile up."""

from __future__ import annotations

import asyncio

from podproxy.filters.http.deadlines import Deadlines


async def test_fire_in_time_order_and_cancel() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    fired: list[str] = []
    now = loop.time()
    done = loop.create_future()

    def fire(name: str) -> None:
        fired.append(name)
        if name == "last":
            done.set_result(None)

    d.add(now + 0.06, "last", fire, loop)
    d.add(now + 0.02, "first", fire, loop)
    gone = d.add(now + 0.03, "cancelled", fire, loop)
    d.add(now + 0.04, "second", fire, loop)
    gone[1] = None
    assert len(d) == 3
    await asyncio.wait_for(done, 5.0)
    assert fired == ["first", "second", "last"]
    assert len(d) == 0
    d.close()


async def test_a_deadline_already_passed_fires_soon() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    fired = loop.create_future()
    d.add(loop.time() - 1.0, "late", fired.set_result, loop)
    assert await asyncio.wait_for(fired, 5.0) == "late"
    d.close()


async def test_fire_may_add_entries() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    fired: list[int] = []
    done = loop.create_future()

    def fire(n: int) -> None:
        fired.append(n)
        if n < 3:
            d.add(loop.time() + 0.01, n + 1, fire, loop)
        else:
            done.set_result(None)

    d.add(loop.time(), 1, fire, loop)
    await asyncio.wait_for(done, 5.0)
    assert fired == [1, 2, 3]
    d.close()


async def test_cancelled_entries_are_compacted() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    far = loop.time() + 3600
    for i in range(5000):
        entry = d.add(far + i, i, lambda _: None, loop)
        entry[1] = None
    assert len(d) == 0
    assert "queued=" in repr(d)
    queued = int(repr(d).split("queued=")[1].rstrip(">"))
    assert queued <= 2048  # not 5000: compacted as it grew
    d.close()
