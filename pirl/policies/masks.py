"""Which policy parameters are trained, and the one mechanism that keeps the others frozen.

Rules (paths as in openpi's checkpoint tree; RL trees hold it under a "model" key):
- `train_expert_only`: the whole VLM is frozen: PaliGemma/img (SigLIP), the LLM's embedder and every
  LLM weight that is not the action expert's (the expert's names end in `_1`, e.g. `q_einsum_1`,
  `mlp_1`, `final_norm_1`).
- LoRA on the LLM (a `lora` leaf among the LLM's own weights): its non-LoRA weights are frozen, as
  in openpi's freeze filter; SigLIP too when `freeze_vision_with_lora` (RL's default; SFT keeps
  openpi's rule, SigLIP trainable).
- LoRA on the action expert: the expert's non-LoRA weights are frozen.
- Everything else (expert, action/state/time projections, value head, noise head) is trainable.
The masks depend only on the tree's structure, so they are plain Python bools usable under jit.

One mask decides everything about frozen leaves, for RL (PPO / GRPO) and SFT (full and LoRA) alike:
- storage: `cast_frozen` stores them in `Pi0Config.frozen_dtype` (bf16 at full size);
- gradient: `trainable_value_and_grad` splits the params (`split_frozen`), differentiates the
  trainable part only and merges the frozen part back inside the loss, so no frozen weight-gradient
  exists in the program (nor a zero-filled one);
- optimizer: `trainable_optimizer` runs the optimizer on the trainable part only (no Adam moments
  or accumulators for frozen leaves); its updates are the trainable part, and
  `apply_trainable_updates` adds them and passes frozen leaves through bit-identical.
Trees of "the trainable part" hold None where a leaf is frozen (and vice versa), so they keep the
params' structure and need no bookkeeping.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pirl.models.config import Pi0Config
from pirl.policies.config import FlowPolicyConfig

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree] | None
"""A tree of Python bools (True = trained) with the params' structure or a prefix of it (e.g.
{"vlm": False, "expert": True}), a callable params -> such a tree, or None (everything trained)."""

FROZEN, ACTOR, CRITIC = "frozen", "actor", "critic"


# ------------------------------------------------------------------------------ the rules


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """A pytree key path (`jax.tree_util` keys) as plain names, e.g. ("PaliGemma", "llm", "einsum")."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def _is_lora(names: tuple[str, ...]) -> bool:
    return any("lora" in n for n in names)


def _llm_part(names: tuple[str, ...]) -> str | None:
    """'expert' / 'llm' for leaves of PaliGemma/llm (openpi: expert names contain `_1`), else None."""
    if "llm" not in names:
        return None
    below = names[names.index("llm") + 1 :]
    return "expert" if any("_1" in n for n in below) else "llm"


def _model_leaf_frozen(
    names: tuple[str, ...],
    train_expert_only: bool,
    freeze_vision_with_lora: bool,
    llm_lora: bool,
    expert_lora: bool,
) -> bool:
    """Whether a leaf of the model (openpi) tree is frozen under the rules of the module docstring."""
    part = _llm_part(names)
    if part == "llm":
        return train_expert_only or (llm_lora and not _is_lora(names))
    if part == "expert":
        # With LoRA on the LLM only, openpi leaves the (non-LoRA) expert fully trainable.
        return expert_lora and not _is_lora(names)
    return "img" in names and (train_expert_only or (llm_lora and freeze_vision_with_lora))


def _names_and_lora(params: PyTree) -> tuple[list[tuple[str, ...]], bool, bool]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    all_names = [path_names(p) for p, _ in leaves]
    llm_lora = any(_llm_part(n) == "llm" and _is_lora(n) for n in all_names)
    expert_lora = any(_llm_part(n) == "expert" and _is_lora(n) for n in all_names)
    return all_names, llm_lora, expert_lora


def model_trainable_mask(
    params: PyTree, train_expert_only: bool = False, freeze_vision_with_lora: bool = False
) -> PyTree:
    """Bools over a bare model tree (openpi layout, what SFT trains): True where the leaf is trained."""
    all_names, llm_lora, expert_lora = _names_and_lora(params)
    mask = [
        not _model_leaf_frozen(n, train_expert_only, freeze_vision_with_lora, llm_lora, expert_lora)
        for n in all_names
    ]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), mask)


def optimizer_labels(params: dict, policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config | None = None) -> Any:
    """Pytree of 'frozen' | 'actor' | 'critic' per leaf of a policy tree ({"model", "value_head", ...}).

    `model_cfg` is accepted for symmetry; LoRA is detected from the tree itself (any `lora` leaf).
    """
    del model_cfg
    all_names, llm_lora, expert_lora = _names_and_lora(params)

    def label(names: tuple[str, ...]) -> str:
        if names[0] == "value_head":
            return CRITIC
        if names[0] != "model":
            return ACTOR  # noise head and any other policy-owned head
        frozen = _model_leaf_frozen(
            names, policy_cfg.train_expert_only, policy_cfg.freeze_vision_with_lora, llm_lora, expert_lora
        )
        return FROZEN if frozen else ACTOR

    labels = [label(n) for n in all_names]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)


def trainable_mask(params: dict, policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config | None = None) -> Any:
    """Pytree of bools over a policy tree, True where RL updates the leaf (rules: module docstring)."""
    labels = optimizer_labels(params, policy_cfg, model_cfg)
    return jax.tree.map(lambda label: label != FROZEN, labels)


# ------------------------------------------------------------------------------ the mechanism


def resolve_mask(mask: Mask, params: PyTree, default: bool = True, name: str = "trainable_mask") -> PyTree:
    """`mask` as a full tree of Python bools with the structure of `params` (None leaves of a
    trainable / frozen part stay None); a prefix tree is broadcast over the subtrees it covers."""
    if mask is None:
        return jax.tree.map(lambda _: default, params)
    mask = mask(params) if callable(mask) else mask
    try:
        full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
    except ValueError as error:
        raise ValueError(
            f"{name} must have the structure of the params (or be a prefix of it): {error}"
        ) from None
    bad = [m for m in jax.tree.leaves(full) if not isinstance(m, bool | np.bool_)]
    if bad:
        raise ValueError(f"{name} leaves must be Python bools (static); got e.g. {type(bad[0]).__name__}")
    return full


def split_frozen(params: PyTree, mask: Mask) -> tuple[PyTree, PyTree]:
    """(trainable part, frozen part): each with the params' structure, None where the other holds the leaf."""
    full = resolve_mask(mask, params)
    trainable = jax.tree.map(lambda t, p: p if t else None, full, params)
    frozen = jax.tree.map(lambda t, p: None if t else p, full, params)
    return trainable, frozen


def merge_frozen(trainable: PyTree, frozen: PyTree) -> PyTree:
    """Inverse of `split_frozen`: every leaf from whichever part holds it."""
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None)


def cast_frozen(params: PyTree, mask: Mask, dtype: Any) -> PyTree:
    """`params` with every frozen floating-point leaf stored as `dtype` (trainable leaves untouched).

    Works on arrays and on `jax.ShapeDtypeStruct`s (abstract params keep their sharding)."""
    dtype = jnp.dtype(dtype)

    def cast(trainable: bool, p: Any) -> Any:
        if trainable or not jnp.issubdtype(p.dtype, jnp.floating) or p.dtype == dtype:
            return p
        if isinstance(p, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(p.shape, dtype, sharding=p.sharding)
        return p.astype(dtype)

    return jax.tree.map(cast, resolve_mask(mask, params), params)


def trainable_value_and_grad(
    fun: Callable[..., Any], mask: Mask, *, has_aux: bool = False
) -> Callable[..., tuple[Any, PyTree]]:
    """`jax.value_and_grad(fun)` w.r.t. the trainable leaves of its first argument only.

    The returned function takes the full params (and `fun`'s other arguments) and returns
    (value, grads of the trainable part: None at frozen leaves). The frozen part enters `fun` as a
    constant, so the program has no frozen weight-gradient (for train_expert_only: no VLM backward).
    """

    def value_and_grad(params: PyTree, *args: Any) -> tuple[Any, PyTree]:
        trainable, frozen = split_frozen(params, mask)

        def of_trainable(t: PyTree) -> Any:
            return fun(merge_frozen(t, frozen), *args)

        return jax.value_and_grad(of_trainable, has_aux=has_aux)(trainable)

    return value_and_grad


def trainable_optimizer(inner: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformation:
    """`inner` over the trainable leaves only: no state for frozen leaves, updates = the trainable part.

    `init` takes the full params; `update` takes grads (full or trainable part) and the full params
    and returns updates of the trainable part (None at frozen leaves) for `apply_trainable_updates`.
    Whatever `inner` does (clipping, global norms, accumulation) sees trainable leaves only.
    """

    def init(params: PyTree) -> Any:
        return inner.init(split_frozen(params, mask)[0])

    def update(grads: PyTree, state: Any, params: PyTree | None = None) -> tuple[PyTree, Any]:
        full = resolve_mask(mask, grads if params is None else params)
        trainable_grads = jax.tree.map(lambda t, g: g if t else None, full, grads)
        trainable_params = None if params is None else split_frozen(params, full)[0]
        return inner.update(trainable_grads, state, trainable_params)

    return optax.GradientTransformation(init, update)


def apply_trainable_updates(params: PyTree, updates: PyTree, mask: Mask) -> PyTree:
    """Add `updates` (the trainable part) to the trainable leaves; frozen leaves are returned as they
    are (bit-identical: not p + 0, which would turn -0.0 into +0.0)."""
    trainable, frozen = split_frozen(params, mask)
    trainable = jax.tree.map(lambda p, u: p + u.astype(p.dtype), trainable, updates)
    return merge_frozen(trainable, frozen)
