"""Access logs end to end with the real CLI and `--concurrency 2`: the workers write the
HCM's log, the main the admin's; `POST /reopen_logs` and SIGUSR1 make every process reopen
its files after logrotate renamed them."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml

from integration.backends import Backend, ProxyProcess, raw_exchange, wait_until
from integration.configs import bootstrap_yaml
from podproxy.config.schema import FILE_ACCESS_LOG_TYPE

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def get(port: int, path: str) -> bytes:
    request = f"GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n".encode()
    return await raw_exchange("127.0.0.1", port, request)


async def test_reopen_logs_reaches_workers_and_admin(
    podproxy_process: StartProxy,
    backend: StartBackend,
    free_port: Callable[..., int],
    tmp_path: Path,
) -> None:
    b = await backend()
    port, admin_port = free_port(), free_port()
    hcm_log, admin_log = tmp_path / "access.log", tmp_path / "admin.log"
    cfg = yaml.safe_load(bootstrap_yaml(port, admin_port, [(b.host, b.port)], access_log=admin_log))
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_ACCESS_LOG_TYPE,
                "path": str(hcm_log),
                "log_format": {"json_format": {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}},
            },
        }
    ]
    proc = await podproxy_process(yaml.safe_dump(cfg), "--concurrency", "2")

    async def serve(tag: str, n: int) -> None:
        for i in range(n):
            # The backend answers 404 for paths it has no behaviour for: any answer will do.
            assert (await get(port, f"/{tag}/{i}")).startswith(b"HTTP/1.1 404")

    async def admin(method: str, path: str) -> bytes:
        request = f"{method} {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode()
        return await raw_exchange("127.0.0.1", admin_port, request)

    await serve("first", 10)
    await wait_until(lambda: len(lines(hcm_log)) == 10, timeout=10.0)
    # Two workers append to the file, each in its own batches: compare as a set.
    logged = [yaml.safe_load(line) for line in lines(hcm_log)]
    assert sorted(e["path"] for e in logged) == sorted(f"/first/{i}" for i in range(10))
    assert {e["code"] for e in logged} == {404}

    os.rename(hcm_log, tmp_path / "access.log.1")
    os.rename(admin_log, tmp_path / "admin.log.1")
    assert (await admin("POST", "/reopen_logs")).startswith(b"HTTP/1.1 200")
    await serve("second", 10)
    await wait_until(lambda: len(lines(hcm_log)) == 10, timeout=10.0)
    assert all("/second/" in line for line in lines(hcm_log))
    assert len(lines(tmp_path / "access.log.1")) == 10
    # The admin's own log reopened too: the reopen request itself went to the old file
    # (it was logged after it was answered, as the rename had happened before it).
    await admin("GET", "/ready")
    await wait_until(lambda: any("/ready" in line for line in lines(admin_log)), timeout=10.0)

    os.rename(hcm_log, tmp_path / "access.log.2")
    os.kill(proc.pid, signal.SIGUSR1)  # logrotate's postrotate
    await wait_until(lambda: hcm_log.exists(), timeout=10.0)
    await serve("third", 5)
    await wait_until(lambda: len(lines(hcm_log)) == 5, timeout=10.0)
    assert all("/third/" in line for line in lines(hcm_log))
    assert len(lines(tmp_path / "access.log.2")) == 10
