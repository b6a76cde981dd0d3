"""podproxy.workers without processes: the wire format, host-set messages and stats merging."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from podproxy.config.loader import load
from podproxy.config.schema import LayeredRuntime
from podproxy.runtime import Runtime, snapshot_digest, snapshot_from_wire
from podproxy.stats import Counter, Gauge, Histogram, Store, render_text, reset_counters
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.cluster_manager import ClusterManager, PushedDiscovery
from podproxy.upstream.host import NONE_HEALTHY, HealthFlag, Host
from podproxy.workers import (
    ChannelError,
    StatsMerger,
    Supervisor,
    WorkerSpec,
    apply_host_rows,
    decode,
    encode,
    host_rows,
    hosts_from_rows,
    main_owned,
    take_snapshot,
)

CLUSTER = """
static_resources:
  clusters:
  - name: {name}
    connect_timeout: 0.25s
    type: {type}
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {address}, port_value: 8080}}}}}}
"""


def worker_cluster(
    store: Store, type_: str = "STRICT_DNS", name: str = "httpd", address: str = "httpd"
) -> Cluster:
    """A cluster as a worker builds it: no discovery of its own."""
    cfg = load(config_yaml=CLUSTER.format(name=name, type=type_, address=address))
    cm = ClusterManager(store, pushed=True)
    return cm.add_cluster(cfg.bootstrap.static_resources.clusters[0], "c[0]")


def rows(*ips: str, weight: int = 1, flags: HealthFlag = NONE_HEALTHY) -> list[list[object]]:
    return [[ip, 8080, "httpd", weight, 0, flags.value] for ip in ips]


# --- wire format ---------------------------------------------------------------------------


def test_messages_round_trip_and_split_anywhere() -> None:
    a = {"t": "hosts", "clusters": {"httpd": rows("127.0.9.1")}}
    b = {"t": "snap", "seq": 7}
    wire = encode(a) + encode(b)
    assert decode(wire) == ([a, b], b"")
    for cut in range(len(wire)):
        first, rest = decode(wire[:cut])
        second, tail = decode(rest + wire[cut:])
        assert first + second == [a, b] and tail == b""


def test_a_message_is_length_prefixed_compact_json() -> None:
    wire = encode({"t": "drain"})
    assert wire == b"\x00\x00\x00\x0d" + b'{"t":"drain"}'


@pytest.mark.parametrize(
    "wire",
    [
        (5).to_bytes(4, "big") + b"nope!",
        (4).to_bytes(4, "big") + b"[1 ]",
        (2).to_bytes(4, "big") + b"{}",
        (2**31).to_bytes(4, "big"),
    ],
    ids=["not-json", "not-object", "no-type", "too-big"],
)
def test_bad_messages_are_channel_errors(wire: bytes) -> None:
    with pytest.raises(ChannelError):
        decode(wire)


def test_worker_spec_round_trips() -> None:
    spec = WorkerSpec.parse("5:1:4242")
    assert (spec.fd, spec.worker_id, spec.parent_pid) == (5, 1, 4242)
    assert str(spec) == "5:1:4242"
    with pytest.raises(ValueError):
        WorkerSpec.parse("5:1")


# --- host sets -----------------------------------------------------------------------------


def test_host_rows_carry_every_field() -> None:
    h = Host(
        "127.0.9.1",
        8080,
        hostname="pod-a",
        weight=3,
        priority=1,
        health_flags=HealthFlag.FAILED_EDS_HEALTH | HealthFlag.FAILED_ACTIVE_HC,
    )
    (row,) = host_rows([h])
    assert json.loads(json.dumps(row)) == row  # plain JSON values
    (back,) = hosts_from_rows([row])
    assert (back.key, back.hostname, back.weight, back.priority, back.health_flags) == (
        h.key,
        "pod-a",
        3,
        1,
        h.health_flags,
    )
    (v6,) = hosts_from_rows(host_rows([Host("fd00::1", 80)]))
    assert v6.key == "[fd00::1]:80"


def test_worker_cluster_has_pushed_discovery_and_no_hosts_until_told() -> None:
    c = worker_cluster(Store())
    assert isinstance(c.discovery, PushedDiscovery)
    c.discovery.start()
    assert c.hosts == () and not c.initialized


def test_applied_rows_keep_existing_hosts_and_publish_changes() -> None:
    c = worker_cluster(Store())
    events: list[tuple[list[str], list[str]]] = []
    c.priority_set.add_member_update_cb(
        lambda hs, added, removed: events.append(([h.key for h in added], [h.key for h in removed]))
    )
    apply_host_rows(c, rows("127.0.9.1", "127.0.9.2"))
    first = {h.key: h for h in c.hosts}
    apply_host_rows(c, rows("127.0.9.2", "127.0.9.3"))
    assert [h.key for h in c.hosts] == ["127.0.9.2:8080", "127.0.9.3:8080"]
    assert c.hosts[0] is first["127.0.9.2:8080"]  # same object: its pool and stats stay
    assert first["127.0.9.1:8080"].removed
    assert events == [
        (["127.0.9.1:8080", "127.0.9.2:8080"], []),
        (["127.0.9.3:8080"], ["127.0.9.1:8080"]),
    ]
    apply_host_rows(c, rows("127.0.9.2", "127.0.9.3"))
    assert len(events) == 2  # nothing changed, nothing published


def test_applied_rows_change_weight_and_health_of_kept_hosts() -> None:
    c = worker_cluster(Store())
    apply_host_rows(c, rows("127.0.9.1", "127.0.9.2"))
    kept = c.hosts[0]
    apply_host_rows(c, rows("127.0.9.1", weight=5, flags=HealthFlag.FAILED_EDS_HEALTH))
    assert c.hosts == (kept,)
    assert kept.weight == 5 and not kept.healthy
    assert c.priority_set.host_set.healthy_hosts == ()


def test_logical_dns_host_moves_instead_of_being_replaced() -> None:
    c = worker_cluster(Store(), type_="LOGICAL_DNS")
    apply_host_rows(c, rows("127.0.9.1"))
    (host,) = c.hosts
    apply_host_rows(c, rows("127.0.9.9"))
    assert c.hosts == (host,) and host.address == "127.0.9.9" and not host.removed


# --- stats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        ("server.live", True),
        ("cluster_manager.active_clusters", True),
        ("dns.cares.resolve_total", True),
        ("http.admin.downstream_rq_total", True),
        ("listener.admin.downstream_cx_total", True),
        ("cluster.httpd.membership_total", True),
        ("cluster.my.dotted.name.update_success", True),
        ("cluster.httpd.max_host_weight", True),
        ("runtime.load_success", True),
        ("runtime.num_keys", True),
        ("cluster.httpd.upstream_rq_total", False),
        ("http.ingress_http.downstream_rq_total", False),
        ("listener.127.0.0.1_10000.downstream_cx_total", False),
    ],
)
def test_main_owned_stats(name: str, owned: bool) -> None:
    assert main_owned(name) is owned


@dataclass(slots=True)
class _Stats:
    downstream_rq_total: Counter
    downstream_cx_active: Gauge
    downstream_rq_time: Histogram


def worker_snapshot(requests: int, active: int, times: list[float], rq_per_host: int) -> dict:
    store = Store()
    st = store.scope("http.ingress_http.").make(_Stats)
    st.downstream_rq_total.inc(requests)
    st.downstream_cx_active.inc(active)
    for t in times:
        st.downstream_rq_time.record(t)
    store.counter("listener.127.0.0.1_10000.downstream_cx_total").inc(requests)
    store.gauge("cluster.httpd.membership_total").set(2)  # the worker's own view: never sent
    store.counter("cluster.httpd.update_attempt").inc()
    c = worker_cluster(store)
    apply_host_rows(c, rows("127.0.9.1"))
    c.hosts[0].stats.rq_total = rq_per_host
    c.hosts[0].stats.cx_total = 1
    c.hosts[0].stats.rq_active = 1
    snap = take_snapshot(store, [c], connections=active)
    return json.loads(json.dumps(snap))  # as it crosses the channel


def main_side() -> tuple[Store, Cluster]:
    store = Store()
    store.gauge("cluster.httpd.membership_total").set(1)
    c = worker_cluster(store)
    apply_host_rows(c, rows("127.0.9.1"))
    return store, c


def test_snapshot_is_plain_and_leaves_out_main_owned_stats() -> None:
    snap = worker_snapshot(3, 2, [1.0], 3)
    assert snap["c"]["http.ingress_http.downstream_rq_total"] == 3
    assert "cluster.httpd.update_attempt" not in snap["c"]
    assert "cluster.httpd.membership_total" not in snap["g"]
    assert snap["cx"] == 2


def test_merge_sums_counters_gauges_histograms_and_host_stats() -> None:
    store, cluster = main_side()
    m = StatsMerger()
    m.update(0, worker_snapshot(3, 2, [1.0, 2.0], rq_per_host=3))
    m.update(1, worker_snapshot(5, 1, [2.0, 300.0], rq_per_host=5))
    m.apply(store, [cluster])
    assert store.counters["http.ingress_http.downstream_rq_total"].value == 8
    assert store.gauges["http.ingress_http.downstream_cx_active"].value == 3
    h = store.histograms["http.ingress_http.downstream_rq_time"]
    assert (h.count, h.sum) == (4, 305.0)
    assert sum(h.bins.values()) == 4 and h.quantiles()[-1] == pytest.approx(300, rel=0.02)
    # The main's own stats are its own.
    assert store.gauges["cluster.httpd.membership_total"].value == 1
    assert store.counters["cluster.httpd.update_attempt"].value == 0
    st = cluster.hosts[0].stats
    assert (st.rq_total, st.cx_total, st.rq_active) == (8, 2, 2)
    assert m.connections == 3
    # Envoy's per-worker listener stats.
    assert store.counters["listener.127.0.0.1_10000.worker_0.downstream_cx_total"].value == 3
    assert store.counters["listener.127.0.0.1_10000.worker_1.downstream_cx_total"].value == 5
    assert "http.ingress_http.downstream_rq_total: 8\n" in render_text(store)


def test_merge_takes_each_workers_latest_snapshot() -> None:
    store, cluster = main_side()
    m = StatsMerger()
    m.update(0, worker_snapshot(3, 2, [], 3))
    m.apply(store, [cluster])
    m.update(0, worker_snapshot(4, 0, [], 4))
    m.apply(store, [cluster])
    assert store.counters["http.ingress_http.downstream_rq_total"].value == 4
    g = store.gauges["http.ingress_http.downstream_cx_active"]
    assert g.value == 0  # back to idle, even though the worker no longer sends it


def test_a_dead_workers_counters_stay_and_its_gauges_go() -> None:
    store, cluster = main_side()
    m = StatsMerger()
    m.update(0, worker_snapshot(3, 2, [1.0], 3))
    m.update(1, worker_snapshot(5, 1, [1.0], 5))
    m.retire(0)
    m.apply(store, [cluster])
    assert store.counters["http.ingress_http.downstream_rq_total"].value == 8
    assert store.gauges["http.ingress_http.downstream_cx_active"].value == 1
    assert store.histograms["http.ingress_http.downstream_rq_time"].count == 2
    st = cluster.hosts[0].stats
    assert (st.rq_total, st.rq_active) == (8, 1)
    # Its replacement starts from zero; the totals keep growing.
    m.update(0, worker_snapshot(2, 0, [], 2))
    m.apply(store, [cluster])
    assert store.counters["http.ingress_http.downstream_rq_total"].value == 10
    assert store.counters["listener.127.0.0.1_10000.worker_0.downstream_cx_total"].value == 5


def test_reset_counters_in_the_main_sticks_across_merges() -> None:
    store, cluster = main_side()
    m = StatsMerger()
    m.update(0, worker_snapshot(3, 0, [], 3))
    m.apply(store, [cluster])
    reset_counters(store)
    m.apply(store, [cluster])
    c = store.counters["http.ingress_http.downstream_rq_total"]
    assert c.value == 0 and c.is_used
    m.update(0, worker_snapshot(7, 0, [], 7))
    m.apply(store, [cluster])
    assert c.value == 4


def test_supervisor_pushes_host_changes_only_when_serving_and_changed() -> None:
    store = Store()
    cluster = worker_cluster(store)
    sup = Supervisor(2, [], {"httpd": cluster}, store)
    sent: list[dict] = []

    class FakeChannel:
        def send(self, msg: dict) -> None:
            sent.append(msg)

    class FakeWorker:
        channel = FakeChannel()

    sup.workers = {0: FakeWorker()}  # type: ignore[dict-item]
    apply_host_rows(cluster, rows("127.0.9.1"))
    assert sent == []  # not serving yet: serve() sends everything
    sup.serve([10000])
    assert [m["t"] for m in sent] == ["hosts", "start"]
    assert sent[1]["ports"] == [10000]
    sent.clear()
    apply_host_rows(cluster, rows("127.0.9.1", "127.0.9.2"))
    assert sent == [{"t": "hosts", "clusters": {"httpd": rows("127.0.9.1", "127.0.9.2")}}]
    sent.clear()
    sup.push_all()
    assert sent == []  # unchanged since the last push
    cluster.hosts[0].set_address("127.0.9.9")  # a LOGICAL_DNS move publishes nothing...
    sup.push_all()  # ...so the main's tick catches it
    assert sent[0]["clusters"]["httpd"][0][0] == "127.0.9.9"


def test_restart_delay_is_bounded() -> None:
    sup = Supervisor(1, [], {}, Store())
    delays = [sup._restart_delay(0) for _ in range(8)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    assert delays[3:] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_supervisor_pushes_runtime_snapshots_before_start_and_on_every_load() -> None:
    rt = Runtime(
        LayeredRuntime.model_validate(
            {"layers": [{"name": "s", "static_layer": {"k": 1}}, {"name": "a", "admin_layer": {}}]}
        )
    )
    sup = Supervisor(1, [], {}, Store(), runtime=rt)
    sent: list[dict] = []

    class FakeChannel:
        def send(self, msg: dict) -> None:
            sent.append(msg)

    class FakeWorker:
        channel = FakeChannel()

    sup.workers = {0: FakeWorker()}  # type: ignore[dict-item]
    rt.merge_values({"k": "2"})
    assert sent == []  # not serving yet: serve() sends the current snapshot
    sup.serve([10000])
    assert [m["t"] for m in sent] == ["hosts", "runtime", "start"]
    assert snapshot_from_wire(sent[1]["layers"]).get("k") == "2"
    sent.clear()
    rt.merge_values({"k": "3", "n": "x"})
    (msg,) = sent
    assert msg["t"] == "runtime" and msg["version"] == sup.runtime_version
    pushed = snapshot_from_wire(msg["layers"])
    assert pushed.values == rt.snapshot.values
    assert snapshot_digest(pushed) == snapshot_digest(rt.snapshot)
