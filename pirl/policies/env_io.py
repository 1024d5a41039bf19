"""On-device input/output adapter between pirl's environments and the π0 model.

The host-side transforms of `pirl.data` (repack → normalise → resize → tokenise → pad) turn one
dataset frame into a model input. Inside a compiled rollout there is no host, so this module does
the same with jnp on a whole batch: prompts are tokenised once on the host into a table indexed by
task id, the norm stats become arrays, and images are converted (and resized if needed) on device.

LIBERO mapping (openpi's `LiberoInputs`): agentview → `base_0_rgb`, wrist → `left_wrist_0_rgb`,
any further camera is zeros with its mask False. Actions: the first `action_env_dim` dims of the
first `action_chunk` steps, unnormalised and clipped to the env's [-1, 1] box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from pirl.models import pi0
from pirl.models.config import Pi0Config

NormType = Literal["zscore", "quantile", "none"]

ENV_CAMERAS = ("agentview_image", "wrist_image")
"""Env observation keys, in the order they fill the model's image_keys."""


@flax.struct.dataclass
class EnvAdapter:
    """Arrays that map env observations to model inputs and model actions back to env actions."""

    prompt_tokens: Int[Array, "tasks l"]
    """Tokenised prompt of every task (pad id 0)."""
    prompt_masks: Array
    """bool[tasks, L] True at real prompt tokens."""
    state_offset: Float[Array, " s"]
    """Normalised state = (state - offset) / scale (then ·2-1 for quantile stats)."""
    state_scale: Float[Array, " s"]
    """See state_offset."""
    action_offset: Float[Array, " a"]
    """Env action = model action · scale + offset (after undoing the quantile ·2-1)."""
    action_scale: Float[Array, " a"]
    """See action_offset."""
    norm_type: str = flax.struct.field(pytree_node=False, default="zscore")
    """'zscore', 'quantile' or 'none'."""
    action_chunk: int = flax.struct.field(pytree_node=False, default=5)
    """Leading action steps the env executes."""
    action_env_dim: int = flax.struct.field(pytree_node=False, default=7)
    """Leading action dims the env uses."""
    delta_action_dims: int = flax.struct.field(pytree_node=False, default=0)
    """Leading action dims the model predicts relative to the state (openpi's extra delta transform;
    pi0_libero: 6, the gripper stays absolute); 0 = absolute actions."""


def _affine(stats: dict | None, key: str, dim: int, norm_type: NormType) -> tuple[np.ndarray, np.ndarray]:
    if norm_type == "none" or stats is None:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)
    s = stats[key]
    if norm_type == "zscore":
        offset, scale = np.asarray(s["mean"]), np.asarray(s["std"]) + 1e-6
    elif norm_type == "quantile":
        offset, scale = np.asarray(s["q01"]), np.asarray(s["q99"]) - np.asarray(s["q01"]) + 1e-6
    else:
        raise ValueError(f"norm_type must be 'zscore', 'quantile' or 'none', got {norm_type!r}")
    if offset.shape[-1] < dim:
        raise ValueError(f"norm stats for {key!r} have {offset.shape[-1]} dims; the environment needs {dim}")
    return offset[:dim].astype(np.float32), scale[:dim].astype(np.float32)


def make_env_adapter(
    prompts: Sequence[str],
    tokenize: Callable[[str], tuple[np.ndarray, np.ndarray]],
    norm_stats: dict | None,
    *,
    state_dim: int = 8,
    action_env_dim: int = 7,
    action_chunk: int = 5,
    norm_type: NormType = "zscore",
    delta_action_dims: int = 0,
) -> EnvAdapter:
    """Build the adapter on the host: tokenise every task prompt, turn norm stats into arrays.

    `norm_stats` is openpi's {"state": {"mean", "std", "q01", "q99"}, "actions": {...}} (lists or
    arrays), or None for no normalisation.
    """
    if not prompts:
        raise ValueError("the environment has no task prompts")
    if not 0 <= delta_action_dims <= min(state_dim, action_env_dim):
        raise ValueError(
            f"delta_action_dims={delta_action_dims} must lie in [0, min(state_dim={state_dim}, action_env_dim={action_env_dim})]"
        )
    tokens, masks = zip(*(tokenize(p) for p in prompts), strict=True)
    s_off, s_scale = _affine(norm_stats, "state", state_dim, norm_type)
    a_off, a_scale = _affine(norm_stats, "actions", action_env_dim, norm_type)
    return EnvAdapter(
        prompt_tokens=jnp.asarray(np.stack(tokens), jnp.int32),
        prompt_masks=jnp.asarray(np.stack(masks), bool),
        state_offset=jnp.asarray(s_off),
        state_scale=jnp.asarray(s_scale),
        action_offset=jnp.asarray(a_off),
        action_scale=jnp.asarray(a_scale),
        norm_type="none" if norm_stats is None else norm_type,
        action_chunk=action_chunk,
        action_env_dim=action_env_dim,
        delta_action_dims=delta_action_dims,
    )


def _image_to_model(image: Array, resolution: tuple[int, int]) -> Float[Array, "b h w 3"]:
    """uint8 [B, h, w, 3] -> float32 in [-1, 1] at the model resolution (bilinear if it differs)."""
    x = image.astype(jnp.float32) / 255.0 * 2.0 - 1.0
    if x.shape[1:3] != tuple(resolution):
        x = jax.image.resize(x, (x.shape[0], *resolution, x.shape[-1]), method="bilinear")
    return x


def env_obs_to_model(
    adapter: EnvAdapter, model_cfg: Pi0Config, env_obs: dict[str, Array], task_id: Int[Array, " b"]
) -> pi0.Observation:
    """Batched env observations (uint8 images, raw state) -> the model's `Observation`."""
    state = env_obs["state"].astype(jnp.float32)
    batch = state.shape[0]
    norm_state = (state - adapter.state_offset) / adapter.state_scale
    if adapter.norm_type == "quantile":
        norm_state = norm_state * 2.0 - 1.0
    pad = model_cfg.action_dim - norm_state.shape[-1]
    if pad < 0:
        raise ValueError(
            f"env state has {norm_state.shape[-1]} dims > model.action_dim={model_cfg.action_dim}"
        )
    norm_state = jnp.pad(norm_state, ((0, 0), (0, pad)))
    cameras = [k for k in ENV_CAMERAS if k in env_obs]
    images, masks = {}, {}
    for i, key in enumerate(model_cfg.image_keys):
        if i < len(cameras):
            images[key] = _image_to_model(env_obs[cameras[i]], model_cfg.image_resolution)
            masks[key] = jnp.ones((batch,), bool)
        else:
            images[key] = jnp.zeros((batch, *model_cfg.image_resolution, 3), jnp.float32)
            masks[key] = jnp.zeros((batch,), bool)
    tokens = adapter.prompt_tokens[task_id]
    if tokens.shape[-1] != model_cfg.max_token_len:
        raise ValueError(
            f"prompts were tokenised to {tokens.shape[-1]} tokens; model.max_token_len is {model_cfg.max_token_len}"
        )
    return pi0.Observation(
        images=images,
        image_masks=masks,
        state=norm_state,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=adapter.prompt_masks[task_id],
    )


def _delta_shift(adapter: EnvAdapter, state: Array | None, ndim: int) -> Array | float:
    """The raw state added to (or subtracted from) the delta action dims, broadcast over the chunk."""
    if adapter.delta_action_dims == 0:
        return 0.0
    if state is None:
        raise ValueError(f"the adapter has delta_action_dims={adapter.delta_action_dims}: pass the env state")
    shift = jnp.zeros((*state.shape[:-1], adapter.action_env_dim), jnp.float32)
    shift = shift.at[..., : adapter.delta_action_dims].set(state[..., : adapter.delta_action_dims])
    return shift.reshape(shift.shape[:-1] + (1,) * (ndim - shift.ndim) + shift.shape[-1:])


def model_actions_to_env(
    adapter: EnvAdapter, actions: Float[Array, "b h a"], state: Float[Array, "b s"] | None = None
) -> Float[Array, "b c e"]:
    """Model actions [B, H, 32] -> env actions [B, action_chunk, action_env_dim] in [-1, 1].

    `state` (the raw env state of the observation) is needed when the model predicts delta actions.
    """
    x = actions[:, : adapter.action_chunk, : adapter.action_env_dim]
    if adapter.norm_type == "quantile":
        x = (x + 1.0) / 2.0
    x = x * adapter.action_scale + adapter.action_offset
    x = x + _delta_shift(adapter, state, x.ndim)
    return jnp.clip(x, -1.0, 1.0)


def env_actions_to_model(
    adapter: EnvAdapter, env_actions: Float[Array, "b h e"], action_dim: int, state: Array | None = None
) -> Array:
    """Inverse of `model_actions_to_env` without the clip (for SFT targets): normalise and zero-pad."""
    env_actions = env_actions - _delta_shift(adapter, state, env_actions.ndim)
    x = (env_actions - adapter.action_offset) / adapter.action_scale
    if adapter.norm_type == "quantile":
        x = x * 2.0 - 1.0
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, action_dim - x.shape[-1])])
