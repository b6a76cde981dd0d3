"""Load-balancing policies: `choose_host(ctx)` over the current host set; pure, random injected.

Semantics follow Envoy (reference/envoy.md §3): picks are among healthy hosts, falling back to
all hosts below the 50% panic threshold; ROUND_ROBIN starts at a random index and keeps the
index across host-set changes (the next pick is `index % size`).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Protocol

from podproxy.upstream.host import Host, HostSet

RandomFn = Callable[[], int]

# common_lb_config.healthy_panic_threshold default: below 50% healthy, use every host.
DEFAULT_PANIC_THRESHOLD = 50.0


def default_random() -> int:
    return _random.getrandbits(63)


class LoadBalancer(Protocol):
    def choose_host(self, ctx: object = None) -> Host | None: ...

    def on_host_set(
        self, host_set: HostSet, added: Sequence[Host], removed: Sequence[Host]
    ) -> None: ...


def usable_hosts(
    host_set: HostSet, panic_threshold: float = DEFAULT_PANIC_THRESHOLD
) -> tuple[Host, ...]:
    """The hosts picks are made from: healthy ones, or all of them in panic mode."""
    total = len(host_set.hosts)
    healthy = host_set.healthy_hosts
    if total and panic_threshold > 0 and len(healthy) * 100.0 < panic_threshold * total:
        return host_set.hosts
    return healthy


class RoundRobinLoadBalancer:
    """Envoy's unweighted round robin: `hosts[index++ % len(hosts)]`, index seeded randomly."""

    __slots__ = ("_hosts", "_index", "panic_threshold")

    def __init__(
        self, random: RandomFn = default_random, panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    ) -> None:
        self._index = random()
        self._hosts: tuple[Host, ...] = ()
        self.panic_threshold = panic_threshold

    def on_host_set(
        self, host_set: HostSet, added: Sequence[Host] = (), removed: Sequence[Host] = ()
    ) -> None:
        self._hosts = usable_hosts(host_set, self.panic_threshold)

    def choose_host(self, ctx: object = None) -> Host | None:
        hosts = self._hosts
        if not hosts:
            return None
        i = self._index
        self._index = i + 1
        return hosts[i % len(hosts)]


class RandomLoadBalancer:
    """Uniform `random() % n` over the usable hosts."""

    __slots__ = ("_hosts", "_random", "panic_threshold")

    def __init__(
        self, random: RandomFn = default_random, panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    ) -> None:
        self._random = random
        self._hosts: tuple[Host, ...] = ()
        self.panic_threshold = panic_threshold

    def on_host_set(
        self, host_set: HostSet, added: Sequence[Host] = (), removed: Sequence[Host] = ()
    ) -> None:
        self._hosts = usable_hosts(host_set, self.panic_threshold)

    def choose_host(self, ctx: object = None) -> Host | None:
        hosts = self._hosts
        if not hosts:
            return None
        return hosts[self._random() % len(hosts)]


class LeastRequestLoadBalancer:
    """Power of N choices (default 2): N draws with replacement, fewest active requests wins;
    ties keep the earlier draw (Envoy's least_request_lb.cc, equal-weight path)."""

    __slots__ = ("_hosts", "_random", "choice_count", "panic_threshold")

    def __init__(
        self,
        random: RandomFn = default_random,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        choice_count: int = 2,
    ) -> None:
        self._random = random
        self._hosts: tuple[Host, ...] = ()
        self.panic_threshold = panic_threshold
        self.choice_count = choice_count

    def on_host_set(
        self, host_set: HostSet, added: Sequence[Host] = (), removed: Sequence[Host] = ()
    ) -> None:
        self._hosts = usable_hosts(host_set, self.panic_threshold)

    def choose_host(self, ctx: object = None) -> Host | None:
        hosts = self._hosts
        n = len(hosts)
        if not n:
            return None
        best = hosts[self._random() % n]
        for _ in range(self.choice_count - 1):
            cand = hosts[self._random() % n]
            if cand.stats.rq_active < best.stats.rq_active:
                best = cand
        return best


LB_POLICIES: dict[str, Callable[..., LoadBalancer]] = {
    "ROUND_ROBIN": RoundRobinLoadBalancer,
    "RANDOM": RandomLoadBalancer,
    "LEAST_REQUEST": LeastRequestLoadBalancer,
}
