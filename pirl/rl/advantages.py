"""Advantage estimation for chunk-level RL: GAE (PPO) and group-relative scores (GRPO).

Time runs over *chunk steps*: one policy call produces one action chunk, the environment executes it
and returns one (summed) reward and one done flag. All functions take time-major arrays
`[T, B, ...]` (T chunk steps, B environments) and are pure, vectorised or `lax.scan`-based, and
jit-able; none of them jits itself.

Done convention
---------------
pirl stores `dones[k]` = "the episode ended during chunk step k" (what `env.chunk_step` returns
after executing chunk k), shape `[T, B]`. RLinf stores `T + 1` flags where `dones[0]` is the flag
carried in from before the rollout and `dones[k + 1]` is pirl's `dones[k]`. Every function here
accepts either layout (told apart by the leading length against `rewards`). In RLinf's indexing the
GAE recursion of the πRL paper reads

    δ_k = r_k + γ·V_{k+1}·(1 − d_{k+1}) − V_k,    A_k = δ_k + γλ·(1 − d_{k+1})·A_{k+1},    R_k = A_k + V_k

so the flag that ends step k cuts both the bootstrap value and the advantage of the next step (which
belongs to a new episode after an auto-reset, or to nothing otherwise).

Valid steps
-----------
Without auto-reset mid-rollout, an environment idles after its episode ends; those steps carry no
signal and are masked: `valid_step_mask(dones)[k]` is True iff no episode ended *before* step k (the
step that ends the episode is still valid). With auto-reset every step is valid.

Truncation
----------
A time-limit truncation is not a terminal state: with auto-reset, add γ·V(final_obs) to the reward
of the truncated chunk (`bootstrap_truncated_rewards`, or the `truncated` / `final_values`
arguments of `gae_advantages`); the done flag still cuts the recursion, since V_{k+1} belongs to the
next episode. Without auto-reset the environment stays at its final observation, so V_{k+1} *is*
V(final_obs): pass `terminations` (the dones that are true terminal states) and the value term is
cut only by those, while the advantage recursion is still cut by every done.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _dones_per_step(dones: Array, num_steps: int) -> Array:
    """Float done flags in pirl's layout `[T, ...]` (flag k ends step k) from either layout."""
    dones = jnp.asarray(dones)
    if dones.shape[0] == num_steps + 1:  # RLinf layout: drop the flag carried in from before
        dones = dones[1:]
    elif dones.shape[0] != num_steps:
        raise ValueError(
            f"dones has {dones.shape[0]} time steps but rewards has {num_steps}; pass dones of "
            f"shape [T, B] (dones[k] ends chunk step k) or [T + 1, B] (RLinf layout)"
        )
    return dones.astype(jnp.float32)


def valid_step_mask(dones: Array, num_steps: int | None = None) -> Array:
    """Which chunk steps belong to each environment's first episode (no auto-reset mid-rollout).

    Args:
      dones: bool/float `[T, B, ...]` (pirl layout) or `[T + 1, B, ...]` (RLinf layout, in which
        case `dones[0]`, the flag carried in from before the rollout, also invalidates everything
        if set). Pass `num_steps=T` to disambiguate the RLinf layout.
      num_steps: T, the number of chunk steps; defaults to `dones.shape[0]` (pirl layout).

    Returns:
      bool `[T, B, ...]`: True iff no episode ended before step k (the ending step is valid).
    """
    dones = jnp.asarray(dones).astype(jnp.int32)
    num_steps = dones.shape[0] if num_steps is None else num_steps
    if dones.shape[0] == num_steps:
        dones = jnp.concatenate([jnp.zeros_like(dones[:1]), dones], axis=0)
    elif dones.shape[0] != num_steps + 1:
        raise ValueError(f"dones has {dones.shape[0]} time steps; expected {num_steps} or {num_steps + 1}")
    # dones is now RLinf-layout [T + 1]: step k is valid iff no flag in dones[0..k] is set.
    return jnp.cumsum(dones, axis=0)[:-1] == 0


def bootstrap_truncated_rewards(rewards: Array, truncated: Array, final_values: Array, gamma: float) -> Array:
    """Add γ·V(final_obs) to the reward of every chunk that ended by truncation.

    Args:
      rewards: `[T, B, ...]` chunk rewards.
      truncated: bool/float `[T, B, ...]`, True where the episode was cut by the time limit during
        step k (not by success/failure).
      final_values: `[T, B, ...]`, the critic's value of the last observation of that episode (the
        observation before the auto-reset); ignored where `truncated` is False.
      gamma: discount per chunk step.

    Returns:
      `[T, B, ...]` rewards with the bootstrap added.
    """
    truncated = jnp.asarray(truncated).astype(rewards.dtype)
    # where() rather than a product so a garbage final value on a non-truncated step can't leak (inf*0).
    bonus = jnp.where(truncated > 0, gamma * final_values, 0.0)
    return rewards + bonus.astype(rewards.dtype)


def gae_advantages(
    rewards: Array,
    values: Array,
    dones: Array,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
    next_value: Array | None = None,
    truncated: Array | None = None,
    final_values: Array | None = None,
    valid_mask: Array | None = None,
    terminations: Array | None = None,
) -> tuple[Array, Array]:
    """Generalised advantage estimation per chunk step (see the module docstring for conventions).

    Args:
      rewards: f32 `[T, B, ...]` chunk rewards (summed over the executed chunk).
      values: f32 `[T + 1, B, ...]` values V_0..V_T, or `[T, B, ...]` together with `next_value`.
      dones: bool/float `[T, B, ...]` (dones[k] ends step k) or `[T + 1, B, ...]` (RLinf layout).
      gamma: discount per chunk step.
      lam: GAE λ per chunk step.
      next_value: f32 `[B, ...]`, V of the observation after the last step; required iff `values`
        has T entries.
      truncated: optional bool `[T, B, ...]`; with `final_values`, bootstraps truncated chunks.
      final_values: optional f32 `[T, B, ...]`, V(final_obs) of each truncated episode.
      valid_mask: optional bool `[T, B, ...]`; advantages and returns are zeroed where False.
      terminations: optional bool `[T, B, ...]` (pirl layout): the dones after which the state has
        no value; the bootstrap γ·V_{k+1} is cut by these only (default: by every done). Use it
        when the environment does not reset, so V_{k+1} is the value of the truncated episode's
        final observation.

    Returns:
      (advantages f32 `[T, B, ...]`, returns f32 `[T, B, ...]` = advantages + V_{0..T-1}).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    num_steps = rewards.shape[0]
    if values.shape[0] == num_steps:
        if next_value is None:
            raise ValueError(
                "values has T entries (the same as rewards); pass next_value=V(obs after the last "
                "step), or pass values with T + 1 entries"
            )
        values = jnp.concatenate([values, jnp.asarray(next_value, jnp.float32)[None]], axis=0)
    elif next_value is not None:
        raise ValueError("pass next_value only with values of T entries; values already has T + 1")
    if values.shape != (num_steps + 1, *rewards.shape[1:]):
        raise ValueError(
            f"values has shape {values.shape}; expected {(num_steps + 1, *rewards.shape[1:])} for "
            f"rewards of shape {rewards.shape}"
        )
    if (truncated is None) != (final_values is None):
        raise ValueError("truncated and final_values must be given together")
    if truncated is not None:
        rewards = bootstrap_truncated_rewards(rewards, truncated, jnp.asarray(final_values), gamma)
    not_done = 1.0 - _dones_per_step(dones, num_steps)
    if terminations is None:
        not_terminal = not_done
    else:
        not_terminal = 1.0 - _dones_per_step(terminations, num_steps)

    def backward_step(next_advantage, step):
        reward, value, next_val, cont, bootstrap = step
        delta = reward + gamma * next_val * bootstrap - value
        advantage = delta + gamma * lam * cont * next_advantage
        return advantage, advantage

    _, advantages = lax.scan(
        backward_step,
        jnp.zeros_like(rewards[0]),
        (rewards, values[:-1], values[1:], not_done, not_terminal),
        reverse=True,
    )
    returns = advantages + values[:-1]
    if valid_mask is not None:
        valid = jnp.asarray(valid_mask, jnp.float32)
        advantages, returns = advantages * valid, returns * valid
    return advantages, returns


class GRPOAdvantages(NamedTuple):
    """Result of `grpo_advantages` (unpacks as a tuple)."""

    advantages: Array
    """f32 [T, B]: each environment's group-normalised score on its valid steps, 0 elsewhere."""
    mask: Array
    """bool [T, B]: valid steps of environments whose group survived the reward filter."""
    scores: Array
    """f32 [B]: sum of chunk rewards up to and including the first done."""


def grpo_advantages(
    rewards: Array,
    dones: Array,
    group_size: int,
    *,
    filter_rewards: bool = False,
    bounds: tuple[float, float] = (0.1, 0.9),
    epsilon: float = 1e-6,
) -> GRPOAdvantages:
    """Group-relative advantages: one normalised episode score per environment, broadcast over time.

    Environments `[g·G, (g+1)·G)` form group g (they share one reset state). Each environment's score
    is the sum of its rewards up to and including its first done; within a group,
    A = (score − mean) / (std + epsilon) with the unbiased std (an all-equal group gives A = 0).

    Args:
      rewards: f32 `[T, B]` chunk rewards.
      dones: bool `[T, B]` (pirl layout) or `[T + 1, B]` (RLinf layout).
      group_size: G ≥ 2; B must be a multiple of G.
      filter_rewards: drop (mask out) groups whose mean score lies outside `bounds` — groups that
        all succeed or all fail carry no learning signal.
      bounds: inclusive [low, high] for the group mean score when `filter_rewards`.
      epsilon: added to the std.

    Returns:
      `GRPOAdvantages(advantages [T, B], mask [T, B], scores [B])`.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [T, B]; got shape {rewards.shape}")
    num_steps, batch = rewards.shape
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group std; got {group_size}")
    if batch % group_size:
        raise ValueError(
            f"the number of environments ({batch}) must be a multiple of group_size ({group_size})"
        )
    valid = valid_step_mask(dones, num_steps)
    scores = jnp.sum(rewards * valid, axis=0)
    grouped = scores.reshape(batch // group_size, group_size)
    mean = grouped.mean(axis=1, keepdims=True)
    std = grouped.std(axis=1, ddof=1, keepdims=True)
    normalized = ((grouped - mean) / (std + epsilon)).reshape(batch)
    keep = jnp.ones((batch,), bool)
    if filter_rewards:
        low, high = bounds
        group_keep = (mean[:, 0] >= low) & (mean[:, 0] <= high)
        keep = jnp.repeat(group_keep, group_size)
    loss_mask = valid & keep[None, :]
    advantages = jnp.where(loss_mask, normalized[None, :], 0.0)
    return GRPOAdvantages(advantages=advantages, mask=loss_mask, scores=scores)


def normalize_advantages(advantages: Array, mask: Array | None = None, epsilon: float = 1e-5) -> Array:
    """(A − mean) / (std + epsilon) over the valid entries (population std); invalid entries → 0.

    Args:
      advantages: f32 `[...]`.
      mask: optional bool, same shape as `advantages` (or broadcastable by trailing dims).
      epsilon: added to the std.
    """
    advantages = jnp.asarray(advantages, jnp.float32)
    if mask is None:
        mean = advantages.mean()
        std = advantages.std()
        return (advantages - mean) / (std + epsilon)
    weight = jnp.broadcast_to(
        _expand_trailing(jnp.asarray(mask, jnp.float32), advantages.ndim), advantages.shape
    )
    count = jnp.maximum(weight.sum(), 1.0)
    mean = (advantages * weight).sum() / count
    var = (jnp.square(advantages - mean) * weight).sum() / count
    return jnp.where(weight > 0, (advantages - mean) / (jnp.sqrt(var) + epsilon), 0.0)


def _expand_trailing(x: Array, ndim: int) -> Array:
    """Append singleton axes so `x` broadcasts against an array of rank `ndim` from the left."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def rollout_metrics(
    rewards: Array,
    advantages: Array,
    returns: Array | None = None,
    mask: Array | None = None,
) -> dict[str, Array]:
    """The `rollout/*` scalars: mean reward and mean/max/min advantage and return over valid steps.

    Args:
      rewards, advantages, returns: f32 `[T, B]` (returns optional, e.g. absent for GRPO).
      mask: optional bool `[T, B]` of valid steps (all valid if None).
    """
    weight = jnp.ones(advantages.shape, bool) if mask is None else jnp.asarray(mask, bool)
    count = jnp.maximum(weight.sum(), 1)

    def stats(name: str, x: Array) -> dict[str, Array]:
        return {
            f"rollout/{name}_mean": jnp.where(weight, x, 0.0).sum() / count,
            f"rollout/{name}_max": jnp.where(weight, x, -jnp.inf).max(),
            f"rollout/{name}_min": jnp.where(weight, x, jnp.inf).min(),
        }

    metrics = {"rollout/rewards": jnp.where(weight, rewards, 0.0).sum() / count}
    metrics |= stats("advantages", advantages)
    if returns is not None:
        metrics |= stats("returns", returns)
    return metrics
