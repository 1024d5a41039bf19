"""openpi-PyTorch checkpoints (``model.safetensors``, the layout RLinf publishes π0 / π0.5 in).

The key names, transposes and reshapes follow openpi's ``examples/convert_jax_model_to_pytorch.py``
and the module tree of ``models_pytorch/{pi0_pytorch,gemma_pytorch}.py`` (transformers 4.53 layout):

* SigLIP -> ``paligemma_with_expert.paligemma.model.vision_tower.vision_model.*``; the stacked
  ``encoderblock`` leaves become ``encoder.layers.{i}.*`` (Linear weights transposed, q/k/v/out
  kernels flattened over heads); the image head -> ``multi_modal_projector.linear``.
* Gemma LLM (expert 0) -> ``paligemma_with_expert.paligemma.model.language_model.*``, action expert
  (suffix ``_1``) -> ``paligemma_with_expert.gemma_expert.model.*``; ``q_proj`` is
  ``q_einsum[i]`` transposed (0, 2, 1) and reshaped (N·H, D), ``k/v_proj`` come from ``kv_einsum``,
  ``o_proj`` from ``attn_vec_einsum``, ``gate/up/down_proj`` from the GeGLU weights; π0.5's
  adaptive RMSNorm ``Dense_0`` -> ``*_layernorm.dense`` / ``norm.dense``.
* Top-level Dense layers (``action_in_proj``, ``state_proj``, ``time_mlp_in`` ...) -> ``<name>.weight``
  (kernel transposed) and ``<name>.bias``.

Tied and unused weights: the PaliGemma LLM's ``lm_head`` shares its tensor with ``embed_tokens``;
openpi saves with ``safetensors.torch.save_model``, which keeps one name per shared tensor (the
sorted-first, ``paligemma.lm_head.weight``). Both names are accepted on load; export writes the
``lm_head`` name as openpi's converter output does. The action expert's ``lm_head`` is never used by
π0 but is in the module's state dict (openpi's strict loader wants it): ignored on load, written as
zeros on export unless ``expert_lm_head=False``.

Arrays are numpy (bfloat16 via ml_dtypes); no torch dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401 -- registers bfloat16 with numpy for safetensors
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pirl.checkpoints.openpi_jax import (
    CheckpointMismatchError,
    Params,
    Shape,
    check_params_match,
    flatten_params,
    resolve_expected,
    unflatten_params,
)

logger = logging.getLogger(__name__)

_PALIGEMMA = "paligemma_with_expert.paligemma."
_VISION = _PALIGEMMA + "model.vision_tower.vision_model."
_PROJECTOR = _PALIGEMMA + "model.multi_modal_projector.linear."
_LLM = _PALIGEMMA + "model.language_model."
_EXPERT = "paligemma_with_expert.gemma_expert.model."
EMBED_TOKENS_KEY = _LLM + "embed_tokens.weight"
LLM_LM_HEAD_KEY = _PALIGEMMA + "lm_head.weight"
"""Tied to EMBED_TOKENS_KEY; the name openpi's converter (safetensors save_model) writes."""
EXPERT_LM_HEAD_KEY = "paligemma_with_expert.gemma_expert.lm_head.weight"
"""Unused by π0; present in openpi's PyTorch state dict."""

_EMBEDDING_JAX_KEY = "PaliGemma/llm/embedder/input_embedding"


# ----------------------------------------------------------------------------------------------
# Per-leaf layout transforms. Each works on numpy arrays and on jax tracers (for jax.eval_shape), so
# one definition serves both the conversion and the shape-only key map.


def _stack(parts: list[Any]) -> Any:
    return jnp.stack(parts) if any(isinstance(p, jax.core.Tracer) for p in parts) else np.stack(parts)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one (per-layer slice of a) JAX leaf becomes one or more torch tensors, and back."""

    to_torch: Callable[[Any], tuple[Any, ...]]
    from_torch: Callable[[tuple[Any, ...], Shape], Any]  # (torch tensors, jax slice shape) -> jax slice


_IDENTITY = _Layout(lambda x: (x,), lambda t, s: t[0].reshape(s))
_TRANSPOSE = _Layout(lambda x: (x.T,), lambda t, s: t[0].T)  # Dense kernel (in, out) <-> Linear (out, in)
_FLATTEN = _Layout(lambda x: (x.reshape(-1),), lambda t, s: t[0].reshape(s))  # per-head bias (Nh, Hd)
_ROWS = _Layout(lambda x: (x.reshape(-1, x.shape[-1]),), lambda t, s: t[0].reshape(s))  # pos emb (1, N, W)
# Conv kernel (kh, kw, cin, cout) <-> torch Conv2d (cout, cin, kh, kw).
_CONV = _Layout(lambda x: (x.transpose(3, 2, 0, 1),), lambda t, s: t[0].transpose(2, 3, 1, 0))
# SigLIP attention: q/k/v kernel (W, Nh, Hd) -> (Nh·Hd, W); out kernel (Nh, Hd, W) -> (W, Nh·Hd).
_VIT_IN_PROJ = _Layout(lambda x: (x.reshape(x.shape[0], -1).T,), lambda t, s: t[0].T.reshape(s))
_VIT_OUT_PROJ = _Layout(lambda x: (x.reshape(-1, x.shape[-1]).T,), lambda t, s: t[0].T.reshape(s))
# Gemma: q_einsum (N, D, H) -> q_proj (N·H, D).
_Q_PROJ = _Layout(
    lambda x: (x.transpose(0, 2, 1).reshape(-1, x.shape[1]),),
    lambda t, s: t[0].reshape(s[0], s[2], s[1]).transpose(0, 2, 1),
)
# kv_einsum (2, K, D, H) -> k_proj, v_proj (K·H, D) each.
_KV_PROJ = _Layout(
    lambda x: tuple(x[j].transpose(0, 2, 1).reshape(-1, x.shape[2]) for j in range(2)),
    lambda t, s: _stack([t[j].reshape(s[1], s[3], s[2]).transpose(0, 2, 1) for j in range(2)]),
)
# attn_vec_einsum (N, H, D) -> o_proj (D, N·H).
_O_PROJ = _Layout(lambda x: (x.reshape(-1, x.shape[-1]).T,), lambda t, s: t[0].T.reshape(s))
# gating_einsum (2, D, F) -> gate_proj, up_proj (F, D) each.
_GATE_UP = _Layout(lambda x: (x[0].T, x[1].T), lambda t, s: _stack([t[0].T, t[1].T]))

_VIT_BLOCK_LEAVES: dict[str, tuple[tuple[str, ...], _Layout]] = {
    "LayerNorm_0/scale": (("layer_norm1.weight",), _IDENTITY),
    "LayerNorm_0/bias": (("layer_norm1.bias",), _IDENTITY),
    "LayerNorm_1/scale": (("layer_norm2.weight",), _IDENTITY),
    "LayerNorm_1/bias": (("layer_norm2.bias",), _IDENTITY),
    "MlpBlock_0/Dense_0/kernel": (("mlp.fc1.weight",), _TRANSPOSE),
    "MlpBlock_0/Dense_0/bias": (("mlp.fc1.bias",), _IDENTITY),
    "MlpBlock_0/Dense_1/kernel": (("mlp.fc2.weight",), _TRANSPOSE),
    "MlpBlock_0/Dense_1/bias": (("mlp.fc2.bias",), _IDENTITY),
    **{
        f"MultiHeadDotProductAttention_0/{name}/kernel": ((f"self_attn.{proj}.weight",), _VIT_IN_PROJ)
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    },
    **{
        f"MultiHeadDotProductAttention_0/{name}/bias": ((f"self_attn.{proj}.bias",), _FLATTEN)
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    },
    "MultiHeadDotProductAttention_0/out/kernel": (("self_attn.out_proj.weight",), _VIT_OUT_PROJ),
    "MultiHeadDotProductAttention_0/out/bias": (("self_attn.out_proj.bias",), _IDENTITY),
}

_VIT_LEAVES: dict[str, tuple[tuple[str, ...], _Layout]] = {
    "PaliGemma/img/embedding/kernel": ((_VISION + "embeddings.patch_embedding.weight",), _CONV),
    "PaliGemma/img/embedding/bias": ((_VISION + "embeddings.patch_embedding.bias",), _IDENTITY),
    "PaliGemma/img/pos_embedding": ((_VISION + "embeddings.position_embedding.weight",), _ROWS),
    "PaliGemma/img/Transformer/encoder_norm/scale": ((_VISION + "post_layernorm.weight",), _IDENTITY),
    "PaliGemma/img/Transformer/encoder_norm/bias": ((_VISION + "post_layernorm.bias",), _IDENTITY),
    "PaliGemma/img/head/kernel": ((_PROJECTOR + "weight",), _TRANSPOSE),
    "PaliGemma/img/head/bias": ((_PROJECTOR + "bias",), _IDENTITY),
    _EMBEDDING_JAX_KEY: ((EMBED_TOKENS_KEY,), _IDENTITY),
}

# Gemma layer leaves, with the expert suffix removed from the module name.
_GEMMA_LAYER_LEAVES: dict[str, tuple[tuple[str, ...], _Layout]] = {
    "attn/q_einsum/w": (("self_attn.q_proj.weight",), _Q_PROJ),
    "attn/kv_einsum/w": (("self_attn.k_proj.weight", "self_attn.v_proj.weight"), _KV_PROJ),
    "attn/attn_vec_einsum/w": (("self_attn.o_proj.weight",), _O_PROJ),
    "mlp/gating_einsum": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), _GATE_UP),
    "mlp/linear": (("mlp.down_proj.weight",), _TRANSPOSE),
    "pre_attention_norm/scale": (("input_layernorm.weight",), _IDENTITY),
    "pre_attention_norm/Dense_0/kernel": (("input_layernorm.dense.weight",), _TRANSPOSE),
    "pre_attention_norm/Dense_0/bias": (("input_layernorm.dense.bias",), _IDENTITY),
    "pre_ffw_norm/scale": (("post_attention_layernorm.weight",), _IDENTITY),
    "pre_ffw_norm/Dense_0/kernel": (("post_attention_layernorm.dense.weight",), _TRANSPOSE),
    "pre_ffw_norm/Dense_0/bias": (("post_attention_layernorm.dense.bias",), _IDENTITY),
}
_GEMMA_FINAL_NORM_LEAVES: dict[str, tuple[tuple[str, ...], _Layout]] = {
    "scale": (("norm.weight",), _IDENTITY),
    "Dense_0/kernel": (("norm.dense.weight",), _TRANSPOSE),
    "Dense_0/bias": (("norm.dense.bias",), _IDENTITY),
}
_GEMMA_PREFIX = {0: _LLM, 1: _EXPERT}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One JAX leaf and the torch tensors it maps to."""

    jax_key: str
    torch_keys: tuple[str, ...]  # with "{i}" for the layer index when stacked
    layout: _Layout
    num_layers: int | None  # leading depth axis of the JAX leaf (one torch set per layer), or None

    def layer_keys(self, i: int | None) -> tuple[str, ...]:
        return self.torch_keys if i is None else tuple(k.format(i=i) for k in self.torch_keys)

    def layers(self) -> list[int | None]:
        return [None] if self.num_layers is None else list(range(self.num_layers))


def _split_expert(module: str) -> tuple[str, int]:
    """Splits off the expert suffix: q_einsum_1 -> (q_einsum, 1); q_einsum -> (q_einsum, 0)."""
    match = re.fullmatch(r"(.+)_(\d+)", module)
    if match:
        return match.group(1), int(match.group(2))
    return module, 0


def _rule_for(key: str, shape: Shape) -> _Rule | None:
    """The torch layout of JAX leaf `key`, or None if the openpi PyTorch port has no such tensor."""
    if key in _VIT_LEAVES:
        torch_keys, layout = _VIT_LEAVES[key]
        return _Rule(key, torch_keys, layout, None)
    block = "PaliGemma/img/Transformer/encoderblock/"
    if key.startswith(block) and key[len(block) :] in _VIT_BLOCK_LEAVES:
        names, layout = _VIT_BLOCK_LEAVES[key[len(block) :]]
        return _Rule(key, tuple(_VISION + "encoder.layers.{i}." + n for n in names), layout, shape[0])
    layers = "PaliGemma/llm/layers/"
    if key.startswith(layers):
        module, *rest = key[len(layers) :].split("/")
        if module == "attn":  # the einsum name carries the expert suffix: attn/q_einsum_1/w
            inner, expert = _split_expert(rest[0])
            leaf = "/".join(["attn", inner, *rest[1:]])
        else:
            inner, expert = _split_expert(module)
            leaf = "/".join([inner, *rest])
        if leaf in _GEMMA_LAYER_LEAVES and expert in _GEMMA_PREFIX:
            names, layout = _GEMMA_LAYER_LEAVES[leaf]
            prefix = _GEMMA_PREFIX[expert] + "layers.{i}."
            return _Rule(key, tuple(prefix + n for n in names), layout, shape[0])
        return None
    final = "PaliGemma/llm/"
    if key.startswith(final + "final_norm"):
        module, *rest = key[len(final) :].split("/")
        inner, expert = _split_expert(module)
        leaf = "/".join(rest)
        if inner == "final_norm" and leaf in _GEMMA_FINAL_NORM_LEAVES and expert in _GEMMA_PREFIX:
            names, layout = _GEMMA_FINAL_NORM_LEAVES[leaf]
            return _Rule(key, tuple(_GEMMA_PREFIX[expert] + n for n in names), layout, None)
        return None
    parts = key.split("/")
    if len(parts) == 2 and parts[0] != "PaliGemma":  # top-level nn.Linear: action_in_proj, state_proj, ...
        if parts[1] == "kernel" and len(shape) == 2:
            return _Rule(key, (f"{parts[0]}.weight",), _TRANSPOSE, None)
        if parts[1] == "bias" and len(shape) == 1:
            return _Rule(key, (f"{parts[0]}.bias",), _IDENTITY, None)
    return None


def _unmapped_error(key: str, source: str) -> CheckpointMismatchError:
    hint = ""
    if "lora" in key:
        hint = (
            " openpi's PyTorch port has no LoRA weights: merge them into the base weights first with "
            "merge_lora_params(params, cfg), or load with missing_regex='.*lora.*' and keep the initial "
            "LoRA weights."
        )
    return CheckpointMismatchError(f"{source}: parameter '{key}' has no openpi-PyTorch equivalent.{hint}")


def _build_rules(
    flat_shapes: Mapping[str, Shape], source: str, skip: Callable[[str], bool] | None = None
) -> list[_Rule]:
    rules = []
    for key, shape in flat_shapes.items():
        rule = _rule_for(key, tuple(shape))
        if rule is None:
            if skip is not None and skip(key):
                continue
            raise _unmapped_error(key, source)
        rules.append(rule)
    return rules


def _torch_shapes(rule: _Rule, shape: Shape, dtype: Any) -> tuple[Shape, ...]:
    """Shapes of the torch tensors of one layer of `rule`, by tracing its layout (no memory)."""
    layer_shape = shape if rule.num_layers is None else shape[1:]
    outs = jax.eval_shape(rule.layout.to_torch, jax.ShapeDtypeStruct(layer_shape, dtype))
    return tuple(tuple(o.shape) for o in outs)


def _leaf_dtype(leaf: Any) -> Any:
    return getattr(leaf, "dtype", np.float32)


def pytorch_key_map(expected: Any, *, expert_lm_head: bool = True) -> dict[str, tuple[str, Shape]]:
    """{torch key: (source JAX key, torch shape)} for every tensor of the openpi-PyTorch layout of a
    parameter tree or Pi0Config, computed with jax.eval_shape (nothing is allocated).

    The LLM embedding appears under its ``embed_tokens`` name; `expert_lm_head` adds the action
    expert's unused ``lm_head`` (source "").
    """
    flat = flatten_params(resolve_expected(expected))
    rules = _build_rules({k: np.shape(v) for k, v in flat.items()}, "pytorch_key_map")
    key_map: dict[str, tuple[str, Shape]] = {}
    for rule in rules:
        shapes = _torch_shapes(rule, np.shape(flat[rule.jax_key]), _leaf_dtype(flat[rule.jax_key]))
        for i in rule.layers():
            for torch_key, torch_shape in zip(rule.layer_keys(i), shapes, strict=True):
                key_map[torch_key] = (rule.jax_key, torch_shape)
    if expert_lm_head:
        key_map[EXPERT_LM_HEAD_KEY] = ("", _expert_lm_head_shape(flat))
    return key_map


def _expert_lm_head_shape(flat: Mapping[str, Any]) -> Shape:
    vocab = np.shape(flat[_EMBEDDING_JAX_KEY])[0]
    width = np.shape(flat["PaliGemma/llm/layers/attn/q_einsum_1/w"])[2]
    return (vocab, width)


# ----------------------------------------------------------------------------------------------
# LoRA merging (the PyTorch layout has no adapters).

# The einsums of pirl's / openpi's Gemma attention, whose LoRA factors are merged below.
_ATTN_EINSUM_EQUATIONS = {
    "q_einsum": "BTD,NDH->BTNH",
    "kv_einsum": "BSD,2KDH->2BSKH",
    "attn_vec_einsum": "BTNH,NHD->BTD",
}


def _einsum_lora_delta(eqn: str, lora_a: np.ndarray, lora_b: np.ndarray, stacked: bool) -> np.ndarray:
    """The weight delta W' - W that makes einsum(eqn, x, W') equal the LoRA path of pirl.models.lora.Einsum
    (x,a -> z with the weight's output label replaced by the rank, then z,b -> y), before scaling.

    Labels of `b` that are neither in z nor in the output are summed within `b` alone (as the two-step
    einsum does; e.g. the head axis of attn_vec_einsum's b), so they get their own names here.
    """
    _, rhs, out = re.fullmatch(r"(.*),(.*)->(.*)", eqn).groups()
    in_label, out_label = rhs[-2], rhs[-1]
    mid = out.replace(out_label, "L")
    a_labels = rhs.replace(out_label, "L")
    b_labels = rhs.replace(in_label, "L")
    fresh = iter("UVWXY")
    b_labels = "".join(c if c in mid or c in out else next(fresh) for c in b_labels)
    spec = f"{a_labels},{b_labels}->{rhs}"
    if stacked:
        spec = "Z" + spec.replace(",", ",Z").replace("->", "->Z")
    # numpy's einsum only takes letters; openpi's equations use "2" for the k/v axis.
    letters = {c: chr(ord("a") + i) for i, c in enumerate(sorted(set(spec) - set(",->")))}
    return np.einsum("".join(letters.get(c, c) for c in spec), lora_a, lora_b)


def _attn_scalings(cfg: Any) -> tuple[float, ...]:
    if isinstance(cfg, list | tuple):
        return tuple(float(s) for s in cfg)
    return tuple(1.0 if g.lora_attn is None else g.lora_attn.scaling for g in (cfg.llm, cfg.expert))


def merge_lora_params(params: Mapping[str, Any], cfg: Any) -> Params:
    """`params` with every LoRA adapter folded into its base weight and the LoRA leaves removed.

    Attention einsums: w + scaling · delta(lora_a, lora_b) with scaling = alpha / rank of the expert's
    attention LoRA (cfg: a Pi0Config, or the scalings per expert, (llm, action expert)). Feed-forward:
    w + lora_a @ lora_b, unscaled as in openpi. The result is exportable with `export_pytorch_params`.
    """
    scalings = _attn_scalings(cfg)
    flat = {k: np.asarray(v) for k, v in flatten_params(params).items()}
    merged = {k: v for k, v in flat.items() if "lora" not in k.rsplit("/", 1)[-1]}
    for key in flat:
        module, leaf = key.rsplit("/", 1)
        if leaf == "lora_a":  # .../attn/<einsum>_<expert>/lora_a
            name, expert = _split_expert(module.rsplit("/", 1)[-1])
            if name not in _ATTN_EINSUM_EQUATIONS:
                raise _unmapped_error(key, "merge_lora_params")
            base = f"{module}/w"
            stacked = module.startswith("PaliGemma/llm/layers/")
            delta = _einsum_lora_delta(
                _ATTN_EINSUM_EQUATIONS[name], flat[key], flat[f"{module}/lora_b"], stacked
            )
            merged[base] = (flat[base] + scalings[expert] * delta).astype(flat[base].dtype)
        elif leaf.endswith("_lora_a"):  # .../mlp_<expert>/{gating_einsum,linear}_lora_a
            base = f"{module}/{leaf.removesuffix('_lora_a')}"
            delta = np.matmul(flat[key], flat[f"{base}_lora_b"])  # batched over depth (and gate/up)
            merged[base] = (flat[base] + delta).astype(flat[base].dtype)
        elif "lora" in leaf and not leaf.endswith("lora_b"):
            raise _unmapped_error(key, "merge_lora_params")
    return unflatten_params(merged)


# ----------------------------------------------------------------------------------------------
# Files.


def _safetensors_files(path: str | pathlib.Path) -> list[pathlib.Path]:
    """The safetensors file(s) of a checkpoint: a file, a dir's model.safetensors, the shards named by
    model.safetensors.index.json, or every *.safetensors in the dir (as RLinf's loader does)."""
    path = pathlib.Path(path).expanduser().resolve()
    if path.is_file():
        return [path]
    if path.is_dir():
        single = path / "model.safetensors"
        if single.is_file():
            return [single]
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
        found = sorted(path.glob("*.safetensors"))
        if found:
            return found
    raise FileNotFoundError(
        f"no PyTorch checkpoint at {path}: looked for the file itself, {path / 'model.safetensors'}, "
        f"{path / 'model.safetensors.index.json'} and {path}/*.safetensors"
    )


def load_pytorch_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of an openpi-PyTorch checkpoint as numpy (bfloat16 as ml_dtypes.bfloat16).

    Use it to read extra tensors (e.g. RLinf's value head) that `load_pytorch_params` does not map.
    """
    tensors: dict[str, np.ndarray] = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="np") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not a Mapping
                tensors[key] = f.get_tensor(key)
    return tensors


def load_pytorch_params(
    path: str | pathlib.Path,
    cfg: Any,
    dtype: Any = None,
    *,
    strict: bool = False,
    missing_regex: str | None = None,
) -> Params:
    """Loads an openpi-PyTorch (RLinf) safetensors checkpoint into openpi's JAX parameter tree.

    Args:
      path: a .safetensors file or a directory (model.safetensors, sharded index, or *.safetensors).
      cfg: a Pi0Config or an expected parameter tree (arrays or ShapeDtypeStructs); it decides the
        JAX shapes (e.g. (1, N, W) of pos_embedding) and which keys must be present.
      dtype: cast every leaf to it; None keeps the file's dtypes (openpi's files mix bf16 and f32).
      strict: fail on tensors of the file that have no JAX counterpart (RLinf adds e.g. value heads);
        otherwise they are ignored with a warning.
      missing_regex: JAX keys matching it (fullmatch) may have no torch tensor (e.g. ".*lora.*"); they
        are left out of the result.

    Returns: nested dict of numpy arrays with exactly the expected tree's keys and shapes.
    Raises: CheckpointMismatchError naming the first missing or mis-shaped torch key.
    """
    expected_flat = flatten_params(resolve_expected(cfg))
    skip = None
    if missing_regex is not None:
        pattern = re.compile(missing_regex)
        skip = lambda key: pattern.fullmatch(key) is not None  # noqa: E731
    rules = _build_rules({k: np.shape(v) for k, v in expected_flat.items()}, "expected tree", skip)
    files = _safetensors_files(path)
    source = f"PyTorch checkpoint {files[0] if len(files) == 1 else files[0].parent}"

    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}  # torch key -> open safe_open handle
        file_shapes: dict[str, Shape] = {}
        for file in files:
            handle = stack.enter_context(safe_open(file, framework="np"))
            for key in handle.keys():  # noqa: SIM118
                handles[key] = handle
                file_shapes[key] = tuple(handle.get_slice(key).get_shape())
        # The tied LLM embedding may be stored under either name (save_model keeps lm_head).
        embed_source = EMBED_TOKENS_KEY if EMBED_TOKENS_KEY in handles else LLM_LM_HEAD_KEY

        def file_key(torch_key: str) -> str:
            return embed_source if torch_key == EMBED_TOKENS_KEY else torch_key

        # Validate every key and shape from the headers before reading any data.
        expected_torch: dict[str, Shape] = {}
        for rule in rules:
            leaf = expected_flat[rule.jax_key]
            shapes = _torch_shapes(rule, np.shape(leaf), _leaf_dtype(leaf))
            for i in rule.layers():
                for torch_key, torch_shape in zip(rule.layer_keys(i), shapes, strict=True):
                    expected_torch[file_key(torch_key)] = torch_shape
        check_params_match(expected_torch, file_shapes, source=source, unexpected_ok=True)

        ignorable = {EXPERT_LM_HEAD_KEY, LLM_LM_HEAD_KEY, EMBED_TOKENS_KEY}
        unexpected = sorted(set(file_shapes) - set(expected_torch) - ignorable)
        if unexpected:
            listed = ", ".join(unexpected[:8]) + (", ..." if len(unexpected) > 8 else "")
            message = f"{source} has {len(unexpected)} tensor(s) with no JAX counterpart: {listed}"
            if strict:
                raise CheckpointMismatchError(message + " (pass strict=False to ignore them)")
            logger.warning("%s; ignoring them", message)

        flat: dict[str, Any] = {}
        for rule in rules:
            shape = tuple(np.shape(expected_flat[rule.jax_key]))
            layer_shape = shape if rule.num_layers is None else shape[1:]
            slices = []
            for i in rule.layers():
                tensors = tuple(handles[file_key(k)].get_tensor(file_key(k)) for k in rule.layer_keys(i))
                slices.append(rule.layout.from_torch(tensors, layer_shape))
            value = slices[0] if rule.num_layers is None else np.stack(slices)
            value = np.ascontiguousarray(value)
            flat[rule.jax_key] = value if dtype is None else value.astype(dtype)
    # Keep the expected tree's key order.
    return unflatten_params({k: flat[k] for k in expected_flat if k in flat})


def export_pytorch_params(
    params: Mapping[str, Any],
    cfg: Any,
    path: str | pathlib.Path,
    *,
    dtype: Any = None,
    expert_lm_head: bool = True,
) -> pathlib.Path:
    """Writes `params` in openpi's PyTorch layout as safetensors, loadable by openpi's
    ``safetensors.torch.load_model(PI0Pytorch(...), path)`` (strict) and RLinf.

    Args:
      params: openpi-named nested dict (numpy or jax arrays); LoRA leaves are not supported.
      cfg: a Pi0Config (or expected tree) to validate `params` against, or None to skip the check.
        With a Pi0Config, a config.json like openpi's converter writes goes next to the file.
      path: a directory (writes <path>/model.safetensors) or a file name ending in .safetensors.
      dtype: cast every tensor (e.g. "bfloat16", openpi's converter default); None keeps dtypes.
      expert_lm_head: also write the action expert's unused lm_head as zeros (vocab x expert width),
        which openpi's strict loader requires; False saves that space (RLinf's loader is non-strict).

    Returns: the path of the written .safetensors file.
    """
    flat = flatten_params(params)
    if cfg is not None:
        expected_flat = flatten_params(resolve_expected(cfg))
        check_params_match(
            {k: tuple(np.shape(v)) for k, v in expected_flat.items()},
            {k: tuple(np.shape(v)) for k, v in flat.items()},
            source="params to export",
        )
    rules = _build_rules({k: np.shape(v) for k, v in flat.items()}, "export_pytorch_params")

    def host(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x if dtype is None else x.astype(dtype)

    tensors: dict[str, np.ndarray] = {}
    for rule in rules:
        leaf = host(flat[rule.jax_key])
        for i in rule.layers():
            outs = rule.layout.to_torch(leaf if i is None else leaf[i])
            for torch_key, out in zip(rule.layer_keys(i), outs, strict=True):
                # safetensors reads raw memory: every tensor must be C-contiguous.
                tensors[LLM_LM_HEAD_KEY if torch_key == EMBED_TOKENS_KEY else torch_key] = (
                    np.ascontiguousarray(out)
                )
    if expert_lm_head:
        head_dtype = tensors[LLM_LM_HEAD_KEY].dtype
        tensors[EXPERT_LM_HEAD_KEY] = np.zeros(_expert_lm_head_shape(flat), head_dtype)

    path = pathlib.Path(path).expanduser()
    file = path if path.suffix == ".safetensors" else path / "model.safetensors"
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, file, metadata={"format": "pt"})
    if cfg is not None and hasattr(cfg, "paligemma_variant"):
        config = {
            "action_dim": cfg.action_dim,
            "action_horizon": cfg.action_horizon,
            "paligemma_variant": cfg.paligemma_variant,
            "action_expert_variant": cfg.action_expert_variant,
            "pi05": cfg.pi05,
            "precision": str(tensors[LLM_LM_HEAD_KEY].dtype),
        }
        (file.parent / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return file
