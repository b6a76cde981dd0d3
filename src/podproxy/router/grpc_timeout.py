"""gRPC deadlines: the `grpc-timeout` header and the timeouts a route derives from it.

Pure functions and one frozen per-route policy, in whole milliseconds as Envoy counts them
(0 = no timeout). Two schemes, as in Envoy's router (router.cc FilterUtility::finalTimeout) and
connection manager (conn_manager_impl.cc ActiveStream::refreshDurationTimeout):

- legacy (`max_grpc_timeout`, `grpc_timeout_offset`): the *route timeout* of a gRPC request comes
  from its grpc-timeout, capped and offset; the upstream gets it back as grpc-timeout;
- new (`max_stream_duration` on the route): the route timeout is off, and the *stream duration*
  of any request carrying a valid grpc-timeout comes from it when `grpc_timeout_header_max` is
  set; a gRPC upstream gets the duration as grpc-timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from podproxy.config.schema import MaxStreamDuration

GRPC_TIMEOUT = b"grpc-timeout"
# The gRPC spec's TimeoutValue: at most 8 digits (Envoy: MAX_GRPC_TIMEOUT_VALUE).
MAX_GRPC_TIMEOUT_VALUE = 99_999_999

# Milliseconds per unit, and for the sub-millisecond units the divisor (rounded up).
_MS_PER_UNIT = {ord("H"): 3_600_000, ord("M"): 60_000, ord("S"): 1000, ord("m"): 1}
_PER_MS = {ord("u"): 1000, ord("n"): 1_000_000}


def parse_grpc_timeout(value: bytes) -> int | None:
    """Grpc::Common::getGrpcTimeout: `<digits><unit>` → milliseconds, or None when the value
    is not one (then Envoy treats the header as absent).

    Units H M S m u n; `u` and `n` round up to whole milliseconds. The digits must be plain
    ASCII digits (no sign, no space: Envoy 1.40 ignores `+5S` and `5 S`, checked side by side)
    whose value is at most 99,999,999; leading zeros are allowed (`000000001S` is 1 s)."""
    if len(value) < 2:
        return None
    digits = value[:-1]
    if not digits.isdigit():  # bytes.isdigit: ASCII digits only
        return None
    n = int(digits)
    if n > MAX_GRPC_TIMEOUT_VALUE:
        return None
    unit = value[-1]
    per = _MS_PER_UNIT.get(unit)
    if per is not None:
        return n * per
    div = _PER_MS.get(unit)
    if div is not None:
        return -(-n // div)
    return None


def header_grpc_timeout(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The request's grpc-timeout in milliseconds, None when absent or invalid. Several
    grpc-timeout fields are one comma-joined value to Envoy, which no valid value is."""
    found: bytes | None = None
    for k, v in headers:
        if k == GRPC_TIMEOUT:
            if found is not None:
                return None
            found = v
    return None if found is None else parse_grpc_timeout(found)


def to_grpc_timeout(ms: int) -> bytes:
    """Grpc::Common::toGrpcTimeout: `ms` in the smallest of m, S, M, H that keeps it to 8
    digits (truncating), clipped to 99999999H."""
    value = ms
    unit = b"m"
    if value > MAX_GRPC_TIMEOUT_VALUE:
        value //= 1000
        unit = b"S"
    for bigger in (b"M", b"H"):
        if value <= MAX_GRPC_TIMEOUT_VALUE:
            break
        value //= 60
        unit = bigger
    return b"%d%b" % (min(value, MAX_GRPC_TIMEOUT_VALUE), unit)


def legacy_timeout(header_ms: int | None, max_ms: int, offset_ms: int | None) -> int:
    """finalTimeout for a gRPC request on a route with `max_grpc_timeout` (`max_ms`, 0 = no
    cap): the client's grpc-timeout (absent = 0 = none), less the offset unless that would
    reach 0, capped at the maximum (which also replaces "none")."""
    timeout = header_ms or 0
    if offset_ms is not None and offset_ms < timeout:
        timeout -= offset_ms
    if max_ms != 0 and (timeout == 0 or timeout > max_ms):
        timeout = max_ms
    return timeout


def header_stream_duration(header_ms: int, max_ms: int, offset_ms: int | None) -> int:
    """refreshDurationTimeout with a valid grpc-timeout and `grpc_timeout_header_max`
    (`max_ms`, 0 = no cap): the header's value capped, then less the offset, down to 0 (which
    here means a deadline already passed, not "none")."""
    timeout = header_ms
    if max_ms != 0 and timeout > max_ms:
        timeout = max_ms
    if timeout != 0 and offset_ms is not None:
        timeout = timeout - offset_ms if offset_ms < timeout else 0
    return timeout


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class GrpcTimeoutPolicy:
    """What a route does with grpc-timeout; routes configured with none have no policy (and
    pay nothing). `route_timeout_ms` is the route's own timeout (0 = none)."""

    route_timeout_ms: int
    # Legacy: RouteAction.max_grpc_timeout / grpc_timeout_offset (None: not configured).
    max_grpc_timeout_ms: int | None = None
    grpc_timeout_offset_ms: int | None = None
    # New timeouts: the route has a max_stream_duration message (Envoy's usingNewTimeouts).
    new_timeouts: bool = False
    max_stream_duration_ms: int | None = None
    header_max_ms: int | None = None
    header_offset_ms: int | None = None

    @classmethod
    def of(
        cls,
        timeout: float | None,
        max_grpc_timeout: float | None,
        grpc_timeout_offset: float | None,
        max_stream_duration: MaxStreamDuration | None,
    ) -> GrpcTimeoutPolicy | None:
        """The policy of a RouteAction's fields, None when the route has no gRPC-aware
        timeout (then the route's timeout applies to every request, as it does today)."""
        if max_stream_duration is not None:
            return cls(
                route_timeout_ms=0,
                new_timeouts=True,
                max_stream_duration_ms=_ms(max_stream_duration.max_stream_duration),
                header_max_ms=_ms(max_stream_duration.grpc_timeout_header_max),
                header_offset_ms=_ms(max_stream_duration.grpc_timeout_header_offset),
            )
        if max_grpc_timeout is None:
            return None
        return cls(
            route_timeout_ms=_ms(timeout) or 0,
            max_grpc_timeout_ms=_ms(max_grpc_timeout),
            grpc_timeout_offset_ms=_ms(grpc_timeout_offset),
        )

    def router_timeout(self, grpc: bool, headers: Sequence[tuple[bytes, bytes]]) -> int:
        """The router's global timeout of one request, in ms (0 = none); with new timeouts
        the router has none (the stream duration takes its place)."""
        if self.new_timeouts:
            return 0
        if grpc and self.max_grpc_timeout_ms is not None:
            return legacy_timeout(
                header_grpc_timeout(headers), self.max_grpc_timeout_ms, self.grpc_timeout_offset_ms
            )
        return self.route_timeout_ms

    def stream_duration(self, headers: Sequence[tuple[bytes, bytes]]) -> int | None:
        """With new timeouts: the stream's duration in ms from its grpc-timeout (any request,
        gRPC or not, as Envoy reads the header for all), or None when the header does not
        decide it (absent, invalid, or no `grpc_timeout_header_max`): then the route's static
        max_stream_duration, or the connection manager's, applies."""
        if self.header_max_ms is None:
            return None
        header_ms = header_grpc_timeout(headers)
        if header_ms is None:
            return None
        return header_stream_duration(header_ms, self.header_max_ms, self.header_offset_ms)
