"""Stats core and the /stats renderers, compared with real Envoy 1.40 output."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podproxy.stats import (
    DEFAULT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Store,
    extract_tags,
    render_json,
    render_prometheus,
    render_text,
    reset_counters,
    sanitize_prometheus_name,
)


@dataclass(slots=True)
class _Stats:
    rq_total: Counter
    rq_active: Gauge
    rq_time: Histogram


def test_scope_make_names_stats() -> None:
    store = Store()
    st = store.scope("cluster.httpd.").make(_Stats)
    st.rq_total.inc()
    st.rq_active.inc(2)
    st.rq_time.record(3)
    assert store.counters["cluster.httpd.rq_total"].value == 1
    assert store.gauges["cluster.httpd.rq_active"].value == 2
    assert store.histograms["cluster.httpd.rq_time"].count == 1


def _envoy_sample() -> Histogram:
    # The data behind a real Envoy 1.40 line: one 0 ms, 21 x 1 ms, 3 x 2 ms and one 7 ms.
    h = Histogram("cluster.httpd.upstream_rq_time")
    for v in [0] + [1] * 21 + [2, 2, 2, 7]:
        h.record(v)
    return h


def test_quantiles_match_envoy() -> None:
    store = Store()
    store.histograms["cluster.httpd.upstream_rq_time"] = _envoy_sample()
    # Envoy 1.40 printed (cumulative side) exactly these values for that data.
    assert render_text(store) == (
        "cluster.httpd.upstream_rq_time: P0(0,0) "
        "P25(1.0272727272727273,1.0272727272727273) "
        "P50(1.0545454545454545,1.0545454545454545) "
        "P75(1.0863636363636364,1.0863636363636364) P90(2.05,2.05) P95(2.075,2.075) "
        "P99(7.05,7.05) P99.5(7.05,7.05) P99.9(7.05,7.05) P100(7.05,7.05)\n"
    )


def test_quantiles_single_bin_and_large_values() -> None:
    h = Histogram("x")
    h.record(27)
    assert h.quantiles() == [27.5] * 10
    h = Histogram("y")
    for v in (1234, 1239, 0.3, 0.11, 3_600_000):
        h.record(v)
    lefts = [b[0] for b in h.sorted_bins()]
    assert lefts == pytest.approx([0.11, 0.3, 1200, 3_600_000])
    assert h.sorted_bins()[2][2] == 2


def test_cumulative_buckets_match_envoy() -> None:
    counts = _envoy_sample().cumulative_buckets()
    assert counts[:4] == [1, 22, 25, 26]  # le=0.5, 1, 5, 10 as Envoy printed
    assert counts[-1] == 26
    assert len(counts) == len(DEFAULT_BUCKETS)


def test_text_sorted_used_only_and_filter() -> None:
    store = Store()
    store.counter("b.c").inc(2)
    store.gauge("a.g")
    store.gauge("c.g").set(0)
    store.counter("a.z")
    store.histogram("h.empty")
    assert render_text(store) == ("a.g: 0\na.z: 0\nb.c: 2\nc.g: 0\nh.empty: No recorded values\n")
    assert render_text(store, used_only=True) == "b.c: 2\nc.g: 0\n"
    assert render_text(store, filter=r"^a\.") == "a.g: 0\na.z: 0\n"
    with pytest.raises(re.error):
        render_text(store, filter="(")


def test_reset_counters_keeps_used() -> None:
    store = Store()
    store.counter("x").inc(5)
    store.counter("y")
    reset_counters(store)
    assert store.counters["x"].value == 0
    assert render_text(store, used_only=True) == "x: 0\n"


def test_json_shape() -> None:
    store = Store()
    store.counter("cluster.httpd.upstream_rq_total").inc(3)
    store.histograms["cluster.httpd.upstream_rq_time"] = _envoy_sample()
    store.histogram("overload.refresh_interval_delay")
    doc = json.loads(render_json(store))
    assert doc["stats"][0] == {"name": "cluster.httpd.upstream_rq_total", "value": 3}
    hist = doc["stats"][1]["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    first = hist["computed_quantiles"][0]
    assert first["name"] == "cluster.httpd.upstream_rq_time"
    assert first["values"][1] == {"cumulative": 1.0272727272727273, "interval": 1.0272727272727273}
    assert hist["computed_quantiles"][1]["values"][0] == {"cumulative": None, "interval": None}
    # Compact, integral quantiles without ".0", as Envoy prints them.
    assert '{"cumulative":0,"interval":0}' in render_json(store)
    assert render_json(store, filter="nothing") == '{"stats":[]}'


@pytest.mark.parametrize(
    ("name", "base", "tags"),
    [
        ("cluster.httpd.upstream_rq_total", "cluster.upstream_rq_total",
         [("envoy.cluster_name", "httpd")]),
        ("cluster.httpd.upstream_rq_200", "cluster.upstream_rq",
         [("envoy.response_code", "200"), ("envoy.cluster_name", "httpd")]),
        ("http.ingress_http.downstream_rq_2xx", "http.downstream_rq_xx",
         [("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress_http")]),
        ("listener.0.0.0.0_10000.downstream_cx_total", "listener.downstream_cx_total",
         [("envoy.listener_address", "0.0.0.0_10000")]),
        ("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", []),
        ("listener.127.0.0.1_19000.worker_0.downstream_cx_total",
         "listener.worker_downstream_cx_total",
         [("envoy.worker_id", "0"), ("envoy.listener_address", "127.0.0.1_19000")]),
        ("server.live", "server.live", []),
    ],
)  # fmt: skip
def test_extract_tags(name: str, base: str, tags: list[tuple[str, str]]) -> None:
    assert extract_tags(name) == (base, tags)


def test_sanitize() -> None:
    assert sanitize_prometheus_name("cluster.a-b:c") == "cluster_a_b_c"
    assert sanitize_prometheus_name("1x") == "_1x"


def _prom_store() -> Store:
    store = Store()
    store.counter("cluster.httpd.upstream_rq_200").inc(3)
    store.counter("cluster.httpd.upstream_rq_404").inc(1)
    store.counter("cluster.httpd.upstream_rq_2xx").inc(3)
    store.counter("cluster.httpd.upstream_rq_total").inc(4)
    store.counter("cluster_manager.cluster_added").inc(1)
    store.counter("http.ingress_http.downstream_rq_2xx").inc(3)
    store.counter("listener.0.0.0.0_10000.downstream_cx_total").inc(2)
    store.gauge("server.live").set(1)
    store.histograms["cluster.httpd.upstream_rq_time"] = _envoy_sample()
    store.histogram("server.initialization_time_ms").record(27)
    return store


def test_prometheus_matches_envoy_lines() -> None:
    out = render_prometheus(_prom_store())
    lines = out.splitlines()
    for expected in [
        # reference/envoy.md §5.3 and real Envoy 1.40 output
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="httpd"} 3',
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="httpd"} 3',
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="httpd"} 4',
        'envoy_http_downstream_rq_xx{envoy_response_code_class="2",'
        'envoy_http_conn_manager_prefix="ingress_http"} 3',
        'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 2',
        "envoy_server_live{} 1",
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="httpd",le="0.5"} 1',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="httpd",le="1"} 22',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="httpd",le="3600000"} 26',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="httpd",le="+Inf"} 26',
        'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="httpd"} 34',
        'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="httpd"} 26',
        'envoy_server_initialization_time_ms_bucket{le="50"} 1',
        "envoy_server_initialization_time_ms_count{} 1",
    ]:
        assert expected in lines
    types = [line for line in lines if line.startswith("# TYPE")]
    # Counters, then gauges, then histograms; each family once, sorted by the
    # tag-extracted stat name ("cluster." sorts before "cluster_manager.").
    assert types == [
        "# TYPE envoy_cluster_upstream_rq counter",
        "# TYPE envoy_cluster_upstream_rq_total counter",
        "# TYPE envoy_cluster_upstream_rq_xx counter",
        "# TYPE envoy_cluster_manager_cluster_added counter",
        "# TYPE envoy_http_downstream_rq_xx counter",
        "# TYPE envoy_listener_downstream_cx_total counter",
        "# TYPE envoy_server_live gauge",
        "# TYPE envoy_cluster_upstream_rq_time histogram",
        "# TYPE envoy_server_initialization_time_ms histogram",
    ]
    assert lines[1:3] == [
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="httpd"} 3',
        'envoy_cluster_upstream_rq{envoy_response_code="404",envoy_cluster_name="httpd"} 1',
    ]


def test_prometheus_parses() -> None:
    parsed = list(text_string_to_metric_families(render_prometheus(_prom_store())))
    # prometheus_client names counter families without `_total`, so Envoy's
    # envoy_cluster_upstream_rq and envoy_cluster_upstream_rq_total both come back as family
    # "envoy_cluster_upstream_rq" (a known Envoy naming collision); look at samples instead.
    samples = [(f.type, s) for f in parsed for s in f.samples]
    codes = {
        (s.labels["envoy_response_code"], s.value)
        for t, s in samples
        if t == "counter" and "envoy_response_code" in s.labels
    }
    assert codes == {("200", 3.0), ("404", 1.0)}
    hist = [f for f in parsed if f.name == "envoy_cluster_upstream_rq_time"]
    assert hist[0].type == "histogram"
    buckets = [s for s in hist[0].samples if s.name.endswith("_bucket")]
    assert len(buckets) == len(DEFAULT_BUCKETS) + 1
    assert buckets[-1].labels == {"envoy_cluster_name": "httpd", "le": "+Inf"}
    live = [s for t, s in samples if s.name == "envoy_server_live"]
    assert [(s.labels, s.value) for s in live] == [({}, 1.0)]


def test_prometheus_label_escaping_and_filter() -> None:
    store = Store()
    store.counter('cluster.we"ird.upstream_rq_total').inc()
    out = render_prometheus(store)
    assert 'envoy_cluster_name="we\\"ird"' in out
    list(text_string_to_metric_families(out))
    assert render_prometheus(store, filter="nomatch") == ""
