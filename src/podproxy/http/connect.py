"""Opening a connection to a host, as Envoy counts it: for the HTTP/1 and HTTP/2 pools alike.

`connect()` makes the connection (the TLS handshake included: Envoy's connect_timeout runs
until the transport socket is connected), counts `upstream_cx_total`, and either
`upstream_cx_active` and `upstream_cx_connect_ms`, or `upstream_cx_connect_fail` (and
`upstream_cx_connect_timeout`), per cluster and per host. The error it returns is the one the
pool's waiters get: Envoy's "connection failure" (flag UF).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from podproxy.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamError

if TYPE_CHECKING:
    from podproxy.tls import UpstreamTls
    from podproxy.upstream.cluster import ClusterStats
    from podproxy.upstream.host import Host

log = logging.getLogger("podproxy.pool")

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect(
    host: Host,
    stats: ClusterStats,
    factory: Callable[[], P],
    timeout: float,
    tls: UpstreamTls | None,
) -> tuple[P | None, UpstreamError | None]:
    """A connection to `host` made by `factory`'s protocol, or the error that stopped it."""
    loop = asyncio.get_running_loop()
    hst = host.stats
    stats.upstream_cx_total.value += 1
    hst.cx_total += 1
    started = time.monotonic()
    options: Any = tls.ssl_options(host) if tls is not None else (None, None)
    ssl, server_hostname = options
    err: UpstreamError
    try:
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(
                factory, host.address, host.port, ssl=ssl, server_hostname=server_hostname
            )
    except TimeoutError:
        stats.upstream_cx_connect_timeout.value += 1
        err = UpstreamConnectTimeout(f"connect to {host.key} timed out")
    except OSError as exc:
        err = UpstreamConnectError(f"connect to {host.key} failed: {exc.strerror or exc}")
    else:
        stats.upstream_cx_active.value += 1
        hst.cx_active += 1
        stats.upstream_cx_connect_ms.record((time.monotonic() - started) * 1000.0)
        return proto, None
    stats.upstream_cx_connect_fail.value += 1
    hst.cx_connect_fail += 1
    log.debug("%s", err)
    return None, err
