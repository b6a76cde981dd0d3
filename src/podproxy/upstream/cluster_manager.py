"""The cluster manager: builds clusters by type from config, warms them, and owns their pools.

Clusters are built once at start (static_resources). `initialize()` starts every cluster's
discovery and resolves when all primary clusters have finished their first round (warming);
the server opens its listeners only after that. Admin reads clusters through `clusters`.
With `pushed=True` (a `--concurrency` worker) no cluster discovers anything: the main process
pushes host sets in (podproxy.workers) and says when all are initialized.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podproxy.errors import ConfigError
from podproxy.http.http1 import codec
from podproxy.http.http1.pool import HostPool
from podproxy.http.http2.codec import http2_settings, make_codec_stats
from podproxy.http.http2.pool import H2HostPool
from podproxy.http.stream import DEFAULT_MAX_HEADERS_COUNT
from podproxy.stats import Counter, Gauge, Store
from podproxy.tls import UpstreamTls
from podproxy.upstream.auto_sni import AutoSni
from podproxy.upstream.cluster import Cluster, ClusterInfo
from podproxy.upstream.discovery import CLUSTER_TYPES, DNS_TYPES
from podproxy.upstream.dns import (
    DnspythonResolver,
    DnsStats,
    Resolver,
    resolver_config_from_cluster,
)
from podproxy.upstream.load_balancer import LB_POLICIES, RandomFn, default_random

log = logging.getLogger("podproxy.upstream")


@dataclass(slots=True)
class ClusterManagerStats:
    """`cluster_manager.*`."""

    cluster_added: Counter
    cluster_modified: Counter
    cluster_removed: Counter
    cluster_updated: Counter
    active_clusters: Gauge
    warming_clusters: Gauge


def _name(v: Any) -> str:
    return str(getattr(v, "name", v))


class PushedDiscovery:
    """A worker's discovery: hosts arrive from the main process, so there is nothing to run."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ClusterManager:
    """All clusters of the server, by name."""

    def __init__(
        self,
        store: Store,
        random: RandomFn = default_random,
        resolver_factory: Callable[[Any], Resolver] | None = None,
        *,
        pushed: bool = False,
    ) -> None:
        self.store = store
        self.random = random
        self.stats = store.scope("cluster_manager.").make(ClusterManagerStats)
        self.dns_stats = store.scope("dns.cares.").make(DnsStats)
        self.resolver_factory = resolver_factory or self._default_resolver
        self.clusters: dict[str, Cluster] = {}
        self.pushed = pushed
        self._discoveries: list[Any] = []
        # Each TLS cluster's context, by cluster name (pools connect with it; admin /certs).
        self.tls: dict[str, UpstreamTls] = {}

    def add_cluster(self, cfg: Any, path: str) -> Cluster:
        """Build a cluster from its typed config; unsupported types fail here, clearly."""
        type_name = _name(cfg.type)
        factory = CLUSTER_TYPES.get(type_name)
        if factory is None:
            raise ConfigError(
                f"{path}.type",
                f"cluster type {type_name} is not supported by this podproxy yet",
            )
        policy = _name(cfg.lb_policy)
        lb_factory = LB_POLICIES.get(policy)
        if lb_factory is None:
            raise ConfigError(
                f"{path}.lb_policy", f"lb_policy {policy} is not supported by podproxy yet"
            )
        panic = 50.0
        clc = getattr(cfg, "common_lb_config", None)
        if clc is not None and getattr(clc, "healthy_panic_threshold", None) is not None:
            panic = float(clc.healthy_panic_threshold)
        lb_kwargs: dict[str, Any] = {"random": self.random, "panic_threshold": panic}
        lrc = getattr(cfg, "least_request_lb_config", None)
        if policy == "LEAST_REQUEST" and lrc is not None and getattr(lrc, "choice_count", None):
            lb_kwargs["choice_count"] = int(lrc.choice_count)
        idle_timeout: float | None = 3600.0
        max_duration: float | None = None
        max_headers_kb = codec.DEFAULT_MAX_RESPONSE_HEADERS_BYTES // 1024
        max_headers_count = DEFAULT_MAX_HEADERS_COUNT
        http_options = getattr(cfg, "http_options", None)
        chpo = http_options() if http_options is not None else None
        if chpo is not None:
            idle_timeout = chpo.idle_timeout
            max_duration = chpo.max_connection_duration
            max_headers_count = chpo.max_headers_count
            if chpo.max_response_headers_kb is not None:
                max_headers_kb = chpo.max_response_headers_kb
        info = ClusterInfo(
            cfg.name,
            type_name=type_name,
            connect_timeout=cfg.connect_timeout,
            lb_policy=policy,
            scope=self.store.scope(f"cluster.{cfg.name}."),
            config=cfg,
            per_connection_buffer_limit_bytes=getattr(
                cfg, "per_connection_buffer_limit_bytes", 1024 * 1024
            ),
            idle_timeout=idle_timeout,
        )
        tls_cfg = cfg.tls() if hasattr(cfg, "tls") else None
        tls = None
        if tls_cfg is not None:
            tls = self.tls[cfg.name] = UpstreamTls(
                tls_cfg, f"{path}.transport_socket.typed_config", info.scope
            )
        pool_factory: Callable[..., HostPool] = lambda host, tls=tls: HostPool(  # noqa: E731
            host,
            info.stats,
            connect_timeout=info.connect_timeout,
            idle_timeout=idle_timeout,
            max_connection_duration=max_duration,
            buffer_limit=info.per_connection_buffer_limit_bytes,
            max_response_headers_bytes=max_headers_kb * 1024,
            max_response_headers_count=max_headers_count,
            tls=tls,
        )
        protocol, h2_options = (
            cfg.upstream_protocol() if hasattr(cfg, "upstream_protocol") else ("http1", None)
        )
        h2_pool_factory: Callable[..., H2HostPool] | None = None
        if h2_options is not None:
            settings = http2_settings(h2_options, max_headers_kb * 1024)
            codec_stats = make_codec_stats(info.scope)
            if (
                tls is not None
                and tls_cfg is not None
                and protocol == "http2"
                and not tls_cfg.common_tls_context.alpn_protocols
            ):
                # Envoy offers the pool's protocol when the context names none: a pod
                # speaking HTTP/2 over TLS (gRPC) requires ALPN h2.
                tls.context.set_alpn_protocols(["h2"])
            h2_pool_factory = lambda host, tls=tls: H2HostPool(  # noqa: E731
                host,
                info.stats,
                connect_timeout=info.connect_timeout,
                settings=settings,
                idle_timeout=idle_timeout,
                max_connection_duration=max_duration,
                buffer_limit=info.per_connection_buffer_limit_bytes,
                scheme=b"https" if tls is not None else b"http",
                tls=tls,
                codec_stats=codec_stats,
            )
        auto_options = cfg.auto_sni_options() if hasattr(cfg, "auto_sni_options") else None
        auto_sni = AutoSni.from_config(auto_options)
        if auto_sni is not None and auto_sni.san and tls is not None and tls.unverified:
            log.warning(
                "cluster %s: auto_san_validation without a trusted_ca fails every TLS "
                "connection (as in Envoy: the peer cannot be verified)",
                cfg.name,
            )
        if protocol == "http2":
            assert h2_pool_factory is not None
            cluster = Cluster(
                info, lb_factory(**lb_kwargs), h2_pool_factory, auto_sni=auto_sni, tls=tls
            )
        elif protocol == "downstream":
            cluster = Cluster(
                info,
                lb_factory(**lb_kwargs),
                pool_factory,
                h2_pool_factory,
                auto_sni=auto_sni,
                tls=tls,
            )
        else:
            cluster = Cluster(
                info, lb_factory(**lb_kwargs), pool_factory, auto_sni=auto_sni, tls=tls
            )
        if self.pushed:
            factory(cluster, cfg, path, resolver=None, random=self.random)  # config checks only
            cluster.discovery = PushedDiscovery(cluster)
        elif type_name in DNS_TYPES:
            cluster.discovery = factory(
                cluster, cfg, path, resolver=self.resolver_factory(cfg), random=self.random
            )
        else:
            cluster.discovery = factory(cluster, cfg, path)
        self.clusters[cfg.name] = cluster
        self.stats.cluster_added.inc()
        self.stats.active_clusters.set(len(self.clusters))
        return cluster

    def _default_resolver(self, cfg: Any) -> Resolver:
        return DnspythonResolver(resolver_config_from_cluster(cfg), stats=self.dns_stats)

    async def initialize(self) -> None:
        """Start discovery everywhere; return when every cluster finished its first round."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        warming = set(self.clusters)
        self.stats.warming_clusters.set(len(warming))

        def warmed(name: str) -> None:
            warming.discard(name)
            self.stats.warming_clusters.set(len(warming))
            if not warming and not done.done():
                done.set_result(None)

        for name, c in self.clusters.items():
            c.on_initialized(lambda name=name: warmed(name))  # type: ignore[misc]
            c.discovery.start()
        if not warming and not done.done():
            done.set_result(None)
        await done

    def shutdown(self) -> None:
        for c in self.clusters.values():
            c.discovery.stop()
            for pool in c.all_pools():
                pool.close()
