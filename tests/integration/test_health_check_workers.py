"""`/healthcheck/fail|ok` with `--concurrency 2`: the admin runs in the main process, the
health check filter in the workers, so the state must reach every worker (the real CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from integration.backends import Backend, ProxyProcess, parse_responses, raw_exchange, wait_until
from integration.test_concurrency import children
from integration.test_proxy_http import bootstrap, cluster

HC = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"


async def statuses(port: int, n: int) -> list[tuple[int, str | None]]:
    """`n` health checks, each on its own connection: (status, immediate-fail header)."""

    async def one() -> tuple[int, str | None]:
        req = b"GET /healthz HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
        (resp,) = parse_responses(await raw_exchange("127.0.0.1", port, req, timeout=5.0))
        return resp.status, resp.header("x-envoy-immediate-health-check-fail")

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def settled(port: int, want: tuple[int, str | None]) -> None:
    """Wait (bounded) until a batch of health checks all get `want`."""
    for _ in range(50):
        if set(await statuses(port, 10)) == {want}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers never all answered {want}")


async def admin(proc: ProxyProcess, path: str, method: str = "GET") -> str:
    assert proc.admin is not None
    req = f"{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n"
    data = await raw_exchange(*proc.admin, (req + "content-length: 0\r\n\r\n").encode())
    return parse_responses(data)[0].body.decode()


async def test_every_worker_follows_healthcheck_fail_and_ok(
    podproxy_process: Callable[..., Awaitable[ProxyProcess]],
    backend: Callable[..., Awaitable[Backend]],
    free_port: Callable[..., int],
) -> None:
    b = await backend()
    port = free_port()
    hc = {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": HC,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "exact_match": "/healthz"}],
        },
    }
    router = {"name": "envoy.filters.http.router"}
    config = bootstrap(
        [cluster("app", [(b.host, b.port)])],
        hcm={"http_filters": [hc, router]},
        listener_port=port,
        admin_port=free_port(),
    )
    proc = await podproxy_process(config, "--concurrency", "2")
    await wait_until(lambda: len(children(proc.pid)) == 2, timeout=5.0)
    assert set(await statuses(port, 20)) == {(200, None)}
    assert await admin(proc, "/healthcheck/fail", "POST") == "OK\n"
    # The main pushes the state to the workers as it answers; they apply it a moment later.
    await settled(port, (503, "true"))
    assert set(await statuses(port, 40)) == {(503, "true")}
    stats = await admin(proc, r"/stats?filter=\.worker_\d\.downstream_cx_total$")
    served = [int(line.rpartition(": ")[2]) for line in stats.splitlines()]
    assert len(served) == 2 and min(served) > 0, stats  # both workers answered
    assert await admin(proc, "/healthcheck/ok", "POST") == "OK\n"
    await settled(port, (200, None))
    assert set(await statuses(port, 20)) == {(200, None)}
