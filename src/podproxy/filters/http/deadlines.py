"""Per-request deadlines (gRPC timeouts): one heap and one loop timer for all of them.

`TimeoutQueue` (router.py) serves route timeouts, where requests sharing a value expire in the
order they were queued. A deadline taken from each request's own grpc-timeout has no such
order, so these live in a heap ordered by time. An entry is `[when, target, fire]`; whoever
holds it cancels it by setting `entry[1] = None` (the router's `UpstreamRequest._complete`
does so for its `timer`, whichever structure made it), and the heap drops cancelled entries
when they surface or when more than half of it is cancelled. Only routes configured with a
gRPC-aware timeout ever add entries.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

Entry = list[Any]  # [when, target | None, fire]
# Below this size the heap is never compacted: dropping entries as they surface is enough.
_COMPACT_MIN = 1024


class Deadlines:
    """Deadlines at arbitrary times on one event loop: `add()` returns the entry to cancel."""

    __slots__ = ("_compact_at", "_heap", "_loop", "_seq", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Entry]] = []
        # A tie-breaker, so entries due at the same time never get compared.
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._compact_at = _COMPACT_MIN

    def add(
        self,
        when: float,
        target: Any,
        fire: Callable[[Any], None],
        loop: asyncio.AbstractEventLoop,
    ) -> Entry:
        """Call `fire(target)` at loop time `when` unless the entry is cancelled first."""
        entry: Entry = [when, target, fire]
        heap = self._heap
        if len(heap) >= self._compact_at:
            self._compact()
        heapq.heappush(heap, (when, next(self._seq), entry))
        self._loop = loop
        if self._timer is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(when, self._fire)
            self._timer_at = when
        return entry

    def _compact(self) -> None:
        """Drop cancelled entries; the next compaction waits until the heap doubles."""
        heap = self._heap
        heap[:] = [item for item in heap if item[2][1] is not None]
        heapq.heapify(heap)
        self._compact_at = max(_COMPACT_MIN, 2 * len(heap))

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # set by add(), the only place that arms the timer
        now = loop.time()
        heap = self._heap
        while heap:
            when, _, entry = heap[0]
            target = entry[1]
            if target is None:
                heapq.heappop(heap)
                continue
            if when > now:
                # A `fire` above may have armed the timer already (by adding an entry).
                if self._timer is None or when < self._timer_at:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = loop.call_at(when, self._fire)
                    self._timer_at = when
                return
            heapq.heappop(heap)
            entry[1] = None
            entry[2](target)

    def __len__(self) -> int:
        return sum(1 for item in self._heap if item[2][1] is not None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def __repr__(self) -> str:
        return f"<Deadlines live={len(self)} queued={len(self._heap)}>"
