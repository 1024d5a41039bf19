"""Which policy parameters RL updates: freeze masks and optimizer labels over the policy params tree.

Rules (paths as in openpi's checkpoint tree, under the policy's "model" key):
- `train_expert_only`: the whole VLM is frozen: PaliGemma/img (SigLIP), the LLM's embedder and every
  LLM weight that is not the action expert's (the expert's names end in `_1`, e.g. `q_einsum_1`,
  `mlp_1`, `final_norm_1`).
- LoRA on the LLM (a `lora` leaf among the LLM's own weights): its non-LoRA weights are frozen, as
  in openpi's freeze filter; SigLIP too when `freeze_vision_with_lora`.
- LoRA on the action expert: the expert's non-LoRA weights are frozen.
- Everything else (expert, action/state/time projections, value head, noise head) is trainable.
The masks depend only on the tree's structure, so they are plain Python bools usable under jit.
"""

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from pirl.models.config import Pi0Config
from pirl.policies.config import FlowPolicyConfig

FROZEN, ACTOR, CRITIC = "frozen", "actor", "critic"


def _path_names(path: Sequence[Any]) -> tuple[str, ...]:
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


def _leaf_label(
    names: tuple[str, ...], policy_cfg: FlowPolicyConfig, llm_lora: bool, expert_lora: bool
) -> str:
    if names[0] == "value_head":
        return CRITIC
    if names[0] != "model":
        return ACTOR  # noise head and any other policy-owned head
    part = _llm_part(names)
    if part == "llm":
        if policy_cfg.train_expert_only or (llm_lora and not _is_lora(names)):
            return FROZEN
        return ACTOR
    if part == "expert":
        # With LoRA on the LLM only, openpi leaves the (non-LoRA) expert fully trainable.
        return FROZEN if expert_lora and not _is_lora(names) else ACTOR
    if "img" in names and (policy_cfg.train_expert_only or (llm_lora and policy_cfg.freeze_vision_with_lora)):
        return FROZEN
    return ACTOR


def optimizer_labels(params: dict, policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config | None = None) -> Any:
    """Pytree of 'frozen' | 'actor' | 'critic' per leaf (for optax.multi_transform: value_lr for 'critic').

    `model_cfg` is accepted for symmetry; LoRA is detected from the tree itself (any `lora` leaf).
    """
    del model_cfg
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    all_names = [_path_names(p) for p, _ in leaves]
    llm_lora = any(_llm_part(n) == "llm" and _is_lora(n) for n in all_names)
    expert_lora = any(_llm_part(n) == "expert" and _is_lora(n) for n in all_names)
    labels = [_leaf_label(n, policy_cfg, llm_lora, expert_lora) for n in all_names]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)


def trainable_mask(params: dict, policy_cfg: FlowPolicyConfig, model_cfg: Pi0Config | None = None) -> Any:
    """Pytree of bools, True where RL updates the leaf (see the module docstring for the rules)."""
    labels = optimizer_labels(params, policy_cfg, model_cfg)
    return jax.tree.map(lambda label: label != FROZEN, labels)


def stop_frozen_gradients(params: dict, mask: Any) -> dict:
    """`params` with lax.stop_gradient on every leaf whose mask is False.

    Frozen leaves then get exactly-zero gradients, and XLA drops their backward pass (for
    train_expert_only that is the whole prefix / VLM backward).
    """
    return jax.tree.map(lambda p, trainable: p if trainable else lax.stop_gradient(p), params, mask)
