"""gRPC peers for `make bench` (bench only): grpcio pods, and a grpcio unary load client.

`python bench/grpc_peer.py serve HOST:PORT`: a grpcio server (its thread-pool API, as most
Python gRPC services run) whose `bench.Pods/Unary` answers with the request's bytes; generic
handlers, so no protobuf build step. `python bench/grpc_peer.py load TARGET... --path P`:
grpc.aio channels, each with its own connection (a local subchannel pool: grpcio would
otherwise share one connection between channels to one target), spread over the targets,
each keeping `--concurrency` unary calls in flight until `--duration` seconds or
`--max-calls` calls in all; it prints one JSON line: calls, errors, req/s, p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "bench.Pods"
REQUEST = b"hello world!"
CALL_TIMEOUT_S = 5.0
# Every channel's connection is made (one call answered) before the clock starts.
CONNECT_TIMEOUT_S = 10.0
SERVER_THREADS = 16


def serve(address: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Unary": handler}),)
    )
    if not server.add_insecure_port(address):
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    # Stopped by SIGTERM from the bench, which ends the process; no clean-up to do.
    server.wait_for_termination()


def _percentile(sorted_s: list[float], pct: float) -> float:
    return sorted_s[min(len(sorted_s) - 1, int(len(sorted_s) * pct / 100))] * 1000


async def load(
    targets: list[str],
    path: str,
    channels: int,
    concurrency: int,
    duration: float,
    max_calls: int,
) -> dict[str, float]:
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [
        grpc.aio.insecure_channel(targets[i % len(targets)], options=opts) for i in range(channels)
    ]
    try:
        calls = [ch.unary_unary(path) for ch in chans]
        await asyncio.gather(*(c(REQUEST, timeout=CONNECT_TIMEOUT_S) for c in calls))
        latencies: list[float] = []
        errors = 0
        budget = max_calls

        async def worker(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
            nonlocal errors, budget
            while budget > 0 and time.monotonic() < stop:
                budget -= 1
                t0 = time.perf_counter()
                try:
                    await call(REQUEST, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.monotonic()
        stop = start + duration
        await asyncio.gather(*(worker(c) for c in calls for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    finally:
        await asyncio.gather(*(ch.close() for ch in chans))
    latencies.sort()
    res: dict[str, float] = {"calls": len(latencies), "errors": errors, "seconds": elapsed}
    res["rps"] = len(latencies) / elapsed
    if latencies:
        res["p50_ms"] = _percentile(latencies, 50)
        res["p99_ms"] = _percentile(latencies, 99)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("address", help="HOST:PORT")
    ld = sub.add_parser("load")
    ld.add_argument("targets", nargs="+", help="HOST:PORT, channels spread round robin")
    ld.add_argument("--path", default=f"/{SERVICE}/Unary")
    ld.add_argument("--channels", type=int, default=4)
    ld.add_argument("--concurrency", type=int, default=10, help="calls in flight per channel")
    ld.add_argument("--duration", type=float, default=10.0)
    ld.add_argument("--max-calls", type=int, default=2_000_000)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.address)
        return 0
    res = asyncio.run(
        load(
            args.targets,
            args.path,
            args.channels,
            args.concurrency,
            args.duration,
            args.max_calls,
        )
    )
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
