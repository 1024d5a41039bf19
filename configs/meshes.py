"""Mesh presets selectable by name: `python -m pirl.train <preset> --mesh tpu-v5p-64`.

Each preset is a `MeshConfig` value with fixed sizes, so running it on a machine with another device
count fails early with both numbers. `--mesh` replaces the preset's whole `mesh` field; the
individual fields (`--mesh.axis-sizes 2 4`) can still be overridden after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import configs
from pirl.distributed.mesh import MESH_PRESETS, MeshConfig


def get_mesh(name: str) -> MeshConfig:
    """The mesh preset `name`; an unknown name raises with the list of valid names."""
    if name not in MESH_PRESETS:
        raise KeyError(configs.unknown_name_message("mesh", name, MESH_PRESETS))
    return MESH_PRESETS[name]


def pop_mesh_flag(argv: Sequence[str]) -> tuple[list[str], MeshConfig | None]:
    """Remove `--mesh NAME` / `--mesh=NAME` from argv; return the rest and the named mesh (or None)."""
    rest, mesh = [], None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--mesh":
            if i + 1 >= len(args):
                raise SystemExit(
                    f"error: --mesh needs a name; valid names: {', '.join(sorted(MESH_PRESETS))}"
                )
            name, i = args[i + 1], i + 2
        elif arg.startswith("--mesh="):
            name, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        try:
            mesh = get_mesh(name)
        except KeyError as e:
            raise SystemExit(f"error: {e.args[0]}") from None
    return rest, mesh


def with_mesh(config: Any, mesh: MeshConfig) -> Any:
    """A copy of `config` whose `mesh` field is `mesh`."""
    if not any(f.name == "mesh" for f in dataclasses.fields(config)):
        raise SystemExit(f"error: config type {type(config).__name__} has no mesh field")
    return dataclasses.replace(config, mesh=mesh)
