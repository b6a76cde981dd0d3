"""Emitting a loaded config as v3 YAML that current Envoy (1.40) accepts.

Starts from `LoadedConfig.v3` (already v3, `@type`s filled in by `normalize`) and applies the
few rewrites only Envoy needs: the deprecated admin `access_log_path` becomes an `access_log`
file logger. podproxy's own defaults (e.g. `server_name: podproxy`) are not emitted, so Envoy
runs with its defaults.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from podproxy.config.loader import LoadedConfig
from podproxy.config.schema import FILE_ACCESS_LOG_TYPE

FILE_ACCESS_LOGGER = "envoy.access_loggers.file"


def to_v3_dict(loaded: LoadedConfig) -> dict[str, Any]:
    """The v3 mapping Envoy should be given for `loaded`."""
    out = copy.deepcopy(loaded.v3)
    admin = out.get("admin")
    if isinstance(admin, dict) and "access_log_path" in admin:
        path = admin.pop("access_log_path")
        logger = {
            "name": FILE_ACCESS_LOGGER,
            "typed_config": {"@type": FILE_ACCESS_LOG_TYPE, "path": path},
        }
        admin["access_log"] = [logger, *admin.get("access_log", [])]
    return out


class _Dumper(yaml.SafeDumper):
    """Block-style YAML; lists indented under their key as in Envoy's own examples."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def to_v3_yaml(loaded: LoadedConfig) -> str:
    """YAML for `envoy -c`: passes `envoy --mode validate` for every config podproxy loads."""
    return yaml.dump(to_v3_dict(loaded), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
