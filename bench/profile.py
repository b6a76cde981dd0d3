"""Where podproxy spends its time under load: py-spy samples while wrk drives one scenario.

`python bench/profile.py [--scenario ka50] [--src DIR] [--duration 10] [--top 25]`

Three nginx backends on core 1, podproxy pinned to core 0 (as in `make bench`), py-spy attached
by pid, wrk on core 1. Prints wrk's req/s and the top frames by own time (where the CPU was)
and by total time (what it was doing on behalf of). `--src DIR` profiles another tree's
`src/` (an old commit checked out with `git worktree add`), for a before/after comparison.
Line numbers are dropped, so a function is one row however many lines it spends time on.
Benchmarks, never tests.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import configs
import h2bench
import run

# "name (path/file.py:123)" -> "name (file.py)"
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+?)(?::\d+)?\)$")


def short(frame: str, lines: bool = False) -> str:
    if lines:
        return frame.replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    marker = "/podproxy/"
    where = path[path.rindex(marker) + 1 :] if marker in path else os.path.basename(path)
    return f"{m.group('name')} ({where})"


def aggregate(
    raw: str, lines: bool = False
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Own and total sample counts per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [short(f, lines) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        n += c
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    return own, total, n


def top_table(title: str, counts: collections.Counter[str], n: int, k: int) -> str:
    rows = [f"| {title} | share |", "| --- | ---: |"]
    for name, c in counts.most_common(k):
        rows.append(f"| `{name}` | {100 * c / n:.1f}% |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario",
        default="ka50",
        choices=[s.name for s in run.SCENARIOS] + [s.name for s in h2bench.H2_SCENARIOS],
    )
    p.add_argument("--src", help="profile this src/ directory instead of the installed podproxy")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    p.add_argument("--lines", action="store_true", help="one row per source line, not function")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(run.PY).parent / "py-spy")
    for tool in ("wrk", "nginx", spy):
        if not shutil.which(tool):
            print(f"error: {tool} not found (pip install -e '.[bench]')", file=sys.stderr)
            return 1
    h2sc = next((s for s in h2bench.H2_SCENARIOS if s.name == args.scenario), None)
    sc = next((s for s in run.SCENARIOS if s.name == args.scenario), None)
    if h2sc is not None and (why := run.h2_unavailable(h2sc)):
        print(f"error: {why}", file=sys.stderr)
        return 1
    run.raise_nofile()
    procs = run.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="podproxy-profile-"))
    (tmp / "upload.lua").write_text(run.UPLOAD_LUA)
    env_src = os.environ.get("PYTHONPATH")
    try:
        if args.src:
            os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
        backends = run.start_backends(procs, tmp)
        topo = configs.Topology(backends=backends, ports={"podproxy": (run.free_port(), 0)})
        topo.ports["podproxy"] = (topo.ports["podproxy"][0], run.free_port())
        yaml = None
        if h2sc is not None:
            h2_backends = run.start_h2_backends(procs, tmp)
            pods = run.start_grpc_pods(procs, tmp) if h2sc.tool == "grpc" else ()
            yaml = h2bench.envoy_h2_yaml(topo, "podproxy", h2_backends, pods)
        proxy = run.start_proxy(procs, "podproxy", topo, tmp, config=yaml)
        port = topo.ports["podproxy"][0]

        def load(seconds: int) -> dict[str, float]:
            if h2sc is not None:
                target = [(topo.listen_host, port)]
                return run.run_h2_scenario(h2sc, "podproxy", target, seconds, tmp)
            assert sc is not None
            return run.run_wrk(topo.listen_host, port, sc, seconds, tmp)

        # Warm up: pools filled, code paths hot, before the samples start.
        load(2)
        raw = tmp / "profile.txt"
        spy_argv = [spy, "record", "--pid", str(proxy.pid), "--rate", str(args.rate),
                    "--duration", str(args.duration + 2), "--format", "raw", "--output", str(raw),
                    ]  # fmt: skip
        spy_argv.append("--native" if args.native else "--nonblocking")
        spy_proc = procs.start("py-spy", run.pin(1, spy_argv), tmp / "py-spy.log")
        time.sleep(1.0)
        res = load(args.duration)
        spy_proc.wait(args.duration + 30)
        if not raw.exists():
            print((tmp / "py-spy.log").read_text(errors="replace"), file=sys.stderr)
            return 1
        own, total, n = aggregate(raw.read_text(), args.lines)
        src = args.src or "installed podproxy"
        print(
            f"## {(h2sc or sc).title}: {src}\n\nload: {res.get('rps', 0):,.0f} req/s "
            f"(under py-spy at {args.rate} Hz), p50 {res.get('p50_ms', 0):.2f} ms; "
            f"{n:,} samples\n"
        )
        print(top_table("own time", own, n, args.top) + "\n")
        print(top_table("total time", total, n, args.top))
    finally:
        procs.stop_all()
        if env_src is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_src
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
