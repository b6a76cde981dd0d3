"""Tests for `podproxy.config.normalize`: the v2 → v3 rewrite tables and path aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from podproxy.config.normalize import normalize, repeated_as_lists
from podproxy.config.schema import (
    FILE_ACCESS_LOG_TYPE,
    HCM_TYPE,
    ROUTER_TYPE,
    Bootstrap,
    Message,
    is_repeated,
    message_in,
)

from .conftest import EXAMPLES

FILTER = "static_resources.listeners[0].filter_chains[0].filters[0]"


def seed_v2() -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / "seed-v2.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_seed_v2_normalizes_to_seed_v3_except_admin_log() -> None:
    out = normalize(seed_v2())
    v3 = yaml.safe_load((EXAMPLES / "seed-v3.yaml").read_text())
    assert out.errors == []
    assert out.v3["static_resources"] == v3["static_resources"]
    assert out.v3["admin"]["access_log_path"] == "/tmp/admin_access.log"


def test_input_is_not_mutated() -> None:
    raw = seed_v2()
    before = yaml.safe_dump(raw)
    normalize(raw)
    assert yaml.safe_dump(raw) == before


def test_aliases_point_back_to_v2_paths() -> None:
    out = normalize(seed_v2())
    assert out.aliases[f"{FILTER}.typed_config"] == f"{FILTER}.config"
    route = f"{FILTER}.typed_config.route_config.virtual_hosts[0].routes[0].route"
    assert out.aliases[f"{route}.host_rewrite_literal"] == f"{route}.host_rewrite"
    ep = (
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
    )
    assert out.aliases[ep] == "static_resources.clusters[0].hosts[0]"


def test_v3_input_has_no_aliases() -> None:
    out = normalize(yaml.safe_load((EXAMPLES / "seed-v3.yaml").read_text()))
    assert out.aliases == {} and out.errors == []


def test_v2_type_urls_and_missing_typed_config() -> None:
    raw = seed_v2()
    flt = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = flt.pop("config")
    flt["typed_config"] = {
        "@type": "type.googleapis.com/envoy.config.filter.network.http_connection_manager.v2."
        "HttpConnectionManager",
        **config,
    }
    raw["admin"]["access_log"] = [{"name": "envoy.file_access_log", "config": {"path": "/tmp/a"}}]
    out = normalize(raw).v3
    typed = out["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    assert typed["@type"] == HCM_TYPE
    assert typed["http_filters"] == [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    ]
    assert out["admin"]["access_log"] == [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_ACCESS_LOG_TYPE, "path": "/tmp/a"},
        }
    ]


def test_hosts_with_load_assignment_is_an_error() -> None:
    raw = seed_v2()
    raw["static_resources"]["clusters"][0]["load_assignment"] = {"cluster_name": "httpd"}
    (err,) = normalize(raw).errors
    assert str(err) == "static_resources.clusters[0].hosts: cannot be combined with load_assignment"


def test_lb_policy_v2_enum_rename() -> None:
    raw = seed_v2()
    raw["static_resources"]["clusters"][0]["lb_policy"] = "ORIGINAL_DST_LB"
    assert normalize(raw).v3["static_resources"]["clusters"][0]["lb_policy"] == "CLUSTER_PROVIDED"


def test_wrong_shapes_pass_through() -> None:
    raw: dict[str, Any] = {"static_resources": {"listeners": "x", "clusters": [1, {"hosts": 3}]}}
    out = normalize(raw)
    assert out.v3["static_resources"]["listeners"] == "x"
    assert [str(e) for e in out.errors] == [
        "static_resources.clusters[1].hosts: expected a list of addresses"
    ]


# --- a lone value where a list is expected (Envoy: protobuf's legacy JSON syntax) -------------


def _messages(
    model: type[Message], seen: set[type[Message]] | None = None
) -> Iterator[type[Message]]:
    # Models may nest themselves (access-log and_filter / or_filter): each is visited once.
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    yield model
    for info in model.model_fields.values():
        sub = message_in(info.annotation)
        if sub is not None:
            yield from _messages(sub, seen)


def test_every_repeated_field_of_every_model_takes_a_lone_value() -> None:
    seen = 0
    for model in set(_messages(Bootstrap)):
        for name, info in model.model_fields.items():
            if not is_repeated(info.annotation):
                continue
            lone: object = {} if message_in(info.annotation) is not None else "x"
            obj: dict[str, Any] = {info.alias or name: lone}
            repeated_as_lists(obj, model)
            assert obj == {info.alias or name: [lone]}, (model.__name__, name)
            seen += 1
    assert seen >= 14  # listeners … lb_endpoints, domains, headers, resolvers: all of them


def test_lone_mappings_become_lists_at_every_depth() -> None:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "a", "port_value": 1}}}}
    raw: dict[str, Any] = {
        "static_resources": {
            "listeners": {
                "filter_chains": {
                    "filters": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "route_config": {
                                "virtual_hosts": {
                                    "name": "v",
                                    "domains": "*",
                                    "routes": {
                                        "match": {"prefix": "/", "headers": {"name": "h"}},
                                        "route": {"cluster": "c"},
                                    },
                                }
                            },
                            "http_filters": {"name": "envoy.filters.http.router"},
                        },
                    }
                }
            },
            "clusters": {
                "name": "c",
                "dns_resolvers": {"socket_address": {"address": "127.0.10.1"}},
                "load_assignment": {"endpoints": {"lb_endpoints": endpoint}},
            },
        }
    }
    out = normalize(raw)
    assert out.errors == [] and out.aliases == {}
    static = out.v3["static_resources"]
    (listener,) = static["listeners"]
    (chain,) = listener["filter_chains"]
    (flt,) = chain["filters"]
    hcm = flt["typed_config"]
    assert hcm["@type"] == HCM_TYPE
    assert hcm["http_filters"] == [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    ]
    (vh,) = hcm["route_config"]["virtual_hosts"]
    assert vh["domains"] == ["*"]
    (route,) = vh["routes"]
    assert route["match"]["headers"] == [{"name": "h"}]
    (cluster,) = static["clusters"]
    assert cluster["dns_resolvers"] == [{"socket_address": {"address": "127.0.10.1"}}]
    assert cluster["load_assignment"]["endpoints"] == [{"lb_endpoints": [endpoint]}]


def test_v2_rewrites_reach_inside_lone_mappings() -> None:
    raw: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                {
                    "filter_chains": {
                        "filters": {
                            "name": "envoy.http_connection_manager",
                            "config": {
                                "http_filters": {"name": "envoy.router"},
                                "access_log": {
                                    "name": "envoy.file_access_log",
                                    "config": {"path": "/tmp/a"},
                                },
                            },
                        }
                    }
                }
            ],
            "clusters": [{"name": "c", "hosts": {"socket_address": {"address": "a"}}}],
        }
    }
    out = normalize(raw)
    assert out.errors == []
    hcm = out.v3["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    assert hcm["typed_config"]["http_filters"] == [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    ]
    assert hcm["typed_config"]["access_log"][0]["typed_config"]["@type"] == FILE_ACCESS_LOG_TYPE
    assert out.aliases[f"{FILTER}.typed_config"] == f"{FILTER}.config"
    la = out.v3["static_resources"]["clusters"][0]["load_assignment"]
    assert la["endpoints"][0]["lb_endpoints"] == [
        {"endpoint": {"address": {"socket_address": {"address": "a"}}}}
    ]
    ep = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]"
    assert out.aliases[f"{ep}.endpoint.address"] == "static_resources.clusters[0].hosts[0]"


def test_null_and_values_of_another_kind_are_left_for_the_schema() -> None:
    raw: dict[str, Any] = {
        "static_resources": {
            "listeners": None,
            "clusters": [
                {"name": "c", "dns_resolvers": "127.0.10.1", "load_assignment": {"endpoints": 5}},
                {"name": "d", "load_assignment": {"endpoints": [[{"lb_endpoints": []}], None]}},
            ],
        },
        "admin": {"access_log": "/tmp/a"},
    }
    out = normalize(raw)
    assert out.v3 == raw and out.errors == []


def test_lb_policy_v2_enum_rename_in_any_case() -> None:
    raw = seed_v2()
    raw["static_resources"]["clusters"][0]["lb_policy"] = "original_dst_lb"
    assert normalize(raw).v3["static_resources"]["clusters"][0]["lb_policy"] == "CLUSTER_PROVIDED"
