"""The mirror's request head, and a shadow stream's bounds (without sockets)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS
from typing import Any

from podproxy.filters.http.shadow import MirroredRequest, ShadowStream, shadow_head
from podproxy.router.routes import (
    DefaultFractionRuntime,
    HeaderMutation,
    HeaderMutations,
    HeaderToAdd,
    MirrorPolicy,
)

HEAD = (
    b"POST /p?q=1 HTTP/1.1\r\nhost: app:8080\r\nx-a: 1\r\nx-forwarded-for: 127.0.9.9\r\n"
    b"x-request-id: r\r\ncontent-length: 5\r\n\r\n"
)


def policy(**kw: Any) -> MirrorPolicy:
    return MirrorPolicy(
        cluster="m",
        cluster_header=None,
        fraction=None,
        runtime=DefaultFractionRuntime(),
        random=lambda: 0,
        **kw,
    )


def test_shadow_head_is_the_upstream_head_as_envoys_async_client_sends_it() -> None:
    got = shadow_head(HEAD, policy(), b"127.0.5.5")
    assert got == (
        b"POST /p?q=1 HTTP/1.1\r\nhost: app-shadow:8080\r\nx-a: 1\r\nx-request-id: r\r\n"
        b"x-envoy-internal: true\r\nx-forwarded-for: 127.0.9.9,127.0.5.5\r\n"
        b"content-length: 5\r\n\r\n"
    )


def test_shadow_head_mutations_never_touch_the_framing() -> None:
    mutations = HeaderMutations(
        (
            HeaderMutation(frozenset({b"x-a", b"content-length"}), ()),
            HeaderMutation(frozenset(), (HeaderToAdd(b"x-m", b"1", 0, False),)),
        )
    )
    got = shadow_head(HEAD, policy(mutations=mutations, suffix=False), b"127.0.5.5")
    assert got == (
        b"POST /p?q=1 HTTP/1.1\r\nhost: app:8080\r\nx-request-id: r\r\nx-m: 1\r\n"
        b"x-envoy-internal: true\r\nx-forwarded-for: 127.0.9.9,127.0.5.5\r\n"
        b"content-length: 5\r\n\r\n"
    )


class Counter:
    def __init__(self) -> None:
        self.value = 0


def fake_cluster() -> Any:
    names = [
        "upstream_rq_total",
        "upstream_rq_active",
        "upstream_rq_completed",
        "upstream_rq_tx_reset",
        "upstream_rq_cancelled",
        "upstream_rq_timeout",
        "retry_or_shadow_abandoned",
    ]
    return NS(info=NS(name="m", stats=NS(**{n: Counter() for n in names})))


class WaitingPool:
    """A pool with no connection to give: the shadow waits."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def acquire(self, waiter: Any) -> None:
        self.waiting.append(waiter)

    def cancel(self, waiter: Any) -> None:
        self.waiting.remove(waiter)


async def test_a_shadow_waiting_for_a_connection_holds_at_most_the_limit() -> None:
    loop = asyncio.get_running_loop()
    mirror, real_cluster, pool = fake_cluster(), fake_cluster(), WaitingPool()
    ex = NS(state=None, response_complete=False)
    host = NS(stats=NS(rq_total=0, rq_active=0, rq_error=0, rq_timeout=0))
    shadow = ShadowStream(
        ex,  # type: ignore[arg-type]
        mirror,
        host,  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        b"POST / HTTP/1.1\r\nhost: a\r\n\r\n",
        False,
        timeout=None,
        limit=10,
        loop=loop,
        on_abandon=real_cluster,
    )
    real = NS(sent=[], send_body=lambda d: real.sent.append(d), conn=None)
    tee = MirroredRequest(real, [shadow])
    ex.state = tee
    shadow.start(tee)
    assert pool.waiting == [shadow]
    tee.send_body(b"12345")
    tee.send_body(b"67890")
    assert shadow.pending_size == 10 and not shadow.done
    tee.send_body(b"x")  # over the limit: the copy is given up, the real request goes on
    assert shadow.done and shadow.pending == [] and pool.waiting == []
    assert real.sent == [b"12345", b"67890", b"x"]
    assert real_cluster.info.stats.retry_or_shadow_abandoned.value == 1
    assert mirror.info.stats.upstream_rq_cancelled.value == 1
    assert mirror.info.stats.upstream_rq_total.value == 0  # never on a connection


async def test_a_shadow_whose_stream_ended_early_is_cancelled_by_its_watch() -> None:
    loop = asyncio.get_running_loop()
    mirror, pool = fake_cluster(), WaitingPool()
    ex = NS(state=None, response_complete=False)
    host = NS(stats=NS(rq_total=0, rq_active=0, rq_error=0, rq_timeout=0))
    shadow = ShadowStream(
        ex,  # type: ignore[arg-type]
        mirror,
        host,  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        b"POST / HTTP/1.1\r\nhost: a\r\n\r\n",
        False,
        timeout=None,
        limit=10,
        loop=loop,
        on_abandon=fake_cluster(),
    )
    state = object()
    ex.state = state
    shadow.start(state)
    shadow._watch(state)  # the stream is alive: keep waiting
    assert not shadow.done
    ex.state = None  # the downstream exchange ended with the request body unfinished
    shadow._watch(state)
    assert shadow.done and pool.waiting == []
    assert mirror.info.stats.upstream_rq_tx_reset.value == 1
