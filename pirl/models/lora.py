"""LoRA for the Gemma einsums and feed-forward layers, with openpi's parameter names and numerics.

An einsum weight `w` gains `lora_a` (last axis replaced by the rank) and `lora_b` (second-to-last
axis replaced by the rank); the low-rank path is scaled by alpha/rank (alpha/sqrt(rank) for
rsLoRA). The feed-forward LoRA (`gating_einsum_lora_{a,b}`, `linear_lora_{a,b}`) is *not* scaled,
as in openpi (its configs use alpha == rank, so the scale would be 1 anyway).
"""

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapter settings for one kind of layer (attention or feed-forward)."""

    rank: int = 16
    """Rank of the adapter."""
    alpha: float = 16.0
    """Scaling numerator: the einsum adapter's output is multiplied by alpha / rank."""
    rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(rank) instead."""
    init_stddev: float = 0.01
    """Both lora_a and lora_b start as normal(init_stddev) (openpi's choice, so LoRA is active at init)."""

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


def lora_equations(eqn: str, axes: tuple[int, int] = (-2, -1), label: str = "L") -> tuple[str, str]:
    """Splits `x,w->y` into the two einsums of the low-rank path `x,a->z` and `z,b->y`.

    `a` is `w` with its `axes[1]` label replaced by the rank label; `b` is `w` with its `axes[0]`
    label replaced. Labels of `w` that appear in neither the output nor `z` are summed over, which
    reproduces openpi exactly (e.g. for the attention output einsum the head axis is summed in `b`).
    """
    match = re.fullmatch(r"(.*),(.*)->(.*)", eqn.replace(" ", ""))
    if match is None:
        raise ValueError(f"LoRA needs an explicit einsum equation 'x,w->y', got {eqn!r}")
    lhs, rhs, out = match.groups()
    if label in eqn:
        raise ValueError(f"LoRA label {label!r} already used in {eqn!r}")
    in_label, out_label = rhs[axes[0]], rhs[axes[1]]
    mid = out.replace(out_label, label)
    eqn_a = f"{lhs},{rhs.replace(out_label, label)}->{mid}"
    eqn_b = f"{mid},{rhs.replace(in_label, label)}->{out}"
    return eqn_a, eqn_b


class Einsum(nn.Module):
    """`einsum(eqn, x, w)` with weight param `w` of `shape`, plus LoRA params when `lora` is set."""

    shape: tuple[int, ...]
    init_fn: nn.initializers.Initializer = nn.initializers.zeros
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        dtype = x.dtype  # compute in the activation dtype (bf16 in training), params stay float32
        w = self.param("w", self.init_fn, self.shape)
        result = jnp.einsum(eqn, x, w.astype(dtype))
        if self.lora is not None:
            shape_a, shape_b = list(self.shape), list(self.shape)
            shape_a[-1] = self.lora.rank
            shape_b[-2] = self.lora.rank
            init = nn.initializers.normal(stddev=self.lora.init_stddev)
            w_a = self.param("lora_a", init, tuple(shape_a))
            w_b = self.param("lora_b", init, tuple(shape_b))
            eqn_a, eqn_b = lora_equations(eqn)
            low_rank = jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, w_a.astype(dtype)), w_b.astype(dtype))
            result = result + low_rank * self.lora.scaling
        return result


class FeedForward(nn.Module):
    """Gemma GeGLU MLP: linear(gelu_tanh(x @ gating[0]) * (x @ gating[1])), optional unscaled LoRA."""

    features: int
    hidden_dim: int
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w_gating = self.param(
            "gating_einsum",
            nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
            (2, self.features, self.hidden_dim),
        )
        w_linear = self.param(
            "linear", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1), (self.hidden_dim, self.features)
        )
        gating_lora = linear_lora = None
        if self.lora is not None:
            init = nn.initializers.normal(stddev=self.lora.init_stddev)
            rank = self.lora.rank
            gating_lora = (
                self.param("gating_einsum_lora_a", init, (2, self.features, rank)),
                self.param("gating_einsum_lora_b", init, (2, rank, self.hidden_dim)),
            )
            linear_lora = (
                self.param("linear_lora_a", init, (self.hidden_dim, rank)),
                self.param("linear_lora_b", init, (rank, self.features)),
            )

        def dot(h, w, lora_ab):
            out = jnp.dot(h, w.astype(h.dtype))
            if lora_ab is not None:
                out = out + jnp.dot(jnp.dot(h, lora_ab[0].astype(h.dtype)), lora_ab[1].astype(h.dtype))
            return out

        gate = dot(x, w_gating[0], None if gating_lora is None else (gating_lora[0][0], gating_lora[1][0]))
        up = dot(x, w_gating[1], None if gating_lora is None else (gating_lora[0][1], gating_lora[1][1]))
        return dot(nn.gelu(gate, approximate=True) * up, w_linear, linear_lora)
