"""π0 / π0.5 as pure functions over an explicit, openpi-named parameter tree.

    params = init_params(cfg, rng)
    loss = compute_loss(params, cfg, rng, obs, actions)                    # f32[B, H]
    actions = sample_actions(params, cfg, rng, obs, num_steps=10)           # f32[B, H, A]
    cache = prefill(params, cfg, obs)                                       # KV cache of the prefix
    v_t, suffix_out = predict_velocity(params, cfg, cache, obs.state, x_t, time)

The prefix (SigLIP tokens of every camera, then prompt tokens) is read by the PaliGemma LLM; the
suffix (π0: a state token and H action tokens mixed with the flow time; π0.5: H action tokens, time
through adaptive RMSNorm) is read by the action expert; both attend jointly layer by layer. Flow time
t = 1 is noise and t = 0 the data: x_t = t·noise + (1 − t)·actions, target u = noise − actions,
and sampling integrates dx = v·dt from t = 1 down to 0 with Euler steps.

`cfg` is static: jit these functions with `static_argnums` on the config (it is hashable).
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pirl.models.config import Pi0Config
from pirl.models.gemma import KVCache, Mixture
from pirl.models.siglip import SigLIP

Params = dict[str, Any]


@flax.struct.dataclass
class Observation:
    """Model input (a pytree). Images are float32 in [-1, 1] with shape [B, h, w, 3], keyed by camera."""

    images: dict[str, jax.Array]
    """Camera name -> f32[B, h, w, 3] in [-1, 1] (uint8 is converted by `preprocess_observation`)."""
    image_masks: dict[str, jax.Array]
    """Camera name -> bool[B]; False hides that camera's tokens (they still occupy sequence slots)."""
    state: jax.Array
    """f32[B, action_dim] (zero-padded) continuous state; π0.5 ignores it (the prompt carries it)."""
    tokenized_prompt: jax.Array | None = None
    """i32[B, L] prompt token ids (pad id 0)."""
    tokenized_prompt_mask: jax.Array | None = None
    """bool[B, L] True at real prompt tokens."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Observation":
        """From openpi's dict form {"image": {...}, "image_mask": {...}, "state", "tokenized_prompt",
        "tokenized_prompt_mask"}; uint8 images become float32 in [-1, 1]."""
        if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
            raise ValueError("tokenized_prompt and tokenized_prompt_mask must be given together")
        images = {k: _to_unit_range(v) for k, v in data["image"].items()}
        return cls(
            images=images,
            image_masks=dict(data.get("image_mask", {})),
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
        )


@flax.struct.dataclass
class PrefixCache:
    """What the suffix needs from the prefix pass."""

    kv_cache: KVCache
    """(k, v), each [depth, B, P, num_kv_heads, head_dim] in the compute dtype (k already rotated)."""
    prefix_mask: jax.Array
    """bool[B, P] valid prefix tokens."""
    prefix_out: jax.Array
    """f32[B, P, D_llm] final-normed LLM outputs at the prefix tokens."""


def _to_unit_range(image):
    if image.dtype == np.uint8:
        return jnp.asarray(image, jnp.float32) / 255.0 * 2.0 - 1.0
    return image


# ----------------------------------------------------------------------------- modules and params


def llm_module(cfg: Pi0Config) -> Mixture:
    """The `PaliGemma/llm` mixture (LLM + action expert)."""
    return Mixture(configs=(cfg.llm, cfg.expert), vocab_size=cfg.vocab_size, dtype=cfg.dtype, remat=cfg.remat)


def siglip_module(cfg: Pi0Config) -> SigLIP:
    """The `PaliGemma/img` vision tower."""
    return SigLIP(cfg=cfg.siglip, out_dim=cfg.llm.width, dtype=cfg.dtype, remat=cfg.remat)


def _dense_params(rng: jax.Array, d_in: int, d_out: int) -> Params:
    # nnx.Linear's defaults (openpi's top-level projections): lecun-normal kernel, zero bias.
    return {"kernel": nn.initializers.lecun_normal()(rng, (d_in, d_out)), "bias": jnp.zeros((d_out,))}


def _dense(p: Params, x: jax.Array) -> jax.Array:
    # Like nnx.Linear with dtype=None: promote input and params to a common dtype (float32 here).
    dtype = jnp.result_type(x, p["kernel"])
    return jnp.dot(x.astype(dtype), p["kernel"].astype(dtype)) + p["bias"].astype(dtype)


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: Pi0Config, rng: jax.Array) -> Params:
    """Fresh float32 parameters with openpi's checkpoint names and shapes.

    Jitted because it is an entry point: eager linen init dispatches op by op and is ~5x slower.
    """
    rng_llm, rng_img, *rng_proj = jax.random.split(rng, 7)
    llm = llm_module(cfg).init(rng_llm, (False, cfg.pi05), method=Mixture.init_all)["params"]
    image = jnp.zeros((1, *cfg.image_resolution, 3), jnp.float32)
    img = siglip_module(cfg).init(rng_img, image)["params"]
    d, a = cfg.expert.width, cfg.action_dim
    params: Params = {
        "PaliGemma": {"llm": llm, "img": img},
        "action_in_proj": _dense_params(rng_proj[0], a, d),
        "action_out_proj": _dense_params(rng_proj[1], d, a),
    }
    if cfg.pi05:
        params["time_mlp_in"] = _dense_params(rng_proj[2], d, d)
        params["time_mlp_out"] = _dense_params(rng_proj[3], d, d)
    else:
        params["state_proj"] = _dense_params(rng_proj[2], a, d)
        params["action_time_mlp_in"] = _dense_params(rng_proj[3], 2 * d, d)
        params["action_time_mlp_out"] = _dense_params(rng_proj[4], d, d)
    return jax.tree.map(lambda x: x.astype(jnp.float32), nn.meta.unbox(params))


def abstract_params(cfg: Pi0Config) -> Params:
    """Shapes and dtypes of `init_params(cfg, ·)` (jax.ShapeDtypeStruct leaves), allocating nothing."""
    return jax.eval_shape(lambda rng: init_params(cfg, rng), jax.random.key(0))


def param_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- inputs


def preprocess_observation(cfg: Pi0Config, obs: Observation) -> Observation:
    """Checks shapes, converts uint8 images, defaults missing image masks to True, keeps cfg.image_keys."""
    missing = [k for k in cfg.image_keys if k not in obs.images]
    if missing:
        raise ValueError(f"observation lacks images {missing}; cfg.image_keys = {cfg.image_keys}")
    if obs.state.ndim != 2:
        raise ValueError(f"state must be [B, action_dim], got shape {obs.state.shape}")
    batch = obs.state.shape[0]
    images, masks = {}, {}
    for key in cfg.image_keys:
        image = _to_unit_range(obs.images[key])
        if image.shape != (batch, *cfg.image_resolution, 3):
            raise ValueError(
                f"image {key!r} has shape {image.shape}; expected {(batch, *cfg.image_resolution, 3)} "
                "(resize with pad to cfg.image_resolution in the data transforms)"
            )
        images[key] = image
        mask = obs.image_masks.get(key)
        masks[key] = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask, bool)
    if (obs.tokenized_prompt is None) != (obs.tokenized_prompt_mask is None):
        raise ValueError("tokenized_prompt and tokenized_prompt_mask must be given together")
    return obs.replace(images=images, image_masks=masks)


def fake_observation(cfg: Pi0Config, batch_size: int = 1) -> Observation:
    """An all-ones observation of the right shapes (for tracing, init and benchmarks)."""
    image = jnp.ones((batch_size, *cfg.image_resolution, 3), jnp.float32)
    return Observation(
        images={k: image for k in cfg.image_keys},
        image_masks={k: jnp.ones((batch_size,), bool) for k in cfg.image_keys},
        state=jnp.ones((batch_size, cfg.action_dim), jnp.float32),
        tokenized_prompt=jnp.ones((batch_size, cfg.max_token_len), jnp.int32),
        tokenized_prompt_mask=jnp.ones((batch_size, cfg.max_token_len), bool),
    )


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """bool[B, N, N]: query i sees key j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid.

    input_mask bool[B, N] (False = padding); mask_ar bool[N] or [B, N], True where a token starts a
    new block that earlier tokens cannot see (all False = bidirectional, all True = causal).
    """
    mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
    cumsum = jnp.cumsum(mask_ar, axis=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return causal & valid


def posemb_sincos(pos: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sine-cosine embedding f32[B, dim] of scalar positions f32[B] (periods geometric in [min, max])."""
    if dim % 2:
        raise ValueError(f"embedding dim {dim} must be even")
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def embed_prefix(params: Params, cfg: Pi0Config, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Prefix tokens [B, P, D_llm] (compute dtype), input mask bool[B, P], ar mask bool[P] (all False).

    `obs` must already be preprocessed. All cameras go through SigLIP in one batch.
    """
    batch = obs.state.shape[0]
    n_cam = len(cfg.image_keys)
    # Sample-major [B*n_cam]: with the batch split over devices, each device's cameras stay on it
    # (a camera-major concatenation along the sharded axis would move every image between devices).
    images = jnp.stack([obs.images[k] for k in cfg.image_keys], axis=1)
    images = images.reshape(batch * n_cam, *images.shape[2:])
    img_tokens = siglip_module(cfg).apply({"params": params["PaliGemma"]["img"]}, images)
    n_img, width = img_tokens.shape[1], img_tokens.shape[2]
    img_tokens = img_tokens.reshape(batch, n_cam * n_img, width)
    img_mask = jnp.stack([obs.image_masks[k] for k in cfg.image_keys], axis=1)  # [B, n_cam]
    tokens, masks = [img_tokens], [jnp.repeat(img_mask, n_img, axis=1)]
    if obs.tokenized_prompt is not None:
        llm = llm_module(cfg)
        text = llm.apply({"params": params["PaliGemma"]["llm"]}, obs.tokenized_prompt, method=Mixture.embed)
        tokens.append(text)
        masks.append(jnp.asarray(obs.tokenized_prompt_mask, bool))
    tokens = jnp.concatenate(tokens, axis=1)
    input_mask = jnp.concatenate(masks, axis=1)
    return tokens, input_mask, jnp.zeros((tokens.shape[1],), bool)


def embed_suffix(
    params: Params, cfg: Pi0Config, state: jax.Array | None, x_t: jax.Array, time: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Suffix tokens f32[B, S, D_expert], input mask bool[B, S], ar mask bool[S], adaRMS cond f32[B, D] | None.

    state f32[B, A] (π0 only), x_t f32[B, H, A], time f32[B]. S = H + 1 (π0) or H (π0.5).
    """
    batch, horizon, _ = x_t.shape
    time = jnp.broadcast_to(jnp.asarray(time, jnp.float32), (batch,))
    action_tokens = _dense(params["action_in_proj"], x_t)
    time_emb = posemb_sincos(time, action_tokens.shape[-1])
    ar = [True] + [False] * (horizon - 1)  # state/prefix tokens do not see the actions
    if cfg.pi05:
        cond = jax.nn.swish(_dense(params["time_mlp_in"], time_emb))
        cond = jax.nn.swish(_dense(params["time_mlp_out"], cond))
        tokens = action_tokens
    else:
        if state is None:
            raise ValueError("π0 needs the continuous state for its state token")
        state_token = _dense(params["state_proj"], state)[:, None, :]
        time_tokens = jnp.broadcast_to(time_emb[:, None, :], action_tokens.shape)
        mixed = _dense(params["action_time_mlp_in"], jnp.concatenate([action_tokens, time_tokens], axis=-1))
        mixed = _dense(params["action_time_mlp_out"], jax.nn.swish(mixed))
        tokens = jnp.concatenate([state_token, mixed], axis=1)
        ar = [True, *ar]  # the prefix does not see the state token
        cond = None
    input_mask = jnp.ones(tokens.shape[:2], bool)
    return tokens, input_mask, jnp.asarray(ar), cond


# ----------------------------------------------------------------------------- forward passes


def prefill(params: Params, cfg: Pi0Config, obs: Observation) -> PrefixCache:
    """Runs the prefix through the LLM once and returns its KV cache, mask and final-normed outputs."""
    obs = preprocess_observation(cfg, obs)
    tokens, input_mask, ar = embed_prefix(params, cfg, obs)
    mask = make_attn_mask(input_mask, ar)
    positions = jnp.cumsum(input_mask, axis=1) - 1
    (prefix_out, _), kv_cache = llm_module(cfg).apply(
        {"params": params["PaliGemma"]["llm"]}, [tokens, None], positions, mask
    )
    return PrefixCache(kv_cache=kv_cache, prefix_mask=input_mask, prefix_out=prefix_out.astype(jnp.float32))


def predict_velocity(
    params: Params,
    cfg: Pi0Config,
    cache: PrefixCache,
    state: jax.Array | None,
    x_t: jax.Array,
    time: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Velocity f32[B, H, A] at x_t f32[B, H, A], time f32[B] (or scalar), given the prefix cache;
    also the expert's final-normed outputs at the H action tokens, f32[B, H, D_expert]."""
    tokens, suffix_mask, suffix_ar, cond = embed_suffix(params, cfg, state, x_t, time)
    batch, suffix_len = suffix_mask.shape
    prefix_mask = cache.prefix_mask
    to_prefix = jnp.broadcast_to(prefix_mask[:, None, :], (batch, suffix_len, prefix_mask.shape[1]))
    mask = jnp.concatenate([to_prefix, make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
    positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    (_, suffix_out), _ = llm_module(cfg).apply(
        {"params": params["PaliGemma"]["llm"]}, [None, tokens], positions, mask, [None, cond], cache.kv_cache
    )
    action_out = suffix_out[:, -cfg.action_horizon :]
    v_t = _dense(params["action_out_proj"], action_out)
    return v_t.astype(jnp.float32), action_out.astype(jnp.float32)


def predict_velocity_full(
    params: Params, cfg: Pi0Config, obs: Observation, x_t: jax.Array, time: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Same as prefill + predict_velocity but one joint pass over prefix + suffix (no cache): the
    training forward. Returns v_t f32[B, H, A] and the action-token expert outputs f32[B, H, D_expert]."""
    obs = preprocess_observation(cfg, obs)
    prefix, prefix_mask, prefix_ar = embed_prefix(params, cfg, obs)
    suffix, suffix_mask, suffix_ar, cond = embed_suffix(params, cfg, obs.state, x_t, time)
    input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
    mask = make_attn_mask(input_mask, jnp.concatenate([prefix_ar, suffix_ar]))
    positions = jnp.cumsum(input_mask, axis=1) - 1
    (_, suffix_out), _ = llm_module(cfg).apply(
        {"params": params["PaliGemma"]["llm"]}, [prefix, suffix], positions, mask, [None, cond]
    )
    action_out = suffix_out[:, -cfg.action_horizon :]
    v_t = _dense(params["action_out_proj"], action_out)
    return v_t.astype(jnp.float32), action_out.astype(jnp.float32)


def compute_loss(
    params: Params, cfg: Pi0Config, rng: jax.Array, obs: Observation, actions: jax.Array
) -> jax.Array:
    """Flow-matching loss f32[B, H]: mean over the action dims (padding included) of (v − u)².

    rng is split in three like openpi (augmentation, noise, time) so equal keys give equal draws.
    """
    if actions.shape[-2:] != (cfg.action_horizon, cfg.action_dim):
        raise ValueError(
            f"actions {actions.shape} must end in (action_horizon, action_dim) = "
            f"{(cfg.action_horizon, cfg.action_dim)}"
        )
    _, noise_rng, time_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, actions.shape)
    time = jax.random.beta(time_rng, 1.5, 1, actions.shape[:-2]) * 0.999 + 0.001
    t = time[..., None, None]
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions
    v_t, _ = predict_velocity_full(params, cfg, obs, x_t, time)
    return jnp.mean(jnp.square(v_t - u_t), axis=-1)


def sample_actions(
    params: Params,
    cfg: Pi0Config,
    rng: jax.Array,
    obs: Observation,
    num_steps: int = 10,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Euler-integrates the flow from noise (t = 1) to actions (t = 0) in `num_steps` steps
    (dt = −1/num_steps) over one prefix KV cache. Returns f32[B, H, A]."""
    obs = preprocess_observation(cfg, obs)
    batch = obs.state.shape[0]
    if noise is None:
        noise = jax.random.normal(rng, (batch, cfg.action_horizon, cfg.action_dim))
    dt = -1.0 / num_steps
    cache = prefill(params, cfg, obs)

    def step(carry, _):
        x_t, time = carry
        v_t, _ = predict_velocity(params, cfg, cache, obs.state, x_t, jnp.broadcast_to(time, (batch,)))
        return (x_t + dt * v_t, time + dt), None

    # openpi loops while t >= -dt/2, i.e. exactly num_steps times; time accumulates the same way.
    (x_0, _), _ = jax.lax.scan(step, (noise, jnp.asarray(1.0, jnp.float32)), length=num_steps)
    return x_0
