"""Tests for `podproxy.config.loader`: parsing, merging, error paths and cross-checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from podproxy.config.loader import LoadedConfig, load, merge
from podproxy.config.schema import (
    DiscoveryType,
    DnsLookupFamily,
    LbPolicy,
)
from podproxy.errors import ConfigErrors

from .conftest import EXAMPLES

HCM = "static_resources.listeners[0].filter_chains[0].filters[0].config"
ROUTE = f"{HCM}.route_config.virtual_hosts[0].routes[0].route"
CLUSTER = "static_resources.clusters[0]"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_seed_v2_and_v3_load_to_equal_bootstraps() -> None:
    v2 = load(str(EXAMPLES / "seed-v2.yaml")).bootstrap
    v3 = load(str(EXAMPLES / "seed-v3.yaml")).bootstrap
    assert v2.static_resources == v3.static_resources
    # v2 writes the admin log as access_log_path, v3 as a file access logger: same file.
    assert v2.admin is not None and v3.admin is not None
    assert v2.admin.address == v3.admin.address
    assert v2.admin.access_log_paths() == v3.admin.access_log_paths() == ("/tmp/admin_access.log",)


def test_seed_v2_typed_values() -> None:
    b = load(str(EXAMPLES / "seed-v2.yaml")).bootstrap
    cluster = b.static_resources.clusters[0]
    assert cluster.type is DiscoveryType.STRICT_DNS
    assert cluster.dns_lookup_family is DnsLookupFamily.V4_ONLY
    assert cluster.lb_policy is LbPolicy.ROUND_ROBIN
    assert cluster.connect_timeout == 0.25
    assert cluster.dns_refresh_rate == 5.0
    assert cluster.load_assignment is not None
    assert cluster.load_assignment.cluster_name == "httpd"
    sa = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("httpd-discovery", 8080)
    hcm = b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    assert hcm.stat_prefix == "ingress_http"
    assert hcm.server_name == "podproxy"
    assert hcm.stream_idle_timeout == 300.0
    assert hcm.common_http_protocol_options.idle_timeout == 3600.0
    assert hcm.router().suppress_envoy_headers is False
    route = hcm.route_config.virtual_hosts[0].routes[0]
    assert route.route is not None
    assert route.route.host_rewrite_literal == "httpd"
    assert route.route.timeout == 15.0
    assert b.admin is not None and b.admin.access_log_path == "/tmp/admin_access.log"


def test_v3_mapping_has_type_urls(seed_v2_text: str) -> None:
    v3 = load(config_yaml=seed_v2_text).v3
    flt = v3["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert flt["name"] == "envoy.filters.network.http_connection_manager"
    assert flt["typed_config"]["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    router = flt["typed_config"]["http_filters"][0]
    assert router["typed_config"]["@type"].endswith("router.v3.Router")
    assert "hosts" not in v3["static_resources"]["clusters"][0]


def test_loaded_config_is_frozen(seed_v2_text: str) -> None:
    loaded = load(config_yaml=seed_v2_text)
    assert isinstance(loaded, LoadedConfig)
    with pytest.raises(AttributeError):
        loaded.bootstrap = loaded.bootstrap  # type: ignore[misc]
    with pytest.raises(ValueError):
        loaded.bootstrap.static_resources.clusters[0].name = "x"


@pytest.mark.parametrize(
    ("value", "shown"),
    [("5", "5"), ("250ms", '"250ms"'), ("-1s", '"-1s"'), ("0.25", "0.25"), ("s", '"s"')],
)
def test_bad_duration_names_path(seed_v2_text: str, value: str, shown: str) -> None:
    text = replaced(seed_v2_text, "connect_timeout: 0.25s", f"connect_timeout: {value}")
    (err,) = errors_of(text)
    assert err.startswith(f"{CLUSTER}.connect_timeout: ")
    assert err.endswith(f"got {shown}")


def test_duration_int_message_is_exact(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "connect_timeout: 0.25s", "connect_timeout: 5")
    assert errors_of(text) == [
        f'{CLUSTER}.connect_timeout: expected a duration like "0.25s", got 5'
    ]


def test_duration_object_form(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text, "connect_timeout: 0.25s", "connect_timeout: {seconds: 1, nanos: 500000000}"
    )
    assert load(config_yaml=text).bootstrap.static_resources.clusters[0].connect_timeout == 1.5


def test_bad_enum(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "dns_lookup_family: V4_ONLY", "dns_lookup_family: V4")
    assert errors_of(text) == [
        f"{CLUSTER}.dns_lookup_family: expected one of AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, "
        'ALL, got "V4"'
    ]


def test_enum_by_number(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "type: STRICT_DNS", "type: 2")
    loaded = load(config_yaml=text)
    assert loaded.bootstrap.static_resources.clusters[0].type is DiscoveryType.LOGICAL_DNS


def test_unknown_field(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "lb_policy: ROUND_ROBIN", "lb_polcy: ROUND_ROBIN")
    assert errors_of(text) == [f"{CLUSTER}.lb_polcy: unknown field"]


def test_unsupported_real_field(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text, "lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBIN\n    health_checks: []"
    )
    assert errors_of(text) == [
        f"{CLUSTER}.health_checks: Envoy field not supported by podproxy yet"
    ]


def test_unknown_and_unsupported_inside_v2_config(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text,
        "stat_prefix: ingress_http",
        "stat_prefix: ingress_http\n          tracing: {}\n          bogus: 1",
    )
    assert sorted(errors_of(text)) == sorted(
        [
            f"{HCM}.bogus: unknown field",
            f"{HCM}.tracing: Envoy field not supported by podproxy: it tunes tracing, and "
            "podproxy has no tracer",
        ]
    )


@pytest.mark.parametrize(
    "field",
    ["stream_flush_timeout: 5s", "proxy_100_continue: true", "via: edge"],
)
def test_fields_podproxy_does_not_run_yet_are_errors(seed_v2_text: str, field: str) -> None:
    # Accepting them would ignore them silently: they are errors until the runtime has them.
    text = replaced(
        seed_v2_text, "stat_prefix: ingress_http", f"stat_prefix: ingress_http\n          {field}"
    )
    name = field.split(":")[0]
    assert errors_of(text) == [f"{HCM}.{name}: Envoy field not supported by podproxy yet"]


def test_route_to_missing_cluster(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "cluster: httpd", "cluster: nope")
    assert errors_of(text) == [f'{ROUTE}.cluster: unknown cluster "nope"']


def test_missing_required_fields(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "          stat_prefix: ingress_http\n", "")
    text = replaced(text, "  - name: httpd\n    connect", "  - connect")
    assert sorted(errors_of(text)) == sorted(
        [
            f"{HCM}.stat_prefix: missing required field",
            f"{CLUSTER}.name: missing required field",
        ]
    )


def test_wrong_types_with_v2_paths(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "port_value: 8080", "port_value: eighty")
    text = replaced(text, 'domains: ["*"]', "domains: {a: b}")
    text = replaced(text, "host_rewrite: httpd", "host_rewrite: 5")
    assert sorted(errors_of(text)) == sorted(
        [
            f"{HCM}.route_config.virtual_hosts[0].domains: expected a list, got a mapping",
            f"{ROUTE}.host_rewrite: expected a string, got 5",
            f"{CLUSTER}.hosts[0].socket_address.port_value: "
            'expected a non-negative integer, got "eighty"',
        ]
    )


def test_port_out_of_range(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "port_value: 8080", "port_value: 70000")
    assert errors_of(text) == [
        f"{CLUSTER}.hosts[0].socket_address.port_value: must be <= 65535, got 70000"
    ]


def test_every_error_is_listed(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "connect_timeout: 0.25s", "connect_timeout: 5")
    text = replaced(text, "type: STRICT_DNS", "type: DNS")
    text = replaced(text, "address: 0.0.0.0", "address: 0.0.0.0\n        what: 1")
    assert len(errors_of(text)) == 3


def test_yaml_syntax_error_names_line(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, 'domains: ["*"]', 'domains: ["*"')
    (err,) = errors_of(text)
    assert err.startswith("--config-yaml: YAML syntax error at line 19, column")


def test_yaml_syntax_error_in_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("static_resources:\n  clusters: [\n")
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}: YAML syntax error at line 3")


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("", "empty configuration"),
        ("- a\n", "expected a mapping at the top level, got a list"),
        ("just text", 'expected a mapping at the top level, got "just text"'),
    ],
)
def test_empty_and_non_mapping(text: str, msg: str) -> None:
    assert errors_of(text) == [f"--config-yaml: {msg}"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert str(info.value) == f"{path}: config file not found"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        load(str(tmp_path))  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read config file")


def test_nothing_given() -> None:
    with pytest.raises(ConfigErrors):
        load()


def test_json_input(tmp_path: Path, seed_v2_text: str) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(yaml.safe_load(seed_v2_text), indent=2))
    from_json = load(str(path)).bootstrap
    assert from_json == load(config_yaml=seed_v2_text).bootstrap


def test_json_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"admin": \n  {,}\n}')
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}: JSON syntax error at line 2, column 4")


def test_config_yaml_merges_over_file(tmp_path: Path) -> None:
    path = EXAMPLES / "seed-v3.yaml"
    overlay = """
static_resources:
  clusters:
  - name: other
    connect_timeout: 1s
    load_assignment:
      cluster_name: other
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.9.1, port_value: 80}}}
admin:
  address:
    socket_address: {port_value: 9902}
"""
    loaded = load(str(path), overlay)
    clusters = loaded.bootstrap.static_resources.clusters
    assert [c.name for c in clusters] == ["httpd", "other"]  # repeated fields concatenate
    assert loaded.bootstrap.admin is not None
    sa = loaded.bootstrap.admin.address.socket_address
    assert (sa.address, sa.port_value) == ("127.0.0.1", 9902)  # scalar replaced, message merged
    assert len(loaded.v3["static_resources"]["clusters"]) == 2


def test_config_yaml_over_v2_file_keeps_v2_error_paths(tmp_path: Path) -> None:
    path = EXAMPLES / "seed-v2.yaml"
    with pytest.raises(ConfigErrors) as info:
        load(str(path), "static_resources:\n  clusters:\n  - {name: x, connect_timeout: 3}\n")
    assert [str(e) for e in info.value.errors] == [
        'static_resources.clusters[1].connect_timeout: expected a duration like "0.25s", got 3'
    ]


def test_config_yaml_alone(seed_v2_text: str) -> None:
    assert load(config_yaml=seed_v2_text).bootstrap.static_resources.clusters[0].name == "httpd"


def test_merge_semantics() -> None:
    base = {"a": 1, "m": {"x": 1, "y": 2}, "l": [1]}
    assert merge(base, {"a": 2, "m": {"y": 3}, "l": [2]}) == {
        "a": 2,
        "m": {"x": 1, "y": 3},
        "l": [1, 2],
    }
    assert base == {"a": 1, "m": {"x": 1, "y": 2}, "l": [1]}


def test_strict_dns_resolver_name_rejected(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text, "port_value: 8080", "port_value: 8080\n          resolver_name: r"
    )
    assert errors_of(text) == [
        f"{CLUSTER}.hosts[0].socket_address.resolver_name: "
        "STRICT_DNS clusters must not have a custom resolver name"
    ]


def test_static_needs_ip(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "type: STRICT_DNS", "type: STATIC")
    assert errors_of(text) == [
        f"{CLUSTER}.hosts[0].socket_address.address: a STATIC cluster's endpoint must be an "
        'IP address, got "httpd-discovery"'
    ]


def test_logical_dns_exactly_one_endpoint(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "type: STRICT_DNS", "type: LOGICAL_DNS")
    text = replaced(
        text,
        "port_value: 8080\n",
        "port_value: 8080\n      - socket_address: {address: b, port_value: 1}\n",
    )
    assert errors_of(text) == [
        f"{CLUSTER}.hosts: LOGICAL_DNS clusters must have exactly one endpoint, got 2"
    ]


def test_duplicate_names_and_domains() -> None:
    text = (EXAMPLES / "static.yaml").read_text()
    data = yaml.safe_load(text)
    data["static_resources"]["clusters"].append(data["static_resources"]["clusters"][0])
    rc = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]
    rc["virtual_hosts"].append({**rc["virtual_hosts"][0], "name": "second"})
    msgs = errors_of(yaml.safe_dump(data))
    assert sorted(msgs) == sorted(
        [
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config."
            'virtual_hosts[1].domains[0]: duplicate domain "*" (only unique domains are permitted)',
            'static_resources.clusters[1].name: duplicate cluster name "httpd"',
        ]
    )


def test_listener_address_must_be_ip(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "address: 0.0.0.0", "address: localhost")
    assert errors_of(text) == [
        "static_resources.listeners[0].address.socket_address.address: a listener address must "
        'be an IP address, got "localhost"'
    ]


def test_non_string_key(seed_v2_text: str) -> None:
    text = replaced(seed_v2_text, "lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBIN\n    1: x")
    assert errors_of(text) == [f"{CLUSTER}.1: keys must be strings"]


def test_foreign_typed_config_reports_only_its_type(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text,
        "        config:\n",
        "        typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters."
        "network.tcp_proxy.v3.TcpProxy\n",
    )
    (err,) = errors_of(text)
    assert err.startswith(
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type: "
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy: "
        "Envoy type not supported here by podproxy yet"
    )


@pytest.mark.parametrize(("value", "want"), [("0.3s", 0.3), ("0s", None)])
def test_delayed_close_timeout(seed_v2_text: str, value: str, want: float | None) -> None:
    text = replaced(
        seed_v2_text,
        "stat_prefix: ingress_http",
        f"stat_prefix: ingress_http\n          delayed_close_timeout: {value}",
    )
    hcm = load(config_yaml=text).bootstrap.static_resources.listeners[0]
    manager = hcm.filter_chains[0].filters[0].typed_config
    assert manager.delayed_close_timeout == want  # type: ignore[union-attr]


def test_max_response_headers_kb_is_a_cluster_field(seed_v2_text: str) -> None:
    on_cluster = replaced(
        seed_v2_text,
        "lb_policy: ROUND_ROBIN",
        "lb_policy: ROUND_ROBIN\n    common_http_protocol_options: {max_response_headers_kb: 8}",
    )
    cluster = load(config_yaml=on_cluster).bootstrap.static_resources.clusters[0]
    assert cluster.common_http_protocol_options.max_response_headers_kb == 8
    on_hcm = replaced(
        seed_v2_text,
        "stat_prefix: ingress_http",
        "stat_prefix: ingress_http\n"
        "          common_http_protocol_options: {max_response_headers_kb: 8}",
    )
    (error,) = errors_of(on_hcm)
    assert error.startswith(f"{HCM}.common_http_protocol_options: max_response_headers_kb:")


# --- what Envoy's protobuf JSON parser forgives: enum case, a lone value for a list ----------

# One listener and one cluster, every repeated field written as a list.
AS_LISTS = """
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          stat_prefix: front
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/", headers: [{name: x-a, present_match: true}]}
                route: {cluster: pods}
          http_filters:
          - name: envoy.filters.http.router
  clusters:
  - name: pods
    type: STRICT_DNS
    lb_policy: LEAST_REQUEST
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: pods
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: pods.local, port_value: 8080}}}
          health_status: HEALTHY
"""

# The same config with each list of one written as its lone element and enums in other cases.
AS_LONE_VALUES = """
static_resources:
  listeners:
    name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 10000, protocol: tcp}}
    filter_chains:
      filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          stat_prefix: front
          codec_type: auto
          route_config:
            virtual_hosts:
              name: all
              domains: "*"
              routes:
                match: {prefix: "/", headers: {name: x-a, present_match: true}}
                route: {cluster: pods}
          http_filters:
            name: envoy.filters.http.router
  clusters:
    name: pods
    type: strict_dns
    lb_policy: Least_Request
    dns_lookup_family: v4_Only
    load_assignment:
      cluster_name: pods
      endpoints:
        lb_endpoints:
          endpoint: {address: {socket_address: {address: pods.local, port_value: 8080}}}
          health_status: healthy
"""

LB_ENDPOINT = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]"
V3_HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def test_lone_values_and_enum_case_load_as_the_list_form() -> None:
    lists = load(config_yaml=AS_LISTS)
    lone = load(config_yaml=AS_LONE_VALUES)
    assert lone.bootstrap == lists.bootstrap
    cluster = lone.bootstrap.static_resources.clusters[0]
    assert (cluster.type, cluster.lb_policy) == (DiscoveryType.STRICT_DNS, LbPolicy.LEAST_REQUEST)
    assert cluster.dns_lookup_family is DnsLookupFamily.V4_ONLY
    # The v3 mapping (for convert and /config_dump) has lists, as Envoy's parsed proto does.
    (endpoints,) = lone.v3["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
    (lb_endpoint,) = endpoints["lb_endpoints"]
    assert lb_endpoint["endpoint"]["address"]["socket_address"]["address"] == "pods.local"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "Strict_Dns"),
        ("type", "logical_dns"),
        ("lb_policy", "round_robin"),
        ("lb_policy", "rAnDoM"),
        ("dns_lookup_family", "all"),
        ("dns_lookup_family", "V6_only"),
    ],
)
def test_cluster_enums_in_any_case(field: str, value: str) -> None:
    written = {"type": "STRICT_DNS", "lb_policy": "LEAST_REQUEST", "dns_lookup_family": "V4_ONLY"}
    text = replaced(AS_LISTS, f"    {field}: {written[field]}\n", f"    {field}: {value}\n")
    cluster = load(config_yaml=text).bootstrap.static_resources.clusters[0]
    assert getattr(cluster, field).name == value.upper()


def test_unknown_enum_names_still_list_the_valid_names() -> None:
    text = replaced(AS_LONE_VALUES, "dns_lookup_family: v4_Only", "dns_lookup_family: v4")
    text = replaced(text, "codec_type: auto", "codec_type: http-1")
    assert sorted(errors_of(text)) == [
        "static_resources.clusters[0].dns_lookup_family: expected one of AUTO, V4_ONLY, V6_ONLY, "
        'V4_PREFERRED, ALL, got "v4"',
        f'{V3_HCM}.codec_type: expected one of AUTO, HTTP1, HTTP2, HTTP3, got "http-1"',
    ]


def test_error_paths_inside_lone_mappings() -> None:
    text = replaced(AS_LONE_VALUES, "port_value: 8080", "port_value: eighty")
    text = replaced(
        text, "health_status: healthy", "health_status: healthy\n          metadata: {}"
    )
    text = replaced(
        text, "route: {cluster: pods}", "route: {cluster: pods}\n                bad: 1"
    )
    text = replaced(text, "present_match: true", "present_match: yes please")
    assert sorted(errors_of(text)) == sorted(
        [
            f"{LB_ENDPOINT}.endpoint.address.socket_address.port_value: "
            'expected a non-negative integer, got "eighty"',
            f"{LB_ENDPOINT}.metadata: Envoy field not supported by podproxy yet",
            f"{V3_HCM}.route_config.virtual_hosts[0].routes[0].bad: unknown field",
            f"{V3_HCM}.route_config.virtual_hosts[0].routes[0].match.headers[0].present_match: "
            'expected true or false, got "yes please"',
        ]
    )


def test_cross_checks_name_paths_inside_lone_mappings() -> None:
    text = replaced(AS_LONE_VALUES, "route: {cluster: pods}", "route: {cluster: nope}")
    text = replaced(text, "type: strict_dns", "type: static")
    assert sorted(errors_of(text)) == [
        f"{LB_ENDPOINT}.endpoint.address.socket_address.address: "
        'a STATIC cluster\'s endpoint must be an IP address, got "pods.local"',
        f'{V3_HCM}.route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster "nope"',
    ]


def test_v2_error_paths_inside_lone_mappings(seed_v2_text: str) -> None:
    text = replaced(
        seed_v2_text, "hosts:\n      - socket_address:", "hosts:\n        socket_address:"
    )
    text = replaced(text, "port_value: 8080", "port_value: eighty")
    text = replaced(text, "type: STRICT_DNS", "type: strict_dns")
    assert errors_of(text) == [
        f"{CLUSTER}.hosts[0].socket_address.port_value: "
        'expected a non-negative integer, got "eighty"'
    ]


def test_lone_mapping_concatenates_with_config_yaml_list(tmp_path: Path) -> None:
    # Both become repeated fields before the merge, so --config-yaml appends as protobuf does.
    path = tmp_path / "lone.yaml"
    path.write_text(AS_LONE_VALUES)
    overlay = "static_resources:\n  clusters:\n  - {name: more, type: static}\n"
    loaded = load(str(path), overlay)
    assert [c.name for c in loaded.bootstrap.static_resources.clusters] == ["pods", "more"]


def test_router_without_typed_config_is_still_accepted() -> None:
    # Envoy 1.40 wants a typed_config here; podproxy keeps older configs running.
    hcm = load(config_yaml=AS_LONE_VALUES).bootstrap.static_resources.listeners[0]
    flt = hcm.filter_chains[0].filters[0].typed_config.http_filters[0]
    assert flt.name == "envoy.filters.http.router"
    assert flt.router().suppress_envoy_headers is False


def test_bootstrap_node(seed_v2_text: str) -> None:
    text = "node: {id: n-1, cluster: front, locality: {zone: z1}}\n" + seed_v2_text
    node = load(config_yaml=text).bootstrap.node
    assert (node.id, node.cluster, node.locality and node.locality.zone) == ("n-1", "front", "z1")
    (error,) = errors_of("node: {id: n-1, metadata: {a: 1}}\n" + seed_v2_text)
    assert error == "node.metadata: Envoy field not supported by podproxy yet"
