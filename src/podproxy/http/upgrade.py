"""Which HTTP upgrades the connection manager lets through: Envoy's `upgrade_configs`.

Built once from the HCM's `upgrade_configs` (type -> enabled) and asked only for a request that
asks for an upgrade (`RequestHead.upgrade`, which the codec sets), so a plain request never
reaches it. The route's own `upgrade_configs` (compiled onto `Route.upgrades`) win over the
HCM's (Envoy's HttpConnectionManagerConfig::createUpgradeFilterChain): a route that turns a type
off rejects it, a route that turns it on allows it even if the HCM does not list it (checked with
Envoy 1.40), and otherwise the HCM's entry decides. Types match case-insensitively.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from podproxy.http.stream import RequestHead


class UpgradePolicy:
    """The allow rule of one connection manager. `route_of` matches a request's route (the
    router's own table) and returns an object with an `upgrades` mapping (or None)."""

    __slots__ = ("hcm", "route_of")

    def __init__(self, hcm: Mapping[bytes, bool], route_of: Callable[[RequestHead], Any]) -> None:
        self.hcm = {k.lower(): v for k, v in hcm.items()}
        self.route_of = route_of

    def allowed(self, upgrade: bytes, route_upgrades: Mapping[bytes, bool] | None) -> bool:
        """Whether `upgrade` is let through on a route with these `upgrades`."""
        key = upgrade.lower()
        if route_upgrades:
            enabled = route_upgrades.get(key)
            if enabled is not None:
                return enabled
        return self.hcm.get(key, False)

    def verdict(self, head: RequestHead) -> tuple[bool, bool]:
        """For an upgrade request (`head.upgrade` set): whether it is allowed, and whether
        it has a route. Envoy rejects (403) only with a route; without one an allowed or
        not allowed upgrade goes on (to the router's 404), and an allowed one is counted."""
        assert head.upgrade is not None
        route = self.route_of(head)
        upgrades = getattr(route, "upgrades", None) if route is not None else None
        return self.allowed(head.upgrade, upgrades), route is not None

    def __repr__(self) -> str:
        return f"<UpgradePolicy {self.hcm!r}>"


def upgrade_policy(hcm: Any, routes: Any) -> UpgradePolicy | None:
    """The policy of a typed HttpConnectionManager whose routes compiled to `routes` (a
    `router.routes.RouteTable`); None when neither the HCM nor any route has upgrade_configs,
    so that every upgrade request gets Envoy's answer without them."""
    configured = bool(hcm.upgrade_configs) or any(
        r.route is not None and r.route.upgrade_configs
        for vh in hcm.route_config.virtual_hosts
        for r in vh.routes
    )
    if not configured:
        return None

    def route_of(head: RequestHead) -> Any:
        if head.host is None:
            return None
        return routes.route(head.host, head.target, head.headers)

    hcm_map = {u.upgrade_type.lower().encode(): u.enabled for u in hcm.upgrade_configs}
    return UpgradePolicy(hcm_map, route_of)
