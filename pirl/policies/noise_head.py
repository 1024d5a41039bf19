"""Flow-Noise's learned exploration noise: a tanh MLP from expert tokens to a bounded per-element std.

The last layer's output h is squashed into the configured std range through the log-variance:
logvar = log(lo^2) + (log(hi^2) - log(lo^2)) * (tanh(h) + 1) / 2, std = exp(logvar / 2).
"""

import itertools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def init_noise_head(rng: jax.Array, in_dim: int, hidden: tuple[int, ...], out_dim: int) -> dict:
    """Params {"Dense_i": {"kernel": [d_in, d_out], "bias": [d_out]}} of the MLP in_dim -> hidden -> out_dim.

    Weights and biases start uniform in +-1/sqrt(fan_in) (PyTorch's Linear default, as in RLinf).
    """
    dims = (in_dim, *hidden, out_dim)
    keys = jax.random.split(rng, 2 * (len(dims) - 1))
    params = {}
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        bound = 1.0 / math.sqrt(d_in)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.uniform(keys[2 * i], (d_in, d_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(keys[2 * i + 1], (d_out,), jnp.float32, -bound, bound),
        }
    return params


def apply_noise_head(
    params: dict, features: Float[Array, "*b d"], std_range: tuple[float, float]
) -> Float[Array, "*b a"]:
    """Per-element std in [std_range[0], std_range[1]] from features (tanh hidden layers, linear out)."""
    num_layers = len(params)
    x = features.astype(jnp.float32)
    for i in range(num_layers):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < num_layers - 1:
            x = jnp.tanh(x)
    logvar_lo, logvar_hi = 2.0 * math.log(std_range[0]), 2.0 * math.log(std_range[1])
    logvar = logvar_lo + (logvar_hi - logvar_lo) * (jnp.tanh(x) + 1.0) / 2.0
    return jnp.exp(0.5 * logvar)
