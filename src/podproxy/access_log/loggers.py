"""Access loggers and the sinks they write to, off the request path.

Theory of operation. A logged stream is formatted on the event loop (cheap: precompiled
formats) and its line appended to its sink's queue; nothing else happens per request. One
writer thread per process (`Writer`) writes every sink's queued lines out in one `os.write`
per sink every `flush_interval` seconds, or sooner when a sink holds `FLUSH_BYTES`, as Envoy's
AccessLogFileImpl flushes from its own thread (`--file-flush-interval-msec`): a slow disk
delays the writer, never a request. `AccessLogManager` owns the sinks of a process, one per
path as Envoy's AccessLogManagerImpl shares them, opens them at start (a bad path is a start-up
error), reopens them on SIGUSR1 and `POST /reopen_logs` (logrotate), and closes them at exit.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from podproxy.access_log.filters import Filter
from podproxy.access_log.formatter import Formatter
from podproxy.access_log.stream_info import StreamInfo

log = logging.getLogger("podproxy.access_log")

# Wake the writer once a sink holds this much, whatever the interval says.
FLUSH_BYTES = 64 * 1024
# podproxy's flush interval (Envoy's --file-flush-interval-msec defaults to 10 s; a second
# keeps `tail -f` lively and costs one write a second per busy file).
FLUSH_INTERVAL = 1.0

STDOUT = "/dev/stdout"
STDERR = "/dev/stderr"
_STD_FDS = {STDOUT: 1, STDERR: 2}


class FileSink:
    """The queued lines of one file (or stdout / stderr) and its file descriptor.

    `write` runs on the event loop and only queues; `flush` (the writer thread, or a caller at
    close) writes. A deque's append and popleft are atomic, so the two need no lock; `_io`
    keeps two flushers (the writer thread and `close`) from interleaving writes.
    """

    def __init__(self, path: str, writer: Writer | None = None, where: str = "") -> None:
        self.path = path
        self.where = where  # the YAML path of the first logger that named it, for errors
        self._std = _STD_FDS.get(path)
        self._fd: int | None = None
        self._queue: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._reopen = False
        self._io = threading.Lock()
        self._writer = writer
        self._failed = False

    def open(self) -> None:
        """Open for appending; raises `OSError` when the file cannot be written."""
        if self._fd is None:
            self._fd = self._std if self._std is not None else self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o644)

    def write(self, line: bytes) -> None:
        self._queue.append(line)
        self._pending += len(line)
        if self._pending >= FLUSH_BYTES:
            self._pending = 0
            if self._writer is not None:
                self._writer.wake()
            else:
                self.flush()

    def reopen(self) -> None:
        """Reopen the path at the next flush (the file may have been renamed away)."""
        self._reopen = True
        if self._writer is not None:
            self._writer.wake()

    def flush(self) -> None:
        with self._io:
            self._pending = 0
            chunks = []
            queue = self._queue
            while queue:
                chunks.append(queue.popleft())
            if self._reopen and self._std is None and self._fd is not None:
                self._reopen = False
                try:
                    fd = self._open()
                except OSError as exc:
                    log.error("cannot reopen access log %s: %s", self.path, exc)
                else:
                    os.close(self._fd)
                    self._fd = fd
            if chunks and self._fd is not None:
                self._write_all(b"".join(chunks))

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once per failure streak, not per batch
                log.error("cannot write access log %s: %s", self.path, exc)
            self._failed = True

    def close(self) -> None:
        self.flush()
        with self._io:
            if self._fd is not None and self._std is None:
                os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"queued={len(self._queue)}"
        return f"<FileSink {self.path} {state}>"


class Writer:
    """The thread that writes every sink's lines: each `interval`, or when woken."""

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
        self.interval = interval
        self.sinks: list[FileSink] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="podproxy-access-log", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            for sink in self.sinks:
                try:
                    sink.flush()
                except Exception:  # the writer must never die: log and go on
                    log.exception("access log flush failed for %r", sink)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


class AccessLogManager:
    """The access-log sinks of one process, one per path."""

    def __init__(self, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.writer = Writer(flush_interval)
        self.sinks: dict[str, FileSink] = {}

    def sink(self, path: str, where: str = "") -> FileSink:
        s = self.sinks.get(path)
        if s is None:
            s = self.sinks[path] = FileSink(path, self.writer, where)
            self.writer.sinks.append(s)
        return s

    def open(self) -> None:
        """Open every sink and start the writer; `OSError.filename` names a bad path."""
        for path, s in self.sinks.items():
            try:
                s.open()
            except OSError as exc:
                exc.filename = exc.filename or path
                raise
        if self.sinks:
            self.writer.start()

    def reopen(self) -> None:
        for s in self.sinks.values():
            s.reopen()

    def close(self) -> None:
        self.writer.stop()
        for s in self.sinks.values():
            s.close()


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One configured access log: filter, format, sink."""

    formatter: Formatter
    sink: FileSink
    filter: Filter | None = None

    def log(self, info: StreamInfo) -> None:
        flt = self.filter
        if flt is None or flt(info):
            self.sink.write(self.formatter.format(info))


class AccessLogs:
    """The access logs of one connection manager (HCM `access_log`, or the admin's)."""

    __slots__ = ("logs",)

    def __init__(self, logs: Sequence[AccessLog]) -> None:
        self.logs = tuple(logs)

    def log_exchange(self, info: StreamInfo) -> None:
        for al in self.logs:
            try:
                al.log(info)
            except Exception:  # a log line must never break the stream that made it
                log.exception("access log failed for %r", al.sink)
