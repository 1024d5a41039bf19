"""openpi JAX checkpoints: an orbax PyTree checkpoint directory ``<ckpt>/params`` holding ``{"params": tree}``.

This is the layout of openpi's released checkpoints and of the ``params`` item its training writes
(``training/checkpoints.py``: a ``PyTreeCheckpointHandler`` item ``{"params": params}``). Checkpoints
saved from an ``nnx.State`` end every key path with an extra ``"value"`` level, which is stripped on
load exactly as openpi's ``restore_params`` does.

Parameter trees are plain nested dicts of arrays with openpi's names; flat keys join the path with
``/`` (e.g. ``PaliGemma/llm/layers/attn/q_einsum/w``).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from pirl.errors import UserError

logger = logging.getLogger(__name__)

Params = dict[str, Any]
"""A nested dict of arrays (numpy, jax, or jax.ShapeDtypeStruct for abstract trees)."""
Shape = tuple[int, ...]

_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")


class CheckpointMismatchError(UserError):
    """A checkpoint's keys or shapes differ from the expected parameter tree."""


# ----------------------------------------------------------------------------------------------
# Flat views of nested parameter dicts.


def flatten_params(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}, in insertion order. Empty sub-dicts are dropped."""
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                visit(value, path)
            else:
                flat[path] = value

    visit(tree, "")
    return flat


def unflatten_params(flat: Mapping[str, Any], sep: str = "/") -> Params:
    """{"a/b/c": leaf} -> nested dict (inverse of `flatten_params`)."""
    tree: Params = {}
    for path, value in flat.items():
        *parents, last = path.split(sep)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return tree


def _shape_of(leaf: Any) -> Shape:
    return tuple(int(d) for d in np.shape(leaf))  # arrays and jax.ShapeDtypeStruct alike


def strip_value_suffix(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Drops the trailing "/value" level that nnx.State adds, if (and only if) every key has it."""
    if flat and all(k == "value" or k.endswith("/value") for k in flat):
        return {k.removesuffix("value").removesuffix("/"): v for k, v in flat.items()}
    return dict(flat)


# ----------------------------------------------------------------------------------------------
# Validation against an expected tree.


def resolve_expected(expected: Any) -> Params:
    """An abstract parameter tree from either a tree (arrays or ShapeDtypeStructs) or a model config.

    A config is anything with the fields of `pirl.models.config.Pi0Config`; its tree comes from
    `pirl.models.pi0.abstract_params` (jax.eval_shape, no memory is allocated).
    """
    if isinstance(expected, Mapping):
        return dict(expected)
    if dataclasses.is_dataclass(expected) and hasattr(expected, "paligemma_variant"):
        from pirl.models import pi0

        return pi0.abstract_params(expected)
    raise TypeError(
        f"expected must be a parameter tree (nested dict) or a Pi0Config, got {type(expected).__name__}"
    )


def check_params_match(
    expected: Mapping[str, Shape],
    found: Mapping[str, Shape],
    *,
    source: str,
    missing_ok: Callable[[str], bool] | None = None,
    unexpected_ok: bool = False,
) -> None:
    """Raises CheckpointMismatchError naming the first (in sorted key order) missing, unexpected or
    mis-shaped key; the message also counts and lists a few of the other problems.

    expected / found: flat {"a/b/c": shape}. missing_ok(key) -> True lets a key be absent.
    """
    problems: list[tuple[str, str]] = []
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            if missing_ok is None or not missing_ok(key):
                problems.append((key, f"missing key '{key}' (expected shape {tuple(expected[key])})"))
        elif key not in expected:
            if not unexpected_ok:
                problems.append((key, f"unexpected key '{key}' (shape {tuple(found[key])})"))
        elif tuple(expected[key]) != tuple(found[key]):
            problems.append(
                (
                    key,
                    f"mis-shaped key '{key}': expected shape {tuple(expected[key])}, found {tuple(found[key])}",
                )
            )
    if not problems:
        return
    first = problems[0][1]
    more = ""
    if len(problems) > 1:
        listed = "; ".join(p for _, p in problems[1:6])
        ellipsis = "; ..." if len(problems) > 6 else ""
        more = f" ({len(problems) - 1} more problem(s): {listed}{ellipsis})"
    raise CheckpointMismatchError(
        f"{source} does not match the expected parameter tree: {first}{more}. "
        "Check that both come from the same model config (pi05, Gemma / SigLIP variants, action_dim, "
        "image resolution, vocab size, LoRA)."
    )


# ----------------------------------------------------------------------------------------------
# Orbax directory handling.


def _is_orbax_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _ORBAX_MARKERS)


def find_params_dir(path: str | pathlib.Path) -> pathlib.Path:
    """The orbax ``params`` directory for `path`, which may be the checkpoint dir or ``<ckpt>/params``."""
    path = pathlib.Path(path).expanduser().resolve()
    candidates = [path / "params", path]
    for candidate in candidates:
        if _is_orbax_dir(candidate):
            return candidate
    if not path.exists():
        raise FileNotFoundError(
            f"openpi checkpoint not found: looked for an orbax params directory at {path / 'params'} "
            f"(or {path} itself), but {path} does not exist"
        )
    raise FileNotFoundError(
        f"no orbax params checkpoint at {path / 'params'} or {path}: neither holds an orbax "
        f"{'/'.join(_ORBAX_MARKERS[:2])} file. Pass the checkpoint directory (the one containing "
        "'params/' and usually 'assets/')."
    )


def _tree_metadata(ckptr: ocp.PyTreeCheckpointer, params_dir: pathlib.Path) -> Mapping[str, Any]:
    """The saved tree's metadata ({"params": {...: ArrayMetadata}}), across orbax API versions."""
    metadata = ckptr.metadata(params_dir)
    item = getattr(metadata, "item_metadata", metadata)  # orbax >= 0.11 wraps it in StepMetadata
    tree = getattr(item, "tree", item)
    if not isinstance(tree, Mapping) or "params" not in tree:
        keys = list(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise CheckpointMismatchError(
            f"{params_dir} is an orbax checkpoint but not an openpi params checkpoint: its top level "
            f"should be {{'params': tree}}, found {keys}"
        )
    return tree


def read_checkpoint_shapes(path: str | pathlib.Path) -> dict[str, Shape]:
    """Flat {key: shape} of an openpi params checkpoint, read from metadata only ("value" stripped)."""
    params_dir = find_params_dir(path)
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = _tree_metadata(ckptr, params_dir)
    flat = strip_value_suffix(flatten_params(tree["params"]))
    return {k: tuple(v.shape) for k, v in flat.items()}


def _missing_matcher(missing_regex: str | None) -> Callable[[str], bool] | None:
    if missing_regex is None:
        return None
    pattern = re.compile(missing_regex)
    return lambda key: pattern.fullmatch(key) is not None


def load_openpi_params(
    path: str | pathlib.Path,
    expected: Any = None,
    dtype: Any = None,
    *,
    sharding: jax.sharding.Sharding | Mapping[str, Any] | None = None,
    missing_regex: str | None = None,
    ignore_unexpected: bool = False,
) -> Params:
    """Restores an openpi params checkpoint as a nested dict of arrays.

    Args:
      path: the checkpoint directory (containing ``params/``) or the ``params`` directory itself.
      expected: a parameter tree (arrays or jax.ShapeDtypeStruct), a Pi0Config, or None (no check).
        The checkpoint's keys and shapes are checked against it from metadata, before any data is
        read; the first missing / unexpected / mis-shaped key is named in the error.
      dtype: cast every leaf to this dtype while restoring; None keeps the stored dtypes.
      sharding: None restores numpy arrays on the host. A jax.sharding.Sharding restores every leaf
        as a jax.Array with it; a nested dict of shardings (same structure as the params) sets one
        per leaf.
      missing_regex: expected keys matching this regex (fullmatch) may be absent from the checkpoint,
        e.g. ".*lora.*" to load a base checkpoint into a LoRA model; they are absent from the result
        too (fill them with `merge_missing_params`).
      ignore_unexpected: drop checkpoint keys the expected tree lacks instead of failing (openpi's
        model.load does this); they are not restored.

    Returns: {"PaliGemma": {...}, "action_in_proj": {...}, ...} without openpi's "value" level.
    """
    params_dir = find_params_dir(path)
    with ocp.PyTreeCheckpointer() as ckptr:
        tree_md = _tree_metadata(ckptr, params_dir)
        raw_flat = flatten_params(tree_md["params"])
        stripped = strip_value_suffix(raw_flat)
        raw_key = dict(zip(stripped, raw_flat, strict=True))  # stripped key -> key as saved
        has_value_level = any(k != raw for k, raw in raw_key.items())

        keep = set(stripped)
        if expected is not None:
            expected_flat = flatten_params(resolve_expected(expected))
            check_params_match(
                {k: _shape_of(v) for k, v in expected_flat.items()},
                {k: tuple(v.shape) for k, v in stripped.items()},
                source=f"openpi checkpoint {params_dir}",
                missing_ok=_missing_matcher(missing_regex),
                unexpected_ok=ignore_unexpected,
            )
            keep &= set(expected_flat)
        elif missing_regex is not None or ignore_unexpected:
            raise ValueError("missing_regex / ignore_unexpected need an expected tree to compare against")

        flat_shardings = None
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            flat_shardings = flatten_params(sharding)
            absent = sorted(keep - set(flat_shardings))
            if absent:
                raise ValueError(f"sharding tree has no entry for checkpoint key '{absent[0]}'")

        def restore_args(key: str) -> ocp.RestoreArgs:
            if sharding is None:
                return ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
            leaf_sharding = sharding if flat_shardings is None else flat_shardings[key]
            return ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=leaf_sharding, dtype=dtype)

        # Restore only the kept keys, in the checkpoint's own (possibly "value"-suffixed) layout.
        item = unflatten_params({raw_key[k]: stripped[k] for k in stripped if k in keep})
        args = unflatten_params({raw_key[k]: restore_args(k) for k in stripped if k in keep})
        restored = ckptr.restore(
            params_dir,
            args=ocp.args.PyTreeRestore(
                item={"params": item},
                restore_args={"params": args},
                partial_restore=len(keep) < len(stripped),
            ),
        )["params"]
    flat = flatten_params(restored)
    if has_value_level:
        flat = strip_value_suffix(flat)
    if expected is not None:  # the expected tree's key order (orbax returns sorted keys)
        flat = {k: flat[k] for k in expected_flat if k in flat}
    return unflatten_params(flat)


def save_openpi_params(
    params: Mapping[str, Any], path: str | pathlib.Path, *, overwrite: bool = False
) -> pathlib.Path:
    """Writes `params` as openpi does: an orbax PyTree checkpoint ``<path>/params`` holding
    ``{"params": params}`` (leaves saved as jax.Arrays, their dtypes kept). `path` is the checkpoint
    directory; openpi's loaders read ``<path>/params``. Returns the params directory.

    Raises FileExistsError if ``<path>/params`` exists, unless overwrite=True.
    """
    path = pathlib.Path(path).expanduser().resolve()
    params_dir = path / "params"
    if params_dir.exists() and not overwrite:
        raise FileExistsError(f"{params_dir} already exists; pass overwrite=True to replace it")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty nested dict of arrays")
    # openpi's training saves jax.Arrays (with shardings); numpy leaves become host (CPU) jax.Arrays so
    # the stored metadata matches what openpi's restore_params (restore_type=jax.Array) expects,
    # without passing through accelerator memory.
    device = jax.local_devices(backend="cpu")[0]
    as_jax = jax.tree.map(
        lambda x: x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x), device), params
    )
    path.mkdir(parents=True, exist_ok=True)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(params_dir, args=ocp.args.PyTreeSave({"params": as_jax}), force=overwrite)
    return params_dir


def merge_missing_params(loaded: Mapping[str, Any], defaults: Mapping[str, Any]) -> Params:
    """`loaded` with every key it lacks taken from `defaults` (e.g. fresh LoRA weights from init_params).

    Keys of `loaded` that `defaults` lacks are an error: the result has exactly the structure of `defaults`.
    """
    flat_loaded, flat_defaults = flatten_params(loaded), flatten_params(defaults)
    extra = sorted(set(flat_loaded) - set(flat_defaults))
    if extra:
        raise CheckpointMismatchError(f"loaded params have key '{extra[0]}' that the default tree lacks")
    return unflatten_params({k: flat_loaded.get(k, v) for k, v in flat_defaults.items()})
