"""SigLIP ViT vision tower (`PaliGemma/img` in the checkpoint), big_vision / openpi layout.

Patch embedding (`embedding`, a strided conv) and learned `pos_embedding` run in float32; the
encoder blocks (`Transformer/encoderblock`, stacked on a depth axis) and `encoder_norm` run in the
compute dtype; a linear `head` (zero-initialised) maps every patch token to the LLM width. No
pooling: one output token per patch.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pirl.distributed.mesh import constrain_batch
from pirl.models.config import SiglipConfig


class MlpBlock(nn.Module):
    """Dense -> tanh GELU -> Dense."""

    mlp_dim: int
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = dict(
            kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(stddev=1e-6)
        )
        width = x.shape[-1]
        x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, **inits)(x))
        return nn.Dense(width, dtype=self.dtype, **inits)(x)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm self-attention + MLP block."""

    cfg: SiglipConfig
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        x = constrain_batch(x)  # images stay split over the devices (see constrain_batch)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.cfg.num_heads,
            kernel_init=nn.initializers.xavier_uniform(),
            deterministic=True,
            dtype=self.dtype,
        )(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + MlpBlock(self.cfg.mlp_dim, self.dtype)(y)
        return x, None


class Encoder(nn.Module):
    """Scanned encoder blocks + final LayerNorm."""

    cfg: SiglipConfig
    dtype: str
    remat: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = EncoderBlock
        if self.remat:
            block = nn.remat(EncoderBlock, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.cfg.depth,
        )(self.cfg, self.dtype, name="encoderblock")(x)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class SigLIP(nn.Module):
    """Images f32[N, h, w, 3] in [-1, 1] -> tokens [N, (h/p)*(w/p), out_dim] in the compute dtype."""

    cfg: SiglipConfig
    out_dim: int
    dtype: str = "bfloat16"
    remat: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        patch = (self.cfg.patch_size, self.cfg.patch_size)
        x = nn.Conv(
            self.cfg.width, patch, strides=patch, padding="VALID", name="embedding", dtype=jnp.float32
        )(jnp.asarray(images, jnp.float32))
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(c)), (1, h * w, c), jnp.float32
        )
        x = (x + pos).astype(self.dtype)
        x = Encoder(self.cfg, self.dtype, self.remat, name="Transformer")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="head")(x)
