"""The `podproxy` command: flags, --mode validate, log shape and level, one-line errors."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.backends import ProxyProcess
from integration.configs import bootstrap_yaml

from podproxy import __version__, cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PODPROXY = (sys.executable, "-m", "podproxy")
# `[2026-11-26 06:00:00.123][1234][info][main] message`
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[(\w+)\]\[(\w+)\] \S")


def static_config(admin_port: int, listener_port: int, upstream_port: int = 1) -> str:
    return bootstrap_yaml(listener_port, admin_port, [("127.0.0.1", upstream_port)], cluster="c")


@pytest.fixture(autouse=True)
def _restore_podproxy_logger() -> Iterator[None]:
    """cli.main() configures the `podproxy` logger; put it back for the tests that follow."""
    logger = logging.getLogger("podproxy")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODPROXY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# --- --mode validate ---------------------------------------------------------------------------


def test_validate_ok_prints_envoys_line(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "static.yaml")
    assert cli.main(["--mode", "validate", "-c", path, "-l", "off"]) == 0
    out = capsys.readouterr().out
    assert out == f"configuration '{path}' OK\n"


def test_validate_ok_as_a_subprocess_binds_nothing(
    tmp_path: Path, free_port: Callable[..., int]
) -> None:
    # Its ports are held by us: validation must neither bind them nor care.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(static_config(port, port))
        r = run_cli("--mode", "validate", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"configuration '{cfg}' OK\n"
    assert "Traceback" not in r.stderr


def test_validate_config_yaml_only_prints_empty_path(capsys: pytest.CaptureFixture[str]) -> None:
    text = (EXAMPLES / "static.yaml").read_text()
    assert cli.main(["--mode", "validate", "--config-yaml", text, "-l", "off"]) == 0
    assert capsys.readouterr().out == "configuration '' OK\n"


@pytest.mark.parametrize("name", ["seed-v2.yaml", "seed-v3.yaml"])
def test_validate_the_posts_configs_without_dns(name: str) -> None:
    # `httpd-discovery` resolves nowhere here: validation must not try.
    r = run_cli("--mode", "validate", "-c", str(EXAMPLES / name))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"configuration '{EXAMPLES / name}' OK\n"


def test_validate_errors_name_their_yaml_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        static_config(9901, 10000)
        .replace("connect_timeout: 0.25s", "connect_timeout: 5")
        .replace("type: STATIC", "type: STATIC\n    bogus_field: 1")
    )
    assert cli.main(["--mode", "validate", "-c", str(cfg), "-l", "off"]) == 1
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    errors = captured.err.splitlines()
    assert any(
        e.startswith("error: static_resources.clusters[0].connect_timeout:") for e in errors
    ), errors
    assert any(e.startswith("error: static_resources.clusters[0].bogus_field:") for e in errors), (
        errors
    )


def test_config_yaml_is_merged_over_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(static_config(9901, 10000))
    overlay = "static_resources: {clusters: [{name: c, connect_timeout: 5}]}"
    rc = cli.main(["--mode", "validate", "-c", str(cfg), "--config-yaml", overlay, "-l", "off"])
    assert rc == 1
    assert "connect_timeout" in capsys.readouterr().err


# --- one-line errors, no tracebacks ---------------------------------------------------------


def test_missing_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    r = run_cli("-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.yaml'}: config file not found"
    ]


def test_unreadable_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (chmod 000 would not stop root).
    r = run_cli("-c", str(tmp_path))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}"), r.stderr
    assert "Traceback" not in r.stderr


def test_no_config_at_all_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 1
    assert "--config-path" in capsys.readouterr().err


def test_concurrency_below_1_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "static.yaml")
    assert cli.main(["-c", path, "--concurrency", "0", "-l", "off"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --concurrency") and err.count("\n") == 1


@pytest.mark.parametrize("which", ["admin", "listener"])
async def test_port_in_use_is_one_line_and_exit_1(
    which: str, tmp_path: Path, free_port: Callable[..., int]
) -> None:
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        other = free_port()
        admin, listener = (busy, other) if which == "admin" else (other, busy)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(static_config(admin, listener))
        proc = ProxyProcess([*PODPROXY, "-c", str(cfg)], cfg, tmp_path / "p", None)
        try:
            rc = await proc.wait(15.0)
        finally:
            await proc.terminate(2.0)
    assert rc == 1
    err = proc.stderr_text()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    name = "admin" if which == "admin" else "listener_0"
    assert errors == [
        f"error: cannot bind listener '{name}' to 127.0.0.1:{busy}: Address already in use"
    ]


# --- flags, logging ------------------------------------------------------------------------


def test_version_flag() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"podproxy version: {__version__}"


def test_unknown_log_level_is_refused() -> None:
    r = run_cli("-c", str(EXAMPLES / "static.yaml"), "-l", "loud")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr


def test_convert_prints_v3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["convert", "-c", str(EXAMPLES / "seed-v2.yaml")]) == 0
    out = capsys.readouterr().out
    assert "typed_config" in out and "load_assignment" in out and "host_rewrite_literal" in out


def test_sandbox_subcommand_is_dispatched() -> None:
    r = run_cli("sandbox", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: podproxy sandbox")


def test_mode_names_as_envoy_prints_them() -> None:
    assert cli.MODE_NAMES == {"serve": "Serve", "validate": "Validate", "init_only": "InitOnly"}


def test_formatter_is_envoys_shape() -> None:
    record = logging.LogRecord(
        "podproxy.upstream", logging.WARNING, __file__, 1, "x %d", (1,), None
    )
    line = cli.EnvoyFormatter().format(record)
    m = LOG_LINE.match(line)
    assert m is not None, line
    assert m.groups() == ("warning", "upstream")
    assert line.endswith("] x 1")


async def _serve_and_stop(
    podproxy_process: Callable[..., object], free_port: Callable[..., int], *args: str
) -> str:
    start = podproxy_process
    proc = await start(static_config(free_port(), free_port()), *args)  # type: ignore[misc]
    assert isinstance(proc, ProxyProcess)
    assert await proc.terminate(10.0) == 0
    return proc.stderr_text()


async def test_log_lines_are_envoys_shape_at_info(
    podproxy_process: Callable[..., object], free_port: Callable[..., int]
) -> None:
    err = await _serve_and_stop(podproxy_process, free_port)
    lines = err.splitlines()
    assert lines, "no log output"
    for line in lines:
        assert LOG_LINE.match(line), line
    levels = {LOG_LINE.match(line).group(1) for line in lines}  # type: ignore[union-attr]
    assert "info" in levels


async def test_log_level_warning_drops_info_lines(
    podproxy_process: Callable[..., object], free_port: Callable[..., int]
) -> None:
    # The fixture passes `-l info` first; argparse lets the later flag win.
    err = await _serve_and_stop(podproxy_process, free_port, "-l", "warning")
    assert "[info]" not in err
    assert "[warning][main] caught SIGTERM" in err


def test_worker_processes_get_the_service_flags() -> None:
    from podproxy.server import Options

    argv = Options(config_path="c.yaml", service_cluster="front", service_node="f-1").worker_argv()
    i = argv.index("--service-cluster")
    assert argv[i : i + 4] == ["--service-cluster", "front", "--service-node", "f-1"]


def test_service_flags_override_the_bootstrap_node() -> None:
    from podproxy.config.loader import load
    from podproxy.server import Options, Server

    text = "node: {id: cfg-node, cluster: cfg-cluster, locality: {region: r1}}\n"
    server = Server(load(config_yaml=text), Options(service_node="flag-node"))
    assert server.node_info() == {
        "id": "flag-node",
        "cluster": "cfg-cluster",
        "locality": {"region": "r1"},
        "user_agent_name": "podproxy",
    }
