"""Per-sample data transforms with openpi's semantics, as small pure functions.

Each transform takes a sample dict (numpy leaves, no batch axis needed) and returns a new dict; the
input is never modified. Compose them with `compose` (or `functools.partial` + `compose`). The
order openpi uses, and `pirl.data.configs.make_transforms` builds, is:

    prompt_from_task -> repack -> robot_inputs -> delta_actions -> normalize
      -> resize_images -> tokenize_prompt -> pad_states_and_actions

Inference reverses the action part: unnormalize -> absolute_actions -> robot_outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, UInt8
from openpi_client import image_tools

from pirl.data.normalize import NormStats, normalize_values, unnormalize_values

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

MODEL_IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


class Tokenizer(Protocol):
    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply `transforms` left to right."""

    def composed(sample: Sample) -> Sample:
        for transform in transforms:
            sample = transform(sample)
        return sample

    return composed


# ---------------------------------------------------------------------------------------------
# Nested-dict helpers ("/"-separated flat keys, as openpi).


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, path))
        else:
            out[path] = value
    return out


def unflatten_dict(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def repack(sample: Sample, structure: Mapping[str, Any]) -> Sample:
    """Build a new dict whose leaves are `sample`'s values at the flat paths in `structure`.

    `structure` maps new keys (possibly nested) to "/"-separated paths of the old dict, e.g.
    {"observation/image": "image", "actions": "actions"}. A missing old key raises, naming it.
    """
    flat = flatten_dict(sample)

    def pick(path: str) -> Any:
        if path not in flat:
            raise KeyError(f"repack: sample has no key {path!r} (keys: {sorted(flat)})")
        return flat[path]

    def build(node: Any) -> Any:
        return {k: build(v) for k, v in node.items()} if isinstance(node, Mapping) else pick(node)

    return build(structure)


# ---------------------------------------------------------------------------------------------
# Prompt, state and actions.


def prompt_from_task(sample: Sample, tasks: Mapping[int, str]) -> Sample:
    """Set "prompt" to the LeRobot task string of the sample's "task_index"."""
    if "task_index" not in sample:
        raise KeyError('prompt_from_task needs "task_index" in the sample')
    task_index = int(sample["task_index"])
    if task_index not in tasks:
        raise KeyError(f"task_index {task_index} not in the dataset's tasks {sorted(tasks)}")
    return {**sample, "prompt": tasks[task_index]}


def inject_default_prompt(sample: Sample, prompt: str | None) -> Sample:
    """Set "prompt" when the sample has none."""
    if prompt is None or "prompt" in sample:
        return sample
    return {**sample, "prompt": prompt}


def make_bool_mask(*dims: int) -> tuple[bool, ...]:
    """(2, -1, 3) -> (True, True, False, True, True, True): positive = True run, negative = False run."""
    out: list[bool] = []
    for d in dims:
        out.extend([d > 0] * abs(d))
    return tuple(out)


def shift_actions(actions, state, mask: Sequence[bool] | None, sign: float):
    """actions[..., :m] += sign * state[..., :m] where mask (m = len(mask)), on numpy or JAX arrays.

    `actions` is [..., H, D] and `state` [..., S] (one state per chunk); dims beyond the mask and
    masked-off dims are unchanged. sign -1: openpi's DeltaActions; +1: its AbsoluteActions.
    """
    if mask is None:
        return actions
    xp = jnp if isinstance(actions, jax.Array) or isinstance(state, jax.Array) else np
    m = len(mask)
    shift = xp.where(xp.asarray(mask, bool), state[..., :m], 0.0)
    pad = [(0, 0)] * (shift.ndim - 1) + [(0, actions.shape[-1] - m)]
    return actions + sign * xp.expand_dims(xp.pad(shift, pad), axis=-2).astype(actions.dtype)


def delta_actions(sample: Sample, mask: Sequence[bool] | None) -> Sample:
    """actions[..., :m] -= state[..., :m] where mask (m = len(mask)); other dims stay absolute.

    Works on a chunk (actions [H, D], state [S]) and on batches ([..., H, D] / [..., S]).
    """
    if mask is None or "actions" not in sample:
        return sample
    actions = np.asarray(sample["actions"])
    return {**sample, "actions": shift_actions(actions, np.asarray(sample["state"]), mask, -1.0)}


def absolute_actions(sample: Sample, mask: Sequence[bool] | None) -> Sample:
    """Inverse of `delta_actions`: actions[..., :m] += state[..., :m] where mask."""
    if mask is None or "actions" not in sample:
        return sample
    actions = np.asarray(sample["actions"])
    return {**sample, "actions": shift_actions(actions, np.asarray(sample["state"]), mask, 1.0)}


def pad_to_dim(x: np.ndarray, target_dim: int, axis: int = -1, value: float = 0.0) -> np.ndarray:
    """Pad `x` with `value` along `axis` up to `target_dim` (no-op when already that large)."""
    x = np.asarray(x)
    if x.shape[axis] >= target_dim:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, target_dim - x.shape[axis])
    return np.pad(x, widths, constant_values=value)


def pad_states_and_actions(sample: Sample, action_dim: int) -> Sample:
    """Zero-pad "state" [.., S] and "actions" [.., H, A] to the model's action_dim."""
    out = {**sample, "state": pad_to_dim(sample["state"], action_dim)}
    if "actions" in sample:
        out["actions"] = pad_to_dim(sample["actions"], action_dim)
    return out


# ---------------------------------------------------------------------------------------------
# Normalisation (only over the statistics' dims; no clipping).


def _check_quantiles(norm_stats: Mapping[str, NormStats]) -> None:
    for key, stats in norm_stats.items():
        if stats.q01 is None or stats.q99 is None:
            raise ValueError(f"quantile normalisation needs q01/q99, but the stats of {key!r} have none")


def normalize(
    sample: Sample, norm_stats: Mapping[str, NormStats] | None, use_quantiles: bool = False
) -> Sample:
    """z-score (x − mean)/(std + 1e-6), or quantile (x − q01)/(q99 − q01 + 1e-6)·2 − 1, per stats key.

    Keys are flat "/"-paths (e.g. "state", "actions"); keys absent from the sample are skipped.
    """
    if not norm_stats:
        return sample
    if use_quantiles:
        _check_quantiles(norm_stats)
    flat = flatten_dict(sample)
    for key, stats in norm_stats.items():
        if key in flat:
            flat[key] = normalize_values(np.asarray(flat[key], np.float32), stats, use_quantiles)
    return unflatten_dict(flat)


def unnormalize(
    sample: Sample, norm_stats: Mapping[str, NormStats] | None, use_quantiles: bool = False
) -> Sample:
    """Inverse of `normalize`; dims beyond the stats are left as they are. Every stats key must exist."""
    if not norm_stats:
        return sample
    if use_quantiles:
        _check_quantiles(norm_stats)
    flat = flatten_dict(sample)
    for key, stats in norm_stats.items():
        if key not in flat:
            raise KeyError(f"unnormalize: sample has no key {key!r} (keys: {sorted(flat)})")
        flat[key] = unnormalize_values(np.asarray(flat[key], np.float32), stats, use_quantiles)
    return unflatten_dict(flat)


# ---------------------------------------------------------------------------------------------
# Images.


def resize_with_pad(
    images: UInt8[np.ndarray, "*b h w c"], height: int, width: int
) -> UInt8[np.ndarray, "*b {height} {width} c"]:
    """Aspect-preserving bilinear resize then zero padding to [height, width]: openpi_client's
    `image_tools.resize_with_pad` (PIL; what openpi's policies apply), restricted to uint8 images.

    Images already of the target size are returned unchanged.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"resize_with_pad expects uint8 images, got {images.dtype}")
    return image_tools.resize_with_pad(images, height, width)


def to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (255·x, truncated, as openpi); CHW -> HWC."""
    image = image_tools.convert_to_uint8(np.asarray(image))
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = np.transpose(image, (1, 2, 0))
    return image


def resize_images(sample: Sample, height: int, width: int) -> Sample:
    """resize_with_pad every image in sample["image"]."""
    return {**sample, "image": {k: resize_with_pad(v, height, width) for k, v in sample["image"].items()}}


def images_to_float(images: UInt8[np.ndarray, "*b h w c"]) -> Float[np.ndarray, "*b h w c"]:
    """uint8 [0, 255] -> float32 [-1, 1] (x / 255 · 2 − 1)."""
    return np.asarray(images, np.float32) / 255.0 * 2.0 - 1.0


# ---------------------------------------------------------------------------------------------
# Tokenisation.


def tokenize_prompt(sample: Sample, tokenizer: Tokenizer, discrete_state_input: bool = False) -> Sample:
    """Replace "prompt" by "tokenized_prompt" int32[L] and "tokenized_prompt_mask" bool[L].

    With `discrete_state_input` (π0.5) the normalised state goes into the prompt as well.
    """
    if "prompt" not in sample:
        raise KeyError('tokenize_prompt needs a "prompt": set prompt_from_task or a default prompt')
    prompt = sample["prompt"]
    if isinstance(prompt, np.ndarray):
        prompt = prompt.item()
    if isinstance(prompt, bytes):
        prompt = prompt.decode()
    state = np.asarray(sample["state"]) if discrete_state_input else None
    tokens, mask = tokenizer.tokenize(str(prompt), state)
    out = {k: v for k, v in sample.items() if k != "prompt"}
    out["tokenized_prompt"] = np.asarray(tokens, np.int32)
    out["tokenized_prompt_mask"] = np.asarray(mask, bool)
    return out


# ---------------------------------------------------------------------------------------------
# Robot adapters (openpi's LiberoInputs / LiberoOutputs and friends, parameterised).


def robot_inputs(
    sample: Sample,
    cameras: Mapping[str, str],
    state_keys: Sequence[str] = ("observation/state",),
    action_keys: Sequence[str] = ("actions",),
    image_keys: Sequence[str] = MODEL_IMAGE_KEYS,
    mask_padding_images: bool = True,
) -> Sample:
    """Map a repacked sample to the model's inputs {"state", "image", "image_mask", "actions", "prompt"}.

    `cameras` maps model image keys (base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb) to sample keys.
    Model cameras without a source get zeros like the first camera, masked out
    (`mask_padding_images`, True for π0 and π0.5; openpi unmasks them only for π0-FAST). Several state
    or action keys are concatenated along the last axis (e.g. CALVIN's pos / rot / gripper).
    """
    unknown = [k for k in cameras if k not in image_keys]
    if unknown:
        raise KeyError(f"cameras {unknown} are not model image keys {list(image_keys)}")
    if not cameras:
        raise ValueError("robot_inputs needs at least one camera")
    images = {k: to_uint8_hwc(sample[src]) for k, src in cameras.items()}
    reference = next(iter(images.values()))
    out: Sample = {
        "state": np.concatenate([np.asarray(sample[k], np.float32).reshape(-1) for k in state_keys]),
        "image": {k: images.get(k, np.zeros_like(reference)) for k in image_keys},
        "image_mask": {k: np.bool_(k in images or not mask_padding_images) for k in image_keys},
    }
    if all(k in sample for k in action_keys):
        out["actions"] = np.concatenate([np.asarray(sample[k], np.float32) for k in action_keys], axis=-1)
    if "prompt" in sample:
        out["prompt"] = sample["prompt"]
    return out


libero_inputs = functools.partial(
    robot_inputs,
    cameras={"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"},
)
libero_inputs.__doc__ = (
    "openpi's LiberoInputs: observation/image -> base, observation/wrist_image -> left wrist."
)


def robot_outputs(sample: Sample, action_dim: int) -> Sample:
    """The first `action_dim` action dims (drops the model's padding): {"actions": [..., action_dim]}."""
    return {"actions": np.asarray(sample["actions"])[..., :action_dim]}


libero_outputs = functools.partial(robot_outputs, action_dim=7)
libero_outputs.__doc__ = "openpi's LiberoOutputs: the first 7 action dims."
