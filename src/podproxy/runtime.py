"""Envoy's runtime: layered key/value overrides, read through immutable snapshots.

`Runtime` owns the bootstrap `layered_runtime` layers (static, disk, admin) and the current
`Snapshot`; loading builds a new snapshot and swaps it in whole, so a reader holding one sees
one consistent state and a lookup is an attribute read plus a dict get. Every value is kept as
its raw string and parsed once into what Envoy's `SnapshotImpl::Entry` holds (boolean, double,
integer, FractionalPercent), so `get_*` and `feature_enabled` behave as Envoy's
(source/common/runtime/runtime_impl.cc). With `--concurrency N` the main process owns the
`Runtime` and pushes each new snapshot to the workers as plain data (`snapshot_to_wire`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from podproxy.config.schema import LayeredRuntime, RuntimeDiskLayer
from podproxy.stats import Counter, Gauge, Store

# FractionalPercent.DenominatorType values as integers (envoy/type/v3/percent.proto).
DENOMINATORS: dict[str, int] = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_DENOMINATOR_BY_NUMBER = (100, 10_000, 1_000_000)
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1

# DiskLayer::walkDirectory's recursion limit and the message when it is passed.
MAX_WALK_DEPTH = 16
# Filesystem::illegalPath on Linux: paths Envoy refuses to read runtime from.
_ILLEGAL_PREFIXES = ("/dev", "/sys", "/proc")

NO_ADMIN_LAYER = "No admin layer specified"


@dataclass(slots=True)
class RuntimeStats:
    """`runtime.*` (Envoy's ALL_RUNTIME_STATS)."""

    deprecated_feature_use: Counter
    load_error: Counter
    load_success: Counter
    override_dir_exists: Counter
    override_dir_not_exists: Counter
    admin_overrides_active: Gauge
    deprecated_feature_seen_since_process_start: Gauge
    num_keys: Gauge
    num_layers: Gauge


# --- entries: a raw string and what it parses as -------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One runtime value: the raw string and its typed readings (None: not that type)."""

    raw: str
    bool_value: bool | None = None
    double_value: float | None = None
    uint_value: int | None = None
    # (numerator, denominator as 100 / 10000 / 1000000)
    fraction: tuple[int, int] | None = None


# absl::SimpleAtoi for uint64 (after the whitespace strip Envoy does first) and absl::SimpleAtod
# (which skips surrounding ASCII whitespace itself); Python's int()/float() accept more
# (underscores, non-ASCII digits), so the shapes are checked first.
_UINT_RE = re.compile(r"\+?[0-9]+")
_DOUBLE_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)
_ASCII_SPACE = " \t\n\v\f\r"


def make_entry(raw: str) -> Entry:
    """Envoy's SnapshotImpl::createEntry / resolveEntryType, in its order: a boolean ("true",
    "false", any case; an integer counts as true unless 0 and goes on), else a double (and,
    when it is in [0, 2^64), its integer part as the uint value), else a FractionalPercent
    written in YAML or JSON."""
    stripped = raw.strip(_ASCII_SPACE)
    bool_value: bool | None = None
    if _UINT_RE.fullmatch(stripped) and int(stripped) <= _UINT64_MAX:
        bool_value = int(stripped) != 0
    elif stripped.lower() == "true":
        return Entry(raw, bool_value=True)
    elif stripped.lower() == "false":
        return Entry(raw, bool_value=False)
    if _DOUBLE_RE.fullmatch(stripped):
        double = float(stripped)
        if 0 <= double <= _UINT64_MAX:
            return Entry(raw, bool_value, double, min(int(double), _UINT64_MAX))
        return Entry(raw, bool_value, double)
    return Entry(raw, bool_value, fraction=parse_fractional_percent(raw))


def parse_fractional_percent(text: str) -> tuple[int, int] | None:
    """A FractionalPercent in YAML (`numerator: 5` / `{numerator: 5, denominator: MILLION}`) as
    (numerator, denominator), or None when `text` is not one; strict, as Envoy's
    loadFromYamlAndValidate: unknown fields or a bad denominator make it not a fraction."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or not set(data) <= {"numerator", "denominator"}:
        return None
    numerator = _proto_uint32(data.get("numerator"))
    denominator = _denominator(data.get("denominator"))
    if numerator is None or denominator is None:
        return None
    return numerator, denominator


def _proto_uint32(value: object) -> int | None:
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _UINT_RE.fullmatch(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _UINT32_MAX:
        return value
    return None


def _denominator(value: object) -> int | None:
    if value is None:
        return 100
    if isinstance(value, str) and value.isascii() and value.upper() in DENOMINATORS:
        return DENOMINATORS[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 3:
        return _DENOMINATOR_BY_NUMBER[value]
    return None


# --- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """One loaded layer of a snapshot: its name and its entries by key."""

    name: str
    entries: Mapping[str, Entry]


class Snapshot:
    """One consistent view of every layer; never changes once built.

    `values` is the merged map (a later layer's key replaces an earlier one's). Lookups mirror
    Envoy's Snapshot: the empty key is never found, a value of the wrong type reads as absent.
    """

    __slots__ = ("layers", "num_keys", "values")

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        self.layers = layers
        values: dict[str, Entry] = {}
        for layer in layers:
            values.update(layer.entries)
        # Envoy counts an empty key (`/runtime_modify?=x`) but never finds it.
        self.num_keys = len(values)
        values.pop("", None)
        self.values = values

    def get(self, key: str) -> str | None:
        entry = self.values.get(key)
        return None if entry is None else entry.raw

    def get_integer(self, key: str, default: int) -> int:
        entry = self.values.get(key)
        if entry is None or entry.uint_value is None:
            return default
        return entry.uint_value

    def get_double(self, key: str, default: float) -> float:
        entry = self.values.get(key)
        if entry is None or entry.double_value is None:
            return default
        return entry.double_value

    def get_boolean(self, key: str, default: bool) -> bool:
        entry = self.values.get(key)
        if entry is None or entry.bool_value is None:
            return default
        return entry.bool_value

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        """Envoy's featureEnabled(key, FractionalPercent default, random_value).

        The runtime value wins over the default (numerator/denominator, denominator 100, 10000
        or 1000000): a FractionalPercent value as it is; an integer value as a percentage, and
        above 100 always on; anything else falls back to the default. Then, as
        ProtobufPercentHelper::evaluateFractionalPercent: `random_value % denominator <
        numerator`. `random_value` is a non-negative integer (Envoy's uint64 random).
        """
        entry = self.values.get(key)
        if entry is not None:
            if entry.fraction is not None:
                numerator, denominator = entry.fraction
            elif entry.uint_value is not None:
                if entry.uint_value > 100:
                    return True
                numerator, denominator = entry.uint_value, 100
        return random_value % denominator < numerator

    def __repr__(self) -> str:
        names = ", ".join(layer.name for layer in self.layers)
        return f"<Snapshot layers=[{names}] keys={len(self.values)}>"


EMPTY_SNAPSHOT = Snapshot(())


def snapshot_to_wire(snapshot: Snapshot) -> list[list[Any]]:
    """A snapshot as plain JSON data: `[[layer name, {key: raw value}], ...]`."""
    return [[layer.name, {k: e.raw for k, e in layer.entries.items()}] for layer in snapshot.layers]


def snapshot_from_wire(data: list[list[Any]]) -> Snapshot:
    """The inverse of `snapshot_to_wire`: raw strings parse to the same entries they came from."""
    return Snapshot(
        tuple(
            Layer(str(name), {str(k): make_entry(str(v)) for k, v in values.items()})
            for name, values in data
        )
    )


def snapshot_digest(snapshot: Snapshot) -> str:
    """A short fingerprint of a snapshot's layers and values (workers acknowledge with it)."""
    wire = json.dumps(snapshot_to_wire(snapshot), separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(wire.encode()).hexdigest()[:16]


def runtime_json(snapshot: Snapshot) -> dict[str, Any]:
    """`GET /runtime` as Envoy's RuntimeHandler builds it: layer names in order, and per key
    each layer's raw value ("" where the layer lacks it) and the last non-empty one."""
    keys = sorted({k for layer in snapshot.layers for k in layer.entries})
    entries: dict[str, Any] = {}
    for key in keys:
        values = [
            e.raw if (e := layer.entries.get(key)) is not None else "" for layer in snapshot.layers
        ]
        final = next((v for v in reversed(values) if v), "")
        entries[key] = {"final_value": final, "layer_values": values}
    return {"entries": entries, "layers": [layer.name for layer in snapshot.layers]}


# --- layers from config --------------------------------------------------------------------


def _number_text(value: int | float) -> str:
    # Envoy 1.40 keeps a static_layer number as the YAML text it was written as; PyYAML has
    # already turned it into a number, so podproxy spells it the shortest way back (the same
    # text for integers and plain decimals; `1e-07` becomes `1e-7`).
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e:
        text = f"{mantissa}e{int(exponent)}"
    return text


def flatten_static_layer(struct: Mapping[str, Any]) -> dict[str, str]:
    """A static_layer Struct as Envoy's ProtoLayer walks it: nested mappings become dotted
    keys, except a mapping that is empty or has `numerator` or `denominator`, which is one
    FractionalPercent value (kept as its YAML flow text, which parses back to it)."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[key] = _number_text(value)
        elif isinstance(value, str):
            out[key] = value
        elif isinstance(value, dict):
            if not value or "numerator" in value or "denominator" in value:
                flow = yaml.safe_dump(value, default_flow_style=True, sort_keys=False)
                out[key] = flow.strip()
                return
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        else:  # the config model already refused lists and nulls
            raise ValueError(f"Invalid runtime entry value for {key}")

    for k, v in struct.items():
        walk(v, k)
    return out


class DiskLayerError(Exception):
    """A disk layer that cannot be read (Envoy drops it and counts `runtime.load_error`)."""


def disk_layer_path(cfg: RuntimeDiskLayer, service_cluster: str) -> str:
    path = f"{cfg.symlink_root}/{cfg.subdirectory}"
    if cfg.append_service_cluster:
        path += f"/{service_cluster}"
    return path


def read_disk_layer(path: str) -> dict[str, str]:
    """Every regular file under `path` as `dir.sub.file` → value, as Envoy's DiskLayer reads
    it: the file split on newlines with empty lines dropped, lines starting with `#` skipped,
    the others joined with newlines and the last one right-trimmed."""
    values: dict[str, str] = {}
    _walk_directory(path, "", 1, values)
    return values


def _walk_directory(path: str, prefix: str, depth: int, values: dict[str, str]) -> None:
    if depth > MAX_WALK_DEPTH:
        raise DiskLayerError(f"Walk recursion depth exceeded {MAX_WALK_DEPTH}")
    if path.startswith(_ILLEGAL_PREFIXES):
        raise DiskLayerError(f"Invalid path: {path}")
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise DiskLayerError(f"unable to open directory: {path}") from exc
    for entry in entries:
        key = f"{prefix}.{entry.name}" if prefix else entry.name
        full = f"{path}/{entry.name}"
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            continue
        if is_dir:
            _walk_directory(full, key, depth + 1, values)
        elif is_file:
            try:
                with open(full, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError as exc:
                raise DiskLayerError(f"unable to read file: {full}") from exc
            values[key] = _file_value(text)


def _file_value(text: str) -> str:
    lines = [line for line in text.split("\n") if line]
    last = lines[-1] if lines else ""
    out: list[str] = []
    for line in lines:
        if line.startswith("#"):
            continue
        # Envoy compares contents, not positions, with the last line (so a line equal to the
        # last one is trimmed and joined without its newline too).
        if line == last:
            out.append(line.rstrip(" \t\f\v\n\r"))
        else:
            out.append(line + "\n")
    return "".join(out)


# --- the runtime ---------------------------------------------------------------------------

SnapshotCb = Callable[[Snapshot], None]


class NoAdminLayer(Exception):
    """`/runtime_modify` without an admin layer (Envoy answers 503 with this message)."""

    def __init__(self) -> None:
        super().__init__(NO_ADMIN_LAYER)


class Runtime:
    """The layers of bootstrap `layered_runtime` and the current snapshot.

    Without `layered_runtime` there are no layers (and no admin layer); with it but no layers,
    Envoy 1.40 runs one admin layer named "" (checked on Envoy: `/runtime` lists `[""]` and
    `/runtime_modify` writes to it). Static layers are flattened once; disk layers are read
    on every load, as Envoy re-reads them on each new snapshot (a runtime_modify included);
    podproxy does not watch symlink_root for changes. The admin layer is this object's dict.
    """

    def __init__(
        self,
        config: LayeredRuntime | None = None,
        *,
        service_cluster: str = "",
        stats: RuntimeStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Store().scope("runtime.").make(RuntimeStats)
        self.service_cluster = service_cluster
        layers: list[tuple[str, object]] = []
        if config is not None:
            for layer in config.layers:
                if layer.static_layer is not None:
                    static = {
                        k: make_entry(v)
                        for k, v in flatten_static_layer(layer.static_layer).items()
                    }
                    layers.append((layer.name, static))
                elif layer.disk_layer is not None:
                    layers.append((layer.name, layer.disk_layer))
                else:
                    layers.append((layer.name, None))
            if not config.layers:
                layers.append(("", None))
        self._layers = layers
        self.has_admin_layer = any(spec is None for _, spec in layers)
        self._admin: dict[str, Entry] = {}
        self._callbacks: list[SnapshotCb] = []
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self.load()

    def add_update_cb(self, cb: SnapshotCb) -> None:
        """Call `cb(snapshot)` after every new snapshot (the supervisor pushes it to workers)."""
        self._callbacks.append(cb)

    def load(self) -> Snapshot:
        """Build a new snapshot from the layers and swap it in (Envoy's loadNewSnapshot)."""
        layers: list[Layer] = []
        disk_layers = errors = 0
        for name, spec in self._layers:
            if spec is None:
                layers.append(Layer(name, dict(self._admin)))
            elif isinstance(spec, RuntimeDiskLayer):
                path = disk_layer_path(spec, self.service_cluster)
                # A missing directory is no layer at all, and no error.
                if not os.path.isdir(path):
                    continue
                try:
                    raw = read_disk_layer(path)
                except DiskLayerError:
                    errors += 1
                    continue
                layers.append(Layer(name, {k: make_entry(v) for k, v in raw.items()}))
                disk_layers += 1
            else:
                assert isinstance(spec, dict)
                layers.append(Layer(name, spec))
        st = self.stats
        st.num_layers.set(len(layers))
        (st.load_error if errors else st.load_success).inc()
        # Envoy counts "exists" only when more than one disk layer loaded (an override
        # directory on top of the root one); one disk layer counts as "not exists".
        (st.override_dir_exists if disk_layers > 1 else st.override_dir_not_exists).inc()
        self._swap(Snapshot(tuple(layers)))
        return self.snapshot

    def merge_values(self, values: Mapping[str, str]) -> None:
        """`/runtime_modify`: set each key in the admin layer, remove it for an empty value,
        then load a new snapshot. Raises `NoAdminLayer` when there is none."""
        if not self.has_admin_layer:
            raise NoAdminLayer()
        for key, value in values.items():
            self._admin.pop(key, None)
            if value:
                self._admin[key] = make_entry(value)
        self.stats.admin_overrides_active.set(1 if self._admin else 0)
        self.load()

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """A worker process: take the snapshot the main process built."""
        self._swap(snapshot)

    def _swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.stats.num_keys.set(snapshot.num_keys)
        for cb in self._callbacks:
            cb(snapshot)
