"""Tests of the π0 / π0.5 model (pirl.models): parameter tree, masks, KV-cache sampling, loss, LoRA.

All compiled work uses the tiny float32 configs; jitted functions are module-scoped and shared.
Full-size models are only traced (jax.eval_shape), never allocated.
"""

import ast
import dataclasses
import pathlib

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.models import config as mcfg
from pirl.models import gemma, lora, pi0, value_head

B = 2

# Shared jitted entry points (cfg static); each distinct cfg / shape compiles once per module.
# Compilation dominates the run time, so the tests reuse these few functions wherever they can.
sample_actions = jax.jit(pi0.sample_actions, static_argnums=(1, 4))
prefill = jax.jit(pi0.prefill, static_argnums=1)
predict_velocity_full = jax.jit(pi0.predict_velocity_full, static_argnums=1)


def _flat(tree) -> dict[str, tuple]:
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _random_observation(cfg: mcfg.Pi0Config, seed: int = 0) -> pi0.Observation:
    """Random images, the last camera masked out for sample 0, prompts of lengths 9 and 13."""
    rng = np.random.default_rng(seed)
    shape = (B, *cfg.image_resolution, 3)
    images = {k: jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32) for k in cfg.image_keys}
    masks = {k: jnp.ones((B,), bool) for k in cfg.image_keys}
    masks[cfg.image_keys[-1]] = jnp.array([False, True])
    return pi0.Observation(
        images=images,
        image_masks=masks,
        state=jnp.asarray(rng.normal(size=(B, cfg.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(rng.integers(1, cfg.vocab_size, (B, cfg.max_token_len)), jnp.int32),
        tokenized_prompt_mask=jnp.arange(cfg.max_token_len)[None, :] < jnp.array([[9], [13]]),
    )


def _perturb(params, seed: int = 123, scale: float = 0.05):
    """Adds numpy noise to every leaf (no compilation) so zero-initialised weights
    (SigLIP head, adaRMS Dense) matter."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), jnp.float32), params
    )


def _random_params(cfg: mcfg.Pi0Config, seed: int):
    """Random float32 params in the tree of `abstract_params(cfg)` (numpy, no compilation)."""
    rng = np.random.default_rng(seed)

    def leaf(x):
        std = 0.05 if len(x.shape) == 1 else 1 / np.sqrt(x.shape[-2])
        return jnp.asarray(std * rng.normal(size=x.shape), jnp.float32)

    return jax.tree.map(leaf, pi0.abstract_params(cfg))


@pytest.fixture(scope="module")
def tiny():
    cfg = mcfg.Pi0Config.tiny()
    return cfg, _perturb(pi0.init_params(cfg, jax.random.key(0))), _random_observation(cfg)


@pytest.fixture(scope="module")
def tiny05():
    cfg = mcfg.Pi0Config.tiny(pi05=True)
    return cfg, _random_params(cfg, seed=1), _random_observation(cfg, seed=1)


# ----------------------------------------------------------------------------- config and param tree


def test_full_size_param_counts_and_openpi_names():
    p0 = pi0.abstract_params(mcfg.Pi0Config())
    p5 = pi0.abstract_params(mcfg.Pi0Config(pi05=True))
    assert pi0.param_count(p0) == 3_238_048_528
    assert pi0.param_count(p5) == 3_353_433_872
    f0, f5 = _flat(p0), _flat(p5)
    expected = {
        "PaliGemma/img/embedding/kernel": (14, 14, 3, 1152),
        "PaliGemma/img/pos_embedding": (1, 256, 1152),
        "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel": (
            27,
            1152,
            16,
            72,
        ),
        "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel": (27, 1152, 4304),
        "PaliGemma/img/Transformer/encoderblock/LayerNorm_0/scale": (27, 1152),
        "PaliGemma/img/Transformer/encoder_norm/scale": (1152,),
        "PaliGemma/img/head/kernel": (1152, 2048),
        "PaliGemma/llm/embedder/input_embedding": (257_152, 2048),
        "PaliGemma/llm/layers/attn/q_einsum/w": (18, 8, 2048, 256),
        "PaliGemma/llm/layers/attn/kv_einsum/w": (18, 2, 1, 2048, 256),
        "PaliGemma/llm/layers/attn/attn_vec_einsum/w": (18, 8, 256, 2048),
        "PaliGemma/llm/layers/attn/q_einsum_1/w": (18, 8, 1024, 256),
        "PaliGemma/llm/layers/attn/kv_einsum_1/w": (18, 2, 1, 1024, 256),
        "PaliGemma/llm/layers/attn/attn_vec_einsum_1/w": (18, 8, 256, 1024),
        "PaliGemma/llm/layers/mlp/gating_einsum": (18, 2, 2048, 16_384),
        "PaliGemma/llm/layers/mlp/linear": (18, 16_384, 2048),
        "PaliGemma/llm/layers/mlp_1/gating_einsum": (18, 2, 1024, 4096),
        "PaliGemma/llm/layers/mlp_1/linear": (18, 4096, 1024),
        "PaliGemma/llm/layers/pre_attention_norm/scale": (18, 2048),
        "PaliGemma/llm/layers/pre_ffw_norm/scale": (18, 2048),
        "PaliGemma/llm/final_norm/scale": (2048,),
        "action_in_proj/kernel": (32, 1024),
        "action_out_proj/kernel": (1024, 32),
    }
    for name, shape in expected.items():
        assert f0[name] == shape, name
        assert f5[name] == shape, name
    # π0: plain expert norms, state token and action-time MLP.
    assert f0["PaliGemma/llm/layers/pre_attention_norm_1/scale"] == (18, 1024)
    assert f0["PaliGemma/llm/final_norm_1/scale"] == (1024,)
    assert f0["state_proj/kernel"] == (32, 1024)
    assert f0["action_time_mlp_in/kernel"] == (2048, 1024)
    assert f0["action_time_mlp_out/kernel"] == (1024, 1024)
    # π0.5: adaptive expert norms, time MLP, no state projection.
    assert f5["PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel"] == (18, 1024, 3072)
    assert f5["PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/bias"] == (18, 3072)
    assert f5["PaliGemma/llm/final_norm_1/Dense_0/kernel"] == (1024, 3072)
    assert f5["time_mlp_in/kernel"] == (1024, 1024)
    assert not any(k.startswith(("state_proj", "action_time_mlp")) for k in f5)
    assert not any(k.startswith("PaliGemma/llm") and k.endswith("_1/scale") for k in f5)
    assert {x.dtype for x in jax.tree.leaves(p0)} == {jnp.dtype(jnp.float32)}


def test_lora_variants_add_lora_params_where_openpi_does():
    cfg = mcfg.Pi0Config(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
    flat = _flat(pi0.abstract_params(cfg))
    layers = "PaliGemma/llm/layers"
    assert flat[f"{layers}/attn/q_einsum/lora_a"] == (18, 8, 2048, 16)
    assert flat[f"{layers}/attn/q_einsum/lora_b"] == (18, 8, 16, 256)
    assert flat[f"{layers}/attn/kv_einsum/lora_a"] == (18, 2, 1, 2048, 16)
    assert flat[f"{layers}/attn/kv_einsum/lora_b"] == (18, 2, 1, 16, 256)
    assert flat[f"{layers}/attn/attn_vec_einsum/lora_a"] == (18, 8, 256, 16)
    assert flat[f"{layers}/attn/attn_vec_einsum/lora_b"] == (18, 8, 16, 2048)
    assert flat[f"{layers}/mlp/gating_einsum_lora_a"] == (18, 2, 2048, 16)
    assert flat[f"{layers}/mlp/gating_einsum_lora_b"] == (18, 2, 16, 16_384)
    assert flat[f"{layers}/mlp/linear_lora_a"] == (18, 16_384, 16)
    assert flat[f"{layers}/mlp/linear_lora_b"] == (18, 16, 2048)
    assert flat[f"{layers}/attn/q_einsum_1/lora_a"] == (18, 8, 1024, 32)
    assert flat[f"{layers}/mlp_1/linear_lora_b"] == (18, 32, 1024)
    lora_keys = [k for k in flat if "lora" in k]
    assert len(lora_keys) == 2 * 10  # 3 einsums x (a, b) + 2 MLP weights x (a, b), per expert
    assert all(k.startswith(layers) for k in lora_keys)
    assert mcfg.gemma_config("gemma_2b_lora").lora_attn == lora.LoRAConfig(rank=16, alpha=16.0)
    assert mcfg.gemma_config("gemma_300m_lora").lora_ffn == lora.LoRAConfig(rank=32, alpha=32.0)


def test_config_defaults_and_validation():
    assert mcfg.Pi0Config().max_token_len == 48
    assert mcfg.Pi0Config(pi05=True).max_token_len == 200
    assert mcfg.Pi0Config(pi05=True).discrete_state_input is True
    assert mcfg.Pi0Config(pi05=True, discrete_state_input=False).discrete_state_input is False
    assert mcfg.Pi0Config().tokens_per_image == 256
    tiny = mcfg.Pi0Config.tiny(action_horizon=4)
    assert (tiny.action_horizon, tiny.dtype, tiny.prefix_len, tiny.suffix_len) == (
        4,
        "float32",
        3 * 4 + 16,
        5,
    )
    with pytest.raises(ValueError, match="must share depth"):
        mcfg.Pi0Config(paligemma_variant="dummy")
    with pytest.raises(ValueError, match="multiples of the patch size"):
        mcfg.Pi0Config.tiny(image_resolution=(30, 28))
    with pytest.raises(ValueError, match="unknown SigLIP variant"):
        mcfg.Pi0Config.tiny(siglip_variant="Q/14")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.pi05 = True  # type: ignore[misc]
    # Every field carries a one-line docstring right after it (tyro shows it as help).
    tree = ast.parse(pathlib.Path(mcfg.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Pi0Config")
    documented = {
        stmt.target.id
        for stmt, nxt in zip(cls.body, cls.body[1:], strict=False)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(mcfg.Pi0Config)}


# ----------------------------------------------------------------------------- masks and embeddings


def test_make_attn_mask_hand_cases():
    valid = jnp.ones((1, 4), bool)
    causal = pi0.make_attn_mask(valid, jnp.array([True, True, True, True]))
    np.testing.assert_array_equal(causal[0], np.tril(np.ones((4, 4), bool)))
    # prefix-LM: first two bidirectional, then causal.
    prefix_lm = pi0.make_attn_mask(valid, jnp.array([False, False, True, True]))
    np.testing.assert_array_equal(prefix_lm[0], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    # π0-style blocks (prefix | state | 2 actions) with one padded prefix token.
    mask = pi0.make_attn_mask(
        jnp.array([[True, False, True, True, True]]), jnp.array([False, False, True, True, False])
    )
    np.testing.assert_array_equal(
        mask[0],
        [
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],  # padding sees nothing and is seen by nothing
            [1, 0, 1, 0, 0],
            [1, 0, 1, 1, 1],
            [1, 0, 1, 1, 1],
        ],
    )


def test_posemb_sincos_matches_formula():
    t = jnp.array([0.0, 0.3, 1.0])
    emb = pi0.posemb_sincos(t, 8)
    period = 4e-3 * (4.0 / 4e-3) ** np.linspace(0, 1, 4)
    angle = np.asarray(t)[:, None] * 2 * np.pi / period[None]
    np.testing.assert_allclose(
        emb, np.concatenate([np.sin(angle), np.cos(angle)], -1), atol=3e-4
    )  # float32 angles reach ~1600 rad


def test_masked_camera_and_prompt_padding_do_not_leak(tiny):
    cfg, params, obs = tiny
    x_t = jax.random.normal(jax.random.key(4), (B, cfg.action_horizon, cfg.action_dim))
    time = jnp.array([0.7, 0.2])
    v_ref, _ = predict_velocity_full(params, cfg, obs, x_t, time)
    # Change pixels of the masked camera (sample 0) and the padded prompt tokens: outputs must not move.
    last = cfg.image_keys[-1]
    changed = obs.replace(
        images={**obs.images, last: obs.images[last].at[0].set(0.5)},
        tokenized_prompt=jnp.where(obs.tokenized_prompt_mask, obs.tokenized_prompt, 7),
    )
    v_changed, _ = predict_velocity_full(params, cfg, changed, x_t, time)
    np.testing.assert_allclose(v_changed[0], v_ref[0], atol=1e-6)
    # ... whereas the unmasked camera of sample 1 matters.
    visible = obs.replace(images={**obs.images, last: obs.images[last].at[1].set(0.5)})
    v_visible, _ = predict_velocity_full(params, cfg, visible, x_t, time)
    assert np.abs(np.asarray(v_visible[1] - v_ref[1])).max() > 1e-4


def test_observation_from_dict_and_input_errors(tiny):
    cfg, _, obs = tiny
    u8 = np.full((B, *cfg.image_resolution, 3), 255, np.uint8)
    data = {
        "image": {k: u8 for k in cfg.image_keys},
        "image_mask": {k: np.ones((B,), bool) for k in cfg.image_keys},
        "state": np.zeros((B, cfg.action_dim), np.float32),
    }
    parsed = pi0.Observation.from_dict(data)
    assert parsed.images[cfg.image_keys[0]].dtype == jnp.float32
    np.testing.assert_allclose(parsed.images[cfg.image_keys[0]], 1.0)
    with pytest.raises(ValueError, match="together"):
        pi0.Observation.from_dict({**data, "tokenized_prompt": np.zeros((B, 4), np.int32)})
    no_masks = pi0.preprocess_observation(cfg, obs.replace(image_masks={}))
    assert all(bool(m.all()) for m in no_masks.image_masks.values())
    with pytest.raises(ValueError, match="resize with pad"):
        bad = {k: jnp.zeros((B, 56, 56, 3)) for k in cfg.image_keys}
        pi0.preprocess_observation(cfg, obs.replace(images=bad))
    with pytest.raises(ValueError, match="lacks images"):
        pi0.preprocess_observation(cfg, obs.replace(images={}))


# ----------------------------------------------------------------------------- flow matching


def test_sample_actions_with_kv_cache_equals_uncached_reference(tiny):
    cfg, params, obs = tiny
    noise = jax.random.normal(jax.random.key(3), (B, cfg.action_horizon, cfg.action_dim))
    actions = sample_actions(params, cfg, jax.random.key(0), obs, 10, noise)
    assert actions.shape == (B, cfg.action_horizon, cfg.action_dim) and actions.dtype == jnp.float32
    # Reference: the whole prefix + suffix sequence through the model at every Euler step.
    x_t, time = noise, jnp.float32(1.0)
    for _ in range(10):
        v_t, _ = predict_velocity_full(params, cfg, obs, x_t, jnp.broadcast_to(time, (B,)))
        x_t, time = x_t + (-1.0 / 10) * v_t, time + jnp.float32(-1.0 / 10)
    np.testing.assert_allclose(actions, x_t, atol=1e-5, rtol=1e-5)
    assert abs(float(time)) < 0.05  # exactly num_steps steps, ending at t ≈ 0


def test_compute_loss_formula_shape_and_gradients(tiny):
    cfg, params, obs = tiny
    actions = jax.random.normal(jax.random.key(2), (B, cfg.action_horizon, cfg.action_dim))
    rng = jax.random.key(9)

    def mean_loss(p):
        loss = pi0.compute_loss(p, cfg, rng, obs, actions)
        return loss.mean(), loss

    (_, loss), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(params)
    assert loss.shape == (B, cfg.action_horizon) and loss.dtype == jnp.float32
    # Recompute from the documented recipe with the same rng split.
    _, noise_rng, time_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, actions.shape)
    time = jax.random.beta(time_rng, 1.5, 1, (B,)) * 0.999 + 0.001
    assert bool(((time >= 0.001) & (time <= 1.0)).all())
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    v_t, _ = predict_velocity_full(params, cfg, obs, x_t, time)
    np.testing.assert_allclose(loss, ((v_t - (noise - actions)) ** 2).mean(-1), rtol=1e-5, atol=1e-6)

    flat = traverse_util.flatten_dict(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in flat.values())
    for name in [
        ("PaliGemma", "img", "embedding", "kernel"),
        ("PaliGemma", "llm", "embedder", "input_embedding"),
        ("PaliGemma", "llm", "layers", "attn", "q_einsum", "w"),
        ("PaliGemma", "llm", "layers", "mlp_1", "linear"),
        ("state_proj", "kernel"),
        ("action_time_mlp_in", "kernel"),
    ]:
        assert float(jnp.abs(flat[name]).max()) > 0, name


def test_prefill_and_vmapped_predict_velocity(tiny):
    cfg, params, obs = tiny
    cache = prefill(params, cfg, obs)
    assert cache.prefix_mask.shape == (B, cfg.prefix_len)  # masked images still occupy slots
    assert cache.kv_cache[0].shape == (cfg.llm.depth, B, cfg.prefix_len, 1, cfg.llm.head_dim)
    assert cache.prefix_out.shape == (B, cfg.prefix_len, cfg.llm.width)
    n_img = cfg.tokens_per_image
    assert not cache.prefix_mask[0, 2 * n_img : 3 * n_img].any()
    assert int(cache.prefix_mask[1].sum()) == 3 * n_img + 13
    xs = jax.random.normal(jax.random.key(5), (3, B, cfg.action_horizon, cfg.action_dim))
    time = jnp.array([0.9, 0.4])

    @jax.jit
    def vmapped_and_grad(cache, xs):
        # vmap over candidate x_t sharing one prefix cache (as an RL sampler does) ...
        out = jax.vmap(lambda x: pi0.predict_velocity(params, cfg, cache, obs.state, x, time))(xs)
        # ... and a gradient w.r.t. the noisy actions through the cached path.
        grad = jax.grad(lambda x: pi0.predict_velocity(params, cfg, cache, obs.state, x, time)[0].sum())(
            xs[0]
        )
        return out, grad

    (v_batched, out_batched), grad = vmapped_and_grad(cache, xs)
    assert v_batched.shape == (3, B, cfg.action_horizon, cfg.action_dim)
    assert out_batched.shape == (3, B, cfg.action_horizon, cfg.expert.width)
    v_full, out_full = predict_velocity_full(params, cfg, obs, xs[1], time)
    np.testing.assert_allclose(v_batched[1], v_full, atol=1e-5)
    np.testing.assert_allclose(out_batched[1], out_full, atol=1e-5)
    assert grad.shape == xs[0].shape and bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0


def test_pi05_path(tiny05):
    cfg, params, obs = tiny05
    assert "Dense_0" in params["PaliGemma"]["llm"]["layers"]["pre_attention_norm_1"]
    assert "time_mlp_in" in params and "state_proj" not in params
    noise = jax.random.normal(jax.random.key(3), (B, cfg.action_horizon, cfg.action_dim))
    actions = sample_actions(params, cfg, jax.random.key(0), obs, 10, noise)
    assert actions.shape == noise.shape and bool(jnp.isfinite(actions).all())
    # The cached sampler equals ten uncached passes; π0.5 reads no continuous state.
    no_state = obs.replace(state=jnp.zeros_like(obs.state))
    x_t, time = noise, jnp.float32(1.0)
    for _ in range(10):
        v_t, out = predict_velocity_full(params, cfg, no_state, x_t, jnp.broadcast_to(time, (B,)))
        x_t, time = x_t + (-1.0 / 10) * v_t, time + jnp.float32(-1.0 / 10)
    np.testing.assert_allclose(actions, x_t, atol=1e-5, rtol=1e-5)
    assert out.shape == (B, cfg.action_horizon, cfg.expert.width)
    # Time conditions the expert through adaRMS.
    v_a, _ = predict_velocity_full(params, cfg, obs, noise, jnp.array([0.8, 0.3]))
    v_b, _ = predict_velocity_full(params, cfg, obs, noise, jnp.array([0.3, 0.8]))
    assert np.abs(np.asarray(v_a - v_b)).max() > 1e-4


def test_full_size_bfloat16_traces():
    """The full-size bf16 model traces end to end (catches dtype mismatches in scan carries)."""
    for pi05 in (False, True):
        cfg = mcfg.Pi0Config(pi05=pi05)
        params = pi0.abstract_params(cfg)
        obs = jax.eval_shape(lambda cfg=cfg: pi0.fake_observation(cfg, 1))
        actions = jax.ShapeDtypeStruct((1, cfg.action_horizon, cfg.action_dim), jnp.float32)
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        loss = jax.eval_shape(
            lambda p, r, o, a, cfg=cfg: pi0.compute_loss(p, cfg, r, o, a), params, rng, obs, actions
        )
        assert (loss.shape, loss.dtype) == ((1, cfg.action_horizon), jnp.float32)
        cache = jax.eval_shape(lambda p, o, cfg=cfg: pi0.prefill(p, cfg, o), params, obs)
        assert cache.kv_cache[0].dtype == jnp.bfloat16
        assert cache.kv_cache[0].shape == (18, 1, cfg.prefix_len, 1, 256)
        assert cfg.prefix_len == 3 * 256 + (200 if pi05 else 48)


# ----------------------------------------------------------------------------- LoRA


def test_lora_equations_match_openpi_conventions():
    assert lora.lora_equations("BTD,NDH->BTNH") == ("BTD,NDL->BTNL", "BTNL,NLH->BTNH")
    assert lora.lora_equations("BSD,2KDH->2BSKH") == ("BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH")
    assert lora.lora_equations("BTNH,NHD->BTD") == ("BTNH,NHL->BTL", "BTL,NLD->BTD")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    cfg = lora.LoRAConfig(rank=2, alpha=4.0)
    module = lora.Einsum(shape=(4, 8, 5), lora=cfg)
    p = {
        "w": jnp.asarray(rng.normal(size=(4, 8, 5)), jnp.float32),
        "lora_a": jnp.asarray(rng.normal(size=(4, 8, 2)), jnp.float32),
        "lora_b": jnp.asarray(rng.normal(size=(4, 2, 5)), jnp.float32),
    }
    out = jax.jit(lambda p, x: module.apply({"params": p}, "BTD,NDH->BTNH", x))(p, x)
    merged = np.asarray(p["w"]) + cfg.scaling * np.einsum("NDL,NLH->NDH", p["lora_a"], p["lora_b"])
    np.testing.assert_allclose(out, np.einsum("BTD,NDH->BTNH", x, merged), atol=1e-4)


def test_lora_model_with_zero_b_equals_base(tiny):
    cfg, params, obs = tiny
    lora_cfg = dataclasses.replace(cfg, paligemma_variant="dummy_lora", action_expert_variant="dummy_lora")
    flat_lora = traverse_util.flatten_dict(_random_params(lora_cfg, seed=2))
    flat_base = traverse_util.flatten_dict(params)
    lora_names = {k for k in flat_lora if "lora" in k[-1]}
    assert set(flat_lora) - lora_names == set(flat_base)
    assert {k[-1] for k in lora_names} == {
        "lora_a",
        "lora_b",
        "gating_einsum_lora_a",
        "gating_einsum_lora_b",
        "linear_lora_a",
        "linear_lora_b",
    }
    assert all(k[:3] == ("PaliGemma", "llm", "layers") for k in lora_names)
    # Base weights copied, LoRA B zeroed (A stays random): the output must equal the base model.
    zero_b = {
        **flat_base,
        **{
            k: jnp.zeros_like(v) if k[-1].endswith("lora_b") else v
            for k, v in flat_lora.items()
            if k in lora_names
        },
    }
    x_t = jax.random.normal(jax.random.key(6), (B, cfg.action_horizon, cfg.action_dim))
    time = jnp.array([0.5, 0.25])
    v_base, _ = predict_velocity_full(params, cfg, obs, x_t, time)
    v_zero_b, _ = predict_velocity_full(traverse_util.unflatten_dict(zero_b), lora_cfg, obs, x_t, time)
    np.testing.assert_allclose(v_zero_b, v_base, atol=1e-5)
    # Non-zero B: the adapters are active.
    active = {**flat_base, **{k: flat_lora[k] for k in lora_names}}
    v_active, _ = predict_velocity_full(traverse_util.unflatten_dict(active), lora_cfg, obs, x_t, time)
    assert np.abs(np.asarray(v_active - v_base)).max() > 1e-4


# ----------------------------------------------------------------------------- value head


def test_value_head():
    params = value_head.init_value_head(jax.random.key(0), 64, (32, 16))
    shapes = [tuple(params[k]["kernel"].shape) for k in ("hidden_0", "hidden_1", "output")]
    assert shapes == [(64, 32), (32, 16), (16, 1)]
    big = value_head.init_value_head(jax.random.key(1), 8, (4096,))
    assert abs(float(big["output"]["kernel"].std()) - 0.02) < 0.002
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 64)), jnp.bfloat16)

    @jax.jit
    def values_and_grads(p, x):
        return value_head.apply_value_head(p, x), jax.grad(lambda p: value_head.apply_value_head(p, x).sum())(
            p
        )

    values, grads = values_and_grads(params, x)
    assert values.shape == (3, 5) and values.dtype == jnp.float32
    assert float(jnp.abs(grads["hidden_0"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="positive"):
        value_head.init_value_head(jax.random.key(0), 0, (4,))


def test_gemma_rope_and_norm_numerics():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 3, 2, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)
    norm = gemma.RMSNorm()

    @jax.jit
    def run(x, y):
        rotated = gemma.apply_rope(x, jnp.array([[0, 5, 17]]))
        normed, gate = norm.apply({"params": {"scale": jnp.zeros((16,))}}, y, None)
        return rotated, normed, gate

    rotated, normed, gate = run(x, y)
    # RoPE is a rotation: norms preserved, position 0 is the identity.
    np.testing.assert_allclose(rotated[:, 0], x[:, 0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    # RMSNorm with (1 + scale) and scale = 0 is plain RMS normalisation; no gate without a condition.
    assert gate is None
    y_np = np.asarray(y)
    np.testing.assert_allclose(normed, y_np / np.sqrt((y_np**2).mean(-1, keepdims=True) + 1e-6), rtol=1e-5)
