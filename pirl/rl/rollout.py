"""Rollouts: the flow policy and the MJX environments in one `lax.scan`, with no host round trip.

One rollout = every environment plays one episode from a given (task, initial state) for
`chunk_steps` chunk steps: observe → `sample` an action chunk → `chunk_step` the environment.
Environments whose episode ended keep stepping (a fixed-shape program) but those steps are masked
out of the loss by `valid_step_mask`. The rollout records what PPO needs to rescore each
transition: the raw env observation (uint8 images, state, task id), the denoise chain and its
stochastic step, old log-probs and values, rewards and dones; plus the critic's value of the final
observation, which bootstraps episodes cut by the time limit.

Rewards follow RLinf's shaping (`EnvSpec.reward_coef`, `use_rel_reward`, `use_step_penalty`), per
control step k of an episode: r_k = p + coef·s_k with p = −1 under the step penalty (else 0) and
s_k = success; with `use_rel_reward` the agent gets r_k − r_{k−1} (r_0 = 0) instead, so success is
paid once (and taken back if lost) and the step penalty only on the first step.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig
from pirl.policies.env_io import EnvAdapter, env_obs_to_model, model_actions_to_env
from pirl.rl.config import EnvSpec


@flax.struct.dataclass
class Trajectory:
    """Time-major record of one rollout: every leaf is [T, B, ...]."""

    env_obs: dict[str, Array]
    """Raw env observations before each chunk step (uint8 images, f32 state)."""
    task_id: Int[Array, "t b"]
    """Task of each environment (indexes the prompt table)."""
    chain: Float[Array, "t b k1 h a"]
    """Denoise chains of the sampled action chunks."""
    denoise_index: Int[Array, "t b"]
    """Stochastic denoise step (Flow-SDE single-step), -1 otherwise."""
    log_probs: Array
    """Old log-probs ([T, B] for chunk_level, [T, B, c] or [T, B, c, d] otherwise)."""
    values: Float[Array, "t b"]
    """Critic values of the observations (zeros without a critic)."""
    rewards: Float[Array, "t b"]
    """Reward summed over each executed chunk."""
    dones: Array
    """bool[T, B]: the episode ended (success or time limit) within this chunk step."""
    successes: Array
    """bool[T, B]: the task was accomplished within this chunk step."""


def control_step_reward(
    success: Any, prev_success: Any, first_step: Any, *, coef: float, rel: bool, step_penalty: bool
) -> Any:
    """RLinf's reward of one control step (see the module docstring); numpy or jax inputs."""
    penalty = -1.0 if step_penalty else 0.0
    if rel:
        return coef * (success * 1.0 - prev_success * 1.0) + penalty * first_step
    return penalty + coef * success * 1.0


def shape_chunk_reward(
    spec: EnvSpec, success_reward: Array, steps_before: Array, steps_after: Array
) -> Array:
    """Shaped reward of an MJX chunk from the env's own (1 on the step success is first reached, then
    the episode terminates) and the episode's control-step counter before / after the chunk."""
    executed = (steps_after - steps_before).astype(jnp.float32)
    reward = spec.reward_coef * success_reward
    if spec.use_step_penalty:
        first = ((steps_before == 0) & (executed > 0)).astype(jnp.float32)
        reward = reward - (first if spec.use_rel_reward else executed)
    return reward


@flax.struct.dataclass
class RolloutOutput:
    """A rollout's trajectory, the bootstrap value after its last step, and its final env state."""

    trajectory: Trajectory
    final_value: Float[Array, " b"]
    final_state: Any


def rollout(
    params: dict,
    adapter: EnvAdapter,
    env_state: Any,
    rng: jax.Array,
    *,
    env: Any,
    policy_cfg: FlowPolicyConfig,
    model_cfg: Pi0Config,
    chunk_steps: int,
    mode: str = "train",
    env_spec: EnvSpec | None = None,
) -> RolloutOutput:
    """Play `chunk_steps` chunk steps in every environment of the batched `env_state`.

    `env` provides the single-environment `chunk_step(state, actions[c, 7]) -> state`, batched
    here with `env.batched`. mode="eval" samples with the pure ODE (deterministic given the noise).
    `env_spec` shapes the rewards (`shape_chunk_reward`); None keeps the env's success reward.
    """
    chunk_step = env.batched(env.chunk_step)

    def policy_step(state, key):
        task_id = state.info["task_id"]
        obs = env_obs_to_model(adapter, model_cfg, state.obs, task_id)
        out = flow_policy.sample(params, policy_cfg, model_cfg, key, obs, mode=mode)
        return out, task_id

    def body(state, key):
        out, task_id = policy_step(state, key)
        next_state = chunk_step(state, model_actions_to_env(adapter, out.actions, state.obs["state"]))
        record = Trajectory(
            env_obs=state.obs,
            task_id=task_id,
            chain=out.chain,
            denoise_index=out.denoise_index,
            log_probs=out.log_probs,
            values=out.value,
            rewards=(
                next_state.reward.astype(jnp.float32)
                if env_spec is None
                else shape_chunk_reward(
                    env_spec,
                    next_state.reward.astype(jnp.float32),
                    state.info["step"],
                    next_state.info["step"],
                )
            ),
            dones=next_state.done.astype(bool),
            successes=next_state.reward > 0,
        )
        return next_state, record

    keys = jax.random.split(rng, chunk_steps + 1)
    final_state, trajectory = lax.scan(body, env_state, keys[:-1])
    final_out, _ = policy_step(final_state, keys[-1])
    return RolloutOutput(trajectory=trajectory, final_value=final_out.value, final_state=final_state)


def sample_reset_ids(
    rng: jax.Array, task_pool: Int[Array, " n"], init_pool: Int[Array, " m"], num_envs: int, group: int
) -> tuple[Int[Array, " e"], Int[Array, " e"]]:
    """(task ids, initial-state ids) of `num_envs` fresh episodes: each run of `group` consecutive
    environments shares one (task, initial state) drawn uniformly from the pools."""
    k_task, k_init = jax.random.split(rng)
    groups = num_envs // group
    tasks = task_pool[jax.random.randint(k_task, (groups,), 0, task_pool.shape[0])]
    inits = init_pool[jax.random.randint(k_init, (groups,), 0, init_pool.shape[0])]
    return jnp.repeat(tasks, group), jnp.repeat(inits, group)


def valid_for_metrics(trajectory: Trajectory) -> Array:
    """bool[T, B]: chunk steps up to and including each environment's first done."""
    from pirl.rl.advantages import valid_step_mask

    return valid_step_mask(trajectory.dones)


def episode_metrics(
    trajectory: Trajectory, valid: Array, weights: Float[Array, " b"] | None = None
) -> dict[str, Array]:
    """env/* metrics of a rollout in which every environment started a fresh episode.

    success_once: the task was accomplished at some step; return: summed reward of the first episode;
    episode_len: control-free count of valid chunk steps; success_at_end: success on the last valid step.
    `weights` (per environment, e.g. 0 for padding) turn the means into weighted means.
    """
    valid_f = valid.astype(jnp.float32)
    success_once = jnp.any(trajectory.successes & valid, axis=0)
    last_valid = jnp.maximum(valid.sum(axis=0) - 1, 0)
    at_end = jnp.take_along_axis(trajectory.successes, last_valid[None], axis=0)[0]
    w = jnp.ones(valid.shape[1], jnp.float32) if weights is None else weights.astype(jnp.float32)

    def mean(x):
        return (x.astype(jnp.float32) * w).sum() / w.sum()

    return {
        "env/success_once": mean(success_once),
        "env/return": mean((trajectory.rewards * valid_f).sum(axis=0)),
        "env/episode_len": mean(valid_f.sum(axis=0)),
        "env/success_at_end": mean(at_end),
    }
