"""The runtime end to end: `/runtime`, `/runtime_modify` and `runtime.*` stats over real HTTP
from a podproxy process, and, with `--concurrency 2`, every modification reaching every
worker process (each worker acknowledges the snapshot it swapped in with a digest of its
own copy, which must equal the main's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from integration.backends import (
    Backend,
    ProxyProcess,
    Response,
    parse_responses,
    raw_exchange,
    wait_until,
)
from integration.configs import bootstrap_yaml
from integration.test_proxy_http import InProcessProxy
from podproxy.runtime import snapshot_digest
from podproxy.server import Options

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]

FORM = "application/x-www-form-urlencoded"


async def admin_call(
    admin: tuple[str, int], method: str, path: str, body: bytes = b"", content_type: str = ""
) -> Response:
    host, port = admin
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n"
    if content_type:
        head += f"content-type: {content_type}\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    data = await raw_exchange(host, port, head.encode() + body, timeout=5.0)
    (resp,) = parse_responses(data)
    return resp


def runtime_block(disk_root: Path) -> str:
    return f"""layered_runtime:
  layers:
  - name: base
    static_layer:
      a: 5
      nest: {{b: "x", c: true}}
      frac: {{numerator: 25, denominator: TEN_THOUSAND}}
  - name: disk
    disk_layer: {{symlink_root: {disk_root}, subdirectory: envoy}}
  - name: override
    disk_layer: {{symlink_root: {disk_root}, subdirectory: envoy, append_service_cluster: true}}
  - name: admin
    admin_layer: {{}}
"""


def make_disk(tmp_path: Path) -> Path:
    """symlink_root → v1/envoy/{a, from_disk, nest/d, front/a} (front: the service cluster)."""
    real = tmp_path / "v1" / "envoy"
    (real / "nest").mkdir(parents=True)
    (real / "front").mkdir()
    (real / "a").write_text("6\n")
    (real / "from_disk").write_text("# placeholder comment\nhello\n")
    (real / "nest" / "d").write_text("numerator: 1\ndenominator: MILLION\n")
    (real / "front" / "a").write_text("7")
    root = tmp_path / "current"
    os.symlink(tmp_path / "v1", root)
    return root


def stats_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("runtime."):
            out[name] = value
    return out


async def test_runtime_admin_endpoints_on_a_real_server(
    podproxy_process: StartProxy,
    backend: StartBackend,
    free_port: Callable[..., int],
    tmp_path: Path,
) -> None:
    b = await backend()
    admin_port = free_port()
    config = bootstrap_yaml(free_port(), admin_port, [(b.host, b.port)])
    proc = await podproxy_process(
        config + runtime_block(make_disk(tmp_path)), "--service-cluster", "front"
    )
    admin = ("127.0.0.1", admin_port)

    resp = await admin_call(admin, "GET", "/runtime")
    assert (resp.status, resp.header("content-type")) == (200, "application/json")
    doc = json.loads(resp.body)
    assert doc["layers"] == ["base", "disk", "override", "admin"]
    assert doc["entries"]["a"] == {"final_value": "7", "layer_values": ["5", "6", "7", ""]}
    assert doc["entries"]["from_disk"]["final_value"] == "hello"
    assert doc["entries"]["nest.c"]["final_value"] == "true"
    assert doc["entries"]["front.a"]["layer_values"] == ["", "7", "", ""]
    assert sorted(doc["entries"]) == [
        "a", "frac", "from_disk", "front.a", "nest.b", "nest.c", "nest.d",
    ]  # fmt: skip

    # GET is refused; POST without parameters gets the usage text.
    resp = await admin_call(admin, "GET", "/runtime_modify?a=1")
    assert (resp.status, resp.body) == (405, b"Method GET not allowed, POST required.")
    resp = await admin_call(admin, "POST", "/runtime_modify")
    assert resp.status == 400 and resp.body.startswith(b"usage: /runtime_modify?key1=value1")

    resp = await admin_call(admin, "POST", "/runtime_modify?a=8&new=x%20y")
    assert (resp.status, resp.body) == (200, b"OK\n")
    resp = await admin_call(admin, "POST", "/runtime_modify", b"form=1&new=", FORM)
    assert (resp.status, resp.body) == (200, b"OK\n")
    doc = json.loads((await admin_call(admin, "GET", "/runtime")).body)
    assert doc["entries"]["a"] == {"final_value": "8", "layer_values": ["5", "6", "7", "8"]}
    assert doc["entries"]["form"]["layer_values"] == ["", "", "", "1"]
    assert "new" not in doc["entries"]  # set, then removed by its empty value

    stats = stats_lines((await proc.admin_get("/stats")).body.decode())
    assert stats == {
        "runtime.admin_overrides_active": "1",
        "runtime.deprecated_feature_seen_since_process_start": "0",
        "runtime.deprecated_feature_use": "0",
        "runtime.load_error": "0",
        "runtime.load_success": "4",  # two at start (as Envoy), one per modification
        "runtime.num_keys": "8",
        "runtime.num_layers": "4",
        "runtime.override_dir_exists": "4",
        "runtime.override_dir_not_exists": "0",
    }
    prom = (await proc.admin_get("/stats/prometheus")).body.decode()
    assert "# TYPE envoy_runtime_num_keys gauge\nenvoy_runtime_num_keys{} 8\n" in prom
    assert "envoy_runtime_load_success{} 4\n" in prom


async def test_runtime_without_admin_layer_refuses_modifications(
    podproxy_process: StartProxy, backend: StartBackend, free_port: Callable[..., int]
) -> None:
    b = await backend()
    admin_port = free_port()
    await podproxy_process(bootstrap_yaml(free_port(), admin_port, [(b.host, b.port)]))
    admin = ("127.0.0.1", admin_port)
    resp = await admin_call(admin, "POST", "/runtime_modify?a=1")
    assert (resp.status, resp.body) == (503, b"No admin layer specified")
    doc = json.loads((await admin_call(admin, "GET", "/runtime")).body)
    assert doc == {"entries": {}, "layers": []}


async def test_runtime_modifications_reach_every_worker(
    backend: StartBackend, free_port: Callable[..., int], tmp_path: Path
) -> None:
    b = await backend()
    admin_port = free_port()
    config = bootstrap_yaml(free_port(), admin_port, [(b.host, b.port)])
    config += runtime_block(make_disk(tmp_path))
    path = tmp_path / "podproxy.yaml"
    path.write_text(config)
    # The main runs here; its two workers are real processes (`python -m podproxy --worker`).
    options = Options(config_path=str(path), concurrency=2, drain_time_s=1.0)
    options.service_cluster = "front"
    proxy = InProcessProxy(config, options)
    try:
        await proxy.start()
        server = proxy.server
        sup = server.supervisor
        assert sup is not None

        def all_applied() -> bool:
            want = (sup.runtime_version, snapshot_digest(server.runtime.snapshot))
            return len(sup.workers) == 2 and all(
                w.runtime_applied == want for w in sup.workers.values()
            )

        await wait_until(all_applied, timeout=10.0)
        first = {w.pid: w.runtime_applied for w in sup.workers.values()}
        admin = ("127.0.0.1", admin_port)
        resp = await admin_call(admin, "POST", "/runtime_modify?a=9&feature=numerator:%2050")
        assert (resp.status, resp.body) == (200, b"OK\n")
        assert server.runtime.snapshot.get_integer("a", 0) == 9
        await wait_until(all_applied, timeout=10.0)
        assert all(w.runtime_applied != first[w.pid] for w in sup.workers.values())
        # runtime.* stay the main's: merging worker stats does not double them.
        await sup.refresh_stats()
        assert server.store.counters["runtime.load_success"].value == 3
    finally:
        await proxy.stop()
