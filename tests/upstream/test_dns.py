"""The dnspython resolver seam against a real DNS server (dnsmasq from Debian)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podproxy.stats import Store
from podproxy.upstream.dns import (
    DnspythonResolver,
    DnsResolutionFailed,
    DnsStats,
    ResolverConfig,
    parse_host_port,
)

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
SVC = "httpd-discovery.mynamespace.svc.cluster.local"


def free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[int]:
    """dnsmasq on 127.0.0.1:<port> answering for a headless-looking service of 60 pods."""
    if not Path(DNSMASQ).exists():
        pytest.fail("dnsmasq is not installed: `make test` installs it")
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "".join(f"127.0.2.{i} {SVC}\n" for i in range(1, 61))
        + "127.0.1.1 two.mynamespace.svc.cluster.local\n"
        + "127.0.1.2 two.mynamespace.svc.cluster.local\n"
    )
    port = free_udp_tcp_port()
    proc = subprocess.Popen(
        [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            f"--addn-hosts={hosts}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            "--local=/cluster.local/",
            "--local-ttl=7",
            "--user=root",
            "--log-facility=-",
            f"--pid-file={tmp_path / 'pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def resolver(port: int, tmp_path: Path, **kw: object) -> DnspythonResolver:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "nameserver 127.0.0.1\n"
        "search mynamespace.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )
    cfg = ResolverConfig(query_timeout=2.0, query_tries=2, **kw)  # type: ignore[arg-type]
    return DnspythonResolver(
        cfg,
        resolv_conf=str(conf),
        default_nameservers=[("127.0.0.1", port)],
        stats=Store().scope("dns.cares.").make(DnsStats),
    )


async def test_short_name_through_the_search_list(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path)
    resp = await r.resolve("two", "V4_ONLY")
    assert sorted(resp.addresses) == ["127.0.1.1", "127.0.1.2"]
    assert resp.ttl == 7


async def test_full_name_with_and_without_trailing_dot(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path)
    for name in ("two.mynamespace.svc.cluster.local", "two.mynamespace.svc.cluster.local."):
        assert sorted((await r.resolve(name, "V4_ONLY")).addresses) == ["127.0.1.1", "127.0.1.2"]


async def test_no_default_search_domain_stops_short_names(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path, no_default_search_domain=True)
    # Only `two.` is asked; dnsmasq refuses names outside its zones, which is a failure.
    with pytest.raises(DnsResolutionFailed, match="REFUSED"):
        await r.resolve("two", "V4_ONLY")


async def test_truncated_udp_answer_is_retried_over_tcp(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path)
    resp = await r.resolve(SVC + ".", "V4_ONLY")
    assert len(resp.addresses) == 60


async def test_tcp_only(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path, use_tcp=True)
    assert len((await r.resolve(SVC, "V4_ONLY")).addresses) == 60


async def test_nxdomain_and_nodata_are_empty_successes(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path)
    assert (await r.resolve("missing.mynamespace.svc.cluster.local.", "V4_ONLY")).addresses == ()
    assert (await r.resolve("two.mynamespace.svc.cluster.local.", "V6_ONLY")).addresses == ()
    assert r.stats is not None and r.stats.not_found.value == 2


async def test_families(dnsmasq: int, tmp_path: Path) -> None:
    r = resolver(dnsmasq, tmp_path)
    name = "two.mynamespace.svc.cluster.local."
    for family in ("AUTO", "V4_PREFERRED", "ALL"):
        assert sorted((await r.resolve(name, family)).addresses) == ["127.0.1.1", "127.0.1.2"]


async def test_dead_server_is_a_failure(tmp_path: Path) -> None:
    port = free_udp_tcp_port()  # nothing listens there
    r = resolver(port, tmp_path)
    with pytest.raises(DnsResolutionFailed):
        await r.resolve("two", "V4_ONLY")
    # AUTO: a failed AAAA plus a failed A is a failure, never an empty set.
    with pytest.raises(DnsResolutionFailed):
        await r.resolve("two", "AUTO")


def test_cluster_resolvers_override_and_fallback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.9\n")
    own = ResolverConfig(nameservers=(("127.0.0.5", 5353),))
    assert DnspythonResolver(own, resolv_conf=str(conf)).nameservers == ["127.0.0.5:5353"]
    fallback = ResolverConfig(nameservers=(("127.0.0.5", 5353),), resolvers_as_fallback=True)
    assert DnspythonResolver(fallback, resolv_conf=str(conf)).nameservers == ["127.0.0.9:53"]
    # --dns-server style defaults replace resolv.conf's servers but not cluster resolvers
    r = DnspythonResolver(
        ResolverConfig(), resolv_conf=str(conf), default_nameservers=[("127.0.0.7", 5300)]
    )
    assert r.nameservers == ["127.0.0.7:5300"]


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_host_port("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_host_port("[::1]:5353") == ("::1", 5353)
    for bad in ("localhost:53", "127.0.0.1:0", "[::1", "127.1.2.4:x"):
        with pytest.raises(ValueError):
            parse_host_port(bad)
