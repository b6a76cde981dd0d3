"""TLS as Envoy configures it: `ssl` contexts from DownstreamTlsContext / UpstreamTlsContext.

Theory of operation. A context is built once from config (certificates, ALPN, versions,
ciphers, curves, CA). Envoy checks SANs and certificate pins inside the handshake; Python's
`ssl` has no verify callback, so each context carries a `HandshakeObserver` and hands
`_ObservedSSLObject` to asyncio/uvloop (which create their SSL objects with `wrap_bio`): when
OpenSSL finishes the handshake the observer checks SANs and pins, and raises a verification
error if they fail, which the event loop treats as a failed handshake. The observer also keeps
the `ssl.*` stats. `UpstreamTls.ssl_options(host)` is what a pool passes to
`create_connection`. The sans-I/O parts: `parse_client_hello` (what tls_inspector reads),
`parse_certificate` (the few X.509 fields `/certs` and SAN checks need), `FilterChainSelector`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from podproxy.config.schema import (
    CertificateValidationContext,
    CommonTlsContext,
    DataSource,
    DownstreamTlsContext,
    FilterChainMatch,
    SanType,
    TlsProtocol,
    UpstreamTlsContext,
)
from podproxy.errors import ConfigError
from podproxy.router.routes import string_matcher
from podproxy.stats import Counter, Scope

# Envoy's default TLS ≤1.2 cipher list, both sides (tls/v3/common.proto, non-FIPS), in
# BoringSSL syntax: `[A|B]` is an equal-preference group, which OpenSSL spells as A:B.
DEFAULT_CIPHER_SUITES = (
    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
    "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
# Envoy curve names → OpenSSL's.
_CURVES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
_VERSIONS = {
    TlsProtocol.TLSv1_0: ssl.TLSVersion.TLSv1,
    TlsProtocol.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    TlsProtocol.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    TlsProtocol.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
# TlsParameters defaults: TLSv1_2 minimum on both sides; maximum TLSv1_3 for servers and
# TLSv1_2 for clients (common.proto; servers' minimum was TLSv1_0 before 1.22).
SERVER_VERSIONS = (TlsProtocol.TLSv1_2, TlsProtocol.TLSv1_3)
CLIENT_VERSIONS = (TlsProtocol.TLSv1_2, TlsProtocol.TLSv1_2)


# --- X.509, just enough --------------------------------------------------------------------

_OID_SAN = bytes.fromhex("551d11")  # 2.5.29.17 subjectAltName


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What `/certs` and SAN checks read from a certificate."""

    serial_number: int
    not_before: dt.datetime
    not_after: dt.datetime
    # (kind, value): kind one of "dns", "uri", "email", "ip_address".
    subject_alt_names: tuple[tuple[str, str], ...]
    spki: bytes  # DER SubjectPublicKeyInfo


def _der(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    if pos + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, length = buf[pos], buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    if pos + length > len(buf):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(tag, content start, content end, element start) of each element in [start, end)."""
    pos = start
    while pos < end:
        tag, s, e = _der(buf, pos)
        yield tag, s, e, pos
        pos = e


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.1: 50-99 → 19xx)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _general_names(buf: bytes, start: int, end: int) -> Iterator[tuple[str, str]]:
    for tag, s, e, _ in _children(buf, start, end):
        value = buf[s:e]
        if tag == 0x82:
            yield "dns", value.decode("ascii", "replace")
        elif tag == 0x86:
            yield "uri", value.decode("ascii", "replace")
        elif tag == 0x81:
            yield "email", value.decode("ascii", "replace")
        elif tag == 0x87 and len(value) in (4, 16):
            yield "ip_address", str(ipaddress.ip_address(value))


def parse_certificate(der: bytes) -> CertificateInfo:
    """Serial, validity, SANs and SPKI of a DER certificate (RFC 5280 §4.1)."""
    _, cs, _ = _der(der, 0)
    _, ts, te = _der(der, cs)
    parts = list(_children(der, ts, te))
    if parts and parts[0][0] == 0xA0:  # explicit [0] version
        parts = parts[1:]
    serial = int.from_bytes(der[parts[0][1] : parts[0][2]], "big", signed=True)
    validity = [(t, der[s:e]) for t, s, e, _ in _children(der, parts[3][1], parts[3][2])]
    spki_start, spki_end = parts[5][3], parts[5][2]
    sans: list[tuple[str, str]] = []
    for tag, s, _, _ in parts[6:]:
        if tag != 0xA3:  # [3] extensions
            continue
        _, xs, xe = _der(der, s)
        for _, es, ee, _ in _children(der, xs, xe):
            fields = list(_children(der, es, ee))
            if der[fields[0][1] : fields[0][2]] != _OID_SAN:
                continue
            _, gs, ge = _der(der, fields[-1][1])  # extnValue: OCTET STRING of GeneralNames
            sans.extend(_general_names(der, gs, ge))
    return CertificateInfo(
        serial_number=serial,
        not_before=_der_time(*validity[0]),
        not_after=_der_time(*validity[1]),
        subject_alt_names=tuple(sans),
        spki=der[spki_start:spki_end],
    )


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.*?)-----END CERTIFICATE-----", re.DOTALL)


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER certificates in a PEM bundle, in order."""
    return [base64.b64decode(b"".join(m.group(1).split())) for m in _PEM_CERT.finditer(pem)]


# --- the ClientHello, as tls_inspector reads it ---------------------------------------------

# Envoy's tls_inspector default max_client_hello_size.
MAX_CLIENT_HELLO_SIZE = 16384


class ClientHello(NamedTuple):
    server_name: str
    alpn: tuple[str, ...]


class HelloResult:
    """Markers for `parse_client_hello` when it has no ClientHello to give."""

    NEED_MORE = "need more"
    NOT_TLS = "not TLS"
    TOO_LARGE = "too large"


def parse_client_hello(data: bytes) -> ClientHello | str:
    """SNI and ALPN offers from the first bytes of a connection (RFC 8446 §4.1.2, RFC 6066
    §3, RFC 7301 §3.1); or a `HelloResult` marker. Handshake records are joined as they come."""
    body = b""
    pos = 0
    need: int | None = None
    while need is None or len(body) < need:
        if len(data) < pos + 5:
            return HelloResult.NEED_MORE
        if data[pos] != 0x16 or data[pos + 1] != 0x03:
            return HelloResult.NOT_TLS
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return (
                HelloResult.TOO_LARGE
                if pos + 5 + length > MAX_CLIENT_HELLO_SIZE + 5
                else HelloResult.NEED_MORE
            )
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if need is None and len(body) >= 4:
            if body[0] != 0x01:  # not a ClientHello
                return HelloResult.NOT_TLS
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > MAX_CLIENT_HELLO_SIZE:
                return HelloResult.TOO_LARGE
    try:
        return _hello_fields(body[4:need])
    except (IndexError, ValueError):
        return HelloResult.NOT_TLS


def _hello_fields(h: bytes) -> ClientHello:
    p = 2 + 32  # legacy_version, random
    p += 1 + h[p]  # session id
    p += 2 + int.from_bytes(h[p : p + 2], "big")  # cipher suites
    p += 1 + h[p]  # compression methods
    sni = ""
    alpn: tuple[str, ...] = ()
    if p >= len(h):
        return ClientHello(sni, alpn)
    end = p + 2 + int.from_bytes(h[p : p + 2], "big")
    p += 2
    while p + 4 <= end:
        kind = int.from_bytes(h[p : p + 2], "big")
        size = int.from_bytes(h[p + 2 : p + 4], "big")
        ext = h[p + 4 : p + 4 + size]
        p += 4 + size
        if kind == 0 and len(ext) >= 5 and ext[2] == 0:  # server_name, host_name
            n = int.from_bytes(ext[3:5], "big")
            sni = ext[5 : 5 + n].decode("ascii", "replace")
        elif kind == 16 and len(ext) >= 2:  # application_layer_protocol_negotiation
            q, names = 2, []
            while q < len(ext):
                n = ext[q]
                names.append(ext[q + 1 : q + 1 + n].decode("ascii", "replace"))
                q += 1 + n
            alpn = tuple(names)
    return ClientHello(sni, alpn)


# --- filter chain selection ---------------------------------------------------------------


class FilterChainSelector:
    """Envoy's filter chain choice on the fields podproxy supports (filter_chain_manager_impl.cc):
    server name (exact, then `*.` wildcards from the longest suffix, then chains without
    server_names), then transport protocol (exact, then none), then application protocol (the
    client's ALPN offers in order, then none). Each step keeps only the most specific
    bucket and never falls back to a broader one. Pure; indexes into the configured list."""

    def __init__(self, matches: Sequence[FilterChainMatch | None]) -> None:
        self.table: dict[str, dict[str, dict[str, int]]] = {}
        for i, m in enumerate(matches):
            m = m or FilterChainMatch()
            for name in m.server_names or ("",):
                by_transport = self.table.setdefault(name.lower(), {})
                by_alpn = by_transport.setdefault(m.transport_protocol, {})
                for proto in m.application_protocols or ("",):
                    by_alpn.setdefault(proto, i)

    def select(self, server_name: str, transport: str, alpn: Sequence[str]) -> int | None:
        by_transport = self._by_name(server_name.lower())
        if by_transport is None:
            return None
        by_alpn = by_transport.get(transport)
        if by_alpn is None:
            by_alpn = by_transport.get("")
        if by_alpn is None:
            return None
        for proto in alpn:
            if proto in by_alpn:
                return by_alpn[proto]
        return by_alpn.get("")

    def _by_name(self, name: str) -> dict[str, dict[str, int]] | None:
        if name:
            if name in self.table:
                return self.table[name]
            dot = name.find(".")
            while dot >= 0:
                wild = "*" + name[dot:]
                if wild in self.table:
                    return self.table[wild]
                dot = name.find(".", dot + 1)
        return self.table.get("")


# --- handshake observation: stats and the checks OpenSSL cannot do here -----------------------


@dataclass(slots=True)
class SslStats:
    """`<owner>.ssl.*` (Envoy's ALL_SSL_STATS counters podproxy can see)."""

    connection_error: Counter
    handshake: Counter
    session_reused: Counter
    no_certificate: Counter
    fail_verify_no_cert: Counter
    fail_verify_error: Counter
    fail_verify_san: Counter
    fail_verify_cert_hash: Counter


def _dns_match(pattern: str, name: str) -> bool:
    """A certificate DNS SAN (maybe `*.example.com`) against a name (Envoy's dnsNameMatch)."""
    pattern, name = pattern.lower(), name.lower()
    if pattern == name:
        return True
    if pattern.startswith("*."):
        dot = name.find(".")
        return dot > 0 and name[dot:] == pattern[1:]
    return False


_SAN_KIND = {
    SanType.DNS: "dns",
    SanType.URI: "uri",
    SanType.EMAIL: "email",
    SanType.IP_ADDRESS: "ip_address",
}


@dataclass(slots=True)
class _SanMatcher:
    kind: str | None  # None: any SAN kind (the deprecated match_subject_alt_names)
    match: Callable[[bytes], bool]
    exact: str | None

    def matches(self, sans: Sequence[tuple[str, str]]) -> bool:
        for kind, value in sans:
            if self.kind is not None and kind != self.kind:
                continue
            if kind == "dns" and self.exact is not None and _dns_match(value, self.exact):
                return True
            if self.match(value.encode()):
                return True
        return False


@dataclass(slots=True)
class Validation:
    """A CertificateValidationContext's checks beyond the chain (which OpenSSL does)."""

    san: list[_SanMatcher] = field(default_factory=list)
    hashes: frozenset[str] = frozenset()
    spki: frozenset[bytes] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.san or self.hashes or self.spki)


def _validation(vc: CertificateValidationContext | None) -> Validation:
    if vc is None:
        return Validation()
    san = [
        _SanMatcher(_SAN_KIND[m.san_type], string_matcher(m.matcher), m.matcher.exact)
        for m in vc.match_typed_subject_alt_names
    ]
    san += [_SanMatcher(None, string_matcher(m), m.exact) for m in vc.match_subject_alt_names]
    return Validation(
        san=san,
        hashes=frozenset(vc.verify_certificate_hash),
        spki=frozenset(base64.b64decode(p) for p in vc.verify_certificate_spki),
    )


class HandshakeObserver:
    """Counts handshakes into `<owner>.ssl.` and runs the SAN and pin checks after OpenSSL's
    own. Shared by every connection of one context."""

    def __init__(self, scope: Scope, validation: Validation) -> None:
        self.scope = scope
        self.stats = scope.make(SslStats)
        self.validation = validation
        self._ciphers: dict[str, Counter] = {}
        self._versions: dict[str, Counter] = {}

    def on_success(self, obj: ssl.SSLObject, expected_san: str | None = None) -> None:
        """The handshake finished: check the peer's certificate, count it (raises
        `ssl.SSLCertVerificationError` to fail the handshake). `expected_san`: the name
        auto_san_validation wants among the certificate's SANs."""
        der = obj.getpeercert(binary_form=True)
        v = self.validation
        if expected_san is not None:
            self._check_expected(obj, der, expected_san)
        if not v.empty:
            if der is None:
                self.stats.fail_verify_no_cert.inc()
                raise ssl.SSLCertVerificationError("peer did not present a certificate")
            self._check(der)
        st = self.stats
        st.handshake.inc()
        if der is None:
            st.no_certificate.inc()
        if obj.session_reused:
            st.session_reused.inc()
        cipher = obj.cipher()
        if cipher is not None:
            self._count(self._ciphers, "ciphers.", cipher[0])
        version = obj.version()
        if version is not None:
            self._count(self._versions, "versions.", version)

    def _check_expected(self, obj: ssl.SSLObject, der: bytes | None, name: str) -> None:
        if obj.context.verify_mode == ssl.CERT_NONE and self.validation.empty:
            # A context that verifies nothing (no trusted_ca, no matchers, no pins): Envoy
            # asks BoringSSL to verify this connection's peer with no CA to trust, so every
            # handshake fails (CERTIFICATE_VERIFY_FAILED), and no ssl.* counter moves
            # (checked side by side with Envoy 1.40).
            raise ssl.SSLCertVerificationError("no trusted CA to verify the peer against")
        if der is None:
            self.stats.fail_verify_no_cert.inc()
            raise ssl.SSLCertVerificationError("peer did not present a certificate")
        # DefaultCertValidator::verifySubjectAltName: a DNS SAN matches as a DNS name (with
        # its wildcard), any other SAN by its text (an IP address as Envoy prints it).
        for kind, value in parse_certificate(der).subject_alt_names:
            if _dns_match(value, name) if kind == "dns" else value == name:
                return
        self.stats.fail_verify_san.inc()
        raise ssl.SSLCertVerificationError(f"certificate SANs do not match {name}")

    def _check(self, der: bytes) -> None:
        v = self.validation
        if v.hashes or v.spki:
            # Either list may match (CertificateValidationContext docs).
            ok = hashlib.sha256(der).hexdigest() in v.hashes
            if not ok and v.spki:
                ok = hashlib.sha256(parse_certificate(der).spki).digest() in v.spki
            if not ok:
                self.stats.fail_verify_cert_hash.inc()
                raise ssl.SSLCertVerificationError("certificate hash or SPKI does not match")
        if v.san:
            sans = parse_certificate(der).subject_alt_names
            if not any(m.matches(sans) for m in v.san):
                self.stats.fail_verify_san.inc()
                raise ssl.SSLCertVerificationError("certificate SAN does not match")

    def on_failure(self, exc: ssl.SSLError) -> None:
        # A verification failure counts only as its fail_verify_* (Envoy's drainErrorQueue
        # leaves connection_error to the other handshake errors).
        if isinstance(exc, ssl.SSLCertVerificationError):
            self.stats.fail_verify_error.inc()
        elif exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            self.stats.fail_verify_no_cert.inc()
        else:
            self.stats.connection_error.inc()

    def _count(self, table: dict[str, Counter], prefix: str, name: str) -> None:
        c = table.get(name)
        if c is None:
            c = table[name] = self.scope.counter(prefix + name)
        c.inc()


class _ObservedSSLObject(ssl.SSLObject):
    """An SSL object whose finished handshake goes through its context's observer."""

    # auto_san_validation's name for this connection (set by ObservedContext.wrap_bio).
    expected_san: str | None = None

    def do_handshake(self) -> None:
        observer: HandshakeObserver = self.context.observer  # type: ignore[attr-defined]
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            observer.on_failure(exc)
            raise
        observer.on_success(self, self.expected_san)


# Joins the SNI and auto_san_validation's name in the server_hostname of a named connection:
# the event loops hand server_hostname to wrap_bio unchanged (uvloop only as an exact str),
# and no real name holds a NUL (OpenSSL takes names as C strings, Python's ssl refuses it).
_SAN_MARK = "\x00"


class ObservedContext(ssl.SSLContext):
    """An `ssl.SSLContext` that knows its observer (read by `_ObservedSSLObject`)."""

    observer: HandshakeObserver

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if not isinstance(server_hostname, str) or _SAN_MARK not in server_hostname:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        sni, _, san = server_hostname.partition(_SAN_MARK)
        obj = super().wrap_bio(incoming, outgoing, server_side, sni or None, session)
        obj.expected_san = san  # type: ignore[attr-defined]
        return obj


# --- building contexts ------------------------------------------------------------------------


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    # load_cert_chain reads only files; a memfd keeps inline keys off the disk.
    fd = os.memfd_create("podproxy-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def openssl_ciphers(suites: Sequence[str], path: str) -> str:
    """BoringSSL cipher_suites → an OpenSSL cipher string; unknown names are config errors
    (Envoy: "Failed to initialize cipher suites ...")."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    names: list[str] = []
    rejected: list[str] = []
    for suite in suites:
        group = suite[1:-1].split("|") if suite.startswith("[") and suite.endswith("]") else [suite]
        for name in group:
            try:
                probe.set_ciphers(name)
            except ssl.SSLError:
                rejected.append(name)
            names.append(name)
    if rejected:
        raise ConfigError(
            f"{path}.cipher_suites",
            f"Failed to initialize cipher suites {':'.join(names)}. The following ciphers "
            f"were rejected when tried individually: {', '.join(rejected)}",
        )
    return ":".join(names)


def _source_name(ds: DataSource) -> str:
    return ds.filename if ds.filename is not None else "<inline>"


def _build_context(
    common: CommonTlsContext,
    server: bool,
    path: str,
    scope: Scope,
) -> ObservedContext:
    ctx = ObservedContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = _ObservedSSLObject
    params = common.tls_params
    lo, hi = SERVER_VERSIONS if server else CLIENT_VERSIONS
    if params.tls_minimum_protocol_version is not TlsProtocol.TLS_AUTO:
        lo = params.tls_minimum_protocol_version
    if params.tls_maximum_protocol_version is not TlsProtocol.TLS_AUTO:
        hi = params.tls_maximum_protocol_version
    if lo.value > hi.value:
        raise ConfigError(
            f"{path}.common_tls_context.tls_params",
            f"tls_minimum_protocol_version {lo.name} is above "
            f"tls_maximum_protocol_version {hi.name}",
        )
    ctx.minimum_version = _VERSIONS[lo]
    ctx.maximum_version = _VERSIONS[hi]
    ciphers = openssl_ciphers(
        params.cipher_suites or DEFAULT_CIPHER_SUITES, f"{path}.common_tls_context.tls_params"
    )
    if lo.value < TlsProtocol.TLSv1_2.value:
        ciphers += ":@SECLEVEL=0"  # OpenSSL 3 refuses TLS 1.0/1.1 at its default level
    ctx.set_ciphers(ciphers)
    curves = params.ecdh_curves
    if curves:
        cpath = f"{path}.common_tls_context.tls_params.ecdh_curves"
        if len(curves) > 1:
            raise ConfigError(
                cpath,
                f"podproxy can set one ECDH curve (Python's ssl.set_ecdh_curve), got {len(curves)}",
            )
        name = _CURVES.get(curves[0])
        try:
            if name is None:
                raise ValueError
            ctx.set_ecdh_curve(name)
        except (ValueError, ssl.SSLError):
            raise ConfigError(cpath, f"Failed to initialize ECDH curves {curves[0]}") from None
    if common.alpn_protocols:
        ctx.set_alpn_protocols(list(common.alpn_protocols))
    for i, cert in enumerate(common.tls_certificates):
        where = f"{path}.common_tls_context.tls_certificates[{i}]"
        password = cert.password.data() if cert.password is not None else None
        try:
            with (
                _memory_file(cert.certificate_chain.data()) as chain,
                _memory_file(cert.private_key.data()) as key,
            ):
                ctx.load_cert_chain(chain, key, password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                where,
                f"Failed to load certificate chain from "
                f"{_source_name(cert.certificate_chain)} with private key from "
                f"{_source_name(cert.private_key)}: {getattr(exc, 'reason', None) or exc}",
            ) from None
    vc = common.validation_context
    ctx.check_hostname = False  # Envoy checks names only through SAN matchers
    if vc is not None and vc.trusted_ca is not None:
        try:
            ctx.load_verify_locations(cadata=vc.trusted_ca.data().decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"{path}.common_tls_context.validation_context.trusted_ca",
                f"Failed to load trusted CA certificates from {_source_name(vc.trusted_ca)}: {exc}",
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE  # Envoy's default: peers are not verified
    ctx.observer = HandshakeObserver(scope.scope("ssl."), _validation(vc))
    return ctx


@dataclass(slots=True)
class CertSource:
    """One context's certificates, for `/certs`."""

    ca: list[tuple[str, bytes]]  # (path or "<inline>", DER)
    chain: list[tuple[str, bytes]]


def _cert_source(common: CommonTlsContext) -> CertSource:
    vc = common.validation_context
    ca: list[tuple[str, bytes]] = []
    if vc is not None and vc.trusted_ca is not None:
        ders = pem_certificates(vc.trusted_ca.data())
        if ders:
            ca.append((_source_name(vc.trusted_ca), ders[0]))
    chain = []
    for cert in common.tls_certificates:
        ders = pem_certificates(cert.certificate_chain.data())
        if ders:
            chain.append((_source_name(cert.certificate_chain), ders[0]))
    return CertSource(ca, chain)


# Envoy 1.40 names a certificate without an SDS secret `unnamed_cert_` / `unnamed_ca_cert_`
# plus 8 hex digits of SHA-256 of the (empty) secret name, as its /stats shows.
_UNNAMED_SUFFIX = hashlib.sha256(b"").hexdigest()[:8]


def _expiry_gauges(scope: Scope, certs: CertSource) -> None:
    """`ssl.certificate.<name>.expiration_unix_time_seconds` for each certificate."""
    for kind, items in (("ca_cert", certs.ca), ("cert", certs.chain)):
        for _, der in items:
            expiry = parse_certificate(der).not_after.timestamp()
            name = f"ssl.certificate.unnamed_{kind}_{_UNNAMED_SUFFIX}.expiration_unix_time_seconds"
            scope.gauge(name).set(int(expiry))


class DownstreamTls:
    """A filter chain's TLS: the server context and its certificates."""

    def __init__(self, cfg: DownstreamTlsContext, path: str, scope: Scope) -> None:
        self.context = _build_context(cfg.common_tls_context, True, path, scope)
        if cfg.require_client_certificate:
            self.context.verify_mode = ssl.CERT_REQUIRED
        elif self.context.verify_mode == ssl.CERT_REQUIRED:
            # A CA without require_client_certificate: ask for a certificate, verify it if
            # one comes (Envoy's SSL_VERIFY_PEER without FAIL_IF_NO_PEER_CERT).
            self.context.verify_mode = ssl.CERT_OPTIONAL
        self.certs = _cert_source(cfg.common_tls_context)
        _expiry_gauges(scope, self.certs)


class TlsOptions(NamedTuple):
    """What `loop.create_connection` takes for TLS: `ssl=` and `server_hostname=`."""

    ssl: ssl.SSLContext
    server_hostname: str


class UpstreamTls:
    """A cluster's TLS. Pools (HTTP/1 and HTTP/2) ask `ssl_options(host)` per connection."""

    def __init__(self, cfg: UpstreamTlsContext, path: str, scope: Scope) -> None:
        self.context = _build_context(cfg.common_tls_context, False, path, scope)
        self.certs = _cert_source(cfg.common_tls_context)
        _expiry_gauges(scope, self.certs)
        # An empty sni sends none (asyncio would otherwise send the address it connects to).
        self.sni = cfg.sni
        self._options = TlsOptions(self.context, cfg.sni)

    def ssl_options(self, host: Any) -> TlsOptions:
        """`ssl=` and `server_hostname=` for a connection to `host` (the same for every host:
        auto_host_sni is not supported)."""
        return self._options

    @property
    def unverified(self) -> bool:
        """The context verifies nothing about the peer (no trusted_ca, matchers or pins)."""
        return self.context.verify_mode == ssl.CERT_NONE and self.context.observer.validation.empty

    def named(self, sni: str | None, san: str | None) -> UpstreamTls:
        """This TLS for the connections of one auto_sni pool: SNI `sni` (None: the
        configured `sni`), and the certificate's SANs checked against `san` (None: no such
        check). Shares the context, its observer and stats, and `/certs`."""
        if sni is None and san is None:
            return self
        send = self.sni if sni is None else sni
        if send:
            try:
                if len(send.encode("idna")) > 255:  # RFC 6066 §3: at most 2^8-1 bytes
                    raise UnicodeError
            except UnicodeError:
                # Python's ssl sends only what IDNA can encode (BoringSSL would send the raw
                # bytes): a name with an empty or overlong label goes without SNI.
                send = ""
        other = copy.copy(self)
        other._options = TlsOptions(self.context, send if san is None else send + _SAN_MARK + san)
        return other


# --- /certs -----------------------------------------------------------------------------


def _rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _serial_hex(serial: int) -> str:
    # Envoy prints the serial as BN_bn2hex does, whole bytes (`0a26…`), lower-cased.
    text = format(serial, "x")
    return "0" + text if len(text) % 2 else text


def certificate_details(path: str, der: bytes, now: dt.datetime) -> dict[str, Any]:
    """admin.v3.CertificateDetails as proto3 JSON."""
    info = parse_certificate(der)
    days = max(0, (info.not_after - now).days)
    return {
        "path": path,
        "serial_number": _serial_hex(info.serial_number),
        "subject_alt_names": [{k: v} for k, v in info.subject_alt_names if k != "email"],
        "days_until_expiration": str(days),
        "valid_from": _rfc3339(info.not_before),
        "expiration_time": _rfc3339(info.not_after),
    }


def certs_json(sources: Sequence[CertSource], now: dt.datetime | None = None) -> dict[str, Any]:
    """admin.v3.Certificates: one entry per TLS context."""
    when = now or dt.datetime.now(dt.UTC)
    return {
        "certificates": [
            {
                "ca_cert": [certificate_details(p, d, when) for p, d in s.ca],
                "cert_chain": [certificate_details(p, d, when) for p, d in s.chain],
            }
            for s in sources
        ]
    }
