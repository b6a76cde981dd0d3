"""What an access log reads about one finished stream: the `StreamInfo` protocol.

The formatter and the filters read a stream only through this protocol (Envoy's
StreamInfo plus the request/response header maps its formatters are given), so any stream
object that has these attributes can be logged: today `http.downstream.LoggedExchange`.
Times are seconds on one monotonic clock, except `start_time` (wall clock, epoch seconds).
"""

from __future__ import annotations

from typing import Protocol

Headers = list[tuple[bytes, bytes]]

# Envoy's response flags, short and long names, in the order Envoy prints them
# (source/common/stream_info/utility.h; reference/envoy-hcm.md §4.5).
RESPONSE_FLAGS: tuple[tuple[str, str], ...] = (
    ("LH", "FailedLocalHealthCheck"),
    ("UH", "NoHealthyUpstream"),
    ("UT", "UpstreamRequestTimeout"),
    ("LR", "LocalReset"),
    ("UR", "UpstreamRemoteReset"),
    ("UF", "UpstreamConnectionFailure"),
    ("UC", "UpstreamConnectionTermination"),
    ("UO", "UpstreamOverflow"),
    ("NR", "NoRouteFound"),
    ("DI", "DelayInjected"),
    ("FI", "FaultInjected"),
    ("RL", "RateLimited"),
    ("UAEX", "UnauthorizedExternalService"),
    ("RLSE", "RateLimitServiceError"),
    ("DC", "DownstreamConnectionTermination"),
    ("URX", "UpstreamRetryLimitExceeded"),
    ("SI", "StreamIdleTimeout"),
    ("IH", "InvalidEnvoyRequestHeaders"),
    ("DPE", "DownstreamProtocolError"),
    ("UMSDR", "UpstreamMaxStreamDurationReached"),
    ("RFCF", "ResponseFromCacheFilter"),
    ("NFCF", "NoFilterConfigFound"),
    ("DT", "DurationTimeout"),
    ("UPE", "UpstreamProtocolError"),
    ("NC", "NoClusterFound"),
    ("OM", "OverloadManagerTerminated"),
    ("DF", "DnsResolutionFailed"),
    ("DO", "DropOverload"),
    ("DR", "DownstreamRemoteReset"),
    ("UDO", "UnconditionalDropOverload"),
)
LONG_FLAG_NAMES: dict[str, str] = dict(RESPONSE_FLAGS)


class StreamInfo(Protocol):
    """One stream as the access log sees it (read-only)."""

    @property
    def request_headers(self) -> Headers:
        """Request fields as forwarded (lower-case names; no pseudo-headers, no Host)."""

    @property
    def method(self) -> bytes | None:
        """None when the request head could not be read (a 400 for a malformed one)."""

    @property
    def path(self) -> bytes | None:
        """`:path` as forwarded (after a prefix_rewrite, the rewritten one, as Envoy's)."""

    @property
    def authority(self) -> bytes | None: ...
    @property
    def scheme(self) -> bytes: ...
    @property
    def protocol(self) -> str:
        """`HTTP/1.1`, `HTTP/1.0`."""

    @property
    def status(self) -> int:
        """The response status sent; 0 when none was."""

    @property
    def response_headers(self) -> Headers | None:
        """The response head as sent downstream; None when no response began."""

    @property
    def response_trailers(self) -> Headers | None: ...
    @property
    def flags(self) -> str:
        """Short response flags joined by `,`; `-` when none."""

    @property
    def bytes_received(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def request_id(self) -> bytes:
        """The x-request-id the stream carries (b"" when none)."""

    @property
    def start_time(self) -> float:
        """Wall-clock time of the request's first byte, epoch seconds."""

    @property
    def start(self) -> float: ...
    @property
    def request_end(self) -> float | None:
        """When the last request byte arrived."""

    @property
    def first_upstream_byte(self) -> float | None: ...
    @property
    def response_end(self) -> float | None:
        """When the last response byte was written downstream."""

    @property
    def upstream_host(self) -> str:
        """`ip:port` of the host the request went to; `-` when none."""

    @property
    def upstream_cluster(self) -> str | None: ...
    @property
    def upstream_local_address(self) -> str | None: ...
    @property
    def upstream_transport_failure_reason(self) -> str | None: ...
    @property
    def downstream_remote_address(self) -> str: ...
    @property
    def downstream_direct_remote_address(self) -> str: ...
    @property
    def downstream_local_address(self) -> str | None: ...
    @property
    def route_name(self) -> str | None: ...
