"""`make run`: three pods and podproxy on `examples/static.yaml`, in this one process.

The pods are httpd-like backends on 127.0.1.1-3:8080 (the addresses the example config lists);
podproxy listens on 127.0.0.1:10000 with its admin on 127.0.0.1:9901. Ctrl-C or SIGTERM drains
podproxy (the server's own signal handlers), then the pods stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from podproxy import cli
from podproxy.admin import ServerState
from podproxy.config.loader import load
from podproxy.errors import ConfigError, ConfigErrors
from podproxy.sandbox.pods import PodSet
from podproxy.server import Options, Server

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "static.yaml"
POD_COUNT = 3
POD_BASE_IP = "127.0.1.1"
POD_PORT = 8080
# A demo needs no long drain: in-flight requests get this long after Ctrl-C.
DRAIN_TIME_S = 2.0
# How long to wait for the server to go LIVE before printing the hints anyway.
LIVE_WAIT_S = 10.0

HINTS = """\
podproxy is running: 3 pods behind {listener}, admin on {admin}. Try:
  curl -s localhost:10000/            # answered by httpd-0, -1, -2 in turn
  curl -s localhost:9901/clusters     # the cluster as Envoy's admin shows it
  curl -s localhost:9901/stats | grep upstream_rq
Ctrl-C stops everything."""

log = logging.getLogger("podproxy.main")


async def _announce_when_live(server: Server) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVE_WAIT_S
    while server.state() is not ServerState.LIVE and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if server.state() is ServerState.LIVE:
        listener = ", ".join(addr for _, addr in server.listeners())
        admin = server.admin_listener.address_str if server.admin_listener else "-"
        print(HINTS.format(listener=listener, admin=admin), flush=True)


async def _run(server: Server) -> int:
    pods = PodSet(POD_COUNT, base_ip=POD_BASE_IP, port=POD_PORT)
    try:
        await pods.start()
    except OSError as exc:
        print(f"error: cannot start the pods on {POD_BASE_IP}:{POD_PORT}: {exc}", file=sys.stderr)
        return 1
    for pod in pods:
        log.info("pod %s serving on %s", pod.name, pod.url)
    announce = asyncio.get_running_loop().create_task(_announce_when_live(server))
    try:
        return await server.run()
    finally:
        announce.cancel()
        await pods.stop(grace=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m podproxy.run_example",
        description="Run 3 pods and podproxy on examples/static.yaml until Ctrl-C/SIGTERM.",
    )
    p.add_argument("-c", "--config-path", default=str(DEFAULT_CONFIG))
    p.add_argument("-l", "--log-level", choices=sorted(cli.LOG_LEVELS), default="info")
    args = p.parse_args(argv)
    cli.setup_logging(args.log_level)
    try:
        loaded = load(args.config_path)
        server = Server(
            loaded,
            Options(
                config_path=args.config_path, log_level=args.log_level, drain_time_s=DRAIN_TIME_S
            ),
        )
        server.build()
    except (ConfigErrors, ConfigError) as exc:
        items = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        for e in items:
            print(f"error: {e}", file=sys.stderr)
        return 1

    import uvloop

    try:
        return uvloop.run(_run(server))
    except (ConfigErrors, ConfigError) as exc:  # a port already in use, for one
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
