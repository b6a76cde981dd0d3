"""An HTTP/1.1 upgrade (WebSocket and the like), from the allow rule to the end of its tunnel.

Theory of operation. The connection calls `admit` for an upgrade request the connection
manager lets through (http.upgrade): it is counted (`downstream_cx_upgrades_*`), the
connection will close after it (what follows its head is not HTTP/1.1), and a `DownstreamEnd`
takes the client's transport: until the upgrade completes it passes every event on to the
connection, except the bytes the client sends early, which it holds (and pauses reading). The
request goes through the filters and the router as any other, its upgrade fields kept. An
answer other than 101 is an ordinary response. On a 101 the router calls `start_tunnel`: the
101 head goes to the client, an `UpstreamEnd` takes the upstream transport, and from then on
bytes flow both ways unchanged, each side's full write buffer pausing the other side's reading.
Either side closing ends the tunnel (a client's half-close too: Envoy 1.40 closes both then):
the other side closes after its pending bytes, the exchange finishes (access log, stats), and
the upstream connection, never reused, leaves its pool. The stream idle timeout still applies
(every byte moved counts as activity); the route timeout was stopped by the router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podproxy.http.flow import PEER_WRITE_BLOCKED, UPGRADE_HOLD
from podproxy.http.stream import Exchange, ResponseHead

if TYPE_CHECKING:
    from podproxy.http.http1.downstream import DownstreamConnection
    from podproxy.http.http1.upstream import UpstreamConnection

# What of the head the router built for a 101 goes: the hop-by-hop fields it adds for an
# ordinary response, and the service time, which Envoy sends only once the request is complete
# (an upgrade request never is: its body is the tunnel).
_DROPPED_101_FIELDS = (b"connection:", b"transfer-encoding:", b"x-envoy-upstream-service-time:")
# The upstream's fields a 101 keeps although they are hop-by-hop (Envoy passes them on).
_UPGRADE_FIELDS = frozenset({b"upgrade", b"connection"})


def admit(conn: DownstreamConnection, ex: Exchange, allowed: bool) -> None:
    """An upgrade request goes on to the handler: `allowed` by the upgrade configs, or with no
    route (Envoy lets it go on to the router's 404). Either way the connection closes after
    its response."""
    ex.head.keep_alive = False
    if not allowed:
        return
    stats = conn.stats
    stats.downstream_cx_upgrades_total.value += 1
    stats.downstream_cx_upgrades_active.value += 1
    transport = conn.transport
    if transport is None:
        return
    # Called from the decoder's head callback: the rest of this read is the decoder's
    # `upgrade_tail` once it returns; later reads come to the DownstreamEnd.
    transport.set_protocol(DownstreamEnd(conn, ex))


def switching_head(built: bytes, upstream: ResponseHead) -> bytes:
    """The 101 head for the client: the one the router built (filters, server and date as for
    any response), less what only ordinary responses carry, plus the upstream's `upgrade`
    and `connection` fields, which Envoy passes on as they are."""
    lines = built[:-4].split(b"\r\n")
    kept = [ln for ln in lines[1:] if not ln.lower().startswith(_DROPPED_101_FIELDS)]
    fields = [k + b": " + v for k, v in upstream.headers if k in _UPGRADE_FIELDS]
    return b"\r\n".join([lines[0], *fields, *kept]) + b"\r\n\r\n"


def start_tunnel(
    ex: Exchange,
    upstream: UpstreamConnection,
    head: ResponseHead,
    built: bytes | None,
    tail: bytes,
    route: Any,
    on_end: Callable[[], None],
) -> None:
    """The upstream answered 101 to an admitted upgrade request; `built` is the head the
    router (and the encoder filters) made of it, None if a filter kept or replaced it."""
    conn = ex.conn
    down = getattr(conn, "transport", None)
    end = down.get_protocol() if down is not None else None
    up = upstream.transport
    if (
        built is None
        or not isinstance(end, DownstreamEnd)
        or up is None
        or up.is_closing()
        or ex.response_complete
    ):
        # A filter held the 101 or answered instead, or a side is gone: no tunnel.
        upstream.close()
        on_end()
        if not ex.response_complete:
            conn.send_local_reply(ex, 503, b"", close=True)  # a reset if the head went
        return
    tunnel = Tunnel(end.conn, ex, upstream, up, route, on_end)
    ex.state = tunnel  # a downstream reset or timeout now ends the tunnel
    end.tunnel = tunnel
    up.set_protocol(UpstreamEnd(tunnel))
    out = switching_head(built, head)
    if getattr(ex, "response_head", None) is not None:
        # An access-logged exchange (http1.logged) shows the head the client got.
        setattr(ex, "response_head", out)  # noqa: B010 (a field Exchange does not declare)
    if tail:
        ex.bytes_sent += len(tail)
        out += tail
    end.conn.write(out)
    decoder = end.conn.decoder
    early = [decoder.upgrade_tail, *end.early]
    decoder.upgrade_tail = b""
    end.early = []
    if early[0] or len(early) > 1:
        tunnel.to_upstream(b"".join(early))
    dflow = end.conn.flow
    if dflow is not None:
        dflow.resume_reading(UPGRADE_HOLD)
        if upstream.write_blocked:
            dflow.pause_reading(PEER_WRITE_BLOCKED)
    uflow = upstream.flow
    if uflow is not None and end.conn.write_paused:
        uflow.pause_reading(PEER_WRITE_BLOCKED)


class Tunnel:
    """The two transports of an upgraded exchange; also the exchange's handler state
    (`Exchange.state`), so the router's downstream-reset call (`reset`) and the timeout sweep
    (`route`) find it."""

    __slots__ = ("conn", "ended", "ex", "on_end", "route", "up", "upstream")

    def __init__(
        self,
        conn: DownstreamConnection,
        ex: Exchange,
        upstream: UpstreamConnection,
        up: asyncio.Transport,
        route: Any,
        on_end: Callable[[], None],
    ) -> None:
        self.conn = conn
        self.ex = ex
        self.upstream = upstream
        self.up = up
        self.route = route
        self.on_end = on_end
        self.ended = False

    def to_upstream(self, data: bytes) -> None:
        if self.ended:
            return
        self.ex.bytes_received += len(data)
        self.upstream.pool.stats.upstream_cx_tx_bytes_total.value += len(data)
        self.up.write(data)

    def to_downstream(self, data: bytes) -> None:
        if self.ended:
            return
        self.ex.bytes_sent += len(data)
        self.conn.write(data)

    def reset(self) -> None:
        """The exchange was reset (the client went away, a timeout): close the upstream side;
        the connection answers for the client side."""
        if self.ended:
            return
        self.ended = True
        self.up.close()
        self.on_end()

    def end(self) -> None:
        """A side closed: close the other once its pending bytes are written; the exchange is
        complete."""
        if self.ended:
            return
        self.reset()
        ex = self.ex
        if not ex.response_complete:
            self.conn.finish(ex, keep_alive=False)
        else:
            self.conn.close()

    def __repr__(self) -> str:
        return f"<Tunnel {self.conn.remote} <-> {self.upstream!r} ended={self.ended}>"


class DownstreamEnd(asyncio.Protocol):
    """The client's transport from the admission of its upgrade: a pass-through to the
    connection until the 101, then the client end of the tunnel."""

    __slots__ = ("conn", "early", "ex", "tunnel")

    def __init__(self, conn: DownstreamConnection, ex: Exchange) -> None:
        self.conn = conn
        self.ex = ex
        self.early: list[bytes] = []
        self.tunnel: Tunnel | None = None

    def hold(self, data: bytes) -> None:
        """Bytes the client sent before the upgrade completed: kept for the tunnel, and no
        more read until then (one read's worth at most)."""
        self.early.append(data)
        flow = self.conn.flow
        if flow is not None:
            flow.pause_reading(UPGRADE_HOLD)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.io_count += 1
        conn.stats.downstream_cx_rx_bytes_total.value += len(data)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.to_upstream(data)
        elif not conn.closing and not self.ex.response_complete:
            self.hold(data)

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel is None:
            return self.conn.eof_received()
        tunnel.end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.stats.downstream_cx_upgrades_active.value -= 1
        self.conn.connection_lost(exc)  # a tunnel still open is reset from there
        self.early = []
        self.tunnel = None

    def pause_writing(self) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            self.conn.pause_writing()
            return
        self.conn.write_paused = True
        flow = tunnel.upstream.flow
        if flow is not None:
            flow.pause_reading(PEER_WRITE_BLOCKED)

    def resume_writing(self) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            self.conn.resume_writing()
            return
        self.conn.write_paused = False
        flow = tunnel.upstream.flow
        if flow is not None:
            flow.resume_reading(PEER_WRITE_BLOCKED)


class UpstreamEnd(asyncio.Protocol):
    """The upstream transport once it switched protocols: the upstream end of the tunnel."""

    __slots__ = ("tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.upstream.pool.stats.upstream_cx_rx_bytes_total.value += len(data)
        tunnel.to_downstream(data)

    def eof_received(self) -> bool | None:
        return None  # close: connection_lost ends the tunnel

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.tunnel
        # The tunnel's request is active until the tunnel ends, as Envoy counts it.
        tunnel.upstream.pool.stats.upstream_cx_destroy_with_active_rq.value += 1
        tunnel.end()
        tunnel.upstream.connection_lost(exc)  # the pool lets go of it

    def pause_writing(self) -> None:
        upstream = self.tunnel.upstream
        upstream.write_blocked = True
        flow = self.tunnel.conn.flow
        if flow is not None:
            flow.pause_reading(PEER_WRITE_BLOCKED)

    def resume_writing(self) -> None:
        upstream = self.tunnel.upstream
        upstream.write_blocked = False
        flow = self.tunnel.conn.flow
        if flow is not None:
            flow.resume_reading(PEER_WRITE_BLOCKED)


__all__ = ["DownstreamEnd", "Tunnel", "UpstreamEnd", "admit", "start_tunnel", "switching_head"]
