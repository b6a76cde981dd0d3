"""What `podproxy sandbox` shows: a live view (rich) with keys, and the closing summary.

In gRPC mode the pods table also has the calls of the plain Service beside podproxy's, and a
line says how many connections each side used (one channel through podproxy; one pinned
connection at a time through the Service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections import Counter
from collections.abc import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from podproxy.sandbox.scenario import Scenario

KEYS = "[+] scale up  [-] scale down  [k] kill newest  [u] unready newest  [r] all ready  [q] quit"


def pods_table(
    sc: Scenario, title: str = "pods", *, first_request: bool = False, live: bool = False
) -> Table:
    t = Table(title=title, expand=False)
    grpc = sc.grpc_load
    counted = "requests" if grpc is None else "calls via podproxy"
    for col in ("pod", "IP", "state", counted, "share"):
        t.add_column(col, justify="right" if col in (counted, "share") else "left")
    if live:
        t.add_column("req/s now" if grpc is None else "calls/s now", justify="right")
    if grpc is not None:
        t.add_column("via plain Service", justify="right")
        t.add_column("share", justify="right")
    service_total = 1 if grpc is None else sum(grpc.service.by_pod.values()) or 1
    if first_request:
        t.add_column("first request after joining DNS", justify="right")
    member = set(sc.membership)
    for name, ip, state, n, share in sc.pod_rows():
        in_proxy = f"{ip}:{sc.options.pod_port}" in member
        style = {"ready": "green", "terminating": "yellow", "not ready": "magenta"}.get(
            state, "dim"
        )
        cells: list[str | Text] = [
            name,
            ip + (" *" if in_proxy else ""),
            Text(state, style=style),
            str(n),
            f"{share:5.1f}%",
        ]
        if live:
            cells.append(f"{sc.load.stats.pod_rate(name):6.1f}")
        if grpc is not None:
            m = grpc.service.by_pod.get(name, 0)
            cells += [str(m), f"{100.0 * m / service_total:5.1f}%"]
        if first_request:
            took = sc.first_traffic_after(name)
            cells.append("-" if took is None else f"{took:.2f}s")
        t.add_row(*cells)
    return t


def connections_line(sc: Scenario) -> Text | None:
    """gRPC mode: the connections behind each side of the comparison."""
    grpc = sc.grpc_load
    if grpc is None:
        return None
    sv = grpc.service
    pinned = grpc.pinned.target if grpc.pinned is not None else None
    pod = next((p.name for p in sc.pods.values() if f"{p.ip}:{p.port}" == pinned), None)
    return Text.assemble(
        f"podproxy: 1 gRPC channel, {grpc.proxy_connections} HTTP/2 connection(s), "
        "calls balanced per request  |  plain Service: ",
        f"{grpc.pinned.connections if grpc.pinned else 0} connection(s) so far, now pinned to "
        + (f"{pod} ({pinned})" if pod else "nothing")
        + f", ok={sv.ok} ",
        (f"errors={sv.errors}", "red" if sv.errors else "green"),
    )


def render(sc: Scenario) -> Group:
    st = sc.load.stats
    grpc = sc.grpc_load is not None
    head = Text.assemble(
        ("podproxy sandbox" + (" --grpc" if grpc else ""), "bold"),
        f"  t={sc.elapsed():5.1f}s  {'calls' if grpc else 'requests'}/s={st.rate():6.1f}  "
        f"ok={st.ok}  ",
        (f"errors={st.errors}", "red" if st.errors else "green"),
    )
    dns_line = Text(
        f"DNS  {sc.workload.service}.mynamespace.svc.cluster.local → "
        + (" ".join(sc.dns_answer) if sc.dns_answer else "NXDOMAIN")
    )
    proxy_line = Text(
        f"proxy /clusters {sc.workload.cluster} → " + (" ".join(sc.membership) or "(no hosts)")
    )
    events = Text("\n".join(f"{e.at:6.1f}s  {e.text}" for e in sc.events[-8:]))
    conns = connections_line(sc)
    return Group(
        head,
        dns_line,
        proxy_line,
        *([conns] if conns is not None else []),
        pods_table(sc, "pods  (* = in the proxy's host set)", live=True),
        Panel(events, title="events"),
        Text(KEYS, style="dim"),
    )


def summary(sc: Scenario) -> Table:
    """The closing table; taken before teardown, so states are those at the end of the run."""
    st = sc.load.stats
    t = pods_table(sc, "summary  (* = in the proxy's host set at the end)", first_request=True)
    t.caption = f"{st.sent} requests in {sc.elapsed():.1f}s, {st.ok} ok, {st.errors} errors" + (
        f" ({', '.join(f'{k}: {v}' for k, v in st.error_reasons.items())})" if st.errors else ""
    )
    grpc = sc.grpc_load
    if grpc is not None:
        sv = grpc.service
        t.caption = (
            f"through podproxy: {st.sent} calls on 1 channel "
            f"({grpc.proxy_connections} HTTP/2 connection(s)), {st.ok} ok, {st.errors} errors"
            + _reasons(st.error_reasons)
            + f"\nthrough a plain Service: {sv.sent} calls on "
            f"{grpc.pinned.connections if grpc.pinned else 0} connection(s), "
            f"{sv.ok} ok, {sv.errors} errors" + _reasons(sv.error_reasons)
        )
    return t


def _reasons(reasons: Counter[str]) -> str:
    return f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())})" if reasons else ""


def events_table(sc: Scenario) -> Table:
    t = Table(title="events")
    t.add_column("t", justify="right")
    t.add_column("what")
    for e in sc.events:
        t.add_row(f"{e.at:.1f}s", e.text)
    return t


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


async def interactive(sc: Scenario, console: Console, stop: asyncio.Event) -> None:
    """The live view, with single-key commands read from the terminal."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(fd, lambda: keys.put_nowait(os.read(fd, 1).decode(errors="ignore")))
    try:
        with cbreak(fd), Live(render(sc), console=console, refresh_per_second=4) as live:
            while not stop.is_set():
                try:
                    key = await asyncio.wait_for(keys.get(), 0.25)
                except TimeoutError:
                    key = ""
                await handle_key(sc, key, stop)
                live.update(render(sc))
    finally:
        loop.remove_reader(fd)


async def handle_key(sc: Scenario, key: str, stop: asyncio.Event) -> None:
    live = sorted(sc.live_pods(), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if key == "q":
        stop.set()
    elif key == "+":
        await sc.scale(len(live) + 1)
    elif key == "-" and live:
        await sc.scale(len(live) - 1)
    elif key == "k" and live:
        await sc.kill(live[-1].name)
    elif key == "u":
        ready = [p for p in live if p.ready]
        if ready:
            sc.set_ready(ready[-1].name, False)
    elif key == "r":
        for p in live:
            if not p.ready:
                sc.set_ready(p.name, True)
