"""HTTP/2 config: which protocol a cluster's pools speak, Http2ProtocolOptions and its limits,
the HCM's codec and options; errors name their YAML path. Configs podproxy rejects are checked
against real Envoy's `--mode validate` where Envoy rejects them too (the others are ones podproxy
does not support yet and says so)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.errors import ConfigErrors

ENVOY = Path(sys.executable).parent / "envoy"
CLUSTER = "static_resources.clusters[0]"
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def config(cluster_extra: dict[str, Any], hcm_extra: dict[str, Any] | None = None) -> str:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        **(hcm_extra or {}),
    }
    cfg = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.1.1",
                                                    "port_value": 8080,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    **cluster_extra,
                }
            ],
        }
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def typed(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "typed_extension_protocol_options": {
            HPO: {"@type": f"type.googleapis.com/{HPO}", **options}
        }
    }


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def envoy_rejects(text: str, tmp_path: Path) -> bool:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    done = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "critical"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode != 0


def protocol(text: str) -> tuple[str, Any]:
    cluster = load(config_yaml=text).bootstrap.static_resources.clusters[0]
    return cluster.upstream_protocol()


def test_cluster_protocols() -> None:
    assert protocol(config({})) == ("http1", None)
    kind, opts = protocol(config({"http2_protocol_options": {}}))
    assert kind == "http2"
    # Envoy's current defaults.
    assert opts.max_concurrent_streams == 1024
    assert opts.initial_stream_window_size == 16 * 1024 * 1024
    assert opts.initial_connection_window_size == 24 * 1024 * 1024
    assert opts.hpack_table_size == 4096
    kind, opts = protocol(
        config(
            typed(
                {"explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 7}}}
            )
        )
    )
    assert (kind, opts.max_concurrent_streams) == ("http2", 7)
    assert protocol(config(typed({"explicit_http_config": {"http_protocol_options": {}}}))) == (
        "http1",
        None,
    )
    kind, _ = protocol(config(typed({"use_downstream_protocol_config": {}})))
    assert kind == "downstream"
    kind, _ = protocol(config({"protocol_selection": "USE_DOWNSTREAM_PROTOCOL"}))
    assert kind == "downstream"
    # The typed extension wins over the deprecated field (Envoy's createOptions).
    both = {
        "http2_protocol_options": {},
        **typed({"explicit_http_config": {"http_protocol_options": {}}}),
    }
    assert protocol(config(both)) == ("http1", None)


def test_common_options_from_the_typed_extension() -> None:
    text = config(
        typed(
            {
                "explicit_http_config": {"http2_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": "7s"},
            }
        )
    )
    cluster = load(config_yaml=text).bootstrap.static_resources.clusters[0]
    assert cluster.http_options().idle_timeout == 7.0


@pytest.mark.parametrize(
    ("extra", "where", "says"),
    [
        (
            typed({"explicit_http_config": {}}),
            f"{CLUSTER}.typed_extension_protocol_options.{HPO}.explicit_http_config",
            "exactly one of",
        ),
        (
            {"http2_protocol_options": {"initial_stream_window_size": 100}},
            f"{CLUSTER}.http2_protocol_options.initial_stream_window_size",
            "must be >= 65535",
        ),
        (
            {"http2_protocol_options": {"max_concurrent_streams": 0}},
            f"{CLUSTER}.http2_protocol_options.max_concurrent_streams",
            "must be >= 1",
        ),
        (
            {"http2_protocol_options": {}, "http_protocol_options": {}},
            CLUSTER,
            "protocol_selection USE_DOWNSTREAM_PROTOCOL",
        ),
    ],
)
def test_errors_envoy_also_rejects(
    extra: dict[str, Any], where: str, says: str, tmp_path: Path
) -> None:
    text = config(extra)
    (error,) = errors_of(text)
    assert error.startswith(where + ":"), error
    assert says in error
    assert envoy_rejects(text, tmp_path)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (
            {"http2_protocol_options": {"allow_connect": True}},
            "http2_protocol_options.allow_connect",
        ),
        (
            typed({"auto_config": {"http2_protocol_options": {}}}),
            f"typed_extension_protocol_options.{HPO}.auto_config",
        ),
        (
            {
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": {}
                }
            },
            "typed_extension_protocol_options",
        ),
    ],
)
def test_not_supported_yet_is_an_error_naming_the_field(extra: dict[str, Any], where: str) -> None:
    (error,) = errors_of(config(extra))
    assert error.startswith(f"{CLUSTER}.{where}"), error
    assert "not supported" in error


def test_hcm_http2_options_and_codec() -> None:
    text = config(
        {}, {"codec_type": "HTTP2", "http2_protocol_options": {"max_concurrent_streams": 5}}
    )
    hcm = load(config_yaml=text).bootstrap.static_resources.listeners[0]
    tc = hcm.filter_chains[0].filters[0].typed_config
    assert tc.codec_type.name == "HTTP2"
    assert tc.http2_protocol_options.max_concurrent_streams == 5
    (error,) = errors_of(config({}, {"http2_protocol_options": {"hpack_table_size": -1}}))
    assert error.startswith(f"{HCM}.http2_protocol_options.hpack_table_size")
