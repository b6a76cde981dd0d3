"""Compiled request_mirror_policies, route max_stream_duration and attempt-count settings:
from typed config to `Route` attributes, as Envoy's config_impl.cc resolves them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from podproxy.config.schema import RouteConfiguration
from podproxy.router.routes import Route, build_route_table


class FixedRuntime:
    """A runtime whose keys are all at their defaults, recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int, int]] = []

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        self.asked.append((key, numerator, denominator, random_value))
        return random_value % denominator < numerator


def compile_one(
    route_action: dict[str, Any],
    vhost: dict[str, Any] | None = None,
    rc: dict[str, Any] | None = None,
    runtime: Any = None,
) -> Route:
    cfg = RouteConfiguration.model_validate(
        {
            **(rc or {}),
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    **(vhost or {}),
                    "routes": [{"match": {"prefix": "/"}, "route": route_action}],
                }
            ],
        }
    )
    table = build_route_table(cfg, runtime=runtime, random_value=lambda: 7)
    r = table.route(b"app", b"/", [])
    assert r is not None
    return r


def clusters(r: Route) -> list[str | None]:
    assert r.mirrors is not None
    return [m.cluster for m in r.mirrors]


def test_no_policies_cost_nothing() -> None:
    r = compile_one({"cluster": "app"})
    assert r.mirrors is None
    assert r.max_stream_duration is None
    assert r.attempt_count_line == b""
    assert not r.attempt_count_in_response


def test_most_specific_non_empty_list_wins_whole() -> None:
    rc = {"request_mirror_policies": [{"cluster": "from-rc"}]}
    vh = {"request_mirror_policies": [{"cluster": "from-vh1"}, {"cluster": "from-vh2"}]}
    own = {"cluster": "app", "request_mirror_policies": [{"cluster": "own"}]}
    assert clusters(compile_one(own, vh, rc)) == ["own"]
    assert clusters(compile_one({"cluster": "app"}, vh, rc)) == ["from-vh1", "from-vh2"]
    assert clusters(compile_one({"cluster": "app"}, None, rc)) == ["from-rc"]


def test_weighted_clusters_keep_the_routes_mirrors() -> None:
    r = compile_one(
        {
            "weighted_clusters": {"clusters": [{"name": "a", "weight": 1}]},
            "request_mirror_policies": [{"cluster": "m"}],
        }
    )
    entry, name = r.choose_cluster([])
    assert name == "a"
    assert clusters(entry) == ["m"]


@pytest.mark.parametrize(
    ("authority", "want"),
    [
        (b"app", b"app-shadow"),
        (b"app:8080", b"app-shadow:8080"),
        (b"[::1]:80", b"[::1]-shadow:80"),
        (b"[::1]", b"[::1]-shadow"),
        (b"127.0.1.1:80", b"127.0.1.1-shadow:80"),
    ],
)
def test_shadow_authority_inserts_the_suffix_before_the_port(authority: bytes, want: bytes) -> None:
    (policy,) = (
        compile_one({"cluster": "a", "request_mirror_policies": [{"cluster": "m"}]}).mirrors or ()
    )
    assert policy.authority(authority) == want


def test_suffix_disabled_and_host_rewrite() -> None:
    r = compile_one(
        {
            "cluster": "a",
            "request_mirror_policies": [
                {"cluster": "m", "disable_shadow_host_suffix_append": True},
                {"cluster": "m", "host_rewrite_literal": "other.test"},
            ],
        }
    )
    plain, rewritten = r.mirrors or ()
    assert plain.authority(b"app:81") == b"app:81"
    assert rewritten.authority(b"app:81") == b"other.test"


def test_cluster_header_first_value_and_absent() -> None:
    r = compile_one({"cluster": "a", "request_mirror_policies": [{"cluster_header": "X-To"}]})
    (policy,) = r.mirrors or ()
    assert policy.cluster_name([(b"x-to", b"one"), (b"x-to", b"two")]) == "one"
    assert policy.cluster_name([]) is None
    assert policy.cluster_name([(b"x-to", b"")]) is None


def test_runtime_fraction_asks_the_runtime() -> None:
    rt = FixedRuntime()
    r = compile_one(
        {
            "cluster": "a",
            "request_mirror_policies": [
                {
                    "cluster": "m",
                    "runtime_fraction": {
                        "runtime_key": "mirror.share",
                        "default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"},
                    },
                },
                {"cluster": "m"},
            ],
        },
        runtime=rt,
    )
    fractional, always = r.mirrors or ()
    assert not fractional.enabled()  # 7 % 10000 < 5 is false
    assert rt.asked == [("mirror.share", 5, 10000, 7)]
    assert always.enabled()
    assert len(rt.asked) == 1  # no fraction: the runtime is not asked


def test_header_mutations_apply_in_order() -> None:
    r = compile_one(
        {
            "cluster": "a",
            "request_mirror_policies": [
                {
                    "cluster": "m",
                    "request_headers_mutations": [
                        {"append": {"header": {"key": "X-A", "value": "1"}}},
                        {"remove": "x-a"},
                        {"append": {"header": {"key": "x-b", "value": "2"}}},
                    ],
                }
            ],
        }
    )
    (policy,) = r.mirrors or ()
    assert policy.mutations is not None
    headers = [(b"x-a", b"0"), (b"x-c", b"3")]
    policy.mutations.apply(headers)
    assert headers == [(b"x-c", b"3"), (b"x-b", b"2")]


def test_max_stream_duration_and_grpc_timeouts() -> None:
    r = compile_one({"cluster": "a", "max_stream_duration": {"max_stream_duration": "1.5s"}})
    assert r.max_stream_duration == 1.5
    # A max_stream_duration message turns the route timeout off (Envoy's usingNewTimeouts:
    # no x-envoy-expected-rq-timeout-ms either, checked side by side).
    assert r.timeout is None and r.timeout_header == b""
    assert r.grpc_timeouts is not None and r.grpc_timeouts.max_stream_duration_ms == 1500
    off = compile_one({"cluster": "a", "max_stream_duration": {"max_stream_duration": "0s"}})
    assert off.max_stream_duration == 0.0
    unset = compile_one({"cluster": "a", "max_stream_duration": {}})
    assert unset.max_stream_duration is None
    assert unset.grpc_timeouts is not None and unset.grpc_timeouts.new_timeouts
    legacy = compile_one({"cluster": "a", "timeout": "2s", "max_grpc_timeout": "0s"})
    assert legacy.timeout is None and legacy.grpc_timeouts is not None
    assert legacy.grpc_timeouts.route_timeout_ms == 2000
    assert legacy.grpc_timeouts.max_grpc_timeout_ms == 0
    plain = compile_one({"cluster": "a", "timeout": "2s"})
    assert plain.grpc_timeouts is None and plain.timeout == 2.0


def test_attempt_count_settings_from_the_virtual_host() -> None:
    vh = {"include_request_attempt_count": True, "include_attempt_count_in_response": True}
    r = compile_one({"cluster": "a"}, vh)
    assert r.attempt_count_line == b"x-envoy-attempt-count: 1\r\n"
    assert r.timeout_header.endswith(b"x-envoy-attempt-count: 1\r\n")
    assert r.attempt_count_in_response


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"cluster": "a", "cluster_header": "x"}, "Only one of cluster 'a' or cluster_header 'x'"),
        ({}, "Exactly one of cluster or cluster_header"),
        (
            {"cluster": "a", "request_headers_mutations": [{"remove": "host"}]},
            "may not be removed",
        ),
        (
            {
                "cluster": "a",
                "request_headers_mutations": [
                    {"remove": "a", "append": {"header": {"key": "b", "value": "c"}}}
                ],
            },
            "exactly one of remove, append",
        ),
    ],
)
def test_policy_errors(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        compile_one({"cluster": "app", "request_mirror_policies": [policy]})
    assert message in str(info.value)


def test_grpc_timeout_header_fields_are_accepted() -> None:
    r = compile_one(
        {
            "cluster": "app",
            "max_stream_duration": {
                "max_stream_duration": "1s",
                "grpc_timeout_header_max": "0s",
                "grpc_timeout_header_offset": "0.05s",
            },
        }
    )
    assert r.grpc_timeouts is not None
    assert (r.grpc_timeouts.header_max_ms, r.grpc_timeouts.header_offset_ms) == (0, 50)


HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def test_remove_on_match_is_a_config_error_naming_the_field() -> None:
    from podproxy.config.loader import load
    from podproxy.errors import ConfigErrors

    text = f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: x
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: a
                  request_mirror_policies:
                  - cluster: a
                    request_headers_mutations: [{{remove_on_match: {{key_matcher: {{exact: x}}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER}}}
  clusters:
  - name: a
    load_assignment: {{cluster_name: a, endpoints: []}}
"""
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    assert "request_headers_mutations[0].remove_on_match" in str(info.value)
    assert "not supported" in str(info.value)
