"""`podproxy sandbox` command line: options, the run, and cleanup on every exit path."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from podproxy.sandbox.grpc_config import GRPC_POD_PORT, GRPC_V3_YAML
from podproxy.sandbox.scenario import Options, Scenario, parse_duration, parse_script
from podproxy.sandbox.view import events_table, interactive, summary


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="podproxy sandbox",
        description=(
            "The post's scenario on this machine: a cluster DNS for the headless Service "
            "httpd-discovery, httpd-like pods on 127.0.1.x:8080, podproxy on the post's config, "
            "steady load, and scaling."
        ),
    )
    p.add_argument("--replicas", type=int, default=2, help="pods at start (2, as in the post)")
    p.add_argument(
        "--script",
        default="",
        help='scripted steps, e.g. "scale 3 @5s; scale 1 @12s; kill httpd-0 @8s; '
        'unready httpd-1 @3s; ready httpd-1 @6s" (runs without the live view)',
    )
    p.add_argument("--duration", help="stop after this long, e.g. 20s (default: until q/Ctrl-C)")
    p.add_argument("--rps", type=float, default=50.0, help="load through the proxy (50/s)")
    p.add_argument("-c", "--config-path", help="run this config instead of the post's")
    p.add_argument("--grace", default="7s", help="termination grace period of a removed pod (7s)")
    p.add_argument("--dns-ttl", type=int, default=5, help="TTL of the cluster DNS answers (5)")
    p.add_argument("--base-ip", default="127.0.1.1", help="address of the first pod")
    p.add_argument("--pod-port", type=int, help="port of every pod (8080; 50051 with --grpc)")
    p.add_argument(
        "--grpc",
        action="store_true",
        help="gRPC pods behind grpc-discovery, podproxy with HTTP/2 to them, and one gRPC "
        "channel of load, shown beside what a plain Service does with the same calls",
    )
    p.add_argument("-l", "--log-level", default="warning", help="podproxy's log level")
    a = p.parse_args(list(argv))
    try:
        script = parse_script(a.script)
        duration = parse_duration(a.duration) if a.duration else None
        grace = parse_duration(a.grace)
    except ValueError as exc:
        p.error(str(exc))
    if not 0 <= a.replicas <= 200:
        p.error("--replicas must be between 0 and 200")
    if a.rps <= 0 or a.rps > 5000:
        p.error("--rps must be in (0, 5000]")
    if a.grpc and importlib.util.find_spec("grpc") is None:
        p.error("--grpc needs grpcio (pip install grpcio)")
    opts = Options(
        replicas=a.replicas,
        script=script,
        duration=duration,
        rps=a.rps,
        grace=grace,
        dns_ttl=a.dns_ttl,
        base_ip=a.base_ip,
        pod_port=a.pod_port or (GRPC_POD_PORT if a.grpc else 8080),
        log_level=a.log_level,
        grpc=a.grpc,
    )
    if a.grpc:
        opts.config_text = GRPC_V3_YAML
        opts.config_name = "the gRPC config (h2c listener, HTTP/2 to the pods)"
    if a.config_path:
        try:
            opts.config_text = Path(a.config_path).read_text()
        except OSError as exc:
            p.error(f"cannot read {a.config_path}: {exc.strerror}")
        opts.config_name = a.config_path
    return opts


async def run(opts: Options, console: Console) -> int:
    sc = Scenario(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    interactive_mode = not opts.script and sys.stdin.isatty() and console.is_terminal
    try:
        try:
            await sc.start()
        except (RuntimeError, OSError) as exc:
            console.print(f"[red]sandbox failed to start:[/red] {exc}")
            return 1
        if opts.duration is not None:
            loop.call_later(opts.duration, stop.set)
        script = loop.create_task(sc.run_script())
        if interactive_mode:
            await interactive(sc, console, stop)
        else:
            console.print(
                f"podproxy sandbox{' --grpc' if opts.grpc else ''}: {opts.replicas} pod(s), "
                f"{len(opts.script)} scripted step(s), "
                f"{opts.rps:g} {'calls' if opts.grpc else 'req'}/s"
                + (f" for {opts.duration:g}s" if opts.duration else "")
            )
            await stop.wait()
        script.cancel()
        return 0
    finally:
        table = summary(sc) if sc.started_at else None
        await sc.stop()
        console.print(events_table(sc))
        if table is not None:
            console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    return uvloop.run(run(opts, Console()))


if __name__ == "__main__":
    raise SystemExit(main())
