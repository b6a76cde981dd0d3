# ruff: noqa: E501  (the embedded config keeps its type URLs on one line, as Envoy's docs do)
"""What `podproxy sandbox --grpc` runs: the headless Service of the gRPC pods and the config.

The config is the post's shape in v3 with what gRPC needs: the listener's HCM takes HTTP/1.1 or
h2c (`codec_type: AUTO` detects the HTTP/2 preface), and the cluster speaks HTTP/2 to the pods
(`HttpProtocolOptions.explicit_http_config.http2_protocol_options`), so the router balances each
call, not each connection.
"""

from typing import Any, Final

GRPC_NAMESPACE: Final = "mynamespace"
GRPC_SERVICE: Final = "grpc-discovery"
GRPC_LABELS: Final = {"app": "grpc"}
GRPC_POD_PREFIX: Final = "grpc"
GRPC_CLUSTER: Final = "grpc"
GRPC_POD_PORT: Final = 50051

GRPC_SERVICE_MANIFEST: Final[dict[str, Any]] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": GRPC_SERVICE, "namespace": GRPC_NAMESPACE},
    "spec": {
        "clusterIP": "None",
        "selector": GRPC_LABELS,
        "ports": [
            {
                "name": "grpc",
                "port": GRPC_POD_PORT,
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        ],
        "type": "ClusterIP",
    },
}

GRPC_V3_YAML: Final = """\
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address:
        address: 127.0.0.1
        port_value: 10000
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_grpc
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: grpc_service
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                route:
                  cluster: grpc
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: grpc
    connect_timeout: 0.25s
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: grpc-discovery
                port_value: 50051
admin:
  address:
    socket_address:
      address: 127.0.0.1
      port_value: 9901
"""
