"""The gRPC stats filter in a real filter chain (FilterChainHandler, FilterManager) without
sockets: a recording router as the terminal and a sink for the response. Frame counting over
pieces split anywhere, the grpc-status from headers (trailers-only) or trailers, the stat names
with and without per-method names, the allowlist, dots replaced, weighted clusters (the
router's pick), local replies, upstream_rq_time, and the config models and names."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from podproxy.config.loader import load
from podproxy.config.normalize import normalize
from podproxy.config.schema import HttpFilter as HttpFilterModel
from podproxy.errors import ConfigErrors
from podproxy.filters.http import HTTP_FILTERS
from podproxy.filters.http.common import FilterContext
from podproxy.filters.http.grpc_stats import (
    NAME,
    FrameCounter,
    is_grpc_response,
    service_and_method,
)
from podproxy.http.conn_manager import FilterChainHandler, FilterManager, HttpConnManagerStats
from podproxy.http.stream import Exchange, Headers, RequestHead, ResponseHead
from podproxy.router.routes import Route
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster, ClusterInfo

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


# --- frames -----------------------------------------------------------------------------------


def test_frames_in_one_piece() -> None:
    c = FrameCounter()
    assert c.inspect(frame(b"abc") + frame(b"") + frame(b"xy", 1)) == 3
    assert c.count == 3


@pytest.mark.parametrize("cut", range(1, 14))
def test_frames_split_anywhere(cut: int) -> None:
    body = frame(b"abcd") + frame(b"efg")  # 9 + 8 bytes
    c = FrameCounter()
    first = c.inspect(body[:cut])
    second = c.inspect(body[cut:])
    # A frame counts when its flag byte is seen (Envoy's FrameInspector).
    assert (first, second) == ((1, 1) if cut <= 9 else (2, 0))
    assert c.count == 2


def test_frames_byte_by_byte_and_a_large_message() -> None:
    body = frame(b"x" * 70000) + frame(b"y")
    c = FrameCounter()
    deltas = [c.inspect(body[i : i + 1]) for i in range(len(body))]
    assert sum(deltas) == 2
    assert deltas[0] == 1 and deltas[70005] == 1
    c2 = FrameCounter()
    assert c2.inspect(body[:3]) + c2.inspect(body[3:40000]) + c2.inspect(body[40000:]) == 2


def test_response_counter_stops_at_a_connect_end_frame() -> None:
    body = frame(b"a") + frame(b"{}", 0x02) + frame(b"b")
    assert FrameCounter(response=True).inspect(body) == 1
    assert FrameCounter().inspect(body) == 3  # requests: every frame counts


def test_service_and_method() -> None:
    assert service_and_method(b"/pkg.Svc/Call") == ("pkg.Svc", "Call")
    assert service_and_method(b"/pkg.Svc/Call?x=1/2") == ("pkg.Svc", "Call")
    assert service_and_method(b"//pkg.Svc//Call/") == ("pkg.Svc", "Call")
    assert service_and_method(b"/a/b/c") is None
    assert service_and_method(b"/only") is None
    assert service_and_method(b"/") is None


def test_grpc_response_headers() -> None:
    def head(status: int, *headers: tuple[bytes, bytes]) -> ResponseHead:
        return ResponseHead(status, list(headers), True, None, True)

    grpc = (b"content-type", b"application/grpc")
    assert is_grpc_response(head(200, grpc), False)
    assert is_grpc_response(head(200, (b"content-type", b"application/grpc+proto")), False)
    assert not is_grpc_response(head(200, (b"content-type", b"application/grpc-web")), False)
    assert not is_grpc_response(head(503, grpc), False)
    assert is_grpc_response(head(503, (b"grpc-status", b"14")), True)
    assert not is_grpc_response(head(200, grpc), True)


# --- the filter in a chain ----------------------------------------------------------------------


class Conn:
    def __init__(self) -> None:
        self.loop: Any = None
        self.flow = None
        self.remote = ("127.0.0.1", 1)
        self.draining = False
        self.replies: list[int] = []

    def response_head_sent(self, ex: Exchange, status: int) -> None:
        ex.response_started = True

    def finish(self, ex: Exchange, keep_alive: bool) -> None:
        ex.response_complete = True

    def send_local_reply(self, ex: Exchange, status: int, body: bytes, **kw: Any) -> None:
        self.replies.append(status)
        ex.response_complete = True


@dataclasses.dataclass
class Upstream:
    """What the router leaves in Exchange.state: its request, with the cluster it chose."""

    cluster: Cluster


class Router:
    """The terminal: picks the route's cluster as the forwarder does."""

    def __init__(self, clusters: dict[str, Cluster], reply: int | None = None) -> None:
        self.clusters = clusters
        self.reply = reply
        self.body: list[bytes] = []

    def on_request_head(self, ex: Exchange) -> None:
        if self.reply is not None:
            ex.filters.send_local_reply(self.reply, b"no healthy upstream")
            return
        route = ex.filters.route()
        if route.direct_status is not None:
            ex.filters.send_local_reply(route.direct_status, b"")
            return
        name = route.cluster or route.choose_cluster(ex.head.headers)[1]
        if name not in self.clusters:
            ex.filters.send_local_reply(503, b"")  # cluster not found
            return
        ex.state = Upstream(self.clusters[name])

    def on_request_body(self, ex: Exchange, data: bytes) -> None:
        self.body.append(data)

    def on_request_end(self, ex: Exchange) -> None: ...
    def on_downstream_reset(self, ex: Exchange) -> None: ...
    def on_downstream_write_paused(self, ex: Exchange) -> None: ...
    def on_downstream_write_resumed(self, ex: Exchange) -> None: ...


class Sink:
    def __init__(self) -> None:
        self.ended = False

    def encode_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.ended = end_stream

    def encode_body(self, data: bytes, end_stream: bool) -> None:
        self.ended = end_stream

    def encode_trailers(self, trailers: Headers) -> None:
        self.ended = True


def make_cluster(store: Store, name: str) -> Cluster:
    info = ClusterInfo(
        name,
        type_name="STATIC",
        connect_timeout=1.0,
        lb_policy="ROUND_ROBIN",
        scope=store.scope(f"cluster.{name}."),
    )
    return Cluster(info, lb=None, pool_factory=lambda host: None)  # type: ignore[arg-type]


def config(**fields: Any) -> Any:
    model = HttpFilterModel.model_validate(
        {"name": NAME, "typed_config": {"@type": TYPE, **fields}}
    )
    return model.typed_config


def always(path: bytes, target: bytes, headers: Headers) -> bool:
    return True


class Proxy:
    """One HCM with the grpc_stats filter (typed config `fields`) and clusters `a`, `b`."""

    def __init__(self, route: Route | None = None, reply: int | None = None, **fields: Any):
        self.store = Store()
        self.clusters = {n: make_cluster(self.store, n) for n in ("a", "b")}
        ctx = FilterContext(stats=self.store.scope("http.t."), clusters=self.clusters)
        factory = HTTP_FILTERS[NAME](config(**fields), ctx)
        self.route = route if route is not None else Route("r", always, cluster="a")
        stats = self.store.scope("http.t.").make(HttpConnManagerStats)
        self.router = Router(self.clusters, reply)
        self.handler = FilterChainHandler(
            [(NAME, factory, False)], self.router, lambda ex: self.route, stats
        )

    def call(
        self,
        target: bytes = b"/pkg.Svc/Call",
        content_type: bytes = b"application/grpc",
        *extra: tuple[bytes, bytes],
    ) -> Stream:
        # (A length: the request has a body to come, as a gRPC request over HTTP/2 has.)
        headers = [(b"host", b"app"), (b"content-type", content_type), *extra]
        headers.append((b"content-length", b"99"))
        head = RequestHead(b"POST", target, "2", headers, True, b"app")
        ex = Exchange(Conn(), head, 0.0)  # type: ignore[arg-type]
        self.handler.on_request_head(ex)
        return Stream(self, ex)

    def histograms(self) -> dict[str, int]:
        """The gRPC histograms, by name: how many values each has."""
        return {n: h.count for n, h in self.store.histograms.items() if ".grpc." in n}

    def stats(self) -> dict[str, int]:
        """The counters charged (Envoy makes them on first use: only those exist)."""
        return {n: c.value for n, c in self.store.counters.items() if ".grpc." in n}


class Stream:
    def __init__(self, proxy: Proxy, ex: Exchange) -> None:
        self.proxy = proxy
        self.ex = ex
        self.sink = Sink()

    @property
    def fm(self) -> FilterManager:
        assert isinstance(self.ex.filters, FilterManager)
        return self.ex.filters

    def send(self, *pieces: bytes, trailers: Headers | None = None) -> Stream:
        for p in pieces:
            self.proxy.handler.on_request_body(self.ex, p)
        if trailers is not None:
            self.fm.decode_trailers(trailers)
        else:
            self.proxy.handler.on_request_end(self.ex)
        return self

    def respond(
        self,
        *pieces: bytes,
        status: int = 200,
        grpc_status: bytes | None = b"0",
        trailers_only: bool = False,
        content_type: bytes = b"application/grpc",
    ) -> Stream:
        headers: Headers = [(b"content-type", content_type)]
        if trailers_only:
            if grpc_status is not None:
                headers.append((b"grpc-status", grpc_status))
            self.fm.encode_headers(ResponseHead(status, headers, True, 0, False), True, self.sink)
            return self
        self.fm.encode_headers(ResponseHead(status, headers, True, None, True), False, self.sink)
        for p in pieces:
            self.fm.encode_data(p, False)
        if grpc_status is None:
            self.fm.encode_data(b"", True)
        else:
            self.fm.encode_trailers([(b"grpc-status", grpc_status)])
        return self


def test_default_counts_without_method_names() -> None:
    p = Proxy()
    p.call().send(frame(b"req")).respond(frame(b"r1"), frame(b"r2"))
    p.call().send(frame(b"req")).respond(grpc_status=b"5")
    assert p.stats() == {
        "cluster.a.grpc.request_message_count": 2,
        "cluster.a.grpc.response_message_count": 2,
        "cluster.a.grpc.0": 1,
        "cluster.a.grpc.success": 1,
        "cluster.a.grpc.5": 1,
        "cluster.a.grpc.failure": 1,
        "cluster.a.grpc.total": 2,
    }
    assert p.histograms() == {}  # enable_upstream_stats is off


def test_all_methods_name_service_and_method() -> None:
    p = Proxy(stats_for_all_methods=True)
    body = frame(b"one") + frame(b"two") + frame(b"three")
    p.call().send(body[:2], body[2:7], body[7:]).respond(frame(b"r"))
    # Trailers-only: the status is in the response headers.
    p.call(b"/other.Svc/Missing").send(frame(b"")).respond(grpc_status=b"12", trailers_only=True)
    assert p.stats() == {
        "cluster.a.grpc.pkg.Svc.Call.request_message_count": 3,
        "cluster.a.grpc.pkg.Svc.Call.response_message_count": 1,
        "cluster.a.grpc.pkg.Svc.Call.0": 1,
        "cluster.a.grpc.pkg.Svc.Call.success": 1,
        "cluster.a.grpc.pkg.Svc.Call.total": 1,
        "cluster.a.grpc.other.Svc.Missing.request_message_count": 1,
        "cluster.a.grpc.other.Svc.Missing.12": 1,
        "cluster.a.grpc.other.Svc.Missing.failure": 1,
        "cluster.a.grpc.other.Svc.Missing.total": 1,
    }


def test_all_methods_with_dots_replaced() -> None:
    p = Proxy(stats_for_all_methods=True, replace_dots_in_grpc_service_name=True)
    p.call(b"/a.b.Svc/Call").send(frame(b"x")).respond()
    assert "cluster.a.grpc.a_b_Svc.Call.success" in p.stats()


def test_all_methods_skips_paths_that_name_no_method() -> None:
    for fields in ({"stats_for_all_methods": True}, {}):
        p = Proxy(**fields)
        p.call(b"/a/b/c").send(frame(b"x")).respond()
        p.call(b"/nomethod").send(frame(b"x")).respond()
        assert p.stats() == {}


def test_allowlist() -> None:
    p = Proxy(
        individual_method_stats_allowlist={
            "services": [{"name": "pkg.Svc", "method_names": ["Call"]}]
        },
        replace_dots_in_grpc_service_name=True,  # not for configured names
    )
    p.call(b"/pkg.Svc/Call").send(frame(b"x")).respond()
    p.call(b"/pkg.Svc/Other").send(frame(b"x")).respond(grpc_status=b"2")
    assert p.stats() == {
        "cluster.a.grpc.pkg.Svc.Call.request_message_count": 1,
        "cluster.a.grpc.pkg.Svc.Call.0": 1,
        "cluster.a.grpc.pkg.Svc.Call.success": 1,
        "cluster.a.grpc.pkg.Svc.Call.total": 1,
        "cluster.a.grpc.request_message_count": 1,
        "cluster.a.grpc.2": 1,
        "cluster.a.grpc.failure": 1,
        "cluster.a.grpc.total": 1,
    }


def test_stats_for_all_methods_false_is_the_default() -> None:
    p = Proxy(stats_for_all_methods=False)
    p.call().send(frame(b"x")).respond()
    assert "cluster.a.grpc.success" in p.stats()


def test_only_grpc_requests_are_counted() -> None:
    p = Proxy()
    p.call(b"/pkg.Svc/Call", b"application/grpc-web").send(frame(b"x")).respond()
    p.call(b"/pkg.Svc/Call", b"application/json").send(frame(b"x")).respond()
    p.call(b"/pkg.Svc/Call", b"Application/grpc").send(frame(b"x")).respond()
    assert p.stats() == {}
    p.call(b"/pkg.Svc/Call", b"application/grpc+json").send(frame(b"x")).respond()
    assert p.stats()["cluster.a.grpc.total"] == 1


def test_no_grpc_status_charges_no_status() -> None:
    p = Proxy()
    p.call().send(frame(b"x")).respond(frame(b"r"), grpc_status=None)
    assert p.stats() == {
        "cluster.a.grpc.request_message_count": 1,
        "cluster.a.grpc.response_message_count": 1,
    }


def test_a_non_grpc_response_counts_no_messages() -> None:
    p = Proxy()
    p.call().send(frame(b"x")).respond(b"<html>", status=503, content_type=b"text/html")
    assert p.stats() == {
        "cluster.a.grpc.request_message_count": 1,
        "cluster.a.grpc.0": 1,
        "cluster.a.grpc.success": 1,
        "cluster.a.grpc.total": 1,
    }


def test_unknown_status_values_are_names_too() -> None:
    p = Proxy()
    p.call().send(frame(b"x")).respond(grpc_status=b"99")
    assert p.stats()["cluster.a.grpc.99"] == 1
    assert p.stats()["cluster.a.grpc.failure"] == 1


def test_request_trailers_end_the_request() -> None:
    p = Proxy(enable_upstream_stats=True)
    p.call().send(frame(b"x"), trailers=[(b"x-t", b"1")]).respond()
    assert p.histograms() == {"cluster.a.grpc.upstream_rq_time": 1}


def test_upstream_rq_time_per_method() -> None:
    p = Proxy(enable_upstream_stats=True, stats_for_all_methods=True)
    p.call().send(frame(b"x")).respond()
    p.call().send(frame(b"x")).respond(grpc_status=b"12", trailers_only=True)
    assert p.histograms() == {"cluster.a.grpc.pkg.Svc.Call.upstream_rq_time": 2}
    # A response whose request never ended has no upstream time (Envoy needs both ends).
    p.call().send().respond()  # (ended with no body: counted)
    s = p.call()
    s.respond()
    assert p.histograms() == {"cluster.a.grpc.pkg.Svc.Call.upstream_rq_time": 3}


def test_upstream_rq_time_of_a_head_then_an_empty_end() -> None:
    """An HTTP/2 upstream's trailers-only answer reaches the filters as its head and then an
    empty end: timed as Envoy times a head that ends the stream; a body-bearing response
    that ends without trailers is not timed."""
    p = Proxy(enable_upstream_stats=True)
    s = p.call().send(frame(b"x"))
    s.fm.encode_headers(
        ResponseHead(200, [(b"grpc-status", b"12")], True, None, False), False, s.sink
    )
    s.fm.encode_data(b"", True)
    assert p.histograms() == {"cluster.a.grpc.upstream_rq_time": 1}
    assert p.stats()["cluster.a.grpc.12"] == 1
    p.call().send(frame(b"x")).respond(frame(b"r"), grpc_status=None)
    assert p.histograms() == {"cluster.a.grpc.upstream_rq_time": 1}


def test_route_without_cluster_or_unknown_cluster() -> None:
    p = Proxy(route=Route("r", always, direct_status=503))
    p.call()
    p.route = Route("r", always, cluster="nosuch")
    p.call()
    assert p.stats() == {}


def test_cluster_header_route() -> None:
    p = Proxy(route=Route("r", always, cluster_header=b"x-cluster"))
    p.call(b"/pkg.Svc/Call", b"application/grpc", (b"x-cluster", b"b")).send(frame(b"x")).respond()
    assert p.stats()["cluster.b.grpc.success"] == 1


def test_weighted_clusters_charge_the_routers_pick() -> None:
    weighted = Route("r", always)
    # A stand-in for WeightedClusters: the router's pick is what counts.
    picks = iter(["b", "a"])

    class Weighted:
        def pick(self) -> Route:
            return dataclasses.replace(weighted, cluster=next(picks))

    p = Proxy(route=dataclasses.replace(weighted, weighted=Weighted()))  # type: ignore[arg-type]
    p.call().send(frame(b"x")).respond()
    p.call().send(frame(b"x")).respond(grpc_status=b"1")
    assert p.stats() == {
        "cluster.b.grpc.request_message_count": 1,
        "cluster.b.grpc.0": 1,
        "cluster.b.grpc.success": 1,
        "cluster.b.grpc.total": 1,
        "cluster.a.grpc.request_message_count": 1,
        "cluster.a.grpc.1": 1,
        "cluster.a.grpc.failure": 1,
        "cluster.a.grpc.total": 1,
    }


def test_local_reply_is_charged_as_its_grpc_status() -> None:
    p = Proxy(reply=503, enable_upstream_stats=True)
    p.call().send(frame(b"x"))
    assert p.stats() == {
        "cluster.a.grpc.14": 1,
        "cluster.a.grpc.failure": 1,
        "cluster.a.grpc.total": 1,
    }
    assert p.histograms() == {}


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_fields() -> None:
    cfg = config()
    assert cfg.stats_for_all_methods is None
    assert cfg.individual_method_stats_allowlist is None
    assert not cfg.enable_upstream_stats and not cfg.replace_dots_in_grpc_service_name
    assert config(emit_filter_state=False).emit_filter_state is False


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"emit_filter_state": True}, "emit_filter_state: true is not supported by podproxy"),
        (
            {"stats_for_all_methods": True, "individual_method_stats_allowlist": {}},
            "at most one of individual_method_stats_allowlist, stats_for_all_methods",
        ),
        (
            {"individual_method_stats_allowlist": {"services": [{"name": "s"}]}},
            "method_names: missing required field",
        ),
        (
            {"individual_method_stats_allowlist": {"services": [{"method_names": ["m"]}]}},
            "name: missing required field",
        ),
        ({"stats_for_all_methods": "yes"}, "stats_for_all_methods: expected true or false"),
        ({"no_such": 1}, "no_such: unknown field"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    text = f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          route_config: {{virtual_hosts: []}}
          http_filters:
          - name: {NAME}
            typed_config: {{"@type": {TYPE}, {", ".join(f"{k}: {_yaml(v)}" for k, v in fields.items())}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""  # noqa: E501
    with pytest.raises(ConfigErrors) as err:
        load(config_yaml=text)
    assert message in str(err.value)
    assert "http_filters[0].typed_config" in str(err.value)


def _yaml(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML


def test_v2alpha_type_url_is_normalized() -> None:
    hcm = {
        "stat_prefix": "t",
        "route_config": {"virtual_hosts": []},
        "http_filters": [
            {
                "name": NAME,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.filter.http.grpc_stats.v2alpha."
                    "FilterConfig",
                    "stats_for_all_methods": True,
                },
            },
            {"name": "envoy.router", "config": {}},
        ],
    }
    v2 = {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ]
        }
    }
    out = normalize(v2).v3
    listener = out["static_resources"]["listeners"][0]
    first = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert first["typed_config"]["@type"] == TYPE
