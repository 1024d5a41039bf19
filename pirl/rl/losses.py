"""PPO / GRPO losses: clipped policy loss, clipped-Huber value loss, entropy bonus, and their metrics.

Shapes. A minibatch holds N samples, each one chunk step of one environment. Log-probs may be at
any aggregation level — `token_level` `[N, chunk, action_dim]`, `action_level` `[N, chunk]`,
`chunk_level` `[N]` — while advantages, returns, values and the valid-step mask are per sample
`[N]`. Per-sample arrays are broadcast against the log-probs by appending trailing axes (not by
numpy's leading-axis rule), so a `[N]` advantage multiplies every element of its `[N, chunk, 7]`
log-prob. Means are masked means over the broadcast elements.

Formulas (πRL, RLinf's code):
    ρ = exp(logp − logp_old);  L_π = mean(max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)))
    V_clip = V_old + clip(V − V_old, ±c);  L_V = mean(max(Huber_δ(R − V), Huber_δ(R − V_clip)))
    loss = L_π + value_loss_coef·L_V − entropy_bonus·mean(H)

Aggregation (RLinf's `loss_agg_func`): 'token-mean' is the masked mean over every broadcast
element; 'seq-mean-token-mean' / 'seq-mean-token-sum' first take the masked mean / sum over the
last axis, then the plain mean over the rest (for token-level log-probs RLinf's
seq-mean-token-mean divides by its un-broadcast per-sample mask, i.e. by 1; pirl by the count of
valid elements). With per-sample `weights` (RLinf's override when
episodes neither auto-reset nor ignore terminations: weight = max_episode_steps / the sample's
episode length) the policy and value terms become mean(x · mask · weight) over *all* elements
(RLinf's `masked_mean_ratio`), so every episode weighs the same whatever its length.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from pirl.errors import UserError

Array = jax.Array

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
_LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


@dataclasses.dataclass(frozen=True)
class PPOLossConfig:
    """Hyper-parameters of the PPO / GRPO loss (πRL defaults)."""

    clip_ratio_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low."""
    clip_ratio_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + ε_high."""
    value_clip: float = 0.2
    """c: the new value may move at most ±c from the rollout value in the clipped branch."""
    huber_delta: float = 10.0
    """δ of the Huber value loss (quadratic within ±δ, linear beyond)."""
    value_loss_coef: float = 1.0
    """Weight of the value loss in the total loss."""
    entropy_bonus: float = 0.0
    """β: the loss subtracts β × mean entropy (0.005 for Flow-Noise, 0 for Flow-SDE)."""
    loss_agg_func: LossAgg = "token-mean"
    """RLinf's loss aggregation of the policy loss (see the module docstring)."""

    def __post_init__(self):
        if self.loss_agg_func not in _LOSS_AGGS:
            raise UserError(f"loss.loss_agg_func must be one of {_LOSS_AGGS}, got {self.loss_agg_func!r}")


def expand_trailing(x: Array, ndim: int) -> Array:
    """Append singleton axes to `x` until it has rank `ndim` (per-sample → per-element broadcast)."""
    x = jnp.asarray(x)
    if x.ndim > ndim:
        raise ValueError(f"cannot broadcast an array of shape {x.shape} to rank {ndim}")
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def masked_mean(x: Array, mask: Array | None = None) -> Array:
    """Mean of `x` over the entries where `mask` (broadcast by trailing axes) is true; 0 if none are."""
    x = jnp.asarray(x, jnp.float32)
    if mask is None:
        return x.mean()
    weight = jnp.broadcast_to(expand_trailing(jnp.asarray(mask, jnp.float32), x.ndim), x.shape)
    return (x * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def aggregate_loss(
    x: Array, mask: Array | None = None, weights: Array | None = None, agg: LossAgg = "token-mean"
) -> Array:
    """RLinf's loss aggregation of per-element losses `x` (see the module docstring).

    Args:
      x: f32 `[N, ...]` per-element losses.
      mask: optional bool `[N]` (or a prefix of x's shape), broadcast by trailing axes.
      weights: optional f32 `[N]` per-sample weights; when given, the result is
        mean(x · mask · weights) over all elements, whatever `agg` says (RLinf's override).
      agg: 'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum'.
    """
    x = jnp.asarray(x, jnp.float32)
    m = (
        jnp.ones(x.shape, jnp.float32)
        if mask is None
        else expand_trailing(jnp.asarray(mask, jnp.float32), x.ndim)
    )
    m = jnp.broadcast_to(m, x.shape)
    if weights is not None:
        w = expand_trailing(jnp.asarray(weights, jnp.float32), x.ndim)
        return jnp.mean(x * m * w)
    if agg == "token-mean":
        return masked_mean(x, mask)
    token_sum = jnp.sum(x * m, axis=-1)
    if agg == "seq-mean-token-sum":
        return jnp.mean(token_sum)
    if agg == "seq-mean-token-mean":
        return jnp.mean(token_sum / jnp.maximum(jnp.sum(m, axis=-1), 1.0))
    raise ValueError(f"unknown loss aggregation {agg!r}; use one of {_LOSS_AGGS}")


def huber(error: Array, delta: float) -> Array:
    """Elementwise Huber loss: ½e² for |e| < δ, δ·(|e| − ½δ) beyond."""
    abs_error = jnp.abs(error)
    return jnp.where(abs_error < delta, 0.5 * jnp.square(error), delta * (abs_error - 0.5 * delta))


def policy_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array | None = None,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    weights: Array | None = None,
    agg: LossAgg = "token-mean",
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate loss.

    Args:
      logprobs: f32 `[N, ...]` log-probs under the current parameters (any aggregation level).
      old_logprobs: f32, same shape, from the rollout.
      advantages: f32 `[N]` (or any prefix of `logprobs.shape`), broadcast by trailing axes.
      mask: optional bool, shape like `advantages`; False entries (steps after an episode ended,
        filtered GRPO groups) count neither in the loss nor in the metrics.
      clip_ratio_low, clip_ratio_high: ε_low, ε_high.
      weights, agg: how the per-element losses are aggregated (`aggregate_loss`); the metrics
        stay plain masked means.

    Returns:
      (scalar loss, metrics `train/actor/{policy_loss, ratio, clipped_ratio, approx_kl,
      clip_fraction}`; approx_kl = mean(logp_old − logp), clip_fraction = share of elements where
      the clipped branch is the larger loss).
    """
    logprobs = jnp.asarray(logprobs, jnp.float32)
    old_logprobs = jnp.asarray(old_logprobs, jnp.float32)
    if logprobs.shape != old_logprobs.shape:
        raise ValueError(f"logprobs {logprobs.shape} and old_logprobs {old_logprobs.shape} differ in shape")
    advantages = expand_trailing(jnp.asarray(advantages, jnp.float32), logprobs.ndim)
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss = aggregate_loss(jnp.maximum(loss_unclipped, loss_clipped), mask, weights, agg)
    sg = jax.lax.stop_gradient
    metrics = {
        "train/actor/policy_loss": sg(loss),
        "train/actor/ratio": sg(masked_mean(ratio, mask)),
        "train/actor/clipped_ratio": sg(masked_mean(clipped_ratio, mask)),
        "train/actor/approx_kl": sg(masked_mean(-log_ratio, mask)),
        "train/actor/clip_fraction": sg(masked_mean(loss_clipped > loss_unclipped, mask)),
    }
    return loss, metrics


def explained_variance(values: Array, returns: Array, mask: Array | None = None) -> Array:
    """1 − Var(R − V) / Var(R) over the valid entries; NaN when the returns have zero variance."""
    values = jnp.asarray(values, jnp.float32)
    returns = jnp.asarray(returns, jnp.float32)

    def var(x: Array) -> Array:
        return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)

    var_returns = var(returns)
    ratio = var(returns - values) / jnp.where(var_returns > 0, var_returns, 1.0)
    return jnp.where(var_returns > 0, 1.0 - ratio, jnp.nan)


def value_loss(
    values: Array,
    old_values: Array,
    returns: Array,
    mask: Array | None = None,
    *,
    value_clip: float = 0.2,
    huber_delta: float = 10.0,
    weights: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Clipped Huber value loss, max form: mean(max(Huber(R − V), Huber(R − V_clip))).

    Args:
      values: f32 `[N]` current critic values (one per chunk step).
      old_values: f32 `[N]` values from the rollout.
      returns: f32 `[N]` GAE returns.
      mask: optional bool `[N]` of valid samples.
      value_clip: c in V_clip = V_old + clip(V − V_old, ±c).
      huber_delta: δ of the Huber loss.
      weights: optional f32 `[N]` per-sample weights (RLinf's `masked_mean_ratio`, see
        `aggregate_loss`); None = the masked mean.

    Returns:
      (scalar loss, metrics `train/critic/{value_loss, value_clip_ratio, explained_variance}`;
      value_clip_ratio = share of samples with |V − V_old| > c, i.e. where the clip is active).
    """
    values = jnp.asarray(values, jnp.float32)
    old_values = jnp.asarray(old_values, jnp.float32)
    returns = jnp.asarray(returns, jnp.float32)
    if not values.shape == old_values.shape == returns.shape:
        raise ValueError(
            f"values {values.shape}, old_values {old_values.shape} and returns {returns.shape} must "
            f"have the same shape"
        )
    change = values - old_values
    values_clipped = old_values + jnp.clip(change, -value_clip, value_clip)
    loss = aggregate_loss(
        jnp.maximum(huber(returns - values, huber_delta), huber(returns - values_clipped, huber_delta)),
        mask,
        weights,
    )
    sg = jax.lax.stop_gradient
    metrics = {
        "train/critic/value_loss": sg(loss),
        "train/critic/value_clip_ratio": sg(masked_mean(jnp.abs(change) > value_clip, mask)),
        "train/critic/explained_variance": sg(explained_variance(values, returns, mask)),
    }
    return loss, metrics


def ppo_loss(
    cfg: PPOLossConfig,
    *,
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array | None = None,
    values: Array | None = None,
    old_values: Array | None = None,
    returns: Array | None = None,
    entropy: Array | None = None,
    weights: Array | None = None,
    critic_warmup: Array | bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Total PPO (or, without values, GRPO) loss and its metrics.

    Args:
      cfg: loss hyper-parameters.
      logprobs, old_logprobs: f32 `[N, ...]` (see `policy_loss`).
      advantages: f32 `[N]`.
      mask: optional bool `[N]` of valid samples.
      values, old_values, returns: f32 `[N]`; all three or none (critic-free GRPO).
      entropy: optional f32, broadcastable against `logprobs` by trailing axes (e.g. per element for
        Flow-Noise); its masked mean is the `entropy_loss` metric and is weighted by
        `cfg.entropy_bonus` in the loss.
      weights: optional f32 `[N]` per-sample loss weights (see `aggregate_loss`).
      critic_warmup: (traced) bool; True drops the policy and entropy terms (RLinf's critic
        warm-up: only the critic learns).

    Returns:
      (scalar loss, metrics: those of `policy_loss` and `value_loss` plus
      `train/actor/{entropy_loss, total_loss}`).
    """
    loss, metrics = policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        weights=weights,
        agg=cfg.loss_agg_func,
    )
    actor_on = 1.0 - jnp.asarray(critic_warmup, jnp.float32)
    loss = loss * actor_on
    critic_args = (values, old_values, returns)
    if any(a is not None for a in critic_args):
        if any(a is None for a in critic_args):
            raise ValueError("pass values, old_values and returns together (or none of them for GRPO)")
        critic_loss, critic_metrics = value_loss(
            values,
            old_values,
            returns,
            mask,
            value_clip=cfg.value_clip,
            huber_delta=cfg.huber_delta,
            weights=weights,
        )
        loss = loss + cfg.value_loss_coef * critic_loss
        metrics |= critic_metrics
    if entropy is not None:
        entropy = jnp.asarray(entropy, jnp.float32)
        entropy_mean = masked_mean(entropy, mask)
        loss = loss - actor_on * cfg.entropy_bonus * entropy_mean
    else:
        entropy_mean = jnp.zeros((), jnp.float32)
    metrics["train/actor/entropy_loss"] = jax.lax.stop_gradient(entropy_mean)
    metrics["train/actor/total_loss"] = jax.lax.stop_gradient(loss)
    return loss, metrics
