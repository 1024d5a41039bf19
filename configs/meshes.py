"""Mesh presets selectable by name: `python -m pirl.train <preset> --mesh tpu-v5p-64`.

Each preset is a `MeshConfig` value with fixed sizes, so running it on a machine with another device
count fails early with both numbers (`check_mesh_fits`, called by `pirl.train` before it builds
environments or compiles anything). `--mesh` replaces the preset's whole `mesh` field; the
individual fields (`--mesh.axis-sizes 2 4`) can still be overridden after it.
"""

from __future__ import annotations

import dataclasses
import math
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


def presets_for(num_devices: int) -> list[str]:
    """Names of the mesh presets that fit exactly `num_devices` devices."""
    return sorted(
        name
        for name, cfg in MESH_PRESETS.items()
        if -1 not in cfg.axis_sizes and math.prod(cfg.axis_sizes) == num_devices
    )


def suggested_axis_sizes(mesh: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """Sizes like `mesh`'s that fit `num_devices`: the fsdp axis keeps as much of its size as
    divides the device count, the first other axis takes the rest (-1), further axes become 1."""
    sizes, fill_placed = [], False
    fsdp = mesh.axis_sizes[mesh.axis_names.index(mesh.fsdp_axis)] if mesh.fsdp_axis in mesh.axis_names else 1
    for name in mesh.axis_names:
        if name == mesh.fsdp_axis:
            sizes.append(math.gcd(max(fsdp, 1), num_devices) if len(mesh.axis_names) > 1 else -1)
        elif not fill_placed:
            sizes.append(-1)
            fill_placed = True
        else:
            sizes.append(1)
    return tuple(sizes)


def check_mesh_fits(mesh: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """The mesh's resolved axis sizes on `num_devices` devices, or SystemExit saying what to change.

    Cheap (no devices touched, nothing compiled): `pirl.train` calls it with `jax.device_count()`
    (all processes' devices) right after parsing the command line.
    """
    try:
        return mesh.resolve_sizes(num_devices)
    except ValueError as error:
        fitting = presets_for(num_devices)
        preset_hint = (
            f"pick a mesh preset for {num_devices} devices (--mesh {' / --mesh '.join(fitting)}) or "
            if fitting
            else f"no mesh preset has {num_devices} devices; "
        )
        sizes = " ".join(str(s) for s in suggested_axis_sizes(mesh, num_devices))
        raise SystemExit(
            f"error: {error}.\nThis job sees jax.device_count() = {num_devices} devices (all processes); "
            f"{preset_hint}set the sizes with --mesh.axis-sizes, e.g. --mesh.axis-sizes {sizes} "
            f"(axes {', '.join(mesh.axis_names)}; -1 = the remaining devices)"
        ) from None
