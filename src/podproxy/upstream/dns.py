"""The resolver seam: names to addresses with TTLs, on dnspython's asyncio resolver.

An outcome is either a `DnsResponse` (addresses, possibly none, and the minimum TTL) or a
`DnsResolutionFailed`. As Envoy ≥ 1.23 does (reference/envoy.md §1.4), NXDOMAIN and NODATA are
*successful empty* answers, while timeouts, SERVFAIL, REFUSED and network errors are failures
(the caller keeps its hosts). The search list and ndots of resolv.conf apply to relative names,
as c-ares applies them for Envoy (dnspython needs `search=True`), unless
`no_default_search_domain`. dnspython retries over TCP when a UDP answer is truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from podproxy.stats import Counter, Gauge

# c-ares defaults Envoy restored (PR #36947): 5 s per query, 4 tries.
DEFAULT_QUERY_TIMEOUT = 5.0
DEFAULT_QUERY_TRIES = 4


@dataclass(slots=True)
class DnsStats:
    """`dns.cares.*`, the names Envoy's c-ares resolver uses, so dashboards carry over."""

    resolve_total: Counter
    pending_resolutions: Gauge
    not_found: Counter
    timeouts: Counter
    get_addr_failure: Counter


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """A successful resolution: distinct addresses in answer order and their minimum TTL."""

    addresses: tuple[str, ...]
    ttl: float | None = None


class DnsResolutionFailed(Exception):
    """The lookup failed (timeout, SERVFAIL, REFUSED, network): keep what you had."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class Resolver(Protocol):
    async def resolve(self, name: str, family: str) -> DnsResponse: ...


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How one cluster resolves: from its typed config plus the process' options."""

    nameservers: tuple[tuple[str, int], ...] = ()
    resolvers_as_fallback: bool = False
    use_tcp: bool = False
    no_default_search_domain: bool = False
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    query_tries: int = DEFAULT_QUERY_TRIES


def parse_host_port(text: str, default_port: int = 53) -> tuple[str, int]:
    """`127.0.0.1`, `127.0.0.1:5353`, `[::1]:5353` → (address, port); ValueError otherwise."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


class DnspythonResolver:
    """`Resolver` on dnspython, configured from resolv.conf and overridden per cluster."""

    def __init__(
        self,
        config: ResolverConfig,
        *,
        resolv_conf: str = "/etc/resolv.conf",
        default_nameservers: Sequence[tuple[str, int]] = (),
        stats: DnsStats | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        r = dns.asyncresolver.Resolver(configure=False)
        # No file or no nameserver in it: the explicit servers below must do.
        with contextlib.suppress(dns.resolver.NoResolverConfiguration, OSError):
            r.read_resolv_conf(resolv_conf)
        system = [(str(ns), 53) for ns in r.nameservers]
        servers: list[tuple[str, int]]
        if config.nameservers and not (config.resolvers_as_fallback and system):
            servers = list(config.nameservers)
        elif default_nameservers:
            servers = list(default_nameservers)
        else:
            servers = system
        r.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
        r.timeout = config.query_timeout
        r.lifetime = config.query_timeout * config.query_tries
        r.cache = None  # refresh timing is the cluster's business, never a stale cache's
        self._r = r
        self.search = not config.no_default_search_domain

    @property
    def nameservers(self) -> list[str]:
        """`address:port` of each server asked, in order."""
        out = []
        for ns in self._r.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                out.append(f"{ns.address}:{ns.port}")
            else:
                out.append(str(ns))
        return out

    async def _query(self, name: str, rdtype: str) -> DnsResponse:
        if not self._r.nameservers:
            raise DnsResolutionFailed(name, "no nameservers configured")
        st = self.stats
        if st is not None:
            st.resolve_total.inc()
            st.pending_resolutions.inc()
        try:
            answer = await self._r.resolve(
                name,
                rdtype,
                tcp=self.config.use_tcp,
                search=self.search,
                raise_on_no_answer=False,
            )
        except dns.resolver.NXDOMAIN:
            if st is not None:
                st.not_found.inc()
            return DnsResponse(())
        except dns.resolver.LifetimeTimeout as exc:
            if st is not None:
                st.timeouts.inc()
            raise DnsResolutionFailed(name, "timeout") from exc
        except dns.resolver.NoNameservers as exc:
            if st is not None:
                st.get_addr_failure.inc()
            raise DnsResolutionFailed(name, _no_nameservers_reason(exc)) from exc
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            if st is not None:
                st.get_addr_failure.inc()
            raise DnsResolutionFailed(name, str(exc) or type(exc).__name__) from exc
        finally:
            if st is not None:
                st.pending_resolutions.dec()
        rrset = answer.rrset
        if rrset is None:
            if st is not None:
                st.not_found.inc()
            return DnsResponse(())
        addrs = tuple(dict.fromkeys(rd.address for rd in rrset))
        ttl = float(answer.chaining_result.minimum_ttl)
        return DnsResponse(addrs, ttl)

    async def resolve(self, name: str, family: str) -> DnsResponse:
        """Addresses for `name` per Envoy's `dns_lookup_family` (reference §1.6)."""
        if family == "V4_ONLY":
            return await self._query(name, "A")
        if family == "V6_ONLY":
            return await self._query(name, "AAAA")
        if family == "ALL":
            results = await asyncio.gather(
                self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
            )
            return _combine(name, results)
        first, second = ("AAAA", "A") if family == "AUTO" else ("A", "AAAA")
        failed: DnsResolutionFailed | None = None
        try:
            r = await self._query(name, first)
            if r.addresses:
                return r
        except DnsResolutionFailed as exc:
            failed = exc
        try:
            r = await self._query(name, second)
        except DnsResolutionFailed:
            raise failed or DnsResolutionFailed(name, "lookup failed") from None
        if not r.addresses and failed is not None:
            # One family failed and the other had nothing: a failure, not an empty set
            # (Envoy PR #47494; the AUTO/V4_PREFERRED wipe-out of issue #38752).
            raise failed
        return r


def _combine(name: str, results: Sequence[DnsResponse | BaseException]) -> DnsResponse:
    addrs: list[str] = []
    ttls: list[float] = []
    failure: BaseException | None = None
    for r in results:
        if isinstance(r, DnsResponse):
            addrs.extend(r.addresses)
            if r.ttl is not None and r.addresses:
                ttls.append(r.ttl)
        else:
            failure = r
    if not addrs and failure is not None:
        if isinstance(failure, DnsResolutionFailed):
            raise failure
        raise DnsResolutionFailed(name, str(failure))
    return DnsResponse(tuple(dict.fromkeys(addrs)), min(ttls) if ttls else None)


def _no_nameservers_reason(exc: dns.resolver.NoNameservers) -> str:
    text = str(exc)
    for word in ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP"):
        if word in text:
            return word
    return "no nameserver answered"


def resolver_config_from_cluster(cfg: object) -> ResolverConfig:
    """A cluster's resolver settings: typed_dns_resolver_config wins over the legacy fields."""
    tdrc = getattr(cfg, "typed_dns_resolver_config", None)
    if tdrc is not None:
        c = tdrc.typed_config
        opts = c.dns_resolver_options
        return ResolverConfig(
            nameservers=tuple(
                (a.socket_address.address, a.socket_address.port_value or 53) for a in c.resolvers
            ),
            resolvers_as_fallback=c.use_resolvers_as_fallback,
            use_tcp=opts.use_tcp_for_dns_lookups,
            no_default_search_domain=opts.no_default_search_domain,
            query_timeout=float(c.query_timeout_seconds or DEFAULT_QUERY_TIMEOUT),
            query_tries=int(c.query_tries or DEFAULT_QUERY_TRIES),
        )
    legacy = getattr(cfg, "dns_resolvers", ()) or ()
    return ResolverConfig(
        nameservers=tuple(
            (a.socket_address.address, a.socket_address.port_value or 53) for a in legacy
        ),
        use_tcp=bool(getattr(cfg, "use_tcp_for_dns_lookups", False)),
    )
