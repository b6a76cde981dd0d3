"""TLS config: transport sockets, v2 tls_context, filter chain matches, listener filters."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tls_certs import CertificateAuthority, server_cert

from podproxy.config.convert import to_v3_yaml
from podproxy.config.loader import load
from podproxy.config.schema import SanType, TlsProtocol
from podproxy.errors import ConfigErrors

# A certificate and key made when the tests load (never a key in the repository).
_ISSUED = server_cert(CertificateAuthority())
CERT = {"inline_string": _ISSUED.cert_pem.decode()}
KEY = {"inline_string": _ISSUED.key_pem.decode()}
TLS_CERTS = [{"certificate_chain": CERT, "private_key": KEY}]
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _hcm() -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "in",
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": []}]},
            "http_filters": [{"name": "envoy.filters.http.router"}],
        },
    }


def bootstrap(listener: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None) -> str:
    lst = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [_hcm()]}],
        **(listener or {}),
    }
    cl = {"name": "c", "connect_timeout": "1s", **(cluster or {})}
    return yaml.safe_dump({"static_resources": {"listeners": [lst], "clusters": [cl]}})


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def chain(**extra: Any) -> dict[str, Any]:
    return {"filters": [_hcm()], **extra}


def tls_socket(**ctx: Any) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM,
            "common_tls_context": {"tls_certificates": TLS_CERTS},
            **ctx,
        },
    }


def test_v3_downstream_and_upstream_tls() -> None:
    text = bootstrap(
        {
            "filter_chains": [
                chain(
                    transport_socket=tls_socket(require_client_certificate=False),
                    filter_chain_match={"server_names": ["*.example.com"]},
                )
            ],
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
        },
        {
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": UPSTREAM,
                    "sni": "pod.example.com",
                    "common_tls_context": {
                        "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"},
                        "validation_context": {
                            "trusted_ca": CERT,
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": "pod.example.com"}}
                            ],
                        },
                    },
                },
            }
        },
    )
    b = load(config_yaml=text).bootstrap
    listener = b.static_resources.listeners[0]
    fc = listener.filter_chains[0]
    assert fc.tls() is not None
    assert fc.filter_chain_match is not None
    assert fc.filter_chain_match.server_names == ("*.example.com",)
    assert listener.listener_filters[0].name == "envoy.filters.listener.tls_inspector"
    up = b.static_resources.clusters[0].tls()
    assert up is not None and up.sni == "pod.example.com"
    assert up.common_tls_context.tls_params.tls_maximum_protocol_version is TlsProtocol.TLSv1_3
    vc = up.common_tls_context.validation_context
    assert vc is not None
    assert vc.match_typed_subject_alt_names[0].san_type is SanType.DNS


def test_v2_tls_context_and_names() -> None:
    text = bootstrap(
        {
            "filter_chains": [
                chain(
                    tls_context={
                        "common_tls_context": {
                            "tls_certificates": TLS_CERTS,
                            "validation_context": {
                                "trusted_ca": CERT,
                                "verify_subject_alt_name": ["client.example.com"],
                            },
                        },
                        "require_client_certificate": True,
                    },
                    filter_chain_match={"sni_domains": ["a.example.com"]},
                )
            ],
            "listener_filters": [{"name": "envoy.listener.tls_inspector", "config": {}}],
        },
        {"tls_context": {"sni": "pod"}},
    )
    b = load(config_yaml=text).bootstrap
    fc = b.static_resources.listeners[0].filter_chains[0]
    ctx = fc.tls()
    assert ctx is not None and ctx.require_client_certificate
    vc = ctx.common_tls_context.validation_context
    assert vc is not None and vc.match_subject_alt_names[0].exact == "client.example.com"
    assert fc.filter_chain_match is not None
    assert fc.filter_chain_match.server_names == ("a.example.com",)
    up = b.static_resources.clusters[0].tls()
    assert up is not None and up.sni == "pod"


def test_v2_type_urls_and_config() -> None:
    text = bootstrap(
        cluster={
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.api.v2.auth.UpstreamTlsContext",
                    "sni": "x",
                },
            }
        }
    )
    up = load(config_yaml=text).bootstrap.static_resources.clusters[0].tls()
    assert up is not None and up.sni == "x"
    text = bootstrap(cluster={"transport_socket": {"name": "tls", "config": {"sni": "y"}}})
    up = load(config_yaml=text).bootstrap.static_resources.clusters[0].tls()
    assert up is not None and up.sni == "y"


CH = "static_resources.listeners[0].filter_chains[0]"


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        (
            {"filter_chains": [chain(filter_chain_match={"server_names": ["w*.example.com"]})]},
            f"{CH}.filter_chain_match.server_names: partial wildcards are not supported",
        ),
        (
            {"filter_chains": [chain(filter_chain_match={"destination_port": 443})]},
            f"{CH}.filter_chain_match.destination_port: Envoy field not supported by podproxy yet",
        ),
        (
            {"filter_chains": [chain(), chain()]},
            "static_resources.listeners[0]: multiple filter chains with the same matching rules",
        ),
        (
            {"listener_filters": [{"name": "envoy.filters.listener.proxy_protocol"}]},
            "static_resources.listeners[0].listener_filters[0].name: "
            '"envoy.filters.listener.proxy_protocol": Envoy listener filter not supported',
        ),
        (
            {"filter_chains": [chain(transport_socket={"name": "envoy.transport_sockets.alts"})]},
            f'{CH}.transport_socket: "envoy.transport_sockets.alts": Envoy transport socket',
        ),
        (
            {"filter_chains": [chain(transport_socket={"name": "envoy.transport_sockets.tls"})]},
            f"{CH}.transport_socket.typed_config: a listener's TLS context needs a certificate",
        ),
        (
            {"filter_chains": [chain(transport_socket=tls_socket(require_sni=True))]},
            f"{CH}.transport_socket.typed_config.require_sni: Envoy field not supported",
        ),
        (
            {"filter_chains": [], "default_filter_chain": None},
            "static_resources.listeners[0]: no filter chains specified",
        ),
    ],
)
def test_listener_errors(listener: dict[str, Any], expected: str) -> None:
    errors = errors_of(bootstrap(listener))
    assert any(e.startswith(expected) for e in errors), errors


def test_cluster_errors() -> None:
    (err,) = errors_of(
        bootstrap(
            cluster={
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": UPSTREAM,
                        "common_tls_context": {
                            "validation_context": {"match_subject_alt_names": [{"exact": "a"}]}
                        },
                    },
                }
            }
        )
    )
    assert err.startswith(
        "static_resources.clusters[0].transport_socket.typed_config.common_tls_context."
        "validation_context: SAN-based verification of peer certificates without trusted CA"
    )
    (err,) = errors_of(bootstrap(cluster={"transport_socket_matches": []}))
    assert "transport_socket_matches: Envoy field not supported" in err
    (err,) = errors_of(bootstrap(cluster={"tls_context": {"sni": 5}}))
    assert err.startswith("static_resources.clusters[0].tls_context.sni: expected a string")


def test_default_filter_chain_only() -> None:
    text = bootstrap({"filter_chains": [], "default_filter_chain": chain()})
    listener = load(config_yaml=text).bootstrap.static_resources.listeners[0]
    assert listener.filter_chains == ()
    assert len(listener.all_filter_chains()) == 1


def test_environment_variable_data_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODPROXY_TEST_CA", "pem text")
    cluster = {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"environment_variable": "PODPROXY_TEST_CA"}
                    }
                },
            },
        }
    }
    up = load(config_yaml=bootstrap(cluster=cluster)).bootstrap.static_resources.clusters[0].tls()
    assert up is not None
    vc = up.common_tls_context.validation_context
    assert vc is not None and vc.trusted_ca is not None and vc.trusted_ca.data() == b"pem text"
    monkeypatch.delenv("PODPROXY_TEST_CA")
    (err,) = errors_of(bootstrap(cluster=cluster))
    assert "Environment variable doesn't exist: PODPROXY_TEST_CA" in err


@pytest.mark.envoy
def test_v2_tls_converts_to_v3_envoy_accepts(
    tmp_path: Path, envoy_validate: Callable[[str], subprocess.CompletedProcess[str]]
) -> None:
    ca = CertificateAuthority()
    cert, key = server_cert(ca, "a.example.com").write(tmp_path, "a")
    ca_path = ca.write(tmp_path)
    v2 = bootstrap(
        {
            "filter_chains": [
                chain(
                    tls_context={
                        "common_tls_context": {
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": cert},
                                    "private_key": {"filename": key},
                                }
                            ],
                            "validation_context": {
                                "trusted_ca": {"filename": ca_path},
                                "verify_subject_alt_name": ["client"],
                            },
                        }
                    },
                    filter_chain_match={"sni_domains": ["a.example.com"]},
                )
            ],
            "listener_filters": [{"name": "envoy.listener.tls_inspector", "config": {}}],
        },
        {"tls_context": {"sni": "pod"}},
    )
    text = to_v3_yaml(load(config_yaml=v2))
    assert " tls_context:" not in text and "verify_subject_alt_name" not in text
    done = envoy_validate(text)
    assert done.returncode == 0, done.stderr
