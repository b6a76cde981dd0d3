"""Micro-benchmarks of the hot path's pure parts, in operations per second.

`python bench/micro.py` (or `--smoke` for a run of a fraction of a second each, used by the
test suite only to check that it runs). Codec: request and response decoding of what wrk and
nginx send, and the upstream request head. Route match: a catch-all and 20 virtual hosts.
LB pick: ROUND_ROBIN, LEAST_REQUEST and RANDOM at 3 and 1,000 hosts. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from podproxy.filters.http.router import Forwarder, ForwarderConfig
from podproxy.http.http1.codec import RequestDecoder, ResponseDecoder
from podproxy.http.stream import RequestHead, ResponseHead
from podproxy.router.routes import Route, RouteTable, VirtualHost
from podproxy.upstream.host import Host, HostSet
from podproxy.upstream.load_balancer import LB_POLICIES

# What `wrk http://127.0.0.1:PORT/` sends, and what an nginx backend answers.
WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
NGINX_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello world!\n"
)
# A browser-like request: the codec's cost grows with header count.
TYPICAL_REQUEST = (
    b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=abc123; theme=dark\r\nX-Forwarded-For: 127.0.9.7\r\n\r\n"
)


class _Sink:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def on_request_head(self, head: RequestHead) -> None:
        self.n += 1

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self) -> None:
        pass

    def on_response_head(self, head: ResponseHead) -> None:
        self.n += 1

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self) -> None:
        pass


def ops_per_s(fn: Callable[[], object], seconds: float, samples: int = 3) -> float:
    """Calls of `fn` per second: the median of `samples` timed stretches of `seconds / samples`
    (a shared 2-core machine is noisy; the median ignores one disturbed stretch)."""
    rates = []
    for _ in range(samples):
        batch = 1000
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / samples
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(n / (now - start))
    return statistics.median(rates)


def hosts(n: int) -> tuple[Host, ...]:
    return tuple(Host(f"127.2.{i // 250}.{i % 250 + 1}", 8080) for i in range(n))


def lb_pick_ops(policy: str, n: int, seconds: float) -> float:
    lb = LB_POLICIES[policy]()
    lb.on_host_set(HostSet.of(hosts(n)), (), ())
    return ops_per_s(lb.choose_host, seconds)


def _prefix_route(prefix: bytes, cluster: str) -> Route:
    def matches(path: bytes, target: bytes, headers: Any) -> bool:
        return path.startswith(prefix)

    return Route(f"route_{cluster}", matches, cluster=cluster, prefix=prefix)


def route_tables() -> tuple[RouteTable, RouteTable]:
    catch_all = RouteTable([(("*",), VirtualHost("all", (_prefix_route(b"/", "c"),)))])
    vhosts: list[tuple[tuple[str, ...], VirtualHost]] = []
    for i in range(19):
        routes = tuple(_prefix_route(f"/svc{j}/".encode(), f"c{i}_{j}") for j in range(5))
        vhosts.append(
            ((f"svc{i}.example.com", f"*.svc{i}.example.net"), VirtualHost(f"v{i}", routes))
        )
    vhosts.append((("*",), VirtualHost("default", (_prefix_route(b"/", "default"),))))
    return catch_all, RouteTable(vhosts)


class _Conn:
    remote = ("127.0.0.1", 40000)


class _Ex:
    """The two attributes `Forwarder.request_head` reads from an exchange, plus the one it sets."""

    __slots__ = ("conn", "head", "request_id")

    def __init__(self, head: RequestHead) -> None:
        self.conn = _Conn()
        self.head = head
        self.request_id = b""


def cases(seconds: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    sink = _Sink()
    req = RequestDecoder(sink)
    out.append(
        (
            "codec: RequestDecoder.feed, wrk request",
            ops_per_s(lambda: req.feed(WRK_REQUEST), seconds),
        )
    )
    req2 = RequestDecoder(sink)
    out.append(
        (
            "codec: RequestDecoder.feed, 8-header request",
            ops_per_s(lambda: req2.feed(TYPICAL_REQUEST), seconds),
        )
    )
    resp = ResponseDecoder(sink)

    def _expect_and_feed(dec: ResponseDecoder, data: bytes) -> None:
        dec.expect_response(False)  # as UpstreamConnection.attach does for each request
        dec.feed(data)

    out.append(
        (
            "codec: ResponseDecoder.feed, nginx 13-byte response",
            ops_per_s(lambda: _expect_and_feed(resp, NGINX_RESPONSE), seconds),
        )
    )

    heads: list[RequestHead] = []

    class _Grab(_Sink):
        def on_request_head(self, head: RequestHead) -> None:
            heads.append(head)

    RequestDecoder(_Grab()).feed(WRK_REQUEST + TYPICAL_REQUEST)
    fwd = Forwarder(RouteTable([]), {}, ForwarderConfig(), None)
    route = _prefix_route(b"/", "c")
    host = hosts(1)[0]
    for label, head in (("wrk request", heads[0]), ("8-header request", heads[1])):
        ex: Any = _Ex(head)
        out.append(
            (
                f"codec: Forwarder.request_head, {label}",
                ops_per_s(lambda ex=ex: fwd.request_head(ex, route, host), seconds),
            )
        )  # type: ignore[misc]

    catch_all, twenty = route_tables()
    hdrs = heads[0].headers
    route_cases = (
        ("route: catch-all", catch_all, b"127.0.0.1:10000", b"/"),
        ("route: 20 vhosts, exact domain, 5th route", twenty, b"svc7.example.com", b"/svc4/x?y=1"),
        ("route: 20 vhosts, suffix wildcard", twenty, b"a.svc7.example.net", b"/svc0/x"),
        ("route: 20 vhosts, falls to *", twenty, b"other.org", b"/x"),
    )
    for name, table_, authority, target in route_cases:
        out.append(
            (
                name,
                ops_per_s(
                    lambda t=table_, a=authority, p=target: t.route(a, p, hdrs),  # type: ignore[misc]
                    seconds,
                ),
            )
        )

    for policy in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
        for n in (3, 1000):
            out.append((f"lb: {policy} choose_host, {n:,} hosts", lb_pick_ops(policy, n, seconds)))
    return out  # fmt: skip


def table(rows: list[tuple[str, float]]) -> str:
    lines = ["| micro-benchmark | ops/s | ns/op |", "| --- | ---: | ---: |"]
    for name, ops in rows:
        lines.append(f"| {name} | {ops:,.0f} | {1e9 / ops:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="time per case (1.0)")
    p.add_argument("--smoke", action="store_true", help="0.02 s per case: checks it runs")
    args = p.parse_args(argv)
    print(table(cases(0.02 if args.smoke else args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
