"""Formatted header values in route header mutations: compiling them, applying them with the
stream's `HeaderInfo`, and the config errors.

The expected values are Envoy 1.40's, as observed side by side (tests/integration/
test_envoy_header_format.py runs the same operators against Envoy itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from integration.test_proxy_http import bootstrap, cluster

from podproxy.access_log.formatter import FormatError
from podproxy.config.loader import load
from podproxy.config.schema import RouteConfiguration
from podproxy.errors import ConfigErrors
from podproxy.http.stream import Exchange, RequestHead
from podproxy.router.header_format import (
    HeaderInfo,
    header_value,
    local_reply_info,
    request_info,
    response_info,
)
from podproxy.router.routes import Route, build_route_table


@dataclass
class Clock:
    now: float = 100.0

    def time(self) -> float:
        return self.now


@dataclass
class Transport:
    sockname: tuple[str, int]

    def get_extra_info(self, name: str) -> Any:
        return self.sockname if name == "sockname" else None


@dataclass
class Config:
    remote_from_xff: int | None = None


@dataclass
class Conn:
    """The few things a `HeaderInfo` reads of a downstream connection."""

    loop: Clock = field(default_factory=Clock)
    remote: tuple[str, int] = ("127.0.0.7", 40000)
    config: Config = field(default_factory=Config)
    transport: Transport = field(default_factory=lambda: Transport(("127.0.0.1", 10000)))


@dataclass
class ClusterInfo:
    observability_name: str


@dataclass
class FakeCluster:
    info: ClusterInfo


def exchange(target: bytes = b"/a?q=1", *headers: tuple[bytes, bytes], **conn: Any) -> Exchange:
    head = RequestHead(b"GET", target, "1.1", [(b"x-foo", b"foov"), *headers], True, b"app")
    return Exchange(Conn(**conn), head, start=99.5)  # type: ignore[arg-type]


def route(*adds: dict[str, Any], vh: tuple[dict[str, Any], ...] = (), **action: Any) -> Route:
    r = {
        "name": "r1",
        "match": {"prefix": "/"},
        "route": {"cluster": "a", **action},
        "request_headers_to_add": list(adds),
    }
    v = {"name": "v", "domains": ["*"], "routes": [r], "request_headers_to_add": list(vh)}
    config = RouteConfiguration.model_validate({"name": "rc", "virtual_hosts": [v]})
    found = build_route_table(config).route(b"app", b"/", [])
    assert found is not None
    return found


def hv(key: str, value: str, **kw: Any) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, **kw}


def render(fmt: str, info: HeaderInfo, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    value = header_value(fmt)
    assert not isinstance(value, bytes)
    info.bind(headers if headers is not None else [])
    return value(info)


def test_literal_values_stay_bytes() -> None:
    assert header_value("plain") == b"plain"
    assert header_value("50%% off, %%REQ(x)%%") == b"50% off, %REQ(x)%"
    assert header_value("") == b""
    assert callable(header_value("%PROTOCOL%"))


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%REQUEST_DURATION%", "%REQUEST_DURATION%: not supported in this field by podproxy"),
        ("%RESPONSE_TX_DURATION%", "%RESPONSE_TX_DURATION%: not supported in this field"),
        ("%UNIQUE_ID%", "Envoy command operator not supported by podproxy yet"),
        ("%NO_SUCH%", "Not supported field in StreamInfo: NO_SUCH"),
        ("%REQ%", "REQ requires parameters"),
        ("%PROTOCOL(x)%", "PROTOCOL does not take any parameters or length"),
        ("50% off", "Couldn't find valid command at position 2"),
        ("%REQ(a?b?c)%", "More than 1 alternative header specified in token: a?b?c"),
    ],
)
def test_values_envoy_or_podproxy_refuses(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=re.escape(message)):
        header_value(fmt)


def test_config_error_names_the_field() -> None:
    r = {
        "match": {"prefix": "/"},
        "route": {"cluster": "a"},
        "response_headers_to_add": [
            hv("x-ok", "%PROTOCOL%"),
            hv("x-bad", "%RESPONSE_TX_DURATION%"),
        ],
    }
    with pytest.raises(ConfigErrors) as err:
        load(config_yaml=bootstrap([cluster("a", [("127.0.1.1", 80)])], routes=[r]))
    assert (
        'routes[0].response_headers_to_add[1].header.value: "%RESPONSE_TX_DURATION%": '
        "%RESPONSE_TX_DURATION%: not supported in this field by podproxy yet"
    ) in str(err.value)


def test_local_rate_limit_values_stay_literal() -> None:
    """The local rate limit filter's headers are not formatted by podproxy: an operator
    there is refused, never sent as text."""
    from podproxy.config.schema import LocalRateLimit

    cfg = {
        "stat_prefix": "rl",
        "response_headers_to_add": [hv("x-rl", "%PROTOCOL%")],
    }
    with pytest.raises(ValueError, match="not supported here by podproxy yet"):
        LocalRateLimit.model_validate(cfg)
    cfg["response_headers_to_add"] = [hv("x-rl", "100%%")]
    lrl = LocalRateLimit.model_validate(cfg)
    assert lrl.response_headers_to_add[0].header.value_bytes() == b"100%"


def test_request_side_reads_the_request_as_the_router_has_it() -> None:
    ex = exchange(b"/a?q=1", (b"x-forwarded-for", b"127.0.0.9"))
    clusters = {"a": FakeCluster(ClusterInfo("a-stats"))}
    r = route(prefix_rewrite="/rw/")
    info = request_info(ex, r, clusters)
    live = [(b"x-foo", b"foov"), (b"x-request-id", b"rid")]
    assert render("%REQ(:path)% %REQ(:authority)% %REQ(host)% %REQ(:method)%", info, live) == (
        b"/a?q=1 app app GET"
    )
    assert render("%REQ(x-request-id)%|%REQ(x-missing)%|%REQ(x-foo):2%", info, live) == (b"rid||fo")
    assert render("%PROTOCOL% %ROUTE_NAME% %UPSTREAM_CLUSTER%", info, live) == (
        b"HTTP/1.1 r1 a-stats"
    )
    # Before the upstream host is chosen and before any response: absent, or Envoy's zeros.
    assert render("[%UPSTREAM_HOST%%UPSTREAM_REMOTE_ADDRESS%%RESP(x-up)%]", info) == b"[]"
    assert render("%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED%", info) == b"0 - 0"
    assert render("[%RESPONSE_DURATION%]", info) == b"[]"
    # Envoy's currentDuration: the time so far (the clock reads 100.0, the stream began 99.5).
    assert render("%DURATION%", info) == b"500"
    assert render("%DOWNSTREAM_REMOTE_ADDRESS%", info) == b"127.0.0.7:40000"
    assert render("%DOWNSTREAM_LOCAL_PORT% %DOWNSTREAM_LOCAL_ADDRESS%", info) == (
        b"10000 127.0.0.1:10000"
    )


def test_downstream_remote_address_from_xff_without_use_remote_address() -> None:
    ex = exchange(b"/", (b"x-forwarded-for", b"127.0.0.9"), config=Config(remote_from_xff=0))
    info = request_info(ex, route(), {})
    assert render("%DOWNSTREAM_REMOTE_ADDRESS%", info) == b"127.0.0.9:0"
    assert render("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%", info) == b"127.0.0.7"


def test_upstream_cluster_of_a_cluster_header_route() -> None:
    r = route()
    r = Route(r.name, r.matches, cluster=None, cluster_header=b"x-cl")
    clusters = {"b": FakeCluster(ClusterInfo("b"))}
    info = request_info(exchange(b"/", (b"x-cl", b"b")), r, clusters)
    assert render("%UPSTREAM_CLUSTER%", info) == b"b"
    assert render("[%UPSTREAM_CLUSTER%]", request_info(exchange(b"/"), r, clusters)) == b"[]"


def test_response_side_reads_the_request_as_forwarded() -> None:
    ex = exchange(b"/a?q=1")
    ex.upstream_host = "127.0.1.1:8080"
    ex.bytes_received = 5
    forwarded = (
        b"GET /rw/a?q=1 HTTP/1.1\r\nhost: newhost\r\nx-foo: foov\r\nx-l1: one\r\n"
        b"x-envoy-original-path: /a?q=1\r\n\r\n"
    )
    upstream = Conn(transport=Transport(("127.0.0.1", 52000)))
    info = response_info(ex, route(), 200, forwarded, "a", upstream)
    live = [(b"x-up", b"1"), (b"grpc-status", b"14")]
    assert render("%REQ(:path)% %REQ(:authority)% %REQ(x-l1)%", info, live) == (
        b"/rw/a?q=1 newhost one"
    )
    assert render("%REQ(x-envoy-original-path)% %RESP(x-up)%", info, live) == b"/a?q=1 1"
    assert render("%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT%", info, live) == b"200 5 0"
    assert render("%UPSTREAM_HOST% %UPSTREAM_REMOTE_PORT% %UPSTREAM_CLUSTER%", info, live) == (
        b"127.0.1.1:8080 8080 a"
    )
    assert render("%UPSTREAM_LOCAL_ADDRESS% %RESPONSE_DURATION%", info, live) == (
        b"127.0.0.1:52000 500"
    )
    assert render("%GRPC_STATUS% %GRPC_STATUS_NUMBER%", info, live) == b"Unavailable 14"
    assert render("[%TRAILER(x)%%UPSTREAM_TRANSPORT_FAILURE_REASON%]", info, live) == b"[]"


def test_local_reply_response_code_is_zero() -> None:
    ex = exchange(b"/direct")
    ex.add_flag("UH")
    info = local_reply_info(ex, route(), b"http")
    assert render("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", info) == (
        b"0 UH NoHealthyUpstream"
    )
    assert render("%REQ(:path)% [%UPSTREAM_HOST%][%UPSTREAM_CLUSTER%]", info) == b"/direct [][]"
    # The x-forwarded-proto Envoy's connection manager sets before the router runs.
    assert render("%REQ(x-forwarded-proto)%", info) == b"http"


def test_request_side_sees_the_body_length() -> None:
    """The router writes content-length after the lines it mutates; Envoy's header map has
    it all along."""
    ex = exchange(b"/", (b"content-length", b"5"))
    assert render("%REQ(content-length)%", request_info(ex, route(), {})) == b"5"


def test_mutation_levels_and_empty_values() -> None:
    """Empty values add nothing unless keep_empty_value; a level's values are computed from
    the headers before its own additions; a later level reads an earlier level's."""
    r = route(
        hv("x-mix", "a%REQ(x-missing)%b"),
        hv("x-none", "%REQ(x-missing)%"),
        hv("x-kept", "%REQ(x-missing)%", keep_empty_value=True),
        hv("x-l1", "one"),
        hv("x-sees-l1", "[%REQ(x-l1)%]"),
        hv("x-foo", "%REQ(x-foo)%-2", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
        vh=(hv("x-vh-sees-l1", "[%REQ(x-l1)%]"),),
    )
    mutation = r.request_mutation
    assert mutation is not None and mutation.formatted
    ex = exchange()
    got = mutation.apply_to_lines(b"x-foo: foov\r\n", request_info(ex, r, {}))
    assert got == (
        b"x-foo: foov-2\r\nx-mix: ab\r\nx-kept: \r\nx-l1: one\r\nx-sees-l1: []\r\n"
        b"x-vh-sees-l1: [one]\r\n"
    )


def test_literal_mutations_need_no_context() -> None:
    r = route(hv("x-a", "1"))
    assert r.request_mutation is not None and not r.request_mutation.formatted
    assert r.request_mutation.apply_to_lines(b"") == b"x-a: 1\r\n"


def test_raw_value_adds_what_envoy_does() -> None:
    """Envoy 1.40 formats a HeaderValue's `value` only: a raw_value adds nothing, or an empty
    header with keep_empty_value."""
    r = route(
        {"header": {"key": "x-raw", "raw_value": "cGxhaW4="}},
        {"header": {"key": "x-raw-kept", "raw_value": "cGxhaW4="}, "keep_empty_value": True},
    )
    assert r.request_mutation is not None
    assert r.request_mutation.apply_to_lines(b"") == b"x-raw-kept: \r\n"
