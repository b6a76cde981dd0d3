"""The allow rule of `upgrade_configs` (Envoy's createUpgradeFilterChain; the rows marked
"1.40" were checked against Envoy 1.40 side by side in test_envoy_websocket.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from podproxy.http.stream import RequestHead
from podproxy.http.upgrade import UpgradePolicy


@dataclass
class _Route:
    upgrades: dict[bytes, bool] | None


def head(upgrade: bytes, host: bytes | None = b"app") -> RequestHead:
    return RequestHead(b"GET", b"/ws", "1.1", [], True, host, upgrade)


@pytest.mark.parametrize(
    ("hcm", "route", "upgrade", "allowed"),
    [
        ({b"websocket": True}, None, b"websocket", True),
        ({b"websocket": True}, None, b"WebSocket", True),  # case-insensitive
        ({b"WebSocket": True}, None, b"websocket", True),
        ({b"websocket": True}, None, b"foo", False),
        ({b"websocket": False}, None, b"websocket", False),
        ({b"websocket": True}, {b"websocket": False}, b"websocket", False),  # route off wins
        ({b"websocket": False}, {b"websocket": True}, b"websocket", True),  # route on wins
        ({}, {b"websocket": True}, b"WEBSOCKET", True),  # 1.40: the HCM need not list it
        ({}, {b"foo": True}, b"websocket", False),
        ({b"websocket": True}, {b"foo": False}, b"websocket", True),  # other types: HCM's
    ],
)
def test_allow_rule(
    hcm: dict[bytes, bool], route: dict[bytes, bool] | None, upgrade: bytes, allowed: bool
) -> None:
    policy = UpgradePolicy(hcm, lambda h: _Route(route))
    assert policy.allowed(upgrade, route) is allowed
    assert policy.verdict(head(upgrade)) == (allowed, True)


def test_without_a_route_the_hcm_decides_and_nothing_is_rejected() -> None:
    policy = UpgradePolicy({b"websocket": True}, lambda h: None)
    assert policy.verdict(head(b"websocket")) == (True, False)
    assert policy.verdict(head(b"foo")) == (False, False)
