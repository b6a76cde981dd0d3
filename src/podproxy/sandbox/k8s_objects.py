"""The part of the Kubernetes object model that cluster DNS needs, and the slice controller.

Services, Pods, Namespaces and EndpointSlices are frozen dataclasses parsed from ordinary YAML
manifests; `ClusterState` keeps them by (namespace, name) and derives, for every Service with a
selector, the EndpointSlices the EndpointSlice controller would write (kubernetes-dns.md §1.4,
§3.2). Invariant: DNS only ever reads slices, never Pods, exactly as CoreDNS does.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeAlias

import yaml

from podproxy.errors import ConfigError

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"  # slice → Service membership (§3.2)
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})  # left out of slices (§1.4)
IPV4: Final = "IPv4"
IPV6: Final = "IPv6"
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")


class ManifestError(ConfigError):
    """A manifest that cannot be used; names the file, the document and the field."""

    def __init__(self, where: str, fld: str, msg: str) -> None:
        super().__init__(f"{where}: {fld}" if fld else where, msg)


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str | None
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str | None  # None: headless (`clusterIP: None`)
    ports: tuple[ServicePort, ...] = ()
    selector: Mapping[str, str] | None = None  # None or empty: no controller-made slices
    publish_not_ready_addresses: bool = False
    ip_families: tuple[str, ...] = (IPV4,)

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    namespace: str
    ips: tuple[str, ...] = ()  # status.podIPs; empty: no IP yet
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True  # the Ready condition
    terminating: bool = False  # metadata.deletionTimestamp is set
    phase: str = "Running"
    hostname: str | None = None
    subdomain: str | None = None
    container_ports: Mapping[str, int] = field(default_factory=dict)  # named ports


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str | None
    port: int | None  # the pod's targetPort
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool | None = None  # nil means ready (§3.2)
    serving: bool | None = None
    terminating: bool | None = None
    hostname: str | None = None
    target_pod: str | None = None

    @property
    def is_ready(self) -> bool:
        # CoreDNS publishes an address when conditions.ready is true or nil (§1.4).
        return self.ready is None or self.ready


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    name: str
    namespace: str
    service_name: str
    address_type: str
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


K8sObject: TypeAlias = Service | Pod | Namespace | EndpointSlice
Key: TypeAlias = tuple[str, str]  # (namespace, name)


def ip_family(ip: str) -> str:
    return IPV6 if ipaddress.ip_address(ip).version == 6 else IPV4


def _resolve_target_port(port: ServicePort, pod: Pod) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    # A named targetPort that no container declares leaves the port out for that pod.
    return pod.container_ports.get(port.target_port)


def endpoint_slices_for(service: Service, pods: Iterable[Pod]) -> list[EndpointSlice]:
    """The slices the EndpointSlice controller keeps for `service` (§1.4, §3.2).

    One slice per (address family, resolved port list), as the controller groups them.
    """
    if not service.selector:
        return []
    groups: dict[tuple[str, tuple[EndpointPort, ...]], list[Endpoint]] = {}
    for pod in pods:
        if pod.namespace != service.namespace or pod.phase in TERMINAL_PHASES or not pod.ips:
            continue
        if any(pod.labels.get(k) != v for k, v in service.selector.items()):
            continue
        ports = tuple(
            EndpointPort(p.name, tp, p.protocol)
            for p in service.ports
            if (tp := _resolve_target_port(p, pod)) is not None
        )
        # ShouldSetHostname: spec.hostname set and spec.subdomain names this Service.
        hostname = pod.hostname if pod.hostname and pod.subdomain == service.name else None
        serving = pod.ready
        ready = service.publish_not_ready_addresses or (serving and not pod.terminating)
        for family in service.ip_families:
            addrs = tuple(ip for ip in pod.ips if ip_family(ip) == family)
            if addrs:
                ep = Endpoint(addrs, ready, serving, pod.terminating, hostname, pod.name)
                groups.setdefault((family, ports), []).append(ep)
    return [
        EndpointSlice(
            f"{service.name}-{family.lower()}-{i}",
            service.namespace,
            service.name,
            family,
            ports,
            tuple(eps),
        )
        for i, ((family, ports), eps) in enumerate(groups.items())
    ]


class ClusterState:
    """Services, Pods, Namespaces and hand-written EndpointSlices, keyed by (namespace, name).

    `generation` grows on every change and `modified` is the unix time of the last one (the
    SOA serial, as CoreDNS uses it, §1.3).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.services: dict[Key, Service] = {}
        self.pods: dict[Key, Pod] = {}
        self.slices: dict[Key, EndpointSlice] = {}
        self.namespaces: set[str] = set()
        self.generation = 0
        self.modified = int(clock())
        self._derived: dict[Key, list[EndpointSlice]] = {}
        self._derived_generation = -1

    def __repr__(self) -> str:
        return (
            f"<ClusterState services={len(self.services)} pods={len(self.pods)} "
            f"slices={len(self.slices)} generation={self.generation}>"
        )

    def _changed(self) -> None:
        self.generation += 1
        self.modified = max(self.modified, int(self._clock()))

    def put(self, obj: K8sObject) -> None:
        """Create or replace one object (what `kubectl apply` does to our subset)."""
        if isinstance(obj, Service):
            self.services[obj.namespace, obj.name] = obj
        elif isinstance(obj, Pod):
            self.pods[obj.namespace, obj.name] = obj
        elif isinstance(obj, EndpointSlice):
            self.slices[obj.namespace, obj.name] = obj
        else:
            self.namespaces.add(obj.name)
        self._changed()

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove an object; False if there was none."""
        if kind == "Namespace":
            found = name in self.namespaces
            self.namespaces.discard(name)
        else:
            stores: dict[str, dict[Key, Any]] = {
                "Service": self.services,
                "Pod": self.pods,
                "EndpointSlice": self.slices,
            }
            if kind not in stores:
                raise ValueError(f"unknown kind {kind!r}")
            found = stores[kind].pop((namespace, name), None) is not None
        if found:
            self._changed()
        return found

    def pod(self, name: str, namespace: str) -> Pod:
        try:
            return self.pods[namespace, name]
        except KeyError:
            raise KeyError(f"no pod {namespace}/{name}") from None

    def update_pod(self, name: str, namespace: str, **changes: Any) -> Pod:
        pod = replace(self.pod(name, namespace), **changes)
        self.pods[namespace, name] = pod
        self._changed()
        return pod

    def replace_all(self, objects: Iterable[K8sObject]) -> list[str]:
        """Make the state exactly `objects`; returns a line per object added, changed, removed."""
        new = ClusterState(self._clock)
        for obj in objects:
            new.put(obj)
        lines: list[str] = []
        for kind, old_store, new_store in (
            ("Service", self.services, new.services),
            ("Pod", self.pods, new.pods),
            ("EndpointSlice", self.slices, new.slices),
        ):
            for key in old_store.keys() - new_store.keys():
                lines.append(f"deleted {kind} {key[0]}/{key[1]}")
            for key, obj in new_store.items():
                if key not in old_store:
                    lines.append(f"added {kind} {key[0]}/{key[1]}")
                elif old_store[key] != obj:
                    lines.append(f"changed {kind} {key[0]}/{key[1]}")
        if lines or self.namespaces != new.namespaces:
            self.services, self.pods, self.slices = new.services, new.pods, new.slices
            self.namespaces = new.namespaces
            self._changed()
        return sorted(lines)

    def namespace_exists(self, namespace: str) -> bool:
        # A namespace exists if declared or if anything lives in it (§1.3 namespace names).
        return (
            namespace in self.namespaces
            or any(ns == namespace for ns, _ in self.services)
            or any(ns == namespace for ns, _ in self.pods)
        )

    def endpoint_slices(self, namespace: str, service: str) -> list[EndpointSlice]:
        """Controller-made slices of the Service plus hand-written ones labelled with its name."""
        if self._derived_generation != self.generation:
            self._derived = {
                key: endpoint_slices_for(svc, self.pods.values())
                for key, svc in self.services.items()
            }
            self._derived_generation = self.generation
        given = [
            s
            for s in self.slices.values()
            if s.namespace == namespace and s.service_name == service
        ]
        return self._derived.get((namespace, service), []) + given


class _Doc:
    """Typed access to one manifest object; every error names file, document, object and field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, fld: str, msg: str) -> ManifestError:
        return ManifestError(self.where, fld, msg)

    def mapping(self, value: Any, fld: str, *, required: bool = False) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(fld, f"expected a mapping, got {value!r}")
        return value

    def items(self, value: Any, fld: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(fld, f"expected a list, got {value!r}")
        return value

    def text(self, value: Any, fld: str, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.fail(fld, "required")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(fld, f"expected a non-empty string, got {value!r}")
        return value

    def port(self, value: Any, fld: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(fld, f"expected a port number 1-65535, got {value!r}")
        return value

    def flag(self, value: Any, fld: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(fld, f"expected true or false, got {value!r}")

    def ip(self, value: Any, fld: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.fail(fld, f"expected an IP address, got {value!r}") from None

    def labels(self, value: Any, fld: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.mapping(value, fld).items():
            if not isinstance(v, str):
                raise self.fail(f"{fld}.{k}", f"label values are strings, got {v!r}")
            out[str(k)] = v
        return out


def _parse_service(d: _Doc, name: str, ns: str, obj: dict[str, Any]) -> Service:
    spec = d.mapping(obj.get("spec"), "spec", required=True)
    if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise d.fail("spec.type", f"{spec['type']!r} is not supported")
    raw_ip = spec.get("clusterIP")
    if raw_ip is None:
        raise d.fail("spec.clusterIP", "required here (no IP allocator): None or an address")
    cluster_ip = None if raw_ip == "None" else d.ip(raw_ip, "spec.clusterIP")
    ports = []
    for i, p in enumerate(d.items(spec.get("ports"), "spec.ports")):
        f = f"spec.ports[{i}]"
        p = d.mapping(p, f, required=True)
        number = d.port(p.get("port"), f"{f}.port")
        target = p.get("targetPort", number)
        if not isinstance(target, str):
            target = d.port(target, f"{f}.targetPort")
        ports.append(
            ServicePort(
                d.text(p.get("name"), f"{f}.name"),
                number,
                target,
                d.text(p.get("protocol"), f"{f}.protocol") or "TCP",
            )
        )
    families = tuple(d.items(spec.get("ipFamilies"), "spec.ipFamilies"))
    for i, fam in enumerate(families):
        if fam not in (IPV4, IPV6):
            raise d.fail(f"spec.ipFamilies[{i}]", f"expected IPv4 or IPv6, got {fam!r}")
    if not families:
        if spec.get("ipFamilyPolicy") in ("PreferDualStack", "RequireDualStack"):
            families = (IPV4, IPV6)
        else:  # SingleStack: the clusterIP's family, else the (IPv4) cluster default
            families = (ip_family(cluster_ip) if cluster_ip else IPV4,)
    selector = d.labels(spec.get("selector"), "spec.selector") or None
    pnra = d.flag(spec.get("publishNotReadyAddresses"), "spec.publishNotReadyAddresses")
    return Service(name, ns, cluster_ip, tuple(ports), selector, bool(pnra), families)


def _parse_pod(d: _Doc, name: str, ns: str, obj: dict[str, Any]) -> Pod:
    meta = d.mapping(obj.get("metadata"), "metadata")
    spec = d.mapping(obj.get("spec"), "spec")
    status = d.mapping(obj.get("status"), "status")
    ips = [
        d.ip(d.mapping(e, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        for i, e in enumerate(d.items(status.get("podIPs"), "status.podIPs"))
    ]
    if not ips and status.get("podIP") is not None:
        ips = [d.ip(status["podIP"], "status.podIP")]
    ready = False
    for i, c in enumerate(d.items(status.get("conditions"), "status.conditions")):
        c = d.mapping(c, f"status.conditions[{i}]", required=True)
        if c.get("type") == "Ready":
            ready = str(c.get("status")) == "True"
    named: dict[str, int] = {}
    for i, c in enumerate(d.items(spec.get("containers"), "spec.containers")):
        c = d.mapping(c, f"spec.containers[{i}]", required=True)
        for j, p in enumerate(d.items(c.get("ports"), f"spec.containers[{i}].ports")):
            f = f"spec.containers[{i}].ports[{j}]"
            p = d.mapping(p, f, required=True)
            if (pname := d.text(p.get("name"), f"{f}.name")) is not None:
                named[pname] = d.port(p.get("containerPort"), f"{f}.containerPort")
    return Pod(
        name,
        ns,
        tuple(dict.fromkeys(ips)),
        d.labels(meta.get("labels"), "metadata.labels"),
        ready,
        meta.get("deletionTimestamp") is not None,
        d.text(status.get("phase"), "status.phase") or "Running",
        d.text(spec.get("hostname"), "spec.hostname"),
        d.text(spec.get("subdomain"), "spec.subdomain"),
        named,
    )


def _parse_slice(d: _Doc, name: str, ns: str, obj: dict[str, Any]) -> EndpointSlice:
    labels = d.labels(d.mapping(obj.get("metadata"), "metadata").get("labels"), "metadata.labels")
    svc = labels.get(SERVICE_NAME_LABEL)
    if svc is None:
        raise d.fail(f"metadata.labels.{SERVICE_NAME_LABEL}", "required")
    family = obj.get("addressType")
    if family not in (IPV4, IPV6):
        raise d.fail("addressType", f"expected IPv4 or IPv6, got {family!r}")
    ports = []
    for i, p in enumerate(d.items(obj.get("ports"), "ports")):
        p = d.mapping(p, f"ports[{i}]", required=True)
        number = None if p.get("port") is None else d.port(p["port"], f"ports[{i}].port")
        proto = d.text(p.get("protocol"), f"ports[{i}].protocol") or "TCP"
        ports.append(EndpointPort(d.text(p.get("name"), f"ports[{i}].name"), number, proto))
    endpoints = []
    for i, e in enumerate(d.items(obj.get("endpoints"), "endpoints")):
        f = f"endpoints[{i}]"
        e = d.mapping(e, f, required=True)
        addrs = d.items(e.get("addresses"), f"{f}.addresses")
        if not addrs:
            raise d.fail(f"{f}.addresses", "needs at least one address")
        ips = tuple(d.ip(a, f"{f}.addresses[{j}]") for j, a in enumerate(addrs))
        for j, ip in enumerate(ips):
            if ip_family(ip) != family:
                raise d.fail(f"{f}.addresses[{j}]", f"{ip} is not an {family} address")
        cond = d.mapping(e.get("conditions"), f"{f}.conditions")
        target = d.mapping(e.get("targetRef"), f"{f}.targetRef").get("name")
        endpoints.append(
            Endpoint(
                ips,
                d.flag(cond.get("ready"), f"{f}.conditions.ready"),
                d.flag(cond.get("serving"), f"{f}.conditions.serving"),
                d.flag(cond.get("terminating"), f"{f}.conditions.terminating"),
                d.text(e.get("hostname"), f"{f}.hostname"),
                target if isinstance(target, str) else None,
            )
        )
    return EndpointSlice(name, ns, svc, family, tuple(ports), tuple(endpoints))


_Parser: TypeAlias = Callable[[_Doc, str, str, dict[str, Any]], K8sObject]
_PARSERS: Final[dict[str, _Parser]] = {
    "Service": _parse_service,
    "Pod": _parse_pod,
    "EndpointSlice": _parse_slice,
}


def parse_object(
    obj: Any, where: str = "<object>", default_namespace: str = "default"
) -> list[K8sObject]:
    """One manifest mapping → objects (`kind: List` and `*List` kinds give their items)."""
    d = _Doc(where)
    obj = d.mapping(obj, "", required=True)
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List"):
        out: list[K8sObject] = []
        for i, item in enumerate(d.items(obj.get("items"), "items")):
            out += parse_object(item, f"{where} items[{i}]", default_namespace)
        return out
    meta = d.mapping(obj.get("metadata"), "metadata", required=True)
    name = d.text(meta.get("name"), "metadata.name", required=True)
    assert name is not None
    if kind == "Namespace":
        return [Namespace(name)]
    ns = d.text(meta.get("namespace"), "metadata.namespace") or default_namespace
    d.where = f"{where} ({kind} {ns}/{name})"
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise d.fail("kind", f"{kind!r} is not supported (Service, Pod, EndpointSlice, Namespace)")
    return [parser(d, name, ns, obj)]


def _manifest_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
    else:
        yield path


def load_manifests(
    paths: Path | str | Sequence[Path | str], default_namespace: str = "default"
) -> list[K8sObject]:
    """Objects from YAML files (multi-document, `kind: List`) or directories of them."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[K8sObject] = []
    for top in items:
        for file in _manifest_files(Path(top)):
            try:
                docs = list(yaml.safe_load_all(file.read_text()))
            except OSError as e:
                raise ManifestError(str(file), "", f"cannot read: {e.strerror}") from None
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(e, "problem", None) or str(e)
                raise ManifestError(str(file), "", f"not valid YAML{at}: {problem}") from None
            for i, doc in enumerate(docs, 1):
                if doc is not None:
                    out += parse_object(doc, f"{file} (document {i})", default_namespace)
    return out


def manifest_files(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    """The files `load_manifests` would read (for change polling)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    return [f for top in items for f in _manifest_files(Path(top))]
