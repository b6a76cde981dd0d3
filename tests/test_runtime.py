"""podproxy.runtime: entry parsing, layering, lookups, feature_enabled, disk layers, stats."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from podproxy.config.schema import LayeredRuntime
from podproxy.runtime import (
    Entry,
    Layer,
    NoAdminLayer,
    Runtime,
    RuntimeStats,
    Snapshot,
    flatten_static_layer,
    make_entry,
    parse_fractional_percent,
    read_disk_layer,
    runtime_json,
    snapshot_from_wire,
    snapshot_to_wire,
)
from podproxy.stats import Store


def layered(*layers: dict[str, Any]) -> LayeredRuntime:
    return LayeredRuntime.model_validate({"layers": list(layers)})


def stats_of(rt: Runtime) -> dict[str, int]:
    return {f.name: getattr(rt.stats, f.name).value for f in dataclasses.fields(rt.stats)}


def snap(**layers: dict[str, str]) -> Snapshot:
    return Snapshot(
        tuple(Layer(n, {k: make_entry(v) for k, v in e.items()}) for n, e in layers.items())
    )


# --- entries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("5", Entry("5", True, 5.0, 5)),
        ("0", Entry("0", False, 0.0, 0)),
        (" 7 ", Entry(" 7 ", True, 7.0, 7)),
        ("+3", Entry("+3", True, 3.0, 3)),
        ("50.9", Entry("50.9", None, 50.9, 50)),
        ("-3", Entry("-3", None, -3.0, None)),
        ("1e3", Entry("1e3", None, 1000.0, 1000)),
        ("TRUE", Entry("TRUE", True)),
        (" false\n", Entry(" false\n", False)),
        ("yes", Entry("yes")),
        ("text", Entry("text")),
        ("1_000", Entry("1_000")),
        ("99999999999999999999", Entry("99999999999999999999", None, 1e20, None)),
        ("numerator: 5", Entry("numerator: 5", fraction=(5, 100))),
        ("{numerator: 5, denominator: MILLION}", Entry(
            "{numerator: 5, denominator: MILLION}", fraction=(5, 1_000_000))),
    ],
)  # fmt: skip
def test_entries_parse_as_envoys_resolve_entry_type(raw: str, want: Entry) -> None:
    assert make_entry(raw) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("numerator: 1\ndenominator: TEN_THOUSAND", (1, 10_000)),
        ('{"numerator": 3, "denominator": "ten_thousand"}', (3, 10_000)),
        ("{denominator: 2}", (0, 1_000_000)),
        ("{}", (0, 100)),
        ("{numerator: 5, denominator: BOGUS}", None),
        ("{numerator: 5, extra: 1}", None),
        ("{numerator: -1}", None),
        ("{numerator: 4294967296}", None),
        ("5", None),
        ("[1]", None),
        ("a: [", None),
    ],
)
def test_fractional_percent_text_is_strict(text: str, want: tuple[int, int] | None) -> None:
    assert parse_fractional_percent(text) == want


def test_static_layer_flattens_nested_maps_and_keeps_fractions_whole() -> None:
    struct = {
        "a": 5,
        "b": 0.5,
        "c": True,
        "d": "text",
        "nest": {"x": {"y": 1}, "z": "q"},
        "frac": {"numerator": 5, "denominator": "TEN_THOUSAND"},
        "empty": {},
        "tiny": 1e-7,
    }
    assert flatten_static_layer(struct) == {
        "a": "5",
        "b": "0.5",
        "c": "true",
        "d": "text",
        "nest.x.y": "1",
        "nest.z": "q",
        "frac": "{numerator: 5, denominator: TEN_THOUSAND}",
        "empty": "{}",
        "tiny": "1e-7",
    }
    assert make_entry(flatten_static_layer(struct)["frac"]).fraction == (5, 10_000)


# --- lookups -------------------------------------------------------------------------------


def test_later_layers_override_earlier_ones() -> None:
    s = snap(base={"k": "1", "only": "x"}, over={"k": "2"})
    assert s.get("k") == "2"
    assert s.get("only") == "x"
    assert s.get("missing") is None
    assert s.get_integer("k", 9) == 2
    assert s.get_integer("only", 9) == 9
    assert s.get_double("k", 0.5) == 2.0
    assert s.get_double("missing", 0.5) == 0.5
    assert s.get_boolean("k", False) is True
    assert s.get_boolean("only", False) is False


def test_the_empty_key_is_counted_but_never_found() -> None:
    s = snap(admin={"": "v", "a": "1"})
    assert s.num_keys == 2
    assert s.get("") is None


@pytest.mark.parametrize(
    ("value", "default", "enabled_below"),
    [
        (None, (5, 100), 5),  # no value: the default
        ("30", (5, 100), 30),  # an integer is a percentage
        ("100", (0, 100), 100),
        ("101", (0, 100), None),  # above 100: always on
        ("50.9", (0, 100), 50),  # doubles count by their integer part
        ("numerator: 7\ndenominator: TEN_THOUSAND", (0, 100), 7),  # out of 10000
        ("true", (5, 100), 5),  # not a number or a fraction: the default
        ("-3", (5, 100), 5),
        ("{numerator: 5, denominator: BOGUS}", (5, 100), 5),
    ],
)
def test_feature_enabled_matches_envoy(
    value: str | None, default: tuple[int, int], enabled_below: int | None
) -> None:
    s = snap(layer={} if value is None else {"k": value})
    denominator = 100
    if value is not None and (frac := parse_fractional_percent(value)) is not None:
        denominator = frac[1]
    for r in range(0, 3 * denominator, 1 if denominator == 100 else 97):
        got = s.feature_enabled("k", default[0], default[1], r)
        want = True if enabled_below is None else r % denominator < enabled_below
        assert got is want, (value, r)


def test_feature_enabled_default_denominators() -> None:
    s = snap()
    assert s.feature_enabled("k", 1, 1_000_000, 1_000_000) is True  # 0 < 1
    assert s.feature_enabled("k", 1, 1_000_000, 1_000_001) is False
    assert s.feature_enabled("k", 9_999, 10_000, 29_998) is True
    assert s.feature_enabled("k", 9_999, 10_000, 29_999) is False


# --- runtime, layers and stats -------------------------------------------------------------


def test_no_layered_runtime_means_no_layers_and_no_admin_layer() -> None:
    rt = Runtime(None)
    assert runtime_json(rt.snapshot) == {"entries": {}, "layers": []}
    with pytest.raises(NoAdminLayer, match=r"^No admin layer specified$"):
        rt.merge_values({"k": "v"})
    assert stats_of(rt)["num_layers"] == 0


def test_layered_runtime_without_layers_has_an_unnamed_admin_layer() -> None:
    rt = Runtime(layered())
    rt.merge_values({"k": "v"})
    assert runtime_json(rt.snapshot) == {
        "entries": {"k": {"final_value": "v", "layer_values": ["v"]}},
        "layers": [""],
    }


def test_admin_layer_sets_and_removes_and_counts() -> None:
    store = Store()
    rt = Runtime(
        layered({"name": "base", "static_layer": {"k": 1}}, {"name": "adm", "admin_layer": {}}),
        stats=store.scope("runtime.").make(RuntimeStats),
    )
    seen: list[Snapshot] = []
    rt.add_update_cb(seen.append)
    first = rt.snapshot
    rt.merge_values({"k": "2", "new": "x"})
    assert rt.snapshot is not first and seen == [rt.snapshot]
    assert first.get("k") == "1"  # a held snapshot never changes
    assert rt.snapshot.get_integer("k", 0) == 2
    assert store.gauges["runtime.admin_overrides_active"].value == 1
    assert store.gauges["runtime.num_keys"].value == 2
    assert runtime_json(rt.snapshot)["entries"]["k"] == {
        "final_value": "2",
        "layer_values": ["1", "2"],
    }
    rt.merge_values({"k": "", "new": ""})
    assert rt.snapshot.get("k") == "1"
    assert rt.snapshot.get("new") is None
    assert store.gauges["runtime.admin_overrides_active"].value == 0
    assert store.counters["runtime.load_success"].value == 3


def test_static_layer_only_has_no_admin_layer() -> None:
    rt = Runtime(layered({"name": "s", "static_layer": {"a": 1}}))
    with pytest.raises(NoAdminLayer):
        rt.merge_values({"a": "2"})
    assert rt.snapshot.get("a") == "1"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """symlink_root → a directory with `sub/` holding files, a nested dir and a cluster dir."""
    real = tmp_path / "v1"
    (real / "sub" / "nest").mkdir(parents=True)
    (real / "sub" / "svc").mkdir()
    (real / "sub" / "a_int").write_text("42\n")
    (real / "sub" / "multi").write_text("# a comment\nhello\n\nworld  \n")
    (real / "sub" / "nest" / "flag").write_text("true")
    (real / "sub" / "svc" / "k").write_text("7")
    os.symlink(real, tmp_path / "current")
    return tmp_path / "current"


def test_disk_layer_reads_files_as_envoy(disk: Path) -> None:
    assert read_disk_layer(f"{disk}/sub") == {
        "a_int": "42",
        "multi": "hello\nworld",
        "nest.flag": "true",
        "svc.k": "7",
    }


def test_disk_file_lines_equal_to_the_last_are_joined_as_envoy_does(tmp_path: Path) -> None:
    (tmp_path / "same").write_text("x\nx\n")
    (tmp_path / "comment_last").write_text("a\n#c\n")
    assert read_disk_layer(str(tmp_path)) == {"same": "xx", "comment_last": "a\n"}


def test_disk_layers_missing_dirs_and_service_cluster(disk: Path) -> None:
    rt = Runtime(
        layered(
            {"name": "root", "disk_layer": {"symlink_root": str(disk), "subdirectory": "sub"}},
            {
                "name": "override",
                "disk_layer": {
                    "symlink_root": str(disk),
                    "subdirectory": "sub",
                    "append_service_cluster": True,
                },
            },
            {"name": "gone", "disk_layer": {"symlink_root": str(disk / "nope")}},
            {"name": "admin", "admin_layer": {}},
        ),
        service_cluster="svc",
    )
    doc = runtime_json(rt.snapshot)
    assert doc["layers"] == ["root", "override", "admin"]  # a missing directory is no layer
    assert doc["entries"]["k"] == {"final_value": "7", "layer_values": ["", "7", ""]}
    assert doc["entries"]["svc.k"]["layer_values"] == ["7", "", ""]
    st = stats_of(rt)
    assert (st["num_layers"], st["num_keys"], st["load_success"]) == (3, 5, 1)
    assert (st["override_dir_exists"], st["override_dir_not_exists"]) == (1, 0)


def test_disk_layer_is_reread_on_every_load(disk: Path) -> None:
    rt = Runtime(
        layered(
            {"name": "root", "disk_layer": {"symlink_root": str(disk), "subdirectory": "sub"}},
            {"name": "admin", "admin_layer": {}},
        )
    )
    (disk / "sub" / "a_int").write_text("43")
    assert rt.snapshot.get("a_int") == "42"
    rt.merge_values({"x": "1"})
    assert rt.snapshot.get("a_int") == "43"
    assert stats_of(rt)["override_dir_not_exists"] == 2  # one disk layer counts as "not"


def test_too_deep_disk_layer_is_a_load_error_and_dropped(tmp_path: Path) -> None:
    deep = tmp_path
    for i in range(17):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "f").write_text("1")
    rt = Runtime(layered({"name": "d", "disk_layer": {"symlink_root": str(tmp_path)}}))
    st = stats_of(rt)
    assert (st["load_error"], st["load_success"], st["num_layers"]) == (1, 0, 0)


def test_snapshots_cross_the_wire_unchanged(disk: Path) -> None:
    rt = Runtime(
        layered(
            {"name": "base", "static_layer": {"f": {"numerator": 3}, "n": 2, "s": "x"}},
            {"name": "root", "disk_layer": {"symlink_root": str(disk), "subdirectory": "sub"}},
            {"name": "admin", "admin_layer": {}},
        )
    )
    rt.merge_values({"n": "5"})
    back = snapshot_from_wire(snapshot_to_wire(rt.snapshot))
    assert [(la.name, dict(la.entries)) for la in back.layers] == [
        (la.name, dict(la.entries)) for la in rt.snapshot.layers
    ]
    assert back.values == rt.snapshot.values
