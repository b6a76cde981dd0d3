"""`make bench`: podproxy side by side with Envoy, nginx, HAProxy, a naive aiohttp proxy and no
proxy at all, in one run on this machine, reported as ratios to Envoy.

Theory of operation: three nginx backends on 127.0.1.1-3 and every proxy start once, each from
the same `configs.Topology`; proxies are pinned to core 0, wrk and the backends to core 1 (no
pinning with one core). Each scenario runs every system in turn, A B C ... A B C ..., for
`--reps` rounds, and the median round is reported. Then the idle-connection memory test
(`memory.py`), the HTTP/2 and gRPC scenarios and idle h2c memory (`h2bench.py`: h2c nginx
backends and grpcio pods beside the HTTP/1 ones, podproxy and Envoy on one h2-capable config)
and the discovery-at-scale test (`discovery.py`) run. Results go to stdout,
`bench/results/latest.json` and `bench/results/latest.png`. Benchmarks, never tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import configs
import h2bench
import memory

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PY = sys.executable
ENVOY = Path(PY).parent / "envoy"
BACKEND_HOSTS = ("127.0.1.1", "127.0.1.2", "127.0.1.3")
# Every system's name, in table order; "direct" is wrk straight at one backend.
# "bare" is bench/bare_forwarder.py: the least any uvloop + httptools proxy costs here.
SYSTEMS = ("direct", "podproxy", "envoy", "nginx", "haproxy", "aiohttp", "bare")
PROXY_ON_CORE0 = ("podproxy", "envoy", "nginx", "haproxy", "aiohttp", "bare")
# Generous fd limit for us and every child (10,000 idle connections, 256-connection wrk runs).
NOFILE = 65536
STARTUP_TIMEOUT = 20.0
# The limit actually in force after raise_nofile(); configs size their connection caps by it.
NOFILE_NOW = 1024

UPLOAD_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    connections: int
    path: str = "/"
    args: tuple[str, ...] = ()


SCENARIOS = (
    Scenario("ka1", "keep-alive, 1 connection", 1),
    Scenario("ka50", "keep-alive, 50 connections", 50),
    Scenario("ka256", "keep-alive, 256 connections", 256),
    Scenario(
        "close50", "new connection per request, 50 at once", 50, "/", ("-H", "Connection: close")
    ),
    Scenario("body16k", "16 KiB responses, 50 connections", 50, "/16k"),
    Scenario("body1m", "1 MiB responses, 10 connections", 10, "/1m"),
    Scenario("upload1m", "1 MiB uploads, 10 connections", 10, "/upload", ("-s", "{upload_lua}")),
)


# Process handling ---------------------------------------------------------------------------


def two_cores() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


def pin(core: int, argv: list[str]) -> list[str]:
    if two_cores() and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def raise_nofile() -> int:
    """Raise our fd limit (children inherit it) to NOFILE, or as far as the hard limit allows."""
    global NOFILE_NOW
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want, want_hard in ((NOFILE, max(NOFILE, hard)), (min(NOFILE, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want_hard))
        except (ValueError, OSError):
            continue
        NOFILE_NOW = want
        break
    else:
        NOFILE_NOW = soft
    return NOFILE_NOW


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A port free on every one of `hosts`."""
    while True:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port}")


def http_get(host: str, port: int, path: str = "/") -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


class Procs:
    """The processes this run started; stopped by their own pid, in reverse."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for _, p in reversed(list(self.procs)):
            self.stop(p)


# Starting the systems -----------------------------------------------------------------------


def start_backends(procs: Procs, tmp: Path) -> tuple[tuple[str, int], ...]:
    docroot = tmp / "docroot"
    configs.write_body_files(docroot)
    port = free_port(BACKEND_HOSTS)
    backends = tuple((h, port) for h in BACKEND_HOSTS)
    for addr in backends:
        conf = tmp / f"backend-{addr[0]}.conf"
        conf.write_text(configs.nginx_backend_conf(tmp, addr, docroot, NOFILE_NOW))
        p = procs.start(
            f"backend {addr[0]}",
            pin(1, ["nginx", "-c", str(conf), "-p", str(tmp)]),
            tmp / f"backend-{addr[0]}.log",
        )
        wait_port(*addr, p, f"nginx backend {addr[0]}")
    return backends


def proxy_argv(
    system: str,
    topo: configs.Topology,
    tmp: Path,
    workers: int,
    envoy_workers: int,
    config: str | None = None,
) -> list[str]:
    """`config`: the bootstrap YAML podproxy and Envoy run instead of `configs.envoy_yaml`."""
    port, _ = topo.ports[system]
    if system in ("podproxy", "envoy"):
        cfg = tmp / f"{system}.yaml"
        cfg.write_text(config or configs.envoy_yaml(topo, system))
        if system == "podproxy":
            return [PY, "-m", "podproxy", "-c", str(cfg), "--concurrency", str(workers),
                    "-l", "warning"]  # fmt: skip
        return [str(ENVOY), "-c", str(cfg), "--concurrency", str(envoy_workers), "-l", "warning",
                "--use-dynamic-base-id", "--disable-hot-restart"]  # fmt: skip
    if system == "nginx":
        cfg = tmp / "nginx-proxy.conf"
        cfg.write_text(configs.nginx_proxy_conf(topo, tmp, NOFILE_NOW))
        return ["nginx", "-c", str(cfg), "-p", str(tmp)]
    if system == "haproxy":
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(configs.haproxy_cfg(topo, NOFILE_NOW))
        return ["haproxy", "-db", "-f", str(cfg)]
    if system in ("aiohttp", "bare"):
        script = "aiohttp_proxy.py" if system == "aiohttp" else "bare_forwarder.py"
        return [PY, str(HERE / script), str(port)] + [f"{h}:{p}" for h, p in topo.backends]
    raise ValueError(system)


def available(system: str) -> str | None:
    """Why `system` cannot run here, or None."""
    need = {"envoy": str(ENVOY), "nginx": "nginx", "haproxy": "haproxy"}.get(system)
    if need and not shutil.which(need):
        return f"{need} not found"
    if system == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return "aiohttp not installed (pip install -e '.[bench]')"
    return None


def start_proxy(
    procs: Procs,
    system: str,
    topo: configs.Topology,
    tmp: Path,
    workers: int = 1,
    envoy_workers: int = 1,
    config: str | None = None,
) -> subprocess.Popen[bytes]:
    argv = proxy_argv(system, topo, tmp, workers, envoy_workers, config)
    # One worker: pinned to core 0. More than one cannot share one core meaningfully.
    n = workers if system == "podproxy" else envoy_workers if system == "envoy" else 1
    if n == 1:
        argv = pin(0, argv)
    p = procs.start(system, argv, tmp / f"{system}.log")
    port, _ = topo.ports[system]
    try:
        wait_port(topo.listen_host, port, p, system)
        # Ready means it proxies, not only that it listens (Envoy binds before it is warm).
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_get(topo.listen_host, port).startswith(b"HTTP/1.1 200"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system} does not answer 200")
            time.sleep(0.1)
    except Exception as exc:
        procs.stop(p)
        log = (tmp / f"{system}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{system} failed to start ({exc!r}):\n{log}") from None
    return p


# wrk ----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, p50/p99 in ms and error counts from `wrk --latency` output."""
    res: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M):
            res[key] = _ms(m.group(1))
    errors = 0
    detail = []
    if m := re.search(
        r"Socket errors: (connect (\d+), read (\d+), write (\d+), timeout (\d+))", out
    ):
        errors += sum(int(g) for g in m.groups()[1:])
        detail.append(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
        detail.append(f"non-2xx {m.group(1)}")
    res["errors"] = errors
    if detail:
        res["error_detail"] = "; ".join(detail)
    return res


def run_wrk(host: str, port: int, sc: Scenario, duration: int, tmp: Path) -> dict[str, float]:
    args = [a.format(upload_lua=tmp / "upload.lua") for a in sc.args]
    conns = sc.connections
    argv = pin(1, ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
                   *args, f"http://{host}:{port}{sc.path}"])  # fmt: skip
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        ).stdout
    except subprocess.TimeoutExpired:
        return {"rps": 0.0, "errors": -1}
    return parse_wrk(out)


# HTTP/2 and gRPC ----------------------------------------------------------------------------

H2_SYSTEMS = ("direct", "podproxy", "envoy")
GRPC_PEER = HERE / "grpc_peer.py"


def start_h2_backends(procs: Procs, tmp: Path) -> tuple[tuple[str, int], ...]:
    """nginx h2c backends on the HTTP/1 backends' hosts, another port."""
    reply = h2bench.write_grpc_reply(tmp / "docroot")
    port = free_port(BACKEND_HOSTS)
    addrs = tuple((h, port) for h in BACKEND_HOSTS)
    for addr in addrs:
        conf = tmp / f"backend-h2-{addr[0]}.conf"
        conf.write_text(h2bench.nginx_h2_backend_conf(tmp, addr, reply, NOFILE_NOW))
        p = procs.start(
            f"h2 backend {addr[0]}",
            pin(1, ["nginx", "-c", str(conf), "-p", str(tmp)]),
            tmp / f"backend-h2-{addr[0]}.log",
        )
        wait_port(*addr, p, f"nginx h2c backend {addr[0]}")
    return addrs


def start_grpc_pods(procs: Procs, tmp: Path) -> tuple[tuple[str, int], ...]:
    """grpcio pods (grpc_peer.py serve), one process each, on the backends' hosts."""
    port = free_port(BACKEND_HOSTS)
    addrs = tuple((h, port) for h in BACKEND_HOSTS)
    for host, _ in addrs:
        p = procs.start(
            f"grpc pod {host}",
            pin(1, [PY, str(GRPC_PEER), "serve", f"{host}:{port}"]),
            tmp / f"grpc-pod-{host}.log",
        )
        wait_port(host, port, p, f"grpc pod {host}")
    return addrs


def h2_unavailable(sc: h2bench.H2Scenario) -> str | None:
    """Why scenario `sc` cannot run here, or None."""
    if sc.tool == "h2load" and not shutil.which("h2load"):
        return "h2load not found (Debian nghttp2-client; make bench installs it)"
    if sc.tool == "grpc":
        try:
            import grpc  # noqa: F401
        except ImportError:
            return "grpcio not installed (pip install -e '.[test]')"
    return None


def run_h2_scenario(
    sc: h2bench.H2Scenario,
    system: str,
    target: list[tuple[str, int]],
    duration: int,
    tmp: Path,
) -> dict[str, Any]:
    """One run of `sc` against `target` (the proxy, or the backends for "direct")."""
    host, port = target[0]
    if sc.tool == "h2load":
        log = tmp / f"h2load-{system}.tsv"
        argv = h2bench.h2load_argv(f"http://{host}:{port}{sc.path}", sc, duration, log)
        return h2bench.run_h2load(pin(1, argv), duration, log)
    if sc.tool == "grpc":
        targets = [f"{h}:{p}" for h, p in target]
        argv = h2bench.grpc_load_argv(PY, GRPC_PEER, targets, sc, duration)
        return h2bench.run_grpc_load(pin(1, argv), duration)
    return run_wrk(host, port, Scenario(sc.name, sc.title, sc.connections, sc.path), duration, tmp)


def run_h2(
    procs: Procs,
    topo: configs.Topology,
    tmp: Path,
    args: argparse.Namespace,
    systems: list[str],
    scenarios: list[h2bench.H2Scenario],
    duration: int,
    say: Any,
) -> dict[str, Any]:
    """The HTTP/2 part: its backends, each proxy on the h2 config, the scenarios in rounds,
    then idle h2c connections' memory. Returns the run's `h2` section."""
    out: dict[str, Any] = {"scenarios": {}, "results": {}, "skipped": {}, "failures": {}}
    runnable = []
    for sc in scenarios:
        why = h2_unavailable(sc)
        if why is None:
            runnable.append(sc)
        else:
            out["skipped"][sc.name] = why
            say(f"skipping {sc.name}: {why}")
    h2_backends = start_h2_backends(procs, tmp)
    pods = start_grpc_pods(procs, tmp) if any(sc.tool == "grpc" for sc in runnable) else ()
    for system in systems:
        if system != "direct":
            topo.ports[system] = (free_port(), free_port())

    def config(system: str) -> str:
        return h2bench.envoy_h2_yaml(topo, system, h2_backends, pods)

    running: dict[str, subprocess.Popen[bytes] | None] = {}
    for system in systems:
        if system == "direct":
            running[system] = None
            continue
        try:
            running[system] = start_proxy(
                procs, system, topo, tmp, args.podproxy_workers, args.envoy_workers, config(system)
            )
        except RuntimeError as exc:
            out["skipped"][system] = str(exc)
            say(f"skipping {system} (HTTP/2): {exc}")
    rss: dict[str, dict[str, int]] = {}
    load: dict[str, float] = {}
    direct = {"h2": list(h2_backends), "pods": list(pods)}
    for sc in runnable:
        out["scenarios"][sc.name] = sc.title
        load[sc.name] = round(os.getloadavg()[0], 2)
        targets = {
            s: direct[sc.direct] if s == "direct" else [(topo.listen_host, topo.ports[s][0])]
            for s in running
            if s != "direct" or sc.direct
        }
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in targets}
        for _ in range(args.reps):
            for system, target in targets.items():
                runs[system].append(run_h2_scenario(sc, system, target, duration, tmp))
                proc = running[system]
                if proc is not None:
                    rss.setdefault(system, {})[sc.name] = memory.rss_kib(proc.pid)
        out["results"][sc.name] = {s: h2bench.median_run(r) for s, r in runs.items()}
        say(h2bench.scenario_table(sc.title, out["results"][sc.name], load[sc.name]))
    for proc in running.values():
        if proc is not None:
            procs.stop(proc)
    out["rss_kib_after_scenario"] = rss
    out["loadavg_1min_at_scenario_start"] = load
    if runnable:
        say(h2bench.summary_table(out))
        say(h2bench.targets_table(out))
    if not args.skip_memory:
        out["idle_memory"] = mem = {}
        for system in running:
            if system == "direct":
                continue
            port = free_port()
            topo.ports[system] = (port, free_port())
            try:
                proc = start_proxy(
                    procs, system, topo, tmp, args.podproxy_workers, args.envoy_workers,
                    config(system),
                )  # fmt: skip
                try:
                    mem[system] = asyncio.run(
                        memory.measure(
                            topo.listen_host, port, proc.pid, args.idle_h2_connections, h2c=True
                        )
                    )
                finally:
                    procs.stop(proc)
            except Exception as exc:  # one failed part must not lose the run's results
                out["failures"][f"idle h2c memory {system}"] = repr(exc)
                say(f"idle h2c memory of {system} failed: {exc!r}")
        say(memory.table(mem, "idle h2c connections"))
    return out


# The run ------------------------------------------------------------------------------------


def median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the median req/s (its own p50/p99, so the numbers belong together)."""
    ok = sorted((r for r in runs if "rps" in r), key=lambda r: r["rps"])
    if not ok:
        return {}
    med: dict[str, object] = dict(ok[len(ok) // 2])
    med["runs_rps"] = [r["rps"] for r in runs if "rps" in r]
    return med


def fmt_rps(v: float) -> str:
    return f"{v:,.0f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def table(title: str, rows: dict[str, dict[str, Any]], loadavg: float | None = None) -> str:
    base = rows.get("envoy", {}).get("rps")
    if loadavg is not None:
        title += f" (load average {loadavg:.1f} at start)"
    lines = [f"### {title}", "", "| system | req/s | p50 | p99 | vs Envoy |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for system, r in rows.items():
        if not r:
            lines.append(f"| {system} | failed | - | - | - |")
            continue
        ratio = f"{r['rps'] / base:.2f}x" if base else "-"
        err = f" ({int(r['errors'])} errors)" if r.get("errors") else ""
        lines.append(
            f"| {system} | {fmt_rps(r['rps'])}{err} | {fmt_ms(r.get('p50_ms'))} | "
            f"{fmt_ms(r.get('p99_ms'))} | {ratio} |"
        )
    return "\n".join(lines)


def summary_table(doc: dict[str, Any]) -> str:
    """All scenarios in one table: req/s and its ratio to Envoy's, one row per system."""
    names = [n for n in doc["scenarios"] if n in doc["results"]]
    systems = [s for s in SYSTEMS if any(s in doc["results"][n] for n in names)]
    lines = [
        "### req/s (ratio to Envoy), all scenarios",
        "",
        "| system | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for system in systems:
        cells = []
        for n in names:
            r = doc["results"][n].get(system) or {}
            base = doc["results"][n].get("envoy", {}).get("rps")
            if "rps" not in r:
                cells.append("-")
            elif base:
                cells.append(f"{fmt_rps(r['rps'])} ({r['rps'] / base:.2f}x)")
            else:
                cells.append(fmt_rps(r["rps"]))
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The targets, checked on the medians of one run: (scenario, other system, least ratio).
TARGETS = (
    ("ka50", "envoy", 1.0),
    ("close50", "envoy", 0.8),
    *((sc.name, "aiohttp", 3.0) for sc in SCENARIOS),
)
# Latency targets: podproxy's percentile no higher than Envoy's.
LATENCY_TARGETS = (("ka50", "p99_ms"), ("ka1", "p50_ms"))


def targets_table(doc: dict[str, Any]) -> str:
    """podproxy's req/s over another system's, per target, with met or not. Also the ratio to
    the bare forwarder (the least a uvloop + httptools proxy costs), which has no target."""
    res = doc["results"]
    lines = [
        "### targets (podproxy req/s over the other system's, same run)",
        "",
        "| scenario | vs | ratio | target | met |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    rows = [*TARGETS, *((sc.name, "bare", None) for sc in SCENARIOS)]
    for name, other, least in rows:
        mine = res.get(name, {}).get("podproxy", {}).get("rps")
        theirs = res.get(name, {}).get(other, {}).get("rps")
        if not mine or not theirs:
            continue
        ratio = mine / theirs
        if least is None:
            lines.append(f"| {name} | {other} | {ratio:.2f}x | - | - |")
        else:
            met = "yes" if ratio >= least else "no"
            lines.append(f"| {name} | {other} | {ratio:.2f}x | {least:.1f}x | {met} |")
    for name, key in LATENCY_TARGETS:
        mine = res.get(name, {}).get("podproxy", {}).get(key)
        theirs = res.get(name, {}).get("envoy", {}).get(key)
        if mine is None or theirs is None:
            continue
        pct = key.split("_")[0]
        met = "yes" if mine <= theirs else "no"
        lines.append(
            f"| {name} {pct} | envoy | {fmt_ms(mine)} vs {fmt_ms(theirs)} | not higher | {met} |"
        )
    return "\n".join(lines)


def rss_table(rss: dict[str, dict[str, int]], names: list[str]) -> str:
    """Each proxy's RSS (MiB) after each scenario: flat across 1 MiB bodies means streamed."""
    lines = [
        "### proxy resident memory after each scenario (MiB)",
        "",
        "| system | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for system, by in rss.items():
        cells = [f"{by[n] / 1024:.1f}" if n in by else "-" for n in names]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install -e '.[bench]')")
        return
    names = [sc.name for sc in SCENARIOS if sc.name in results]
    if not names:  # a run of HTTP/2 scenarios only: their tables are the report
        return
    systems = [s for s in SYSTEMS if any(s in results[n] for n in names)]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        vals = []
        for n in names:
            base = results[n].get("envoy", {}).get("rps") or 0
            v = results[n].get(system, {}).get("rps") or 0
            vals.append(v / base if base else 0)
        ax.bar([x + i * width for x in range(len(names))], vals, width, label=system)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(names))], names)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("req/s relative to Envoy (--concurrency 1)")
    ax.set_title(f"podproxy bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    ax.legend(ncols=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def git_describe() -> str:
    """The commit measured, `+dirty` when the tree had uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    p.add_argument("--duration", type=int, help="seconds per wrk run (10; 3 with --quick)")
    p.add_argument("--reps", type=int, default=3, help="rounds per scenario (median reported)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    p.add_argument(
        "--scenarios",
        default=",".join(s.name for s in (*SCENARIOS, *h2bench.H2_SCENARIOS)),
        help="comma-separated subset, HTTP/1 and HTTP/2 names alike",
    )
    p.add_argument(
        "--podproxy-workers", type=int, default=1, help="podproxy --concurrency N (unpinned if > 1)"
    )
    p.add_argument(
        "--envoy-workers", type=int, default=1, help="Envoy --concurrency N (unpinned if > 1)"
    )
    p.add_argument("--skip-micro", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-discovery", action="store_true")
    p.add_argument("--skip-h2", action="store_true", help="no HTTP/2 or gRPC scenarios")
    p.add_argument("--idle-connections", type=int, default=10_000)
    p.add_argument("--idle-h2-connections", type=int, default=5_000)
    p.add_argument("--output", default=str(RESULTS / "latest.json"))
    p.add_argument("--render", metavar="JSON", help="only re-write the .md and .png of a run")
    args = p.parse_args(argv)
    if args.render:
        return render_main(args.render)
    # SIGTERM, and SIGINT even when a shell started us in the background with it ignored,
    # unwind through the `finally` below, which stops every process this run started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    duration = args.duration or (3 if args.quick else 10)
    nofile = raise_nofile()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            print(f"error: {tool} not found (make bench installs it)", file=sys.stderr)
            return 1
    wanted = [s for s in SYSTEMS if s in args.systems.split(",")]
    scenarios = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    h2_scenarios = [s for s in h2bench.H2_SCENARIOS if s.name in args.scenarios.split(",")]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    report: list[str] = []
    failures: dict[str, str] = {}

    def say(text: str) -> None:
        report.append(text)
        print(text + "\n", flush=True)

    skipped: dict[str, str] = {}
    extra: dict[str, object] = {}
    procs = Procs()
    # The tree the proxies load, taken before they start: edits made during the run are not
    # measured and must not mark it dirty.
    tree = git_describe()
    tmp = Path(tempfile.mkdtemp(prefix="podproxy-bench-"))
    (tmp / "upload.lua").write_text(UPLOAD_LUA)
    started = time.time()
    try:
        backends = start_backends(procs, tmp)
        ports = {s: (free_port(), free_port()) for s in wanted if s != "direct"}
        topo = configs.Topology(backends=backends, ports=ports)
        running: dict[str, subprocess.Popen[bytes] | None] = {}
        for system in wanted:
            if system == "direct":
                running[system] = None
                continue
            why = available(system)
            if why is None:
                try:
                    running[system] = start_proxy(
                        procs, system, topo, tmp, args.podproxy_workers, args.envoy_workers
                    )
                except RuntimeError as exc:
                    why = str(exc)
            if why is not None:
                skipped[system] = why
                print(f"skipping {system}: {why}", file=sys.stderr)
        systems = list(running)
        pinned = "proxy on core 0, wrk and backends on core 1" if two_cores() else "unpinned"
        say(
            f"podproxy bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
            f"tree {tree}: {os.cpu_count()} cores ({pinned}); wrk -t1, "
            f"{duration} s runs, {args.reps} rounds, median; systems: {', '.join(systems)}; "
            f"fd limit {nofile}"
        )
        if not args.skip_micro:
            import micro

            rows = micro.cases(0.3 if args.quick else 1.0)
            extra["micro_ops_per_s"] = dict(rows)
            say("### micro-benchmarks (bench/micro.py)\n\n" + micro.table(rows))
        rss: dict[str, dict[str, int]] = {}
        load: dict[str, float] = {}
        for sc in scenarios:
            # Other work on the machine skews every system; the load average says how much.
            load[sc.name] = round(os.getloadavg()[0], 2)
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
            for _ in range(args.reps):
                for system in systems:
                    if system == "direct":
                        host, port = backends[0]
                    else:
                        host, port = topo.listen_host, topo.ports[system][0]
                    runs[system].append(run_wrk(host, port, sc, duration, tmp))
                    proc = running[system]
                    if proc is not None:
                        rss.setdefault(system, {})[sc.name] = memory.rss_kib(proc.pid)
            results[sc.name] = {s: median_run(r) for s, r in runs.items()}
            say(table(sc.title, results[sc.name], load[sc.name]))
        for proc in list(running.values()):
            if proc is not None:
                procs.stop(proc)
        extra["rss_kib_after_scenario"] = rss
        extra["loadavg_1min_at_scenario_start"] = load
        if rss:
            say(rss_table(rss, [sc.name for sc in scenarios]))
        if not args.skip_memory:
            mem_systems = [s for s in ("podproxy", "envoy", "nginx", "haproxy") if s in running]
            extra["idle_memory"] = mem = {}
            for system in mem_systems:
                port = free_port()
                topo.ports[system] = (port, free_port())
                try:
                    proc = start_proxy(
                        procs, system, topo, tmp, args.podproxy_workers, args.envoy_workers
                    )
                    try:
                        mem[system] = asyncio.run(
                            memory.measure(topo.listen_host, port, proc.pid, args.idle_connections)
                        )
                    finally:
                        procs.stop(proc)
                except Exception as exc:  # one failed part must not lose the run's results
                    failures[f"idle_memory {system}"] = repr(exc)
                    say(f"idle memory of {system} failed: {exc!r}")
            say(memory.table(mem))
        h2_systems = [s for s in H2_SYSTEMS if s in running]
        if not args.skip_h2 and h2_scenarios and h2_systems:
            try:
                extra["h2"] = run_h2(
                    procs, topo, tmp, args, h2_systems, h2_scenarios, duration, say
                )
            except Exception as exc:  # e.g. a backend that would not start
                failures["h2"] = repr(exc)
                say(f"HTTP/2 scenarios failed: {exc!r}")
        if not args.skip_discovery:
            try:
                import discovery

                extra["discovery"] = disc = asyncio.run(discovery.measure())
                say(discovery.table(disc))
            except Exception as exc:  # e.g. a podproxy API that changed under the bench
                failures["discovery"] = repr(exc)
                say(f"discovery at scale failed: {exc!r}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {
            "cpus": os.cpu_count(),
            "pinned": two_cores(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "podproxy_tree": tree,
        "settings": {
            "duration_s": duration,
            "reps": args.reps,
            "podproxy_workers": args.podproxy_workers,
            "envoy_workers": args.envoy_workers,
            "wrk_threads": 1,
        },
        "scenarios": {sc.name: sc.title for sc in scenarios},
        "results": results,
        "skipped": skipped,
        "failures": failures,
        **extra,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    write_outputs(doc, out)
    return 0


def header(doc: dict[str, Any]) -> str:
    m, st = doc["machine"], doc["settings"]
    pinned = "proxy on core 0, wrk and backends on core 1" if m["pinned"] else "unpinned"
    return (
        f"podproxy bench, {doc['date']}, tree {doc.get('podproxy_tree', '?')}: "
        f"{m['cpus']} cores ({pinned}); wrk -t1, {st['duration_s']} s runs, {st['reps']} rounds, "
        f"median; podproxy --concurrency {st['podproxy_workers']}, "
        f"Envoy --concurrency {st.get('envoy_workers', 1)}"
    )


def report_from(doc: dict[str, Any]) -> str:
    """Every table of a run, as markdown, from its JSON."""
    import discovery
    import micro

    parts = [header(doc)]
    if doc["results"]:  # not in a run of HTTP/2 scenarios only
        parts += [summary_table(doc), targets_table(doc)]
    if doc.get("micro_ops_per_s"):
        rows = list(doc["micro_ops_per_s"].items())
        parts.append("### micro-benchmarks (bench/micro.py)\n\n" + micro.table(rows))
    for name, title in doc["scenarios"].items():
        if name in doc["results"]:
            loadavg = doc.get("loadavg_1min_at_scenario_start", {}).get(name)
            parts.append(table(title, doc["results"][name], loadavg))
    if doc.get("rss_kib_after_scenario"):
        parts.append(rss_table(doc["rss_kib_after_scenario"], list(doc["scenarios"])))
    if doc.get("idle_memory"):
        parts.append(memory.table(doc["idle_memory"]))
    if doc.get("h2"):
        parts += h2bench.report(doc["h2"], rss_table, memory.table)
    if doc.get("discovery"):
        parts.append(discovery.table(doc["discovery"]))
    for system, why in doc.get("skipped", {}).items():
        parts.append(f"skipped {system}: {why.splitlines()[0]}")
    for what, why in doc.get("failures", {}).items():
        parts.append(f"failed {what}: {why.splitlines()[0]}")
    return "\n\n".join(parts) + "\n"


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    out.with_suffix(".md").write_text(report_from(doc))
    chart(doc["results"], out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def render_main(path: str) -> int:
    """`--render FILE.json`: write FILE.md and FILE.png again from a saved run."""
    out = Path(path)
    write_outputs(json.loads(out.read_text()), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
