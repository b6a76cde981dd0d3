"""One description of the benchmark topology, rendered as each system's config.

`Topology` says where the backends and each proxy listen; every renderer below turns the same
description into one system's native config (nginx backends, podproxy/Envoy bootstrap YAML,
nginx as a proxy, HAProxy), so the proxies stay equivalent: one listener, one catch-all route,
round robin over the same three backends, upstream keep-alive, one worker, no access log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The backends' bodies: a 13-byte "hello" (as the issue's numbers), 16 KiB and 1 MiB files.
SMALL_BODY = "hello world!\n"
BODY_FILES = {"16k": 16 * 1024, "1m": 1024 * 1024}
# Largest upload any scenario sends (the 1 MiB upload), with room for the head.
MAX_BODY = 2 * 1024 * 1024
# Upstream keep-alive connections nginx keeps idle per worker (Envoy/podproxy/HAProxy pool
# without a fixed cap; 256 covers the 256-connection scenario).
NGINX_UPSTREAM_KEEPALIVE = 256


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CARES_TYPE = (
    "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
)


@dataclass(frozen=True)
class Topology:
    backends: tuple[tuple[str, int], ...]
    listen_host: str = "127.0.0.1"
    # system name -> (listener port, admin port or 0)
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)


def write_body_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in BODY_FILES.items():
        (root / name).write_bytes(b"x" * size)


def nginx_backend_conf(tmp: Path, addr: tuple[str, int], docroot: Path, nofile: int) -> str:
    """One backend: `/` answers 13 bytes, `/16k` and `/1m` serve files, `/upload` takes 2 MiB."""
    host, port = addr
    sink = tmp / f"sink-{host}.sock"
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-{host}.pid;
error_log {tmp}/nginx-{host}.err warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {tmp}/cbt-{host};
  proxy_temp_path {tmp}/pt-{host};
  fastcgi_temp_path {tmp}/ft-{host};
  uwsgi_temp_path {tmp}/ut-{host};
  scgi_temp_path {tmp}/st-{host};
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{
    listen {host}:{port} backlog=4096;
    location = / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
    location = /16k {{ alias {docroot}/16k; }}
    location = /1m {{ alias {docroot}/1m; }}
    location = /upload {{
      # Read the whole body before answering (an early answer would cut the upload short
      # at the proxy): proxy_pass buffers it, then asks the sink below, without the body.
      client_max_body_size {MAX_BODY};
      client_body_buffer_size {MAX_BODY};
      proxy_pass http://sink;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  upstream sink {{
    server unix:{sink};
    keepalive 16;
  }}
  server {{
    listen unix:{sink};
    location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
  }}
}}
"""


def envoy_yaml(topo: Topology, system: str) -> str:
    """v3 bootstrap that both real Envoy and podproxy run: STATIC cluster, round robin."""
    port, admin = topo.ports[system]
    endpoints = "".join(
        f"""
        - endpoint:
            address:
              socket_address: {{address: {h}, port_value: {p}}}"""
        for h, p in topo.backends
    )
    return f"""static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: {{protocol: TCP, address: {topo.listen_host}, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backends
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backends}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER_TYPE}
  clusters:
  - name: backends
    connect_timeout: 1s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:{endpoints}
admin:
  address:
    socket_address: {{protocol: TCP, address: 127.0.0.1, port_value: {admin}}}
"""


def nginx_proxy_conf(topo: Topology, tmp: Path, nofile: int) -> str:
    port, _ = topo.ports["nginx"]
    servers = "\n".join(f"    server {h}:{p};" for h, p in topo.backends)
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/nginx-proxy.err warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/cbt-proxy;
  proxy_temp_path {tmp}/pt-proxy;
  fastcgi_temp_path {tmp}/ft-proxy;
  uwsgi_temp_path {tmp}/ut-proxy;
  scgi_temp_path {tmp}/st-proxy;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream backends {{
{servers}
    keepalive {NGINX_UPSTREAM_KEEPALIVE};
    keepalive_requests 1000000;
  }}
  server {{
    listen {topo.listen_host}:{port} backlog=4096;
    client_max_body_size {MAX_BODY};
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
    }}
  }}
}}
"""


def haproxy_cfg(topo: Topology, nofile: int) -> str:
    port, _ = topo.ports["haproxy"]
    servers = "\n".join(f"  server b{i} {h}:{p}" for i, (h, p) in enumerate(topo.backends, start=1))
    return f"""global
  nbthread 1
  # HAProxy wants two fds per connection plus spares and refuses to start without them.
  maxconn {max(1000, (nofile - 200) // 2)}
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend proxy
  bind {topo.listen_host}:{port}
  default_backend backends
backend backends
  balance roundrobin
{servers}
"""
