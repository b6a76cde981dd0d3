"""The substitution formatter: parsing (Envoy's errors), text and JSON rendering."""

from __future__ import annotations

import json
import socket

import pytest
from info import T0, Info

from podproxy.access_log.formatter import (
    DEFAULT_FORMAT,
    FormatError,
    JsonFormatter,
    TextFormatter,
    format_start_time,
    start_time_formatter,
)


def full() -> Info:
    return Info(
        request_headers=[
            (b"user-agent", b"curl/8.5.0"),
            (b"x-request-id", b"8d9b1f3e-1c2d-4c4e-9f0a-5b6c7d8e9f00"),
            (b"x-envoy-original-path", b"/orig"),
        ],
        path=b"/index.html",
        authority=b"localhost:10000",
        status=200,
        bytes_sent=45,
        response_headers=[(b"x-envoy-upstream-service-time", b"2")],
        response_end=100.0035,
        upstream_host="127.0.9.5:8080",
    )


def text(fmt: str, info: Info, omit: bool = False) -> str:
    return TextFormatter(fmt, omit).format(info).decode()


def test_default_format_byte_for_byte() -> None:
    assert text(DEFAULT_FORMAT, full()) == (
        '[2026-11-26T06:00:00.123Z] "GET /orig HTTP/1.1" 200 - 0 45 3 2 "-" '
        '"curl/8.5.0" "8d9b1f3e-1c2d-4c4e-9f0a-5b6c7d8e9f00" "localhost:10000" '
        '"127.0.9.5:8080"\n'
    )


def test_missing_values_print_dash_and_counters_zero() -> None:
    assert text(DEFAULT_FORMAT, Info(flags="UH")) == (
        '[2026-11-26T06:00:00.123Z] "GET / HTTP/1.1" 0 UH 0 0 - - "-" "-" "-" "-" "-"\n'
    )


def test_omit_empty_values_prints_nothing_for_unset() -> None:
    assert text("[%REQ(X-A)%|%UPSTREAM_HOST%|%RESPONSE_CODE%]", Info(), omit=True) == "[||0]"


def test_start_time() -> None:
    assert format_start_time(T0) == "2026-11-26T06:00:00.123Z"
    assert format_start_time(1795672800.0) == "2026-11-26T06:00:00.000Z"
    render = start_time_formatter("%Y/%m/%d %H:%M:%S %s.%3f %6f %f %1f %%f")
    assert render(T0) == "2026/11/26 06:00:00 1795672800.123 123000 123000000 1 %f"


def test_headers_case_insensitive_alternative_and_truncation() -> None:
    info = Info(request_headers=[(b"user-agent", b"curl/8.5.0"), (b"x-empty", b"")])
    assert text("%REQ(User-Agent):4%", info) == "curl"
    assert text("%REQ(X-MISSING?USER-AGENT)%", info) == "curl/8.5.0"
    assert text("%REQ(X-MISSING)%", info) == "-"
    assert text("[%REQ(X-EMPTY)%]", info) == "[]"  # present but empty: empty, as Envoy
    assert text("%REQ(:METHOD)% %REQ(:PATH)% %REQ(HOST)%", Info(authority=b"a")) == "GET / a"
    assert text("%RESP(X-A)% %TRAILER(X-A)%", Info()) == "- -"


def test_durations_and_addresses() -> None:
    info = Info(
        request_end=100.001,
        first_upstream_byte=100.0029,
        response_end=100.0101,
        upstream_host="127.0.9.5:8080",
        upstream_local_address="[::1]:5000",
    )
    assert text("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION%", info) == "10 1 2"
    assert text("%RESPONSE_TX_DURATION%", info) == "7"
    assert text("%UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", info) == (
        "127.0.9.5:8080 127.0.9.5"
    )
    assert text("%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %UPSTREAM_LOCAL_PORT%", info) == "::1 5000"
    assert text("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", info) == "127.0.0.1"
    assert text("%HOSTNAME%", info) == socket.gethostname()


def test_flags_and_grpc_status() -> None:
    info = Info(flags="UF,URX", response_trailers=[(b"grpc-status", b"3")])
    assert text("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", info) == (
        "UF,URX UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    )
    assert text("%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS_NUMBER%", info) == (
        "InvalidArgument INVALID_ARGUMENT 3"
    )
    assert text("%GRPC_STATUS%", Info()) == "-"


@pytest.mark.parametrize(
    ("fmt", "error"),
    [
        ("%FOO%", "Not supported field in StreamInfo: FOO"),
        (
            "%REQ(X)\n",
            "Incorrect configuration: %REQ(X)\n. Couldn't find valid command at position 0",
        ),
        ("100% done", "Couldn't find valid command at position 3"),
        ("%req(x)%", "Couldn't find valid command at position 0"),
        ("%REQ(A?B?C)%", "More than 1 alternative header specified in token: A?B?C"),
        ("%REQ(A):x%", "Couldn't find valid command at position 0"),
        ("%DURATION:3%", "DURATION does not take any parameters or length"),
        ("%DURATION(X)%", "DURATION does not take any parameters or length"),
        ("%REQ%", "REQ requires parameters"),
        ("%START_TIME:3%", "START_TIME does not allow length to be specified."),
        ("%DYNAMIC_METADATA(a)%", "Envoy command operator not supported by podproxy yet"),
    ],
)
def test_parse_errors(fmt: str, error: str) -> None:
    with pytest.raises(FormatError) as exc:
        TextFormatter(fmt)
    assert error in str(exc.value)


def test_escaped_percent() -> None:
    assert text("100%% %PROTOCOL%%%", Info()) == "100% HTTP/1.1%"


JSON = {
    "code": "%RESPONSE_CODE%",
    "code_text": "code %RESPONSE_CODE%",
    "missing": "%REQ(X-MISSING)%",
    "n": 7,
    "half": 0.5,
    "plain": "x",
    "nested": {"b": "%UPSTREAM_HOST%", "a": ["%PROTOCOL%", "%REQ(X-MISSING)%"]},
}


def test_typed_json_numbers_nulls_and_sorted_keys() -> None:
    line = JsonFormatter(JSON).format(Info(status=200))
    assert line.endswith(b"\n")
    assert line.decode() == (
        '{"code":200,"code_text":"code 200","half":0.5,"missing":null,"n":7,'
        '"nested":{"a":["HTTP/1.1",null],"b":null},"plain":"x"}\n'
    )


def test_json_omit_empty_values_drops_nulls() -> None:
    obj = json.loads(JsonFormatter(JSON, omit_empty_values=True).format(Info()))
    assert "missing" not in obj and obj["nested"] == {"a": ["HTTP/1.1"]}


def test_json_refuses_bool_values() -> None:
    with pytest.raises(FormatError, match="Only string values"):
        JsonFormatter({"a": True})
