"""Advantages and the PPO / GRPO update: `update_epochs` passes of shuffled minibatches, one jit.

`compute_advantages` turns rollouts into per-transition training targets (GAE with a critic, or
GRPO group scores); `ppo_update` runs every optimizer step of a global step inside one compiled
function: `lax.scan` over epochs, each a permutation of the transitions cut into minibatches, each
minibatch's gradient accumulated over micro-batches.

No transition crosses devices. The rollout is split over the environments, so transitions are
flattened env-major (`flatten_transitions`, `merge_rollout_epochs`): each device's block of the
flat batch is its own environments' steps. The shuffle (`shard_local_minibatches`) permutes within
each device's block and gives every minibatch an equal share of every block; micro-batches are
strided slices of a minibatch (`optim.accumulate_gradients`). Only gradients, parameters (FSDP)
and small statistics are exchanged, and on a data-parallel mesh the gradients only once per
optimizer step: the model part of the loss (`ppo_forward`) runs per shard with its own copy of the
trainable leaves, so each micro-batch's gradient stays a per-device partial sum.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from pirl.policies import flow_policy
from pirl.policies.env_io import EnvAdapter, env_obs_to_model
from pirl.rl import advantages as adv_lib
from pirl.rl.config import RLConfig
from pirl.rl.losses import ppo_loss
from pirl.rl.optim import accumulate_gradients, apply_updates, optimizer_metrics
from pirl.rl.rollout import Trajectory, episode_metrics, valid_for_metrics


@flax.struct.dataclass
class Transitions:
    """Flat training batch: every leaf is [N, ...] (N = envs × epochs × chunk steps, env-major, so
    that a device's block of N holds its own environments' transitions)."""

    env_obs: dict[str, Array]
    task_id: Array
    chain: Array
    denoise_index: Array
    old_log_probs: Array
    old_values: Float[Array, " n"]
    advantages: Float[Array, " n"]
    returns: Float[Array, " n"]
    mask: Array
    """bool[N]: the transition belongs to a live episode (and, for GRPO, a kept group)."""
    loss_weight: Float[Array, " n"]
    """max_episode_steps / the length of the transition's episode (RLinf's per-episode loss
    weighting, used when `RLConfig.episode_weights_active`; ones otherwise)."""
    noise_level: Array | None = None
    """f32[N] Flow-SDE noise level each transition was sampled with (policy.noise_anneal), or None."""


def terminations_of(cfg: RLConfig, trajectory: Trajectory) -> Array:
    """bool[T, B]: the dones that are true terminal states (success, unless `env.ignore_terminations`);
    every other done is a time-limit truncation."""
    if cfg.env.ignore_terminations:
        return jnp.zeros(trajectory.dones.shape, bool)
    return trajectory.dones & trajectory.successes


def episode_loss_weights(cfg: RLConfig, valid: Array) -> Array:
    """f32[T, B]: max_episode_steps / episode length in control steps (RLinf's `loss_mask_sum /
    max_episode_steps` inverted), one per environment of a rollout whose episodes all start fresh.

    The length is the episode's valid chunk steps × action_chunk (at most max_episode_steps): RLinf
    counts the control steps up to the done itself, so a chunk cut short by success counts whole here."""
    steps = valid.sum(axis=0).astype(jnp.float32) * cfg.policy.action_chunk
    steps = jnp.clip(steps, 1.0, float(cfg.max_episode_steps))
    return jnp.broadcast_to(cfg.max_episode_steps / steps, valid.shape)


def compute_advantages(
    cfg: RLConfig, trajectory: Trajectory, final_value: Float[Array, " b"]
) -> tuple[Trajectory, dict[str, Array], Array, Array, Array]:
    """GAE or GRPO targets for one rollout ([T, B] time-major).

    Returns (trajectory, rollout metrics, advantages [T, B], returns [T, B], valid mask [T, B]).
    Without auto-reset each rollout starts fresh episodes, so a step is valid until (and including)
    the first done; with `env.auto_reset` every step is valid and the dones only cut the recursion
    (the rollout added γ·V(final obs) to the reward of chunks that ended by truncation). An episode
    still running after the last step was cut by the rollout length and is bootstrapped with the
    critic's value of the final observation. With `adv.bootstrap_on_truncation` and no auto-reset,
    an episode that ended by the time limit is bootstrapped with the value of its final observation
    (the next step's value: the environment stays there); terminations never are.

    Advantages are not normalised here: `ppo_update` normalises them over the whole global step.
    """
    a = cfg.adv
    if cfg.env.auto_reset:
        valid = jnp.ones(trajectory.dones.shape, bool)
    else:
        valid = adv_lib.valid_step_mask(trajectory.dones)
    dones = trajectory.dones.astype(jnp.float32)
    if a.adv_type == "gae":
        next_value = final_value if a.bootstrap_on_truncation else jnp.zeros_like(final_value)
        terminations = None
        if a.bootstrap_on_truncation and not cfg.env.auto_reset:
            terminations = terminations_of(cfg, trajectory)
        advantages, returns = adv_lib.gae_advantages(
            trajectory.rewards,
            trajectory.values,
            dones,
            gamma=a.gamma,
            lam=a.gae_lambda,
            next_value=next_value,
            valid_mask=valid,
            terminations=terminations,
        )
    else:
        grpo = adv_lib.grpo_advantages(
            trajectory.rewards,
            dones,
            a.group_size,
            filter_rewards=a.filter_rewards,
            bounds=tuple(a.filter_bounds),
        )
        advantages, valid = grpo.advantages, grpo.mask
        returns = jnp.zeros_like(advantages)
    metrics = adv_lib.rollout_metrics(
        trajectory.rewards, advantages, returns if a.adv_type == "gae" else None, valid
    )
    return trajectory, metrics, advantages, returns, valid


def flatten_transitions(
    trajectory: Trajectory, advantages: Array, returns: Array, valid: Array, loss_weight: Array | None = None
) -> Transitions:
    """[T, B, ...] rollout leaves -> [B·T, ...] transitions, env-major.

    The environments (B) are split over the devices and time is not, so env-major flattening is a
    local reshape; time-major ([T·B]) would interleave every device's environments in each block
    and XLA would all-gather the whole buffer to build it."""

    def flat(x):
        return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    return Transitions(
        env_obs=jax.tree.map(flat, trajectory.env_obs),
        task_id=flat(trajectory.task_id),
        chain=flat(trajectory.chain),
        denoise_index=flat(trajectory.denoise_index),
        old_log_probs=flat(trajectory.log_probs),
        old_values=flat(trajectory.values),
        advantages=flat(advantages),
        returns=flat(returns),
        mask=flat(valid),
        loss_weight=flat(jnp.ones(valid.shape, jnp.float32) if loss_weight is None else loss_weight),
        noise_level=None if trajectory.noise_level is None else flat(trajectory.noise_level),
    )


def merge_rollout_epochs(transitions: Transitions) -> Transitions:
    """[E, N, ...] transitions of E rollouts (N split over the devices) -> [N·E, ...], keeping each
    device's rows on that device (epochs are merged inside each environment's block)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), transitions)


def batch_shards(sharding: NamedSharding | None) -> int:
    """How many blocks the leading (batch) dim is split into under `sharding` (1 for None)."""
    if sharding is None or not len(sharding.spec) or sharding.spec[0] is None:
        return 1
    axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
    return math.prod(sharding.mesh.shape[a] for a in axes)


def shard_local_minibatches(
    batch: Any,
    key: jax.Array,
    num_minibatches: int,
    shards: int,
    sharding: NamedSharding | None = None,
) -> Any:
    """Shuffle a flat [N, ...] batch into [num_minibatches, N / num_minibatches, ...] without moving
    rows between the `shards` contiguous blocks of N (one per device under `sharding`).

    Each block is permuted on its own key and dealt out evenly: minibatch m takes the next
    N / (shards·num_minibatches) rows of every block, so it stays split over the devices like the
    batch (stratified sampling over the environment groups of the blocks). A global permutation
    `x[perm]` would instead lower to a gather plus an all-reduce of the whole buffer.
    """
    num = jax.tree.leaves(batch)[0].shape[0]
    if num % (shards * num_minibatches):
        raise ValueError(
            f"{num} transitions cannot be dealt into {num_minibatches} minibatches from {shards} device "
            f"blocks: make env.num_envs x chunk steps x rollout_epochs a multiple of {shards * num_minibatches}"
        )
    per_shard, per_mb = num // shards, num // (shards * num_minibatches)
    perms = jax.vmap(lambda k: jax.random.permutation(k, per_shard))(jax.random.split(key, shards))

    def constrain(x, spec):
        if sharding is None:
            return x
        return lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, spec))

    axes = None if sharding is None else sharding.spec[0]

    def deal(x):
        tail = x.shape[1:]
        x = constrain(x.reshape(shards, per_shard, *tail), PartitionSpec(axes))
        x = jax.vmap(lambda rows, perm: rows[perm])(x, constrain(perms, PartitionSpec(axes)))
        x = jnp.swapaxes(x.reshape(shards, num_minibatches, per_mb, *tail), 0, 1)
        x = constrain(x, PartitionSpec(None, axes))
        return x.reshape(num_minibatches, shards * per_mb, *tail)

    return jax.tree.map(deal, batch)


def env_metrics(trajectory: Trajectory, cfg: RLConfig, weights: Array | None = None) -> dict[str, Array]:
    """env/* metrics of a rollout whose environments all started fresh episodes (lengths in control
    steps); `weights` per environment (0 = padding)."""
    metrics = episode_metrics(trajectory, valid_for_metrics(trajectory), weights)
    metrics["env/episode_len"] = metrics["env/episode_len"] * cfg.policy.action_chunk
    return metrics


def rollout_targets(
    cfg: RLConfig, trajectory: Trajectory, final_value: Float[Array, " b"]
) -> tuple[Transitions, dict[str, Array]]:
    """One rollout -> flat training transitions and its rollout/* metrics (plus env/* without auto-reset,
    whose episodes span rollouts; the caller then measures them)."""
    traj, metrics, adv, ret, valid = compute_advantages(cfg, trajectory, final_value)
    if not cfg.env.auto_reset:
        metrics |= env_metrics(traj, cfg)
    weight = None
    if cfg.episode_weights_active:
        weight = episode_loss_weights(cfg, adv_lib.valid_step_mask(trajectory.dones))
    return flatten_transitions(traj, adv, ret, valid, weight), metrics


def ppo_forward(params: dict, batch: Transitions, *, cfg: RLConfig, adapter: EnvAdapter) -> tuple[Array, ...]:
    """The model part of the loss, per transition: (log-probs, entropy, values) of the stored chains
    rescored under `params` (no cross-sample reduction: `accumulate_gradients` runs it per shard)."""
    obs = env_obs_to_model(adapter, cfg.model, batch.env_obs, batch.task_id)
    return flow_policy.log_prob_and_value(
        params, cfg.policy, cfg.model, obs, batch.chain, batch.denoise_index, noise_level=batch.noise_level
    )


def ppo_objective(
    outputs: tuple[Array, ...],
    batch: Transitions,
    *,
    cfg: RLConfig,
    critic_warmup: Array | bool = False,
) -> tuple[Array, dict[str, Array]]:
    """PPO (GAE) or critic-free (GRPO) loss of one micro-batch from `ppo_forward`'s outputs.

    `critic_warmup` (traced bool) drops the policy and entropy terms (`optim.critic_warmup_steps`)."""
    log_probs, entropy, values = outputs
    critic = cfg.adv.adv_type == "gae"
    return ppo_loss(
        cfg.loss,
        logprobs=log_probs,
        old_logprobs=batch.old_log_probs,
        advantages=batch.advantages,
        mask=batch.mask,
        values=values if critic else None,
        old_values=batch.old_values if critic else None,
        returns=batch.returns if critic else None,
        entropy=entropy if cfg.policy.noise_method == "flow_noise" else None,
        weights=batch.loss_weight if cfg.episode_weights_active else None,
        critic_warmup=critic_warmup,
    )


def ppo_loss_fn(
    params: dict,
    batch: Transitions,
    *,
    cfg: RLConfig,
    adapter: EnvAdapter,
    critic_warmup: Array | bool = False,
) -> tuple[Array, dict[str, Array]]:
    """PPO (GAE) or critic-free (GRPO) loss of one micro-batch, rescoring the stored chains
    (`ppo_objective` of `ppo_forward`)."""
    outputs = ppo_forward(params, batch, cfg=cfg, adapter=adapter)
    return ppo_objective(outputs, batch, cfg=cfg, critic_warmup=critic_warmup)


def data_parallel_axes(cfg: RLConfig, sharding: NamedSharding | None) -> tuple[str, ...]:
    """The batch axes of `sharding` (size > 1) along which `accumulate_gradients` keeps per-device
    partial gradients: all of them on a purely data-parallel mesh (FSDP axis of size 1), none
    otherwise. With an FSDP axis left automatic inside the per-shard forward, XLA split the frozen
    LLM MLP over its weights' sharded dim and all-gathered / all-reduced the [micro-batch, 816,
    2048] activations every layer instead of gathering the weights (pi0 on data=2 x fsdp=4,
    docs/scaling.md), so such meshes keep the plain accumulation for now."""
    if sharding is None or not len(sharding.spec) or sharding.spec[0] is None:
        return ()
    axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
    mesh = sharding.mesh
    if any(a == cfg.mesh.fsdp_axis and mesh.shape[a] > 1 for a in axes):
        return ()
    return tuple(a for a in axes if mesh.shape[a] > 1)


def normalize_step_advantages(cfg: RLConfig, batch: Transitions) -> Transitions:
    """With `adv.normalize_advantages`: the advantages normalised over the valid transitions of the
    whole global step (every rollout epoch together, as RLinf), invalid ones set to 0."""
    if not cfg.adv.normalize_advantages:
        return batch
    return batch.replace(advantages=adv_lib.normalize_advantages(batch.advantages, batch.mask))


def recompute_log_probs(params: dict, batch: Transitions, *, cfg: RLConfig, adapter: EnvAdapter) -> Array:
    """Old log-probs of every transition rescored under `params` (RLinf's recompute_logprobs), in
    micro-batches of `micro_batch_size` (sequential: one micro-batch's activations at a time)."""
    num = batch.mask.shape[0]
    micro = cfg.micro_batch_size or cfg.global_batch_size
    micro = micro if num % micro == 0 else num

    def one(mb):
        obs = env_obs_to_model(adapter, cfg.model, mb.env_obs, mb.task_id)
        log_probs, _, _ = flow_policy.log_prob_and_value(
            params, cfg.policy, cfg.model, obs, mb.chain, mb.denoise_index, noise_level=mb.noise_level
        )
        return log_probs

    # Strided chunks (rows i, i + num/micro, ...), like accumulate_gradients' micro-batches: each
    # device's block of the batch feeds every chunk, so no transition moves between devices.
    chunks = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(micro, num // micro, *x.shape[1:]), 0, 1), batch)
    out = jnp.swapaxes(lax.map(one, chunks), 0, 1)
    return jax.lax.stop_gradient(out.reshape(num, *out.shape[2:]))


def ppo_update(
    params: dict,
    opt_state: Any,
    opt_step: Array,
    batch: Transitions,
    rng: jax.Array,
    *,
    cfg: RLConfig,
    adapter: EnvAdapter,
    optimizer: optax.GradientTransformation,
    trainable_mask: Any,
    batch_sharding: NamedSharding | None = None,
    shuffle_shards: int | None = None,
) -> tuple[dict, Any, Array, dict[str, Array]]:
    """All optimizer steps of one global step; returns (params, opt_state, opt_step, mean metrics).

    First, with `adv.normalize_advantages`, the advantages are normalised over the valid transitions
    of the whole global step (all rollout epochs), and with `recompute_logprobs` the old log-probs
    are rescored under the current params. `batch_sharding`: how `batch` is split over the mesh;
    the shuffle then permutes within each device's block (`shard_local_minibatches`) and each
    minibatch is pinned to the batch axes. `shuffle_shards` overrides the block count (default:
    the sharding's), e.g. to reproduce an 8-device run's minibatches on one device.
    """
    num = batch.mask.shape[0]
    mb_size = cfg.global_batch_size
    if num % mb_size:
        raise ValueError(f"{num} transitions are not a multiple of global_batch_size={mb_size}")
    num_minibatches = num // mb_size
    num_micro = 1 if cfg.micro_batch_size is None else mb_size // cfg.micro_batch_size
    shards = batch_shards(batch_sharding) if shuffle_shards is None else shuffle_shards

    batch = normalize_step_advantages(cfg, batch)
    if cfg.recompute_logprobs:
        batch = batch.replace(old_log_probs=recompute_log_probs(params, batch, cfg=cfg, adapter=adapter))

    def minibatch_step(carry, mb):
        params, opt_state, opt_step = carry
        if batch_sharding is not None:
            mb = jax.lax.with_sharding_constraint(mb, batch_sharding)
        warmup = opt_step < cfg.optim.critic_warmup_steps

        (_, metrics), grads = accumulate_gradients(
            functools.partial(ppo_objective, cfg=cfg, critic_warmup=warmup),
            params,
            mb,
            num_micro,
            trainable_mask=trainable_mask,
            forward=functools.partial(ppo_forward, cfg=cfg, adapter=adapter),
            mesh=None if batch_sharding is None else batch_sharding.mesh,
            local_axes=data_parallel_axes(cfg, batch_sharding),
        )
        metrics = metrics | optimizer_metrics(cfg.optim, grads, opt_step, trainable_mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = apply_updates(params, updates, trainable_mask)
        return (params, opt_state, opt_step + 1), metrics

    def epoch(carry, key):
        shuffled = shard_local_minibatches(batch, key, num_minibatches, shards, batch_sharding)
        return lax.scan(minibatch_step, carry, shuffled)

    keys = jax.random.split(rng, cfg.update_epochs)
    (params, opt_state, opt_step), metrics = lax.scan(epoch, (params, opt_state, opt_step), keys)
    return params, opt_state, opt_step, jax.tree.map(jnp.mean, metrics)
