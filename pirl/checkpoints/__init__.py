"""Checkpoint import and export.

Owns reading and writing π0 / π0.5 parameters in the two public formats:
openpi's JAX checkpoints (an orbax PyTree directory ``<ckpt>/params`` holding
``{"params": tree}``, see :mod:`pirl.checkpoints.openpi_jax`) and openpi's PyTorch
port (``model.safetensors`` as published by RLinf, see :mod:`pirl.checkpoints.pytorch`).
Parameter trees are plain nested dicts with openpi's names; flat keys use ``/``.
pirl's own train-state checkpoints (async orbax saves, resume, corruption fallback) live in
:mod:`pirl.checkpoints.train_state`. Which kind a path holds is decided once, in
:mod:`pirl.checkpoints.detect` (`load_checkpoint_params`).
"""

from pirl.checkpoints.detect import (
    checkpoint_kind,
    find_pirl_step_dir,
    load_checkpoint_params,
    load_pirl_run_params,
    pirl_run_dir,
)
from pirl.checkpoints.openpi_jax import (
    CheckpointMismatchError,
    check_params_match,
    flatten_params,
    load_openpi_params,
    merge_missing_params,
    save_openpi_params,
    unflatten_params,
)
from pirl.checkpoints.pytorch import (
    export_pytorch_params,
    load_pytorch_params,
    load_pytorch_state_dict,
    merge_lora_params,
    pytorch_key_map,
)

__all__ = [
    "CheckpointMismatchError",
    "check_params_match",
    "checkpoint_kind",
    "find_pirl_step_dir",
    "load_checkpoint_params",
    "load_pirl_run_params",
    "pirl_run_dir",
    "export_pytorch_params",
    "flatten_params",
    "load_openpi_params",
    "load_pytorch_params",
    "load_pytorch_state_dict",
    "merge_lora_params",
    "merge_missing_params",
    "pytorch_key_map",
    "save_openpi_params",
    "unflatten_params",
]
