"""The HTTP filters (issue 10 §2-3) side by side with real Envoy: the fault and buffer
filters, per-route filter configs and `disabled` filters enabled per route.

Same harness as test_envoy_hcm_fields.py: one config, Envoy and podproxy each in front of a
`ScriptedUpstream`, the same bytes sent to both; compared are the statuses, bodies and header
names the client got, and what reached the upstream.
"""

from __future__ import annotations

from typing import Any

import pytest

from integration.scripted import ScriptedRequest
from integration.test_envoy_hcm_fields import StartPair, echo, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.envoy

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def filters(*chain: dict[str, Any]) -> dict[str, Any]:
    return {"http_filters": [*chain, ROUTER]}


def fault(**cfg: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT, **cfg}}


def request(path: str = "/f", *headers: tuple[str, str], body: bytes | None = None) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    method = "GET" if body is None else "POST"
    framing = "" if body is None else f"content-length: {len(body)}\r\n"
    head = f"{method} {path} HTTP/1.1\r\nhost: app\r\n{lines}{framing}connection: close\r\n\r\n"
    return head.encode() + (body or b"")


def chunked(path: str, *chunks: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n"
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


async def echo_body(req: ScriptedRequest) -> None:
    body = req.body or b"-"
    req.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))


ALWAYS = {"numerator": 100, "denominator": "HUNDRED"}
NEVER = {"numerator": 0}


# --- fault ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, headers, aborted",
    [
        ({"abort": {"http_status": 503, "percentage": ALWAYS}}, [], True),
        ({"abort": {"http_status": 418, "percentage": NEVER}}, [], False),
        ({"abort": {"header_abort": {}, "percentage": ALWAYS}}, [], False),
        (
            {"abort": {"header_abort": {}, "percentage": ALWAYS}},
            [("x-envoy-fault-abort-request", "429")],
            True,
        ),
        (
            {"abort": {"header_abort": {}, "percentage": ALWAYS}},
            [("x-envoy-fault-abort-request", "600")],
            False,
        ),
        (
            {"abort": {"header_abort": {}, "percentage": ALWAYS}},
            [
                ("x-envoy-fault-abort-request", "429"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
            False,
        ),
        ({"abort": {"http_status": 503, "percentage": ALWAYS}, "upstream_cluster": "app"}, [], 1),
        ({"abort": {"http_status": 503, "percentage": ALWAYS}, "upstream_cluster": "x"}, [], 0),
        (
            {
                "abort": {"http_status": 500, "percentage": ALWAYS},
                "headers": [{"name": "x-chaos", "exact_match": "on"}],
            },
            [("x-chaos", "on")],
            True,
        ),
        (
            {
                "abort": {"http_status": 500, "percentage": ALWAYS},
                "headers": [{"name": "x-chaos", "exact_match": "on"}],
            },
            [],
            False,
        ),
        (
            {"abort": {"http_status": 502, "percentage": ALWAYS}, "downstream_nodes": ["n1"]},
            [("x-envoy-downstream-service-node", "n1")],
            True,
        ),
    ],
    ids=[
        "always",
        "never",
        "header-abort-without-header",
        "header-abort",
        "header-abort-out-of-range",
        "header-abort-percentage-zero",
        "upstream-cluster-matches",
        "upstream-cluster-other",
        "headers-match",
        "headers-do-not-match",
        "downstream-node",
    ],
)
async def test_fault_abort(
    pair: StartPair,  # noqa: F811
    cfg: dict[str, Any],
    headers: list[tuple[str, str]],
    aborted: bool | int,
) -> None:
    p = await pair(echo, hcm=filters(fault(**cfg)))
    envoy, pod = await p.both([request("/f", *headers)])
    assert pod.summary() == envoy.summary()
    assert (pod.responses[0].body == b"fault filter abort") is bool(aborted)
    assert len(pod.upstream) == len(envoy.upstream) == (0 if aborted else 1)
    assert await p.envoy_counter("http.ingress_http.fault.aborts_injected") == int(aborted)
    assert p.pod.counter("http.ingress_http.fault.aborts_injected") == int(aborted)


async def test_fault_delay_then_abort_and_the_body_waits(pair: StartPair) -> None:  # noqa: F811
    delayed = fault(delay={"fixed_delay": "0.3s", "percentage": ALWAYS})
    p = await pair(echo_body, hcm=filters(delayed))
    envoy, pod = await p.both([request("/f", body=b"x" * 5000)], wait=2.0)
    assert pod.summary() == envoy.summary()
    assert pod.upstream[0].body == envoy.upstream[0].body == b"x" * 5000
    for name in ("delays_injected", "aborts_injected"):
        stat = f"http.ingress_http.fault.{name}"
        assert p.pod.counter(stat) == await p.envoy_counter(stat)
    both = fault(
        delay={"fixed_delay": "0.2s", "percentage": ALWAYS},
        abort={"http_status": 504, "percentage": ALWAYS},
    )
    p = await pair(echo, hcm=filters(both))
    for sent in (request("/f"), request("/f", body=b"y" * 3000)):
        # With a body too: it waits behind the delay, so the abort reaches no upstream.
        envoy, pod = await p.both([sent], wait=2.0)
        assert pod.summary() == envoy.summary()
        assert pod.responses[0].status == 504
        assert not pod.upstream and not envoy.upstream


async def test_fault_header_delay(pair: StartPair) -> None:  # noqa: F811
    p = await pair(echo, hcm=filters(fault(delay={"header_delay": {}, "percentage": ALWAYS})))
    for headers in ([], [("x-envoy-fault-delay-request", "200")]):
        envoy, pod = await p.both([request("/f", *headers)], wait=2.0)
        assert pod.summary() == envoy.summary()
    stat = "http.ingress_http.fault.delays_injected"
    assert p.pod.counter(stat) == await p.envoy_counter(stat) == 1


def with_routes(hcm: dict[str, Any], routes: list[dict[str, Any]]) -> dict[str, Any]:
    """`hcm` plus a route table for `app` with `routes`."""
    vhost = {"name": "app", "domains": ["*"], "routes": routes}
    return {**hcm, "route_config": {"name": "local", "virtual_hosts": [vhost]}}


def to_app(prefix: str, **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "app"}, **extra}


async def test_fault_per_route_config_replaces_the_filters(pair: StartPair) -> None:  # noqa: F811
    calm = {"envoy.filters.http.fault": {"@type": FAULT}}
    angry = {
        "envoy.filters.http.fault": {
            "@type": FAULT,
            "abort": {"http_status": 418, "percentage": ALWAYS},
        }
    }
    hcm = with_routes(
        filters(fault(abort={"http_status": 503, "percentage": ALWAYS})),
        [
            to_app("/calm", typed_per_filter_config=calm),
            to_app("/angry", typed_per_filter_config=angry),
            to_app("/"),
        ],
    )
    p = await pair(echo, hcm=hcm)
    for path in ("/calm", "/angry", "/other"):
        envoy, pod = await p.both([request(path)])
        assert pod.summary() == envoy.summary(), path


async def test_disabled_filter_runs_only_where_a_route_enables_it(
    pair: StartPair,  # noqa: F811
) -> None:
    off = {**fault(abort={"http_status": 503, "percentage": ALWAYS}), "disabled": True}
    enable = {
        "envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "config": {"@type": FAULT, "abort": {"http_status": 429, "percentage": ALWAYS}},
        }
    }
    hcm = with_routes(filters(off), [to_app("/on", typed_per_filter_config=enable), to_app("/")])
    p = await pair(echo, hcm=hcm)
    for path in ("/on", "/off"):
        envoy, pod = await p.both([request(path)])
        assert pod.summary() == envoy.summary(), path


async def test_fault_max_active_faults(pair: StartPair) -> None:  # noqa: F811
    cfg = fault(delay={"fixed_delay": "0.5s", "percentage": ALWAYS}, max_active_faults=1)
    p = await pair(echo, hcm=filters(cfg))
    for which in ("envoy", "podproxy"):
        # Two at once: the first is delayed, the second overflows and goes straight on.
        import asyncio

        first = asyncio.ensure_future(p.exchange(which, [request("/a")], wait=2.0))
        await asyncio.sleep(0.1)
        second = await p.exchange(which, [request("/b")], wait=0.3)
        assert second.responses[0].status == 200
        await first
    stat = "http.ingress_http.fault.faults_overflow"
    assert p.pod.counter(stat) == await p.envoy_counter(stat) == 1


# --- buffer -----------------------------------------------------------------------------------


def buffer(limit: int) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {"@type": BUFFER, "max_request_bytes": limit},
    }


async def test_buffer_sends_the_whole_body_with_its_length(pair: StartPair) -> None:  # noqa: F811
    p = await pair(echo_body, hcm=filters(buffer(1000)))
    whole = chunked("/b", b"a" * 100, b"b" * 200)
    cut = whole.index(b"c8\r\n")  # the second chunk comes in a later read
    envoy, pod = await p.both([whole[:cut], 0.05, whole[cut:]], wait=1.0)
    assert pod.summary() == envoy.summary()
    names = {k for k, _ in pod.upstream[0].headers}
    assert names == {k for k, _ in envoy.upstream[0].headers}
    assert pod.upstream[0].header(b"content-length") == b"300"
    assert pod.upstream[0].body == envoy.upstream[0].body == b"a" * 100 + b"b" * 200


@pytest.mark.parametrize("how", ["length", "chunked"])
async def test_buffer_over_its_limit_is_413(pair: StartPair, how: str) -> None:  # noqa: F811
    p = await pair(echo_body, hcm=filters(buffer(100)))
    sent = request("/b", body=b"z" * 500) if how == "length" else chunked("/b", b"z" * 500)
    envoy, pod = await p.both([sent], wait=1.0)
    assert pod.summary() == envoy.summary()
    assert pod.responses[0].status == 413
    assert not pod.upstream and not envoy.upstream


async def test_buffer_off_per_route(pair: StartPair) -> None:  # noqa: F811
    off = {"envoy.filters.http.buffer": {"@type": BUFFER_PER_ROUTE, "disabled": True}}
    big = {
        "envoy.filters.http.buffer": {
            "@type": BUFFER_PER_ROUTE,
            "buffer": {"max_request_bytes": 10000},
        }
    }
    hcm = with_routes(
        filters(buffer(100)),
        [to_app("/off", typed_per_filter_config=off), to_app("/big", typed_per_filter_config=big)],
    )
    p = await pair(echo_body, hcm=hcm)
    for path in ("/off", "/big"):
        envoy, pod = await p.both([chunked(path, b"q" * 500)])
        assert pod.summary() == envoy.summary(), path
        assert pod.upstream[0].body == b"q" * 500


@pytest.mark.parametrize("percent", [0, 100])
async def test_fault_reads_the_runtime(pair: StartPair, percent: int) -> None:  # noqa: F811
    """The runtime's `fault.http.abort.abort_percent` overrides the configured percentage."""
    layers = {
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {"fault.http.abort.abort_percent": percent}}
            ]
        }
    }
    cfg = fault(abort={"http_status": 503, "percentage": {"numerator": 50}})
    p = await pair(echo, hcm=filters(cfg), bootstrap=layers)
    for _ in range(3):
        envoy, pod = await p.both([request("/f")])
        assert pod.summary() == envoy.summary()
        assert pod.responses[0].status == (503 if percent else 200)


# --- the router ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-stats", "no-dynamic-stats"])
async def test_router_dynamic_stats(pair: StartPair, dynamic: bool) -> None:  # noqa: F811
    """Router dynamic_stats false: no per-code, per-class, completed or time stats on the
    cluster (Envoy does not even make them); the other upstream_rq stats go on."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {**ROUTER["typed_config"], "dynamic_stats": dynamic},
    }
    p = await pair(echo, hcm={"http_filters": [router]})
    envoy, pod = await p.both([request("/f")])
    assert pod.summary() == envoy.summary()
    for name in (
        "upstream_rq_completed",
        "upstream_rq_200",
        "upstream_rq_2xx",
        "upstream_rq_total",
    ):
        stat = f"cluster.app.{name}"
        assert p.pod.counter(stat) == await p.envoy_counter(stat), stat
    assert await p.envoy_counter("cluster.app.upstream_rq_2xx") == int(dynamic)


async def test_weighted_cluster_per_filter_config_is_the_most_specific(
    pair: StartPair,  # noqa: F811
) -> None:
    """A weighted cluster's typed_per_filter_config wins over its route's (the filters see
    the weighted entry picked for the request)."""
    angry = {"@type": FAULT, "abort": {"http_status": 418, "percentage": ALWAYS}}
    calm = {"@type": FAULT}

    def weighted(prefix: str, route_cfg: dict[str, Any], entry_cfg: dict[str, Any]) -> Any:
        entry: dict[str, Any] = {"name": "app", "weight": 1}
        if entry_cfg:
            entry["typed_per_filter_config"] = {"envoy.filters.http.fault": entry_cfg}
        return {
            "match": {"prefix": prefix},
            "route": {"weighted_clusters": {"clusters": [entry]}},
            "typed_per_filter_config": {"envoy.filters.http.fault": route_cfg},
        }

    hcm = with_routes(
        filters(fault()),
        [
            weighted("/entry-angry", calm, angry),
            weighted("/entry-calm", angry, calm),
            weighted("/route-only", angry, {}),
        ],
    )
    p = await pair(echo, hcm=hcm)
    for path, status in (("/entry-angry", 418), ("/entry-calm", 200), ("/route-only", 418)):
        envoy, pod = await p.both([request(path)])
        assert pod.summary() == envoy.summary(), path
        assert pod.responses[0].status == status, path


def keep_alive(path: str, body: bytes | None = None) -> bytes:
    """A request that keeps the connection open (`request()` asks to close it)."""
    return request(path, body=body).replace(b"connection: close\r\n", b"")


async def test_buffered_body_then_a_local_reply_leaves_the_connection_reading(
    pair: StartPair,  # noqa: F811
) -> None:
    """A body the buffer filter held, answered by a direct response: the next request on the
    same keep-alive connection is read and answered."""
    direct = {"match": {"prefix": "/d"}, "direct_response": {"status": 200}}
    hcm = with_routes(filters(buffer(1000)), [direct, to_app("/")])
    p = await pair(echo_body, hcm=hcm)
    steps: list[Any] = [keep_alive("/d", body=b"z" * 10), 0.2, request("/f")]
    envoy, pod = await p.both(steps, wait=1.0)
    assert [r.status for r in pod.responses] == [r.status for r in envoy.responses] == [200, 200]


async def test_expect_100_continue_is_answered_before_the_filters_wait(
    pair: StartPair,  # noqa: F811
) -> None:
    """The buffer filter waits for the body and the client waits for 100 Continue: the
    connection manager answers the 100 first, as Envoy's does."""
    p = await pair(echo_body, hcm=filters(buffer(1000)))
    whole = request("/f", ("expect", "100-continue"), body=b"q" * 20)
    head, body = whole.split(b"\r\n\r\n", 1)
    # Only the head: the 100 must come without the body (which waits for it).
    envoy, pod = await p.both([head + b"\r\n\r\n"], wait=0.5)
    assert pod.raw == envoy.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
    envoy, pod = await p.both([head + b"\r\n\r\n", 0.3, body], wait=1.0)
    assert pod.raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert pod.summary() == envoy.summary()
    assert pod.upstream[0].body == envoy.upstream[0].body == b"q" * 20


async def test_a_request_without_host_ends_the_filters_stream(pair: StartPair) -> None:  # noqa: F811
    """The 400 for a request without Host goes through the chain like any local reply, so a
    fault filter's active fault ends with it."""
    p = await pair(echo, hcm=filters(fault(delay={"fixed_delay": "0.1s", "percentage": ALWAYS})))
    no_host = b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"
    envoy, pod = await p.both([no_host], wait=1.0)
    assert pod.responses[0].status == envoy.responses[0].status == 400
    assert p.pod.counter("http.ingress_http.fault.delays_injected") == 1  # the fault was active
    stat = "http.ingress_http.fault.active_faults"  # a gauge
    assert p.pod.gauge(stat) == await p.envoy_counter(stat) == 0
