"""Model configuration: `Pi0Config` (frozen, tyro-readable) and the Gemma / SigLIP size tables.

Full-size defaults equal openpi's `Pi0Config` (PaliGemma gemma_2b + gemma_300m action expert,
SigLIP So400m/14 at 224x224, 257,152-token vocabulary, bfloat16 compute, float32 params).
"""

import dataclasses
from typing import Literal

import jax.numpy as jnp

from pirl.errors import UserError
from pirl.models.lora import LoRAConfig

GemmaVariant = Literal["dummy", "dummy_lora", "gemma_300m", "gemma_300m_lora", "gemma_2b", "gemma_2b_lora"]

PALIGEMMA_VOCAB_SIZE = 257_152
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Sizes of one Gemma expert of the mixture."""

    width: int = 64
    """Model width D."""
    depth: int = 4
    """Number of transformer layers (all experts of a mixture share it)."""
    mlp_dim: int = 128
    """Hidden width of the GeGLU MLP."""
    num_heads: int = 8
    """Query heads."""
    num_kv_heads: int = 1
    """Key/value heads (1 = multi-query attention)."""
    head_dim: int = 16
    """Per-head width."""
    lora_attn: LoRAConfig | None = None
    """LoRA on the attention einsums (q, kv, attn_vec), or None."""
    lora_ffn: LoRAConfig | None = None
    """LoRA on the MLP (gating_einsum, linear), or None."""


def gemma_config(variant: str) -> GemmaConfig:
    """Sizes of a named Gemma variant (openpi's names; *_lora add LoRA on attention and MLP)."""
    sizes = {
        "dummy": dict(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
        "gemma_300m": dict(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
        "gemma_2b": dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    }
    # dummy_lora is pirl-only (a tiny LoRA model for tests); the others are openpi's.
    lora_ranks = {
        "gemma_2b_lora": ("gemma_2b", 16),
        "gemma_300m_lora": ("gemma_300m", 32),
        "dummy_lora": ("dummy", 4),
    }
    if variant in sizes:
        return GemmaConfig(**sizes[variant])
    if variant in lora_ranks:
        base, rank = lora_ranks[variant]
        lora = LoRAConfig(rank=rank, alpha=float(rank))
        return GemmaConfig(**sizes[base], lora_attn=lora, lora_ffn=lora)
    raise ValueError(f"unknown gemma variant {variant!r}; choose one of {[*sizes, *lora_ranks]}")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Sizes of a SigLIP ViT (big_vision naming)."""

    width: int = 32
    """Token width."""
    depth: int = 1
    """Number of encoder blocks."""
    mlp_dim: int = 128
    """MLP hidden width."""
    num_heads: int = 2
    """Attention heads."""
    patch_size: int = 14
    """Square patch size in pixels."""


# width, depth, mlp_dim, heads (Table 2 of arXiv:2106.04560, plus big_vision's "mu" test size).
_VIT_SIZES = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
}


def siglip_config(variant: str) -> SiglipConfig:
    """Parses a big_vision variant string such as "So400m/14" or "mu/14" (patch size after the slash)."""
    name, _, patch = variant.partition("/")
    if name not in _VIT_SIZES or (patch and not patch.isdigit()):
        raise ValueError(
            f"unknown SigLIP variant {variant!r}; use '<size>/<patch>' with size in {list(_VIT_SIZES)}"
        )
    width, depth, mlp_dim, heads = _VIT_SIZES[name]
    return SiglipConfig(
        width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, patch_size=int(patch or 16)
    )


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """π0 / π0.5 model configuration; the defaults are openpi's full-size π0."""

    paligemma_variant: GemmaVariant = "gemma_2b"
    """Gemma variant of the PaliGemma LLM (expert 0: embeds tokens, reads the prefix)."""
    action_expert_variant: GemmaVariant = "gemma_300m"
    """Gemma variant of the action expert (expert 1: reads state / noisy actions)."""
    siglip_variant: str = "So400m/14"
    """SigLIP vision tower variant, '<size>/<patch>' (openpi hard-codes So400m/14)."""
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    """Rows of the token embedding table."""
    image_resolution: tuple[int, int] = (224, 224)
    """Height and width every camera image must have (multiples of the patch size)."""
    image_keys: tuple[str, ...] = IMAGE_KEYS
    """Camera names, in prefix order; each gets (H/patch)*(W/patch) image tokens."""
    action_dim: int = 32
    """Action (and continuous state) width after zero-padding."""
    action_horizon: int = 50
    """Actions per chunk H."""
    max_token_len: int | None = None
    """Prompt length the tokenizer pads to; None means 200 for π0.5 and 48 for π0."""
    pi05: bool = False
    """π0.5: adaptive-RMSNorm time conditioning in the expert and no continuous state token."""
    discrete_state_input: bool | None = None
    """Tokenizer puts the discretised state in the prompt; None means equal to pi05."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Activation / compute dtype; trainable parameters are stored in float32."""
    frozen_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Storage dtype of the parameters a run keeps frozen (pirl.policies.masks; e.g. the VLM)."""
    remat: bool = True
    """Recompute each scanned layer in the backward pass (openpi does; saves memory, costs compute)."""
    lora_rank: int | None = None
    """Rank of every LoRA adapter of the *_lora variants (None: the variant's own, 16 / 32 / 4)."""
    lora_alpha: float | None = None
    """LoRA scale numerator alpha of the *_lora variants (None: equal to the rank)."""

    def __post_init__(self):
        if (self.lora_rank is not None or self.lora_alpha is not None) and not (
            self.llm.lora_attn or self.expert.lora_attn
        ):
            raise UserError(
                "lora_rank / lora_alpha need a LoRA variant: set paligemma_variant and/or "
                "action_expert_variant to a *_lora one (e.g. gemma_2b_lora)"
            )
        if self.lora_rank is not None and self.lora_rank < 1:
            raise UserError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        if self.discrete_state_input is None:
            object.__setattr__(self, "discrete_state_input", self.pi05)
        object.__setattr__(self, "image_resolution", tuple(self.image_resolution))
        object.__setattr__(self, "image_keys", tuple(self.image_keys))
        llm, expert = self.llm, self.expert
        for field in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(llm, field) != getattr(expert, field):
                raise ValueError(
                    f"paligemma_variant {self.paligemma_variant!r} and action_expert_variant "
                    f"{self.action_expert_variant!r} must share {field} to attend jointly"
                )
        patch = self.siglip.patch_size
        if any(r % patch for r in self.image_resolution):
            raise ValueError(
                f"image_resolution {self.image_resolution} must be multiples of the patch size {patch}"
            )
        if not self.image_keys:
            raise ValueError("image_keys must name at least one camera")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {self.dtype!r}")
        if self.frozen_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"frozen_dtype must be 'bfloat16' or 'float32', got {self.frozen_dtype!r}")

    def _with_lora(self, cfg: GemmaConfig) -> GemmaConfig:
        if cfg.lora_attn is None or (self.lora_rank is None and self.lora_alpha is None):
            return cfg
        rank = self.lora_rank if self.lora_rank is not None else cfg.lora_attn.rank
        lora = dataclasses.replace(
            cfg.lora_attn, rank=rank, alpha=float(self.lora_alpha if self.lora_alpha is not None else rank)
        )
        return dataclasses.replace(cfg, lora_attn=lora, lora_ffn=lora)

    @property
    def llm(self) -> GemmaConfig:
        """Sizes of the PaliGemma LLM."""
        return self._with_lora(gemma_config(self.paligemma_variant))

    @property
    def expert(self) -> GemmaConfig:
        """Sizes of the action expert."""
        return self._with_lora(gemma_config(self.action_expert_variant))

    @property
    def siglip(self) -> SiglipConfig:
        """Sizes of the vision tower."""
        return siglip_config(self.siglip_variant)

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def tokens_per_image(self) -> int:
        patch = self.siglip.patch_size
        return (self.image_resolution[0] // patch) * (self.image_resolution[1] // patch)

    @property
    def prefix_len(self) -> int:
        """Prefix length: image tokens of every camera plus max_token_len prompt tokens."""
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @property
    def suffix_len(self) -> int:
        """Suffix length: the action tokens, plus the state token for π0."""
        return self.action_horizon + (0 if self.pi05 else 1)

    @classmethod
    def tiny(cls, pi05: bool = False, **overrides) -> "Pi0Config":
        """CPU test size: dummy Gemma for both experts, SigLIP mu/14 at 28x28 (4 tokens per camera),
        vocab 512, horizon 10, 16 prompt tokens, float32 (frozen params too), no remat. Compiles in seconds."""
        kwargs = dict(
            paligemma_variant="dummy",
            action_expert_variant="dummy",
            siglip_variant="mu/14",
            vocab_size=512,
            image_resolution=(28, 28),
            action_horizon=10,
            max_token_len=16,
            pi05=pi05,
            dtype="float32",
            frozen_dtype="float32",
            remat=False,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


def model_config_for(config_name: str, action_horizon: int) -> Pi0Config:
    """The full-size model a named data config is trained with (openpi's presets): π0.5 for names
    starting with "pi05" (openpi's pi05_libero: no discrete state input), π0 otherwise."""
    if config_name.startswith("pi05"):
        return Pi0Config(pi05=True, action_horizon=action_horizon, discrete_state_input=False)
    return Pi0Config(action_horizon=action_horizon)
