"""Optimizer for RL fine-tuning: AdamW with a separate value-head lr, frozen parameters, grad clipping.

Parameters fall into three groups, chosen by two boolean masks (pytrees of Python bools with the
structure of the params, or callables `params -> mask`, e.g. from `pirl.policies.trainable_mask`):

* frozen (`trainable_mask` False): gradient dropped *before* anything reads it, no optimizer state,
  update exactly zero. Under `jit`, XLA then eliminates the weight-gradient computation of frozen
  leaves. Apply updates with `apply_updates(..., trainable_mask)` so frozen leaves are returned
  untouched (bit-identical, not `p + 0`).
* value head (`trainable_mask` and `value_head_mask` True): AdamW at `value_lr`.
* policy (the other trainable leaves): AdamW at `lr`.

The global grad-norm clip (1.0 for PPO, 2.0 for GRPO) runs over all trainable gradients together,
before the per-group AdamW. Gradient accumulation: `accumulate_gradients` scans over micro-batches
inside one jitted step (preferred: one optimizer step per minibatch, as in πRL); or set
`OptimizerConfig.accumulate_steps` > 1 to wrap the optimizer in `optax.MultiSteps`, which
accumulates across successive `update` calls and steps every k-th call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree] | None

POLICY, VALUE, FROZEN = "policy", "value", "frozen"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters for RL fine-tuning (πRL defaults for π0 on LIBERO-Spatial)."""

    lr: float = 5e-6
    """Learning rate of the trainable policy parameters (constant after warm-up)."""
    value_lr: float = 1e-4
    """Learning rate of the value head."""
    b1: float = 0.9
    """Adam β1."""
    b2: float = 0.95
    """Adam β2."""
    eps: float = 1e-8
    """Adam ε."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay, applied to every trainable parameter."""
    clip_grad_norm: float = 1.0
    """Global grad-norm clip over all trainable gradients (2.0 for GRPO); 0 disables it."""
    warmup_steps: int = 0
    """Linear lr warm-up from 0 over this many optimizer steps (0: constant lr from the start)."""
    accumulate_steps: int = 1
    """> 1 wraps the optimizer in optax.MultiSteps: accumulate this many update() calls per step."""
    critic_warmup_steps: int = 0
    """RLinf's critic_warmup_steps: for this many first optimizer steps only the critic learns (the
    policy and entropy terms of the loss are dropped)."""


def _resolve(mask: Mask, params: PyTree, default: bool) -> PyTree:
    """The mask as a full tree of Python bools; a prefix tree (e.g. {"vlm": False, "expert": True})
    is broadcast over the subtrees it covers."""
    if mask is None:
        return jax.tree.map(lambda _: default, params)
    mask = mask(params) if callable(mask) else mask
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
    except ValueError as error:
        raise ValueError(
            f"a mask must have the structure of the params (or be a prefix of it): {error}"
        ) from None


def _check_mask(mask: PyTree, params: PyTree, name: str) -> None:
    mask_def, params_def = jax.tree.structure(mask), jax.tree.structure(params)
    if mask_def != params_def:
        raise ValueError(f"{name} must have the structure of the params; got {mask_def} vs {params_def}")
    bad = [m for m in jax.tree.leaves(mask) if not isinstance(m, bool | np.bool_)]
    if bad:
        raise ValueError(f"{name} leaves must be Python bools (static); got e.g. {type(bad[0]).__name__}")


def param_labels(params: PyTree, trainable_mask: Mask = None, value_head_mask: Mask = None) -> PyTree:
    """Label every leaf "policy", "value" or "frozen" (see the module docstring)."""
    trainable = _resolve(trainable_mask, params, True)
    value_head = _resolve(value_head_mask, params, False)
    _check_mask(trainable, params, "trainable_mask")
    _check_mask(value_head, params, "value_head_mask")
    return jax.tree.map(
        lambda t, v: FROZEN if not bool(t) else (VALUE if bool(v) else POLICY), trainable, value_head
    )


def learning_rate_schedules(cfg: OptimizerConfig) -> tuple[optax.Schedule, optax.Schedule]:
    """(policy lr schedule, value-head lr schedule): constant, after an optional linear warm-up."""

    def schedule(peak: float) -> optax.Schedule:
        if cfg.warmup_steps <= 0:
            return optax.constant_schedule(peak)
        return optax.linear_schedule(0.0, peak, cfg.warmup_steps)

    return schedule(cfg.lr), schedule(cfg.value_lr)


def gradient_preprocessing(cfg: OptimizerConfig, trainable_mask: Mask = None) -> optax.GradientTransformation:
    """The stateless first stage of `make_optimizer`: zero frozen grads, then clip the global norm.

    Frozen grads are dropped first so the norm covers trainable gradients only (and XLA can skip
    computing the frozen ones).
    """

    def frozen(params: PyTree) -> PyTree:
        return jax.tree.map(lambda t: not t, _resolve(trainable_mask, params, True))

    stages = [optax.masked(optax.set_to_zero(), frozen)]
    if cfg.clip_grad_norm > 0:
        stages.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    return optax.chain(*stages)


def make_optimizer(
    cfg: OptimizerConfig, trainable_mask: Mask = None, value_head_mask: Mask = None
) -> optax.GradientTransformation:
    """AdamW (policy lr / value lr) + global grad-norm clip + frozen-parameter masking.

    Args:
      cfg: hyper-parameters.
      trainable_mask: pytree of bools (True = trained) or callable params -> mask; None trains all.
      value_head_mask: pytree of bools (True = value-head leaf) or callable; None means no value head.

    Returns:
      An optax transformation over the *full* params tree. Frozen leaves hold no optimizer state and
      always get a zero update.
    """
    if cfg.clip_grad_norm < 0:
        raise ValueError(f"clip_grad_norm must be >= 0 (0 disables clipping); got {cfg.clip_grad_norm}")
    if cfg.accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1; got {cfg.accumulate_steps}")
    policy_lr, value_lr = learning_rate_schedules(cfg)

    def labels(params: PyTree) -> PyTree:
        return param_labels(params, trainable_mask, value_head_mask)

    def adamw(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)

    optimizer = optax.chain(
        gradient_preprocessing(cfg, trainable_mask),
        optax.multi_transform(
            {POLICY: adamw(policy_lr), VALUE: adamw(value_lr), FROZEN: optax.set_to_zero()}, labels
        ),
    )
    if cfg.accumulate_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=cfg.accumulate_steps)
    return optimizer


def apply_updates(params: PyTree, updates: PyTree, trainable_mask: Mask = None) -> PyTree:
    """`optax.apply_updates`, but frozen leaves are passed through untouched (bit-identical)."""
    trainable = _resolve(trainable_mask, params, True)
    _check_mask(trainable, params, "trainable_mask")
    return jax.tree.map(lambda t, p, u: (p + u.astype(p.dtype)) if bool(t) else p, trainable, params, updates)


def trainable_grad_norm(grads: PyTree, trainable_mask: Mask = None) -> jax.Array:
    """Global L2 norm of the trainable gradients (what the clip sees)."""
    trainable = _resolve(trainable_mask, grads, True)
    leaves = [g for t, g in zip(jax.tree.leaves(trainable), jax.tree.leaves(grads), strict=True) if t]
    return optax.global_norm(leaves)


def optimizer_metrics(
    cfg: OptimizerConfig, grads: PyTree, step: jax.Array | int, trainable_mask: Mask = None
) -> dict[str, jax.Array]:
    """`train/actor/grad_norm` (before clipping) and `train/actor/lr` at optimizer step `step`."""
    policy_lr, _ = learning_rate_schedules(cfg)
    return {
        "train/actor/grad_norm": trainable_grad_norm(grads, trainable_mask),
        "train/actor/lr": jnp.asarray(policy_lr(step), jnp.float32),
    }


def split_trainable(params: PyTree, trainable_mask: Mask) -> PyTree:
    """The trainable sub-tree: frozen leaves replaced by None (differentiate w.r.t. this only)."""
    trainable = _resolve(trainable_mask, params, True)
    _check_mask(trainable, params, "trainable_mask")
    return jax.tree.map(lambda t, p: p if t else None, trainable, params)


def merge_trainable(params: PyTree, trainable_params: PyTree, trainable_mask: Mask) -> PyTree:
    """Inverse of `split_trainable`: trainable leaves from `trainable_params`, the rest from `params`."""
    trainable = _resolve(trainable_mask, params, True)
    return jax.tree.map(lambda t, p, q: q if t else p, trainable, params, trainable_params)


def accumulate_gradients(
    loss_fn: Callable[..., tuple[jax.Array, PyTree]],
    params: PyTree,
    batch: PyTree,
    num_micro: int,
    *,
    trainable_mask: Mask = None,
    rng: jax.Array | None = None,
) -> tuple[tuple[jax.Array, PyTree], PyTree]:
    """Mean loss, aux and gradients over `num_micro` micro-batches, scanned (one compiled body).

    Equals `jax.value_and_grad(loss_fn, has_aux=True)(params, batch)` when the loss is a plain mean
    over samples (masked means weight micro-batches equally, not by their valid counts).

    Args:
      loss_fn: `(params, micro_batch) -> (scalar loss, aux pytree of arrays)`, or
        `(params, micro_batch, rng)` when `rng` is given (then micro-batch i gets `fold_in(rng, i)`).
      params: full parameter tree.
      batch: pytree of arrays with a common leading batch axis `[N, ...]`, N divisible by num_micro.
      num_micro: number of micro-batches (1: a plain value_and_grad).
      trainable_mask: optional bools; gradients are taken w.r.t. trainable leaves only, and frozen
        leaves get zero gradients (which the optimizer drops), so no memory is spent on them.
      rng: optional PRNG key for stochastic losses.

    Returns:
      ((mean loss, mean aux), grads with the structure of `params`).
    """
    sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"all batch leaves must share the leading (batch) size; got sizes {sorted(sizes)}")
    (batch_size,) = sizes
    if num_micro < 1 or batch_size % num_micro:
        raise ValueError(
            f"the batch size {batch_size} must be divisible by num_micro={num_micro}; pick a num_micro "
            f"that divides it"
        )
    trainable = split_trainable(params, trainable_mask)

    def micro_value_and_grad(trainable_params, micro_batch, index):
        def loss_of_trainable(t):
            full = merge_trainable(params, t, trainable_mask)
            if rng is None:
                return loss_fn(full, micro_batch)
            return loss_fn(full, micro_batch, jax.random.fold_in(rng, index))

        return jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable_params)

    if num_micro == 1:
        (loss, aux), grads = micro_value_and_grad(trainable, batch, 0)
    else:
        micro_batches = jax.tree.map(
            lambda x: x.reshape(num_micro, batch_size // num_micro, *x.shape[1:]), batch
        )
        first = jax.tree.map(lambda x: x[0], micro_batches)
        (loss_shape, aux_shape), grad_shape = jax.eval_shape(micro_value_and_grad, trainable, first, 0)

        def zeros(tree):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

        def body(carry, xs):
            micro_batch, index = xs
            (loss_i, aux_i), grads_i = micro_value_and_grad(trainable, micro_batch, index)
            return jax.tree.map(jnp.add, carry, (loss_i, aux_i, grads_i)), None

        init = (zeros(loss_shape), zeros(aux_shape), zeros(grad_shape))
        total, _ = lax.scan(body, init, (micro_batches, jnp.arange(num_micro)))
        loss, aux, grads = jax.tree.map(lambda x: x / num_micro, total)
    full_grads = jax.tree.map(
        lambda t, p, g: g if t else jnp.zeros_like(p),
        _resolve(trainable_mask, params, True),
        params,
        grads,
    )
    return (loss, aux), full_grads
