"""Optimizer for RL fine-tuning: AdamW with a separate value-head lr, frozen parameters, grad clipping.

Parameters fall into three groups, chosen by two boolean masks (pytrees of Python bools with the
structure of the params, or callables `params -> mask`, e.g. from `pirl.policies.trainable_mask`):

* frozen (`trainable_mask` False): handled by `pirl.policies.masks`, the one mechanism RL and SFT
  share: gradients are taken w.r.t. the trainable leaves only (`accumulate_gradients`), the
  optimizer holds no state for frozen leaves and returns updates of the trainable part only, and
  `apply_updates` passes frozen leaves through untouched (bit-identical).
* value head (`trainable_mask` and `value_head_mask` True): AdamW at `value_lr`.
* policy (the other trainable leaves): AdamW at `lr`.

The global grad-norm clip (1.0 for PPO, 2.0 for GRPO) runs over all trainable gradients together,
before the per-group AdamW. Gradient accumulation: `accumulate_gradients` scans over micro-batches
inside one jitted step (preferred: one optimizer step per minibatch, as in πRL; given the model part
of the loss as `forward` and the data-parallel mesh axes, it keeps per-device partial gradients and
reduces them across devices once per call instead of once per micro-batch); or set
`OptimizerConfig.accumulate_steps` > 1 to wrap the optimizer in `optax.MultiSteps`, which
accumulates across successive `update` calls and steps every k-th call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pirl.policies import masks

PyTree = Any
Mask = masks.Mask

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


def param_labels(params: PyTree, trainable_mask: Mask = None, value_head_mask: Mask = None) -> PyTree:
    """Label every leaf "policy", "value" or "frozen" (see the module docstring)."""
    trainable = masks.resolve_mask(trainable_mask, params, True, "trainable_mask")
    value_head = masks.resolve_mask(value_head_mask, params, False, "value_head_mask")
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


def make_optimizer(
    cfg: OptimizerConfig, trainable_mask: Mask = None, value_head_mask: Mask = None
) -> optax.GradientTransformation:
    """AdamW (policy lr / value lr) + global grad-norm clip, over the trainable leaves only.

    Args:
      cfg: hyper-parameters.
      trainable_mask: pytree of bools (True = trained) or callable params -> mask; None trains all.
      value_head_mask: pytree of bools (True = value-head leaf) or callable; None means no value head.

    Returns:
      `masks.trainable_optimizer`: `init` takes the full params (frozen leaves get no state),
      `update(grads, state, params)` returns updates of the trainable part, for `apply_updates`.
    """
    if cfg.clip_grad_norm < 0:
        raise ValueError(f"clip_grad_norm must be >= 0 (0 disables clipping); got {cfg.clip_grad_norm}")
    if cfg.accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1; got {cfg.accumulate_steps}")
    policy_lr, value_lr = learning_rate_schedules(cfg)

    def labels(trainable_params: PyTree) -> PyTree:
        value_head = masks.resolve_mask(value_head_mask, trainable_params, False, "value_head_mask")
        return jax.tree.map(lambda v: VALUE if v else POLICY, value_head)

    def adamw(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)

    stages = [optax.clip_by_global_norm(cfg.clip_grad_norm)] if cfg.clip_grad_norm > 0 else []
    inner = optax.chain(
        *stages, optax.multi_transform({POLICY: adamw(policy_lr), VALUE: adamw(value_lr)}, labels)
    )
    if cfg.accumulate_steps > 1:
        inner = optax.MultiSteps(inner, every_k_schedule=cfg.accumulate_steps)
    return masks.trainable_optimizer(inner, trainable_mask)


def apply_updates(params: PyTree, updates: PyTree, trainable_mask: Mask = None) -> PyTree:
    """Add the optimizer's updates (the trainable part); frozen leaves are passed through untouched."""
    return masks.apply_trainable_updates(params, updates, trainable_mask)


def trainable_grad_norm(grads: PyTree, trainable_mask: Mask = None) -> jax.Array:
    """Global L2 norm of the trainable gradients (what the clip sees); `grads` full or trainable part."""
    full = masks.resolve_mask(trainable_mask, grads)
    return optax.global_norm(jax.tree.map(lambda t, g: g if t else None, full, grads))


def optimizer_metrics(
    cfg: OptimizerConfig, grads: PyTree, step: jax.Array | int, trainable_mask: Mask = None
) -> dict[str, jax.Array]:
    """`train/actor/grad_norm` (before clipping) and `train/actor/lr` at optimizer step `step`."""
    policy_lr, _ = learning_rate_schedules(cfg)
    return {
        "train/actor/grad_norm": trainable_grad_norm(grads, trainable_mask),
        "train/actor/lr": jnp.asarray(policy_lr(step), jnp.float32),
    }


def accumulate_gradients(
    loss_fn: Callable[..., tuple[jax.Array, PyTree]],
    params: PyTree,
    batch: PyTree,
    num_micro: int,
    *,
    trainable_mask: Mask = None,
    rng: jax.Array | None = None,
    forward: Callable[[PyTree, PyTree], PyTree] | None = None,
    mesh: Mesh | None = None,
    local_axes: Sequence[str] = (),
) -> tuple[tuple[jax.Array, PyTree], PyTree]:
    """Mean loss, aux and gradients over `num_micro` micro-batches, scanned (one compiled body).

    Equals `jax.value_and_grad(loss_fn, has_aux=True)(params, batch)` on the trainable leaves when the
    loss is a plain mean over samples (masked means weight micro-batches equally, not by their valid
    counts).

    Args:
      loss_fn: `(params, micro_batch) -> (scalar loss, aux pytree of arrays)`, or
        `(params, micro_batch, rng)` when `rng` is given (then micro-batch i gets `fold_in(rng, i)`);
        with `forward`: `(forward's outputs, micro_batch) -> (loss, aux)`.
      params: full parameter tree.
      batch: pytree of arrays with a common leading batch axis `[N, ...]`, N divisible by num_micro;
        micro-batch i holds rows i, i + num_micro, i + 2·num_micro, ...
      num_micro: number of micro-batches (1: a plain value_and_grad).
      trainable_mask: optional bools; gradients are taken w.r.t. trainable leaves only
        (`masks.trainable_value_and_grad`): frozen ones are neither computed nor stored.
      rng: optional PRNG key for stochastic losses (not with `forward`).
      forward: optional `(params, micro_batch) -> outputs`, every output leaf with the micro-batch's
        rows on its leading axis (the model, no cross-sample reduction); the loss is then
        `loss_fn(forward(params, mb), mb)`, and with `local_axes` the gradients stay per device.
      mesh, local_axes: with `forward`, the batch axes of `mesh` over which the trainable leaves are
        replicated but the batch is split (the data-parallel axes). Each group of devices along them
        runs `forward` on its own rows with its own copy of the trainable leaves (a `shard_map`),
        so a micro-batch's weight gradient stays a per-device partial sum: the partials are
        accumulated over the micro-batches and summed across `local_axes` once, after the last one.
        Without this the partitioner all-reduces every micro-batch's gradient (docs/scaling.md).
        The loss itself (means over the whole micro-batch) is taken over all devices as before.
        Needs micro-batches that split evenly over `local_axes` (else: the plain accumulation).

    Returns:
      ((mean loss, mean aux), grads of the trainable part: None at frozen leaves).
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
    if forward is not None and rng is not None:
        raise ValueError("accumulate_gradients takes `rng` or `forward`, not both")
    local_axes = tuple(local_axes)
    shards = math.prod(mesh.shape[a] for a in local_axes) if mesh is not None else 1
    objective = loss_fn
    if forward is not None:

        def loss_fn(full_params, micro_batch):
            return objective(forward(full_params, micro_batch), micro_batch)

    # Strided micro-batches (rows i, i + num_micro, ...): a device's contiguous block of the
    # batch then feeds every micro-batch equally, so the split needs no data movement.
    micro_batches = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(batch_size // num_micro, num_micro, *x.shape[1:]), 0, 1), batch
    )
    if forward is not None and shards > 1 and num_micro > 1 and (batch_size // num_micro) % shards == 0:
        return _accumulate_shard_local(
            forward, objective, params, micro_batches, num_micro, trainable_mask, mesh, local_axes
        )

    def micro_loss(full_params, micro_batch, index):
        if rng is None:
            return loss_fn(full_params, micro_batch)
        return loss_fn(full_params, micro_batch, jax.random.fold_in(rng, index))

    value_and_grad = masks.trainable_value_and_grad(micro_loss, trainable_mask, has_aux=True)
    if num_micro == 1:
        return value_and_grad(params, batch, 0)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    (loss_shape, aux_shape), grad_shape = jax.eval_shape(value_and_grad, params, first, 0)

    def body(carry, xs):
        micro_batch, index = xs
        (loss_i, aux_i), grads_i = value_and_grad(params, micro_batch, index)
        return jax.tree.map(jnp.add, carry, (loss_i, aux_i, grads_i)), None

    init = (_zeros(loss_shape), _zeros(aux_shape), _zeros(grad_shape))
    total, _ = lax.scan(body, init, (micro_batches, jnp.arange(num_micro)))
    loss, aux, grads = jax.tree.map(lambda x: x / num_micro, total)
    return (loss, aux), grads


def _zeros(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def _accumulate_shard_local(
    forward: Callable[[PyTree, PyTree], PyTree],
    objective: Callable[..., tuple[jax.Array, PyTree]],
    params: PyTree,
    micro_batches: PyTree,
    num_micro: int,
    trainable_mask: Mask,
    mesh: Mesh,
    local_axes: tuple[str, ...],
) -> tuple[tuple[jax.Array, PyTree], PyTree]:
    """`accumulate_gradients` with per-device partial gradients along `local_axes` (see there)."""
    shards = math.prod(mesh.shape[a] for a in local_axes)
    trainable, frozen = masks.split_frozen(params, trainable_mask)
    split = PartitionSpec(local_axes)

    def per_shard(x: jax.Array) -> jax.Array:
        # [shards, ...]: dim 0 over local_axes, the rest as the partitioner likes (FSDP dims stay).
        spec = PartitionSpec(local_axes, *(PartitionSpec.UNCONSTRAINED,) * (x.ndim - 1))
        return lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    # One copy of the trainable leaves per shard: its gradient is that shard's partial sum.
    copies = jax.tree.map(lambda x: per_shard(jnp.broadcast_to(x, (shards, *x.shape))), trainable)

    def local_forward(local_copies: PyTree, frozen: PyTree, micro_batch: PyTree) -> PyTree:
        return forward(masks.merge_frozen(jax.tree.map(lambda x: x[0], local_copies), frozen), micro_batch)

    sharded_forward = jax.shard_map(
        local_forward,
        mesh=mesh,
        in_specs=(split, PartitionSpec(), split),
        out_specs=split,
        axis_names=frozenset(local_axes),
    )

    def micro_loss(copies: PyTree, micro_batch: PyTree) -> tuple[jax.Array, PyTree]:
        return objective(sharded_forward(copies, frozen, micro_batch), micro_batch)

    value_and_grad = jax.value_and_grad(micro_loss, has_aux=True)

    def body(carry, micro_batch):
        (loss_i, aux_i), grads_i = value_and_grad(copies, micro_batch)
        loss, aux, grads = jax.tree.map(jnp.add, carry, (loss_i, aux_i, grads_i))
        return (loss, aux, jax.tree.map(per_shard, grads)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    (loss_shape, aux_shape), grad_shape = jax.eval_shape(value_and_grad, copies, first)
    init = (_zeros(loss_shape), _zeros(aux_shape), jax.tree.map(per_shard, _zeros(grad_shape)))
    (loss, aux, partials), _ = lax.scan(body, init, micro_batches)
    # The one cross-device reduction of the gradients per call: the sum of the shards' partials.
    grads = jax.tree.map(lambda g: g.sum(axis=0) / num_micro, partials)
    return (loss / num_micro, jax.tree.map(lambda x: x / num_micro, aux)), grads
