"""What `podproxy sandbox` shows: a live view (rich) with keys, and the closing summary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
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
    for col in ("pod", "IP", "state", "requests", "share"):
        t.add_column(col, justify="right" if col in ("requests", "share") else "left")
    if live:
        t.add_column("req/s now", justify="right")
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
        if first_request:
            took = sc.first_traffic_after(name)
            cells.append("-" if took is None else f"{took:.2f}s")
        t.add_row(*cells)
    return t


def render(sc: Scenario) -> Group:
    st = sc.load.stats
    head = Text.assemble(
        ("podproxy sandbox", "bold"),
        f"  t={sc.elapsed():5.1f}s  requests/s={st.rate():6.1f}  ok={st.ok}  ",
        (f"errors={st.errors}", "red" if st.errors else "green"),
    )
    dns_line = Text(
        "DNS  httpd-discovery.mynamespace.svc.cluster.local → "
        + (" ".join(sc.dns_answer) if sc.dns_answer else "NXDOMAIN")
    )
    proxy_line = Text("proxy /clusters httpd → " + (" ".join(sc.membership) or "(no hosts)"))
    events = Text("\n".join(f"{e.at:6.1f}s  {e.text}" for e in sc.events[-8:]))
    return Group(
        head,
        dns_line,
        proxy_line,
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
    return t


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
