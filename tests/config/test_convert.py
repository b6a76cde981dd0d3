"""Tests for `podproxy.config.convert`: the emitted YAML loads back and real Envoy accepts it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import yaml

from podproxy.config.convert import to_v3_dict, to_v3_yaml
from podproxy.config.loader import load
from podproxy.config.schema import FILE_ACCESS_LOG_TYPE, HCM_TYPE, ROUTER_TYPE
from podproxy.errors import ConfigErrors

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


# Lone values for lists and enums in lower and mixed case, as Envoy 1.40 reads them; the
# router is named without a typed_config, which only podproxy accepts.
LONE_VALUES = """
static_resources:
  listeners:
    name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
      filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM_TYPE
          stat_prefix: front
          codec_type: auto
          route_config:
            virtual_hosts:
              {name: all, domains: "*", routes: {match: {prefix: /}, route: {cluster: pods}}}
          http_filters: {name: envoy.filters.http.router}
  clusters:
    name: pods
    type: Strict_Dns
    lb_policy: round_robin
    dns_lookup_family: v4_only
    load_assignment:
      cluster_name: pods
      endpoints:
        lb_endpoints: {endpoint: {address: {socket_address: {address: pods.local, port_value: 80}}}}
""".replace("HCM_TYPE", HCM_TYPE)


def test_convert_writes_lists_and_types_the_router() -> None:
    out = to_v3_dict(load(config_yaml=LONE_VALUES))
    (listener,) = out["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"] == [
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": ROUTER_TYPE},
        }
    ]
    assert hcm["route_config"]["virtual_hosts"][0]["domains"] == ["*"]
    (cluster,) = out["static_resources"]["clusters"]
    assert isinstance(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"], list)


@pytest.mark.envoy
def test_envoy_reads_lone_values_and_enum_case_as_podproxy_does(envoy_validate: Validate) -> None:
    # Guards the rule itself: Envoy 1.40 takes the config as written once the router is typed.
    typed = LONE_VALUES.replace(
        "http_filters: {name: envoy.filters.http.router}",
        "http_filters: {name: envoy.filters.http.router, typed_config: "
        f'{{"@type": {ROUTER_TYPE}}}}}',
    )
    assert typed != LONE_VALUES
    assert load(config_yaml=typed).bootstrap == load(config_yaml=LONE_VALUES).bootstrap
    assert_envoy_ok(envoy_validate(typed))
    assert_envoy_ok(envoy_validate(to_v3_yaml(load(config_yaml=LONE_VALUES))))


@pytest.mark.envoy
def test_envoy_rejects_enum_spellings_podproxy_rejects(envoy_validate: Validate) -> None:
    bad = LONE_VALUES.replace("type: Strict_Dns", "type: strict-dns")
    with pytest.raises(ConfigErrors):
        load(config_yaml=bad)
    assert envoy_validate(bad).returncode != 0
