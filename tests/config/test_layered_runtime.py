"""Bootstrap `layered_runtime` (and the v2 `runtime`) through the loader: typed layers, and
every error naming its YAML path with Envoy's words where Envoy has them."""

from __future__ import annotations

import pytest

from podproxy.config.loader import load
from podproxy.errors import ConfigErrors


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_yaml=text)
    return [str(e) for e in info.value.errors]


def test_layers_load_typed() -> None:
    b = load(
        config_yaml="""
layered_runtime:
  layers:
  - {name: base, static_layer: {a: 1, nest: {b: "x"}, f: {numerator: 5}}}
  - name: disk
    disk_layer: {symlink_root: /srv/runtime/current, subdirectory: envoy,
                 append_service_cluster: true}
  - {name: admin, admin_layer: {}}
"""
    ).bootstrap
    assert b.layered_runtime is not None
    base, disk, admin = b.layered_runtime.layers
    assert base.static_layer == {"a": 1, "nest": {"b": "x"}, "f": {"numerator": 5}}
    assert disk.disk_layer is not None
    assert disk.disk_layer.symlink_root == "/srv/runtime/current"
    assert disk.disk_layer.append_service_cluster is True
    assert admin.admin_layer is not None


def test_absent_and_empty_layered_runtime_differ() -> None:
    assert load(config_yaml="node: {id: n}").bootstrap.layered_runtime is None
    empty = load(config_yaml="layered_runtime: {}").bootstrap.layered_runtime
    assert empty is not None and empty.layers == ()


@pytest.mark.parametrize(
    ("layers", "error"),
    [
        (
            "[{name: s, static_layer: {a: 1}}, {name: s, admin_layer: {}}]",
            "layered_runtime.layers[1].name: Duplicate layer name: s",
        ),
        (
            "[{name: a, admin_layer: {}}, {name: b, admin_layer: {}}]",
            "layered_runtime.layers[1].admin_layer: Too many admin layers specified in "
            "LayeredRuntime, at most one may be specified",
        ),
        (
            "[{name: r, rtds_layer: {name: x}}]",
            "layered_runtime.layers[0].rtds_layer: rtds_layer needs an xDS management server "
            "(RTDS), which podproxy does not have; use static_layer, disk_layer or admin_layer",
        ),
        (
            "[{name: s, static_layer: {a: {b: [1]}}}]",
            "layered_runtime.layers[0].static_layer: Invalid runtime entry value for a.b: "
            "expected a string, number, boolean or mapping, got a list",
        ),
        (
            "[{name: s, static_layer: {a: null}}]",
            "layered_runtime.layers[0].static_layer: Invalid runtime entry value for a: "
            "expected a string, number, boolean or mapping, got null",
        ),
        ("[{static_layer: {a: 1}}]", "layered_runtime.layers[0].name: missing required field"),
        ("[{name: '', admin_layer: {}}]", "layered_runtime.layers[0].name: must not be empty"),
        (
            "[{name: q}]",
            "layered_runtime.layers[0]: exactly one of static_layer, disk_layer, admin_layer, "
            "rtds_layer must be set, got 0",
        ),
        (
            "[{name: q, admin_layer: {}, disk_layer: {}}]",
            "layered_runtime.layers[0]: exactly one of static_layer, disk_layer, admin_layer, "
            "rtds_layer must be set, got 2",
        ),
        (
            "[{name: d, disk_layer: {symlink_root: /x, watch: true}}]",
            "layered_runtime.layers[0].disk_layer.watch: unknown field",
        ),
        (
            "[{name: d, disk_layer: {append_service_cluster: 'yes'}}]",
            "layered_runtime.layers[0].disk_layer.append_service_cluster: expected true or "
            'false, got "yes"',
        ),
    ],
)
def test_layer_errors_name_their_path(layers: str, error: str) -> None:
    assert errors_of(f"layered_runtime: {{layers: {layers}}}") == [error]


def test_a_lone_layer_is_a_list_of_one() -> None:
    rt = load(config_yaml="layered_runtime: {layers: {name: a, admin_layer: {}}}").bootstrap
    assert rt.layered_runtime is not None and len(rt.layered_runtime.layers) == 1


def test_v2_runtime_maps_to_layers_as_envoys_translate_runtime() -> None:
    b = load(
        config_yaml="""
runtime:
  symlink_root: /srv/runtime/current
  subdirectory: envoy
  override_subdirectory: envoy_override
  base: {a: 1}
"""
    ).bootstrap
    assert b.layered_runtime is not None
    layers = b.layered_runtime.layers
    assert [la.name for la in layers] == ["base", "root", "override", "admin"]
    assert layers[0].static_layer == {"a": 1}
    root, override = layers[1].disk_layer, layers[2].disk_layer
    assert root is not None and override is not None
    assert (root.symlink_root, root.subdirectory, root.append_service_cluster) == (
        "/srv/runtime/current",
        "envoy",
        False,
    )
    assert (override.subdirectory, override.append_service_cluster) == ("envoy_override", True)
    assert layers[3].admin_layer is not None


def test_v2_runtime_without_a_root_is_base_and_admin() -> None:
    b = load(config_yaml="runtime: {base: {a: 1}, subdirectory: x}").bootstrap
    assert b.layered_runtime is not None
    assert [la.name for la in b.layered_runtime.layers] == ["base", "admin"]


@pytest.mark.parametrize(
    ("runtime", "error"),
    [
        ("{symlink_root: /x, typo: 1}", "runtime.typo: unknown field"),
        ("{symlink_root: 5}", "runtime.symlink_root: expected a string, got 5"),
        ("{base: {a: [1]}}", "runtime.base: Invalid runtime entry value for a: expected a "
         "string, number, boolean or mapping, got a list"),
        ("[1]", "runtime: expected a mapping, got a list"),
    ],
)  # fmt: skip
def test_v2_runtime_errors_name_the_v2_path(runtime: str, error: str) -> None:
    assert errors_of(f"runtime: {runtime}") == [error]


def test_v2_runtime_and_layered_runtime_together_is_an_error() -> None:
    assert errors_of("runtime: {}\nlayered_runtime: {}") == [
        "runtime: cannot be combined with layered_runtime"
    ]
