"""Sinks, the writer thread, the manager (open, reopen after rename) and config wiring."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from info import Info

from podproxy.access_log import (
    FLUSH_BYTES,
    AccessLog,
    AccessLogManager,
    AccessLogs,
    DefaultRuntime,
    FileSink,
    TextFormatter,
    build_access_logs,
)
from podproxy.access_log.loggers import Writer
from podproxy.config.loader import load
from podproxy.config.schema import FILE_ACCESS_LOG_TYPE
from podproxy.errors import ConfigError
from podproxy.server import Options, Server

LINE = b"one line\n"


def test_sink_buffers_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = FileSink(str(path))
    sink.open()
    sink.write(LINE)
    sink.write(LINE)
    assert path.read_bytes() == b""  # queued, not written per request
    sink.flush()
    assert path.read_bytes() == LINE * 2
    sink.close()
    assert "closed" in repr(sink)


def test_sink_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"old\n")
    sink = FileSink(str(path))
    sink.open()
    sink.write(LINE)
    sink.close()
    assert path.read_bytes() == b"old\n" + LINE


def test_sink_wakes_the_writer_when_full(tmp_path: Path) -> None:
    woken = threading.Event()

    class FakeWriter(Writer):
        def wake(self) -> None:
            woken.set()

    sink = FileSink(str(tmp_path / "a.log"), FakeWriter())
    sink.open()
    for _ in range(FLUSH_BYTES // len(LINE)):
        sink.write(LINE)
    assert not woken.is_set()
    sink.write(LINE)
    assert woken.is_set()
    sink.close()


def test_writer_thread_flushes(tmp_path: Path) -> None:
    manager = AccessLogManager(flush_interval=3600)
    path = tmp_path / "a.log"
    sink = manager.sink(str(path))
    manager.open()
    try:
        sink.write(LINE)
        manager.writer.wake()
        for _ in range(500):  # bounded: the writer flushes as soon as it runs
            if path.read_bytes():
                break
            threading.Event().wait(0.01)
        assert path.read_bytes() == LINE
    finally:
        manager.close()


def test_reopen_after_rename(tmp_path: Path) -> None:
    manager = AccessLogManager(flush_interval=3600)
    path = tmp_path / "a.log"
    sink = manager.sink(str(path))
    sink.open()  # no writer thread: the test flushes
    sink.write(b"before\n")
    sink.flush()
    os.rename(path, tmp_path / "a.log.1")  # logrotate
    sink.write(b"still old\n")
    manager.reopen()
    sink.flush()  # lines queued before the reopen go to the file now at the path
    sink.write(b"after\n")
    sink.flush()
    assert (tmp_path / "a.log.1").read_bytes() == b"before\n"
    assert path.read_bytes() == b"still old\nafter\n"
    manager.close()


def test_stdout_and_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    manager = AccessLogManager()
    manager.sink("/dev/stdout").write(b"to stdout\n")
    manager.sink("/dev/stderr").write(b"to stderr\n")
    manager.open()
    manager.close()  # flushes; never closes fd 1 or 2
    out, err = capfd.readouterr()
    assert out == "to stdout\n" and err == "to stderr\n"
    os.fstat(1)


def test_one_sink_per_path_and_open_error(tmp_path: Path) -> None:
    manager = AccessLogManager()
    assert manager.sink(str(tmp_path / "a")) is manager.sink(str(tmp_path / "a"))
    bad = str(tmp_path / "missing-dir" / "a.log")
    manager.sink(bad, "admin.access_log_path")
    with pytest.raises(OSError) as exc:
        manager.open()
    assert exc.value.filename == bad
    manager.close()


def test_filtered_logs_and_a_failing_formatter(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "a.log"))
    sink.open()

    class Broken(TextFormatter):
        def format(self, info: object) -> bytes:
            raise RuntimeError("boom")

    logs = AccessLogs(
        [
            AccessLog(Broken("x"), sink),  # logged and skipped, never raised
            AccessLog(TextFormatter("%RESPONSE_CODE%\n"), sink, lambda i: i.status >= 500),
        ]
    )
    logs.log_exchange(Info(status=200))
    logs.log_exchange(Info(status=503))
    sink.close()
    assert (tmp_path / "a.log").read_bytes() == b"503\n"


# --- config ---------------------------------------------------------------------------------

HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def config(access_log: object, *, v2: bool = False) -> str:
    hcm = {
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router"}],
        "access_log": access_log,
    }
    flt: dict[str, object] = {"name": "envoy.filters.network.http_connection_manager"}
    flt["config" if v2 else "typed_config"] = hcm
    cfg = {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [flt]}],
                }
            ]
        }
    }
    return yaml.safe_dump(cfg)


def build(text: str) -> Server:
    server = Server(load(config_yaml=text), Options())
    server.build()
    return server


def test_v2_file_access_log_with_format(tmp_path: Path) -> None:
    log = {
        "name": "envoy.file_access_log",
        "config": {"path": str(tmp_path / "a"), "format": "%PROTOCOL%\n"},
    }
    server = build(config([log], v2=True))
    assert list(server.access_log_manager.sinks) == [str(tmp_path / "a")]


def test_stdout_logger_by_name_and_filters() -> None:
    log = {
        "name": "envoy.access_loggers.stdout",
        "filter": {
            "status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500}}}
        },
    }
    server = build(config([log]))
    assert list(server.access_log_manager.sinks) == ["/dev/stdout"]


@pytest.mark.parametrize(
    ("typed", "where", "message"),
    [
        (
            {"path": "/dev/null", "log_format": {"text_format": "%FOO%"}},
            f"{HCM}.access_log[0].typed_config.log_format.text_format",
            "Not supported field in StreamInfo: FOO",
        ),
        (
            {"path": "/dev/null", "typed_json_format": {"a": True}},
            f"{HCM}.access_log[0].typed_config.typed_json_format",
            "Only string values",
        ),
    ],
)
def test_format_errors_name_the_field(typed: dict[str, object], where: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(config([{"name": "envoy.access_loggers.file", "typed_config": typed}]))
    assert exc.value.path == where and message in str(exc.value)


@pytest.mark.parametrize(
    ("log", "error"),
    [
        (
            {
                "name": "x",
                "typed_config": {"@type": FILE_ACCESS_LOG_TYPE},
            },
            "path: missing required field",
        ),
        (
            {"name": "envoy.access_loggers.stdout", "typed_config": {"path": "/x"}},
            "path: not a field of StdoutAccessLog",
        ),
        (
            {"name": "envoy.access_loggers.file", "typed_config": {"path": "/x", "log_format": {}}},
            "exactly one of text_format",
        ),
        (
            {
                "name": "envoy.access_loggers.file",
                "filter": {"traceable_filter": {}},
                "typed_config": {"path": "/x"},
            },
            "filter.traceable_filter: Envoy field not supported by podproxy yet",
        ),
        (
            {
                "name": "envoy.access_loggers.file",
                "filter": {"and_filter": {"filters": [{"not_health_check_filter": {}}]}},
                "typed_config": {"path": "/x"},
            },
            "expected at least 2",
        ),
        (
            {
                "name": "envoy.access_loggers.file",
                "filter": {"response_flag_filter": {"flags": ["XX"]}},
                "typed_config": {"path": "/x"},
            },
            "expected a response flag",
        ),
    ],
)
def test_schema_errors(log: dict[str, object], error: str) -> None:
    with pytest.raises(Exception) as exc:
        load(config_yaml=config([log]))
    assert error in str(exc.value)


def test_build_access_logs_none_when_empty() -> None:
    assert build_access_logs((), "x", AccessLogManager(), DefaultRuntime()) is None
