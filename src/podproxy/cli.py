"""The `podproxy` command: Envoy's flags for serving and validating, plus subcommands.

`podproxy -c envoy.yaml` serves; `--mode validate` prints `configuration 'PATH' OK` (exit 0) or
every config error with its YAML path (exit 1), as Envoy does. `podproxy convert -c FILE`
prints the config as v3 YAML that current Envoy accepts; `podproxy sandbox` runs the post's
scenario on this machine (podproxy.sandbox.main).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from podproxy import __version__
from podproxy.errors import ConfigError, ConfigErrors
from podproxy.upstream.dns import parse_host_port

if TYPE_CHECKING:
    from podproxy.config.loader import LoadedConfig
    from podproxy.server import Server

# Envoy's -l levels mapped onto Python's.
LOG_LEVELS = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

SUBCOMMANDS = ("convert", "sandbox", "cluster-dns")

# --mode as Envoy spells it in /server_info's command_line_options.
MODE_NAMES = {"serve": "Serve", "validate": "Validate", "init_only": "InitOnly"}


class EnvoyFormatter(logging.Formatter):
    """`[2026-11-26 06:00:00.123][1234][info][main] message`, Envoy's default log shape."""

    _LEVEL: ClassVar[dict[int, str]] = {
        5: "trace",
        10: "debug",
        20: "info",
        30: "warning",
        40: "error",
        50: "critical",
    }

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ms:03d}"
        logger = record.name.rsplit(".", 1)[-1] if "." in record.name else record.name
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        level = self._LEVEL.get(record.levelno, record.levelname.lower())
        return f"[{stamp}][{record.process}][{level}][{logger}] {msg}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EnvoyFormatter())
    root = logging.getLogger("podproxy")
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[level])
    root.propagate = False


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="podproxy",
        description="An Envoy-compatible HTTP load balancer. "
        "Subcommands: convert, sandbox, cluster-dns.",
    )
    p.add_argument("-c", "--config-path", help="path to a bootstrap config (YAML or JSON)")
    p.add_argument("--config-yaml", help="bootstrap YAML merged over --config-path")
    p.add_argument(
        "--mode",
        choices=("serve", "validate", "init_only"),
        default="serve",
        help="serve (default); validate the config and exit; or init_only",
    )
    p.add_argument("-l", "--log-level", choices=sorted(LOG_LEVELS), default="info")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes serving the listeners (1: everything in one process)",
    )
    # Private: how the main process starts a worker (podproxy.workers).
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument(
        "--drain-time-s",
        type=float,
        default=600.0,
        help="how long in-flight requests may run after SIGTERM (600, as Envoy)",
    )
    p.add_argument("--service-cluster", default="")
    p.add_argument("--service-node", default="")
    # podproxy's own: where DNS clusters look names up, as a pod's resolv.conf would say.
    p.add_argument(
        "--resolv-conf",
        default="/etc/resolv.conf",
        help="resolv.conf whose nameservers, search list and ndots DNS clusters use",
    )
    p.add_argument(
        "--dns-server",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="nameserver to use instead of resolv.conf's (repeatable; a cluster's own "
        "typed_dns_resolver_config resolvers still win)",
    )
    p.add_argument("--version", action="version", version=f"podproxy version: {__version__}")
    return p


def _load(config_path: str | None, config_yaml: str | None) -> LoadedConfig:
    from podproxy.config.loader import load

    return load(config_path, config_yaml)


def _print_errors(errors: ConfigErrors | ConfigError) -> None:
    items = errors.errors if isinstance(errors, ConfigErrors) else [errors]
    for e in items:
        print(f"error: {e}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "convert":
        return convert_main(args_list[1:])
    if args_list and args_list[0] == "sandbox":
        from podproxy.sandbox.main import main as sandbox_main

        return sandbox_main(args_list[1:])
    if args_list and args_list[0] == "cluster-dns":
        from podproxy.sandbox.cluster_dns import main as cluster_dns_main

        return cluster_dns_main(args_list[1:])
    parser = _serve_parser()
    args = parser.parse_args(args_list)
    try:
        dns_servers = tuple(parse_host_port(s) for s in args.dns_server)
    except ValueError as exc:
        parser.error(f"--dns-server: {exc}")
    if not args.config_path and not args.config_yaml:
        print("error: at least one of --config-path or --config-yaml is required", file=sys.stderr)
        return 1
    setup_logging(args.log_level)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 1
    from podproxy.workers import WorkerSpec

    try:
        worker = WorkerSpec.parse(args.worker) if args.worker else None
    except ValueError:
        parser.error("--worker: expected FD:ID:PPID")
    try:
        loaded = _load(args.config_path, args.config_yaml)
    except (ConfigErrors, ConfigError) as exc:
        _print_errors(exc)
        return 1
    from podproxy.server import Options, Server

    options = Options(
        config_path=args.config_path,
        config_yaml=args.config_yaml,
        log_level=args.log_level,
        concurrency=args.concurrency,
        drain_time_s=args.drain_time_s,
        mode=MODE_NAMES[args.mode],
        service_cluster=args.service_cluster,
        service_node=args.service_node,
        resolv_conf=args.resolv_conf,
        dns_servers=dns_servers,
        worker=worker,
    )
    server = Server(loaded, options)
    try:
        # Builds clusters, routes and listeners; binds, resolves and opens nothing.
        server.build()
    except (ConfigErrors, ConfigError) as exc:
        _print_errors(exc)
        return 1
    if args.mode == "validate":
        # Envoy's exact line, on stdout; an empty path when only --config-yaml was given.
        print(f"configuration '{args.config_path or ''}' OK")
        return 0
    if args.mode == "init_only":
        return 0
    return run_server(server)


def run_server(server: Server) -> int:
    import uvloop

    logging.getLogger("podproxy.main").info(
        "initializing podproxy version %s (pid %d)", __version__, os.getpid()
    )
    try:
        return uvloop.run(server.run())
    except (ConfigErrors, ConfigError) as exc:
        # Bind failures and the like: one line, no traceback.
        _print_errors(exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the loop's own SIGINT handler was installed
        return 130


def convert_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="podproxy convert",
        description="Print a bootstrap config (v2 or v3) as v3 YAML that current Envoy accepts.",
    )
    p.add_argument("-c", "--config-path", help="path to a bootstrap config (YAML or JSON)")
    p.add_argument("--config-yaml", help="bootstrap YAML merged over --config-path")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = p.parse_args(list(argv))
    if not args.config_path and not args.config_yaml:
        print("error: at least one of --config-path or --config-yaml is required", file=sys.stderr)
        return 1
    from podproxy.config.convert import to_v3_yaml

    try:
        loaded = _load(args.config_path, args.config_yaml)
    except (ConfigErrors, ConfigError) as exc:
        _print_errors(exc)
        return 1
    text = to_v3_yaml(loaded)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
