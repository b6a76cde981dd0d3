"""The HTTP/2 and gRPC part of `make bench`: scenarios, configs, load runners and tables.

Beside the HTTP/1 backends (`configs.nginx_backend_conf`) run three nginx h2c backends (prior
knowledge, the same hosts, another port) and three grpcio pods (`grpc_peer.py serve`). Each
proxy runs one config (`envoy_h2_yaml`, the same for podproxy and Envoy) whose listener takes
HTTP/1 and h2c (codec_type AUTO) and routes by path: `/bench.Pods/` to the grpcio pods,
`/bench.Nginx/` and `/h2` to the nginx h2c backends, the rest to the HTTP/1 backends. A
scenario names its load tool (h2load, the grpcio load client, or wrk) and its path, so each
one crosses the proxy from one protocol to another. Not named h2.py: bench/ is on sys.path
and would shadow the h2 library.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs import HCM_TYPE, ROUTER_TYPE, SMALL_BODY, Topology

# h2load -m: streams in flight per connection, as the issue's `-c N -m 10`.
STREAMS = 10
# The gRPC load: channels (connections) times calls in flight on each.
GRPC_CHANNELS = 4
GRPC_CONCURRENCY = 10
# No run takes more calls than this, whatever its duration (a bound, not a target).
GRPC_MAX_CALLS = 2_000_000
# nginx's default of 128 streams per connection is below what 50 clients x 10 streams put on
# the proxies' three upstream connections; a low peer limit would measure pool growth instead.
NGINX_H2_STREAMS = 1024
# The gRPC answer nginx serves for /bench.Nginx/Unary: an uncompressed message of 12 bytes
# (the 5-byte length prefix of gRPC's wire format, then the bytes).
GRPC_REPLY = b"\x00" + len(SMALL_BODY.strip()).to_bytes(4, "big") + SMALL_BODY.strip().encode()

UPSTREAM_H2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""


@dataclass(frozen=True)
class H2Scenario:
    name: str
    title: str
    # "h2load" (h2c prior knowledge), "grpc" (grpc_peer.py load) or "wrk" (HTTP/1.1)
    tool: str
    path: str
    connections: int = 1
    # What "direct" (no proxy) loads for this scenario: "h2" one nginx h2c backend, "pods"
    # the grpcio pods, "" nothing (no backend speaks the client's protocol).
    direct: str = ""


H2_SCENARIOS = (
    H2Scenario(
        "h2c_h1_c1", "h2c client -> HTTP/1 backends, 1 connection x 10 streams", "h2load", "/"
    ),
    H2Scenario(
        "h2c_h1_c50",
        "h2c client -> HTTP/1 backends, 50 connections x 10 streams",
        "h2load",
        "/",
        50,
    ),
    H2Scenario(
        "h2c_h2_c1",
        "h2c client -> h2c backends, 1 connection x 10 streams",
        "h2load",
        "/h2",
        1,
        "h2",
    ),
    H2Scenario(
        "h2c_h2_c50",
        "h2c client -> h2c backends, 50 connections x 10 streams",
        "h2load",
        "/h2",
        50,
        "h2",
    ),
    H2Scenario(
        "grpc_pods",
        f"gRPC unary -> grpcio pods, {GRPC_CHANNELS} channels x {GRPC_CONCURRENCY} calls",
        "grpc",
        "/bench.Pods/Unary",
        GRPC_CHANNELS,
        "pods",
    ),
    H2Scenario(
        "grpc_nginx",
        f"gRPC unary -> nginx h2c, {GRPC_CHANNELS} channels x {GRPC_CONCURRENCY} calls",
        "grpc",
        "/bench.Nginx/Unary",
        GRPC_CHANNELS,
        "h2",
    ),
    H2Scenario(
        "h1_h2_c50", "HTTP/1.1 client (wrk) -> h2c backends, 50 connections", "wrk", "/h2", 50
    ),
)
# The target: gRPC unary req/s at least half Envoy's, one worker each.
H2_TARGETS = (("grpc_pods", 0.5), ("grpc_nginx", 0.5))


# Configs ------------------------------------------------------------------------------------


def write_grpc_reply(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grpc-reply"
    path.write_bytes(GRPC_REPLY)
    return path


def nginx_h2_backend_conf(tmp: Path, addr: tuple[str, int], grpc_reply: Path, nofile: int) -> str:
    """One h2c backend (prior knowledge only: nginx has no h2c upgrade): `/h2` answers the
    13-byte body, `/bench.Nginx/Unary` a gRPC OK with one message."""
    host, port = addr
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-h2-{host}.pid;
error_log {tmp}/nginx-h2-{host}.err warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {tmp}/cbt-h2-{host};
  proxy_temp_path {tmp}/pt-h2-{host};
  fastcgi_temp_path {tmp}/ft-h2-{host};
  uwsgi_temp_path {tmp}/ut-h2-{host};
  scgi_temp_path {tmp}/st-h2-{host};
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams {NGINX_H2_STREAMS};
  server {{
    listen {host}:{port} http2 backlog=4096;
    location = /h2 {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
    location = /bench.Nginx/Unary {{
      # The static module refuses POST with 405; the error page turns it into a GET of the
      # same file, answered 200, with the gRPC status as a trailer.
      alias {grpc_reply};
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      error_page 405 =200 $uri;
    }}
  }}
}}
"""


def _endpoints(addrs: tuple[tuple[str, int], ...]) -> str:
    return "".join(
        f"""
        - endpoint:
            address:
              socket_address: {{address: {h}, port_value: {p}}}"""
        for h, p in addrs
    )


def _cluster(name: str, addrs: tuple[tuple[str, int], ...], h2: bool) -> str:
    return f"""
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    lb_policy: ROUND_ROBIN{UPSTREAM_H2 if h2 else ""}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{_endpoints(addrs)}"""


def envoy_h2_yaml(
    topo: Topology,
    system: str,
    h2_backends: tuple[tuple[str, int], ...],
    pods: tuple[tuple[str, int], ...],
) -> str:
    """v3 bootstrap both podproxy and Envoy run: one listener (HTTP/1 and h2c), three
    clusters (HTTP/1 backends, h2c backends, grpcio pods), round robin, one route each."""
    port, admin = topo.ports[system]
    clusters = (
        _cluster("backends", topo.backends, False)
        + _cluster("h2backends", h2_backends, True)
        + (_cluster("pods", pods, True) if pods else "")
    )
    # Without grpcio (no pods) the pods' route goes too: Envoy refuses a route to no cluster.
    pods_route = (
        """
              - match: {prefix: "/bench.Pods/"}
                route: {cluster: pods}"""
        if pods
        else ""
    )
    return f"""static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: {{protocol: TCP, address: {topo.listen_host}, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: backends
              domains: ["*"]
              routes:{pods_route}
              - match: {{prefix: "/bench.Nginx/"}}
                route: {{cluster: h2backends}}
              - match: {{path: "/h2"}}
                route: {{cluster: h2backends}}
              - match: {{prefix: "/"}}
                route: {{cluster: backends}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER_TYPE}
  clusters:{clusters}
admin:
  address:
    socket_address: {{protocol: TCP, address: 127.0.0.1, port_value: {admin}}}
"""


# Load runners -------------------------------------------------------------------------------


def h2load_argv(url: str, sc: H2Scenario, duration: int, log: Path) -> list[str]:
    # --log-file: one line per request with its time to the response's end, for p50/p99
    # (h2load itself prints only mean and sd).
    return ["h2load", "-t1", f"-c{sc.connections}", f"-m{STREAMS}", f"-D{duration}",
            f"--log-file={log}", url]  # fmt: skip


def parse_h2load(out: str, log: Path | None = None) -> dict[str, Any]:
    """req/s, errors, and p50/p99 (ms) from h2load's output and its --log-file."""
    res: dict[str, Any] = {}
    if m := re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out):
        res["rps"] = float(m.group(1))
    detail = []
    errors = 0
    if m := re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out):
        errors += int(m.group(1)) + int(m.group(3))
        if errors:
            detail.append(m.group(0))
    if m := re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out):
        bad = sum(int(g) for g in m.groups())
        if bad:
            errors += bad
            detail.append(m.group(0))
    res["errors"] = errors
    if detail:
        res["error_detail"] = "; ".join(detail)
    if log is not None and log.exists():
        us = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
        if us:
            res["p50_ms"] = us[len(us) // 2] / 1000
            res["p99_ms"] = us[min(len(us) - 1, len(us) * 99 // 100)] / 1000
    return res


def run_h2load(argv: list[str], duration: int, log: Path) -> dict[str, Any]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired:
        return {"rps": 0.0, "errors": -1}
    try:
        return parse_h2load(done.stdout, log)
    finally:
        log.unlink(missing_ok=True)


def grpc_load_argv(
    python: str, script: Path, targets: list[str], sc: H2Scenario, duration: int
) -> list[str]:
    return [python, str(script), "load", *targets, "--path", sc.path,
            "--channels", str(GRPC_CHANNELS), "--concurrency", str(GRPC_CONCURRENCY),
            "--duration", str(duration), "--max-calls", str(GRPC_MAX_CALLS)]  # fmt: skip


def run_grpc_load(argv: list[str], duration: int) -> dict[str, Any]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except subprocess.TimeoutExpired:
        return {"rps": 0.0, "errors": -1}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error_detail": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    res: dict[str, Any] = json.loads(lines[-1])
    return res


# Tables -------------------------------------------------------------------------------------


def _ratio(r: dict[str, Any], base: float | None) -> str:
    return f"{r['rps'] / base:.2f}x" if base and "rps" in r else "-"


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def scenario_table(title: str, rows: dict[str, dict[str, Any]], loadavg: float | None) -> str:
    base = rows.get("envoy", {}).get("rps")
    if loadavg is not None:
        title += f" (load average {loadavg:.1f} at start)"
    lines = [f"### {title}", "", "| system | req/s | p50 | p99 | vs Envoy |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for system, r in rows.items():
        if "rps" not in r:
            why = r.get("error_detail", "")
            lines.append(f"| {system} | failed{': ' + why if why else ''} | - | - | - |")
            continue
        err = f" ({int(r['errors'])} errors)" if r.get("errors") else ""
        lines.append(
            f"| {system} | {r['rps']:,.0f}{err} | {_ms(r.get('p50_ms'))} | "
            f"{_ms(r.get('p99_ms'))} | {_ratio(r, base)} |"
        )
    return "\n".join(lines)


def summary_table(h2: dict[str, Any]) -> str:
    """Every HTTP/2 scenario in one table: req/s and its ratio to Envoy's, one row per system."""
    res = h2["results"]
    names = [n for n in h2["scenarios"] if n in res]
    systems: list[str] = []
    for n in names:
        systems += [s for s in res[n] if s not in systems]
    lines = [
        "### HTTP/2 and gRPC: req/s (ratio to Envoy)",
        "",
        "| system | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for system in systems:
        cells = []
        for n in names:
            r = res[n].get(system) or {}
            base = res[n].get("envoy", {}).get("rps")
            if "rps" not in r:
                cells.append("-")
            else:
                cells.append(f"{r['rps']:,.0f}" + (f" ({_ratio(r, base)})" if base else ""))
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(h2: dict[str, Any]) -> str:
    lines = [
        "### HTTP/2 targets (podproxy req/s over Envoy's, same run)",
        "",
        "| scenario | ratio | target | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, least in H2_TARGETS:
        mine = h2["results"].get(name, {}).get("podproxy", {}).get("rps")
        theirs = h2["results"].get(name, {}).get("envoy", {}).get("rps")
        if mine and theirs:
            met = "yes" if mine / theirs >= least else "no"
            lines.append(f"| {name} | {mine / theirs:.2f}x | {least:.1f}x | {met} |")
    return "\n".join(lines)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median req/s, with every run's req/s beside it; a failed run's
    reason when no run gave a number."""
    ok = sorted((r for r in runs if "rps" in r), key=lambda r: r["rps"])
    if not ok:
        return next((r for r in runs if "error_detail" in r), {})
    med = dict(ok[len(ok) // 2])
    med["runs_rps"] = [r["rps"] for r in runs if "rps" in r]
    return med


def report(h2: dict[str, Any], rss_table: Any, memory_table: Any) -> list[str]:
    """Every HTTP/2 table of a run, as markdown parts, from its JSON."""
    parts = [summary_table(h2), targets_table(h2)]
    load = h2.get("loadavg_1min_at_scenario_start", {})
    for name, title in h2["scenarios"].items():
        if name in h2["results"]:
            parts.append(scenario_table(title, h2["results"][name], load.get(name)))
    if h2.get("rss_kib_after_scenario"):
        parts.append(rss_table(h2["rss_kib_after_scenario"], list(h2["scenarios"])))
    if h2.get("idle_memory"):
        parts.append(memory_table(h2["idle_memory"], "idle h2c connections"))
    for what, why in h2.get("skipped", {}).items():
        parts.append(f"skipped {what} (HTTP/2): {why.splitlines()[0]}")
    for what, why in h2.get("failures", {}).items():
        parts.append(f"failed {what}: {why.splitlines()[0]}")
    return parts
