"""podproxy: an Envoy-compatible HTTP/1.1 load balancer that follows Kubernetes pods via DNS."""

__version__ = "0.1.0"
