"""`podproxy sandbox`: the scripted run end to end, the operations, the view and cleanup."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from integration.backends import free_port
from rich.console import Console

from podproxy.sandbox.grpc_config import GRPC_POD_PORT, GRPC_V3_YAML
from podproxy.sandbox.main import parse_args
from podproxy.sandbox.scenario import (
    Action,
    Options,
    Scenario,
    parse_duration,
    parse_membership,
    parse_script,
)
from podproxy.sandbox.seed_config import SEED_V2_YAML
from podproxy.sandbox.view import handle_key, render, summary

ROOT = Path(__file__).resolve().parents[2]


def test_seed_config_is_the_example_verbatim() -> None:
    assert (ROOT / "examples" / "seed-v2.yaml").read_text() == SEED_V2_YAML


def test_parse_script() -> None:
    assert parse_script("scale 3 @5s; kill httpd-0 @2s;unready httpd-1 @ 3s; ready httpd-1 @4") == [
        Action(2.0, "kill", "httpd-0"),
        Action(3.0, "unready", "httpd-1"),
        Action(4.0, "ready", "httpd-1"),
        Action(5.0, "scale", "3"),
    ]
    for bad in ("scale three @5s", "explode httpd-0 @1s", "scale 3", "scale 999 @1s"):
        with pytest.raises(ValueError, match="bad script step"):
            parse_script(bad)
    assert parse_duration("20s") == 20 and parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_bad_options_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--script", "scale x @1s"], ["--duration", "forever"], ["--replicas", "-1"]):
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 2
    assert "bad script step" in capsys.readouterr().err


def test_grpc_option_picks_the_grpc_config_and_port() -> None:
    opts = parse_args(["--grpc"])
    assert opts.grpc and opts.config_text == GRPC_V3_YAML and opts.pod_port == GRPC_POD_PORT
    assert parse_args(["--grpc", "--pod-port", "6000"]).pod_port == 6000
    plain = parse_args([])
    assert not plain.grpc and plain.pod_port == 8080 and plain.config_text == SEED_V2_YAML


def test_parse_membership() -> None:
    text = (
        "httpd::observability_name::httpd\n"
        "httpd::127.0.1.2:8080::health_flags::healthy\n"
        "httpd::127.0.1.1:8080::health_flags::healthy\n"
        "other::127.0.9.9:80::health_flags::healthy\n"
    )
    assert parse_membership(text) == ["127.0.1.1:8080", "127.0.1.2:8080"]


def config_for(listen: int, admin: int, pod_port: int) -> str:
    return (
        SEED_V2_YAML.replace("port_value: 10000", f"port_value: {listen}")
        .replace("port_value: 9901", f"port_value: {admin}")
        .replace("port_value: 8080", f"port_value: {pod_port}")
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("/tmp/admin_access.log", "/dev/null")
    )


def grpc_config_for(listen: int, admin: int, pod_port: int) -> str:
    return (
        GRPC_V3_YAML.replace("port_value: 10000", f"port_value: {listen}")
        .replace("port_value: 9901", f"port_value: {admin}")
        .replace("port_value: 50051", f"port_value: {pod_port}")
    )


@pytest.fixture
async def scenario(loopback_ip: Callable[[int], str]) -> AsyncIterator[Scenario]:
    opts = Options(
        replicas=2,
        config_text=config_for(free_port(), free_port(), free_port(loopback_ip(0))),
        base_ip=loopback_ip(0),
        grace=1.0,
        rps=60,
    )
    opts.pod_port = int(re.findall(r"port_value: (\d+)", opts.config_text)[1])
    sc = Scenario(opts)
    try:
        await sc.start()
        yield sc
    finally:
        await sc.stop()


async def wait_for(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


async def test_operations_and_view(scenario: Scenario) -> None:
    sc = scenario
    await wait_for(lambda: len(sc.membership) == 2 and len(sc.dns_answer) == 2, 5)
    await wait_for(lambda: {"httpd-0", "httpd-1"} <= set(sc.load.stats.by_pod), 5)
    stop = asyncio.Event()
    await handle_key(sc, "+", stop)  # scale up
    await wait_for(lambda: sc.load.stats.by_pod["httpd-2"] > 0, 8)
    await handle_key(sc, "u", stop)  # newest ready pod unready: leaves DNS
    await wait_for(lambda: len(sc.dns_answer) == 2, 3)
    await handle_key(sc, "r", stop)
    await wait_for(lambda: len(sc.dns_answer) == 3, 3)
    await handle_key(sc, "-", stop)  # scale down the Kubernetes way
    await wait_for(lambda: len(sc.membership) == 2, 8)
    await handle_key(sc, "q", stop)
    assert stop.is_set()
    console = Console(width=120, record=True, force_terminal=False)
    console.print(render(sc))
    console.print(summary(sc))
    text = console.export_text()
    assert "httpd-discovery.mynamespace.svc.cluster.local" in text
    assert "httpd-2" in text and "terminating" in text
    assert "first request after joining DNS" in text
    assert sc.load.stats.errors == 0, sc.load.stats.error_reasons


async def test_kill_is_an_outage_the_proxy_survives(scenario: Scenario) -> None:
    sc = scenario
    await wait_for(lambda: len(sc.membership) == 2, 5)
    await sc.kill("httpd-1")
    await wait_for(lambda: len(sc.membership) == 1, 10)
    ok = sc.load.stats.ok
    await wait_for(lambda: sc.load.stats.ok > ok + 20, 5)
    assert any("killed httpd-1" in e.text for e in sc.events)
    with pytest.raises(ValueError, match="no pod named"):
        sc.set_ready("httpd-9", False)


@pytest.fixture
async def grpc_scenario(loopback_ip: Callable[[int], str]) -> AsyncIterator[Scenario]:
    pod_port = free_port(loopback_ip(0))
    opts = Options(
        replicas=2,
        config_text=grpc_config_for(free_port(), free_port(), pod_port),
        base_ip=loopback_ip(0),
        pod_port=pod_port,
        grace=1.0,
        rps=60,
        grpc=True,
    )
    sc = Scenario(opts)
    try:
        await sc.start()
        yield sc
    finally:
        await sc.stop()


async def test_grpc_calls_spread_through_the_proxy_and_stay_pinned_through_a_service(
    grpc_scenario: Scenario,
) -> None:
    sc = grpc_scenario
    grpc = sc.grpc_load
    assert grpc is not None and grpc.pinned is not None
    await wait_for(lambda: len(sc.membership) == 2 and len(sc.dns_answer) == 2, 8)
    await wait_for(lambda: {"grpc-0", "grpc-1"} <= set(grpc.stats.by_pod), 5)
    stop = asyncio.Event()
    await handle_key(sc, "+", stop)  # scale up: the one channel's calls reach the new pod
    await wait_for(lambda: grpc.stats.by_pod["grpc-2"] > 0, 10)
    await handle_key(sc, "-", stop)  # and leave it again, the Kubernetes way
    await wait_for(lambda: len(sc.membership) == 2, 10)
    # The plain Service's one connection never left the pod it was made to.
    assert len(grpc.service.by_pod) == 1 and grpc.pinned.connections == 1, grpc.service
    assert grpc.proxy_connections == 1
    console = Console(width=160, record=True, force_terminal=False)
    console.print(render(sc))
    console.print(summary(sc))
    text = console.export_text()
    assert "grpc-discovery.mynamespace.svc.cluster.local" in text
    assert "via plain Service" in text and "1 HTTP/2 connection(s)" in text
    assert "grpc-2" in text and "terminating" in text
    assert grpc.stats.errors == 0, grpc.stats.error_reasons
    assert grpc.service.errors == 0, grpc.service.error_reasons


def _run_sandbox(
    tmp_path: Path, loopback: Callable[[int], str], *args: str
) -> subprocess.Popen[str]:
    pod_port = free_port(loopback(0))
    cfg = tmp_path / "envoy.yaml"
    make = grpc_config_for if "--grpc" in args else config_for
    cfg.write_text(make(free_port(), free_port(), pod_port))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podproxy",
            "sandbox",
            "-c",
            str(cfg),
            "--base-ip",
            loopback(0),
            "--pod-port",
            str(pod_port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "140"},
    )


def _proxy_pid(output: str) -> int:
    m = re.search(r"started podproxy \(pid (\d+)\)", output)
    assert m, output
    return int(m.group(1))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_scripted_run_prints_a_summary_and_cleans_up(
    tmp_path: Path, loopback_ip: Callable[[int], str]
) -> None:
    proc = _run_sandbox(
        tmp_path,
        loopback_ip,
        "--script",
        "scale 3 @2s; scale 1 @6s",
        "--duration",
        "10s",
        "--grace",
        "2s",
        "--rps",
        "40",
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "summary" in out and " 0 errors" in out, out
    assert re.search(r"httpd-2 .*stopped", out), out
    assert _gone(_proxy_pid(out))


def test_grpc_scripted_run_prints_both_sides_and_cleans_up(
    tmp_path: Path, loopback_ip: Callable[[int], str]
) -> None:
    proc = _run_sandbox(
        tmp_path,
        loopback_ip,
        "--grpc",
        "--script",
        "scale 3 @2s; scale 1 @6s",
        "--duration",
        "10s",
        "--grace",
        "2s",
        "--rps",
        "40",
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert re.search(
        r"through podproxy: \d+ calls on 1 channel \(1 HTTP/2 connection\(s\)\), \d+ ok, 0 errors",
        out,
    ), out
    # Scaling to 1 may take the Service's pod away; its client then connects (and picks) again.
    assert re.search(r"through a plain Service: \d+ calls on [12] connection", out), out
    assert re.search(r"grpc-2 .*stopped", out), out
    assert _gone(_proxy_pid(out))


def test_ctrl_c_stops_everything(tmp_path: Path, loopback_ip: Callable[[int], str]) -> None:
    proc = _run_sandbox(tmp_path, loopback_ip)
    try:
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert _gone(_proxy_pid(out))
    assert "summary" in out
