"""Bootstrap configs the tests build: one listener with a catch-all route, the clusters, admin.

One place for the YAML shape, so tests differ only in what they are about (ports, endpoints,
cluster type, the route's timeout, the admin access log).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from podproxy.config.schema import HCM_TYPE, ROUTER_TYPE


def endpoint_lines(endpoints: Iterable[tuple[str, int]]) -> str:
    return "".join(
        "        - endpoint:\n"
        f"            address: {{socket_address: {{address: {host}, port_value: {port}}}}}\n"
        for host, port in endpoints
    )


def bootstrap_yaml(
    listener_port: int,
    admin_port: int,
    endpoints: Iterable[tuple[str, int]],
    *,
    cluster: str = "backend",
    cluster_type: str = "STATIC",
    cluster_extra: str = "",
    route_timeout: str | None = None,
    access_log: Path | None = None,
) -> str:
    """The post's shape in v3: listener on 127.0.0.1, route "/" → `cluster`, admin."""
    timeout = f", timeout: {route_timeout}" if route_timeout else ""
    log_line = f"  access_log_path: {access_log}\n" if access_log else ""
    return f"""\
static_resources:
  listeners:
  - name: listener_0
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}{timeout}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER_TYPE}}}
  clusters:
  - name: {cluster}
    connect_timeout: 0.25s
    type: {cluster_type}
{cluster_extra}    load_assignment:
      cluster_name: {cluster}
      endpoints:
      - lb_endpoints:
{endpoint_lines(endpoints)}admin:
{log_line}  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
"""
