"""On-device input/output adapter between pirl's environments and the π0 model, built from the
policy's data config.

The host-side transforms of `pirl.data` (repack → robot inputs → normalise → resize → tokenise →
pad) turn one observation dict into a model input. Inside a compiled rollout there is no host, so
this module does the same with jnp on a whole batch, from the same `DataConfig` and with the same
normalisation and delta-action functions (`pirl.data.normalize.normalize_values`,
`pirl.data.transforms.shift_actions`): prompts are tokenised once on the host into a table indexed
by task id, the norm stats become arrays, and images are converted (and resized if needed) on
device.

Environment observations use the LIBERO client's names (`ENV_OBS_KEYS`: the data config's
"observation/image" is the env's `agentview_image`, "observation/wrist_image" its `wrist_image`,
"observation/state" its `state`), so the data config's camera map decides which env camera fills
which model image key (openpi's `LiberoInputs`); model cameras it does not name are zeros, masked
out. Actions: the first `action_env_dim` dims of the first `action_chunk` steps, unnormalised,
made absolute where the data config's delta mask says (openpi's `AbsoluteActions` with the raw
state), and clipped to the env's [-1, 1] box.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from pirl.data.configs import DataConfig
from pirl.data.normalize import NormStats, normalize_values, stats_dims, unnormalize_values
from pirl.data.transforms import shift_actions
from pirl.errors import UserError
from pirl.models import pi0
from pirl.models.config import IMAGE_KEYS, Pi0Config

ENV_OBS_KEYS = {
    "observation/image": "agentview_image",
    "observation/wrist_image": "wrist_image",
    "observation/state": "state",
}
"""Data-config (policy server) key -> pirl env observation key (LIBERO and the MJX suites)."""

ENV_CAMERAS = ("agentview_image", "wrist_image")
"""Env observation keys of the cameras, in the order the LIBERO data configs use them."""


@flax.struct.dataclass
class EnvAdapter:
    """Arrays and static choices that map env observations to model inputs and model actions back."""

    prompt_tokens: Int[Array, "tasks l"]
    """Tokenised prompt of every task (pad id 0)."""
    prompt_masks: Array
    """bool[tasks, L] True at real prompt tokens."""
    state_stats: NormStats | None
    """Norm stats of the env state (cut to its dims); None = no normalisation."""
    action_stats: NormStats | None
    """Norm stats of the env actions (cut to action_env_dim); None = no normalisation."""
    use_quantiles: bool = flax.struct.field(pytree_node=False, default=False)
    """Quantile (π0.5) instead of z-score (π0) normalisation: the data config's norm_type."""
    delta_mask: tuple[bool, ...] | None = flax.struct.field(pytree_node=False, default=None)
    """Action dims the model predicts relative to the state (the data config's delta mask; pi0_libero:
    the first 6, the gripper stays absolute); None = absolute actions."""
    cameras: tuple[tuple[str, str | None], ...] = flax.struct.field(
        pytree_node=False,
        default=tuple((k, c) for k, c in zip(IMAGE_KEYS, (*ENV_CAMERAS, None), strict=True)),
    )
    """(model image key, env observation key or None for a masked-out zero image), in model order."""
    action_chunk: int = flax.struct.field(pytree_node=False, default=5)
    """Leading action steps the env executes."""
    action_env_dim: int = flax.struct.field(pytree_node=False, default=7)
    """Leading action dims the env uses."""
    rotate_images: bool = flax.struct.field(pytree_node=False, default=False)
    """Rotate camera images by 180 degrees before the model: raw LIBERO renders are upside down
    (openpi's LIBERO client rotates them). Applied wherever observations become model inputs, so
    rollouts and PPO's rescoring of the recorded raw observations see the same images."""


def _cut(stats: NormStats, dim: int, quantiles: bool) -> NormStats:
    def arr(x):
        return None if x is None else jnp.asarray(np.asarray(x, np.float32)[..., :dim])

    return NormStats(
        mean=arr(stats.mean),
        std=arr(stats.std),
        q01=arr(stats.q01) if quantiles else None,
        q99=arr(stats.q99) if quantiles else None,
    )


def make_env_adapter(
    data_cfg: DataConfig,
    prompts: Sequence[str],
    tokenize: Callable[[str], tuple[np.ndarray, np.ndarray]],
    norm_stats: Mapping[str, NormStats] | None,
    *,
    state_dim: int = 8,
    action_env_dim: int = 7,
    action_chunk: int = 5,
    model_image_keys: Sequence[str] = IMAGE_KEYS,
    env_cameras: Sequence[str] = ENV_CAMERAS,
    env_name: str = "the environment",
    rotate_images: bool = False,
) -> EnvAdapter:
    """Build the adapter on the host from the policy's data config: check that it fits the env,
    tokenise every task prompt, turn the norm stats into arrays.

    `norm_stats` is openpi's {"state": NormStats, "actions": NormStats}, or None for no
    normalisation. A data config or norm stats that do not fit the environment (state or action
    dims, a camera the env does not render) raise a `UserError` naming both sides.
    """
    name = f"data config {data_cfg.name!r}"
    if not prompts:
        raise UserError(f"{env_name} has no task prompts")
    if data_cfg.state_dim != state_dim:
        raise UserError(
            f"{name} expects a {data_cfg.state_dim}-dim state but {env_name} gives {state_dim} dims; "
            "use a checkpoint / --data-config made for this environment"
        )
    if data_cfg.action_dim != action_env_dim:
        raise UserError(
            f"{name} outputs {data_cfg.action_dim} action dims but {env_name} takes {action_env_dim}; "
            "use a checkpoint / --data-config made for this environment"
        )
    if set(data_cfg.state_keys) != {"observation/state"}:
        raise UserError(
            f"{name} reads the state from {list(data_cfg.state_keys)}; {env_name} provides 'observation/state'"
        )
    cameras = []
    for key in model_image_keys:
        source = data_cfg.camera_map.get(key)
        env_key = None if source is None else ENV_OBS_KEYS.get(source)
        if source is not None and (env_key is None or env_key not in env_cameras):
            raise UserError(
                f"{name} feeds model camera {key!r} from {source!r}, which {env_name} does not render "
                f"(its cameras: {[k for k, v in ENV_OBS_KEYS.items() if v in env_cameras]})"
            )
        cameras.append((key, env_key))
    missing = [k for k in data_cfg.camera_map if k not in model_image_keys]
    if missing:
        raise UserError(
            f"{name} uses cameras {missing} that the model lacks (model.image_keys {list(model_image_keys)})"
        )
    mask = data_cfg.delta_mask
    if mask is not None and len(mask) > min(state_dim, action_env_dim):
        raise UserError(
            f"{name}'s delta mask covers {len(mask)} dims > the state / action dims ({state_dim}, {action_env_dim})"
        )
    state_stats = action_stats = None
    if norm_stats is not None:
        for key, dim in (("state", state_dim), ("actions", action_env_dim)):
            if key not in norm_stats:
                raise UserError(f"the norm stats have no {key!r} entry (they have {sorted(norm_stats)})")
            have = stats_dims(norm_stats, key)
            if have < dim:
                raise UserError(
                    f"the norm stats' {key!r} have {have} dims but {name} and {env_name} need {dim}"
                )
            if data_cfg.use_quantiles and (norm_stats[key].q01 is None or norm_stats[key].q99 is None):
                raise UserError(
                    f"{name} normalises with quantiles but the norm stats' {key!r} have no q01/q99"
                )
        state_stats = _cut(norm_stats["state"], state_dim, data_cfg.use_quantiles)
        action_stats = _cut(norm_stats["actions"], action_env_dim, data_cfg.use_quantiles)
    tokens, masks = zip(*(tokenize(p) for p in prompts), strict=True)
    return EnvAdapter(
        prompt_tokens=jnp.asarray(np.stack(tokens), jnp.int32),
        prompt_masks=jnp.asarray(np.stack(masks), bool),
        state_stats=state_stats,
        action_stats=action_stats,
        use_quantiles=data_cfg.use_quantiles,
        delta_mask=mask,
        cameras=tuple(cameras),
        action_chunk=action_chunk,
        action_env_dim=action_env_dim,
        rotate_images=rotate_images,
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
    norm_state = (
        state
        if adapter.state_stats is None
        else normalize_values(state, adapter.state_stats, adapter.use_quantiles)
    )
    pad = model_cfg.action_dim - norm_state.shape[-1]
    if pad < 0:
        raise ValueError(
            f"env state has {norm_state.shape[-1]} dims > model.action_dim={model_cfg.action_dim}"
        )
    norm_state = jnp.pad(norm_state, ((0, 0), (0, pad)))
    sources = dict(adapter.cameras)
    images, masks = {}, {}
    for key in model_cfg.image_keys:
        source = sources.get(key)
        if source is not None:
            image = env_obs[source][:, ::-1, ::-1] if adapter.rotate_images else env_obs[source]
            images[key] = _image_to_model(image, model_cfg.image_resolution)
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


def model_actions_to_env(
    adapter: EnvAdapter, actions: Float[Array, "b h a"], state: Float[Array, "b s"] | None = None
) -> Float[Array, "b c e"]:
    """Model actions [B, H, 32] -> env actions [B, action_chunk, action_env_dim] in [-1, 1].

    `state` (the raw env state of the observation) is needed when the model predicts delta actions.
    """
    x = actions[:, : adapter.action_chunk, : adapter.action_env_dim]
    if adapter.action_stats is not None:
        x = unnormalize_values(x, adapter.action_stats, adapter.use_quantiles)
    if adapter.delta_mask is not None:
        if state is None:
            raise ValueError(f"the adapter has delta actions ({adapter.delta_mask}): pass the env state")
        x = shift_actions(x, state.astype(jnp.float32), adapter.delta_mask, 1.0)
    return jnp.clip(x, -1.0, 1.0)


def env_actions_to_model(
    adapter: EnvAdapter, env_actions: Float[Array, "b h e"], action_dim: int, state: Array | None = None
) -> Array:
    """Inverse of `model_actions_to_env` without the clip (for SFT targets): delta, normalise, zero-pad."""
    x = env_actions.astype(jnp.float32)
    if adapter.delta_mask is not None:
        if state is None:
            raise ValueError(f"the adapter has delta actions ({adapter.delta_mask}): pass the env state")
        x = shift_actions(x, state.astype(jnp.float32), adapter.delta_mask, -1.0)
    if adapter.action_stats is not None:
        x = normalize_values(x, adapter.action_stats, adapter.use_quantiles)
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, action_dim - x.shape[-1])])
