"""Per-request upstream SNI and SAN names: a cluster's `upstream_http_protocol_options`
(`auto_sni`, `auto_san_validation`, `override_auto_sni_header`), as Envoy's router sets them.

Theory of operation. Decided once per cluster at config time (`AutoSni.from_config`, None when
neither option is on, so other clusters never get here). Per request, `names()` takes the
Host the request goes up with (after the route's host rewrite) or the override header's first
value when it is not empty, drops the port (Envoy's Http::Utility::parseAuthority) and gives
the SNI to send (None for an IP address or an empty name: the cluster's own `sni` then) and
the name the pod's certificate SANs must match (auto_san_validation; IP addresses included).
`key()` is what a pool is keyed by beside its host: Envoy hashes both names case-insensitively
into the connection pool key, so a request reuses only a connection made for its own names,
whatever their case. Pure: no I/O, no sockets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from podproxy.http.stream import Headers, first_value

if TYPE_CHECKING:
    from podproxy.config.schema import CoreUpstreamHttpProtocolOptions
    from podproxy.tls import UpstreamTls

# (SNI, SAN name), both lower-cased: the part of a pool's key that auto_sni adds.
NamesKey = tuple[str | None, str | None]


def parse_authority(value: str) -> tuple[str, bool]:
    """(host without the port, whether it is an IP address), as Envoy's parseAuthority: the
    part after the last `:` is a port only if it is a number up to 65535 and the value does
    not end in `]`; `[v6]` loses its brackets only when it is an address."""
    host = value
    colon = value.rfind(":")
    if colon >= 0 and not value.endswith("]"):
        port = value[colon + 1 :]
        if port.isascii() and port.isdigit() and int(port) <= 65535:
            host = value[:colon]
    candidate = host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host
    if "%" not in candidate:  # inet_pton knows no IPv6 scope ids
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            pass
        else:
            return candidate, True
    return host, False


@dataclass(frozen=True, slots=True)
class AutoSni:
    """A cluster's per-request naming, from its upstream_http_protocol_options."""

    sni: bool
    san: bool
    # override_auto_sni_header, lower-cased; None when unset. `host` and `:authority` are
    # the request's Host.
    header: bytes | None

    @classmethod
    def from_config(cls, cfg: CoreUpstreamHttpProtocolOptions | None) -> AutoSni | None:
        if cfg is None or not cfg.active:
            return None
        header = cfg.override_auto_sni_header.lower().encode() or None
        if header in (b"host", b":authority"):
            header = None
        return cls(cfg.auto_sni, cfg.auto_san_validation, header)

    def names(self, authority: bytes, headers: Headers) -> tuple[str | None, str | None]:
        """(SNI to send or None, SAN name to check or None) for a request going up with
        `authority` as its Host."""
        value = authority
        if self.header is not None:
            # Envoy 1.40 uses the header's first value (checked side by side), and the Host
            # when the header is absent or empty.
            override = first_value(headers, self.header)
            if override:
                value = override
        host, is_ip = parse_authority(value.decode("latin-1"))
        sni = host if self.sni and not is_ip and host else None
        return sni, (host if self.san else None)

    def key(self, authority: bytes, headers: Headers) -> tuple[NamesKey, str | None, str | None]:
        """The pool key part and the names themselves (the first request's case is the one
        its connections send)."""
        sni, san = self.names(authority, headers)
        return (
            (sni.lower() if sni is not None else None, san.lower() if san is not None else None),
            sni,
            san,
        )

    @staticmethod
    def tls_for(tls: UpstreamTls | None, sni: str | None, san: str | None) -> UpstreamTls | None:
        """The cluster's TLS with these names (a plaintext cluster stays plaintext: Envoy
        keys its pools by the names all the same)."""
        return tls.named(sni, san) if tls is not None else None
