"""Tests for `podproxy.config.convert`: the emitted YAML loads back and real Envoy accepts it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import yaml

from podproxy.config.convert import to_v3_dict, to_v3_yaml
from podproxy.config.loader import load
from podproxy.config.schema import FILE_ACCESS_LOG_TYPE

from .conftest import EXAMPLES

Validate = Callable[[str], subprocess.CompletedProcess[str]]


def assert_envoy_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_admin_access_log_path_becomes_file_logger() -> None:
    out = to_v3_dict(load(str(EXAMPLES / "seed-v2.yaml")))
    assert "access_log_path" not in out["admin"]
    assert out["admin"]["access_log"] == [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_ACCESS_LOG_TYPE, "path": "/tmp/admin_access.log"},
        }
    ]


def test_converted_yaml_loads_back_to_same_model() -> None:
    loaded = load(str(EXAMPLES / "seed-v2.yaml"))
    again = load(config_yaml=to_v3_yaml(loaded))
    assert again.bootstrap.static_resources == loaded.bootstrap.static_resources
    assert again.bootstrap.admin is not None and loaded.bootstrap.admin is not None
    assert again.bootstrap.admin.access_log_paths() == loaded.bootstrap.admin.access_log_paths()
    assert "hosts" not in yaml.safe_load(to_v3_yaml(loaded))["static_resources"]["clusters"][0]


def test_podproxy_defaults_not_emitted() -> None:
    text = to_v3_yaml(load(str(EXAMPLES / "seed-v2.yaml")))
    assert "server_name" not in text and "podproxy" not in text


@pytest.mark.envoy
def test_envoy_accepts_converted_seed_v2(envoy_validate: Validate) -> None:
    assert_envoy_ok(envoy_validate(to_v3_yaml(load(str(EXAMPLES / "seed-v2.yaml")))))


@pytest.mark.envoy
def test_envoy_rejects_seed_v2_as_written(envoy_validate: Validate) -> None:
    # Guards the validator fixture itself: the post's v2 config must fail on current Envoy.
    result = envoy_validate((EXAMPLES / "seed-v2.yaml").read_text())
    assert result.returncode != 0


@pytest.mark.envoy
@pytest.mark.parametrize("name", ["seed-v3.yaml", "static.yaml"])
def test_envoy_accepts_examples(envoy_validate: Validate, name: str) -> None:
    text = (EXAMPLES / name).read_text()
    load(config_yaml=text)
    assert_envoy_ok(envoy_validate(text))
    assert_envoy_ok(envoy_validate(to_v3_yaml(load(config_yaml=text))))


@pytest.mark.envoy
def test_envoy_accepts_converted_dns_cluster_type(envoy_validate: Validate) -> None:
    text = (
        (EXAMPLES / "seed-v3.yaml")
        .read_text()
        .replace(
            "    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n",
            "    cluster_type:\n"
            "      name: envoy.cluster.dns\n"
            "      typed_config:\n"
            "        dns_refresh_rate: 2s\n"
            "        dns_min_refresh_rate: 1s\n"
            "        dns_lookup_family: V4_ONLY\n",
        )
    )
    loaded = load(config_yaml=text)
    assert loaded.bootstrap.static_resources.clusters[0].dns_min_refresh_rate == 1.0
    assert_envoy_ok(envoy_validate(to_v3_yaml(loaded)))
