"""`podproxy sandbox`: the post's scenario on one machine, watchable and scriptable.

Theory of operation: a `ClusterDNS` answers for the headless Service `httpd-discovery` in
namespace `mynamespace` the way CoreDNS does; "pods" are `Pod` servers on 127.0.1.x:8080;
podproxy runs as a child process on the post's v2 config *unchanged*, told only where the
cluster DNS is (`--resolv-conf`, `--dns-server`), as a pod's resolv.conf would; a load generator
sends steady traffic through it. Scaling follows Kubernetes: a new pod serves first, then
becomes Ready and enters DNS; a removed pod leaves DNS first (terminating), keeps serving for
the termination grace period, then stops gracefully. Everything started is stopped on exit.
With `Options.grpc` the same runs with gRPC pods behind `grpc-discovery`, podproxy on an HTTP/2
config, and one gRPC channel of load beside a connection-pinned Service (podproxy.sandbox.grpc_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from podproxy.sandbox.cluster_dns import ClusterDNS, write_resolv_conf
from podproxy.sandbox.grpc_config import (
    GRPC_CLUSTER,
    GRPC_LABELS,
    GRPC_POD_PREFIX,
    GRPC_SERVICE,
    GRPC_SERVICE_MANIFEST,
)
from podproxy.sandbox.load import LoadGenerator
from podproxy.sandbox.pods import Pod, pod_ip
from podproxy.sandbox.seed_config import SEED_V2_YAML

if TYPE_CHECKING:
    from podproxy.sandbox.grpc_load import GrpcLoad
    from podproxy.sandbox.grpc_pods import GrpcPod

log = logging.getLogger("podproxy.sandbox")

NAMESPACE = "mynamespace"
SERVICE = "httpd-discovery"
LABELS = {"app": "httpd"}
SERVICE_MANIFEST = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": SERVICE, "namespace": NAMESPACE},
    "spec": {
        "clusterIP": "None",
        "selector": LABELS,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "type": "ClusterIP",
    },
}
READY_TIMEOUT = 20.0


@dataclass(frozen=True)
class Workload:
    """What the pods are: the Service selecting them, their names, the proxy cluster's name."""

    manifest: dict[str, Any]
    service: str
    labels: dict[str, str]
    pod_prefix: str
    cluster: str


HTTP_WORKLOAD = Workload(SERVICE_MANIFEST, SERVICE, LABELS, "httpd", "httpd")
GRPC_WORKLOAD = Workload(
    GRPC_SERVICE_MANIFEST, GRPC_SERVICE, GRPC_LABELS, GRPC_POD_PREFIX, GRPC_CLUSTER
)


@dataclass(frozen=True)
class Action:
    """One scripted step: `scale 3 @5s`, `kill httpd-0 @8s`, `unready httpd-1 @3s`."""

    at: float
    verb: str
    arg: str

    def __str__(self) -> str:
        return f"{self.verb} {self.arg} @{self.at:g}s"


_ACTION = re.compile(r"^(scale|kill|unready|ready)\s+(\S+)\s*@\s*([0-9.]+)s?$")


def parse_script(text: str) -> list[Action]:
    """`"scale 3 @5s; scale 1 @12s"` → actions sorted by time; ValueError names the bad step."""
    actions = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        m = _ACTION.match(part)
        if m is None:
            raise ValueError(
                f"bad script step {part!r}: expected 'scale N @Ts', 'kill POD @Ts', "
                "'unready POD @Ts' or 'ready POD @Ts'"
            )
        verb, arg, at = m.group(1), m.group(2), float(m.group(3))
        if verb == "scale" and (not arg.isdigit() or int(arg) > 200):
            raise ValueError(f"bad script step {part!r}: scale takes 0..200 replicas")
        actions.append(Action(at, verb, arg))
    return sorted(actions, key=lambda a: a.at)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", text)
    if m is None:
        raise ValueError(f"bad duration {text!r}: expected like '20s', '500ms' or '2m'")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


@dataclass
class Options:
    replicas: int = 2
    script: list[Action] = field(default_factory=list)
    duration: float | None = None
    rps: float = 50.0
    connections: int = 4
    config_text: str = SEED_V2_YAML
    config_name: str = "seed-v2.yaml (the post's config, unchanged)"
    base_ip: str = "127.0.1.1"
    pod_port: int = 8080
    grace: float = 7.0
    dns_ttl: int = 5
    log_level: str = "warning"
    # gRPC pods and load; config_text must then be a config whose cluster speaks HTTP/2
    # (grpc_config.GRPC_V3_YAML) and pod_port its port.
    grpc: bool = False


@dataclass
class Event:
    at: float
    text: str


class Scenario:
    """All the moving parts of the sandbox and the operations on them."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.dns = ClusterDNS(port=0, ttl=options.dns_ttl)
        self.workload = GRPC_WORKLOAD if options.grpc else HTTP_WORKLOAD
        self.pods: dict[str, Pod | GrpcPod] = {}
        self.stopping: set[str] = set()
        self.next_index = 0
        self.proxy: subprocess.Popen[bytes] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="podproxy-sandbox-"))
        self.started_at = 0.0
        self.events: list[Event] = []
        self.listen_host, self.listen_port, self.admin_port = _ports(options.config_text)
        self.load: LoadGenerator | GrpcLoad
        # The same object as `load` in gRPC mode, for the view's Service comparison.
        self.grpc_load: GrpcLoad | None = None
        if options.grpc:
            from podproxy.sandbox.grpc_load import GrpcLoad

            self.load = self.grpc_load = GrpcLoad(
                self.listen_host,
                self.listen_port,
                rps=options.rps,
                concurrency=options.connections,
                endpoints=self.ready_endpoints,
            )
        else:
            self.load = LoadGenerator(
                self.listen_host, self.listen_port, rps=options.rps, connections=options.connections
            )
        self.membership: list[str] = []
        # When each pod entered DNS, to report how long the proxy took to send it traffic.
        self.joined_dns: dict[str, float] = {}
        self.dns_answer: list[str] = []
        self._bg: set[asyncio.Task[None]] = set()

    # lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.started_at = time.monotonic()
        await self.dns.start()
        self.dns.apply(self.workload.manifest)
        for _ in range(self.options.replicas):
            await self._add_pod()
        self._start_proxy()
        await self._wait_ready()
        self.event(f"podproxy is LIVE on {self.listen_host}:{self.listen_port}")
        self.load.start()
        self._spawn(self._watch())

    async def stop(self) -> None:
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        await self.load.stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proxy.wait, 10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                await asyncio.to_thread(self.proxy.wait)
        stopping = asyncio.gather(
            *(p.stop(grace=1.0) for p in self.pods.values()), return_exceptions=True
        )
        try:
            # Bounded: a pod's server that no longer answers must not hold the exit.
            await asyncio.wait_for(stopping, 10.0)
        except TimeoutError:
            log.warning("pods did not stop within 10s; going on")
        await self.dns.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def event(self, text: str) -> None:
        self.events.append(Event(time.monotonic() - self.started_at, text))
        log.info("%s", text)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    # the proxy ------------------------------------------------------------------------
    def _start_proxy(self) -> None:
        config = self.tmp / "envoy.yaml"
        config.write_text(self.options.config_text)
        host, port = self.dns.address
        resolv = write_resolv_conf(self.tmp / "resolv.conf", port, NAMESPACE, nameserver=host)
        argv = [
            sys.executable,
            "-m",
            "podproxy",
            "-c",
            str(config),
            "-l",
            self.options.log_level,
            "--resolv-conf",
            str(resolv),
            "--dns-server",
            f"{host}:{port}",
            "--drain-time-s",
            "2",
        ]
        self.stderr_path = self.tmp / "podproxy.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proxy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.event(f"started podproxy (pid {self.proxy.pid}) on {self.options.config_name}")

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proxy is not None and self.proxy.poll() is not None:
                raise RuntimeError(
                    f"podproxy exited early:\n{self.stderr_path.read_text()[-2000:]}"
                )
            status, _ = await admin_get("127.0.0.1", self.admin_port, "/ready")
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("podproxy did not become ready in time")

    async def _watch(self) -> None:
        """Keep the proxy's membership and the DNS answer current for the view."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = self.dns.address
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
        resolver.lifetime = 1.0
        name = f"{self.workload.service}.{NAMESPACE}.svc.cluster.local."
        while True:
            _, body = await admin_get("127.0.0.1", self.admin_port, "/clusters")
            self.membership = parse_membership(body, self.workload.cluster)
            try:
                ans = await resolver.resolve(name, "A", raise_on_no_answer=False)
                self.dns_answer = sorted(r.address for r in ans.rrset or [])
            except dns.resolver.NXDOMAIN:
                self.dns_answer = []
            except Exception:
                self.dns_answer = ["?"]
            await asyncio.sleep(0.5)

    # pods -----------------------------------------------------------------------------
    async def _add_pod(self) -> Pod | GrpcPod:
        i = self.next_index
        self.next_index += 1
        name = f"{self.workload.pod_prefix}-{i}"
        ip = pod_ip(self.options.base_ip, i)
        pod: Pod | GrpcPod
        if self.options.grpc:
            from podproxy.sandbox.grpc_pods import GrpcPod

            pod = GrpcPod(name, ip, self.options.pod_port)
        else:
            pod = Pod(name, ip, self.options.pod_port)
        await pod.start()
        self.pods[name] = pod
        # Ready (a real pod would pass its readiness probe now): the endpoint enters DNS.
        self.dns.add_pod(name, NAMESPACE, pod.ip, labels=self.workload.labels, ready=True)
        self.joined_dns[name] = time.monotonic()
        return pod

    def live_pods(self) -> list[Pod | GrpcPod]:
        return [p for n, p in self.pods.items() if n not in self.stopping and p.serving]

    def ready_endpoints(self) -> list[str]:
        """`ip:port` of the pods a Service's EndpointSlice lists as ready (what DNS answers)."""
        return [f"{p.ip}:{p.port}" for p in self.live_pods() if p.ready]

    async def scale(self, replicas: int) -> None:
        live = self.live_pods()
        if replicas > len(live):
            for _ in range(replicas - len(live)):
                pod = await self._add_pod()
                self.event(f"scale up: {pod.name} ({pod.ip}) ready, added to DNS")
        else:
            for pod in sorted(live, key=lambda p: _index(p.name))[replicas:]:
                self._terminate(pod)

    def _terminate(self, pod: Pod | GrpcPod) -> None:
        """Kubernetes' way: out of DNS at once (terminating), stop after the grace period."""
        self.stopping.add(pod.name)
        self.dns.set_terminating(pod.name, NAMESPACE)
        self.event(
            f"scale down: {pod.name} terminating, removed from DNS; "
            f"stops in {self.options.grace:g}s"
        )

        async def finish() -> None:
            await asyncio.sleep(self.options.grace)
            await pod.stop(grace=5.0)
            with contextlib.suppress(KeyError):
                self.dns.delete_pod(pod.name, NAMESPACE)
            self.event(f"{pod.name} stopped after its grace period")

        self._spawn(finish())

    async def kill(self, name: str) -> None:
        pod = self._pod(name)
        await pod.stop(grace=0.0)
        self.stopping.add(name)
        self.event(f"killed {name}: stopped at once, still in DNS until marked unready")

        async def notice() -> None:
            await asyncio.sleep(1.0)  # the kubelet notices on its next readiness probe
            with contextlib.suppress(KeyError):
                self.dns.set_ready(name, NAMESPACE, False)
            self.event(f"{name} marked not ready (probe failed): removed from DNS")

        self._spawn(notice())

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self._pod(name)
        pod.ready = ready
        self.dns.set_ready(name, NAMESPACE, ready)
        self.event(f"{name} {'ready: back in DNS' if ready else 'not ready: removed from DNS'}")

    def _pod(self, name: str) -> Pod | GrpcPod:
        pod = self.pods.get(name)
        if pod is None:
            raise ValueError(f"no pod named {name!r} (pods: {', '.join(self.pods) or 'none'})")
        return pod

    async def apply(self, action: Action) -> None:
        try:
            if action.verb == "scale":
                await self.scale(int(action.arg))
            elif action.verb == "kill":
                await self.kill(action.arg)
            else:
                self.set_ready(action.arg, action.verb == "ready")
        except ValueError as exc:
            self.event(f"{action}: {exc}")

    async def run_script(self) -> None:
        for action in self.options.script:
            delay = action.at - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.apply(action)

    # reporting ------------------------------------------------------------------------
    def first_traffic_after(self, name: str) -> float | None:
        """Seconds from the pod entering DNS to its first request through the proxy."""
        joined = self.joined_dns.get(name)
        first = self.load.stats.first_seen.get(name)
        if joined is None or first is None or joined < self.started_at + 0.01:
            return None  # pods present at start joined before the proxy existed
        return max(0.0, first - joined)

    def pod_rows(self) -> list[tuple[str, str, str, int, float]]:
        """(name, ip, state, requests through the proxy, share %) per pod ever started."""
        by_pod = self.load.stats.by_pod
        total = sum(by_pod.values()) or 1
        rows = []
        for name, pod in sorted(self.pods.items(), key=lambda kv: _index(kv[0])):
            if not pod.serving:
                state = "stopped"
            elif name in self.stopping:
                state = "terminating"
            elif not pod.ready:
                state = "not ready"
            else:
                state = "ready"
            n = by_pod.get(name, 0)
            rows.append((name, pod.ip, state, n, 100.0 * n / total))
        return rows


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def parse_membership(clusters_text: str, cluster: str = "httpd") -> list[str]:
    """Host addresses of `cluster` in Envoy's `/clusters` text."""
    hosts = []
    prefix = cluster + "::"
    for line in clusters_text.splitlines():
        if line.startswith(prefix) and line.endswith("::health_flags::healthy"):
            hosts.append(line.split("::")[1])
    return sorted(hosts)


async def admin_get(host: str, port: int, path: str) -> tuple[int, str]:
    """GET an admin path; (0, "") when the admin is not answering."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return 0, ""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(-1), 2.0)
    except (OSError, TimeoutError):
        return 0, ""
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, ""
    return status, body.decode("utf-8", "replace")


def _ports(config_text: str) -> tuple[str, int, int]:
    """Where the config's first listener and its admin listen (the load and view use them)."""
    from podproxy.config.loader import load

    b = load(config_yaml=config_text).bootstrap
    lsa = b.static_resources.listeners[0].address.socket_address
    host = "127.0.0.1" if lsa.address in ("0.0.0.0", "::") else lsa.address
    if b.admin is None:
        raise ValueError("the sandbox needs an admin address in the config")
    return host, lsa.port_value, b.admin.address.socket_address.port_value
