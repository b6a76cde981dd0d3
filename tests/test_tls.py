"""Tests for `podproxy.tls`: certificate parsing, ClientHello parsing, chain selection, and
handshakes between real OpenSSL objects (memory BIOs) built from config."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tls_certs import CertificateAuthority, Issued, server_cert

from podproxy.config.schema import DownstreamTlsContext, FilterChainMatch, UpstreamTlsContext
from podproxy.errors import ConfigError
from podproxy.stats import Store
from podproxy.tls import (
    DownstreamTls,
    FilterChainSelector,
    HelloResult,
    UpstreamTls,
    certs_json,
    parse_certificate,
    parse_client_hello,
)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture(scope="module")
def server(ca: CertificateAuthority) -> Issued:
    return server_cert(ca, "api.example.com")


@pytest.fixture(scope="module")
def client(ca: CertificateAuthority) -> Issued:
    return ca.issue("client", uris=("spiffe://test/client",), client=True)


def _cert(issued: Issued) -> dict[str, Any]:
    return {
        "certificate_chain": {"inline_string": issued.cert_pem.decode()},
        "private_key": {"inline_string": issued.key_pem.decode()},
    }


def downstream(
    server: Issued, store: Store, ca: CertificateAuthority | None = None, **extra: Any
) -> DownstreamTls:
    common: dict[str, Any] = {"tls_certificates": [_cert(server)], **extra.pop("common", {})}
    if ca is not None:
        common.setdefault("validation_context", {})["trusted_ca"] = {
            "inline_string": ca.cert_pem.decode()
        }
    cfg = DownstreamTlsContext.model_validate({"common_tls_context": common, **extra})
    return DownstreamTls(cfg, "listener", store.scope("listener.x."))


def upstream(store: Store, **cfg: Any) -> UpstreamTls:
    return UpstreamTls(UpstreamTlsContext.model_validate(cfg), "cluster", store.scope("cluster.c."))


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str | None = None
) -> tuple[ssl.SSLObject, ssl.SSLObject, BaseException | None]:
    """Run a handshake over memory BIOs; (server, client, the first error or None)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj, out, peer_in in (("c", cli, c_out, s_in), ("s", srv, s_out, c_in)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError as exc:
                    return srv, cli, exc
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            # TLS 1.3: the server reads the client's certificate after the client is done.
            try:
                srv.read(1)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return srv, cli, exc
            return srv, cli, None
    raise AssertionError("handshake did not finish")


def plain_client(alpn: list[str] | None = None, cert: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        ctx.load_cert_chain(*_files(cert))
    return ctx


_tmp: list[Any] = []


def _files(cert: Issued) -> tuple[str, str]:
    import tempfile
    from pathlib import Path

    d = tempfile.TemporaryDirectory()
    _tmp.append(d)
    return cert.write(Path(d.name), "c")


def counters(store: Store, prefix: str) -> dict[str, int]:
    return {
        k[len(prefix) :]: c.value
        for k, c in store.counters.items()
        if k.startswith(prefix) and c.value
    }


# --- X.509 ------------------------------------------------------------------------------


def test_parse_certificate_matches_cryptography(server: Issued) -> None:
    info = parse_certificate(server.der)
    assert info.serial_number == server.cert.serial_number
    assert info.not_after == server.cert.not_valid_after_utc
    assert info.not_before == server.cert.not_valid_before_utc
    assert info.subject_alt_names == (
        ("dns", "localhost"),
        ("dns", "api.example.com"),
        ("ip_address", "127.0.0.1"),
        ("ip_address", "::1"),
    )
    spki = server.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert info.spki == spki


def test_certs_json_shape(server: Issued, ca: CertificateAuthority) -> None:
    store = Store()
    tls = downstream(server, store, ca)
    now = server.cert.not_valid_after_utc - dt.timedelta(days=10, hours=1)
    out = certs_json([tls.certs], now=now)
    (entry,) = out["certificates"]
    (leaf,) = entry["cert_chain"]
    assert leaf["path"] == "<inline>"
    serial = format(server.cert.serial_number, "x")
    assert leaf["serial_number"] == ("0" + serial if len(serial) % 2 else serial)
    assert leaf["days_until_expiration"] == "10"
    assert leaf["subject_alt_names"][0] == {"dns": "localhost"}
    assert leaf["subject_alt_names"][2] == {"ip_address": "127.0.0.1"}
    assert leaf["expiration_time"] == server.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [int(c["serial_number"], 16) for c in entry["ca_cert"]] == [ca.cert.serial_number]


# --- ClientHello ----------------------------------------------------------------------------


def client_hello(sni: str | None, alpn: list[str] | None) -> bytes:
    out = ssl.MemoryBIO()
    obj = plain_client(alpn).wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_client_hello_sni_and_alpn() -> None:
    hello = client_hello("api.example.com", ["h2", "http/1.1"])
    assert parse_client_hello(hello) == ("api.example.com", ("h2", "http/1.1"))
    assert parse_client_hello(client_hello(None, None)) == ("", ())


def test_client_hello_in_pieces_and_not_tls() -> None:
    hello = client_hello("a.example.com", None)
    for cut in (1, 5, 9, len(hello) - 1):
        assert parse_client_hello(hello[:cut]) == HelloResult.NEED_MORE
    assert parse_client_hello(b"GET / HTTP/1.1\r\n") == HelloResult.NOT_TLS
    # A ClientHello split over two records is joined.
    body = hello[5:]
    split = hello[:3] + (20).to_bytes(2, "big") + body[:20]
    split += hello[:3] + (len(body) - 20).to_bytes(2, "big") + body[20:]
    assert parse_client_hello(split) == ("a.example.com", ())


def test_client_hello_too_large() -> None:
    header = b"\x16\x03\x01" + (100).to_bytes(2, "big") + b"\x01" + (70000).to_bytes(3, "big")
    assert parse_client_hello(header + bytes(96)) == HelloResult.TOO_LARGE


# --- filter chain selection -----------------------------------------------------------------


def _matches(*specs: dict[str, Any] | None) -> FilterChainSelector:
    return FilterChainSelector(
        [None if s is None else FilterChainMatch.model_validate(s) for s in specs]
    )


def test_selection_server_names_exact_then_wildcards_then_catch_all() -> None:
    sel = _matches(
        {"server_names": ["www.example.com"]},
        {"server_names": ["*.example.com"]},
        {"server_names": ["*.com"]},
        None,
    )
    assert sel.select("www.example.com", "tls", []) == 0
    assert sel.select("WWW.Example.com", "tls", []) == 0
    assert sel.select("api.example.com", "tls", []) == 1
    assert sel.select("a.b.example.com", "tls", []) == 1
    assert sel.select("example.com", "tls", []) == 2
    assert sel.select("example.org", "tls", []) == 3
    assert sel.select("", "raw_buffer", []) == 3


def test_selection_never_falls_back_to_a_broader_bucket() -> None:
    # The server name picks the www bucket; it has no raw_buffer chain, so nothing matches
    # even though the catch-all chain would (Envoy narrows step by step).
    sel = _matches(
        {"server_names": ["www.example.com"], "transport_protocol": "tls"},
        None,
    )
    assert sel.select("www.example.com", "raw_buffer", []) is None
    assert sel.select("www.example.com", "tls", []) == 0
    assert sel.select("other.example.com", "raw_buffer", []) == 1


def test_selection_transport_and_alpn() -> None:
    sel = _matches(
        {"transport_protocol": "tls", "application_protocols": ["h2"]},
        {"transport_protocol": "tls"},
        {"transport_protocol": "raw_buffer"},
    )
    assert sel.select("", "tls", ["http/1.1", "h2"]) == 0
    assert sel.select("", "tls", ["http/1.1"]) == 1
    assert sel.select("", "raw_buffer", ["h2"]) == 2
    assert _matches({"transport_protocol": "tls"}).select("", "raw_buffer", []) is None


# --- contexts and handshakes --------------------------------------------------------------


def test_handshake_counts_stats_and_negotiates_alpn(server: Issued) -> None:
    store = Store()
    tls = downstream(server, store, common={"alpn_protocols": ["h2", "http/1.1"]})
    srv, _, err = handshake(tls.context, plain_client(["http/1.1", "h2"]))
    assert err is None
    assert srv.selected_alpn_protocol() == "h2"
    assert srv.version() == "TLSv1.3"
    got = counters(store, "listener.x.ssl.")
    assert got["handshake"] == 1
    assert got["no_certificate"] == 1
    assert got["versions.TLSv1.3"] == 1
    assert got[f"ciphers.{srv.cipher()[0]}"] == 1  # type: ignore[index]


def test_no_alpn_configured_offers_none(server: Issued) -> None:
    srv, _, err = handshake(downstream(server, Store()).context, plain_client(["h2"]))
    assert err is None and srv.selected_alpn_protocol() is None


def test_versions_and_ciphers(server: Issued) -> None:
    store = Store()
    tls = downstream(
        server,
        store,
        common={
            "tls_params": {
                "tls_maximum_protocol_version": "TLSv1_2",
                "cipher_suites": ["[ECDHE-ECDSA-AES256-GCM-SHA384|ECDHE-RSA-AES256-GCM-SHA384]"],
            }
        },
    )
    srv, _, err = handshake(tls.context, plain_client())
    assert err is None
    assert srv.version() == "TLSv1.2"
    assert srv.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"  # type: ignore[index]
    assert counters(store, "listener.x.ssl.")["ciphers.ECDHE-ECDSA-AES256-GCM-SHA384"] == 1


def test_upstream_defaults_to_tls_1_2_and_no_verification(server: Issued) -> None:
    store = Store()
    up = upstream(store)
    assert up.ssl_options(None).server_hostname == ""
    # Another CA's server certificate is accepted: no trusted_ca, no verification.
    other = server_cert(CertificateAuthority("other"))
    _, cli, err = handshake(downstream(other, Store()).context, up.context)
    assert err is None
    assert cli.version() == "TLSv1.2"
    assert counters(store, "cluster.c.ssl.")["handshake"] == 1


def test_upstream_trusted_ca_and_san(server: Issued, ca: CertificateAuthority) -> None:
    pem = ca.cert_pem.decode()
    store = Store()
    ok = upstream(
        store,
        sni="api.example.com",
        common_tls_context={
            "validation_context": {
                "trusted_ca": {"inline_string": pem},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "api.example.com"}}
                ],
            }
        },
    )
    assert ok.ssl_options(None).server_hostname == "api.example.com"
    assert handshake(downstream(server, Store()).context, ok.context)[2] is None
    bad_san = upstream(
        store,
        common_tls_context={
            "validation_context": {
                "trusted_ca": {"inline_string": pem},
                "match_subject_alt_names": [{"exact": "other.example.com"}],
            }
        },
    )
    err = handshake(downstream(server, Store()).context, bad_san.context)[2]
    assert isinstance(err, ssl.SSLCertVerificationError)
    other = server_cert(CertificateAuthority("other"))
    err = handshake(downstream(other, Store()).context, ok.context)[2]
    assert isinstance(err, ssl.SSLCertVerificationError)
    got = counters(store, "cluster.c.ssl.")
    assert got["handshake"] == 1
    assert got["fail_verify_san"] == 1
    assert got["fail_verify_error"] == 1
    assert "connection_error" not in got  # verification failures count only as such


def test_certificate_hash_and_spki_pins(server: Issued) -> None:
    digest = hashlib.sha256(server.der).hexdigest().upper()
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    spki = base64.b64encode(hashlib.sha256(parse_certificate(server.der).spki).digest()).decode()
    ctx = downstream(server, Store()).context
    for vc in (
        {"verify_certificate_hash": [colons]},
        {"verify_certificate_spki": [spki]},
        {"verify_certificate_hash": ["00" * 32], "verify_certificate_spki": [spki]},
    ):
        up = upstream(Store(), common_tls_context={"validation_context": vc})
        assert handshake(ctx, up.context)[2] is None, vc
    store = Store()
    up = upstream(
        store, common_tls_context={"validation_context": {"verify_certificate_hash": ["ab" * 32]}}
    )
    assert isinstance(handshake(ctx, up.context)[2], ssl.SSLCertVerificationError)
    assert counters(store, "cluster.c.ssl.")["fail_verify_cert_hash"] == 1


def test_client_certificates(server: Issued, client: Issued, ca: CertificateAuthority) -> None:
    store = Store()
    required = downstream(server, store, ca, require_client_certificate=True)
    assert handshake(required.context, plain_client(cert=client))[2] is None
    err = handshake(required.context, plain_client())[2]
    assert isinstance(err, ssl.SSLError)
    got = counters(store, "listener.x.ssl.")
    assert got["handshake"] == 1
    assert got["fail_verify_no_cert"] == 1
    # With a CA but not required: a client without a certificate is let in.
    optional = downstream(server, Store(), ca)
    assert handshake(optional.context, plain_client())[2] is None
    # A client certificate from another CA fails verification.
    stranger = CertificateAuthority("stranger").issue("c", client=True)
    assert isinstance(handshake(optional.context, plain_client(cert=stranger))[2], ssl.SSLError)
    # URI SAN matching on client certificates.
    spiffe = downstream(
        server,
        Store(),
        ca,
        common={
            "validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": "spiffe://test/"}}
                ]
            }
        },
    )
    assert handshake(spiffe.context, plain_client(cert=client))[2] is None


def test_dns_san_wildcards(ca: CertificateAuthority) -> None:
    wild = ca.issue("wild", dns=("*.example.com",))
    pem = ca.cert_pem.decode()

    def verdict(name: str) -> bool:
        up = upstream(
            Store(),
            common_tls_context={
                "validation_context": {
                    "trusted_ca": {"inline_string": pem},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": name}}
                    ],
                }
            },
        )
        return handshake(downstream(wild, Store()).context, up.context)[2] is None

    assert verdict("api.example.com")
    assert not verdict("a.b.example.com")
    assert not verdict("example.com")


# --- config errors -----------------------------------------------------------------------


def test_bad_certificate_and_key_are_config_errors(server: Issued) -> None:
    other = server_cert(CertificateAuthority("other"))
    cfg = DownstreamTlsContext.model_validate(
        {
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": server.cert_pem.decode()},
                        "private_key": {"inline_string": other.key_pem.decode()},
                    }
                ]
            }
        }
    )
    with pytest.raises(ConfigError) as info:
        DownstreamTls(cfg, "here", Store().scope("x."))
    assert info.value.path == "here.common_tls_context.tls_certificates[0]"


def test_unknown_cipher_and_curves(server: Issued) -> None:
    with pytest.raises(ConfigError) as info:
        downstream(
            server,
            Store(),
            common={"tls_params": {"cipher_suites": ["NOPE", "ECDHE-RSA-AES128-GCM-SHA256"]}},
        )
    assert "rejected when tried individually: NOPE" in str(info.value)
    with pytest.raises(ConfigError) as info:
        downstream(server, Store(), common={"tls_params": {"ecdh_curves": ["X25519", "P-256"]}})
    assert info.value.path.endswith("tls_params.ecdh_curves")
    downstream(server, Store(), common={"tls_params": {"ecdh_curves": ["P-256"]}})


# --- per-request names (upstream_http_protocol_options) -------------------------------------


def sni_recorder(server: Issued) -> tuple[ssl.SSLContext, list[str | None]]:
    seen: list[str | None] = []
    ctx = downstream(server, Store()).context
    ctx.sni_callback = lambda obj, name, c: seen.append(name)  # type: ignore[assignment,misc,return-value]
    return ctx, seen


def named_handshake(
    server_ctx: ssl.SSLContext, tls: UpstreamTls
) -> tuple[ssl.SSLObject, BaseException | None]:
    _, hostname = tls.ssl_options(None)
    # asyncio and uvloop give wrap_bio None for an empty server_hostname.
    _, cli, err = handshake(server_ctx, tls.context, hostname or None)
    return cli, err


def test_named_connections_send_their_sni(server: Issued) -> None:
    store = Store()
    up = upstream(store, sni="configured.example.com")
    ctx, seen = sni_recorder(server)
    assert named_handshake(ctx, up.named("Foo.Example.com", None))[1] is None
    # No per-request SNI (an IP address): the configured one.
    assert up.named(None, None) is up
    assert named_handshake(ctx, up)[1] is None
    # A name IDNA cannot encode goes without SNI rather than failing the connection.
    assert named_handshake(ctx, up.named("a..b", None))[1] is None
    assert seen == ["Foo.Example.com", "configured.example.com", None]
    assert counters(store, "cluster.c.ssl.")["handshake"] == 3


def test_auto_san_validation(server: Issued, ca: CertificateAuthority) -> None:
    store = Store()
    trusted = {"validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}}
    up = upstream(store, common_tls_context=trusted)
    srv = downstream(server_cert(ca, "*.wild.example.com"), Store()).context
    for ok in ("x.wild.example.com", "LOCALHOST", "127.0.0.1", "::1"):
        _, err = named_handshake(srv, up.named(None, ok))
        assert err is None, ok
    for bad in ("wild.example.com", "a.b.wild.example.com", "127.0.0.2", ""):
        _, err = named_handshake(srv, up.named(None, bad))
        assert isinstance(err, ssl.SSLCertVerificationError), bad
    got = counters(store, "cluster.c.ssl.")
    assert got["handshake"] == 4
    assert got["fail_verify_san"] == 4
    assert "fail_verify_error" not in got
    # The same context without names checks no SAN.
    assert handshake(srv, up.context)[2] is None


def test_auto_san_validation_without_a_trusted_ca_fails_uncounted(server: Issued) -> None:
    store = Store()
    up = upstream(store)
    assert up.unverified
    _, err = named_handshake(downstream(server, Store()).context, up.named(None, "localhost"))
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert counters(store, "cluster.c.ssl.") == {}
    # Pins make the context verify: then the name is checked as with a CA.
    pinned = upstream(
        store,
        common_tls_context={
            "validation_context": {
                "verify_certificate_hash": [hashlib.sha256(server.der).hexdigest()]
            }
        },
    )
    assert not pinned.unverified
    srv = downstream(server, Store()).context
    assert named_handshake(srv, pinned.named(None, "localhost"))[1] is None
    assert isinstance(
        named_handshake(srv, pinned.named(None, "nope"))[1], ssl.SSLCertVerificationError
    )
