"""Warm start for runs that begin from random weights: expert demonstrations + flow-matching SFT.

Everything runs on device: the scripted experts play every (task, initial state) pair in a batched
`lax.scan` (one compiled program), the recorded control steps become (observation, action chunk)
pairs the way LeRobot's `delta_timestamps` builds them (the chunk runs past the episode end by
repeating the last action), and SFT minimises π0's flow-matching loss on them. Real presets start
from an SFT checkpoint instead and skip this.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array

from pirl.data.normalize import NormStats
from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.policies.env_io import EnvAdapter, env_actions_to_model, env_obs_to_model


@flax.struct.dataclass
class Demos:
    """Expert control steps, flattened: every leaf is [N, ...]."""

    env_obs: dict[str, Array]
    task_id: Array
    action_chunks: Array
    """f32[N, H, 7] env-space actions from this step on (padded past the episode end)."""
    valid: Array
    """bool[N]: the step happened before the episode ended."""
    success: Array
    """bool[N]: the episode this step belongs to succeeded."""


def record_expert_demos(
    env: Any,
    expert_action: Any,
    task_ids: Array,
    init_ids: Array,
    rng: jax.Array,
    *,
    num_steps: int,
    horizon: int,
    action_noise: float = 0.0,
) -> Demos:
    """Roll the expert out from each (task_ids[i], init_ids[i]) for `num_steps` control steps."""
    reset = jax.vmap(env.reset_to)
    state0 = reset(task_ids, init_ids)

    def act_and_step(state, key):
        # DART-style noise injection: the env executes a perturbed action but the label stays the
        # expert's own, so the demos also show how to recover from states off the expert's path.
        action = expert_action(env, state)
        executed = action
        if action_noise > 0:
            noise = action_noise * jax.random.normal(key, action.shape)
            executed = jnp.clip(action + noise.at[-1].set(0.0), -1.0, 1.0)  # keep the gripper clean
        return action, env.step(state, executed)

    act_and_step = env.batched(act_and_step)

    def body(carry, key):
        state, done = carry
        action, next_state = act_and_step(state, jax.random.split(key, task_ids.shape[0]))
        record = (state.obs, action, ~done, next_state.reward > 0)
        return (next_state, done | next_state.done.astype(bool)), record

    keys = jax.random.split(rng, num_steps)
    _, (obs, actions, valid, success) = lax.scan(body, (state0, jnp.zeros(task_ids.shape, bool)), keys)
    # Action chunk at step t = actions[t .. t+H-1], clamped to the last valid step of the episode.
    last_valid = jnp.maximum(valid.sum(axis=0) - 1, 0)  # [E]
    idx = jnp.minimum(jnp.arange(num_steps)[:, None] + jnp.arange(horizon)[None, :], num_steps - 1)  # [T, H]
    idx = jnp.minimum(idx[:, None, :], last_valid[None, :, None])  # [T, E, H]
    gathered = jax.vmap(lambda a, i: a[i], in_axes=(1, 1), out_axes=1)(actions, idx)  # [T, E, H, 7]
    episode_success = jnp.any(success & valid, axis=0)

    def flat(x):
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    task = jnp.broadcast_to(task_ids[None], valid.shape)
    return Demos(
        env_obs=jax.tree.map(flat, obs),
        task_id=flat(task),
        action_chunks=flat(gathered),
        valid=flat(valid),
        success=flat(jnp.broadcast_to(episode_success[None], valid.shape)),
    )


def demo_norm_stats(demos: Demos) -> dict[str, NormStats]:
    """openpi-style z-score statistics of the demos' states and actions (valid steps only)."""
    valid = np.asarray(demos.valid)
    out = {}
    for key, values in (
        ("state", np.asarray(demos.env_obs["state"])),
        ("actions", np.asarray(demos.action_chunks[:, 0])),
    ):
        v = values[valid].astype(np.float64)
        out[key] = NormStats(
            mean=v.mean(0),
            std=v.std(0),
            q01=np.quantile(v, 0.01, axis=0),
            q99=np.quantile(v, 0.99, axis=0),
        )
    return out


def make_sft_step(model_cfg: Pi0Config, adapter: EnvAdapter, optimizer: optax.GradientTransformation):
    """A jitted flow-matching SFT step on a minibatch of demos: (params, opt_state, batch, rng) -> ..."""

    def loss_fn(model_params, batch: Demos, rng):
        obs = env_obs_to_model(adapter, model_cfg, batch.env_obs, batch.task_id)
        actions = env_actions_to_model(
            adapter, batch.action_chunks, model_cfg.action_dim, batch.env_obs["state"]
        )
        return pi0.compute_loss(model_params, model_cfg, rng, obs, actions).mean()

    @jax.jit
    def sft_step(model_params, opt_state, batch: Demos, rng):
        loss, grads = jax.value_and_grad(loss_fn)(model_params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, model_params)
        return optax.apply_updates(model_params, updates), opt_state, loss

    return sft_step
