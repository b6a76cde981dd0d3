"""A cluster DNS server that answers like CoreDNS's kubernetes plugin, for tests and the sandbox.

Theory of operation: the state is Kubernetes objects (`k8s_objects.ClusterState`); from them an
index of *ready* endpoint addresses per Service is rebuilt lazily after each change (§1.4).
`ClusterDNS.resolve` is pure: a parsed query in, a response out. It parses the name as CoreDNS's
`parseRequest` does (`[_port._proto.|endpoint.]service.namespace.svc.zone`), collects matching
(address, port, target) entries as `findServices` does, and turns them into A/AAAA/SRV/PTR records,
NXDOMAIN or NODATA with the zone's SOA (§1.1-§1.3). UDP replies are cut to the client's size
keeping the question and whole RRs, with TC set (§1.6); TCP on the same port is never cut below
64 KiB. The I/O layer adds the knobs that simulate trouble: `servfail`, `drop`, `delay`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from podproxy.sandbox.k8s_objects import (
    ClusterState,
    EndpointPort,
    K8sObject,
    ManifestError,
    Pod,
    load_manifests,
    manifest_files,
    parse_object,
)

log = logging.getLogger("podproxy.sandbox.cluster_dns")

DEFAULT_TTL: Final = 5  # CoreDNS kubernetes plugin `defaultTTL` (§1.5)
DNS_VERSION: Final = "1.1.0"  # schema version of the spec (§1.1)
DNS_VERSION_TTL: Final = 28800  # CoreDNS hard-codes this TTL for dns-version (§1.1)
SOA_MAX_TTL: Final = 300  # CoreDNS caps the SOA record's own TTL (§1.3)
UDP_MIN_SIZE: Final = 512  # RFC 1035 limit without EDNS; also the floor with EDNS (§1.6)
TCP_MAX_SIZE: Final = 65535  # 2-byte length prefix
EDNS_PAYLOAD: Final = 1232  # what we advertise back (DNS flag day 2020 value)
TCP_IDLE_TIMEOUT: Final = 10.0  # close idle TCP clients, roughly miekg/dns's read timeout
TCP_MAX_QUERIES: Final = 10_000  # per connection, so the read loop is bounded
BIND_ATTEMPTS: Final = 20  # port 0: UDP's port may be taken for TCP; try another
RELOAD_INTERVAL: Final = 1.0  # seconds between manifest mtime checks in `main`


@dataclass(frozen=True, slots=True)
class _Request:
    """A parsed in-zone name, as CoreDNS's `parseRequest` splits it; "" means absent."""

    kind: str = ""  # "svc" | "pod" | "" (zone apex)
    namespace: str = ""
    service: str = ""
    endpoint: str = ""
    port: str = ""
    protocol: str = ""


@dataclass(frozen=True, slots=True)
class _Entry:
    """One CoreDNS `msg.Service`: an address, a port (None: no ports) and its own DNS name."""

    ip: str
    port: int | None
    target: dns.name.Name


@dataclass(frozen=True, slots=True)
class _ReadyAddress:
    ip: str
    hostname: str  # endpoint hostname, or the dashed IP (CoreDNS `endpointHostname`, §1.1)
    ports: tuple[EndpointPort, ...]


@dataclass(frozen=True, slots=True)
class _Index:
    generation: int
    ready: dict[tuple[str, str], list[_ReadyAddress]]
    reverse: dict[str, list[dns.name.Name]]


_EMPTY_INDEX: Final = _Index(-1, {}, {})


def _parse_request(labels: Sequence[str]) -> _Request | None:
    """CoreDNS `parseRequest`; None for a shape it rejects (answered NXDOMAIN, §1.3)."""
    if not labels:
        return _Request()
    *rest, kind = labels
    if kind not in ("svc", "pod"):
        return None
    ns = rest.pop() if rest else ""
    svc = rest.pop() if rest else ""
    if len(rest) == 0:
        return _Request(kind, ns, svc)
    if len(rest) == 1:
        return _Request(kind, ns, svc, endpoint=rest[0])
    if len(rest) == 2:
        return _Request(
            kind, ns, svc, port=rest[0].removeprefix("_"), protocol=rest[1].removeprefix("_")
        )
    return None


def dashed(ip: str) -> str:
    """The per-endpoint label CoreDNS derives from an IP: `10-244-1-5`, `fd00--1`."""
    return ip.replace(".", "-").replace(":", "-")


def truncate(response: dns.message.Message, max_size: int) -> dns.message.Message:
    """`response` cut to `max_size` bytes like miekg/dns `Truncate` (§1.6).

    Keeps the question and, section by section, the longest prefix of RRs that fits; TC is set
    if anything was left out. Unlike `to_wire(max_size=...)`, a partial RRset is kept.
    """
    if len(_wire(response)) <= max_size:
        return response
    out = dns.message.Message(id=response.id)
    out.flags = response.flags | dns.flags.TC
    out.question = list(response.question)
    if response.edns >= 0:
        out.use_edns(
            response.edns, response.ednsflags, response.payload, options=list(response.options)
        )
    for section in (1, 2, 3):
        items = [(rrset, rd) for rrset in response.sections[section] for rd in rrset]
        lo, hi = 0, len(items)  # invariant: lo RRs fit; find the largest count that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            out.sections[section] = _regroup(items[:mid])
            if len(_wire(out)) <= max_size:
                lo = mid
            else:
                hi = mid - 1
        out.sections[section] = _regroup(items[:lo])
    return out


def _wire(message: dns.message.Message) -> bytes:
    # Explicit max_size: a response's default is the request's payload, which would raise
    # TooBig instead of letting us truncate; rdata order is ours (shuffle or not), not random.
    return message.to_wire(max_size=TCP_MAX_SIZE, want_shuffle=False)


def _regroup(items: Sequence[tuple[dns.rrset.RRset, dns.rdata.Rdata]]) -> list[dns.rrset.RRset]:
    out: list[dns.rrset.RRset] = []
    for rrset, rd in items:
        if not out or out[-1].name != rrset.name or out[-1].rdtype != rrset.rdtype:
            out.append(dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype))
            out[-1].update_ttl(rrset.ttl)
        out[-1].add(rd)
    return out


def _rrset(name: dns.name.Name, rdtype: int, ttl: int, texts: Sequence[str]) -> dns.rrset.RRset:
    rdtype = dns.rdatatype.RdataType.make(rdtype)
    rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, t) for t in texts]
    return dns.rrset.from_rdata_list(name, ttl, rdatas)


def _addr_type(ip: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.AAAA if ":" in ip else dns.rdatatype.A


class ClusterDNS:
    """Serves cluster DNS for a `ClusterState` on UDP and TCP at the same address and port.

    Knobs (plain attributes, read per query): `ttl`, `shuffle` (loadbalance plugin), `servfail`
    (not yet synced with the API, §1.7), `drop` (answer nothing), `delay` (seconds before each
    answer), `out_of_zone` ("nxdomain" or "refused" for names outside the zone).
    """

    def __init__(
        self,
        *,
        listen: str = "127.0.0.1",
        port: int = 0,
        zone: str = "cluster.local",
        ttl: int = DEFAULT_TTL,
        shuffle: bool = False,
        state: ClusterState | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.listen = listen
        self.zone = dns.name.from_text(zone.lower())
        self.ttl = ttl
        self.shuffle = shuffle
        self.servfail = False
        self.drop = False
        # Out-of-zone names: "nxdomain" (an upstream that knows no such name) or "refused".
        self.out_of_zone = "nxdomain"
        self.delay = 0.0
        self.state = state if state is not None else ClusterState()
        self._rng = rng if rng is not None else random.Random()
        self._port = port
        self._index = _EMPTY_INDEX
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._pending: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        host, port = self.address
        running = "running" if self._udp is not None else "stopped"
        return f"<ClusterDNS {host}:{port} zone={self.zone} {running} {self.state!r}>"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) served; the port is known once started (then kept across restarts)."""
        return self.listen, self._port

    @contextlib.contextmanager
    def _change(self, what: str) -> Iterator[list[str]]:
        """Log `what`, the detail lines the body appends, then each service name's new answer."""
        before = self._ready_view()
        details: list[str] = []
        yield details
        log.info("%s", what)
        for line in details:
            log.info("  %s", line)
        after = self._ready_view()
        for name in sorted(before.keys() | after.keys()):
            if before.get(name) != after.get(name):
                log.info("  %s -> %s", name, " ".join(after.get(name, ())) or "NXDOMAIN")

    def _ready_view(self) -> dict[str, tuple[str, ...]]:
        index = self._current_index()
        return {
            f"{svc}.{ns}.svc.{self.zone}": tuple(a.ip for a in addrs)
            for (ns, svc), addrs in index.ready.items()
            if self.state.services[ns, svc].headless
        }

    def load_manifests(self, path: str | Path | Sequence[str | Path]) -> None:
        """Add the objects of manifest files or directories (replacing same-named ones)."""
        objects = load_manifests(path)
        with self._change(f"loaded {len(objects)} objects from {_paths_text(path)}"):
            for obj in objects:
                self.state.put(obj)

    def reload_manifests(self, path: str | Path | Sequence[str | Path]) -> list[str]:
        """Make the state exactly what the manifests say; returns what changed."""
        objects = load_manifests(path)
        with self._change(f"reloaded {_paths_text(path)}") as details:
            details += self.state.replace_all(objects)
        return details

    def apply(self, manifest: Mapping[str, Any]) -> list[K8sObject]:
        """Create or replace the objects of one manifest mapping (any supported kind, or List)."""
        objects = parse_object(dict(manifest), "<apply>")
        with self._change("applied " + ", ".join(_describe(o) for o in objects)):
            for obj in objects:
                self.state.put(obj)
        return objects

    def add_pod(
        self,
        name: str,
        namespace: str = "default",
        ips: str | Sequence[str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        ready: bool = True,
        hostname: str | None = None,
        subdomain: str | None = None,
        container_ports: Mapping[str, int] | None = None,
    ) -> Pod:
        ip_list = (ips,) if isinstance(ips, str) else tuple(ips)
        pod = Pod(
            name,
            namespace,
            tuple(str(ipaddress.ip_address(ip)) for ip in ip_list),
            dict(labels or {}),
            ready,
            hostname=hostname,
            subdomain=subdomain,
            container_ports=dict(container_ports or {}),
        )
        with self._change(f"added {_describe(pod)}"):
            self.state.put(pod)
        return pod

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        with self._change(f"deleted Pod {namespace}/{name}"):
            if not self.state.delete("Pod", namespace, name):
                raise KeyError(f"no pod {namespace}/{name}")

    def set_ready(self, name: str, namespace: str, ready: bool) -> None:
        with self._change(f"Pod {namespace}/{name} ready={ready}"):
            self.state.update_pod(name, namespace, ready=ready)

    def set_terminating(self, name: str, namespace: str = "default") -> None:
        """Set deletionTimestamp: the pod leaves DNS unless publishNotReadyAddresses (§1.4)."""
        with self._change(f"Pod {namespace}/{name} terminating"):
            self.state.update_pod(name, namespace, terminating=True)

    def _current_index(self) -> _Index:
        state = self.state
        if self._index.generation == state.generation:
            return self._index
        ready: dict[tuple[str, str], list[_ReadyAddress]] = {}
        reverse: dict[str, list[dns.name.Name]] = {}
        for (ns, name), svc in state.services.items():
            base = self._service_name(name, ns)
            if svc.cluster_ip is not None:
                # CoreDNS answers a ClusterIP's PTR with the service name first (§1.1 PTR).
                reverse[svc.cluster_ip] = [base]
            addrs = ready[ns, name] = []
            for sl in state.endpoint_slices(ns, name):
                for ep in sl.endpoints:
                    if not ep.is_ready:
                        continue
                    for ip in ep.addresses:
                        ra = _ReadyAddress(ip, ep.hostname or dashed(ip), sl.ports)
                        addrs.append(ra)
                        if svc.cluster_ip != ip:
                            reverse.setdefault(ip, []).append(self._name(ra.hostname, base))
        self._index = _Index(state.generation, ready, reverse)
        return self._index

    def _service_name(self, service: str, namespace: str) -> dns.name.Name:
        return dns.name.Name((service.lower(), namespace.lower(), "svc", *self.zone.labels))

    @staticmethod
    def _name(label: str, base: dns.name.Name) -> dns.name.Name:
        return dns.name.Name((label.lower(), *base.labels))

    def _find(self, req: _Request) -> list[_Entry] | None:
        """CoreDNS `findServices`/`findPods`: entries, [] for NODATA, None for NXDOMAIN (§1.2)."""
        if not req.namespace:
            return []  # zone apex, svc.<zone>, pod.<zone>: NODATA
        if not self.state.namespace_exists(req.namespace):
            return None
        if not req.service:
            return []  # <ns>.svc.<zone> of an existing namespace: NODATA
        if req.kind == "pod":
            # `pods insecure` (the Kubernetes default Corefile): any dashed IP answers (§1.1).
            label = req.service
            text = label.replace("-", ".") if label.count("-") == 3 else label.replace("-", ":")
            try:
                ip = str(ipaddress.ip_address(text))
            except ValueError:
                return None
            return [
                _Entry(ip, None, dns.name.Name((label, req.namespace, "pod", *self.zone.labels)))
            ]
        svc = next(
            (
                s
                for (ns, n), s in self.state.services.items()
                if ns.lower() == req.namespace and n.lower() == req.service
            ),
            None,
        )
        if svc is None:
            return None
        base = self._service_name(svc.name, svc.namespace)
        entries: list[_Entry] = []
        if svc.headless or req.endpoint:
            for addr in self._current_index().ready.get((svc.namespace, svc.name), ()):
                if req.endpoint and addr.hostname.lower() != req.endpoint:
                    continue
                target = self._name(addr.hostname, base)
                for p in addr.ports or (EndpointPort(None, None, ""),):  # CoreDNS port -1 sentinel
                    if _port_matches(req, p.name, p.protocol):
                        entries.append(_Entry(addr.ip, p.port, target))
        else:
            for sp in svc.ports:
                if _port_matches(req, sp.name, sp.protocol):
                    entries.append(_Entry(svc.cluster_ip or "", sp.port, base))
        # A headless service with no ready endpoint is NXDOMAIN, not NODATA (§1.2).
        return entries or None

    def _forward(
        self, qname: dns.name.Name, rdtype: int
    ) -> tuple[int, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        ttl = self.ttl
        ns_name = dns.name.Name(("ns", "dns", *self.zone.labels))
        if qname == dns.name.Name(("dns-version", *self.zone.labels)):
            if rdtype == dns.rdatatype.TXT:
                return dns.rcode.NOERROR, [_rrset(qname, rdtype, DNS_VERSION_TTL, ['"1.1.0"'])], []
            return dns.rcode.NOERROR, [], []
        own = self._own_address()
        if qname == ns_name:  # the server's own name, as CoreDNS answers it
            if own and rdtype == _addr_type(own):
                return dns.rcode.NOERROR, [_rrset(qname, rdtype, ttl, [own])], []
            return dns.rcode.NOERROR, [], []
        if qname == self.zone and rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            if rdtype == dns.rdatatype.SOA:
                return dns.rcode.NOERROR, [self._soa(self.zone)], []
            glue = [_rrset(ns_name, _addr_type(own), ttl, [own])] if own else []
            return dns.rcode.NOERROR, [_rrset(qname, rdtype, ttl, [ns_name.to_text()])], glue
        labels = [lb.decode("latin-1").lower() for lb in qname.relativize(self.zone).labels]
        req = _parse_request(labels)
        entries = None if req is None else self._find(req)
        if entries is None:
            return dns.rcode.NXDOMAIN, [], []
        answer: list[dns.rrset.RRset] = []
        extra: list[dns.rrset.RRset] = []
        if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            ips = list(dict.fromkeys(e.ip for e in entries if _addr_type(e.ip) == rdtype))
            if ips:
                answer.append(_rrset(qname, rdtype, ttl, self._maybe_shuffle(ips)))
        elif rdtype == dns.rdatatype.SRV:
            srv, extra = self._srv(entries)
            if srv:
                answer.append(_rrset(qname, rdtype, ttl, srv))
        return dns.rcode.NOERROR, answer, extra

    def _own_address(self) -> str | None:
        try:
            ip = ipaddress.ip_address(self.listen)
        except ValueError:
            return None
        return None if ip.is_unspecified else str(ip)

    def _srv(self, entries: list[_Entry]) -> tuple[list[str], list[dns.rrset.RRset]]:
        # CoreDNS plugin.SRV: priority 0, weight floor(100/N) (min 1), port = targetPort,
        # target's address in the additional section (§1.1 SRV).
        weight = max(1, 100 // len(entries))
        rows: dict[str, None] = {}
        targets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[str]] = {}
        for e in entries:
            if e.port is None:
                continue
            rows[f"0 {weight} {e.port} {e.target.to_text()}"] = None
            ips = targets.setdefault((e.target, _addr_type(e.ip)), [])
            if e.ip not in ips:
                ips.append(e.ip)
        extra = [
            _rrset(n, t, self.ttl, self._maybe_shuffle(ips)) for (n, t), ips in targets.items()
        ]
        return list(rows), extra

    def _maybe_shuffle(self, items: list[str]) -> list[str]:
        if self.shuffle:  # the loadbalance plugin shuffles A/AAAA per answer (§1.5)
            self._rng.shuffle(items)
        return items

    def _reverse(
        self, qname: dns.name.Name, rdtype: int
    ) -> tuple[int, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        try:
            ip = str(ipaddress.ip_address(dns.reversename.to_address(qname)))
        except (dns.exception.SyntaxError, ValueError):
            return dns.rcode.NXDOMAIN, [], []
        names = self._current_index().reverse.get(ip)
        if not names:
            # CoreDNS falls through to upstream here; we own the reverse zones and say NXDOMAIN.
            return dns.rcode.NXDOMAIN, [], []
        if rdtype != dns.rdatatype.PTR:
            return dns.rcode.NOERROR, [], []
        texts = list(dict.fromkeys(n.to_text() for n in names))
        return dns.rcode.NOERROR, [_rrset(qname, rdtype, self.ttl, texts)], []

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        # §1.3: <zone> min(ttl,300) SOA ns.dns.<zone> hostmaster.<zone> serial 7200 1800 86400 ttl
        serial = self.state.modified & 0xFFFFFFFF
        text = f"ns.dns.{zone} hostmaster.{zone} {serial} 7200 1800 86400 {self.ttl}"
        return _rrset(zone, dns.rdatatype.SOA, min(self.ttl, SOA_MAX_TTL), [text])

    def resolve(
        self, query: dns.message.Message, max_size: int | None = None
    ) -> dns.message.Message:
        """The response to `query`, cut to `max_size` bytes if given (UDP); pure apart from
        the shuffle's random numbers."""
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        q = query.question[0]
        qname, rdtype = q.name, q.rdtype
        reverse_zone = next(
            (
                z
                for z in (dns.reversename.ipv4_reverse_domain, dns.reversename.ipv6_reverse_domain)
                if qname.is_subdomain(z)
            ),
            None,
        )
        if q.rdclass != dns.rdataclass.IN or (
            not qname.is_subdomain(self.zone) and reverse_zone is None
        ):
            # Not ours. CoreDNS forwards such names upstream; we never leave the machine, so by
            # default answer as that upstream does for a name that does not exist (a pod's search
            # walk for `httpd-discovery` ends on the bare name and must see NXDOMAIN there).
            response.set_rcode(
                dns.rcode.REFUSED if self.out_of_zone == "refused" else dns.rcode.NXDOMAIN
            )
            return response
        if self.servfail:  # CoreDNS before its first sync with the API (§1.7)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response.flags |= dns.flags.AA  # cluster names are authoritative (§1.7)
        if reverse_zone is None:
            rcode, answer, extra = self._forward(qname, rdtype)
        else:
            rcode, answer, extra = self._reverse(qname, rdtype)
        response.set_rcode(dns.rcode.Rcode.make(rcode))
        response.answer = answer
        response.additional = extra
        if not answer:  # NXDOMAIN and NODATA both carry the SOA (§1.3)
            response.authority = [self._soa(reverse_zone or self.zone)]
        if max_size is not None:
            response = truncate(response, max_size)
        return response

    def answers_for(self, name: str, rdtype: str | dns.rdatatype.RdataType = "A") -> list[str]:
        """The answer's rdata as text (what `dig +short` prints); [] for NXDOMAIN or NODATA."""
        response = self.resolve(dns.message.make_query(name, rdtype))
        return [rd.to_text() for rrset in response.answer for rd in rrset]

    def answer_wire(self, data: bytes, *, tcp: bool) -> bytes | None:
        """Wire query → wire reply, or None to stay silent (drop mode, garbage, responses)."""
        if self.drop:
            return None
        try:
            query = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            return None
        except (dns.exception.DNSException, ValueError):
            # Echo the id with FORMERR, as a server must for a header it could read.
            return data[:2] + b"\x81\x01" + bytes(8)
        if query.flags & dns.flags.QR:
            return None
        if tcp:
            max_size = TCP_MAX_SIZE
        else:  # the client's EDNS payload, never below 512 (CoreDNS `request.Size`, §1.6)
            max_size = max(UDP_MIN_SIZE, query.payload) if query.edns >= 0 else UDP_MIN_SIZE
        return _wire(self.resolve(query, min(max_size, TCP_MAX_SIZE)))

    async def start(self) -> None:
        """Listen on UDP and TCP; the port chosen for port 0 is kept for later restarts."""
        if self._udp is not None:
            raise RuntimeError("cluster DNS already started")
        loop = asyncio.get_running_loop()
        for _ in range(BIND_ATTEMPTS):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.listen, self._port)
            )
            port: int = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.listen, port)
            except OSError:
                udp.close()
                if self._port:
                    raise
                continue
            self._udp, self._port = udp, port
            log.info("cluster DNS on %s:%d (udp+tcp), zone %s", self.listen, port, self.zone)
            return
        raise OSError(f"no port free for both UDP and TCP on {self.listen}")

    async def stop(self) -> None:
        """Close both sockets and every TCP client; queued delayed answers are discarded."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> ClusterDNS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _send_later(self, reply: bytes, addr: Any) -> None:
        loop = asyncio.get_running_loop()

        def send() -> None:
            self._pending.discard(handle)
            if self._udp is not None:
                self._udp.sendto(reply, addr)

        handle = loop.call_later(self.delay, send)
        self._pending.add(handle)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        self._writers.add(writer)
        try:
            for _ in range(TCP_MAX_QUERIES):
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                reply = self.answer_wire(data, tcp=True)
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Cancelled by stop(): end normally, since Python 3.11's start_server callback
            # calls task.exception() on a cancelled handler and logs the CancelledError.
            if self._tcp is not None and self._tcp.is_serving():
                raise
        finally:
            self._tcp_tasks.discard(task)
            self._writers.discard(writer)
            writer.close()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDNS) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self._server.answer_wire(data, tcp=False)
        if reply is None or self._transport is None:
            return
        if self._server.delay > 0:
            self._server._send_later(reply, addr)
        else:
            self._transport.sendto(reply, addr)


def _port_matches(req: _Request, name: str | None, protocol: str) -> bool:
    # CoreDNS `matchPortAndProtocol`: an absent label matches anything; unnamed ports never
    # match a `_name` label, so they get no SRV by name (§1.1 SRV).
    if req.port and req.port != (name or "").lower():
        return False
    return not req.protocol or req.protocol == protocol.lower()


def _paths_text(path: str | Path | Sequence[str | Path]) -> str:
    return str(path) if isinstance(path, str | Path) else " ".join(map(str, path))


def _describe(obj: K8sObject) -> str:
    if isinstance(obj, Pod):
        flags = f"ready={obj.ready}" + (" terminating" if obj.terminating else "")
        return f"Pod {obj.namespace}/{obj.name} {' '.join(obj.ips) or '(no IP)'} {flags}"
    return f"{type(obj).__name__} {getattr(obj, 'namespace', '')}/{obj.name}".replace(" /", " ")


def write_resolv_conf(
    path: str | Path,
    nameserver_port: int | None = None,
    namespace: str = "mynamespace",
    zone: str = "cluster.local",
    ndots: int = 5,
    nameserver: str = "127.0.0.1",
) -> Path:
    """Write a pod-style resolv.conf (kubelet ClusterFirst, §2.1) and return its path.

    resolv.conf has no port syntax: with a non-53 port, clients must be told separately
    (dnspython: `resolver.nameserver_ports = {nameserver: port}`); it is noted in a comment.
    """
    lines = []
    if nameserver_port is not None:
        lines.append(f"# cluster DNS port {nameserver_port}: resolv.conf cannot carry a port")
    lines += [
        f"nameserver {nameserver}",
        f"search {namespace}.svc.{zone} svc.{zone} {zone}",
        f"options ndots:{ndots}",
    ]
    out = Path(path)
    out.write_text("\n".join(lines) + "\n")
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="podproxy cluster-dns",
        description="Answer cluster DNS like CoreDNS for the Services and Pods in manifests; "
        "reloads the manifests when they change or on SIGHUP.",
    )
    ap.add_argument("--manifests", required=True, nargs="+", help="YAML files or directories")
    ap.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=5353, help="UDP and TCP port (default 5353)")
    ap.add_argument("--zone", default="cluster.local", help="cluster domain")
    ap.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="record TTL (default 5)")
    ap.add_argument("--shuffle", action="store_true", help="shuffle A/AAAA order per answer")
    return ap.parse_args(argv)


def _mtimes(paths: Sequence[str]) -> dict[Path, float]:
    out: dict[Path, float] = {}
    for f in [*map(Path, paths), *manifest_files(paths)]:
        with contextlib.suppress(OSError):
            out[f] = os.stat(f).st_mtime
    return out


async def _run(args: argparse.Namespace) -> int:
    server = ClusterDNS(
        listen=args.listen, port=args.port, zone=args.zone, ttl=args.ttl, shuffle=args.shuffle
    )
    try:
        server.load_manifests(args.manifests)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    await server.start()
    host, port = server.address
    print(f"cluster-dns listening on {host}:{port}", flush=True)
    seen = _mtimes(args.manifests)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELOAD_INTERVAL):
                    await stop.wait()
            now = _mtimes(args.manifests)
            if now != seen or reload.is_set():
                seen = now
                reload.clear()
                try:
                    server.reload_manifests(args.manifests)
                except ManifestError as e:  # keep serving the last good state
                    log.error("reload failed, keeping the current state: %s", e)
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`podproxy cluster-dns --manifests PATH... [--listen --port --zone --ttl --shuffle]`."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
