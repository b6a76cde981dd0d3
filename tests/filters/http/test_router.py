"""Forwarder pieces that need no sockets: request ids, the route-timeout queue, the
hand-back of an upstream connection under client back-pressure, and the forwarding headers
(x-forwarded-*, x-envoy-*) the upstream gets (fake transports)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from podproxy.filters.http.router import TimeoutQueue
from podproxy.listener import LocalInfo, local_address


class FakeRequest:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name = name
        self.fired = fired

    def on_timeout(self) -> None:
        self.fired.append(self.name)


async def test_timeout_queue_fires_live_entries_in_order_and_skips_completed() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.05)
    entries: dict[str, list[Any]] = {}
    for name in "abcd":
        entries[name] = q.add(FakeRequest(name, fired), loop)  # type: ignore[arg-type]
        await asyncio.sleep(0.005)
    entries["a"][1] = None  # a and c completed in time: their entries are cleared
    entries["c"][1] = None
    await asyncio.sleep(0.12)
    assert fired == ["b", "d"]
    assert not q.entries
    # Completed entries at the front are dropped as new ones arrive: memory stays bounded.
    for i in range(1000):
        q.add(FakeRequest(str(i), fired), loop)[1] = None  # type: ignore[arg-type]
    assert len(q.entries) <= 1
    q.close()


async def test_timeout_queue_rearms_after_emptying() -> None:
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    q = TimeoutQueue(0.02)
    q.add(FakeRequest("x", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    q.add(FakeRequest("y", fired), loop)  # type: ignore[arg-type]
    await asyncio.sleep(0.06)
    assert fired == ["x", "y"]
    q.close()


class _Transport:
    """A transport that keeps what is written; `on_write` runs after each write."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 5555)) -> None:
        self.out: list[bytes] = []
        self.reading = True
        self.on_write: Any = None
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if self.on_write is not None:
            self.on_write()

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return self.peer if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _proxy_with_one_idle_upstream(
    hcm: dict[str, Any] | None = None,
    *,
    peer: tuple[str, int] = ("127.0.0.1", 5555),
    local_info: LocalInfo | None = None,
    routes: list[dict[str, Any]] | None = None,
) -> tuple[Any, _Transport, Any, _Transport]:
    """A built server whose one host has one idle pooled connection, and a client connection
    from `peer`; all over `_Transport`s. `local_info` stands for the server's --service-cluster
    and --service-node. Returns (client, client transport, upstream, upstream transport)."""
    from integration.test_proxy_http import bootstrap, cluster

    from podproxy.config.loader import load
    from podproxy.http.http1.upstream import ConnState, UpstreamConnection
    from podproxy.listener import build_http_listener
    from podproxy.server import Options, Server

    text = bootstrap([cluster("app", [("127.0.1.1", 8080)])], hcm=hcm, routes=routes)
    server = Server(load(config_yaml=text), Options())
    server.build()
    if local_info is not None:
        (lc,) = server.loaded.bootstrap.static_resources.listeners
        clusters = server.cluster_manager.clusters
        server.http_listeners[0] = build_http_listener(
            lc, clusters, server.store, local_info=local_info
        )
    app = server.cluster_manager.clusters["app"]
    app.discovery.start()
    (host,) = app.hosts
    pool = app.pool_for(host)
    upstream = UpstreamConnection(pool)
    up_transport = _Transport()
    upstream.connection_made(up_transport)  # type: ignore[arg-type]
    upstream.state = ConnState.IDLE
    upstream.idle_since = time.monotonic()
    pool.idle.append(upstream)
    client = server.http_listeners[0].tracker.protocol_factory()
    client_transport = _Transport(peer)
    client.connection_made(client_transport)  # type: ignore[arg-type]
    return client, client_transport, upstream, up_transport


async def test_upstream_connection_paused_by_a_slow_client_goes_back_to_the_pool_reading() -> None:
    """The write that ends a response can fill the client's buffer (pause_writing). The
    upstream connection is already back in its pool then: it must not be left paused, or the
    next request sent on it never gets its response read."""
    from podproxy.http.http1.upstream import ConnState

    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
    client_transport.on_write = client.pause_writing  # every write fills the client's buffer

    for _ in range(2):
        client.data_received(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        assert up_transport.out, "the request was not sent on the pooled connection"
        up_transport.out.clear()
        upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert b"".join(client_transport.out).endswith(b"\r\n\r\nok")
        client_transport.out.clear()
        assert upstream.state is ConnState.IDLE
        assert up_transport.reading and not upstream.flow.reasons  # type: ignore[union-attr]
        client.resume_writing()


async def test_head_that_fills_the_upstream_buffer_holds_the_client_body() -> None:
    """The head goes out on an idle connection before the exchange takes the connection over:
    a pause_writing raised by that very write must still stop reading the client's body."""
    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
    up_transport.on_write = upstream.pause_writing  # the head alone fills the buffer
    client.data_received(b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n")
    assert up_transport.out and up_transport.out[0].startswith(b"POST / HTTP/1.1\r\n")
    assert not client_transport.reading, "the client's body is read into a full buffer"
    up_transport.on_write = None
    upstream.resume_writing()
    assert client_transport.reading


async def test_body_in_the_same_read_follows_the_head_on_an_idle_connection() -> None:
    client, _, upstream, up_transport = _proxy_with_one_idle_upstream()
    client.data_received(b"POST /p HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello")
    sent = b"".join(up_transport.out)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /p HTTP/1.1\r\n") and b"content-length: 5" in head
    assert body == b"hello" and upstream.request_done


async def test_expect_100_continue_on_an_idle_connection() -> None:
    """Envoy answers 100-continue itself and does not pass Expect on; the body follows."""
    client, client_transport, upstream, up_transport = _proxy_with_one_idle_upstream()
    client.data_received(
        b"PUT /u HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
    )
    assert b"".join(client_transport.out) == b"HTTP/1.1 100 Continue\r\n\r\n"
    head = b"".join(up_transport.out)
    assert head.startswith(b"PUT /u HTTP/1.1\r\n") and b"\r\nexpect:" not in head.lower()
    client.data_received(b"abc")
    assert b"".join(up_transport.out).endswith(b"\r\n\r\nabc") and upstream.request_done
    upstream.data_received(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
    assert b"HTTP/1.1 201 Created\r\n" in b"".join(client_transport.out)


# --- forwarding headers ------------------------------------------------------------------------


def _upstream_headers(
    request: bytes,
    hcm: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[bytes, list[bytes]]:
    """The header fields the upstream gets for `request` (sent on an idle connection)."""
    client, _, _, up_transport = _proxy_with_one_idle_upstream(hcm, **kwargs)
    client.data_received(request)
    head = b"".join(up_transport.out).partition(b"\r\n\r\n")[0]
    fields: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        fields.setdefault(name, []).append(value)
    return fields


def _get(*headers: str) -> bytes:
    return (
        "GET /a HTTP/1.1\r\nhost: app\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    ).encode()


async def test_edge_request_with_trusted_hops() -> None:
    request = _get(
        "x-forwarded-for: 127.0.113.1, 127.0.100.7",
        "x-forwarded-proto: https",
        "x-envoy-external-address: 127.1.1.1",
        "x-envoy-original-path: /forged",
        "x-envoy-retry-on: 5xx",
    )
    hcm = {"use_remote_address": True, "xff_num_trusted_hops": 1}
    h = _upstream_headers(request, hcm)
    own = local_address().encode()  # appended for a peer at 127.0.0.1
    assert h[b"x-forwarded-for"] == [b"127.0.113.1, 127.0.100.7," + own]
    assert h[b"x-envoy-external-address"] == [b"127.0.100.7"]  # 1 hop trusted
    assert h[b"x-forwarded-proto"] == [b"https"]  # a trusted hop set it
    for name in (b"x-envoy-original-path", b"x-envoy-retry-on", b"x-envoy-internal"):
        assert name not in h
    h = _upstream_headers(request, hcm, peer=("127.0.1.9", 4000))
    assert h[b"x-forwarded-for"] == [b"127.0.113.1, 127.0.100.7,127.0.1.9"]
    h = _upstream_headers(request, {"use_remote_address": True})
    assert h[b"x-envoy-external-address"] == [b"127.0.0.1"]  # no hop trusted: the peer
    assert h[b"x-forwarded-proto"] == [b"http"]  # the client's is not believed


async def test_intermediate_request_passes_forwarding_headers() -> None:
    request = _get(
        "x-forwarded-for: 127.0.113.1",
        "x-envoy-external-address: 127.0.113.1",
        "x-envoy-original-path: /before",
        "x-envoy-downstream-service-cluster: front",
        "x-envoy-internal: true",
    )
    h = _upstream_headers(request, {"xff_num_trusted_hops": 1})
    assert h[b"x-forwarded-for"] == [b"127.0.113.1"]  # nothing appended
    assert h[b"x-envoy-external-address"] == [b"127.0.113.1"]
    assert h[b"x-envoy-original-path"] == [b"/before"]
    assert h[b"x-envoy-downstream-service-cluster"] == [b"front"]
    assert b"x-envoy-internal" not in h  # nothing is internal (Envoy >= 1.33)


async def test_a_rewrite_replaces_the_clients_original_path_and_host() -> None:
    from integration.test_proxy_http import route

    routes = [route("/", "app", prefix_rewrite="/b/", host_rewrite_literal="inner")]
    request = _get("x-envoy-original-path: /forged", "x-envoy-original-host: forged")
    h = _upstream_headers(request, routes=routes)
    assert h[b"x-envoy-original-path"] == [b"/a"]
    assert h[b"x-envoy-original-host"] == [b"app"]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_scheme_to_overwrite_sets_x_forwarded_proto(scheme: str) -> None:
    hcm = {"scheme_header_transformation": {"scheme_to_overwrite": scheme}}
    for request in (_get(), _get("x-forwarded-proto: ftp")):
        assert _upstream_headers(request, hcm)[b"x-forwarded-proto"] == [scheme.encode()]


async def test_match_upstream_leaves_x_forwarded_proto() -> None:
    hcm = {"scheme_header_transformation": {"match_upstream": True}}
    assert _upstream_headers(_get("x-forwarded-proto: https"), hcm)[b"x-forwarded-proto"] == [
        b"https"
    ]


async def test_add_user_agent_with_the_servers_service_cluster_and_node() -> None:
    info = LocalInfo(cluster="front", node="front-1")
    spoofed = (
        "x-envoy-downstream-service-cluster: spoof",
        "x-envoy-downstream-service-node: spoof",
    )
    h = _upstream_headers(_get(*spoofed), {"add_user_agent": True}, local_info=info)
    assert h[b"x-envoy-downstream-service-cluster"] == [b"front"]
    assert h[b"x-envoy-downstream-service-node"] == [b"front-1"]
    assert h[b"user-agent"] == [b"front"]  # the request had none
    h = _upstream_headers(_get("user-agent: curl/8"), {"add_user_agent": True}, local_info=info)
    assert h[b"user-agent"] == [b"curl/8"]
    h = _upstream_headers(_get("user-agent: "), {"add_user_agent": True}, local_info=info)
    assert h[b"user-agent"] == [b"front"]  # an empty one is replaced
    # Without --service-cluster / --service-node: empty values, as Envoy sends them; a node
    # header from the client stays (Envoy sets it only when the node name is not empty).
    h = _upstream_headers(_get(*spoofed), {"add_user_agent": True})
    assert h[b"x-envoy-downstream-service-cluster"] == [b""]
    assert h[b"x-envoy-downstream-service-node"] == [b"spoof"]
    assert h[b"user-agent"] == [b""]
    h = _upstream_headers(_get("user-agent: curl/8"), local_info=info)  # add_user_agent off
    assert b"x-envoy-downstream-service-cluster" not in h and h[b"user-agent"] == [b"curl/8"]
