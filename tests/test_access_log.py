"""Envoy's default access-log line and the buffered file sink."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podproxy.access_log import (
    FLUSH_BYTES,
    AccessLogRecord,
    FileAccessLog,
    format_line,
    format_start_time,
)

# 2026-11-26T06:00:00.123Z
T0 = 1795672800.123


def full_record() -> AccessLogRecord:
    return AccessLogRecord(
        start_time=T0,
        method="GET",
        path="/index.html",
        protocol="HTTP/1.1",
        response_code=200,
        response_flags="",
        bytes_received=0,
        bytes_sent=45,
        duration_ms=3,
        upstream_service_time="2",
        x_forwarded_for=None,
        user_agent="curl/8.5.0",
        request_id="8d9b1f3e-1c2d-4c4e-9f0a-5b6c7d8e9f00",
        authority="localhost:10000",
        upstream_host="127.0.9.5:8080",
    )


def test_start_time() -> None:
    assert format_start_time(T0) == "2026-11-26T06:00:00.123Z"
    assert format_start_time(1795672800.0) == "2026-11-26T06:00:00.000Z"


def test_default_format_line() -> None:
    assert format_line(full_record()) == (
        '[2026-11-26T06:00:00.123Z] "GET /index.html HTTP/1.1" 200 - 0 45 3 2 "-" '
        '"curl/8.5.0" "8d9b1f3e-1c2d-4c4e-9f0a-5b6c7d8e9f00" "localhost:10000" '
        '"127.0.9.5:8080"\n'
    )


def test_missing_values_print_dash() -> None:
    r = AccessLogRecord(start_time=T0, method="GET", path="/", response_code=503,
                        response_flags="UH")  # fmt: skip
    assert format_line(r) == (
        '[2026-11-26T06:00:00.123Z] "GET / HTTP/1.1" 503 UH 0 0 - - "-" "-" "-" "-" "-"\n'
    )


def test_file_without_loop_writes_through(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path))
    log.log(full_record())
    assert path.read_text() == format_line(full_record())
    log.close()
    log.log(full_record())  # after close: dropped, no error
    assert path.read_text().count("\n") == 1


async def test_file_buffers_until_timer(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path), flush_interval=0.05)
    log.log(full_record())
    log.log(full_record())
    assert path.read_text() == ""  # buffered, not written per request
    await asyncio.sleep(0.2)
    assert path.read_text() == format_line(full_record()) * 2
    log.close()


async def test_file_flushes_when_buffer_full(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path), flush_interval=3600)
    n = FLUSH_BYTES // len(format_line(full_record())) + 1
    for _ in range(n):
        log.log(full_record())
    assert path.stat().st_size >= FLUSH_BYTES
    log.close()
    assert path.read_text().count("\n") == n


async def test_close_flushes_and_cancels_timer(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path), flush_interval=3600)
    log.log(full_record())
    log.close()
    assert path.read_text() == format_line(full_record())
    assert "closed" in repr(log)


def test_appends(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old\n")
    log = FileAccessLog(str(path))
    log.log(full_record())
    log.close()
    assert path.read_text().startswith("old\n[")


def test_unwritable_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        FileAccessLog(str(tmp_path / "missing-dir" / "access.log"))
    with pytest.raises(OSError):
        FileAccessLog(str(tmp_path))  # a directory
