"""HTTP/2 end to end with real peers: grpcio clients and pods, curl and nghttp.

The point of the whole issue: a gRPC client puts every call on one HTTP/2 connection, and
podproxy balances the calls (not the connection) over the pods. Also: every RPC shape through
the proxy, trailers and metadata end to end, deadlines and cancellation, gRPC local replies,
HTTP/2 clients to HTTP/1 pods and HTTP/1 clients to HTTP/2 pods, and h2c by prior knowledge
on a listener of codec_type AUTO and HTTP2.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from integration.backends import Backend, raw_exchange
from integration.grpc_peers import Client, GrpcPod, in_thread
from integration.test_proxy_http import StartProxy, bootstrap, cluster, proxy, route

__all__ = ["proxy"]  # the fixture, re-exported so pytest finds it here

H2 = {"http2_protocol_options": {}}
TYPED_H2 = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}


@pytest.fixture
def grpc_pods(loopback_ip: Callable[[int], str]) -> Iterator[Callable[[int], list[GrpcPod]]]:
    """Factory: `grpc_pods(n)` -> n started grpcio pods on this test's loopback block."""
    started: list[GrpcPod] = []

    def start(n: int) -> list[GrpcPod]:
        pods = [GrpcPod(loopback_ip(len(started) + i)).start() for i in range(n)]
        started.extend(pods)
        return pods

    try:
        yield start
    finally:
        for pod in started:
            pod.stop(0)


@pytest.fixture
async def grpc_client() -> AsyncIterator[Callable[[int], Client]]:
    made: list[Client] = []

    def make(port: int) -> Client:
        c = Client("127.0.0.1", port)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def grpc_config(pods: list[GrpcPod], *, cluster_extra: dict[str, Any] | None = None) -> str:
    endpoints = [(p.address, p.port) for p in pods]
    return bootstrap([cluster("pods", endpoints, **(cluster_extra or H2))])


async def test_calls_on_one_connection_spread_over_pods(
    proxy: StartProxy, grpc_pods: Any, grpc_client: Any
) -> None:
    pods = grpc_pods(3)
    pp = await proxy(grpc_config(pods))
    client = grpc_client(pp.port)

    def calls() -> collections.Counter[str]:
        seen: collections.Counter[str] = collections.Counter()
        for i in range(300):
            answer = client.unary(b"%d" % i, timeout=10)
            seen[answer.split(b"|")[0].decode()] += 1
        return seen

    seen = await in_thread(calls)
    assert sorted(seen) == sorted(p.name for p in pods)
    assert all(99 <= n <= 101 for n in seen.values()), seen
    # One client connection carried all 300 calls; one upstream connection per pod.
    assert pp.counter("http.ingress_http.downstream_cx_http2_total") == 1
    assert pp.counter("http.ingress_http.downstream_rq_http2_total") == 300
    assert pp.counter("cluster.pods.upstream_cx_http2_total") == 3
    assert pp.counter("cluster.pods.upstream_rq_200") == 300
    assert pp.errors == []


async def test_every_rpc_shape_and_large_messages(
    proxy: StartProxy, grpc_pods: Any, grpc_client: Any
) -> None:
    (pod,) = grpc_pods(1)
    pp = await proxy(grpc_config([pod], cluster_extra=TYPED_H2))
    client = grpc_client(pp.port)

    def run() -> dict[str, Any]:
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB: many DATA frames, windows refilled
        pieces = [b"x" * 100_000 for _ in range(20)]
        return {
            "server_stream": list(client.server_stream(b"5", timeout=10)),
            "client_stream": client.client_stream(iter(pieces), timeout=10),
            "bidi": list(client.bidi(iter([b"a", b"b", b"c"]), timeout=10)),
            "big": client.unary(big, timeout=20),
            "bigsize": len(big),
        }

    got = await in_thread(run)
    name = pod.name.encode()
    assert got["server_stream"] == [b"%d|%s" % (i, name) for i in range(5)]
    assert got["client_stream"] == b"20 messages, 2000000 bytes|" + name
    assert got["bidi"] == [b"a|" + name, b"b|" + name, b"c|" + name]
    assert got["big"] == name + b"|" + bytes(range(256)) * (16 * 1024)
    assert pp.errors == []


async def test_trailers_status_and_metadata_end_to_end(
    proxy: StartProxy, grpc_pods: Any, grpc_client: Any
) -> None:
    (pod,) = grpc_pods(1)
    pp = await proxy(grpc_config([pod]))
    client = grpc_client(pp.port)

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        _, call = client.unary.with_call(b"m", metadata=(("x-echo-one", "1"),), timeout=5)
        out["trailing"] = dict(call.trailing_metadata())
        try:
            client.fail(b"5", timeout=5)
        except grpc.RpcError as exc:
            out["fail"] = (exc.code(), exc.details(), dict(exc.trailing_metadata()))
        try:
            client.missing(b"", timeout=5)
        except grpc.RpcError as exc:
            out["missing"] = exc.code()
        return out

    got = await in_thread(run)
    assert got["trailing"]["x-echo-one"] == "1"
    code, details, trailing = got["fail"]
    assert code is grpc.StatusCode.NOT_FOUND
    assert details == "failed on purpose"
    assert trailing["x-why"] == "asked"
    assert got["missing"] is grpc.StatusCode.UNIMPLEMENTED
    assert pp.errors == []


async def test_deadline_and_cancellation_reset_the_upstream_stream(
    proxy: StartProxy, grpc_pods: Any, grpc_client: Any
) -> None:
    (pod,) = grpc_pods(1)
    pp = await proxy(grpc_config([pod]))
    client = grpc_client(pp.port)

    def run() -> tuple[Any, Any, bytes]:
        try:
            client.sleep(b"5", timeout=0.3)
        except grpc.RpcError as exc:
            deadline = exc.code()
        future = client.sleep.future(b"5", timeout=10)
        # The call is on its way (the proxy sent it upstream) before the client cancels it.
        for _ in range(200):
            if pp.gauge("cluster.pods.upstream_rq_active") >= 1:
                break
            time.sleep(0.01)
        future.cancel()
        try:
            future.result()
        except grpc.FutureCancelledError:
            cancelled = "cancelled"
        # The connection is still good for the next call.
        return deadline, cancelled, client.unary(b"after", timeout=5)

    deadline, cancelled, after = await in_thread(run)
    assert deadline is grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled == "cancelled"
    assert after == pod.name.encode() + b"|after"

    async def settled() -> None:
        while pp.gauge("cluster.pods.upstream_rq_active") != 0:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(settled(), 5)
    # Both the expired and the cancelled call reset their upstream stream (Envoy counts them
    # as upstream_rq_tx_reset and upstream_rq_cancelled).
    assert pp.counter("cluster.pods.upstream_rq_cancelled") == 2
    assert pp.counter("http.ingress_http.downstream_rq_rx_reset") == 2
    assert pp.gauge("http.ingress_http.downstream_rq_active") == 0
    assert pp.errors == []


async def test_grpc_local_replies(proxy: StartProxy, grpc_client: Any) -> None:
    text = bootstrap(
        [cluster("empty", [], **H2)],
        routes=[route("/t.Echo/Unary", "empty"), route("/other", "empty")],
    )
    pp = await proxy(text)
    client = grpc_client(pp.port)

    def run() -> dict[str, Any]:
        out = {}
        for name, call in (("no_host", client.unary), ("no_route", client.missing)):
            try:
                call(b"", timeout=5)
            except grpc.RpcError as exc:
                out[name] = (exc.code(), exc.details())
        return out

    got = await in_thread(run)
    # Envoy: 503 no healthy upstream → UNAVAILABLE; 404 no route → UNIMPLEMENTED.
    assert got["no_host"] == (grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    assert got["no_route"][0] is grpc.StatusCode.UNIMPLEMENTED
    assert pp.errors == []


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


async def _curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@needs_curl
@pytest.mark.parametrize("codec", ["AUTO", "HTTP2"])
async def test_h2c_client_to_http1_pod(
    proxy: StartProxy, backend: Any, codec: str, tmp_path: Any
) -> None:
    b: Backend = await backend()
    pp = await proxy(bootstrap([cluster("app", [b.address])], hcm={"codec_type": codec}))
    url = f"http://127.0.0.1:{pp.port}/echo/x"
    rc, out, err = await _curl("--http2-prior-knowledge", "-i", url)
    assert rc == 0, err
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/2 200")
    echo = json.loads(body)
    assert echo["http_version"] == "1.1" and echo["path"] == "/echo/x"
    # A body of unknown length (no content-length on HTTP/2) goes up chunked.
    data = tmp_path / "body"
    data.write_bytes(b"y" * 100_000)
    rc, out, err = await _curl(
        "--http2-prior-knowledge", "-H", "content-length:", "--data-binary", f"@{data}",
        f"http://127.0.0.1:{pp.port}/upload",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["length"] == 100_000
    assert pp.counter("http.ingress_http.downstream_cx_http2_total") == 2
    assert pp.counter("http.ingress_http.downstream_cx_http1_total") == 0
    assert pp.errors == []


async def test_http1_client_on_auto_listener_stays_http1(proxy: StartProxy, backend: Any) -> None:
    b: Backend = await backend()
    pp = await proxy(bootstrap([cluster("app", [b.address])]))
    raw = await raw_exchange(
        *pp.address, b"GET /echo HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert pp.counter("http.ingress_http.downstream_cx_http1_total") == 1
    assert pp.counter("http.ingress_http.downstream_cx_http2_total") == 0


async def test_http1_client_to_grpc_pod_gets_status_in_headers(
    proxy: StartProxy, grpc_pods: Any
) -> None:
    """HTTP/1.1 → HTTP/2 translation: an HTTP/1 client's call reaches a gRPC pod; the
    response's trailers have nowhere to go on HTTP/1 and are dropped (as Envoy without
    enable_trailers), but a trailers-only answer carries its grpc-status in the head."""
    (pod,) = grpc_pods(1)
    pp = await proxy(grpc_config([pod]))
    msg = b"\x00\x00\x00\x00\x05hello"
    req = (
        b"POST /t.Echo/Unary HTTP/1.1\r\nhost: app\r\ncontent-type: application/grpc\r\n"
        b"te: trailers\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(msg) + msg
    )
    raw = await raw_exchange(*pp.address, req)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in head  # no content-length on the h2 answer
    assert pod.name.encode() + b"|hello" in body
    missing = (
        b"POST /t.Echo/Missing HTTP/1.1\r\nhost: app\r\ncontent-type: application/grpc\r\n"
        b"te: trailers\r\ncontent-length: 5\r\nconnection: close\r\n\r\n\x00\x00\x00\x00\x00"
    )
    raw = await raw_exchange(*pp.address, missing)
    assert b"grpc-status: 12" in raw.partition(b"\r\n\r\n")[0]
    assert pp.errors == []
