"""Bootstrap `layered_runtime` side by side with real Envoy: the same config (static, disk and
admin layers, or none, or no layers), the same `--service-cluster`, the same sequence of
`/runtime_modify` calls; each call's status and body, `/runtime` (layers and entries) and the
`runtime.*` stats must be equal.

Static-layer FractionalPercent maps are left out: Envoy 1.40 prints their raw value as a
protobuf debug string with a randomised marker (`goo.gle/debugonly` / `debugproto` ...), so
no two Envoy runs agree on it; a FractionalPercent written in a disk file is compared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import Backend, ProxyProcess
from integration.configs import bootstrap_yaml
from integration.sidebyside import start_envoy
from integration.test_runtime_e2e import FORM, admin_call

pytestmark = pytest.mark.envoy

StartProxy = Callable[..., Awaitable[ProxyProcess]]
StartBackend = Callable[..., Awaitable[Backend]]

# (method, path, body, content-type): what both proxies are asked, in this order.
CALLS: list[tuple[str, str, bytes, str]] = [
    ("GET", "/runtime_modify?a=1", b"", ""),
    ("POST", "/runtime_modify", b"", ""),
    ("POST", "/runtime_modify?a=8&new=x%20y+z&new=second&bare", b"", ""),
    ("POST", "/runtime_modify", b"form=1&f2=numerator:%2050", FORM),
    ("POST", "/runtime_modify?q=1", b"ignored=1", FORM),
    ("POST", "/runtime_modify", b"notform=1", "text/plain"),
    ("POST", "/runtime_modify?new=&n=0.5", b"", ""),
    ("POST", "/runtime_modify?nest.b=override", b"", ""),
]

FULL = """
layered_runtime:
  layers:
  - name: base
    static_layer:
      a: 5
      half: 0.5
      big: 1000000000000000
      neg: -3
      enabled: true
      text: "some words"
      nest: {b: "x", deeper: {c: 1}}
  - name: disk
    disk_layer: {symlink_root: ROOT, subdirectory: envoy}
  - name: override
    disk_layer: {symlink_root: ROOT, subdirectory: envoy, append_service_cluster: true}
  - name: missing
    disk_layer: {symlink_root: ROOT, subdirectory: nowhere}
  - name: admin
    admin_layer: {}
"""


def make_disk(tmp_path: Path) -> Path:
    real = tmp_path / "v1" / "envoy"
    (real / "nest").mkdir(parents=True)
    (real / "front").mkdir()
    (real / "a").write_text("6\n")
    (real / "multi").write_text("# a comment\nfirst\n\nsecond  \n")
    (real / "nest" / "d").write_text("numerator: 1\ndenominator: MILLION\n")
    (real / "front" / "a").write_text("7")
    root = tmp_path / "current"
    os.symlink(tmp_path / "v1", root)
    return root


def runtime_stats(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if line.startswith("runtime."))


async def observe(admin: tuple[str, int]) -> list[Any]:
    """Every call's (status, body), then /runtime as JSON and the runtime.* stats."""
    seen: list[Any] = []
    for method, path, body, ctype in CALLS:
        resp = await admin_call(admin, method, path, body, ctype)
        seen.append((method, path, resp.status, resp.body))
    resp = await admin_call(admin, "GET", "/runtime")
    seen.append(json.loads(resp.body))
    seen.append(runtime_stats((await admin_call(admin, "GET", "/stats")).body.decode()))
    return seen


@pytest.mark.parametrize(
    "block", [FULL, "", "layered_runtime: {}\n"], ids=["full", "none", "no-layers"]
)
async def test_runtime_matches_envoy(
    block: str,
    podproxy_process: StartProxy,
    backend: StartBackend,
    free_port: Callable[..., int],
    tmp_path: Path,
) -> None:
    b = await backend()
    runtime = block.replace("ROOT", str(make_disk(tmp_path)))

    def config(port: int, admin_port: int) -> str:
        return bootstrap_yaml(port, admin_port, [(b.host, b.port)]) + runtime

    args = ("--service-cluster", "front")
    envoy, _ = await start_envoy(yaml.safe_load(config(0, 0)), tmp_path, "envoy", args)
    try:
        assert envoy.admin is not None
        from_envoy = await observe(envoy.admin)
    finally:
        await envoy.terminate(10.0)
    admin_port = free_port()
    await podproxy_process(config(free_port(), admin_port), *args)
    from_podproxy = await observe(("127.0.0.1", admin_port))
    assert from_podproxy == from_envoy
    if block == FULL:  # the comparison above saw real content
        assert from_envoy[-2]["layers"] == ["base", "disk", "override", "admin"]
        assert from_envoy[-2]["entries"]["a"]["layer_values"] == ["5", "6", "7", "8"]
