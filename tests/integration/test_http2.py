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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from tls_certs import CertificateAuthority, server_cert

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

    def run() -> tuple[Any, int, Any, bytes]:
        try:
            client.sleep(b"5", timeout=0.3)
        except grpc.RpcError as exc:
            deadline = exc.code()
        # The expired call ended at the client (it resets its stream) and, racing it, at the
        # pod (grpc-timeout went up with the call): either way nothing stays open.
        for _ in range(500):
            if pp.gauge("cluster.pods.upstream_rq_active") == 0:
                break
            time.sleep(0.01)
        cancelled_before = pp.counter("cluster.pods.upstream_rq_cancelled")
        future = client.sleep.future(b"5", timeout=10)
        # The call is on its way (the proxy sent it upstream) before the client cancels it.
        for _ in range(500):
            if pp.gauge("cluster.pods.upstream_rq_active") >= 1:
                break
            time.sleep(0.01)
        future.cancel()
        try:
            future.result()
        except grpc.FutureCancelledError:
            cancelled = "cancelled"
        # The connection is still good for the next call.
        return deadline, cancelled_before, cancelled, client.unary(b"after", timeout=5)

    deadline, cancelled_before, cancelled, after = await in_thread(run)
    assert deadline is grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled == "cancelled"
    assert after == pod.name.encode() + b"|after"

    async def settled() -> None:
        while pp.gauge("cluster.pods.upstream_rq_active") != 0:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(settled(), 5)
    # The cancelled call reset its upstream stream (Envoy counts upstream_rq_cancelled, and
    # the client's reset as downstream_rq_rx_reset).
    assert pp.counter("cluster.pods.upstream_rq_cancelled") == cancelled_before + 1
    assert pp.counter("http.ingress_http.downstream_rq_rx_reset") >= 1
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


def _tls_chain(cert: str, key: str, alpn: list[str]) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
                ],
                "alpn_protocols": alpn,
            },
        },
    }


async def test_grpc_over_tls_both_sides_and_http1_on_the_same_listener(
    proxy: StartProxy, loopback_ip: Callable[[int], str], tmp_path: Any
) -> None:
    """A TLS listener offering h2 and http/1.1 by ALPN: a gRPC client (h2) and curl (http/1.1)
    on one port; the cluster speaks HTTP/2 over TLS to pods that require it, verifying their
    certificates against the CA."""
    ca = CertificateAuthority()
    listener_cert = server_cert(ca)
    cert, key = listener_cert.write(tmp_path, "listener")
    ca_path = ca.write(tmp_path)
    pods = []
    for i in range(2):
        address = loopback_ip(i)
        issued = ca.issue("pod", ips=(address,))
        pods.append(GrpcPod(address, tls=(issued.key_pem, issued.cert_pem)).start())
    try:
        upstream_tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                "common_tls_context": {"validation_context": {"trusted_ca": {"filename": ca_path}}},
            },
        }
        endpoints = [(p.address, p.port) for p in pods]
        config = yaml.safe_load(
            bootstrap([cluster("pods", endpoints, **H2, transport_socket=upstream_tls)])
        )
        chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
        chain["transport_socket"] = _tls_chain(cert, key, ["h2", "http/1.1"])
        pp = await proxy(yaml.safe_dump(config))
        client = Client("127.0.0.1", pp.port, root_ca=ca.cert_pem)
        try:

            def calls() -> collections.Counter[str]:
                seen: collections.Counter[str] = collections.Counter()
                for i in range(20):
                    seen[client.unary(b"%d" % i, timeout=10).split(b"|")[0].decode()] += 1
                return seen

            seen = await in_thread(calls)
        finally:
            client.close()
        assert seen == {p.name: 10 for p in pods}
        # HTTP/1.1 on the same listener (ALPN http/1.1): the same pods cannot answer it
        # (they speak gRPC only), but the proxy does, over HTTP/1.1.
        rc, out, err = await _curl(
            "--cacert", ca_path, "--http1.1", "-i", f"https://127.0.0.1:{pp.port}/x"
        )
        assert rc == 0, err
        assert out.startswith("HTTP/1.1 ")
        assert pp.counter("http.ingress_http.downstream_cx_http2_total") == 1
        assert pp.counter("http.ingress_http.downstream_cx_http1_total") == 1
        assert pp.counter("cluster.pods.upstream_cx_http2_total") == 2
        assert pp.errors == []
    finally:
        for pod in pods:
            pod.stop(0)


async def test_pod_shutting_down_gracefully_loses_no_call(
    proxy: StartProxy, grpc_pods: Any, grpc_client: Any
) -> None:
    """A pod that stops gracefully (grpcio's stop(grace): GOAWAY, then the calls in flight
    are answered) while one client connection keeps calling: every call succeeds. Calls in
    flight on the going pod finish there; later ones go to the other pod (its connection is
    draining, and a new one is refused)."""
    pods = grpc_pods(2)
    pp = await proxy(grpc_config(pods))
    client = grpc_client(pp.port)
    results: list[bytes | str] = []

    def calls() -> None:
        for i in range(150):
            try:
                results.append(client.unary(b"%d" % i, timeout=10))
            except grpc.RpcError as exc:
                results.append(f"{exc.code()}: {exc.details()}")
            if i == 50:
                # Mid-load, on a thread of its own: the going pod's calls keep coming.
                stopper.start()
            time.sleep(0.002)

    stopper = threading.Thread(target=pods[0].stop, args=(2.0,))
    await in_thread(calls)
    stopper.join(10)
    failed = [r for r in results if isinstance(r, str)]
    assert failed == []
    names = collections.Counter(r.split(b"|")[0] for r in results if isinstance(r, bytes))
    assert names[pods[1].name.encode()] > 75  # the rest went to the pod that stayed
    assert pp.errors == []


needs_nghttp2 = pytest.mark.skipif(
    shutil.which("h2load") is None or shutil.which("nghttp") is None,
    reason="nghttp2-client (h2load, nghttp) not installed",
)


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@needs_nghttp2
async def test_h2load_many_streams_on_few_connections(
    proxy: StartProxy, backend: Any, tmp_path: Path
) -> None:
    """h2load: 2 connections with 10 concurrent streams each, 400 POSTs with bodies through podproxy
    to HTTP/1 pods; every one answered 2xx."""
    data = tmp_path / "body"
    data.write_bytes(b"z" * 3000)
    b1: Backend = await backend()
    b2: Backend = await backend()
    pp = await proxy(bootstrap([cluster("app", [b1.address, b2.address])]))
    out = await _run(
        "h2load", "-n", "400", "-c", "2", "-m", "10", "-d", str(data),
        f"http://127.0.0.1:{pp.port}/upload",
    )  # fmt: skip
    assert "400 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 400 2xx" in out, out
    assert len(b1.requests) == len(b2.requests) == 200
    assert pp.counter("http.ingress_http.downstream_cx_http2_total") == 2
    assert pp.errors == []


@needs_nghttp2
async def test_nghttp_frames(proxy: StartProxy, backend: Any) -> None:
    """nghttp's view of one exchange: our SETTINGS (no push, Envoy's stream limit and
    window), the connection window raised, the answer, and a clean end."""
    b: Backend = await backend()
    pp = await proxy(bootstrap([cluster("app", [b.address])]))
    out = await _run("nghttp", "-nv", f"http://127.0.0.1:{pp.port}/bytes/10")
    assert "recv SETTINGS frame" in out
    assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):1024]" in out
    assert "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):16777216]" in out
    assert "[SETTINGS_ENABLE_PUSH(0x02):0]" in out
    assert "window_size_increment=25100289" in out  # 24 MiB connection window
    assert "recv (stream_id=13) :status: 200" in out
    assert "recv DATA frame <length=10, flags=0x0" in out
    assert "flags=0x01, stream_id=13>" in out  # the stream ends (END_STREAM)
    assert pp.errors == []


@needs_curl
async def test_use_downstream_protocol_config_follows_the_client(proxy: StartProxy) -> None:
    """use_downstream_protocol_config: an HTTP/2 client's request goes up over HTTP/2, an
    HTTP/1.1 client's over HTTP/1.1. The pod is a second podproxy (codec AUTO, a direct
    response), whose own stats say which protocol reached it."""
    pod_text = bootstrap(
        [cluster("none", [])],
        routes=[
            {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "pod"}},
            }
        ],
    )
    pod = await proxy(pod_text)
    down = {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "use_downstream_protocol_config": {},
            }
        }
    }
    front = await proxy(bootstrap([cluster("pod", [("127.0.0.1", pod.port)], **down)]))
    url = f"http://127.0.0.1:{front.port}/x"
    for flag in ("--http2-prior-knowledge", "--http1.1", "--http2-prior-knowledge"):
        rc, out, err = await _curl(flag, url)
        assert (rc, out) == (0, "pod"), err
    assert pod.counter("http.ingress_http.downstream_cx_http2_total") == 1  # one h2 pool
    assert pod.counter("http.ingress_http.downstream_rq_http2_total") == 2
    assert pod.counter("http.ingress_http.downstream_rq_http1_total") == 1
    assert front.counter("cluster.pod.upstream_cx_http2_total") == 1
    assert front.counter("cluster.pod.upstream_cx_http1_total") == 1
    assert front.errors == pod.errors == []


@needs_curl
async def test_http2_streams_are_access_logged(
    proxy: StartProxy, backend: Any, tmp_path: Path
) -> None:
    b: Backend = await backend()
    log = tmp_path / "access.log"
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                "FileAccessLog",
                "path": str(log),
                "log_format": {
                    "text_format_source": {
                        "inline_string": "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% "
                        "%RESPONSE_CODE% %BYTES_RECEIVED% %RESPONSE_FLAGS%\n"
                    }
                },
            },
        }
    ]
    pp = await proxy(bootstrap([cluster("app", [b.address])], hcm={"access_log": access_log}))
    rc, _, err = await _curl(
        "--http2-prior-knowledge", "-d", "hello", f"http://127.0.0.1:{pp.port}/echo/a"
    )
    assert rc == 0, err
    rc, _, err = await _curl("--http2-prior-knowledge", f"http://127.0.0.1:{pp.port}/status/404")
    assert rc == 0, err

    async def logged() -> list[str]:
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            if len(lines) >= 2:
                return lines
            await asyncio.sleep(0.05)

    lines = await asyncio.wait_for(logged(), 5)
    assert lines == ["HTTP/2 POST /echo/a 200 5 -", "HTTP/2 GET /status/404 404 0 -"]
    assert pp.errors == []
