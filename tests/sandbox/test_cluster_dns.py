"""Cluster DNS on real loopback sockets, with dnspython as the client: the CoreDNS answer shapes
(kubernetes-dns.md §1), the EndpointSlice rules, truncation and TCP retry, the trouble knobs,
manifests, the resolv.conf helper and the module CLI."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from podproxy.errors import ConfigError
from podproxy.sandbox.cluster_dns import ClusterDNS, truncate, write_resolv_conf
from podproxy.sandbox.k8s_objects import (
    ClusterState,
    ManifestError,
    Pod,
    Service,
    ServicePort,
    endpoint_slices_for,
    load_manifests,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "k8s"
NS = "mynamespace"
SVC = "httpd-discovery"
FQDN = f"{SVC}.{NS}.svc.cluster.local"
LABELS = {"app": "httpd"}


def headless(
    name: str = SVC, *, pnra: bool = False, target_port: int | str = 8080, **kw: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "selector": LABELS,
        "ports": [{"name": "http", "port": 80, "targetPort": target_port}],
        "publishNotReadyAddresses": pnra,
        **kw,
    }
    return {"kind": "Service", "metadata": {"name": name, "namespace": NS}, "spec": spec}


@pytest.fixture
async def server() -> AsyncIterator[ClusterDNS]:
    s = ClusterDNS(rng=random.Random(7))
    s.apply(headless())
    s.add_pod("httpd-0", NS, "127.0.1.1", labels=LABELS)
    s.add_pod("httpd-1", NS, "127.0.1.2", labels=LABELS)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def query(
    s: ClusterDNS,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    timeout: float = 2.0,
    **make: Any,
) -> dns.message.Message:
    host, port = s.address
    q = dns.message.make_query(name, rdtype, **make)
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=timeout)
    return await dns.asyncquery.udp(q, host, port=port, timeout=timeout)


def ips(r: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


def soa_of(r: dns.message.Message) -> str:
    assert len(r.authority) == 1 and r.authority[0].rdtype == dns.rdatatype.SOA
    return r.authority[0].to_text()


def resolver(s: ClusterDNS, **kw: Any) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=False)
    host, port = s.address
    res.nameservers = [host]
    res.port = port
    res.cache = None
    for k, v in kw.items():
        setattr(res, k, v)
    return res


async def test_service_a_answers_every_ready_pod(server: ClusterDNS) -> None:
    r = await query(server, FQDN)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert sorted(ips(r)) == ["127.0.1.1", "127.0.1.2"]
    assert r.answer[0].ttl == 5
    assert str(r.question[0].name) == FQDN + "."


def test_answers_for_without_sockets() -> None:
    s = ClusterDNS()
    s.load_manifests(EXAMPLES)
    assert s.answers_for(FQDN) == ["127.0.1.1", "127.0.1.2"]
    assert s.answers_for(FQDN, "AAAA") == []
    assert s.answers_for("1.1.0.127.in-addr.arpa", "PTR") == [f"127-0-1-1.{FQDN}."]


async def test_names_are_case_insensitive_and_echo_the_asked_case(server: ClusterDNS) -> None:
    r = await query(server, FQDN.upper())
    assert sorted(ips(r)) == ["127.0.1.1", "127.0.1.2"]
    assert r.answer[0].name.to_text() == FQDN.upper() + "."


async def test_ttl_and_soa_minimum_follow_the_knob(server: ClusterDNS) -> None:
    server.ttl = 30
    assert (await query(server, FQDN)).answer[0].ttl == 30
    soa = soa_of(await query(server, FQDN, "AAAA"))
    serial = server.state.modified
    assert soa == (
        f"cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        f"{serial} 7200 1800 86400 30"
    )


async def test_no_ready_endpoint_is_nxdomain_with_soa(server: ClusterDNS) -> None:
    server.set_ready("httpd-0", NS, False)
    server.set_ready("httpd-1", NS, False)
    for rdtype in ("A", "AAAA"):
        r = await query(server, FQDN, rdtype)
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert r.flags & dns.flags.AA
        assert not r.answer
        assert soa_of(r).startswith("cluster.local. 5 IN SOA ns.dns.cluster.local.")
    server.set_ready("httpd-1", NS, True)
    assert ips(await query(server, FQDN)) == ["127.0.1.2"]


@pytest.mark.parametrize("rdtype", ["AAAA", "TXT", "MX", "CNAME"])
async def test_existing_name_without_that_type_is_nodata(server: ClusterDNS, rdtype: str) -> None:
    r = await query(server, FQDN, rdtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert not r.answer
    soa_of(r)


async def test_srv_per_endpoint_with_target_port_and_additional_a(server: ClusterDNS) -> None:
    r = await query(server, f"_http._tcp.{FQDN}", "SRV")
    rows = sorted(rd.to_text() for rd in r.answer[0])
    assert rows == [
        f"0 50 8080 127-0-1-1.{FQDN}.",
        f"0 50 8080 127-0-1-2.{FQDN}.",
    ]
    extra = {rrset.name.to_text(): [rd.to_text() for rd in rrset] for rrset in r.additional}
    assert extra == {f"127-0-1-1.{FQDN}.": ["127.0.1.1"], f"127-0-1-2.{FQDN}.": ["127.0.1.2"]}
    missing = await query(server, f"_grpc._tcp.{FQDN}", "SRV")
    assert missing.rcode() == dns.rcode.NXDOMAIN


async def test_srv_weight_is_floor_of_100_over_n(server: ClusterDNS) -> None:
    server.add_pod("httpd-2", NS, "127.0.1.3", labels=LABELS)
    r = await query(server, f"_http._tcp.{FQDN}", "SRV")
    assert {rd.weight for rd in r.answer[0]} == {33}


async def test_ptr_for_an_endpoint_ip(server: ClusterDNS) -> None:
    r = await query(server, "1.1.0.127.in-addr.arpa", "PTR")
    assert r.flags & dns.flags.AA
    assert ips(r) == [f"127-0-1-1.{FQDN}."]
    unknown = await query(server, "9.9.0.127.in-addr.arpa", "PTR")
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    assert soa_of(unknown).startswith("in-addr.arpa. ")


async def test_per_pod_name_by_dashed_ip(server: ClusterDNS) -> None:
    assert ips(await query(server, f"127-0-1-2.{FQDN}")) == ["127.0.1.2"]
    assert (await query(server, f"127-0-1-9.{FQDN}")).rcode() == dns.rcode.NXDOMAIN


async def test_per_pod_name_by_hostname_when_subdomain_is_the_service(server: ClusterDNS) -> None:
    server.add_pod("web-0", NS, "127.0.1.5", labels=LABELS, hostname="web-0", subdomain=SVC)
    server.add_pod("web-1", NS, "127.0.1.6", labels=LABELS, hostname="web-1", subdomain="other")
    assert ips(await query(server, f"web-0.{FQDN}")) == ["127.0.1.5"]
    assert (await query(server, f"web-1.{FQDN}")).rcode() == dns.rcode.NXDOMAIN
    assert ips(await query(server, f"127-0-1-6.{FQDN}")) == ["127.0.1.6"]
    ptr = await query(server, "5.1.0.127.in-addr.arpa", "PTR")
    assert ips(ptr) == [f"web-0.{FQDN}."]


async def test_dns_version_txt(server: ClusterDNS) -> None:
    r = await query(server, "dns-version.cluster.local", "TXT")
    assert ips(r) == ['"1.1.0"']
    assert r.answer[0].ttl == 28800


async def test_out_of_zone_is_nxdomain_as_from_upstream(server: ClusterDNS) -> None:
    r = await query(server, "httpd-discovery")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert not r.flags & dns.flags.AA and not r.authority


async def test_out_of_zone_can_be_refused(server: ClusterDNS) -> None:
    server.out_of_zone = "refused"
    r = await query(server, "example.com")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA
    assert len(r.question) == 1


@pytest.mark.parametrize(
    ("name", "rcode"),
    [
        (f"{NS}.svc.cluster.local", dns.rcode.NOERROR),
        ("nowhere.svc.cluster.local", dns.rcode.NXDOMAIN),
        (f"{SVC}.svc.cluster.local", dns.rcode.NXDOMAIN),  # 2nd search suffix: ns "httpd-…"
        (f"{SVC}.cluster.local", dns.rcode.NXDOMAIN),  # invalid shape
        (f"nosuch.{NS}.svc.cluster.local", dns.rcode.NXDOMAIN),
        ("cluster.local", dns.rcode.NOERROR),
        ("svc.cluster.local", dns.rcode.NOERROR),
        (f"a.b.c.{FQDN}", dns.rcode.NXDOMAIN),  # too many labels
    ],
)
async def test_other_name_shapes(server: ClusterDNS, name: str, rcode: dns.rcode.Rcode) -> None:
    r = await query(server, name)
    assert r.rcode() == rcode
    assert not r.answer
    soa_of(r)


async def test_cluster_ip_service_answers_its_cluster_ip(server: ClusterDNS) -> None:
    spec = {"clusterIP": "127.0.9.1", "selector": LABELS, "ports": [{"name": "http", "port": 80}]}
    server.apply({"kind": "Service", "metadata": {"name": "web", "namespace": NS}, "spec": spec})
    name = f"web.{NS}.svc.cluster.local"
    assert ips(await query(server, name)) == ["127.0.9.1"]
    srv = await query(server, f"_http._tcp.{name}", "SRV")
    assert ips(srv) == [f"0 100 80 {name}."]
    assert ips(await query(server, "1.9.0.127.in-addr.arpa", "PTR")) == [f"{name}."]


async def test_zone_apex_soa_and_ns_with_the_servers_own_address(server: ClusterDNS) -> None:
    soa = await query(server, "cluster.local", "SOA")
    assert soa.answer[0].to_text().startswith("cluster.local. 5 IN SOA ns.dns.cluster.local.")
    ns = await query(server, "cluster.local", "NS")
    assert ips(ns) == ["ns.dns.cluster.local."]
    assert [rd.to_text() for rrset in ns.additional for rd in rrset] == ["127.0.0.1"]
    assert ips(await query(server, "ns.dns.cluster.local")) == ["127.0.0.1"]


async def test_changes_are_logged_with_their_effect(
    server: ClusterDNS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="podproxy.sandbox.cluster_dns")
    server.set_ready("httpd-0", NS, False)
    server.set_ready("httpd-1", NS, False)
    assert caplog.messages == [
        f"Pod {NS}/httpd-0 ready=False",
        f"  {FQDN}. -> 127.0.1.2",
        f"Pod {NS}/httpd-1 ready=False",
        f"  {FQDN}. -> NXDOMAIN",
    ]


async def test_pod_names_insecure_mode(server: ClusterDNS) -> None:
    assert ips(await query(server, f"127-0-9-3.{NS}.pod.cluster.local")) == ["127.0.9.3"]
    r = await query(server, "10-1-2-3.nowhere.pod.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN


async def test_terminating_and_deleted_pods_disappear(server: ClusterDNS) -> None:
    server.set_terminating("httpd-0", NS)
    assert ips(await query(server, FQDN)) == ["127.0.1.2"]
    server.delete_pod("httpd-1", NS)
    assert (await query(server, FQDN)).rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(KeyError):
        server.delete_pod("httpd-1", NS)


async def test_publish_not_ready_addresses_keeps_unready_and_terminating(
    server: ClusterDNS,
) -> None:
    server.apply(headless(pnra=True))
    server.set_ready("httpd-0", NS, False)
    server.set_terminating("httpd-1", NS)
    assert sorted(ips(await query(server, FQDN))) == ["127.0.1.1", "127.0.1.2"]


def test_controller_leaves_out_pods_without_ip_terminal_or_unselected() -> None:
    svc = Service(SVC, NS, None, (ServicePort("http", 80, "web"),), LABELS)
    pods = [
        Pod("ok", NS, ("127.0.1.1",), LABELS, container_ports={"web": 8081}),
        Pod("no-ip", NS, (), LABELS),
        Pod("done", NS, ("127.0.1.2",), LABELS, phase="Succeeded"),
        Pod("failed", NS, ("127.0.1.3",), LABELS, phase="Failed"),
        Pod("other-ns", "default", ("127.0.1.4",), LABELS),
        Pod("other-app", NS, ("127.0.1.5",), {"app": "nginx"}),
        Pod("unready", NS, ("127.0.1.6",), LABELS, ready=False),
        Pod("v6", NS, ("fd00::7",), LABELS),
    ]
    slices = endpoint_slices_for(svc, pods)
    got = {
        ep.target_pod: (ep.addresses, ep.ready, ep.serving, sl.ports[0].port if sl.ports else None)
        for sl in slices
        for ep in sl.endpoints
    }
    # The named targetPort resolves per pod; unresolved, the pod's slice has no port.
    assert got == {
        "ok": (("127.0.1.1",), True, True, 8081),
        "unready": (("127.0.1.6",), False, False, None),
    }
    assert all(sl.address_type == "IPv4" for sl in slices)


async def test_dual_stack_service_answers_aaaa(server: ClusterDNS) -> None:
    server.apply(headless(ipFamilyPolicy="PreferDualStack"))
    server.add_pod("v6", NS, ["127.0.1.7", "fd00::7"], labels=LABELS)
    assert ips(await query(server, FQDN, "AAAA")) == ["fd00::7"]
    assert "127.0.1.7" in ips(await query(server, FQDN))
    assert ips(await query(server, f"fd00--7.{FQDN}", "AAAA")) == ["fd00::7"]


async def test_endpoint_slices_given_directly_are_unioned_and_deduplicated(
    server: ClusterDNS,
) -> None:
    for i, ready in ((1, True), (2, None), (3, False)):
        server.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{SVC}-manual-{i}",
                    "namespace": NS,
                    "labels": {"kubernetes.io/service-name": SVC},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {"addresses": [f"127.0.1.{i}"], "conditions": {"ready": ready}},
                ],
            }
        )
    # .1 is in a derived and a manual slice: once; .2 manual with ready nil: in; .3 not ready.
    assert ips(await query(server, FQDN)) == ["127.0.1.1", "127.0.1.2"]


async def test_sixty_pods_truncate_over_udp_and_resolver_retries_over_tcp(
    server: ClusterDNS,
) -> None:
    server.delete_pod("httpd-0", NS)
    server.delete_pod("httpd-1", NS)
    for i in range(60):
        server.add_pod(f"httpd-{i}", NS, f"127.0.2.{i + 1}", labels=LABELS)
    r = await query(server, FQDN)
    assert r.flags & dns.flags.TC
    assert [q.name.to_text() for q in r.question] == [FQDN + "."]
    assert 0 < len(ips(r)) <= 28
    assert len(r.to_wire()) <= 512
    edns512 = await query(server, FQDN, use_edns=0, payload=512)
    assert edns512.flags & dns.flags.TC and 0 < len(ips(edns512)) <= 27
    big = await query(server, FQDN, use_edns=0, payload=1232)
    assert not big.flags & dns.flags.TC and len(ips(big)) == 60
    assert len(ips(await query(server, FQDN, tcp=True))) == 60
    answer = await resolver(server).resolve(FQDN, "A")
    assert len(answer) == 60


def test_truncate_keeps_question_and_a_partial_answer() -> None:
    s = ClusterDNS()
    s.apply(headless())
    for i in range(40):
        s.add_pod(f"p{i}", NS, f"127.0.2.{i + 1}", labels=LABELS)
    full = s.resolve(dns.message.make_query(FQDN, "A"))
    assert len(full.answer[0]) == 40 and not full.flags & dns.flags.TC
    cut = s.resolve(dns.message.make_query(FQDN, "A"), 512)
    assert cut.flags & dns.flags.TC and len(cut.question) == 1
    assert len(cut.answer[0]) == 28  # the most that fit, as measured with dnsmasq (§1.6)
    assert truncate(full, 4096) is full


async def test_shuffle_changes_the_order(server: ClusterDNS) -> None:
    for i in range(3, 6):
        server.add_pod(f"httpd-{i}", NS, f"127.0.1.{i}", labels=LABELS)
    fixed = {tuple(ips(await query(server, FQDN))) for _ in range(10)}
    assert len(fixed) == 1
    server.shuffle = True
    orders = {tuple(ips(await query(server, FQDN))) for _ in range(50)}
    assert len(orders) >= 2
    assert all(sorted(o) == sorted(next(iter(fixed))) for o in orders)


async def test_stop_and_start_on_the_same_port(server: ClusterDNS) -> None:
    address = server.address
    await query(server, FQDN, tcp=True)
    await server.stop()
    with pytest.raises(dns.exception.Timeout):
        await query(server, FQDN, timeout=0.3)
    await server.start()
    assert server.address == address
    assert len(ips(await query(server, FQDN))) == 2
    assert len(ips(await query(server, FQDN, tcp=True))) == 2


async def test_servfail_mode(server: ClusterDNS) -> None:
    server.servfail = True
    r = await query(server, FQDN)
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
    assert (await query(server, "example.com")).rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(dns.resolver.NoNameservers):
        await resolver(server, lifetime=2.0).resolve(FQDN)
    server.servfail = False
    assert len(ips(await query(server, FQDN))) == 2


async def test_drop_mode_times_out(server: ClusterDNS) -> None:
    server.drop = True
    with pytest.raises(dns.exception.Timeout):
        await query(server, FQDN, timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        await query(server, FQDN, timeout=0.3, tcp=True)
    server.drop = False
    assert len(ips(await query(server, FQDN))) == 2


async def test_delay_makes_short_timeouts_fail(server: ClusterDNS) -> None:
    server.delay = 1.0
    with pytest.raises(dns.exception.Timeout):
        await query(server, FQDN, timeout=0.2)
    server.delay = 0.05
    assert len(ips(await query(server, FQDN, timeout=5.0))) == 2
    assert len(ips(await query(server, FQDN, timeout=5.0, tcp=True))) == 2


async def test_garbage_gets_formerr_and_responses_are_ignored(server: ClusterDNS) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=server.address)
    try:
        transport.sendto(b"\x12\x34" + b"\x01\x00" + b"\x00\x05" + bytes(6) + b"\xff\xff")
        reply = await asyncio.wait_for(got.get(), 2.0)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR
        response = dns.message.make_response(dns.message.make_query(FQDN, "A"))
        transport.sendto(response.to_wire())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(got.get(), 0.3)
    finally:
        transport.close()


async def test_example_manifests_answer_the_posts_two_ips() -> None:
    async with ClusterDNS() as s:
        s.load_manifests(EXAMPLES)
        r = await query(s, FQDN)
        assert sorted(ips(r)) == ["127.0.1.1", "127.0.1.2"]
        srv = await query(s, f"_http._tcp.{FQDN}", "SRV")
        assert {rd.port for rd in srv.answer[0]} == {8080}


def test_manifests_multi_document_list_and_directory(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: List\nitems:\n"
        "- {kind: Namespace, metadata: {name: empty}}\n"
        "- {kind: Service, metadata: {name: s}, spec: {clusterIP: None, selector: {a: b}}}\n"
        "---\n"
        "kind: Pod\nmetadata: {name: p, labels: {a: b}}\n"
        "status: {podIP: 127.0.1.9, conditions: [{type: Ready, status: 'True'}]}\n"
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    objects = load_manifests(tmp_path)
    assert [type(o).__name__ for o in objects] == ["Namespace", "Service", "Pod"]
    state = ClusterState()
    for o in objects:
        state.put(o)
    assert state.namespace_exists("empty") and state.namespace_exists("default")
    (ep,) = state.endpoint_slices("default", "s")[0].endpoints
    assert ep.addresses == ("127.0.1.9",) and ep.ready


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Service\nmetadata: {name: s}\nspec: {clusterIP: None, ports: [{port: x}]}",
            "bad.yaml (document 1) (Service default/s): spec.ports[0].port: expected a port",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\n---\nkind: Pod\nmetadata: {name: q}\n"
            "status: {podIP: 127.0.0.300}",
            "bad.yaml (document 2) (Pod default/q): status.podIP: expected an IP address",
        ),
        ("kind: Deployment\nmetadata: {name: d}", "kind: 'Deployment' is not supported"),
        ("kind: Pod\nmetadata: {}", "bad.yaml (document 1): metadata.name: required"),
        ("kind: Service\nmetadata: {name: s}\nspec: {}", "spec.clusterIP: required"),
        ("kind: [", "bad.yaml: not valid YAML"),
    ],
)
def test_bad_manifests_name_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    assert isinstance(info.value, ConfigError)
    assert expected in str(info.value).replace(str(tmp_path) + "/", "")


def test_reload_reports_changes() -> None:
    s = ClusterDNS()
    s.load_manifests(EXAMPLES)
    assert s.reload_manifests(EXAMPLES) == []
    assert s.reload_manifests(EXAMPLES / "service.yaml") == [
        f"deleted Pod {NS}/httpd-0",
        f"deleted Pod {NS}/httpd-1",
    ]


async def test_resolv_conf_search_resolves_the_short_name(
    server: ClusterDNS, tmp_path: Path
) -> None:
    host, port = server.address
    path = write_resolv_conf(tmp_path / "resolv.conf", port, namespace=NS)
    text = path.read_text()
    assert f"search {NS}.svc.cluster.local svc.cluster.local cluster.local\n" in text
    assert "options ndots:5\n" in text and f"nameserver {host}\n" in text
    res = dns.asyncresolver.Resolver(filename=str(path))
    res.nameserver_ports = {host: port}
    res.cache = None
    answer = await res.resolve(SVC, "A", search=True)
    assert sorted(rd.to_text() for rd in answer) == ["127.0.1.1", "127.0.1.2"]
    assert answer.qname.to_text() == FQDN + "."


async def ask_udp(port: int, name: str = FQDN) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2.0)


def test_module_cli_serves_reloads_on_change_and_stops_on_sigterm(tmp_path: Path) -> None:
    manifests = tmp_path / "k8s"
    manifests.mkdir()
    for f in EXAMPLES.iterdir():
        (manifests / f.name).write_text(f.read_text())
    cmd = [sys.executable, "-m", "podproxy.sandbox.cluster_dns", "--manifests", str(manifests)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("cluster-dns listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert sorted(ips(asyncio.run(ask_udp(port)))) == ["127.0.1.1", "127.0.1.2"]
        pods = manifests / "pods.yaml"
        pods.write_text(pods.read_text().replace('status: "True"', 'status: "False"', 1))
        for _ in range(100):  # the server polls mtimes every second
            if ips(asyncio.run(ask_udp(port))) == ["127.0.1.2"]:
                break
            time.sleep(0.1)
        assert ips(asyncio.run(ask_udp(port))) == ["127.0.1.2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert f"changed Pod {NS}/httpd-0" in log and f"{FQDN}. -> 127.0.1.2" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
