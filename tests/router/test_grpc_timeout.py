"""grpc-timeout parsing and the timeout arithmetic of Envoy's router and connection manager
(router.cc finalTimeout, conn_manager_impl.cc refreshDurationTimeout), with the values Envoy
1.40 sent upstream in side-by-side runs where they pin an edge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podproxy.config.schema import MaxStreamDuration
from podproxy.router.grpc_timeout import (
    MAX_GRPC_TIMEOUT_VALUE,
    GrpcTimeoutPolicy,
    header_grpc_timeout,
    header_stream_duration,
    legacy_timeout,
    parse_grpc_timeout,
    to_grpc_timeout,
)

GRPC = [(b"content-type", b"application/grpc")]


@pytest.mark.parametrize(
    "value, ms",
    [
        (b"1S", 1000),
        (b"50m", 50),
        (b"2M", 120_000),
        (b"7H", 25_200_000),
        (b"2500u", 3),  # rounded up
        (b"1000u", 1),
        (b"100n", 1),
        (b"0m", 0),
        (b"0n", 0),
        (b"000000001S", 1000),  # leading zeros beyond 8 digits: the value counts
        (b"99999999H", 99_999_999 * 3_600_000),
        (b"123456789m", None),  # over 8 digits' worth
        (b"+5S", None),
        (b"-0S", None),
        (b"5 S", None),
        (b" 5S", None),
        (b"5s", None),  # units are case-sensitive: s is not S
        (b"1x", None),
        (b"S", None),
        (b"", None),
        (b"junk", None),
        (b"\xd9\xa3S", None),  # non-ASCII digits
    ],
)
def test_parse(value: bytes, ms: int | None) -> None:
    assert parse_grpc_timeout(value) == ms


@given(st.integers(0, MAX_GRPC_TIMEOUT_VALUE), st.sampled_from("HMSmun"))
def test_parse_any_valid_value(n: int, unit: str) -> None:
    ms = parse_grpc_timeout(b"%d%s" % (n, unit.encode()))
    scale = {"H": 3_600_000, "M": 60_000, "S": 1000, "m": 1}
    if unit in scale:
        assert ms == n * scale[unit]
    else:
        per_ms = 1000 if unit == "u" else 1_000_000
        assert ms is not None and ms * per_ms >= n > (ms - 1) * per_ms


@given(st.binary(max_size=12))
def test_parse_never_raises(value: bytes) -> None:
    ms = parse_grpc_timeout(value)
    assert ms is None or ms >= 0


def test_header_lookup() -> None:
    assert header_grpc_timeout([*GRPC, (b"grpc-timeout", b"2S")]) == 2000
    assert header_grpc_timeout(GRPC) is None
    # Two fields are "50m,2S" to Envoy: invalid, so absent (Envoy capped to the maximum).
    assert header_grpc_timeout([(b"grpc-timeout", b"50m"), (b"grpc-timeout", b"2S")]) is None


@pytest.mark.parametrize(
    "ms, text",
    [
        (0, b"0m"),
        (900, b"900m"),
        (99_999_999, b"99999999m"),
        (100_000_000, b"100000S"),
        (99_999_999_999, b"99999999S"),
        (100_000_000_000, b"1666666M"),
        (25_200_000, b"25200000m"),
        (99_999_999 * 3_600_000, b"99999999H"),
        (2**62, b"99999999H"),  # clipped
    ],
)
def test_to_grpc_timeout(ms: int, text: bytes) -> None:
    assert to_grpc_timeout(ms) == text


@given(st.integers(0, 99_999_999 * 3_600_000))
def test_to_grpc_timeout_round_trip_never_exceeds(ms: int) -> None:
    back = parse_grpc_timeout(to_grpc_timeout(ms))
    assert back is not None and back <= ms
    # Truncation loses less than one unit of the unit chosen.
    unit = to_grpc_timeout(ms)[-1:]
    assert ms - back < {b"m": 1, b"S": 1000, b"M": 60_000, b"H": 3_600_000}[unit]


@pytest.mark.parametrize(
    "header, max_ms, offset, expected",
    [
        (1000, 3000, 100, 900),  # Envoy sent grpc-timeout 900m
        (50, 3000, 100, 50),  # offset not smaller: not applied
        (None, 3000, 100, 3000),  # absent = infinite, so the maximum
        (10_000, 3000, 100, 3000),
        (0, 3000, None, 3000),
        (1000, 0, None, 1000),  # max 0: no cap
        (None, 0, None, 0),  # ... and no timeout at all
        (0, 0, 100, 0),
    ],
)
def test_legacy_timeout(header: int | None, max_ms: int, offset: int | None, expected: int) -> None:
    assert legacy_timeout(header, max_ms, offset) == expected


@pytest.mark.parametrize(
    "header, max_ms, offset, expected",
    [
        (1000, 3000, 100, 900),
        (10_000, 3000, 100, 2900),  # capped, then offset (Envoy sent 2900m)
        (50, 3000, 100, 0),  # offset reaches the header: a deadline already passed
        (100, 3000, 100, 0),
        (0, 3000, 100, 0),
        (1000, 0, None, 1000),
    ],
)
def test_header_stream_duration(
    header: int, max_ms: int, offset: int | None, expected: int
) -> None:
    assert header_stream_duration(header, max_ms, offset) == expected


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**7),
    st.none() | st.integers(0, 10**6),
)
def test_timeouts_bounds(header: int, max_ms: int, offset: int | None) -> None:
    legacy = legacy_timeout(header, max_ms, offset)
    assert legacy >= 0
    if max_ms:
        assert 0 < legacy <= max_ms
    duration = header_stream_duration(header, max_ms, offset)
    assert 0 <= duration <= (min(header, max_ms) if max_ms else header)


def test_policy_of_a_plain_route_is_none() -> None:
    assert GrpcTimeoutPolicy.of(15.0, None, None, None) is None


def test_legacy_policy() -> None:
    p = GrpcTimeoutPolicy.of(15.0, 3.0, 0.1, None)
    assert p is not None and not p.new_timeouts
    headers = [*GRPC, (b"grpc-timeout", b"1S")]
    assert p.router_timeout(True, headers) == 900
    assert p.router_timeout(False, headers) == 15_000  # not gRPC: the route's timeout
    assert p.stream_duration(headers) is None
    off = GrpcTimeoutPolicy.of(None, 0.0, None, None)
    assert off is not None and off.router_timeout(True, GRPC) == 0


def test_new_timeouts_policy() -> None:
    msd = MaxStreamDuration(grpc_timeout_header_max="3s", grpc_timeout_header_offset="0.1s")
    p = GrpcTimeoutPolicy.of(15.0, None, None, msd)
    assert p is not None and p.new_timeouts
    headers = [*GRPC, (b"grpc-timeout", b"10S")]
    assert p.router_timeout(True, headers) == 0  # no route timeout with max_stream_duration
    assert p.stream_duration(headers) == 2900
    assert p.stream_duration([(b"grpc-timeout", b"1S")]) == 900  # any request
    assert p.stream_duration(GRPC) is None
    static = GrpcTimeoutPolicy.of(15.0, 3.0, None, MaxStreamDuration(max_stream_duration="5s"))
    assert static is not None and static.new_timeouts  # the legacy fields then do nothing
    assert static.max_stream_duration_ms == 5000 and static.stream_duration(headers) is None
