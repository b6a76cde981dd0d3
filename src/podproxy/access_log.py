"""Envoy's default access-log line and a buffered file sink.

`format_line` renders one `AccessLogRecord` in Envoy's default format (the one used when an
access log has no `log_format`); values that are absent print `-`. `FileAccessLog` appends
lines to a file through an in-memory buffer that is written out when it grows past
`FLUSH_BYTES`, at most `flush_interval` seconds after the first unflushed line (a timer on the
running event loop), and on `close()`, so the event loop does one write per batch, not per
request (Envoy flushes from a thread every `--file-flush-interval-msec`, 10 s by default).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import BinaryIO

# DEFAULT_FORMAT of Envoy's access log formatter (source/common/formatter).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# Write the buffer out once this much is pending, whatever the timer says.
FLUSH_BYTES = 64 * 1024


@dataclass(slots=True)
class AccessLogRecord:
    """What one finished request contributes to its access-log line."""

    start_time: float  # time.time() when the request's first byte arrived
    method: str | None = None
    path: str | None = None  # x-envoy-original-path if set, else :path
    protocol: str | None = "HTTP/1.1"
    response_code: int = 0  # 0 when no response was sent (Envoy prints 0 too)
    response_flags: str = ""  # "UH", "UF,URX"...; empty prints "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_ms: int | None = None
    upstream_service_time: str | None = None  # x-envoy-upstream-service-time response header
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None  # "127.0.10.5:8080"


def format_start_time(t: float) -> str:
    """`2026-11-26T06:00:00.123Z` (UTC, milliseconds), Envoy's default START_TIME."""
    # Round to microseconds (a float epoch holds no more), then truncate to milliseconds like
    # Envoy's %E3S, so 0.123 does not print as .122.
    whole, us = divmod(round(t * 1_000_000), 1_000_000)
    ms = us // 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def _v(s: str | None) -> str:
    return s if s else "-"


def format_line(r: AccessLogRecord) -> str:
    """One line in DEFAULT_FORMAT, newline included."""
    duration = "-" if r.duration_ms is None else str(r.duration_ms)
    return (
        f'[{format_start_time(r.start_time)}] "{_v(r.method)} {_v(r.path)} {_v(r.protocol)}" '
        f"{r.response_code} {_v(r.response_flags)} {r.bytes_received} {r.bytes_sent} "
        f"{duration} {_v(r.upstream_service_time)} "
        f'"{_v(r.x_forwarded_for)}" "{_v(r.user_agent)}" "{_v(r.request_id)}" '
        f'"{_v(r.authority)}" "{_v(r.upstream_host)}"\n'
    )


class FileAccessLog:
    """Appends formatted lines to `path`; opening raises `OSError` if it cannot be written."""

    def __init__(self, path: str, *, flush_interval: float = 1.0) -> None:
        self.path = path
        self.flush_interval = flush_interval
        # Opened now so a bad path is a start-up error the caller reports, not a runtime one.
        self._file: BinaryIO | None = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._buf: list[bytes] = []
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None

    def log(self, record: AccessLogRecord) -> None:
        if self._file is None:
            return
        data = format_line(record).encode("utf-8", "backslashreplace")
        self._buf.append(data)
        self._pending += len(data)
        if self._pending >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._arm_timer()

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop (a script or a test): write through so nothing waits for a timer.
            self.flush()
            return
        self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._file is None or not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._pending = 0
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        state = "closed" if self._file is None else f"pending={self._pending}"
        return f"<FileAccessLog {self.path} {state}>"
