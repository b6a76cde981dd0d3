"""Admin endpoints against a fake server built from real stats, clusters and hosts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from podproxy.admin import Admin, AdminRequest, AdminResponse, ServerState, parse_params, text
from podproxy.config.schema import LayeredRuntime
from podproxy.runtime import Runtime
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster, ClusterInfo
from podproxy.upstream.host import HealthFlag, Host
from podproxy.upstream.load_balancer import RoundRobinLoadBalancer


@dataclass
class FakeServer:
    store: Store = field(default_factory=Store)
    healthcheck_failed: bool = False
    start_time: float = 1_700_000_000.0
    version: str = "podproxy/0.1.0"
    current_state: ServerState = ServerState.LIVE
    cluster_list: list[Cluster] = field(default_factory=list)
    shutdowns: int = 0
    runtime: Runtime = field(default_factory=Runtime)

    def clusters(self) -> Iterable[Cluster]:
        return self.cluster_list

    def state(self) -> ServerState:
        return self.current_state

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed

    def config_dump(self) -> dict[str, Any]:
        return {"static_resources": {"clusters": [{"name": "httpd"}]}}

    def listeners(self) -> list[tuple[str, str]]:
        return [("listener_0", "0.0.0.0:10000"), ("v6", "[::1]:9000")]

    def node_info(self) -> dict[str, Any]:
        return {"id": "n-1", "cluster": "front", "user_agent_name": "podproxy"}

    def command_line_options(self) -> dict[str, Any]:
        return {"concurrency": 1, "config_path": "envoy.yaml"}

    def request_shutdown(self) -> None:
        self.shutdowns += 1


def make_server() -> FakeServer:
    server = FakeServer()
    info = ClusterInfo(
        "httpd",
        type_name="STRICT_DNS",
        connect_timeout=0.25,
        lb_policy="ROUND_ROBIN",
        scope=server.store.scope("cluster.httpd."),
    )
    cluster = Cluster(info, RoundRobinLoadBalancer(random=lambda: 0), pool_factory=lambda h: None)
    a = Host("127.0.9.5", 8080, hostname="httpd-discovery")
    b = Host("127.0.9.6", 8080, health_flags=HealthFlag.FAILED_ACTIVE_HC)
    a.stats.rq_total = 3
    a.stats.rq_success = 3
    a.stats.cx_total = 1
    a.stats.cx_active = 1
    cluster.priority_set.update_hosts([a, b])
    server.cluster_list.append(cluster)
    return server


@pytest.fixture
def server() -> FakeServer:
    return make_server()


@pytest.fixture
def admin(server: FakeServer) -> Admin:
    return Admin(server)


def body(resp: AdminResponse) -> str:
    return resp.body.decode()


def test_clusters_text_exact(admin: Admin) -> None:
    resp = admin.handle("GET", "/clusters")
    assert resp.status == 200
    assert resp.content_type == "text/plain; charset=UTF-8"
    lines = body(resp).splitlines()
    assert lines[:11] == [
        "httpd::observability_name::httpd",
        "httpd::default_priority::max_connections::1024",
        "httpd::default_priority::max_pending_requests::1024",
        "httpd::default_priority::max_requests::1024",
        "httpd::default_priority::max_retries::3",
        "httpd::high_priority::max_connections::1024",
        "httpd::high_priority::max_pending_requests::1024",
        "httpd::high_priority::max_requests::1024",
        "httpd::high_priority::max_retries::3",
        "httpd::added_via_api::false",
        "httpd::127.0.9.5:8080::cx_active::1",
    ]
    host_a = [
        "httpd::127.0.9.5:8080::cx_active::1",
        "httpd::127.0.9.5:8080::cx_connect_fail::0",
        "httpd::127.0.9.5:8080::cx_total::1",
        "httpd::127.0.9.5:8080::rq_active::0",
        "httpd::127.0.9.5:8080::rq_error::0",
        "httpd::127.0.9.5:8080::rq_pending_active::0",
        "httpd::127.0.9.5:8080::rq_success::3",
        "httpd::127.0.9.5:8080::rq_timeout::0",
        "httpd::127.0.9.5:8080::rq_total::3",
        "httpd::127.0.9.5:8080::hostname::httpd-discovery",
        "httpd::127.0.9.5:8080::health_flags::healthy",
        "httpd::127.0.9.5:8080::weight::1",
        "httpd::127.0.9.5:8080::region::",
        "httpd::127.0.9.5:8080::zone::",
        "httpd::127.0.9.5:8080::sub_zone::",
        "httpd::127.0.9.5:8080::canary::false",
        "httpd::127.0.9.5:8080::priority::0",
        "httpd::127.0.9.5:8080::success_rate::-1",
        "httpd::127.0.9.5:8080::local_origin_success_rate::-1",
    ]
    assert lines[10:29] == host_a
    p = "httpd::127.0.9.6:8080::"
    host_b = [
        *(f"{p}{k}::0" for k in ("cx_active", "cx_connect_fail", "cx_total", "rq_active")),
        *(f"{p}{k}::0" for k in ("rq_error", "rq_pending_active", "rq_success", "rq_timeout")),
        f"{p}rq_total::0",
        f"{p}hostname::",
        f"{p}health_flags::/failed_active_hc",
        f"{p}weight::1",
        f"{p}region::",
        f"{p}zone::",
        f"{p}sub_zone::",
        f"{p}canary::false",
        f"{p}priority::0",
        f"{p}success_rate::-1",
        f"{p}local_origin_success_rate::-1",
    ]
    assert lines[29:] == host_b


def test_clusters_json(admin: Admin) -> None:
    resp = admin.handle("GET", "/clusters?format=json")
    assert resp.content_type == "application/json"
    doc = json.loads(resp.body)
    (status,) = doc["cluster_statuses"]
    assert list(status) == ["name", "host_statuses", "circuit_breakers", "observability_name"]
    assert status["circuit_breakers"]["thresholds"][1] == {
        "priority": "HIGH",
        "max_connections": 1024,
        "max_pending_requests": 1024,
        "max_requests": 1024,
        "max_retries": 3,
    }
    a, b = status["host_statuses"]
    assert a["address"] == {"socket_address": {"address": "127.0.9.5", "port_value": 8080}}
    assert a["stats"][:2] == [{"name": "cx_connect_fail"}, {"value": "1", "name": "cx_total"}]
    assert {"value": "1", "type": "GAUGE", "name": "cx_active"} in a["stats"]
    assert a["health_status"] == {"eds_health_status": "HEALTHY"}
    assert a["hostname"] == "httpd-discovery"
    assert b["health_status"] == {
        "failed_active_health_check": True,
        "eds_health_status": "HEALTHY",
    }
    assert "hostname" not in b


def test_clusters_filter(admin: Admin) -> None:
    assert body(admin.handle("GET", "/clusters?filter=^nope$")) == ""
    assert admin.handle("GET", "/clusters?filter=(").status == 400


def test_help_shape(admin: Admin) -> None:
    resp = admin.handle("GET", "/help")
    lines = body(resp).splitlines()
    assert lines[0] == "admin commands are:"
    assert lines[1] == "  /: Admin home page"
    assert "  /healthcheck/fail (POST): cause the server to fail health checks" in lines
    assert "  /ready: print server state, return 200 if LIVE, otherwise return 503" in lines
    i = lines.index("  /listeners: print listener info")
    assert lines[i + 1] == "      format: File format to use; One of (text, json)"
    paths = [line.split(":")[0].split(" (")[0].strip() for line in lines[1:] if line[2] == "/"]
    assert paths == sorted(paths)
    assert body(resp).endswith("\n")


def test_unknown_path_404(admin: Admin) -> None:
    resp = admin.handle("GET", "/nope?x=1")
    assert resp.status == 404
    assert body(resp) == "invalid path. " + admin.help_text()
    # Matching is exact: no prefix or trailing-slash matches.
    assert admin.handle("GET", "/stats/").status == 404


@pytest.mark.parametrize(
    "path", ["/quitquitquit", "/healthcheck/fail", "/healthcheck/ok", "/reset_counters"]
)
def test_mutating_endpoints_need_post(admin: Admin, server: FakeServer, path: str) -> None:
    resp = admin.handle("GET", path)
    assert resp.status == 405
    assert body(resp) == "Method GET not allowed, POST required."
    assert server.shutdowns == 0 and not server.healthcheck_failed


def test_common_headers(admin: Admin) -> None:
    headers = dict(admin.handle("GET", "/ready").headers)
    assert headers["cache-control"] == "no-cache, max-age=0"
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (ServerState.LIVE, 200),
        (ServerState.PRE_INITIALIZING, 503),
        (ServerState.INITIALIZING, 503),
        (ServerState.DRAINING, 503),
    ],
)
def test_ready_per_state(server: FakeServer, state: ServerState, status: int) -> None:
    server.current_state = state
    resp = Admin(server).handle("GET", "/ready")
    assert (resp.status, body(resp)) == (status, f"{state.name}\n")


def test_healthcheck_fail_and_ok(admin: Admin, server: FakeServer) -> None:
    resp = admin.handle("POST", "/healthcheck/fail")
    assert (resp.status, body(resp)) == (200, "OK\n")
    assert server.healthcheck_failed
    # As Envoy: failing health checks reports DRAINING and /ready 503.
    assert (admin.handle("GET", "/ready").status, body(admin.handle("GET", "/ready"))) == (
        503,
        "DRAINING\n",
    )
    assert json.loads(admin.handle("GET", "/server_info").body)["state"] == "DRAINING"
    assert body(admin.handle("POST", "/healthcheck/ok")) == "OK\n"
    assert body(admin.handle("GET", "/ready")) == "LIVE\n"


def test_quitquitquit(admin: Admin, server: FakeServer) -> None:
    resp = admin.handle("POST", "/quitquitquit")
    assert (resp.status, body(resp)) == (200, "OK\n")
    assert server.shutdowns == 1


def test_stats_endpoints(admin: Admin, server: FakeServer) -> None:
    server.store.counter("cluster.httpd.upstream_rq_200").inc(3)
    server.store.histogram("cluster.httpd.upstream_rq_time").record(7)
    text_body = body(admin.handle("GET", "/stats?filter=upstream_rq_200"))
    assert text_body == "cluster.httpd.upstream_rq_200: 3\n"
    hist = body(admin.handle("GET", "/stats?filter=upstream_rq_time$"))
    assert (
        hist
        == "cluster.httpd.upstream_rq_time: "
        + " ".join(
            f"P{q}(7.05,7.05)"
            for q in ("0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100")
        )
        + "\n"
    )
    used = body(admin.handle("GET", "/stats?usedonly"))
    assert "cluster.httpd.upstream_rq_200: 3\n" in used
    assert "upstream_cx_total" not in used
    j = admin.handle("GET", "/stats?format=json&filter=upstream_rq_200")
    assert j.content_type == "application/json"
    assert json.loads(j.body) == {"stats": [{"name": "cluster.httpd.upstream_rq_200", "value": 3}]}
    prom = admin.handle("GET", "/stats/prometheus?filter=upstream_rq_200")
    assert body(prom) == (
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="httpd"} 3\n'
    )
    assert body(admin.handle("GET", "/stats?format=prometheus&filter=upstream_rq_200")) == body(
        prom
    )


def test_stats_bad_regex_and_format(admin: Admin) -> None:
    for path in ("/stats?filter=(", "/stats/prometheus?filter=(", "/stats?format=json&filter=[a"):
        resp = admin.handle("GET", path)
        assert resp.status == 400
        assert body(resp).startswith("Invalid regex: ")
    assert admin.handle("GET", "/stats?format=xml").status == 400


def test_reset_counters(admin: Admin, server: FakeServer) -> None:
    server.store.counter("x").inc(4)
    assert body(admin.handle("POST", "/reset_counters")) == "OK\n"
    assert server.store.counters["x"].value == 0


def test_server_info(admin: Admin) -> None:
    resp = admin.handle("GET", "/server_info")
    assert resp.content_type == "application/json"
    info = json.loads(resp.body)
    assert info["version"] == "podproxy/0.1.0"
    assert info["state"] == "LIVE"
    assert info["uptime_current_epoch"].endswith("s")
    assert info["command_line_options"]["concurrency"] == 1
    assert set(info) >= {"uptime_all_epochs", "hot_restart_version", "node"}
    assert info["node"] == {"id": "n-1", "cluster": "front", "user_agent_name": "podproxy"}


def test_listeners(admin: Admin) -> None:
    assert body(admin.handle("GET", "/listeners")) == (
        "listener_0::0.0.0.0:10000\nv6::[::1]:9000\n"
    )
    doc = json.loads(admin.handle("GET", "/listeners?format=json").body)
    assert doc["listener_statuses"][0] == {
        "name": "listener_0",
        "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
    }
    assert doc["listener_statuses"][1]["local_address"]["socket_address"]["address"] == "::1"


def test_config_dump_memory_runtime_home(admin: Admin) -> None:
    dump = json.loads(admin.handle("GET", "/config_dump").body)
    (cfg,) = dump["configs"]
    assert cfg["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    assert cfg["bootstrap"]["static_resources"]["clusters"][0]["name"] == "httpd"
    assert cfg["last_updated"] == "2023-11-14T22:13:20.000Z"
    mem = json.loads(admin.handle("GET", "/memory").body)
    assert int(mem["allocated"]) > 0 and int(mem["heap_size"]) > 0
    assert json.loads(admin.handle("GET", "/runtime").body) == {"entries": {}, "layers": []}
    home = admin.handle("GET", "/")
    assert home.content_type == "text/html; charset=UTF-8"
    assert "<a href='clusters'>clusters</a>" in body(home)
    assert "action='quitquitquit' method='post'" in body(home)


def test_add_handler(admin: Admin) -> None:
    seen: list[AdminRequest] = []

    def handler(req: AdminRequest) -> AdminResponse:
        seen.append(req)
        return text("done\n")

    admin.add_handler("/custom", "a custom thing", handler, mutates=True, params=(("x", "an x"),))
    assert admin.handle("GET", "/custom").status == 405
    resp = admin.handle("POST", "/custom?x=1&flag", b"payload")
    assert body(resp) == "done\n"
    assert seen[0].query == {"x": "1", "flag": ""} and seen[0].body == b"payload"
    assert "  /custom (POST): a custom thing\n      x: an x\n" in admin.help_text()
    with pytest.raises(ValueError):
        admin.add_handler("/custom", "again", handler)


def runtime_admin(layers: list[dict[str, Any]] | None) -> tuple[Admin, Runtime]:
    cfg = None if layers is None else LayeredRuntime.model_validate({"layers": layers})
    server = make_server()
    server.runtime = Runtime(cfg)
    return Admin(server), server.runtime


LAYERS: list[dict[str, Any]] = [
    {"name": "base", "static_layer": {"a": 5, "nest": {"b": "x"}}},
    {"name": "adm", "admin_layer": {}},
]


def test_runtime_prints_layers_and_entries_as_envoy() -> None:
    admin, _ = runtime_admin(LAYERS)
    resp = admin.handle("GET", "/runtime")
    assert (resp.status, resp.content_type) == (200, "application/json")
    assert json.loads(resp.body) == {
        "entries": {
            "a": {"final_value": "5", "layer_values": ["5", ""]},
            "nest.b": {"final_value": "x", "layer_values": ["x", ""]},
        },
        "layers": ["base", "adm"],
    }


def test_runtime_modify_writes_the_admin_layer_from_the_query() -> None:
    admin, rt = runtime_admin(LAYERS)
    resp = admin.handle("POST", "/runtime_modify?a=7&new=a+b%20c&new=ignored&bare")
    assert (resp.status, body(resp)) == (200, "OK\n")
    assert rt.snapshot.get("a") == "7"
    assert rt.snapshot.get("new") == "a+b c"  # percent-decoded only; the first value wins
    assert rt.snapshot.get("bare") is None
    doc = json.loads(admin.handle("GET", "/runtime").body)
    assert doc["entries"]["a"] == {"final_value": "7", "layer_values": ["5", "7"]}
    assert body(admin.handle("POST", "/runtime_modify?a=")) == "OK\n"
    assert rt.snapshot.get("a") == "5"  # removing the override shows the lower layer again


def test_runtime_modify_reads_a_form_body_only_without_query_params() -> None:
    admin, rt = runtime_admin(LAYERS)
    form = "application/x-www-form-urlencoded"
    assert admin.handle("POST", "/runtime_modify", b"f=1", form).status == 200
    assert rt.snapshot.get("f") == "1"
    # With a query, the body is not read; with another content-type neither.
    assert admin.handle("POST", "/runtime_modify?q=1", b"g=1", form).status == 200
    assert rt.snapshot.get("g") is None
    resp = admin.handle("POST", "/runtime_modify", b"h=1", "text/plain")
    assert resp.status == 400 and rt.snapshot.get("h") is None


def test_runtime_modify_usage_method_and_missing_admin_layer() -> None:
    admin, _ = runtime_admin(LAYERS)
    resp = admin.handle("POST", "/runtime_modify")
    assert (resp.status, body(resp)) == (
        400,
        "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
        "       or send the parameters as form values\n"
        "use an empty value to remove a previously added override",
    )
    resp = admin.handle("GET", "/runtime_modify?a=1")
    assert (resp.status, body(resp)) == (405, "Method GET not allowed, POST required.")
    for layers in (None, LAYERS[:1]):
        admin, _ = runtime_admin(layers)
        resp = admin.handle("POST", "/runtime_modify?a=1")
        assert (resp.status, body(resp)) == (503, "No admin layer specified")
    assert "  /runtime_modify (POST): Adds or modifies runtime values" in admin.help_text()


@pytest.mark.parametrize(
    ("data", "want"),
    [
        ("", {}),
        ("a=1&b=2", {"a": "1", "b": "2"}),
        ("a=1&", {"a": "1"}),
        ("a&&b=", {"a": "", "": "", "b": ""}),
        ("k%3D=v%26w", {"k=": "v&w"}),
        ("x=1=2", {"x": "1=2"}),
    ],
)
def test_params_parse_as_envoys_parse_parameters(data: str, want: dict[str, str]) -> None:
    assert parse_params(data) == want
