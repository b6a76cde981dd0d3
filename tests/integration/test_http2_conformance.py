"""HTTP/2 conformance and DoS resistance of the client side, on raw frames (h2spec's ground).

Each case sends a broken or hostile frame sequence with `H2Raw` and checks that podproxy
answers as RFC 9113 says (a GOAWAY with the right code and a close, a RST_STREAM with the
right code on that stream only, or a normal answer), that a well-behaved client connected
beside it still gets its answer, and that nothing logged a traceback. Where the answer is
Envoy's choice rather than the RFC's (which stream errors stay stream errors, the codes of
header-limit resets, flood limits), the same bytes go to real Envoy 1.40 on the same config
and the outcomes and `http2.*` counters are compared. Envoy closes some connections with
unread input, which is a TCP reset that can destroy its last frames before the client reads
them, so for those the comparison is the close and the counters, not the GOAWAY.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import yaml
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from integration.backends import ProxyProcess, raw_exchange
from integration.h2raw import PREFACE, H2Raw, request_fields
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, start_envoy
from integration.test_hardening import ok, two_hosts
from integration.test_proxy_http import InProcessProxy, bootstrap, cluster
from podproxy.config.loader import load

PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
FLOW_CONTROL_ERROR = ErrorCodes.FLOW_CONTROL_ERROR
STREAM_CLOSED = ErrorCodes.STREAM_CLOSED
FRAME_SIZE_ERROR = ErrorCodes.FRAME_SIZE_ERROR
REFUSED_STREAM = ErrorCodes.REFUSED_STREAM
ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM

MAX_STREAMS = 3
HCM: dict[str, Any] = {"http2_protocol_options": {"max_concurrent_streams": MAX_STREAMS}}


class Held:
    """The upstream: `/hold...` waits until the test releases it (bounded), anything else is
    answered at once with its path."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, req: ScriptedRequest) -> None:
        if req.target.startswith(b"/hold"):
            try:
                await asyncio.wait_for(self.release.wait(), 10.0)
            except TimeoutError:
                return
        req.conn.write(ok(req.target))


@dataclass
class Proxies:
    """podproxy (and, for side-by-side tests, Envoy) on the same config."""

    pod: InProcessProxy
    held: Held
    envoy: ProxyProcess | None = None
    envoy_port: int = 0

    async def envoy_counter(self, name: str) -> int:
        assert self.envoy is not None
        body = (await self.envoy.admin_get(f"/stats?filter=^{name}$")).body.decode().strip()
        return int(body.rpartition(": ")[2]) if body else 0


StartProxies = Callable[..., Awaitable[Proxies]]


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[StartProxies]:
    """Factory: `await proxies(envoy=False, **hcm)`."""
    ups: list[ScriptedUpstream] = []
    pods: list[InProcessProxy] = []
    envoys: list[ProxyProcess] = []

    async def start(*, envoy: bool = False, **hcm: Any) -> Proxies:
        held = Held()
        up = await ScriptedUpstream(held).start()
        ups.append(up)
        pod = InProcessProxy(two_hosts(up.address, **(hcm or HCM)))
        pods.append(pod)
        await pod.start()
        out = Proxies(pod, held)
        if envoy:
            if not ENVOY.exists():
                pytest.skip(f"no Envoy binary at {ENVOY}")
            eup = await ScriptedUpstream(held).start()
            ups.append(eup)
            cfg = yaml.safe_load(two_hosts(eup.address, **(hcm or HCM)))
            out.envoy, out.envoy_port = await start_envoy(cfg, tmp_path, f"envoy{len(envoys)}")
            envoys.append(out.envoy)
        return out

    try:
        yield start
    finally:
        for e in envoys:
            await e.terminate(10.0)
        for pod in pods:
            await pod.stop()
        for up in ups:
            up.answer.release.set()  # type: ignore[attr-defined]
            await up.close()


async def still_serves(good: H2Raw, sid: int) -> None:
    """The client that behaved, connected before the bad one, gets its answer."""
    answer = await good.get(sid, "/fine")
    assert answer.status == 200 and answer.body == b"/fine", answer
    assert not good.closed


# --- connection errors: GOAWAY with the RFC's code, then the close --------------------------


async def data_on_idle_stream(c: H2Raw) -> None:
    c.data(1, b"x", end=True)  # RFC 9113 §5.1 idle: PROTOCOL_ERROR


async def headers_on_closed_stream(c: H2Raw) -> None:
    assert (await c.get(1)).status == 200
    c.headers(1, request_fields("/again"))  # §5.1 closed: STREAM_CLOSED (MAY, a connection error)


async def lower_stream_id(c: H2Raw) -> None:
    assert (await c.get(5)).status == 200
    c.headers(3, request_fields("/"))  # §5.1.1: a new stream id must grow


async def even_stream_id(c: H2Raw) -> None:
    c.headers(2, request_fields("/"))  # §5.1.1: clients use odd ids


async def rst_on_idle_stream(c: H2Raw) -> None:
    c.rst(7)  # §6.4: RST_STREAM on an idle stream


async def connection_window_overflow(c: H2Raw) -> None:
    c.window_update(0, 2**31 - 1)  # §6.9.1: past 2^31-1 on the connection
    c.window_update(0, 2**31 - 1)


async def zero_window_update_connection(c: H2Raw) -> None:
    c.window_update(0, 0)  # §6.9: a connection error on stream 0


async def zero_window_update_stream(c: H2Raw) -> None:
    # §6.9 makes this a stream error, which §5.4.1 lets an endpoint treat as a connection
    # error; h2 (like nghttp2, Envoy's codec) does, as hyperframe refuses the frame itself.
    c.headers(1, request_fields("/hold"))
    c.window_update(1, 0)


async def oversized_frame(c: H2Raw) -> None:
    c.headers(1, request_fields("/hold", method="POST"), end=False)
    c.data(1, b"x" * 20000)  # over SETTINGS_MAX_FRAME_SIZE (16384): §4.2 FRAME_SIZE_ERROR


async def continuation_flood(c: H2Raw) -> None:
    """CVE-2024-27316's shape: HEADERS, then CONTINUATION frames without END_HEADERS."""
    c.send(HeadersFrame(1, c.header_block(request_fields("/"))))
    for i in range(200):
        c.send(ContinuationFrame(1, c.header_block([(f"x-f{i}", "v" * 1000)])))
        if i % 20 == 0:
            await c.drain()


async def empty_continuation_flood(c: H2Raw) -> None:
    c.send(HeadersFrame(1, c.header_block(request_fields("/"))))
    for i in range(2000):
        c.send(ContinuationFrame(1, b""))
        if i % 500 == 0:
            await c.drain()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (data_on_idle_stream, PROTOCOL_ERROR),
        (headers_on_closed_stream, STREAM_CLOSED),
        (lower_stream_id, PROTOCOL_ERROR),
        (even_stream_id, PROTOCOL_ERROR),
        (rst_on_idle_stream, PROTOCOL_ERROR),
        (connection_window_overflow, FLOW_CONTROL_ERROR),
        (zero_window_update_connection, PROTOCOL_ERROR),
        (zero_window_update_stream, PROTOCOL_ERROR),
        (oversized_frame, FRAME_SIZE_ERROR),
        (continuation_flood, PROTOCOL_ERROR),
        (empty_continuation_flood, PROTOCOL_ERROR),
    ],
    ids=lambda v: getattr(v, "__name__", None) or getattr(v, "name", str(v)),
)
async def test_connection_errors_goaway_with_the_rfc_code(
    proxies: StartProxies, case: Callable[[H2Raw], Awaitable[None]], code: int
) -> None:
    p = await proxies()
    async with (
        await H2Raw.open(p.pod.port) as good,
        await H2Raw.open(p.pod.port, auto_ack=False) as bad,
    ):
        await case(bad)
        goaway = await bad.goaway_or_close()
        assert bad.closed
        assert goaway is not None and goaway.error_code == code, bad.frames
        await still_serves(good, 1)
    assert p.pod.counter("http2.goaway_sent") == 1
    assert p.pod.counter("http.ingress_http.downstream_cx_protocol_error") == 1
    assert p.pod.errors == []


async def test_bad_preface_closes_the_connection(proxies: StartProxies) -> None:
    """RFC 9113 §3.4: an invalid preface is a connection error (the AUTO codec took it for
    HTTP/2 on its first 12 bytes, as Envoy's)."""
    p = await proxies()
    async with (
        await H2Raw.open(p.pod.port) as good,
        await H2Raw.open(p.pod.port, preface=False, auto_ack=False) as bad,
    ):
        bad.send_raw(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        bad.send(SettingsFrame(0))
        goaway = await bad.goaway_or_close()
        assert bad.closed
        assert goaway is None or goaway.error_code == PROTOCOL_ERROR
        assert not [f for f in bad.frames if isinstance(f, HeadersFrame)]
        await still_serves(good, 1)
    assert p.pod.errors == []


# --- stream errors: RST_STREAM on that stream, the connection goes on -----------------------


async def data_on_half_closed_stream(c: H2Raw) -> int:
    c.headers(1, request_fields("/hold"))  # END_STREAM: half-closed (remote)
    c.data(1, b"x", end=True)  # §5.1: a stream error STREAM_CLOSED
    return 1


async def data_after_rst(c: H2Raw) -> int:
    c.headers(1, request_fields("/hold"), end=False)
    c.rst(1)
    c.data(1, b"x")  # §5.1 closed after RST_STREAM: STREAM_CLOSED
    return 1


async def stream_window_overflow(c: H2Raw) -> int:
    c.headers(1, request_fields("/hold"))
    c.window_update(1, 2**31 - 1)  # §6.9.1: a stream error FLOW_CONTROL_ERROR
    return 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (data_on_half_closed_stream, STREAM_CLOSED),
        (data_after_rst, STREAM_CLOSED),
        (stream_window_overflow, FLOW_CONTROL_ERROR),
    ],
    ids=lambda v: getattr(v, "__name__", None) or getattr(v, "name", str(v)),
)
async def test_stream_errors_reset_only_the_stream(
    proxies: StartProxies, case: Callable[[H2Raw], Awaitable[int]], code: int
) -> None:
    p = await proxies()
    async with await H2Raw.open(p.pod.port, auto_ack=False) as c:
        sid = await case(c)
        await c.wait_for(
            lambda: c.streams.get(sid) is not None and c.streams[sid].reset is not None
        )
        assert c.streams[sid].reset == code, c.frames
        # The same connection serves its next stream.
        await still_serves(c, 3)
        assert c.goaway is None
    assert p.pod.errors == []


# --- side by side with Envoy: its choices ----------------------------------------------------


@dataclass
class Outcome:
    resets: dict[int, int]  # stream id -> RST_STREAM code
    statuses: dict[int, int | None]
    closed: bool


def outcome(c: H2Raw) -> Outcome:
    return Outcome(
        {sid: a.reset for sid, a in c.streams.items() if a.reset is not None},
        {sid: a.status for sid, a in c.streams.items() if a.reset is None},
        c.closed,
    )


async def too_many_header_bytes(c: H2Raw) -> None:
    """A 70 KiB header (over max_request_headers_kb's 60) in HEADERS + CONTINUATION."""
    block = c.header_block(request_fields("/", extra=[("x-big", "a" * 70000)]))
    frames: list[Any] = [HeadersFrame(1, block[:16000])]
    frames[0].flags.add("END_STREAM")
    rest = block[16000:]
    while rest:
        frames.append(ContinuationFrame(1, rest[:16000]))
        rest = rest[16000:]
    frames[-1].flags.add("END_HEADERS")
    c.send(*frames)
    await c.answer(1)
    assert (await c.get(3)).status == 200


async def too_many_headers(c: H2Raw) -> None:
    """120 header fields (over common_http_protocol_options.max_headers_count's 100)."""
    c.headers(1, request_fields("/", extra=[(f"x-h{i}", "v") for i in range(120)]))
    await c.answer(1)
    assert (await c.get(3)).status == 200


async def streams_over_the_limit(c: H2Raw) -> None:
    """One stream more than SETTINGS_MAX_CONCURRENT_STREAMS: RFC 9113 §5.1.2 allows
    PROTOCOL_ERROR or REFUSED_STREAM; Envoy refuses the stream, and so does podproxy."""
    for sid in range(1, 2 * MAX_STREAMS + 2, 2):
        c.headers(sid, request_fields("/hold"))
    last = 2 * MAX_STREAMS + 1
    await c.answer(last)


async def body_longer_than_content_length(c: H2Raw) -> None:
    """RFC 9113 §8.1.1: malformed, a stream error PROTOCOL_ERROR."""
    c.headers(1, request_fields("/", method="POST", extra=[("content-length", "5")]), end=False)
    c.data(1, b"abcdefgh", end=True)
    await c.answer(1)
    assert (await c.get(3)).status == 200


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("case", "counters"),
    [
        (too_many_header_bytes, ["http2.header_list_size_too_large", "http2.tx_reset"]),
        (too_many_headers, ["http2.header_overflow", "http2.tx_reset"]),
        (streams_over_the_limit, ["http2.stream_refused_errors", "http2.tx_reset"]),
        (body_longer_than_content_length, ["http2.tx_reset"]),
    ],
    ids=lambda v: getattr(v, "__name__", None) or "counters",
)
async def test_stream_resets_side_by_side(
    proxies: StartProxies, case: Callable[[H2Raw], Awaitable[None]], counters: list[str]
) -> None:
    p = await proxies(envoy=True)
    seen = []
    for port in (p.envoy_port, p.pod.port):
        async with await H2Raw.open(port, auto_ack=False) as c:
            await case(c)
            seen.append(outcome(c))
    envoy, pod = seen
    assert pod == envoy
    assert not pod.closed and pod.resets, pod
    p.held.release.set()
    for name in counters:
        assert p.pod.counter(name) == await p.envoy_counter(name) == 1, name
    assert p.pod.errors == []


INVALID_MESSAGES = {
    "uppercase-name": [("X-Upper", "v")],
    "connection-header": [("connection", "keep-alive")],
    "te-not-trailers": [("te", "gzip")],
    "unknown-pseudo-header": [(":foo", "bar")],
}


@pytest.mark.envoy
@pytest.mark.parametrize("name", [*INVALID_MESSAGES, "no-path", "pseudo-after-regular"])
async def test_invalid_messages_close_the_connection_side_by_side(
    proxies: StartProxies, name: str
) -> None:
    """RFC 9113 §8.2-8.3 make these malformed (a stream error); Envoy's default
    (stream_error_on_invalid_http_message false) closes the connection, counting
    http2.rx_messaging_error; podproxy does the same, with GOAWAY PROTOCOL_ERROR."""
    if name == "no-path":
        fields = request_fields("/")[:3]
    elif name == "pseudo-after-regular":
        base = request_fields("/")
        fields = [base[0], (b"x-a", b"b"), *base[1:]]
    else:
        fields = request_fields("/", extra=INVALID_MESSAGES[name])
    p = await proxies(envoy=True)
    for port in (p.envoy_port, p.pod.port):
        async with (
            await H2Raw.open(port) as good,
            await H2Raw.open(port, auto_ack=False) as bad,
        ):
            bad.headers(1, fields)
            await bad.goaway_or_close()
            assert bad.closed
            assert 1 not in bad.streams or bad.streams[1].status is None
            await still_serves(good, 1)
            if port == p.pod.port:
                assert bad.goaway is not None and bad.goaway.error_code == PROTOCOL_ERROR
    assert p.pod.counter("http2.rx_messaging_error") == 1
    assert await p.envoy_counter("http2.rx_messaging_error") == 1
    assert p.pod.errors == []


# --- floods ----------------------------------------------------------------------------------


async def rapid_reset(c: H2Raw) -> None:
    """CVE-2023-44487: open and reset streams at once, far past 500."""
    for sid in range(1, 2400, 2):
        c.headers(sid, request_fields("/hold"))
        c.rst(sid)
        if sid % 100 == 1:
            await c.drain()
        if c.closed:
            return


async def empty_data_frames(c: H2Raw) -> None:
    c.headers(1, request_fields("/hold", method="POST"), end=False)
    for _ in range(100):
        c.data(1, b"")


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("case", "counter"),
    [
        (rapid_reset, "http.ingress_http.downstream_rq_too_many_premature_resets"),
        (empty_data_frames, "http2.inbound_empty_frames_flood"),
    ],
    ids=lambda v: getattr(v, "__name__", None) or "counter",
)
async def test_inbound_floods_close_the_connection_side_by_side(
    proxies: StartProxies, case: Callable[[H2Raw], Awaitable[None]], counter: str
) -> None:
    """Both close; podproxy says why first (GOAWAY ENHANCE_YOUR_CALM), Envoy just closes."""
    p = await proxies(envoy=True)
    for port in (p.envoy_port, p.pod.port):
        async with (
            await H2Raw.open(port) as good,
            await H2Raw.open(port, auto_ack=False) as bad,
        ):
            await case(bad)
            await bad.goaway_or_close(10.0)
            assert bad.closed
            if port == p.pod.port:
                assert bad.goaway is not None and bad.goaway.error_code == ENHANCE_YOUR_CALM
            await still_serves(good, 1)
    assert p.pod.counter(counter) == await p.envoy_counter(counter) == 1
    assert p.pod.errors == []


async def _control_flood(port: int, frame: bytes, limit: int) -> tuple[bool, int]:
    """Send `frame` over and over (at most `limit` times) from a client that never reads, on
    a small receive buffer: (whether the proxy closed the connection, frames sent)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()
    writer.write(PREFACE + SettingsFrame(0).serialize())
    sent = 0
    try:
        while sent < limit:
            writer.write(frame * 1000)
            sent += 1000
            await asyncio.wait_for(writer.drain(), 5.0)
    except ConnectionError:
        return True, sent
    finally:
        writer.transport.abort()
    return False, sent


@pytest.mark.envoy
async def test_ping_flood_from_a_client_that_does_not_read_side_by_side(
    proxies: StartProxies,
) -> None:
    """Each PING needs an ack; a client that never reads makes them pile up. Past
    max_outbound_control_frames (1000) queued, both proxies drop the connection (and the
    well-behaved client beside it is served)."""
    p = await proxies(envoy=True)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    for port in (p.envoy_port, p.pod.port):
        async with await H2Raw.open(port) as good:
            closed, _ = await _control_flood(port, ping, 600_000)
            assert closed
            await still_serves(good, 1)
    # Envoy counts http2.outbound_control_flood only when its own limit trips first; as often
    # nghttp2's (1000 queued acks) does, which closes without it. podproxy has the one limit.
    assert p.pod.counter("http2.outbound_control_flood") == 1
    assert p.pod.errors == []


async def test_settings_flood_from_a_client_that_does_not_read(proxies: StartProxies) -> None:
    p = await proxies()
    async with await H2Raw.open(p.pod.port) as good:
        closed, _ = await _control_flood(p.pod.port, SettingsFrame(0).serialize(), 600_000)
        assert closed
        await still_serves(good, 1)
    assert p.pod.counter("http2.outbound_control_flood") == 1
    assert p.pod.errors == []


# --- stream idle timeout, bytes, stats -------------------------------------------------------


@pytest.mark.envoy
async def test_stream_idle_timeout_side_by_side(proxies: StartProxies) -> None:
    """HCM stream_idle_timeout on an HTTP/2 stream whose upstream never answers: "stream
    timeout" on that stream, 504 as the request had ended (408 while it has not); its sibling
    and the connection go on."""
    p = await proxies(envoy=True, stream_idle_timeout="1s")
    answers = []
    for port in (p.envoy_port, p.pod.port):
        async with await H2Raw.open(port) as c:
            c.headers(1, request_fields("/hold"))
            answer = await c.answer(1, timeout=5.0)
            answers.append((answer.status, answer.body, answer.reset))
            await still_serves(c, 3)
    envoy, pod = answers
    assert pod == envoy == (504, b"stream timeout", None)
    name = "http.ingress_http.downstream_rq_idle_timeout"
    assert p.pod.counter(name) == await p.envoy_counter(name) == 1
    assert p.pod.errors == []


async def test_bytes_and_codec_gauges_count_what_crossed_the_socket(
    proxies: StartProxies,
) -> None:
    p = await proxies()
    async with await H2Raw.open(p.pod.port) as c:
        for sid in (1, 3, 5):
            assert (await c.get(sid, f"/x{sid}")).status == 200
        c.headers(7, request_fields("/hold"))
        await c.wait_for(lambda: p.pod.gauge("http2.streams_active") == 1)
        assert p.pod.gauge("http2.streams_active") == 1
        p.held.release.set()
        assert (await c.answer(7)).status == 200
        await c.wait_for(lambda: p.pod.gauge("http2.streams_active") == 0)
        sent = c.sent_bytes
    # Everything written reached the client before it closed; everything it sent was read.
    await c.wait_for(
        lambda: p.pod.counter("http.ingress_http.downstream_cx_rx_bytes_total") == sent
    )
    assert p.pod.counter("http.ingress_http.downstream_cx_rx_bytes_total") == sent
    assert p.pod.counter("http.ingress_http.downstream_cx_tx_bytes_total") == c.received_bytes
    assert p.pod.gauge("http2.streams_active") == 0
    assert p.pod.gauge("http2.pending_send_bytes") == 0
    assert p.pod.errors == []


async def test_http1_clients_are_untouched_by_the_http2_limits(proxies: StartProxies) -> None:
    """The codec stats are the HTTP/2 codec's: an HTTP/1 request moves none of them."""
    p = await proxies()
    raw = await raw_exchange(
        *p.pod.address, b"GET /h1 HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert all(
        c.value == 0 for name, c in p.pod.server.store.counters.items() if name.startswith("http2.")
    )


# --- connection_keepalive on a pod's connection ----------------------------------------------


class MutablePod:
    """An HTTP/2 pod (h2, server side) that answers every request 200 and, once `mute`d,
    reads nothing more: its PING acks stop, as a pod behind a dead link."""

    def __init__(self) -> None:
        self.pings = 0
        self.muted = False
        self.connections = 0
        self.closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> MutablePod:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                if self.muted:
                    continue
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.PingReceived):
                        self.pings += 1
                    elif isinstance(event, h2.events.RequestReceived):
                        conn.send_headers(
                            event.stream_id, [(":status", "200"), ("content-length", "2")]
                        )
                        conn.send_data(event.stream_id, b"ok", end_stream=True)
                writer.write(conn.data_to_send())
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            writer.close()


async def test_keepalive_pings_an_idle_pod_and_drops_a_dead_one(proxies: StartProxies) -> None:
    pod = await MutablePod().start()
    try:
        keepalive = {"interval": "0.2s", "timeout": "0.5s", "interval_jitter": {"value": 10}}
        cfg = yaml.safe_load(two_hosts(("127.0.0.1", pod.port)))
        cfg["static_resources"]["clusters"][0]["http2_protocol_options"] = {
            "connection_keepalive": keepalive
        }
        pp = InProcessProxy(yaml.safe_dump(cfg, sort_keys=False))
        await pp.start()
        try:
            get = b"GET /k HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
            assert (await raw_exchange(*pp.address, get)).startswith(b"HTTP/1.1 200")
            # Idle in the pool, the connection is PINGed (and the pod acks).
            for _ in range(100):
                if pod.pings >= 2:
                    break
                await asyncio.sleep(0.05)
            assert pod.pings >= 2
            assert pp.counter("cluster.app.http2.keepalive_timeout") == 0
            pod.muted = True
            pod.closed.clear()
            await asyncio.wait_for(pod.closed.wait(), 5.0)
            assert pp.counter("cluster.app.http2.keepalive_timeout") == 1
            assert pp.counter("cluster.app.upstream_cx_destroy_local") == 1
            # The next request gets a new connection.
            pod.muted = False
            assert (await raw_exchange(*pp.address, get)).startswith(b"HTTP/1.1 200")
            assert pod.connections == 2
            assert pp.errors == []
        finally:
            await pp.stop()
    finally:
        await pod.close()


@pytest.mark.envoy
async def test_keepalive_config_is_accepted_as_envoy_accepts_it(tmp_path: Path) -> None:
    """The same connection_keepalive block loads in Envoy 1.40 (validate mode) and podproxy."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    h2 = {
        "http2_protocol_options": {
            "connection_keepalive": {"interval": "30s", "timeout": "5s"},
            "max_concurrent_streams": 10,
        }
    }
    text = bootstrap([cluster("app", [("127.0.1.1", 8080)], **h2)], hcm=h2)
    load(config_yaml=text)
    path = tmp_path / "k.yaml"
    path.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()[-2000:]
