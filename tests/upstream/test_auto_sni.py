"""upstream_http_protocol_options: the names a request gives its connection, the pools they
key, and the config that turns them on (semantics pinned side by side with Envoy 1.40 in
tests/integration/test_envoy_auto_sni.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from podproxy.config.loader import load
from podproxy.config.schema import Cluster as ClusterConfig
from podproxy.config.schema import CoreUpstreamHttpProtocolOptions
from podproxy.errors import ConfigErrors
from podproxy.stats import Store
from podproxy.upstream.auto_sni import AutoSni, parse_authority
from podproxy.upstream.cluster import SNI_POOLS_SWEEP, Cluster, ClusterInfo
from podproxy.upstream.host import Host
from podproxy.upstream.load_balancer import RoundRobinLoadBalancer

EXTENSION = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("foo.example.com", ("foo.example.com", False)),
        ("Foo.Example.com:8443", ("Foo.Example.com", False)),  # case kept, port dropped
        ("foo.example.com:", ("foo.example.com:", False)),  # no port: kept whole
        ("foo.example.com:99999", ("foo.example.com:99999", False)),
        ("foo.example.com:x1", ("foo.example.com:x1", False)),
        ("127.0.0.1", ("127.0.0.1", True)),
        ("127.0.0.1:80", ("127.0.0.1", True)),
        ("[::1]:80", ("::1", True)),
        ("[::1]", ("::1", True)),
        ("[not-v6]:80", ("[not-v6]", False)),
        # Unbracketed IPv6: the last group reads as a port, as Envoy's parseAuthority does.
        ("::1", (":", False)),
        ("", ("", False)),
    ],
)
def test_parse_authority(value: str, want: tuple[str, bool]) -> None:
    assert parse_authority(value) == want


def auto(**cfg: Any) -> AutoSni:
    got = AutoSni.from_config(CoreUpstreamHttpProtocolOptions.model_validate(cfg))
    assert got is not None
    return got


def test_nothing_on_is_no_auto_sni() -> None:
    assert AutoSni.from_config(None) is None
    assert AutoSni.from_config(CoreUpstreamHttpProtocolOptions()) is None
    only_header = CoreUpstreamHttpProtocolOptions(override_auto_sni_header="x-sni")
    assert AutoSni.from_config(only_header) is None


def test_names_from_host_and_override_header() -> None:
    sni = auto(auto_sni=True)
    assert sni.names(b"Foo.Example.com:8443", []) == ("Foo.Example.com", None)
    assert sni.names(b"127.0.0.1:80", []) == (None, None)  # no SNI for an address
    assert sni.names(b"", []) == (None, None)
    both = auto(auto_sni=True, auto_san_validation=True, override_auto_sni_header="X-SNI")
    assert both.header == b"x-sni"
    hdrs = [(b"x-sni", b"over.example.com:99"), (b"x-sni", b"second.example.com")]
    assert both.names(b"foo.example.com", hdrs) == ("over.example.com", "over.example.com")
    # An empty or absent override falls back to the Host.
    assert both.names(b"foo.example.com", [(b"x-sni", b"")]) == ("foo.example.com",) * 2
    assert both.names(b"foo.example.com", []) == ("foo.example.com",) * 2
    # The SAN check keeps an address (the certificate's IP SANs are compared).
    assert both.names(b"[::1]:80", []) == (None, "::1")
    san_only = auto(auto_san_validation=True)
    assert san_only.names(b"a.example.com", []) == (None, "a.example.com")
    assert auto(auto_sni=True, override_auto_sni_header=":authority").header is None


def test_key_is_case_insensitive_and_keeps_the_names() -> None:
    both = auto(auto_sni=True, auto_san_validation=True)
    assert both.key(b"A.Example.COM", []) == (
        ("a.example.com", "a.example.com"),
        "A.Example.COM",
        "A.Example.COM",
    )
    assert both.key(b"a.example.com", [])[0] == both.key(b"A.EXAMPLE.com:1", [])[0]


class FakePool:
    def __init__(self, host: Host, tls: Any = None, h2: bool = False) -> None:
        self.host, self.tls, self.h2 = host, tls, h2
        self.is_empty = False
        self.drained = False

    def drain(self) -> None:
        self.drained = True


class FakeTls:
    def named(self, sni: str | None, san: str | None) -> tuple[str | None, str | None]:
        return sni, san


def cluster(auto_sni: AutoSni | None, h2: bool = False, tls: Any = None) -> Cluster:
    info = ClusterInfo("c", type_name="STATIC", connect_timeout=1.0, lb_policy="RR",
                       scope=Store().scope("cluster.c."))  # fmt: skip
    return Cluster(
        info,
        RoundRobinLoadBalancer(),
        FakePool,
        (lambda host, tls=None: FakePool(host, tls, h2=True)) if h2 else None,
        auto_sni=auto_sni,
        tls=tls,
    )


def test_pools_keyed_by_host_and_names() -> None:
    c = cluster(auto(auto_sni=True), tls=FakeTls())
    assert c.by_request and not c.by_downstream
    h1, h2 = Host("127.0.1.1", 80), Host("127.0.1.2", 80)
    a = c.pool_for_request(h1, False, b"a.example.com", [])
    assert a.tls == ("a.example.com", None)
    assert c.pool_for_request(h1, False, b"A.EXAMPLE.com:443", []) is a
    assert c.pool_for_request(h2, False, b"a.example.com", []) is not a
    b = c.pool_for_request(h1, False, b"b.example.com", [])
    assert b is not a and b.tls == ("b.example.com", None)
    # An address names nothing: the host's ordinary pool, with the cluster's own TLS.
    plain = c.pool_for_request(h1, False, b"127.0.0.1", [])
    assert plain is c.pool_for(h1) and plain.tls is None
    assert len(c.all_pools()) == 4
    # A host that leaves drains its named pools too.
    c.priority_set.update_hosts([h1, h2])
    c.priority_set.update_hosts([h2])
    assert a.drained and b.drained and plain.drained
    assert [p.host for p in c.all_pools()] == [h2]


def test_plaintext_cluster_is_keyed_all_the_same() -> None:
    # Envoy keys its pools by the names even without TLS (a pod sees one connection per name).
    c = cluster(auto(auto_sni=True))
    h = Host("127.0.1.1", 80)
    a = c.pool_for_request(h, False, b"a.example.com", [])
    assert a.tls is None
    assert c.pool_for_request(h, False, b"b.example.com", []) is not a


def test_downstream_protocol_and_names() -> None:
    c = cluster(auto(auto_san_validation=True), h2=True, tls=FakeTls())
    h = Host("127.0.1.1", 80)
    over_h2 = c.pool_for_request(h, True, b"a.example.com", [])
    over_h1 = c.pool_for_request(h, False, b"a.example.com", [])
    assert over_h2.h2 and not over_h1.h2
    assert over_h2.tls == over_h1.tls == (None, "a.example.com")


def test_unused_named_pools_are_dropped() -> None:
    c = cluster(auto(auto_sni=True))
    h = Host("127.0.1.1", 80)
    kept = c.pool_for_request(h, False, b"kept.example.com", [])
    for i in range(SNI_POOLS_SWEEP - 1):
        c.pool_for_request(h, False, b"n%d.example.com" % i, []).is_empty = True
    assert len(c.sni_pools) == SNI_POOLS_SWEEP
    c.pool_for_request(h, False, b"new.example.com", [])
    assert len(c.sni_pools) == 2  # kept (it has connections) and the new one
    assert c.pool_for_request(h, False, b"kept.example.com", []) is kept


def test_no_options_keeps_the_plain_path() -> None:
    c = cluster(None)
    assert not c.by_request
    h = Host("127.0.1.1", 80)
    assert c.pool_for_request(h, False, b"a.example.com", []) is c.pool_for(h)


# --- config ---------------------------------------------------------------------------------


def load_cluster(**fields: Any) -> ClusterConfig:
    cl = {"name": "c", "connect_timeout": "1s", **fields}
    text = yaml.safe_dump({"static_resources": {"clusters": [cl]}})
    return load(config_yaml=text).bootstrap.static_resources.clusters[0]


def extension(**opts: Any) -> dict[str, Any]:
    return {
        EXTENSION: {
            "@type": f"type.googleapis.com/{EXTENSION}",
            "explicit_http_config": {"http_protocol_options": {}},
            **opts,
        }
    }


def test_config_in_the_deprecated_field_and_the_extension() -> None:
    old = load_cluster(upstream_http_protocol_options={"auto_sni": True})
    opts = old.auto_sni_options()
    assert opts is not None and opts.auto_sni and not opts.auto_san_validation
    new = load_cluster(
        typed_extension_protocol_options=extension(
            upstream_http_protocol_options={
                "auto_san_validation": True,
                "override_auto_sni_header": "x-sni",
            }
        )
    )
    opts = new.auto_sni_options()
    assert opts is not None and opts.auto_san_validation
    assert opts.override_auto_sni_header == "x-sni"
    # The extension, when given, is the only place read.
    both = load_cluster(
        upstream_http_protocol_options={"auto_sni": True},
        typed_extension_protocol_options=extension(),
    )
    assert both.auto_sni_options() is None
    assert load_cluster(upstream_http_protocol_options={}).auto_sni_options() is None


def test_override_header_must_be_a_header_name() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_cluster(upstream_http_protocol_options={"override_auto_sni_header": "a b"})
    (err,) = info.value.errors
    assert "clusters[0].upstream_http_protocol_options.override_auto_sni_header" in str(err)
    assert "does not match regex pattern" in str(err)
    for ok in (":authority", "x-sni", "a,b"):
        load_cluster(upstream_http_protocol_options={"override_auto_sni_header": ok})
