"""Value head: a ReLU MLP from features [..., D] to a scalar value [...].

Critics put it on the VLM prefix output or on the action expert's output (the caller chooses which
features to feed, e.g. a masked mean over tokens). Hidden layers use lecun-normal kernels and zero
biases; the output layer starts as N(0, 0.02) so initial values are near zero.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

ValueHeadParams = dict[str, dict[str, jax.Array]]


def init_value_head(rng: jax.Array, in_dim: int, hidden: Sequence[int] = (1024, 512)) -> ValueHeadParams:
    """Float32 params {"hidden_0": {kernel, bias}, ..., "output": {kernel [h, 1], bias [1]}}."""
    hidden = tuple(int(h) for h in hidden)
    if in_dim <= 0 or any(h <= 0 for h in hidden):
        raise ValueError(f"value head sizes must be positive, got in_dim={in_dim}, hidden={hidden}")
    return _init_value_head(rng, int(in_dim), hidden)


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compile instead of many eager initialiser ops
def _init_value_head(rng: jax.Array, in_dim: int, hidden: tuple[int, ...]) -> ValueHeadParams:
    rngs = jax.random.split(rng, len(hidden) + 1)
    params: ValueHeadParams = {}
    width = in_dim
    for i, h in enumerate(hidden):
        params[f"hidden_{i}"] = {
            "kernel": nn.initializers.lecun_normal()(rngs[i], (width, h), jnp.float32),
            "bias": jnp.zeros((h,), jnp.float32),
        }
        width = h
    params["output"] = {
        "kernel": 0.02 * jax.random.normal(rngs[-1], (width, 1), jnp.float32),
        "bias": jnp.zeros((1,), jnp.float32),
    }
    return params


def apply_value_head(params: ValueHeadParams, x: jax.Array) -> jax.Array:
    """Features [..., D] (any float dtype) -> values f32[...], computed in float32."""
    h = x.astype(jnp.float32)
    n_hidden = len(params) - 1
    for i in range(n_hidden):
        layer = params[f"hidden_{i}"]
        h = jax.nn.relu(h @ layer["kernel"] + layer["bias"])
    out = params["output"]
    return (h @ out["kernel"] + out["bias"])[..., 0]
