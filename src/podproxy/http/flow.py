"""Back-pressure for one transport: reading paused for any of several reasons, idempotently.

Reading resumes only when every reason that paused it is gone, so the proxy can pause a client
both because the upstream cannot take more body bytes and because pipelined requests are
queued, and resume each independently (uvicorn's flow_control.py, with reasons).
"""

from __future__ import annotations

import asyncio

# Reasons, as bits.
PEER_WRITE_BLOCKED = 1  # the other side's transport buffer is over its high-water mark
PIPELINE_QUEUED = 2  # requests are queued behind the active one
HANDLER_HOLD = 4  # the handler is not ready for more body (e.g. still connecting upstream)
FILTER_HOLD = 8  # an HTTP filter holds the request's headers: its body waits (filter chain)
UPGRADE_HOLD = 16  # bytes sent after an upgrade request wait for its 101 (http1.tunnel)

# Transport write buffer limits: above HIGH the peer's reading is paused until below LOW.
# Envoy's per_connection_buffer_limit_bytes defaults to 1 MiB; the kernel buffers more.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024


class FlowControl:
    """Pauses and resumes reading of `transport` by reason bits."""

    # `reasons` is read directly on the hot path: `if flow.reasons & R: flow.resume_reading(R)`
    # skips a call in the usual case (nothing paused).
    __slots__ = ("closed", "reasons", "transport")

    def __init__(self, transport: asyncio.Transport, limit: int | None = None) -> None:
        """`limit`: per_connection_buffer_limit_bytes, the high-water mark (low is a quarter)."""
        self.transport = transport
        self.reasons = 0
        self.closed = False
        if limit:
            transport.set_write_buffer_limits(high=limit, low=limit // 4)
        else:
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)

    @property
    def reading_paused(self) -> bool:
        return self.reasons != 0

    def pause_reading(self, reason: int) -> None:
        if not self.reasons and not self.closed:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and not self.closed:
            self.transport.resume_reading()
