"""Envoy's access logs: formats (`formatter`), filters (`filters`), sinks and loggers
(`loggers`), and what they read about a stream (`stream_info.StreamInfo`).

`build_access_logs` turns an `access_log` list (HCM or admin) into the `AccessLogs` a
connection manager calls once per finished stream; everything is parsed and compiled here, at
config time, and every error names its YAML path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podproxy.access_log.filters import DefaultRuntime, Runtime, build_filter
from podproxy.access_log.formatter import (
    DEFAULT_FORMAT,
    FormatError,
    Formatter,
    JsonFormatter,
    TextFormatter,
    format_start_time,
)
from podproxy.access_log.loggers import (
    FLUSH_BYTES,
    STDERR,
    STDOUT,
    AccessLog,
    AccessLogManager,
    AccessLogs,
    FileSink,
)
from podproxy.access_log.stream_info import StreamInfo
from podproxy.errors import ConfigError

_SINKS = {"StdoutAccessLog": STDOUT, "StderrAccessLog": STDERR}


def build_formatter(tc: Any, path: str) -> Formatter:
    """The formatter of one logger's typed_config (`config.schema.AccessLogConfig`)."""
    where = path
    try:
        if tc.format is not None:
            where = f"{path}.format"
            # v2 `format: ""` meant the default format, as an unset one.
            return TextFormatter(tc.format or DEFAULT_FORMAT)
        if tc.json_format is not None:
            where = f"{path}.json_format"
            return JsonFormatter(tc.json_format)
        if tc.typed_json_format is not None:
            where = f"{path}.typed_json_format"
            return JsonFormatter(tc.typed_json_format)
        lf = tc.log_format
        if lf is None:
            return TextFormatter(DEFAULT_FORMAT)
        omit = lf.omit_empty_values
        if lf.text_format is not None:
            where = f"{path}.log_format.text_format"
            return TextFormatter(lf.text_format, omit)
        if lf.text_format_source is not None:
            where = f"{path}.log_format.text_format_source"
            return TextFormatter(lf.text_format_source.data().decode(), omit)
        where = f"{path}.log_format.json_format"
        return JsonFormatter(lf.json_format, omit)
    except (FormatError, UnicodeDecodeError) as exc:
        raise ConfigError(where, str(exc)) from None


def build_access_logs(
    configs: Sequence[Any],
    path: str,
    manager: AccessLogManager,
    runtime: Runtime,
    admin_path: str | None = None,
) -> AccessLogs | None:
    """The loggers of an `access_log` list at `path` (None when there are none); the sinks
    come from `manager`, which opens them at start. `admin_path` is the admin's legacy
    `access_log_path` (a file logger in the default format)."""
    logs: list[AccessLog] = []
    if admin_path:
        sink = manager.sink(admin_path, "admin.access_log_path")
        logs.append(AccessLog(TextFormatter(DEFAULT_FORMAT), sink))
    for i, cfg in enumerate(configs):
        tc = cfg.typed_config
        formatter = build_formatter(tc, f"{path}[{i}].typed_config")
        flt = build_filter(cfg.filter, runtime) if cfg.filter is not None else None
        sink = manager.sink(_SINKS.get(tc.kind) or tc.path, f"{path}[{i}].typed_config.path")
        logs.append(AccessLog(formatter, sink, flt))
    return AccessLogs(logs) if logs else None


__all__ = [
    "DEFAULT_FORMAT",
    "FLUSH_BYTES",
    "AccessLog",
    "AccessLogManager",
    "AccessLogs",
    "DefaultRuntime",
    "FileSink",
    "FormatError",
    "JsonFormatter",
    "Runtime",
    "StreamInfo",
    "TextFormatter",
    "build_access_logs",
    "build_formatter",
    "format_start_time",
]
