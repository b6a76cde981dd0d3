"""The health check filter without sockets: its config (v3, v2 names and `endpoint`, errors),
which requests it takes for health checks, its local answers (server state, cache, clusters'
health) and the headers it adds, driven through fake filter callbacks and a manual clock."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.config.schema import HealthCheck
from podproxy.errors import ConfigErrors
from podproxy.filters.http.common import FilterContext, ServerHealth
from podproxy.filters.http.health_check import HealthCheckConfig, HealthCheckFilter
from podproxy.http.filter import CONTINUE, STOP_ITERATION, STOP_ITERATION_NO_BUFFER
from podproxy.http.stream import Exchange, RequestHead, ResponseHead
from podproxy.stats import Store
from podproxy.upstream.host import HealthFlag, Host, PrioritySet

HC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
ROUTER = {"name": "envoy.filters.http.router"}
HEALTHZ = [{"name": ":path", "string_match": {"exact": "/healthz"}}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    """What the filter reads of a cluster: its priority set."""

    def __init__(self, *flags: HealthFlag) -> None:
        self.priority_set = PrioritySet()
        hosts = [Host("127.0.1.1", 8000 + i, health_flags=f) for i, f in enumerate(flags)]
        self.priority_set.update_hosts(hosts)


class Callbacks:
    """FilterCallbacks enough for this filter; also the stream's filter manager (where
    `Exchange.health_check` is kept)."""

    def __init__(self) -> None:
        self.ex = Exchange(conn=None, head=RequestHead(b"GET", b"/", "1.1", [], True), start=0.0)  # type: ignore[arg-type]
        self.ex.filters = self
        self.replies: list[tuple[int, bytes, Any, str, str]] = []

    @property
    def exchange(self) -> Exchange:
        return self.ex

    def send_local_reply(
        self, status: int, body: bytes, *, headers: Any = None, details: str = "", flags: str = "-"
    ) -> None:
        self.replies.append((status, body, headers, details, flags))


class Setup:
    def __init__(self, clusters: dict[str, Any] | None = None, **cfg: Any) -> None:
        self.store = Store()
        self.health = ServerHealth()
        self.clock = Clock()
        ctx = FilterContext(
            stats=self.store.scope("http.ingress_http."),
            clusters=clusters or {},
            service_cluster="front",
            server_health=self.health,
        )
        model = HealthCheck.model_validate({"headers": HEALTHZ, **cfg})
        self.config = HealthCheckConfig(model, ctx, clock=self.clock)

    def stream(self) -> tuple[HealthCheckFilter, Callbacks]:
        cb = Callbacks()
        return HealthCheckFilter(cb, self.config), cb  # type: ignore[arg-type]

    def counter(self, name: str) -> int:
        c = self.store.counters.get(f"http.ingress_http.health_check.{name}")
        return 0 if c is None else c.value


def head(path: bytes = b"/healthz", *headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", path, "1.1", [(b"host", b"app"), *headers], True)


def response(status: int = 200, *headers: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(status, list(headers), True, 0, False)


# --- config ---------------------------------------------------------------------------------


def bootstrap(hc: dict[str, Any], name: str = "envoy.filters.http.health_check") -> str:
    typed = {"@type": HC_TYPE, **hc} if "@type" not in hc else hc
    flt: dict[str, Any] = {"name": name, "typed_config": typed}
    if "config" in hc:
        flt = {"name": name, "config": hc["config"]}
    cfg = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3."
                                        "HttpConnectionManager",
                                        "stat_prefix": "ingress_http",
                                        "route_config": {"virtual_hosts": []},
                                        "http_filters": [flt, ROUTER],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }
    return yaml.safe_dump(cfg)


def hc_of(text: str) -> HealthCheck:
    loaded = load(config_yaml=text)
    hcm = loaded.bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    tc = hcm.http_filters[0].typed_config
    assert isinstance(tc, HealthCheck)
    return tc


def test_v3_config_with_path_matcher_and_percentages() -> None:
    hc = hc_of(
        bootstrap(
            {
                "pass_through_mode": False,
                "headers": HEALTHZ,
                "cluster_min_healthy_percentages": {"app": {"value": 50.5}},
            }
        )
    )
    assert hc.pass_through_mode is False and hc.cache_time is None
    assert hc.headers[0].name == ":path"
    assert hc.cluster_min_healthy_percentages == {"app": 50.5}


def test_v2_name_and_endpoint_become_a_path_matcher() -> None:
    """Envoy 1.7: `endpoint` is an exact :path matcher, and replaces any :path in headers."""
    v2 = {
        "config": {
            "pass_through_mode": True,
            "cache_time": "2s",
            "endpoint": "/healthz",
            "headers": [{"name": ":path", "exact_match": "/other"}, {"name": "x-probe"}],
        }
    }
    hc = hc_of(bootstrap(v2, name="envoy.health_check"))
    got = [(h.name, h.exact_match) for h in hc.headers]
    assert got == [(":path", "/healthz"), ("x-probe", None)]
    assert hc.pass_through_mode is True and hc.cache_time == 2.0


@pytest.mark.parametrize(
    "hc, where, what",
    [
        ({"headers": HEALTHZ}, "pass_through_mode", "required"),
        ({"pass_through_mode": False, "cache_time": "1s"}, "typed_config", "cache_time"),
        (
            {"pass_through_mode": False, "cluster_min_healthy_percentages": {"a": {"value": 101}}},
            "cluster_min_healthy_percentages",
            "percent",
        ),
        (
            {"pass_through_mode": False, "headers": [{"name": ":scheme", "exact_match": "http"}]},
            "headers[0].name",
            ":scheme",
        ),
        ({"pass_through_mode": False, "endpont": "/x"}, "endpont", ""),
    ],
    ids=["no-pass-through-mode", "cache-without-pass-through", "percent", "pseudo", "typo"],
)
def test_config_errors_name_the_field(hc: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(ConfigErrors) as err:
        load(config_yaml=bootstrap(hc))
    text = str(err.value)
    assert "http_filters[0].typed_config" in text and where in text and what in text


# --- which requests are health checks -------------------------------------------------------


def test_other_requests_pass_and_are_not_health_checks() -> None:
    s = Setup(pass_through_mode=False)
    f, cb = s.stream()
    assert f.decode_headers(head(b"/healthz/x"), True) == CONTINUE
    assert not cb.replies and not cb.ex.health_check
    resp = response(200)
    f.encode_headers(resp, True)
    assert resp.headers == []
    assert s.counter("request_total") == 0


def test_every_matcher_must_match_and_no_matcher_means_every_request() -> None:
    s = Setup(
        pass_through_mode=False,
        headers=[*HEALTHZ, {"name": ":method", "exact_match": "GET"}, {"name": "x-probe"}],
    )
    f, cb = s.stream()
    assert f.decode_headers(head(b"/healthz"), True) == CONTINUE
    f, cb = s.stream()
    assert f.decode_headers(head(b"/healthz", (b"x-probe", b"1")), True) == STOP_ITERATION
    assert cb.ex.health_check
    every = Setup(pass_through_mode=False, headers=[])
    f, cb = every.stream()
    assert f.decode_headers(head(b"/anything"), True) == STOP_ITERATION
    assert cb.replies[0][0] == 200


def test_an_exchange_without_filters_is_no_health_check() -> None:
    ex = Exchange(conn=None, head=head(), start=0.0)  # type: ignore[arg-type]
    assert ex.health_check is False


# --- answered here ----------------------------------------------------------------------------


def test_answered_200_with_the_local_cluster() -> None:
    s = Setup(pass_through_mode=False)
    f, cb = s.stream()
    assert f.decode_headers(head(), True) == STOP_ITERATION
    assert cb.replies == [(200, b"", None, "health_check_ok", "-")]
    resp = response(200)
    f.encode_headers(resp, True)
    assert resp.headers == [(b"x-envoy-upstream-healthchecked-cluster", b"front")]
    assert (s.counter("request_total"), s.counter("ok"), s.counter("failed")) == (1, 1, 0)


def test_a_body_is_dropped_and_the_answer_comes_at_its_end() -> None:
    s = Setup(pass_through_mode=False)
    f, cb = s.stream()
    assert f.decode_headers(head(), False) == STOP_ITERATION
    assert not cb.replies
    assert f.decode_data(b"abc", False) == STOP_ITERATION_NO_BUFFER
    assert f.decode_data(b"", True) == STOP_ITERATION_NO_BUFFER
    assert [r[0] for r in cb.replies] == [200]


def test_failed_server_answers_503_and_marks_every_response() -> None:
    s = Setup(pass_through_mode=True)
    s.health.failed = True
    f, cb = s.stream()
    assert f.decode_headers(head(), True) == STOP_ITERATION
    assert cb.replies == [(503, b"", None, "health_check_failed", "LH")]
    resp = response(503, (b"x-envoy-immediate-health-check-fail", b"x"))
    f.encode_headers(resp, True)
    assert sorted(resp.headers) == [
        (b"x-envoy-immediate-health-check-fail", b"true"),
        (b"x-envoy-upstream-healthchecked-cluster", b"front"),
    ]
    other, _ = s.stream()
    assert other.decode_headers(head(b"/"), True) == CONTINUE
    resp = response(200)
    other.encode_headers(resp, False)
    assert resp.headers == [(b"x-envoy-immediate-health-check-fail", b"true")]
    assert (s.counter("request_total"), s.counter("failed")) == (1, 1)
    s.health.failed = False
    f, _ = s.stream()
    assert f.decode_headers(head(), True) == CONTINUE  # passes through again


# --- pass through and the cache ---------------------------------------------------------------


def test_pass_through_caches_the_upstream_answer_for_its_period() -> None:
    s = Setup(pass_through_mode=True, cache_time="2s")
    f, cb = s.stream()
    assert f.decode_headers(head(), True) == CONTINUE
    assert cb.ex.health_check
    resp = response(503, (b"x-envoy-degraded", b""))
    f.encode_headers(resp, False)
    assert (b"x-envoy-upstream-healthchecked-cluster", b"front") in resp.headers
    s.clock.now += 1.0
    f, cb = s.stream()
    assert f.decode_headers(head(), True) == STOP_ITERATION
    assert cb.replies == [(503, b"", [(b"x-envoy-degraded", b"")], "health_check_cached", "LH")]
    counts = [s.counter(n) for n in ("request_total", "cached_response", "degraded", "failed")]
    assert counts == [1, 1, 1, 1]
    # The period (from start-up) ends: the next health check goes upstream again.
    s.clock.now += 1.0
    f, cb = s.stream()
    assert f.decode_headers(head(), True) == CONTINUE


def test_cache_periods_run_from_start_up_not_from_the_answer() -> None:
    s = Setup(pass_through_mode=True, cache_time="1s")
    s.clock.now += 0.9  # late in the first period
    f, _ = s.stream()
    f.decode_headers(head(), True)
    f.encode_headers(response(200), True)
    s.clock.now += 0.2  # a new period: the answer is forgotten
    f, _ = s.stream()
    assert f.decode_headers(head(), True) == CONTINUE


def test_pass_through_without_cache_always_goes_upstream() -> None:
    s = Setup(pass_through_mode=True, cluster_min_healthy_percentages={"none": {"value": 1}})
    for _ in range(2):
        f, _ = s.stream()
        assert f.decode_headers(head(), True) == CONTINUE
        f.encode_headers(response(200), True)
    assert s.counter("request_total") == 0


# --- clusters' health -------------------------------------------------------------------------

OK = HealthFlag(0)
BAD = HealthFlag.FAILED_EDS_HEALTH
DEGRADED = HealthFlag.DEGRADED_EDS_HEALTH
EMPTY = "health_check_failed_cluster_empty"


@pytest.mark.parametrize(
    "percentages, status, details, stat",
    [
        ({"half": 50}, 200, "health_check_ok_cluster_healthy", "ok"),
        ({"half": 50.9}, 200, "health_check_ok_cluster_healthy", "ok"),
        ({"half": 51}, 503, "health_check_failed_cluster_unhealthy", "failed_cluster_unhealthy"),
        ({"degraded": 50}, 200, "health_check_ok_cluster_healthy", "ok"),
        ({"empty": 0}, 200, "health_check_ok_cluster_healthy", "ok"),
        ({"empty": 1}, 503, "health_check_failed_cluster_empty", "failed_cluster_empty"),
        ({"nope": 0}, 503, "health_check_failed_no_cluster_found", "failed_cluster_not_found"),
        # Checked in name order: `empty` before `half`.
        ({"half": 100, "empty": 10}, 503, EMPTY, "failed_cluster_empty"),
    ],
)
def test_cluster_min_healthy_percentages(
    percentages: dict[str, float], status: int, details: str, stat: str
) -> None:
    clusters = {
        "half": FakeCluster(OK, BAD),
        "degraded": FakeCluster(DEGRADED, BAD),
        "empty": FakeCluster(),
    }
    cfg = {k: {"value": v} for k, v in percentages.items()}
    s = Setup(clusters, pass_through_mode=False, cluster_min_healthy_percentages=cfg)
    f, cb = s.stream()
    f.decode_headers(head(), True)
    assert cb.replies == [(status, b"", None, details, "-" if status == 200 else "LH")]
    assert s.counter(stat) == 1
    assert s.counter("failed") == (status != 200)
