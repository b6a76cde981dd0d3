"""What every HTTP filter's factory is built with: the HCM's stats scope, runtime and random.

`Runtime` is the seam to the layered runtime: a filter asks it whether a fraction is on
(`feature_enabled`) or for an integer override, with the configured value as the default.
`StaticRuntime` answers with the defaults; `LiveRuntime` reads the server's layered runtime.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import podproxy.runtime
from podproxy.stats import Scope


class Runtime(Protocol):
    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool: ...
    def get_integer(self, key: str, default: int | None) -> int | None: ...


class StaticRuntime:
    """No runtime overrides: every key has its configured default."""

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return random_value % denominator < numerator

    def get_integer(self, key: str, default: int | None) -> int | None:
        return default


class LiveRuntime:
    """The server's layered runtime as filters read it: its current snapshot at each call
    (a `/runtime_modify` swaps the snapshot whole)."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: podproxy.runtime.Runtime) -> None:
        self.runtime = runtime

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        return self.runtime.snapshot.feature_enabled(key, numerator, denominator, random_value)

    def get_integer(self, key: str, default: int | None) -> int | None:
        value = self.runtime.snapshot.get_integer(key, -1)  # runtime integers are unsigned
        return default if value < 0 else value


def _random64() -> int:
    return random.getrandbits(64)


@dataclass(slots=True)
class FilterContext:
    """Built once per HCM; `stats` is its `http.<stat_prefix>.` scope."""

    stats: Scope
    runtime: Runtime = field(default_factory=StaticRuntime)
    random: Callable[[], int] = _random64
