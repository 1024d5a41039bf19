"""Rollouts: the flow policy and the MJX environments in one `lax.scan`, with no host round trip.

One rollout = every environment plays one episode from a given (task, initial state) for
`chunk_steps` chunk steps: observe → `sample` an action chunk → `chunk_step` the environment.
Without auto-reset, environments whose episode ended keep stepping (a fixed-shape program) but
those steps are masked out of the loss by `valid_step_mask`. The rollout records what PPO needs to rescore each
transition: the raw env observation (uint8 images, state, task id), the denoise chain and its
stochastic step, old log-probs and values, rewards and dones; plus the critic's value of the final
observation, which bootstraps episodes cut by the time limit.

Rewards follow RLinf's shaping (`EnvSpec.reward_coef`, `use_rel_reward`, `use_step_penalty`), per
control step k of an episode: r_k = p + coef·s_k with p = −1 under the step penalty (else 0) and
s_k = success; with `use_rel_reward` the agent gets r_k − r_{k−1} (r_0 = 0) instead, so success is
paid once (and taken back if lost) and the step penalty only on the first step.

RLinf's episode knobs (`EnvSpec`), with the same rules as the host (LIBERO) backend:
* `ignore_terminations`: the env is built with `terminate_on_success=False` (see `make_rl_env`),
  so episodes end only at max_episode_steps, and the success term of a chunk is the per-step
  difference summed, coef·(success after the chunk − success before it): taken back if lost.
* `auto_reset`: an environment whose episode ended during a chunk starts a fresh (task, initial
  state) from the pools before the next chunk, and `rollout` hands its env states and running
  returns on (`RolloutOutput.final_state`, `.episode_return`) so episodes continue into the next
  rollout. Chunks that ended by truncation (and, with `adv.bootstrap_terminations`, by success)
  get γ·V(final observation) added to their reward (the critic's value of the observation before
  the reset, computed only on chunk steps where some environment needs it).
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
from pirl.rl.config import AdvantageConfig, EnvSpec


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
    noise_level: Array | None = None
    """f32[T, B] Flow-SDE noise level the chunks were sampled with (policy.noise_anneal; None: the
    config's constant level), so that PPO rescores them at the same level."""


def control_step_reward(
    success: Any, prev_success: Any, first_step: Any, *, coef: float, rel: bool, step_penalty: bool
) -> Any:
    """RLinf's reward of one control step (see the module docstring); numpy or jax inputs."""
    penalty = -1.0 if step_penalty else 0.0
    if rel:
        return coef * (success * 1.0 - prev_success * 1.0) + penalty * first_step
    return penalty + coef * success * 1.0


def shape_chunk_reward(
    spec: EnvSpec,
    success_reward: Array,
    steps_before: Array,
    steps_after: Array,
    success_before: Array | None = None,
    success_after: Array | None = None,
) -> Array:
    """Shaped reward of an MJX chunk from the env's own and the episode's control-step counter
    before / after the chunk. The env's reward is 1 on the step success is first reached (then the
    episode terminates), or with `spec.ignore_terminations` 1 on every step with success; in that
    case and with `use_rel_reward`, pass the env's success flag before / after the chunk: the
    per-step differences of `control_step_reward` telescope to one difference per chunk."""
    executed = (steps_after - steps_before).astype(jnp.float32)
    first = ((steps_before == 0) & (executed > 0)).astype(jnp.float32)
    if spec.ignore_terminations and spec.use_rel_reward:
        if success_before is None or success_after is None:
            raise ValueError("ignore_terminations with use_rel_reward needs success_before / success_after")
        prev = jnp.where(steps_before > 0, success_before, False)  # a new episode starts unsuccessful
        return control_step_reward(
            success_after.astype(jnp.float32),
            prev.astype(jnp.float32),
            first,
            coef=spec.reward_coef,
            rel=True,
            step_penalty=spec.use_step_penalty,
        )
    reward = spec.reward_coef * success_reward
    if spec.use_step_penalty:
        reward = reward - (first if spec.use_rel_reward else executed)
    return reward


@flax.struct.dataclass
class RolloutOutput:
    """A rollout's trajectory, the bootstrap value after its last step, and its final env state.

    With auto-reset (`reset_pools` given) also each environment's return so far in the episode it
    carries into the next rollout, and `finished`: per chunk step [T, B] the stats of the episodes
    that ended there (done, success_once, return, length in control steps, success_at_end)."""

    trajectory: Trajectory
    final_value: Float[Array, " b"]
    final_state: Any
    episode_return: Float[Array, " b"] | None = None
    finished: dict[str, Array] | None = None


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
    reset_pools: tuple[Array, Array] | None = None,
    adv_cfg: AdvantageConfig | None = None,
    episode_return: Float[Array, " b"] | None = None,
    noise_level: Array | float | None = None,
) -> RolloutOutput:
    """Play `chunk_steps` chunk steps in every environment of the batched `env_state`.

    `env` provides the single-environment `chunk_step(state, actions[c, 7]) -> state` (and for
    auto-reset `reset_to(task, init)`), batched here with `env.batched`. mode="eval" samples with
    the pure ODE (deterministic given the noise). `rng` is one key, or keys[B] (one per environment,
    e.g. `episode_keys`). `env_spec` shapes the rewards (`shape_chunk_reward`); None keeps the env's
    success reward. `reset_pools` = (task ids, initial-state ids) turns on auto-reset (see the
    module docstring), with `adv_cfg`'s bootstrap rules and `episode_return` the carried-in running
    returns (None = zeros); its reset draws and bootstrap values use one key per chunk step (the
    first environment's with keys[B]). `noise_level`: the Flow-SDE level of this rollout
    (`policy_cfg.noise_level_at(global_step)` under noise_anneal; recorded in the trajectory), None =
    the config's constant level.
    """
    chunk_step = env.batched(env.chunk_step)
    auto_reset = reset_pools is not None
    if auto_reset and (env_spec is None or adv_cfg is None):
        raise ValueError("auto-reset (reset_pools) needs env_spec and adv_cfg")
    batch = env_state.done.shape[0]

    def policy_step(state, key):
        task_id = state.info["task_id"]
        obs = env_obs_to_model(adapter, model_cfg, state.obs, task_id)
        out = flow_policy.sample(params, policy_cfg, model_cfg, key, obs, mode=mode, noise_level=noise_level)
        return out, task_id

    def reward_of(state, next_state):
        if env_spec is None:
            return next_state.reward.astype(jnp.float32)
        return shape_chunk_reward(
            env_spec,
            next_state.reward.astype(jnp.float32),
            state.info["step"],
            next_state.info["step"],
            state.info["success"],
            next_state.info["success"],
        )

    def auto_reset_step(next_state, ret, reward, key):
        """Bootstrap the chunks that need it, book finished episodes, reset them (see module doc)."""
        k_boot, k_reset = jax.random.split(key)
        done = next_state.done.astype(bool)
        terminated = jnp.zeros_like(done)
        if not env_spec.ignore_terminations:
            terminated = done & next_state.info["success_once"]
        boot = done & ~terminated if adv_cfg.bootstrap_on_truncation else jnp.zeros_like(done)
        if adv_cfg.bootstrap_terminations:
            boot = boot | terminated
        final_value = lax.cond(
            jnp.any(boot),
            lambda: policy_step(next_state, k_boot)[0].value.astype(jnp.float32),
            lambda: jnp.zeros((batch,), jnp.float32),
        )
        ret = ret + reward
        finished = {
            "done": done,
            "success_once": next_state.info["success_once"] & done,
            "return": jnp.where(done, ret, 0.0),
            "length": jnp.where(done, next_state.info["step"], 0),
            "success_at_end": next_state.info["success"] & done,
        }

        def reset_done():
            tasks, inits = sample_reset_ids(k_reset, *reset_pools, num_envs=batch, group=1)
            fresh = env.batched(env.reset_to)(tasks, inits)
            pick = lambda new, old: jnp.where(done.reshape(-1, *[1] * (old.ndim - 1)), new, old)  # noqa: E731
            return jax.tree.map(pick, fresh, next_state)

        next_state = lax.cond(jnp.any(done), reset_done, lambda: next_state)
        reward = reward + jnp.where(boot, adv_cfg.gamma * final_value, 0.0)
        return next_state, jnp.where(done, 0.0, ret), reward, finished

    def body(carry, key):
        state, ret = carry
        out, task_id = policy_step(state, key)
        next_state = chunk_step(state, model_actions_to_env(adapter, out.actions, state.obs["state"]))
        reward = reward_of(state, next_state)
        dones = next_state.done.astype(bool)
        successes = next_state.reward > 0
        finished = None
        if auto_reset:
            one_key = key if key.ndim == 0 else key[0]
            next_state, ret, reward, finished = auto_reset_step(
                next_state, ret, reward, jax.random.fold_in(one_key, 1)
            )
        record = Trajectory(
            env_obs=state.obs,
            task_id=task_id,
            chain=out.chain,
            denoise_index=out.denoise_index,
            log_probs=out.log_probs,
            values=out.value,
            rewards=reward,
            dones=dones,
            successes=successes,
            noise_level=None if noise_level is None else jnp.full((batch,), noise_level, jnp.float32),
        )
        return (next_state, ret), (record, finished)

    if rng.ndim == 0:
        keys = jax.random.split(rng, chunk_steps + 1)
    else:  # one key per environment: its draws do not depend on the batch it runs in
        keys = jax.vmap(lambda key: jax.random.split(key, chunk_steps + 1), out_axes=1)(rng)
    ret0 = jnp.zeros((batch,), jnp.float32) if episode_return is None else episode_return
    (final_state, final_ret), (trajectory, finished) = lax.scan(body, (env_state, ret0), keys[:-1])
    final_out, _ = policy_step(final_state, keys[-1])
    return RolloutOutput(
        trajectory=trajectory,
        final_value=final_out.value,
        final_state=final_state,
        episode_return=final_ret if auto_reset else None,
        finished=finished,
    )


def episode_keys(rng: jax.Array, task_ids: Int[Array, " b"], episode_ids: Int[Array, " b"]) -> jax.Array:
    """keys[B]: episode `e` of task `t` samples its noise from fold_in(fold_in(rng, t), e), whatever
    batch, device or program it runs in (the trainer's evaluation and `pirl.eval` agree)."""
    return jax.vmap(lambda t, e: jax.random.fold_in(jax.random.fold_in(rng, t), e))(task_ids, episode_ids)


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


def finished_episode_metrics(finished: dict[str, Array]) -> dict[str, Array]:
    """env/* over the episodes that ended during auto-reset rollouts (`RolloutOutput.finished`, any
    leading shape); NaN when none ended. `env/episodes` counts them."""
    count = finished["done"].sum().astype(jnp.float32)

    def mean(key):
        return jnp.where(
            count > 0, finished[key].astype(jnp.float32).sum() / jnp.maximum(count, 1.0), jnp.nan
        )

    names = ("success_once", "return", "length", "success_at_end")
    metrics = {f"env/{'episode_len' if k == 'length' else k}": mean(k) for k in names}
    return metrics | {"env/episodes": count}


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
