"""Tests for `podproxy.config.schema`: durations, enums, defaults and per-message rules."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from podproxy.config.loader import load
from podproxy.config.schema import (
    Cluster,
    ClusterLoadAssignment,
    ClusterNotFoundResponseCode,
    CodecType,
    DirectResponseAction,
    DiscoveryType,
    DnsLookupFamily,
    GoogleRE2,
    HeaderMatcher,
    HealthStatus,
    HttpConnectionManager,
    LbEndpoint,
    LbPolicy,
    Listener,
    RefreshRate,
    RouteAction,
    RouteMatch,
    ServerHeaderTransformation,
    SocketAddress,
    TrafficDirection,
    VirtualHost,
    format_duration,
    is_repeated,
    message_in,
    parse_duration,
)
from podproxy.errors import ConfigErrors

CLUSTER = "static_resources.clusters[0]"


def one_error(model: Any, data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    (err,) = info.value.errors()
    return tuple(err["loc"]), err["msg"]


# --- durations ---------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=999_999_999))
def test_duration_round_trip(seconds: int, nanos: int) -> None:
    value = seconds + nanos / 1e9
    text = format_duration(value)
    assert text.endswith("s")
    assert parse_duration(text) == pytest.approx(value, abs=1e-9)
    assert parse_duration({"seconds": seconds, "nanos": nanos}) == pytest.approx(value, abs=1e-9)
    assert format_duration(parse_duration(text)) == text


@given(st.integers(min_value=1, max_value=10**6))
def test_negative_durations_rejected(n: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        parse_duration(f"-{n}s")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0.25s", 0.25), ("5s", 5.0), ("1.5s", 1.5), ("0s", 0.0), ("0.000000001s", 1e-9)],
)
def test_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", [5, 0.25, "250ms", "5", "1.5 s", "1e3s", True, None, [1], {"minutes": 1}]
)
def test_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


# --- enums and scalars -------------------------------------------------------------------


def test_enum_names_and_numbers() -> None:
    assert (
        Cluster.model_validate({"name": "c", "type": "LOGICAL_DNS"}).type
        is DiscoveryType.LOGICAL_DNS
    )
    assert Cluster.model_validate({"name": "c", "dns_lookup_family": 1}).dns_lookup_family is (
        DnsLookupFamily.V4_ONLY
    )
    loc, msg = one_error(Cluster, {"name": "c", "type": 9})
    assert loc == ("type",)
    assert msg.startswith("expected one of STATIC, STRICT_DNS")


ENDPOINT: dict[str, Any] = {"address": {"socket_address": {"address": "a", "port_value": 1}}}


# Envoy parses enum names case-insensitively (protobuf `case_insensitive_enum_parsing`).
@pytest.mark.parametrize(
    ("model", "data", "field", "want"),
    [
        (Cluster, {"name": "c", "type": "strict_dns"}, "type", DiscoveryType.STRICT_DNS),
        (Cluster, {"name": "c", "type": "Logical_Dns"}, "type", DiscoveryType.LOGICAL_DNS),
        (Cluster, {"name": "c", "type": "sTaTiC"}, "type", DiscoveryType.STATIC),
        (Cluster, {"name": "c", "lb_policy": "round_robin"}, "lb_policy", LbPolicy.ROUND_ROBIN),
        (Cluster, {"name": "c", "lb_policy": "Least_Request"}, "lb_policy", LbPolicy.LEAST_REQUEST),
        (
            Cluster,
            {"name": "c", "dns_lookup_family": "v4_only"},
            "dns_lookup_family",
            DnsLookupFamily.V4_ONLY,
        ),
        (
            Cluster,
            {"name": "c", "dns_lookup_family": "V4_Preferred"},
            "dns_lookup_family",
            DnsLookupFamily.V4_PREFERRED,
        ),
        (
            HttpConnectionManager,
            {"codec_type": "auto"},
            "codec_type",
            CodecType.AUTO,
        ),
        (
            HttpConnectionManager,
            {"server_header_transformation": "Pass_Through"},
            "server_header_transformation",
            ServerHeaderTransformation.PASS_THROUGH,
        ),
        (
            LbEndpoint,
            {"endpoint": ENDPOINT, "health_status": "degraded"},
            "health_status",
            HealthStatus.DEGRADED,
        ),
        (
            RouteAction,
            {"cluster": "c", "cluster_not_found_response_code": "not_found"},
            "cluster_not_found_response_code",
            ClusterNotFoundResponseCode.NOT_FOUND,
        ),
    ],
)
def test_enum_names_in_any_case(model: Any, data: dict[str, Any], field: str, want: Any) -> None:
    if model is HttpConnectionManager:
        data = {**HCM_MIN, **data}
    assert getattr(model.model_validate(data), field) is want


def test_enum_case_rules_stay_strict_otherwise() -> None:
    # absl::EqualsIgnoreCase folds ASCII letters only; no other spelling is a name.
    for bad in ("strict-dns", "strictdns", "StrictDns", " strict_dns", "\u017ftrict_dns"):
        loc, msg = one_error(Cluster, {"name": "c", "type": bad})
        assert loc == ("type",)
        assert msg.startswith("expected one of STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST")
    # Unsupported values are still named as Envoy names them, whatever the case written.
    assert one_error(Cluster, {"name": "c", "type": "eds"}) == (
        ("type",),
        "EDS: Envoy value not supported by podproxy yet",
    )
    assert one_error(HttpConnectionManager, {**HCM_MIN, "codec_type": "http3"}) == (
        ("codec_type",),
        "HTTP3: Envoy value not supported by podproxy yet",
    )


def test_socket_address_protocol_in_any_case() -> None:
    sa = SocketAddress.model_validate({"address": "a", "protocol": "tcp"})
    assert sa.protocol == "TCP"
    assert one_error(SocketAddress, {"address": "a", "protocol": "Udp"})[1] == (
        "UDP: Envoy value not supported by podproxy yet"
    )
    assert one_error(SocketAddress, {"address": "a", "protocol": "sctp"})[1] == (
        'expected one of TCP, UDP, got "sctp"'
    )


def test_introspection_of_repeated_fields() -> None:
    fields = Listener.model_fields
    assert is_repeated(fields["filter_chains"].annotation)
    assert not is_repeated(fields["address"].annotation)
    assert is_repeated(VirtualHost.model_fields["domains"].annotation)
    assert message_in(VirtualHost.model_fields["domains"].annotation) is None
    endpoints = ClusterLoadAssignment.model_fields["endpoints"].annotation
    assert message_in(Cluster.model_fields["load_assignment"].annotation) is ClusterLoadAssignment
    assert message_in(endpoints) is not None and is_repeated(endpoints)


def test_cluster_defaults() -> None:
    c = Cluster.model_validate({"name": "c"})
    assert c.type is DiscoveryType.STATIC
    assert c.connect_timeout == 5.0
    assert c.dns_refresh_rate == 5.0
    assert c.dns_lookup_family is DnsLookupFamily.AUTO
    assert c.wait_for_warm_on_init is True
    assert c.common_lb_config.healthy_panic_threshold == 50.0
    assert c.least_request_lb_config.choice_count == 2
    assert c.per_connection_buffer_limit_bytes == 1048576


def test_eds_and_cluster_provided_unsupported() -> None:
    assert one_error(Cluster, {"name": "c", "type": "EDS"}) == (
        ("type",),
        "EDS: Envoy value not supported by podproxy yet",
    )
    assert one_error(Cluster, {"name": "c", "lb_policy": "CLUSTER_PROVIDED"})[0] == ("lb_policy",)


def test_dns_refresh_rate_must_exceed_1ms() -> None:
    loc, msg = one_error(Cluster, {"name": "c", "dns_refresh_rate": "0.001s"})
    assert loc == ("dns_refresh_rate",)
    assert "greater than 1ms" in msg


def test_refresh_rate_defaults_and_order() -> None:
    assert RefreshRate.model_validate({"base_interval": "2s"}).max_interval == 20.0
    loc, msg = one_error(RefreshRate, {"base_interval": "2s", "max_interval": "1s"})
    assert loc == ()
    assert msg == "Value error, max_interval must not be less than base_interval"


def test_panic_threshold_percent() -> None:
    c = Cluster.model_validate(
        {"name": "c", "common_lb_config": {"healthy_panic_threshold": {"value": 25}}}
    )
    assert c.common_lb_config.healthy_panic_threshold == 25.0
    loc, _ = one_error(Cluster, {"name": "c", "common_lb_config": {"healthy_panic_threshold": 25}})
    assert loc == ("common_lb_config", "healthy_panic_threshold")


def test_bool_is_strict() -> None:
    loc, _ = one_error(Cluster, {"name": "c", "respect_dns_ttl": "yes"})
    assert loc == ("respect_dns_ttl",)


def test_socket_address() -> None:
    sa = SocketAddress.model_validate({"address": "127.0.9.1", "port_value": "80"})
    assert (sa.port_value, sa.protocol) == (80, "TCP")
    assert one_error(SocketAddress, {"address": "a", "protocol": "UDP"})[1] == (
        "UDP: Envoy value not supported by podproxy yet"
    )
    assert one_error(SocketAddress, {"address": "a", "port_value": True})[0] == ("port_value",)


# --- cluster_type (Envoy 1.40's DNS cluster extension) -------------------------------------


def dns_cluster(**typed: Any) -> dict[str, Any]:
    return {
        "name": "c",
        "cluster_type": {
            "name": "envoy.cluster.dns",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                **typed,
            },
        },
    }


def test_cluster_type_maps_to_typed_fields() -> None:
    c = Cluster.model_validate(
        dns_cluster(
            dns_refresh_rate="3s",
            respect_dns_ttl=True,
            dns_lookup_family="V4_ONLY",
            dns_min_refresh_rate="1s",
            dns_failure_refresh_rate={"base_interval": "1s"},
        )
    )
    assert c.type is DiscoveryType.STRICT_DNS
    assert (c.dns_refresh_rate, c.respect_dns_ttl, c.dns_min_refresh_rate) == (3.0, True, 1.0)
    assert c.dns_lookup_family is DnsLookupFamily.V4_ONLY
    assert (
        c.dns_failure_refresh_rate is not None and c.dns_failure_refresh_rate.max_interval == 10.0
    )
    logical = Cluster.model_validate(dns_cluster(all_addresses_in_single_endpoint=True))
    assert logical.type is DiscoveryType.LOGICAL_DNS


def test_cluster_type_cannot_mix_with_type() -> None:
    loc, msg = one_error(Cluster, {**dns_cluster(), "type": "STRICT_DNS", "respect_dns_ttl": True})
    assert loc == ()
    assert msg == "Value error, cluster_type cannot be combined with respect_dns_ttl, type"


def test_cluster_type_other_extension_unsupported() -> None:
    data = {"name": "c", "cluster_type": {"name": "envoy.clusters.redis"}}
    assert one_error(Cluster, data)[0] == ("cluster_type", "name")


def test_dns_min_refresh_rate_is_not_a_cluster_field() -> None:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml="static_resources: {clusters: [{name: c, dns_min_refresh_rate: 1s}]}")
    assert str(info.value) == f"{CLUSTER}.dns_min_refresh_rate: unknown field"


def test_typed_dns_resolver_config() -> None:
    c = Cluster.model_validate(
        {
            "name": "c",
            "typed_dns_resolver_config": {
                "name": "envoy.network.dns_resolver.cares",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3."
                    "CaresDnsResolverConfig",
                    "resolvers": [{"socket_address": {"address": "127.0.0.53", "port_value": 53}}],
                    "dns_resolver_options": {"use_tcp_for_dns_lookups": True},
                    "query_tries": 2,
                },
            },
        }
    )
    assert c.typed_dns_resolver_config is not None
    cares = c.typed_dns_resolver_config.typed_config
    assert cares.resolvers[0].socket_address.port_value == 53
    assert cares.dns_resolver_options.use_tcp_for_dns_lookups is True
    assert cares.query_tries == 2


# --- HTTP connection manager and routes ------------------------------------------------------

HCM_MIN: dict[str, Any] = {
    "stat_prefix": "s",
    "route_config": {},
    "http_filters": [{"name": "envoy.filters.http.router"}],
}


def test_hcm_defaults_and_zero_disables() -> None:
    hcm = HttpConnectionManager.model_validate(HCM_MIN)
    assert hcm.codec_type is CodecType.AUTO
    assert (hcm.stream_idle_timeout, hcm.request_timeout) == (300.0, None)
    assert hcm.max_request_headers_kb == 60 and hcm.generate_request_id is True
    hcm = HttpConnectionManager.model_validate(
        {
            **HCM_MIN,
            "stream_idle_timeout": "0s",
            "common_http_protocol_options": {"idle_timeout": "0s"},
        }
    )
    assert hcm.stream_idle_timeout is None
    assert hcm.common_http_protocol_options.idle_timeout is None


def test_hcm_rejects_http3_and_other_filters() -> None:
    assert one_error(HttpConnectionManager, {**HCM_MIN, "codec_type": "HTTP3"}) == (
        ("codec_type",),
        "HTTP3: Envoy value not supported by podproxy yet",
    )
    data = {
        **HCM_MIN,
        "http_filters": [{"name": "envoy.filters.http.lua"}, *HCM_MIN["http_filters"]],
    }
    loc, msg = one_error(HttpConnectionManager, data)
    assert loc == ("http_filters", 0, "name")
    assert "not supported by podproxy yet" in msg
    loc, msg = one_error(HttpConnectionManager, {**HCM_MIN, "http_filters": []})
    assert loc == ("http_filters",) and "router" in msg


def test_wrong_type_url() -> None:
    loc, msg = one_error(HttpConnectionManager, {**HCM_MIN, "@type": "type.googleapis.com/x.Y"})
    assert loc == ("@type",)
    assert msg.startswith("type.googleapis.com/x.Y: Envoy type not supported")


def test_router_config() -> None:
    data = {
        **HCM_MIN,
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"suppress_envoy_headers": True}}
        ],
    }
    assert HttpConnectionManager.model_validate(data).router().suppress_envoy_headers is True


def test_route_match_exactly_one() -> None:
    assert RouteMatch.model_validate({"prefix": "/"}).case_sensitive is True
    assert "exactly one of prefix, path, safe_regex" in one_error(RouteMatch, {})[1]
    assert "got 2" in one_error(RouteMatch, {"prefix": "/", "path": "/a"})[1]


def test_invalid_regex_names_path() -> None:
    loc, msg = one_error(RouteMatch, {"safe_regex": {"regex": "a(("}})
    assert loc == ("safe_regex", "regex")
    assert msg.startswith('invalid regex "a(("')


def test_header_matchers() -> None:
    m = HeaderMatcher.model_validate(
        {"name": "x", "string_match": {"prefix": "a", "ignore_case": True}}
    )
    assert m.string_match is not None and m.string_match.ignore_case
    assert (
        "at most one"
        in one_error(HeaderMatcher, {"name": "x", "exact_match": "a", "prefix_match": "b"})[1]
    )


def test_route_action_defaults() -> None:
    a = RouteAction.model_validate({"cluster": "c"})
    assert (a.timeout, a.idle_timeout, a.auto_host_rewrite) == (15.0, None, False)
    assert RouteAction.model_validate({"cluster": "c", "timeout": "0s"}).timeout is None
    assert one_error(RouteAction, {"cluster": "c", "hash_policy": []})[1] == (
        "Extra inputs are not permitted"
    )


def test_direct_response_bodies(tmp_path: Path) -> None:
    inline = DirectResponseAction.model_validate({"status": 200, "body": {"inline_string": "hi"}})
    assert inline.body_bytes() == b"hi"
    raw = DirectResponseAction.model_validate(
        {"status": 503, "body": {"inline_bytes": base64.b64encode(b"\x00\x01").decode()}}
    )
    assert raw.body_bytes() == b"\x00\x01"
    f = tmp_path / "body.txt"
    f.write_bytes(b"from file")
    from_file = DirectResponseAction.model_validate({"status": 404, "body": {"filename": str(f)}})
    f.unlink()
    assert from_file.body_bytes() == b"from file"  # read once, at load time
    assert DirectResponseAction.model_validate({"status": 204}).body_bytes() == b""
    loc, msg = one_error(DirectResponseAction, {"status": 200, "body": {"filename": str(f)}})
    assert loc == ("body", "filename") and msg.startswith("cannot read file")
    assert one_error(DirectResponseAction, {"status": 600})[0] == ("status",)


def test_lb_endpoint_health_status() -> None:
    from podproxy.config.schema import LbEndpoint

    ep = LbEndpoint.model_validate(
        {
            "endpoint": {"address": {"socket_address": {"address": "127.1.2.4"}}},
            "health_status": "DRAINING",
        }
    )
    assert ep.health_status is HealthStatus.DRAINING and ep.load_balancing_weight is None
    assert one_error(
        LbEndpoint,
        {**ep.model_dump(exclude_defaults=True, mode="json"), "load_balancing_weight": 0},
    )[0] == ("load_balancing_weight",)


# --- issue 10 §1: connection manager and listener fields that run -----------------------------


def test_hcm_forwarding_and_timeout_field_defaults() -> None:
    hcm = HttpConnectionManager.model_validate(HCM_MIN)
    assert (hcm.xff_num_trusted_hops, hcm.add_user_agent) == (0, False)
    assert hcm.scheme_header_transformation.scheme_to_overwrite is None
    assert hcm.scheme_header_transformation.match_upstream is False
    assert (hcm.request_headers_timeout, hcm.drain_timeout) == (None, 5.0)
    assert hcm.common_http_protocol_options.max_stream_duration is None


def test_hcm_forwarding_and_timeout_fields() -> None:
    hcm = HttpConnectionManager.model_validate(
        {
            **HCM_MIN,
            "xff_num_trusted_hops": 2,
            "add_user_agent": True,
            "scheme_header_transformation": {"scheme_to_overwrite": "https"},
            "request_headers_timeout": "2.5s",
            "drain_timeout": "0s",
            "common_http_protocol_options": {"max_stream_duration": "30s"},
        }
    )
    assert (hcm.xff_num_trusted_hops, hcm.add_user_agent) == (2, True)
    assert hcm.scheme_header_transformation.scheme_to_overwrite == "https"
    # request_headers_timeout and max_stream_duration: 0 disables; drain_timeout 0 is "at once".
    assert (hcm.request_headers_timeout, hcm.drain_timeout) == (2.5, 0.0)
    assert hcm.common_http_protocol_options.max_stream_duration == 30.0
    zero = HttpConnectionManager.model_validate(
        {
            **HCM_MIN,
            "request_headers_timeout": "0s",
            "common_http_protocol_options": {"max_stream_duration": "0s"},
        }
    )
    assert zero.request_headers_timeout is None
    assert zero.common_http_protocol_options.max_stream_duration is None


@pytest.mark.parametrize(
    ("data", "loc", "msg"),
    [
        (
            {"scheme_header_transformation": {"scheme_to_overwrite": "HTTPS"}},
            ("scheme_header_transformation", "scheme_to_overwrite"),
            'expected "http" or "https", got "HTTPS"',
        ),
        ({"xff_num_trusted_hops": -1}, ("xff_num_trusted_hops",), "expected a non-negative"),
        (
            {"xff_num_trusted_hops": 2**32},
            ("xff_num_trusted_hops",),
            "Input should be less than or equal to 4294967295",
        ),
        ({"drain_timeout": "-1s"}, ("drain_timeout",), "expected a non-negative duration"),
        ({"add_user_agent": "yes"}, ("add_user_agent",), "Input should be a valid boolean"),
    ],
)
def test_hcm_forwarding_and_timeout_field_errors(
    data: dict[str, Any], loc: tuple[str, ...], msg: str
) -> None:
    got_loc, got_msg = one_error(HttpConnectionManager, {**HCM_MIN, **data})
    assert got_loc == loc and got_msg.startswith(msg)


def test_still_unsupported_protocol_options_name_their_path() -> None:
    # The downstream max_stream_duration runs; a cluster's (the upstream stream's) does not yet.
    text = """
static_resources:
  clusters:
  - name: c
    common_http_protocol_options: {max_stream_duration: 1s}
"""
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    assert str(info.value) == (
        f"{CLUSTER}.common_http_protocol_options.max_stream_duration: "
        "Envoy field not supported by podproxy yet"
    )
    hcm_text = (Path(__file__).resolve().parents[2] / "examples" / "seed-v3.yaml").read_text()
    hcm_text = hcm_text.replace(
        "stat_prefix: ingress_http",
        "stat_prefix: ingress_http\n          common_http_protocol_options:"
        "\n            headers_with_underscores_action: REJECT_REQUEST",
    )
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=hcm_text)
    assert str(info.value).endswith(
        "typed_config.common_http_protocol_options.headers_with_underscores_action: "
        "Envoy field not supported by podproxy yet"
    )


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("INBOUND", TrafficDirection.INBOUND),
        ("outbound", TrafficDirection.OUTBOUND),
        (0, TrafficDirection.UNSPECIFIED),
        (2, TrafficDirection.OUTBOUND),
    ],
)
def test_listener_traffic_direction(value: object, want: TrafficDirection) -> None:
    base = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {"filters": [{"name": "hcm", "typed_config": {**HCM_MIN, "route_config": {}}}]}
        ],
    }
    assert Listener.model_validate(base).traffic_direction is TrafficDirection.UNSPECIFIED
    assert Listener.model_validate({**base, "traffic_direction": value}).traffic_direction is want
    loc, msg = one_error(Listener, {**base, "traffic_direction": "SIDEWAYS"})
    assert loc == ("traffic_direction",)
    assert msg == 'expected one of UNSPECIFIED, INBOUND, OUTBOUND, got "SIDEWAYS"'


@pytest.mark.envoy
def test_envoy_agrees_on_the_new_fields(envoy_validate: Callable[..., Any]) -> None:
    """What podproxy accepts and rejects here, Envoy 1.40 `--mode validate` does too."""
    seed = (Path(__file__).resolve().parents[2] / "examples" / "seed-v3.yaml").read_text()
    fields = {
        "xff_num_trusted_hops: 3": True,
        "add_user_agent: true": True,
        "scheme_header_transformation: {scheme_to_overwrite: https, match_upstream: true}": True,
        "scheme_header_transformation: {scheme_to_overwrite: ftp}": False,
        "request_headers_timeout: 0.5s": True,
        "drain_timeout: 0s": True,
        "drain_timeout: -1s": False,
        "common_http_protocol_options: {max_stream_duration: 2s}": True,
    }
    for field, ok in fields.items():
        text = seed.replace(
            "stat_prefix: ingress_http", f"stat_prefix: ingress_http\n          {field}"
        )
        try:
            load(config_yaml=text)
            ours = True
        except ConfigErrors:
            ours = False
        result = envoy_validate(text)
        assert (ours, result.returncode == 0) == (ok, ok), (field, result.stderr[-300:])
    listener = seed.replace(
        "  - name: listener_0\n", "  - name: listener_0\n    traffic_direction: INBOUND\n"
    )
    assert listener != seed
    load(config_yaml=listener)
    assert envoy_validate(listener).returncode == 0


def test_google_re2_engine_is_accepted_empty() -> None:
    """`google_re2: {}` names the only engine there is (older configs carry it); the
    deprecated max_program_size tunes RE2's program, which podproxy's engine does not have."""
    assert RouteMatch.model_validate({"safe_regex": {"google_re2": {}, "regex": "/a.*"}})
    loc, _ = one_error(
        RouteMatch, {"safe_regex": {"google_re2": {"max_program_size": 100}, "regex": "/a"}}
    )
    assert loc == ("safe_regex", "google_re2", "max_program_size")
    assert "max_program_size" in GoogleRE2.UNSUPPORTED  # the loader says "not supported"
