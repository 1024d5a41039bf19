"""On-paper cost model of one PPO update step / SFT step: FLOPs, per-chip memory, FSDP traffic.

Nothing here runs the model: parameter counts come from `jax.eval_shape` of the real init, FLOPs
and activation bytes from closed-form counts over the `Pi0Config` sizes (matmuls and attention of
SigLIP, the PaliGemma LLM and the action expert), traffic from the mesh layout. The hardware
figures and the MFU are assumptions, stated in `ChipSpec` / the `mfu` argument. docs/scaling.md
explains the model; `benchmarks/scaling.py --estimate` prints it as JSON lines.

Conventions: one *sample* = one transition (PPO) or one training example (SFT); FLOPs count a
multiply-add as 2; "bytes received" is per chip.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from pirl.distributed.mesh import MeshConfig
from pirl.models.config import GemmaConfig, Pi0Config, SiglipConfig

COMPUTE_BYTES = 2
"""bfloat16 activations (Pi0Config.dtype of the full-size presets)."""
PARAM_BYTES = 4
"""Parameters, gradients, Adam moments and EMA are float32 (pi0.init_params, optax defaults)."""


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Assumed accelerator figures (vendor peaks, not measurements)."""

    name: str = "H100 SXM"
    """Human-readable chip name."""
    peak_flops: float = 989e12
    """Dense bf16 peak FLOP/s."""
    hbm_bytes: float = 80e9
    """HBM capacity in bytes."""
    fsdp_link_bytes_per_s: float = 450e9
    """Per-chip bandwidth (one direction) of the links the fsdp axis uses."""
    data_link_bytes_per_s: float = 50e9
    """Per-chip bandwidth (one direction) of the links the data axis uses."""


CHIPS: dict[str, ChipSpec] = {
    # NVLink 4: 900 GB/s bidirectional = 450 GB/s each way; data axis across nodes over one 400 Gb/s
    # InfiniBand NIC per GPU = 50 GB/s.
    "h100": ChipSpec("H100 SXM", 989e12, 80e9, 450e9, 50e9),
    # ICI 4800 Gb/s per chip = 600 GB/s summed over its links; both mesh axes ride on ICI.
    "tpu-v5p": ChipSpec("TPU v5p", 459e12, 95e9, 600e9, 600e9),
}
"""Chips of the two target systems (docs/scaling.md)."""


# ------------------------------------------------------------------------------ counts


def _names(path: Any) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def param_groups(abstract_params: Any) -> dict[str, int]:
    """Scalars per part of a pi0 params tree (leaves: arrays or ShapeDtypeStructs): `siglip`,
    `llm` (PaliGemma LLM incl. its 257k-row embedder), `expert` (names with `_1`), `projections`."""
    groups = {"siglip": 0, "llm": 0, "expert": 0, "projections": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        names = _names(path)
        size = math.prod(leaf.shape)
        if "img" in names:
            groups["siglip"] += size
        elif "llm" in names:
            after = names[names.index("llm") + 1 :]
            groups["expert" if any("_1" in n for n in after) else "llm"] += size
        else:
            groups["projections"] += size
    return groups


def _gemma_layer_matmul_params(g: GemmaConfig) -> int:
    # q (D -> H·h), k and v (D -> K·h each), output (H·h -> D), GeGLU gate + up (D -> 2M), down (M -> D).
    return g.width * g.head_dim * (2 * g.num_heads + 2 * g.num_kv_heads) + 3 * g.width * g.mlp_dim


def _gemma_flops(g: GemmaConfig, tokens: int, keys: int) -> float:
    """Forward FLOPs of all layers for `tokens` queries attending to `keys` positions."""
    matmul = 2 * _gemma_layer_matmul_params(g) * tokens
    attention = 4 * g.num_heads * g.head_dim * tokens * keys  # QK^T and AV
    return g.depth * (matmul + attention)


def _siglip_flops(s: SiglipConfig, tokens_per_image: int, images: int, out_dim: int) -> float:
    per_token_layer = 2 * (4 * s.width**2 + 2 * s.width * s.mlp_dim) + 4 * s.width * tokens_per_image
    tokens = tokens_per_image * images
    patch_embed = 2 * s.patch_size**2 * 3 * s.width
    return tokens * (s.depth * per_token_layer + patch_embed + 2 * s.width * out_dim)


def forward_flops(cfg: Pi0Config, *, joint: bool, loop_bodies_once: bool = False) -> dict[str, float]:
    """Forward FLOPs per sample: SigLIP over every camera, the LLM over the prefix, the expert over
    the suffix. `joint=True`: one pass over prefix + suffix as in SFT (every token's attention
    spans the whole P + S sequence; masking saves no FLOPs); False: prefix pass + cached suffix
    pass as in the PPO rescoring (prefix attends to P keys, suffix to P + S).

    `loop_bodies_once=True` counts one layer per tower, as XLA's HLO cost analysis does for the
    scanned layer loops: the figure to compare with `jit(...).lower(...).cost_analysis()`.
    """
    p, s = cfg.prefix_len, cfg.suffix_len
    llm, expert, vit = cfg.llm, cfg.expert, cfg.siglip
    if loop_bodies_once:
        llm, expert = dataclasses.replace(llm, depth=1), dataclasses.replace(expert, depth=1)
        vit = dataclasses.replace(vit, depth=1)
    d_exp, a, h = expert.width, cfg.action_dim, cfg.action_horizon
    # action in / out, state, time MLPs of the suffix (small).
    suffix_proj = 2 * h * (a * d_exp + 2 * d_exp * d_exp + d_exp * d_exp + d_exp * a) + 2 * a * d_exp
    return {
        "siglip": _siglip_flops(vit, cfg.tokens_per_image, len(cfg.image_keys), llm.width),
        "llm_prefix": _gemma_flops(llm, p, p + s if joint else p),
        "expert_suffix": _gemma_flops(expert, s, p + s) + suffix_proj,
    }


def remat_recompute_flops(cfg: Pi0Config, *, joint: bool, towers: tuple[str, ...]) -> float:
    """FLOPs per sample the backward spends recomputing the rematerialised (scanned) layers of
    `towers` ("siglip", "llm_prefix", "expert_suffix"): each layer's forward except its MLP down
    projection, the layer's last matmul, whose output nothing in the backward needs (the layer
    output is the next layer's saved input; the projection's own gradients need only its input).
    XLA drops it as dead code. Patch embedding and projections outside the layer scans are saved,
    not recomputed. 0 without `cfg.remat`."""
    if not cfg.remat:
        return 0.0
    p, s = cfg.prefix_len, cfg.suffix_len
    images, tokens = len(cfg.image_keys), cfg.tokens_per_image
    vit = cfg.siglip
    layers = {
        "siglip": _siglip_flops(vit, tokens, images, cfg.llm.width)
        - _siglip_flops(dataclasses.replace(vit, depth=0), tokens, images, cfg.llm.width)
        - vit.depth * tokens * images * 2 * vit.width * vit.mlp_dim,
        "llm_prefix": _gemma_flops(cfg.llm, p, p + s if joint else p)
        - cfg.llm.depth * p * 2 * cfg.llm.width * cfg.llm.mlp_dim,
        "expert_suffix": _gemma_flops(cfg.expert, s, p + s)
        - cfg.expert.depth * s * 2 * cfg.expert.width * cfg.expert.mlp_dim,
    }
    return sum(layers[t] for t in towers)


def ppo_update_flops_per_sample(cfg: Pi0Config, *, joint_logprob_steps: int = 1) -> dict[str, float]:
    """FLOPs per transition of the PPO rescoring + gradient with the VLM frozen (train_expert_only):
    the prefix runs forward only (no tangents reach frozen weights), the expert forward + backward
    (2x) + the remat recompute (`remat_recompute_flops`) for each rescored denoise step."""
    fwd = forward_flops(cfg, joint=False)
    recompute = remat_recompute_flops(cfg, joint=False, towers=("expert_suffix",))
    parts = {
        "prefix_forward": fwd["siglip"] + fwd["llm_prefix"],
        "expert_fwd_bwd": (3 * fwd["expert_suffix"] + recompute) * joint_logprob_steps,
    }
    return {**parts, "total": sum(parts.values())}


def rollout_flops_per_sample(cfg: Pi0Config, num_steps: int) -> dict[str, float]:
    """FLOPs per environment of one policy call in a rollout (`flow_policy.sample`): one prefix
    pass (SigLIP + LLM, the prefix attending to itself), then `num_steps` expert passes over the
    suffix attending to the cached prefix. The value head is negligible and not counted."""
    fwd = forward_flops(cfg, joint=False)
    parts = {
        "prefix_forward": fwd["siglip"] + fwd["llm_prefix"],
        "expert_denoise": fwd["expert_suffix"] * num_steps,
    }
    return {**parts, "total": sum(parts.values())}


def sft_flops_per_sample(cfg: Pi0Config) -> dict[str, float]:
    """FLOPs per example of a full fine-tuning SFT step: forward, backward (2x), and the remat
    recompute of every tower's layers (`remat_recompute_flops`, about 0.7x forward)."""
    fwd = sum(forward_flops(cfg, joint=True).values())
    recompute = remat_recompute_flops(cfg, joint=True, towers=("siglip", "llm_prefix", "expert_suffix"))
    return {"forward": fwd, "remat_recompute": recompute, "total": 3 * fwd + recompute}


# ------------------------------------------------------------------------------ activations


def _layer_working_set(g: GemmaConfig, tokens: int, keys: int) -> float:
    """Bytes of one transformer layer's live activations (its forward, or its recompute + backward):
    GeGLU gate / up / product, residual-width tensors, q/k/v, and f32 attention logits + probs."""
    widths = 3 * g.mlp_dim + 4 * g.width + (g.num_heads + 2 * g.num_kv_heads) * g.head_dim
    return tokens * widths * COMPUTE_BYTES + 2 * g.num_heads * tokens * keys * 4


def activation_bytes_per_sample(cfg: Pi0Config, kind: str) -> dict[str, float]:
    """Peak activation bytes per sample. With remat (nothing_saveable per scanned layer) only each
    layer's input is kept for the backward; one layer is live at a time on top of it.

    kind "ppo": the frozen prefix keeps its KV cache (+ final outputs) for the expert; the expert
    keeps its per-layer inputs. kind "sft": every tower keeps its per-layer inputs.
    """
    p, s = cfg.prefix_len, cfg.suffix_len
    llm, expert, vit = cfg.llm, cfg.expert, cfg.siglip
    vit_tokens = cfg.tokens_per_image * len(cfg.image_keys)
    keep = 1 if cfg.remat else 6  # without remat roughly every layer's working set stays alive
    if kind == "ppo":
        kv_cache = llm.depth * p * 2 * llm.num_kv_heads * llm.head_dim * COMPUTE_BYTES
        prefix_out = p * llm.width * 4
        expert_inputs = expert.depth * s * expert.width * COMPUTE_BYTES * keep
        live = max(_layer_working_set(llm, p, p), _layer_working_set(expert, s, p + s))
        return {"kv_cache": kv_cache + prefix_out, "layer_inputs": expert_inputs, "live_layer": live}
    if kind == "sft":
        layer_inputs = (
            (llm.depth * (p * llm.width + s * expert.width) + vit.depth * vit_tokens * vit.width)
            * COMPUTE_BYTES
            * keep
        )
        live = _layer_working_set(llm, p + s, p + s) + _layer_working_set(expert, s, p + s)
        return {"layer_inputs": layer_inputs, "live_layer": live}
    raise ValueError(f"kind must be 'ppo' or 'sft', got {kind!r}")


# ------------------------------------------------------------------------------ estimate


def _largest_layer_params(cfg: Pi0Config) -> int:
    # One scanned Mixture layer holds both experts' weights; SigLIP layers are smaller.
    return _gemma_layer_matmul_params(cfg.llm) + _gemma_layer_matmul_params(cfg.expert)


def estimate_step(
    kind: str,
    cfg: Pi0Config,
    abstract_params: Any,
    trainable_params: int,
    mesh: MeshConfig,
    chip: ChipSpec,
    *,
    global_batch: int,
    micro_batch: int | None = None,
    mfu: float = 0.4,
    ema: bool = False,
    joint_logprob_steps: int = 1,
    replicate_frozen: bool = False,
) -> dict[str, Any]:
    """Per-chip memory, FLOPs, FSDP traffic and step time of one optimizer step on `mesh`.

    Args:
      kind: "ppo" (one minibatch of `global_batch` transitions in micro-batches of `micro_batch`,
        VLM frozen) or "sft" (one batch, full fine-tuning).
      cfg: the model.
      abstract_params: the params tree to store (ShapeDtypeStructs are enough).
      trainable_params: how many of them get gradients and Adam moments.
      mesh: mesh preset with fixed sizes (params sharded over `fsdp_axis`, batch over all axes).
      chip: assumed hardware figures.
      global_batch: samples per optimizer step.
      micro_batch: samples per gradient micro-batch (None = the whole batch).
      mfu: assumed model-FLOPs utilisation of the compute time.
      ema: an EMA copy of the params is kept (SFT).
      joint_logprob_steps: rescored denoise steps per transition (1 = Flow-SDE single step).
      replicate_frozen: keep the frozen params replicated (a sharding rule mapping them to
        `PartitionSpec()`) instead of FSDP-sharding them: more memory, no gathers of frozen weights.
    """
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"estimate needs a mesh with fixed sizes, got {mesh.axis_sizes}")
    chips = math.prod(sizes.values())
    fsdp = sizes[mesh.fsdp_axis]
    data = chips // fsdp
    micro = micro_batch or global_batch
    num_micro = global_batch // micro
    per_chip_micro = max(micro / chips, 1.0)
    total_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))

    if kind == "ppo":
        flops = ppo_update_flops_per_sample(cfg, joint_logprob_steps=joint_logprob_steps)
        regathered = trainable_params if cfg.remat else 0  # the expert is re-gathered for its recompute
    elif kind == "sft":
        flops = sft_flops_per_sample(cfg)
        regathered = total_params if cfg.remat else 0
    else:
        raise ValueError(f"kind must be 'ppo' or 'sft', got {kind!r}")
    activations = activation_bytes_per_sample(cfg, kind)

    # Memory per chip: everything persistent is sharded over fsdp (replicated over data).
    frozen_params = total_params - trainable_params
    sharded_params = trainable_params if replicate_frozen else total_params
    memory = {
        "params": (sharded_params / fsdp + (frozen_params if replicate_frozen else 0)) * PARAM_BYTES,
        "ema": total_params * PARAM_BYTES / fsdp if ema else 0.0,
        "adam_moments": 2 * trainable_params * PARAM_BYTES / fsdp,
        "grads": (2 if num_micro > 1 else 1) * trainable_params * PARAM_BYTES / fsdp,  # accumulator + micro
        # One layer's weights gathered at a time, double-buffered so the next gather overlaps.
        "gathered_layer_weights": 2
        * (_gemma_layer_matmul_params(cfg.expert) if replicate_frozen else _largest_layer_params(cfg))
        * PARAM_BYTES,
        "activations": sum(activations.values()) * per_chip_micro,
    }
    memory["total"] = sum(memory.values())

    # Traffic per chip and optimizer step. Per micro-batch: all-gather every weight for the forward
    # (f32, as stored), re-gather the recomputed ones for the backward, reduce-scatter the trainable
    # grads over fsdp, all-reduce the grad shards over data.
    shard = (fsdp - 1) / fsdp
    fsdp_bytes = num_micro * shard * PARAM_BYTES * (sharded_params + regathered + trainable_params)
    data_bytes = num_micro * 2 * (data - 1) / data * trainable_params * PARAM_BYTES / fsdp
    comm_s = fsdp_bytes / chip.fsdp_link_bytes_per_s + data_bytes / chip.data_link_bytes_per_s

    step_flops = flops["total"] * global_batch
    compute_s = step_flops / (chips * chip.peak_flops * mfu)
    return {
        "kind": kind,
        "chip": chip.name,
        "chips": chips,
        "mesh": sizes,
        "params": total_params,
        "trainable_params": trainable_params,
        "global_batch": global_batch,
        "micro_batches": num_micro,
        "frozen_params_replicated": replicate_frozen,
        "samples_per_chip_per_micro_batch": micro / chips,
        "flops_per_sample": flops,
        "step_flops": step_flops,
        "assumed_mfu": mfu,
        "assumed_peak_flops": chip.peak_flops,
        "compute_s": compute_s,
        "fsdp_bytes_received_per_chip": fsdp_bytes,
        "data_bytes_received_per_chip": data_bytes,
        "comm_s_at_link_peak": comm_s,
        "step_s_overlapped": max(compute_s, comm_s),
        "step_s_serial": compute_s + comm_s,
        "samples_per_s_overlapped": global_batch / max(compute_s, comm_s),
        "memory_bytes_per_chip": memory,
        "activation_bytes_per_sample": activations,
        "hbm_bytes": chip.hbm_bytes,
    }
