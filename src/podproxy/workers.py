"""`--concurrency N`: N worker processes serve the data path; the main process runs the rest.

Theory of operation. The main process loads the config, binds the admin listener, runs discovery
(STATIC, STRICT_DNS, LOGICAL_DNS) and never serves proxied traffic. Workers are started by
re-executing this interpreter (`python -m podproxy ... --worker FD:ID:PPID`) with one end of a
socketpair inherited as FD: a fresh process has no event loop, thread or DNS state copied from
the main (forking a running uvloop process is not safe), and restarting a dead worker later is
the same code path as starting it. Each worker loads the same config, builds the same clusters
with `PushedDiscovery` (no discovery of its own) and the same listeners, and binds them with
SO_REUSEPORT, so the kernel spreads new connections over the workers.

The channel carries length-prefixed JSON (`encode`/`Channel`) of plain lists and dicts:
- main → worker: `hosts` (per cluster, rows of address, port, hostname, weight, priority, health
  flags; sent on every member update of the main's `PrioritySet`), `runtime` (the main's
  runtime snapshot as layers of raw values, numbered; sent before `start` and after every
  load, e.g. a `/runtime_modify`), `healthcheck` (the admin's `/healthcheck/fail|ok` state;
  sent before `start` when failed, and on every change), `start` (all clusters are initialized:
  bind the listeners on these ports), `snap` (send stats now), `reopen` (reopen the access-log
  files: the workers own the HCM loggers), `drain`.
- worker → main: `listening`, `stats` (a snapshot), `error` (could not start),
  `runtime_applied` (the number and digest of the runtime snapshot now in use).
Workers apply host rows with `priority_set.update_hosts()`, so round robin, draining of removed
hosts and pools work in each worker as in one process. `/ready` is LIVE once every worker is
listening.

Stats. Each worker sends a snapshot (`take_snapshot`) every `STATS_INTERVAL` seconds, on
request, and once more as it exits; the main keeps the latest per worker and `StatsMerger`
writes sums into its own store and hosts, which admin renders as it always has:
- summed over workers: every counter and gauge and every histogram's bins, count and sum, and
  the per-host `/clusters` stats, except the main-owned ones below;
- the main's own (never sent by workers): `server.*`, `cluster_manager.*`, `dns.*`,
  `http.admin.*`, `listener.admin.*`, `runtime.*`, and per cluster `membership_*`, `update_*` and
  `max_host_weight`, which discovery in the main maintains;
- added, as Envoy names them: `listener.<address>.worker_<id>.downstream_cx_total|active`.
A dead worker's counters and histograms are kept (it served those requests) and its gauges
dropped; a killed worker loses what it counted since its last snapshot (at most 1 s). The main's
`/reset_counters` is honoured by a per-counter baseline. Staleness: at most `STATS_INTERVAL`
(1 s); `/stats`, `/stats/prometheus` and `/clusters` first ask every worker for a fresh snapshot
and wait up to `REFRESH_TIMEOUT` for the answers.

Lifecycle: SIGTERM/SIGINT or /quitquitquit make the main send `drain`; workers stop accepting,
finish in-flight requests up to `--drain-time-s`, send final stats and exit 0; the main exits
once all have. A worker that exits otherwise is logged and restarted, at once for the first
`RESTART_BURST` restarts in `RESTART_WINDOW` seconds and then after a doubling delay. Workers die
with the main: `PR_SET_PDEATHSIG` (SIGKILL) on Linux, and the channel's EOF everywhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podproxy import runtime
from podproxy.runtime import (
    Runtime,
    snapshot_digest,
    snapshot_from_wire,
    snapshot_to_wire,
)
from podproxy.stats import Store
from podproxy.upstream.cluster import Cluster
from podproxy.upstream.host import HealthFlag, Host, HostSet, HostStats, MemberUpdateCb

if TYPE_CHECKING:
    from podproxy.server import Server

log = logging.getLogger("podproxy.main")

# Seconds between a worker's stats snapshots: the staleness bound of merged stats.
STATS_INTERVAL = 1.0
# How long an admin stats request waits for fresh snapshots before rendering what it has.
REFRESH_TIMEOUT = 0.5
# A host set of thousands of hosts is a few hundred KiB; anything near this is a bug.
MAX_MESSAGE = 64 * 1024 * 1024
# Restart a crashing worker at once this many times per window, then back off.
RESTART_BURST = 3
RESTART_WINDOW = 10.0
RESTART_MAX_DELAY = 30.0
# After `drain`, how long past --drain-time-s the main waits before SIGKILLing a worker.
DRAIN_GRACE = 5.0

_LEN = 4


# --- wire format ---------------------------------------------------------------------------


def encode(msg: dict[str, Any]) -> bytes:
    """One message: 4-byte big-endian length, then compact JSON."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    return len(body).to_bytes(_LEN, "big") + body


class ChannelError(Exception):
    """The peer sent something that is not a message."""


def decode(buf: bytes | bytearray) -> tuple[list[dict[str, Any]], bytes]:
    """Every whole message in `buf`, and the incomplete rest (sans-I/O counterpart of `recv`)."""
    out: list[dict[str, Any]] = []
    i = 0
    while len(buf) - i >= _LEN:
        n = int.from_bytes(buf[i : i + _LEN], "big")
        if n > MAX_MESSAGE:
            raise ChannelError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
        if len(buf) - i - _LEN < n:
            break
        out.append(_parse(bytes(buf[i + _LEN : i + _LEN + n])))
        i += _LEN + n
    return out, bytes(buf[i:])


def _parse(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body)
    except ValueError as exc:
        raise ChannelError(f"bad message: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ChannelError("a message is an object with a string 't'")
    return msg


class Channel:
    """Messages over one end of a socketpair, on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, msg: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(msg))

    async def recv(self) -> dict[str, Any] | None:
        """The next message, or None at EOF."""
        try:
            head = await self.reader.readexactly(_LEN)
            n = int.from_bytes(head, "big")
            if n > MAX_MESSAGE:
                raise ChannelError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
            body = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return _parse(body)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


# --- host sets -----------------------------------------------------------------------------

HostRow = list[Any]  # [address, port, hostname, weight, priority, health flags as int]


def host_rows(hosts: Iterable[Host]) -> list[HostRow]:
    return [
        [h.address, h.port, h.hostname, h.weight, h.priority, h.health_flags.value] for h in hosts
    ]


def hosts_from_rows(rows: Sequence[Sequence[Any]]) -> list[Host]:
    hosts = []
    for address, port, hostname, weight, priority, flags in rows:
        hosts.append(
            Host(
                str(address),
                int(port),
                hostname=str(hostname),
                weight=int(weight),
                priority=int(priority),
                health_flags=HealthFlag(int(flags)),
            )
        )
    return hosts


def apply_host_rows(cluster: Cluster, rows: Sequence[Sequence[Any]]) -> None:
    """Make a worker's cluster hold exactly these hosts, as discovery in one process would.

    Kept hosts keep their objects (and pools and stats); a changed weight or health flag is
    applied to them and published. A LOGICAL_DNS host whose address moved keeps its object
    too, as `Host.set_address` does in the main.
    """
    new = hosts_from_rows(rows)
    current = cluster.hosts
    if (
        cluster.info.type_name == "LOGICAL_DNS"
        and len(current) == 1
        and len(new) == 1
        and current[0].key != new[0].key
    ):
        current[0].set_address(new[0].address)
        return
    cluster.priority_set.update_hosts(new)
    wanted = {h.key: h for h in new}
    changed = False
    for h in cluster.hosts:
        n = wanted.get(h.key)
        if n is None or n is h:
            continue
        h.hostname = n.hostname
        h.priority = n.priority
        if h.weight != n.weight or h.health_flags != n.health_flags:
            h.weight = n.weight
            h.health_flags = n.health_flags
            changed = True
    if changed:
        cluster.priority_set.refresh_health()


# --- stats ---------------------------------------------------------------------------------

_MAIN_OWNED = re.compile(
    r"^(?:server\.|cluster_manager\.|dns\.|http\.admin\.|listener\.admin\.|runtime\."
    r"|cluster\..+\.(?:membership_\w+|update_\w+|max_host_weight)$)"
)
_LISTENER_STAT = re.compile(r"^listener\.(.+)\.(downstream_cx_total|downstream_cx_active)$")
_HOST_FIELDS: tuple[str, ...] = tuple(sorted(HostStats.__slots__))
_HOST_COUNTER_IDX = tuple(i for i, f in enumerate(_HOST_FIELDS) if f not in HostStats.GAUGES)


@functools.lru_cache(maxsize=4096)
def main_owned(name: str) -> bool:
    """Whether the main process maintains this stat itself (workers never send it)."""
    return _MAIN_OWNED.match(name) is not None


Snapshot = dict[str, Any]


def empty_snapshot() -> Snapshot:
    return {"c": {}, "g": {}, "h": {}, "hosts": {}, "cx": 0}


def take_snapshot(store: Store, clusters: Iterable[Cluster], connections: int) -> Snapshot:
    """A worker's stats as plain dicts: used counters, gauges and histograms, per-host stats."""
    counters = {n: c.value for n, c in store.counters.items() if c.value and not main_owned(n)}
    gauges = {n: g.value for n, g in store.gauges.items() if g.is_used and not main_owned(n)}
    hists = {
        n: [h.count, h.sum, [[k, v] for k, v in h.bins.items()]]
        for n, h in store.histograms.items()
        if h.count and not main_owned(n)
    }
    hosts = {
        c.info.name: {h.key: [getattr(h.stats, f) for f in _HOST_FIELDS] for h in c.hosts}
        for c in clusters
    }
    return {"c": counters, "g": gauges, "h": hists, "hosts": hosts, "cx": connections}


def _add_counts(into: dict[str, int], src: dict[str, int]) -> None:
    for n, v in src.items():
        into[n] = into.get(n, 0) + v


def _add_hists(into: dict[str, list[Any]], src: dict[str, list[Any]]) -> None:
    for n, (count, total, bins) in src.items():
        cur = into.get(n)
        if cur is None:
            cur = into[n] = [0, 0.0, {}]
        cur[0] += count
        cur[1] += total
        cb: dict[int, int] = cur[2]
        for k, v in bins:
            cb[int(k)] = cb.get(int(k), 0) + v


class StatsMerger:
    """The latest snapshot of each worker, summed into the main's store and hosts.

    `current` holds live workers' snapshots; `retired` the counters, histograms and per-host
    counters of worker processes that exited, per worker id, so totals never go backwards.
    """

    def __init__(self) -> None:
        self.current: dict[int, Snapshot] = {}
        self.retired: dict[int, Snapshot] = {}
        self._written: dict[str, int] = {}
        self._baseline: dict[str, int] = {}
        self._gauges: set[str] = set()

    def update(self, worker_id: int, snap: Snapshot) -> None:
        self.current[worker_id] = snap

    def retire(self, worker_id: int) -> None:
        """A worker process exited: keep what it counted, forget its gauges."""
        snap = self.current.pop(worker_id, None)
        if snap is None:
            return
        r = self.retired.setdefault(worker_id, empty_snapshot())
        _add_counts(r["c"], snap["c"])
        rh: dict[str, list[Any]] = {}
        _add_hists(rh, r["h"])
        _add_hists(rh, snap["h"])
        r["h"] = {n: [c, s, list(b.items())] for n, (c, s, b) in rh.items()}
        for cname, hosts in snap["hosts"].items():
            rc = r["hosts"].setdefault(cname, {})
            for key, vals in hosts.items():
                cur = rc.setdefault(key, [0] * len(_HOST_FIELDS))
                for i in _HOST_COUNTER_IDX:
                    cur[i] += vals[i]

    @property
    def connections(self) -> int:
        return sum(int(s.get("cx", 0)) for s in self.current.values())

    def totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, list[Any]]]:
        """(counters, gauges, histograms [count, sum, {bin: n}]) summed over workers."""
        counters: dict[str, int] = {}
        gauges: dict[str, int] = {}
        hists: dict[str, list[Any]] = {}
        for wid in sorted(set(self.current) | set(self.retired)):
            mine: dict[str, int] = {}
            for snap in (self.retired.get(wid), self.current.get(wid)):
                if snap is not None:
                    _add_counts(mine, snap["c"])
                    _add_hists(hists, snap["h"])
            _add_counts(counters, mine)
            live = self.current.get(wid)
            _add_counts(gauges, live["g"] if live else {})
            # Envoy's per-worker listener stats.
            for name, v in (*mine.items(), *(live["g"].items() if live else ())):
                m = _LISTENER_STAT.match(name)
                if m is not None and ".worker_" not in name:
                    target = counters if m.group(2) == "downstream_cx_total" else gauges
                    target[f"listener.{m.group(1)}.worker_{wid}.{m.group(2)}"] = v
        return counters, gauges, hists

    def host_totals(self) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for snap in (*self.retired.values(), *self.current.values()):
            for cname, hosts in snap["hosts"].items():
                oc = out.setdefault(cname, {})
                for key, vals in hosts.items():
                    cur = oc.setdefault(key, [0] * len(_HOST_FIELDS))
                    for i, v in enumerate(vals):
                        cur[i] += v
        return out

    def apply(self, store: Store, clusters: Iterable[Cluster]) -> None:
        """Write the sums into `store` and into the hosts `/clusters` prints."""
        counters, gauges, hists = self.totals()
        for name, total in counters.items():
            c = store.counter(name)
            written = self._written.get(name)
            if written is not None and c.value != written:
                # Someone (/reset_counters) changed it since we wrote it.
                self._baseline[name] = self._baseline.get(name, 0) + written - c.value
            c.value = total - self._baseline.get(name, 0)
            self._written[name] = c.value
        self._gauges.update(gauges)
        for name in self._gauges:
            if name in gauges:
                store.gauge(name).set(gauges[name])
            else:
                store.gauge(name).value = 0
        for name, (count, total, bins) in hists.items():
            h = store.histogram(name)
            h.count, h.sum, h.bins = count, total, bins
        per_host = self.host_totals()
        for cluster in clusters:
            by_key = per_host.get(cluster.info.name, {})
            for host in cluster.hosts:
                vals = by_key.get(host.key)
                for i, f in enumerate(_HOST_FIELDS):
                    setattr(host.stats, f, vals[i] if vals is not None else 0)


# --- the worker side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """`--worker FD:ID:PPID`: the inherited channel fd, this worker's id, the main's pid."""

    fd: int
    worker_id: int
    parent_pid: int

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        fd, wid, ppid = (int(p) for p in text.split(":"))
        return cls(fd, wid, ppid)

    def __str__(self) -> str:
        return f"{self.fd}:{self.worker_id}:{self.parent_pid}"


_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: have the kernel send `sig` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


async def run_worker(server: Server, spec: WorkerSpec) -> int:
    """A worker's life: wait for hosts and `start`, serve, drain on `drain` or a signal."""
    set_parent_death_signal()
    if os.getppid() != spec.parent_pid:
        return 0  # the main died before we could ask to die with it
    loop = asyncio.get_running_loop()
    channel = await Channel.open(socket.socket(fileno=spec.fd))
    clusters = server.cluster_manager.clusters
    stop = asyncio.Event()
    # Ctrl-C reaches the whole process group: the main coordinates the drain, so workers ignore
    # SIGINT; a SIGTERM sent to one worker drains just that one (and the main restarts it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # SIGUSR1 (logrotate's, if it reaches a worker) reopens its access logs, not kills it.
    loop.add_signal_handler(signal.SIGUSR1, server.access_log_manager.reopen)
    listening = False

    def snapshot(seq: int | None = None) -> dict[str, Any]:
        conns = sum(len(lst.tracker.connections) for lst in server.http_listeners)
        snap = take_snapshot(server.store, clusters.values(), conns)
        return {"t": "stats", "seq": seq, "snap": snap}

    async def serve(ports: list[int]) -> None:
        nonlocal listening
        for lst, port in zip(server.http_listeners, ports, strict=True):
            lst.port = port
            await lst.start(reuse_port=True)
        listening = True
        channel.send({"t": "listening", "pid": os.getpid()})

    async def read() -> None:
        while (msg := await channel.recv()) is not None:
            t = msg["t"]
            if t == "hosts":
                for name, rows in msg["clusters"].items():
                    cluster = clusters.get(name)
                    if cluster is not None:
                        apply_host_rows(cluster, rows)
            elif t == "start":
                for c in clusters.values():
                    c.mark_initialized()
                try:
                    await serve(list(msg["ports"]))
                except OSError as exc:
                    channel.send({"t": "error", "msg": f"cannot bind listener: {exc}"})
                    raise
            elif t == "runtime":
                server.runtime.set_snapshot(snapshot_from_wire(msg["layers"]))
                digest = snapshot_digest(server.runtime.snapshot)
                channel.send({"t": "runtime_applied", "version": msg["version"], "digest": digest})
            elif t == "healthcheck":
                server.set_healthcheck_failed(bool(msg["failed"]))
            elif t == "snap":
                channel.send(snapshot(msg.get("seq")))
            elif t == "reopen":
                server.access_log_manager.reopen()
            elif t == "drain":
                stop.set()

    async def tick() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if listening:
                channel.send(snapshot())

    reader = loop.create_task(read())
    ticker = loop.create_task(tick())
    stop_wait = loop.create_task(stop.wait())
    try:
        await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            if reader.exception() is not None:
                return 1
            log.warning("worker %d: the main process is gone; exiting", spec.worker_id)
            return 0
        if listening:
            await server.drain()
        channel.send(snapshot())
        await channel.drain()
        return 0
    finally:
        for task in (reader, ticker, stop_wait):
            task.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGUSR1)
        for lst in server.http_listeners:
            lst.close()
        server.cluster_manager.shutdown()
        channel.close()


# --- the main side -------------------------------------------------------------------------


class WorkerHandle:
    """One worker process as the main sees it."""

    def __init__(self, worker_id: int, popen: subprocess.Popen[bytes], channel: Channel) -> None:
        self.worker_id = worker_id
        self.popen = popen
        self.channel = channel
        self.listening = False
        self.task: asyncio.Task[None] | None = None
        # (version, digest) of the runtime snapshot the worker says it now uses.
        self.runtime_applied: tuple[int, str] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.worker_id} pid={self.pid} listening={self.listening}>"


class Supervisor:
    """Starts, feeds, watches, restarts and drains the workers; merges their stats."""

    def __init__(
        self,
        count: int,
        argv: Sequence[str],
        clusters: dict[str, Cluster],
        store: Store,
        *,
        on_change: Callable[[], None] = lambda: None,
        runtime: Runtime | None = None,
    ) -> None:
        self.count = count
        self.argv = list(argv)
        self.clusters = clusters
        self.store = store
        self.on_change = on_change
        self.merger = StatsMerger()
        self.workers: dict[int, WorkerHandle] = {}
        self.ports: list[int] | None = None  # set by serve(); workers then start at once
        self.draining = False
        self.fatal: asyncio.Future[str] | None = None
        self._restarts: dict[int, collections.deque[float]] = {}
        self._delays: dict[int, float] = {}
        self._pushed: dict[str, list[HostRow]] = {}
        self._seq = 0
        self._waiters: dict[int, tuple[set[int], asyncio.Future[None]]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        for name, cluster in clusters.items():
            cluster.priority_set.add_member_update_cb(self._member_update_cb(name))
        # The admin's /healthcheck/fail state, which every worker follows.
        self.healthcheck_failed = False
        self.runtime = runtime
        # Numbers the runtime snapshots pushed, so a worker's acknowledgement names one.
        self.runtime_version = 0
        if runtime is not None:
            runtime.add_update_cb(self.push_runtime)

    def _member_update_cb(self, name: str) -> MemberUpdateCb:
        def cb(host_set: HostSet, added: Sequence[Host], removed: Sequence[Host]) -> None:
            self.push_hosts(name)

        return cb

    @property
    def all_listening(self) -> bool:
        return len(self.workers) == self.count and all(w.listening for w in self.workers.values())

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values()]

    async def start(self) -> None:
        self.fatal = asyncio.get_running_loop().create_future()
        for i in range(self.count):
            await self._spawn(i)

    async def _spawn(self, worker_id: int) -> None:
        parent, child = socket.socketpair()
        spec = WorkerSpec(child.fileno(), worker_id, os.getpid())
        cmd = [sys.executable, "-m", "podproxy", *self.argv, "--worker", str(spec)]
        try:
            popen = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()
        handle = WorkerHandle(worker_id, popen, await Channel.open(parent))
        self.workers[worker_id] = handle
        log.info("worker %d started (pid %d)", worker_id, popen.pid)
        if self.ports is not None:
            self._feed(handle)
        handle.task = asyncio.get_running_loop().create_task(self._watch(handle))
        self._watchers.add(handle.task)
        handle.task.add_done_callback(self._watchers.discard)

    def _feed(self, w: WorkerHandle) -> None:
        rows = {name: host_rows(c.hosts) for name, c in self.clusters.items()}
        w.channel.send({"t": "hosts", "clusters": rows})
        if self.runtime is not None:
            w.channel.send(self._runtime_message(self.runtime.snapshot))
        if self.healthcheck_failed:
            w.channel.send({"t": "healthcheck", "failed": True})
        w.channel.send({"t": "start", "ports": self.ports})

    def _runtime_message(self, snapshot: runtime.Snapshot) -> dict[str, Any]:
        return {
            "t": "runtime",
            "version": self.runtime_version,
            "layers": snapshot_to_wire(snapshot),
        }

    def push_runtime(self, snapshot: runtime.Snapshot) -> None:
        """A new runtime snapshot in the main (a load, a `/runtime_modify`): every worker
        gets it whole and swaps it in, as Envoy sets each worker's thread-local snapshot."""
        self.runtime_version += 1
        if self.ports is None:
            return  # serve() sends the current one to every worker
        msg = self._runtime_message(snapshot)
        for w in self.workers.values():
            w.channel.send(msg)

    def push_healthcheck(self, failed: bool) -> None:
        """`/healthcheck/fail|ok` in the main: every worker's filters and connections follow
        (Envoy's workers read the one server's flag)."""
        self.healthcheck_failed = failed
        if self.ports is None:
            return  # serve() sends it to every worker
        msg = {"t": "healthcheck", "failed": failed}
        for w in self.workers.values():
            w.channel.send(msg)

    def serve(self, ports: list[int]) -> None:
        """Clusters are warm: give every worker all host sets and let it open its listeners."""
        self.ports = ports
        for name, c in self.clusters.items():
            self._pushed[name] = host_rows(c.hosts)
        for w in self.workers.values():
            self._feed(w)

    def push_hosts(self, name: str) -> None:
        """A cluster's membership (or a host's health or address) changed: tell the workers."""
        if self.ports is None:
            return  # serve() sends everything
        rows = host_rows(self.clusters[name].hosts)
        if self._pushed.get(name) == rows:
            return
        self._pushed[name] = rows
        msg = {"t": "hosts", "clusters": {name: rows}}
        for w in self.workers.values():
            w.channel.send(msg)

    def push_all(self) -> None:
        """Catches changes that publish no member update (a LOGICAL_DNS address move)."""
        for name in self.clusters:
            self.push_hosts(name)

    def reopen_logs(self) -> None:
        """Every worker reopens its access-log files (SIGUSR1, POST /reopen_logs)."""
        for w in self.workers.values():
            w.channel.send({"t": "reopen"})

    async def refresh_stats(self, timeout: float = REFRESH_TIMEOUT) -> None:
        """Ask every listening worker for a snapshot; return when all answered or at timeout."""
        live = {w.worker_id for w in self.workers.values() if w.listening}
        if not live:
            return
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[seq] = (live, fut)
        for wid in live:
            self.workers[wid].channel.send({"t": "snap", "seq": seq})
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            log.debug("stats refresh: %d worker(s) did not answer in time", len(live))
        finally:
            self._waiters.pop(seq, None)

    async def _watch(self, w: WorkerHandle) -> None:
        error: str | None = None
        try:
            while (msg := await w.channel.recv()) is not None:
                t = msg["t"]
                if t == "stats":
                    self.merger.update(w.worker_id, msg["snap"])
                    self.merger.apply(self.store, self.clusters.values())
                    waiter = self._waiters.get(msg.get("seq") or 0)
                    if waiter is not None:
                        waiter[0].discard(w.worker_id)
                        if not waiter[0] and not waiter[1].done():
                            waiter[1].set_result(None)
                elif t == "listening":
                    w.listening = True
                    log.info("worker %d (pid %d) is listening", w.worker_id, w.pid)
                    self.on_change()
                elif t == "runtime_applied":
                    w.runtime_applied = (int(msg["version"]), str(msg["digest"]))
                elif t == "error":
                    error = str(msg.get("msg"))
        except ChannelError as exc:
            log.error("worker %d: %s", w.worker_id, exc)
        w.channel.close()
        rc = await _wait_exit(w.popen, DRAIN_GRACE)
        w.listening = False
        self.merger.retire(w.worker_id)
        self.merger.apply(self.store, self.clusters.values())
        if self.workers.get(w.worker_id) is w:
            del self.workers[w.worker_id]
        for members, fut in self._waiters.values():
            members.discard(w.worker_id)
            if not members and not fut.done():
                fut.set_result(None)
        self.on_change()
        if self.draining:
            log.info("worker %d (pid %d) exited with %s", w.worker_id, w.pid, rc)
            return
        if error is not None and self.fatal is not None and not self.fatal.done():
            self.fatal.set_result(f"worker {w.worker_id}: {error}")
            return
        delay = self._restart_delay(w.worker_id)
        log.error(
            "worker %d (pid %d) exited unexpectedly with %s; restarting in %gs",
            w.worker_id,
            w.pid,
            rc,
            delay,
        )
        if delay:
            await asyncio.sleep(delay)
        if not self.draining:
            await self._spawn(w.worker_id)

    def _restart_delay(self, worker_id: int) -> float:
        now = time.monotonic()
        recent = self._restarts.setdefault(worker_id, collections.deque())
        while recent and now - recent[0] > RESTART_WINDOW:
            recent.popleft()
        recent.append(now)
        if len(recent) <= RESTART_BURST:
            self._delays[worker_id] = 0.0
            return 0.0
        delay = min(RESTART_MAX_DELAY, max(1.0, self._delays.get(worker_id, 0.0) * 2))
        self._delays[worker_id] = delay
        return delay

    async def drain(self, timeout: float) -> None:
        """Tell every worker to drain; wait for all to exit, SIGKILL any still there at timeout."""
        self.draining = True
        for w in self.workers.values():
            w.channel.send({"t": "drain"})
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("%d worker(s) did not exit in time; killing them", len(pending))
                self.kill()
                await asyncio.wait(pending, timeout=DRAIN_GRACE)

    def kill(self) -> None:
        """SIGKILL every worker still running (the last resort, and on the way out)."""
        for w in list(self.workers.values()):
            if w.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.popen.kill()

    def close(self) -> None:
        self.draining = True
        self.kill()
        for task in list(self._watchers):
            task.cancel()  # also those sleeping before a restart
        for w in list(self.workers.values()):
            w.channel.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.popen.wait(1.0)


async def _wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status once the process is gone (it closed its channel, so it is leaving)."""
    deadline = time.monotonic() + timeout
    while (rc := popen.poll()) is None:
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            deadline = time.monotonic() + timeout
        await asyncio.sleep(0.02)
    return rc


def reserve_port(address: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket: fixes the port a `port_value: 0` listener
    gets in every worker, and reports a taken address before any worker starts."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock
