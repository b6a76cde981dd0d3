"""A `StreamInfo` the access-log unit tests fill in by hand (every field, defaults unset)."""

from __future__ import annotations

from dataclasses import dataclass, field

# 2026-11-26T06:00:00.123Z
T0 = 1795672800.123

Headers = list[tuple[bytes, bytes]]


@dataclass
class Info:
    request_headers: Headers = field(default_factory=list)
    method: bytes | None = b"GET"
    path: bytes | None = b"/"
    authority: bytes | None = None
    scheme: bytes = b"http"
    protocol: str = "HTTP/1.1"
    status: int = 0
    response_headers: Headers | None = None
    response_trailers: Headers | None = None
    flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    request_id: bytes = b""
    start_time: float = T0
    start: float = 100.0
    request_end: float | None = None
    first_upstream_byte: float | None = None
    response_end: float | None = None
    upstream_host: str = "-"
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    upstream_transport_failure_reason: str | None = None
    downstream_remote_address: str = "127.0.0.1:40000"
    downstream_direct_remote_address: str = "127.0.0.1:40000"
    downstream_local_address: str | None = "127.0.0.1:10000"
    route_name: str | None = None
