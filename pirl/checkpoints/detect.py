"""Which kind of checkpoint a path holds, and its model parameters, decided in one place.

Kinds: "pytorch" (openpi-PyTorch / RLinf: a .safetensors file or a directory holding *.safetensors),
"pirl_run" (a pirl RL / SFT run: `<run>/checkpoints/<step>/state`, or the run's checkpoints/ or
a step directory; the latest step is used; an SFT step's openpi-layout `params/` export is read) and "openpi_jax" (an orbax `<ckpt>/params` tree).
The trainer's `--init-checkpoint`, `pirl.eval --checkpoint` and `pirl.serve --checkpoint` all load
through `load_checkpoint_params`.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np

from pirl.errors import MissingPathError, UserError

CheckpointKind = Literal["pytorch", "pirl_run", "openpi_jax"]

logger = logging.getLogger(__name__)


def _is_step_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "state").is_dir()


def find_pirl_step_dir(path: str | pathlib.Path) -> pathlib.Path | None:
    """The pirl train-state step directory `path` names (a run dir, its `checkpoints/`, or a step
    dir; the latest step is used), or None when `path` is not a pirl run checkpoint."""
    path = pathlib.Path(path).expanduser().resolve()
    if _is_step_dir(path):
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            steps = sorted((p for p in folder.iterdir() if _is_step_dir(p)), key=lambda p: int(p.name))
            if steps:
                return steps[-1]
    return None


def pirl_run_dir(step_dir: pathlib.Path) -> pathlib.Path:
    """`<run>` of `<run>/checkpoints/<step>`."""
    return step_dir.parent.parent if step_dir.parent.name == "checkpoints" else step_dir.parent


def checkpoint_kind(path: str | pathlib.Path) -> CheckpointKind:
    """ "pytorch", "pirl_run" or "openpi_jax" (see the module docstring); a missing path raises."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise MissingPathError(f"checkpoint {path} does not exist; pass the directory of a checkpoint")
    if (path.is_file() and path.suffix == ".safetensors") or (
        path.is_dir() and any(path.glob("*.safetensors"))
    ):
        return "pytorch"
    if path.is_dir() and find_pirl_step_dir(path) is not None:
        return "pirl_run"
    return "openpi_jax"


def load_pirl_run_params(step_dir: str | pathlib.Path) -> dict:
    """The model parameters of a pirl train-state checkpoint (`state["params"]["model"]`, or
    `state["params"]` for trees without a policy level), restored as numpy arrays."""
    import orbax.checkpoint as ocp

    state_dir = pathlib.Path(step_dir) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
        metadata = ckptr.metadata(state_dir)
        tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
        if not isinstance(tree, Mapping) or "params" not in tree:
            raise ValueError(f"{state_dir} is not a pirl train state: it has no 'params' entry")
        params_md = tree["params"]
        wrapped = isinstance(params_md, Mapping) and "model" in params_md
        item = {"params": {"model": params_md["model"]}} if wrapped else {"params": params_md}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    return restored["params"]["model"] if wrapped else restored["params"]


def load_checkpoint_params(checkpoint: str | pathlib.Path, model_cfg: Any, dtype: Any = None) -> dict:
    """Model params (openpi's tree) from a checkpoint of any kind, checked against `model_cfg`'s
    parameter tree (`pi0.abstract_params`): a missing, unexpected or mis-shaped parameter raises
    `CheckpointMismatchError` naming the first. `dtype` casts every leaf."""
    from pirl.checkpoints.openpi_jax import check_params_match, flatten_params, load_openpi_params
    from pirl.checkpoints.pytorch import load_pytorch_params
    from pirl.models import pi0

    path = pathlib.Path(checkpoint).expanduser()
    kind = checkpoint_kind(path)
    logger.info("loading %s checkpoint %s", kind, path)
    if kind == "pytorch":
        return load_pytorch_params(path, model_cfg, dtype=dtype)
    expected = pi0.abstract_params(model_cfg)
    if kind == "openpi_jax":
        return load_openpi_params(path, expected=expected, dtype=dtype)
    step_dir = find_pirl_step_dir(path)
    if (step_dir / "params").is_dir():  # an SFT step: its openpi-layout export (EMA when on)
        return load_openpi_params(step_dir, expected=expected, dtype=dtype)
    params = load_pirl_run_params(step_dir)
    found, want = flatten_params(params), flatten_params(expected)
    check_params_match(
        {k: tuple(v.shape) for k, v in want.items()},
        {k: tuple(np.shape(v)) for k, v in found.items()},
        source=f"pirl checkpoint {step_dir}",
    )
    for key, value in found.items():  # the model computes in floating point; ints would be a wrong file
        if not np.issubdtype(np.asarray(value).dtype, np.floating):
            raise UserError(
                f"pirl checkpoint {step_dir}: parameter '{key}' has dtype {np.asarray(value).dtype}, "
                f"expected {want[key].dtype} (or another float dtype) of shape {tuple(want[key].shape)}"
            )
    return params if dtype is None else jax.tree.map(lambda x: np.asarray(x, dtype), params)
