"""Training entry point: `python -m pirl.train <preset> [--overrides]`.

The preset names come from `configs/` (`--help` lists them); every field of the chosen preset can be
overridden on the command line, e.g. `python -m pirl.train pi0_libero_ppo --rl.update-epoch 2`.
A mesh preset can be picked by name with `--mesh <name>` (see `configs/meshes.py`).

A mistake the user can fix (a bad value, a missing file, a run directory that already holds another
run's checkpoints) ends the command with a one- or two-line message and exit status 2; `--debug` (or
PIRL_DEBUG=1) adds the traceback. SIGTERM saves an emergency checkpoint like Ctrl-C and exits 143.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import tyro

import configs
import pirl


def parse_config(argv: Sequence[str]) -> Any:
    """Resolve a preset name plus command-line overrides into a frozen config."""
    from configs import meshes

    presets = configs.all_presets()
    argv = list(argv)
    argv, presets = _rlinf_preset(argv, presets)
    if argv and not argv[0].startswith("-") and argv[0] not in presets:
        raise SystemExit("error: " + configs.unknown_name_message("config", argv[0], presets))
    argv, mesh = meshes.pop_mesh_flag(argv)
    if mesh is not None and argv and argv[0] in presets:
        desc, cfg = presets[argv[0]]
        presets = {**presets, argv[0]: (desc, meshes.with_mesh(cfg, mesh))}
    return tyro.extras.overridable_config_cli(presets, args=argv)


def _rlinf_preset(argv: list[str], presets: dict) -> tuple[list[str], dict]:
    """`--rlinf-config PATH [--rlinf-allow-unsupported]`: the RLinf YAML, read into an RL config,
    becomes the preset (named after the file) that the remaining overrides apply to."""
    from pirl.rl.rlinf_config import pop_rlinf_flags, read_rlinf_config

    argv, path, allow = pop_rlinf_flags(argv)
    if path is None:
        return argv, presets
    imported = read_rlinf_config(path, allow_unsupported=allow)
    print(imported.report(), file=sys.stderr)
    name = f"rlinf:{imported.config.name}"
    return [name, *argv], {name: (f"RLinf config {path}", imported.config)}


def run(config: Any) -> Any:
    """Run the training loop that matches the config's type."""
    from pirl.rl.config import RLConfig
    from pirl.sft.config import SFTConfig

    if isinstance(config, SFTConfig):
        from pirl.sft.train import train_sft

        return train_sft(config)
    if isinstance(config, RLConfig):
        from pirl.rl.trainer import train_rl

        return train_rl(config)
    raise TypeError(f"no training loop for config type {type(config).__name__}")


def check_devices(config: Any) -> None:
    """Fail now, before any environment or compilation, if the config's mesh does not fit the
    devices of this job (`jax.device_count()`, all processes); the message says what to change."""
    import jax

    from configs import meshes

    mesh = getattr(config, "mesh", None)
    if mesh is not None:
        meshes.check_mesh_fits(mesh, jax.device_count())


def main(argv: Sequence[str] | None = None) -> Any:
    """Parse, check and run (as a library call: exceptions propagate; `cli` is the command line)."""
    from pirl.distributed import multihost

    # Joins a multi-process job when the environment describes one (PIRL_*, SLURM, TPU pod).
    multihost.initialize()
    pirl.create_backends()  # XLA's CPU pool as pirl sizes it (see pirl/__init__.py)
    config = parse_config(sys.argv[1:] if argv is None else argv)
    check_devices(config)
    return run(config)


def cli() -> Any:
    """`python -m pirl.train`: `main` under `pirl.errors.run_cli` (user errors, --debug, SIGTERM)."""
    from pirl.errors import run_cli

    return run_cli(main)


if __name__ == "__main__":
    cli()
