"""`upgrade_configs` on the connection manager and on routes: what loads, what is refused
(with the YAML path), and that Envoy refuses the same configs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.errors import ConfigErrors
from podproxy.http.upgrade import upgrade_policy
from podproxy.router.routes import build_route_table

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ROUTE = f"{HCM}.route_config.virtual_hosts[0].routes[0].route"

Validate = Callable[[str], subprocess.CompletedProcess[str]]


def config(hcm: dict[str, Any] | None = None, route: dict[str, Any] | None = None) -> str:
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/ws"}, "route": {"cluster": "app", **(route or {})}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "app"}},
                    ],
                }
            ]
        },
        "http_filters": [ROUTER],
        **(hcm or {}),
    }
    endpoint = {"address": {"socket_address": {"address": "127.0.1.1", "port_value": 8080}}}
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
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        }
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def test_hcm_and_route_upgrade_configs_load() -> None:
    off = {"enabled": False}
    text = config(
        {"upgrade_configs": [{"upgrade_type": "WebSocket"}, {"upgrade_type": "foo", **off}]},
        {"upgrade_configs": [{"upgrade_type": "Foo"}, {"upgrade_type": "websocket", **off}]},
    )
    hcm = load(config_yaml=text).bootstrap.static_resources.listeners[0]
    manager = hcm.filter_chains[0].filters[0].typed_config
    assert [(u.upgrade_type, u.enabled) for u in manager.upgrade_configs] == [
        ("WebSocket", True),
        ("foo", False),
    ]
    routes = build_route_table(manager.route_config)
    ws = routes.route(b"app", b"/ws", [])
    assert ws is not None and ws.upgrades == {b"foo": True, b"websocket": False}
    plain = routes.route(b"app", b"/", [])
    assert plain is not None and plain.upgrades is None
    policy = upgrade_policy(manager, routes)
    assert policy is not None and policy.hcm == {b"websocket": True, b"foo": False}


def test_no_upgrade_configs_anywhere_means_no_policy() -> None:
    manager = load(config_yaml=config()).bootstrap.static_resources.listeners[0]
    hcm = manager.filter_chains[0].filters[0].typed_config
    assert upgrade_policy(hcm, build_route_table(hcm.route_config)) is None


def test_a_route_alone_makes_a_policy() -> None:
    text = config(route={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    hcm = load(config_yaml=text).bootstrap.static_resources.listeners[0]
    manager = hcm.filter_chains[0].filters[0].typed_config
    policy = upgrade_policy(manager, build_route_table(manager.route_config))
    assert policy is not None and policy.hcm == {}


@pytest.mark.parametrize(
    ("hcm", "route", "path", "message", "envoy_says"),
    [
        (
            {"upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "WebSocket"}]},
            None,
            f"{HCM}.upgrade_configs",
            "Error: multiple upgrade configs with the same name: 'WebSocket'",
            "multiple upgrade configs with the same name",
        ),
        (
            None,
            {"upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "WEBSOCKET"}]},
            f"{ROUTE}.upgrade_configs",
            "Duplicate upgrade WEBSOCKET",
            "Duplicate upgrade",
        ),
        (
            None,
            {"upgrade_configs": [{"upgrade_type": "websocket", "connect_config": {}}]},
            f"{ROUTE}.upgrade_configs[0]",
            "Non-CONNECT upgrade type websocket has ConnectConfig",
            "has ConnectConfig",
        ),
    ],
    ids=["hcm-duplicate", "route-duplicate", "connect-config-on-websocket"],
)
def test_what_envoy_refuses_is_refused_with_its_words(
    envoy_validate: Validate,
    hcm: dict[str, Any] | None,
    route: dict[str, Any] | None,
    path: str,
    message: str,
    envoy_says: str,
) -> None:
    text = config(hcm, route)
    (error,) = errors_of(text)
    assert error.startswith(f"{path}: ") and message in error
    envoy = envoy_validate(text)
    assert envoy.returncode != 0 and envoy_says in envoy.stdout + envoy.stderr


@pytest.mark.parametrize(
    ("hcm", "route", "path", "message"),
    [
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "filters": [ROUTER]}]},
            None,
            f"{HCM}.upgrade_configs[0].filters",
            "a filter chain of its own per upgrade type is not supported by podproxy yet",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "CONNECT"}]},
            None,
            f"{HCM}.upgrade_configs[0].upgrade_type",
            "proxying CONNECT requests is not supported by podproxy yet",
        ),
        (
            None,
            {"upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
            f"{ROUTE}.upgrade_configs[0]",
            "proxying CONNECT requests is not supported by podproxy yet",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "enabled": "yes"}]},
            None,
            f"{HCM}.upgrade_configs[0].enabled",
            "",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": ""}]},
            None,
            f"{HCM}.upgrade_configs[0].upgrade_type",
            "",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "typo": 1}]},
            None,
            f"{HCM}.upgrade_configs[0].typo",
            "",
        ),
    ],
    ids=["filters", "hcm-connect", "route-connect", "enabled-not-bool", "empty-type", "typo"],
)
def test_what_podproxy_does_not_do_is_an_error_naming_the_field(
    hcm: dict[str, Any] | None, route: dict[str, Any] | None, path: str, message: str
) -> None:
    (error,) = errors_of(config(hcm, route))
    assert error.startswith(f"{path}: ") and message in error
