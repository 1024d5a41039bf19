"""Flow policies (pirl/policies): Flow-SDE / Flow-Noise sampling, rescoring, critic and freeze masks.

Runs on the tiny π0 (float32, CPU). Compilation dominates, so every jitted function is built once
at module level and the fast tests share a handful of configurations; the full option grid is slow.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy, masks, noise_head
from pirl.policies.config import FlowPolicyConfig

BATCH = 2
MODEL_CFG = Pi0Config.tiny()
# XLA's backend optimisations cost most of the compile time of these small programs and buy nothing
# at this size; every program that a test compares with another is compiled the same way.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn, *static):
    return jax.jit(fn, static_argnames=static, compiler_options=_FAST_COMPILE)


sample_jit = _jit(flow_policy.sample, "policy_cfg", "model_cfg", "mode")
rescore_jit = _jit(flow_policy.log_prob_and_value, "policy_cfg", "model_cfg")
sample_actions_jit = _jit(pi0.sample_actions, "cfg", "num_steps")

# The fast configurations, which between them cover every option value but action_level (the slow
# grid covers all combinations): Flow-SDE single-step with chunk-level ratios and the VLM critic, and
# Flow-Noise joint with token-level ratios, K = 3 and the detached expert critic (also used for the
# gradient checks, as it has a noise head and an expert critic).
SDE_CFG = FlowPolicyConfig(value_after_vlm=True, value_head_hidden=(32, 16))
NOISE_CFG = FlowPolicyConfig.flow_noise(num_steps=3, value_head_hidden=(32, 16))


def _observation(cfg: Pi0Config, seed: int) -> pi0.Observation:
    rng = np.random.default_rng(seed)
    h, w = cfg.image_resolution
    images = {k: rng.uniform(-1, 1, (BATCH, h, w, 3)).astype(np.float32) for k in cfg.image_keys}
    masks_ = {k: np.ones((BATCH,), bool) for k in cfg.image_keys}
    masks_[cfg.image_keys[-1]] = np.array([True, False])  # one hidden camera
    prompt_mask = np.zeros((BATCH, cfg.max_token_len), bool)
    prompt_mask[0, :5], prompt_mask[1, :9] = True, True
    prompt = np.where(prompt_mask, rng.integers(1, cfg.vocab_size, prompt_mask.shape), 0).astype(np.int32)
    return pi0.Observation(
        images=images,
        image_masks=masks_,
        state=rng.normal(size=(BATCH, cfg.action_dim)).astype(np.float32),
        tokenized_prompt=prompt,
        tokenized_prompt_mask=prompt_mask,
    )


def _random_model_params(cfg: Pi0Config, seed: int = 0) -> dict:
    """The tiny model's parameter tree filled with N(0, 0.05²) from numpy (compiling init costs more)."""
    rng = np.random.default_rng(seed)
    abstract = pi0.abstract_params(cfg)
    return jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), abstract)


@pytest.fixture(scope="module")
def model_params():
    return _random_model_params(MODEL_CFG)


@pytest.fixture(scope="module")
def obs():
    return _observation(MODEL_CFG, 0)


def _policy_params(policy_cfg, model_cfg, model_params, seed=1):
    return flow_policy.init_policy_params(
        policy_cfg, model_cfg, jax.random.key(seed), model_params=model_params
    )


@pytest.fixture(scope="module")
def sde_rollout(model_params, obs):
    params = _policy_params(SDE_CFG, MODEL_CFG, model_params)
    out = sample_jit(params, SDE_CFG, MODEL_CFG, jax.random.key(3), obs, mode="train")
    return params, jax.device_get(out)


@pytest.fixture(scope="module")
def noise_rollout(model_params, obs):
    params = _policy_params(NOISE_CFG, MODEL_CFG, model_params)
    out = sample_jit(params, NOISE_CFG, MODEL_CFG, jax.random.key(4), obs, mode="train")
    return params, jax.device_get(out)


def _scored(a, cfg):
    return np.asarray(a)[..., : cfg.action_chunk, : cfg.action_env_dim]


# ----------------------------------------------------------------------------- pure math (no model)


@pytest.mark.parametrize("num_steps", [3, 4, 5, 10])
def test_sde_schedule_matches_formulas(num_steps):
    a = 0.5
    sched = flow_policy.denoise_schedule(num_steps, a)
    delta = 1.0 / num_steps
    for i in range(num_steps):
        t = 1.0 - i / num_steps
        denom = 1.0 - (1.0 - 1.0 / num_steps) if i == 0 else 1.0 - t
        sigma = a * math.sqrt(t / denom)
        np.testing.assert_allclose(sched.sde_std[i], sigma * math.sqrt(delta), rtol=1e-6)
        np.testing.assert_allclose(sched.sde_shrink[i], sigma**2 * delta / (2 * t), rtol=1e-6)
    np.testing.assert_allclose(sched.sde_std[0], a * math.sqrt(num_steps) * math.sqrt(delta), rtol=1e-6)
    # Model times: openpi's float32 accumulation t += dt from 1, ending at ~0.
    expected = [np.float32(1.0)]
    for _ in range(num_steps):
        expected.append(np.float32(expected[-1] + np.float32(-1.0 / num_steps)))
    np.testing.assert_array_equal(sched.times, np.array(expected, np.float32))
    assert abs(sched.times[-1]) < 1e-6


def test_noise_head_std_stays_in_range():
    lo, hi = 0.08, 0.16
    params = noise_head.init_noise_head(jax.random.key(0), 16, (8, 4), 5)
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(16, 8), (8, 4), (4, 5)]
    features = np.random.default_rng(0).normal(size=(3, 7, 16)).astype(np.float32) * 50.0
    apply = jax.jit(noise_head.apply_noise_head, static_argnums=2, compiler_options=_FAST_COMPILE)
    std = np.asarray(apply(params, features, (lo, hi)))
    assert std.shape == (3, 7, 5)
    assert np.all(std >= lo - 1e-7) and np.all(std <= hi + 1e-7)
    # The squashing: a final pre-activation h maps to exp(0.5 * lerp(log lo², log hi², (tanh h + 1) / 2)).
    zero_out = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_allclose(apply(zero_out, features, (lo, hi)), math.sqrt(lo * hi), rtol=1e-6)


def test_aggregate_log_probs_levels():
    token = jnp.arange(2 * 5 * 7, dtype=jnp.float32).reshape(2, 5, 7)
    np.testing.assert_array_equal(flow_policy.aggregate_log_probs(token, "token_level"), token)
    np.testing.assert_allclose(flow_policy.aggregate_log_probs(token, "action_level"), token.sum(-1))
    np.testing.assert_allclose(flow_policy.aggregate_log_probs(token, "chunk_level"), token.sum((1, 2)))
    with pytest.raises(ValueError, match="logprob_type"):
        flow_policy.aggregate_log_probs(token, "episode_level")


def test_normal_log_prob_matches_scipy_and_zero_std():
    rng = np.random.default_rng(0)
    x, mean = rng.normal(size=(2, 50)), rng.normal(size=(2, 50))
    std = rng.uniform(0.01, 2.0, size=(2, 50))
    got = flow_policy.normal_log_prob(
        jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    )
    np.testing.assert_allclose(got, stats.norm.logpdf(x, mean, std), rtol=1e-5, atol=1e-4)
    zero = flow_policy.normal_log_prob(jnp.ones(3), jnp.zeros(3), jnp.zeros(3))
    np.testing.assert_array_equal(zero, np.zeros(3))


def test_config_validation():
    with pytest.raises(ValueError, match="noise_method"):
        FlowPolicyConfig(noise_method="flow_cps")
    with pytest.raises(ValueError, match="logprob_type"):
        FlowPolicyConfig(logprob_type="sequence_level")
    with pytest.raises(ValueError, match="noise_logvar_range"):
        FlowPolicyConfig(noise_logvar_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="action_horizon"):
        flow_policy.init_policy_params(
            FlowPolicyConfig(action_chunk=11), MODEL_CFG, jax.random.key(0), model_params={}
        )
    assert FlowPolicyConfig.pi05().value_after_vlm and FlowPolicyConfig.pi05().value_head_hidden == (
        1024,
        512,
        256,
    )
    assert FlowPolicyConfig.flow_noise().joint_logprob


# ----------------------------------------------------------------------------- freeze masks


def _labels_by_path(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(masks.path_names(p)): v for p, v in flat}


def test_trainable_mask_expert_only_on_tiny_model(noise_rollout):
    params, _ = noise_rollout
    labels = _labels_by_path(masks.trainable_mask(params, NOISE_CFG, MODEL_CFG))
    for path, trainable in labels.items():
        if path.startswith("model/PaliGemma/img/"):
            assert not trainable, path
        elif path.startswith("model/PaliGemma/llm/"):
            expert = any(part.endswith("_1") for part in path.split("/"))
            assert trainable == expert, path
        else:
            assert trainable, path
    assert labels["model/PaliGemma/llm/layers/attn/q_einsum_1/w"]
    assert not labels["model/PaliGemma/llm/embedder/input_embedding"]
    assert labels["model/action_in_proj/kernel"] and labels["noise_head/Dense_0/kernel"]
    full = masks.trainable_mask(params, dataclasses.replace(NOISE_CFG, train_expert_only=False), MODEL_CFG)
    assert all(jax.tree.leaves(full))
    opt_labels = _labels_by_path(masks.optimizer_labels(params, NOISE_CFG, MODEL_CFG))
    assert {v for k, v in opt_labels.items() if k.startswith("value_head/")} == {"critic"}
    assert opt_labels["model/PaliGemma/img/embedding/kernel"] == "frozen"
    assert opt_labels["model/action_out_proj/kernel"] == "actor"


def _lora_tree(llm_lora: bool, expert_lora: bool):
    leaf = np.zeros(1, np.float32)

    def einsum(lora):
        return {"w": leaf, "lora_a": leaf, "lora_b": leaf} if lora else {"w": leaf}

    def ffn(lora):
        extra = {"gating_einsum_lora_a": leaf, "linear_lora_b": leaf} if lora else {}
        return {"gating_einsum": leaf, "linear": leaf, **extra}

    llm = {
        "embedder": {"input_embedding": leaf},
        "layers": {
            "attn": {"q_einsum": einsum(llm_lora), "q_einsum_1": einsum(expert_lora)},
            "mlp": ffn(llm_lora),
            "mlp_1": ffn(expert_lora),
            "pre_attention_norm": {"scale": leaf},
            "pre_attention_norm_1": {"scale": leaf},
        },
    }
    return {
        "model": {
            "PaliGemma": {"llm": llm, "img": {"head": {"kernel": leaf}}},
            "action_in_proj": {"kernel": leaf},
        },
        "value_head": {"Dense_0": {"kernel": leaf}},
    }


@pytest.mark.parametrize(("llm_lora", "expert_lora"), [(True, False), (True, True), (False, True)])
def test_trainable_mask_lora_follows_openpi(llm_lora, expert_lora):
    cfg = FlowPolicyConfig(train_expert_only=False)
    labels = _labels_by_path(masks.trainable_mask(_lora_tree(llm_lora, expert_lora), cfg))
    for path, trainable in labels.items():
        parts = path.split("/")
        if "llm" in parts:
            is_expert = any(p.endswith("_1") for p in parts[parts.index("llm") + 1 :])
            has_lora = expert_lora if is_expert else llm_lora
            # openpi: in a LoRA'd Gemma only the LoRA weights train; the other Gemma is untouched.
            assert trainable == (not has_lora or "lora" in path), path
        elif "img" in parts:
            assert trainable == (not llm_lora), path  # freeze_vision_with_lora
        else:
            assert trainable, path
    # train_expert_only additionally freezes all of the LLM's own weights, LoRA included.
    frozen_llm = _labels_by_path(masks.trainable_mask(_lora_tree(llm_lora, expert_lora), FlowPolicyConfig()))
    assert not frozen_llm[
        "model/PaliGemma/llm/layers/attn/q_einsum/lora_a"
        if llm_lora
        else "model/PaliGemma/llm/layers/attn/q_einsum/w"
    ]


# ----------------------------------------------------------------------------- sampling


def test_eval_mode_reproduces_sample_actions(model_params, obs, sde_rollout):
    params, _ = sde_rollout
    out = sample_jit(params, SDE_CFG, MODEL_CFG, jax.random.key(7), obs, mode="eval")
    reference = sample_actions_jit(
        model_params, MODEL_CFG, jax.random.key(0), obs, num_steps=SDE_CFG.num_steps, noise=out.chain[:, 0]
    )
    # Two separately compiled programs: equal up to XLA's fusion-dependent float rounding (a few ulp).
    np.testing.assert_allclose(np.asarray(out.actions), np.asarray(reference), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.chain[:, -1]), np.asarray(out.actions))
    np.testing.assert_array_equal(np.asarray(out.chain[:, 1:]), np.asarray(out.means))
    assert not np.any(np.asarray(out.stds)) and not np.any(np.asarray(out.log_probs))
    np.testing.assert_array_equal(out.denoise_index, [-1, -1])


def test_sde_rollout_log_probs_are_gaussian_densities(sde_rollout):
    _, out = sde_rollout
    k_steps = SDE_CFG.num_steps
    assert out.chain.shape == (BATCH, k_steps + 1, MODEL_CFG.action_horizon, MODEL_CFG.action_dim)
    assert (
        out.means.shape == out.stds.shape == (BATCH, k_steps, MODEL_CFG.action_horizon, MODEL_CFG.action_dim)
    )
    assert out.log_probs.shape == (BATCH,) and out.value.shape == (BATCH,)
    sched = flow_policy.denoise_schedule(k_steps, SDE_CFG.noise_level)
    for b in range(BATCH):
        k = int(out.denoise_index[b])
        assert 0 <= k < k_steps
        for i in range(k_steps):
            if i == k:
                np.testing.assert_allclose(out.stds[b, i], sched.sde_std[i], rtol=1e-6)
            else:  # deterministic ODE steps: no noise, the chain follows the mean exactly
                assert not np.any(out.stds[b, i])
                np.testing.assert_array_equal(out.chain[b, i + 1], out.means[b, i])
        density = stats.norm.logpdf(
            _scored(out.chain[b, k + 1], SDE_CFG),
            _scored(out.means[b, k], SDE_CFG),
            _scored(out.stds[b, k], SDE_CFG),
        )
        np.testing.assert_allclose(out.log_probs[b], density.sum(), rtol=1e-5, atol=1e-3)


def test_flow_noise_rollout_log_probs_are_joint_gaussian_densities(noise_rollout):
    _, out = noise_rollout
    lo, hi = NOISE_CFG.noise_logvar_range
    assert np.all(out.stds >= lo - 1e-7) and np.all(out.stds <= hi + 1e-7)
    np.testing.assert_array_equal(out.denoise_index, [-1, -1])
    terms = [stats.norm.logpdf(_scored(out.chain[:, 0], NOISE_CFG))]
    for i in range(NOISE_CFG.num_steps):
        terms.append(
            stats.norm.logpdf(
                _scored(out.chain[:, i + 1], NOISE_CFG),
                _scored(out.means[:, i], NOISE_CFG),
                _scored(out.stds[:, i], NOISE_CFG),
            )
        )
    expected = np.mean(terms, axis=0)  # mean, not sum, over the K + 1 terms
    assert out.log_probs.shape == expected.shape == (BATCH, NOISE_CFG.action_chunk, NOISE_CFG.action_env_dim)
    np.testing.assert_allclose(out.log_probs, expected, rtol=1e-5, atol=1e-4)


def test_sde_chain_converges_to_ode_chain(model_params, obs, sde_rollout):
    cfg = dataclasses.replace(SDE_CFG, joint_logprob=True, noise_level=1e-4)
    params, _ = sde_rollout
    ode = sample_jit(params, SDE_CFG, MODEL_CFG, jax.random.key(5), obs, mode="eval")
    sde = sample_jit(params, cfg, MODEL_CFG, jax.random.key(5), obs, mode="train", noise=ode.chain[:, 0])
    gap = np.abs(np.asarray(sde.chain) - np.asarray(ode.chain)).max()
    # Each step adds noise of std <= a and shifts the mean by O(a²); with a = 1e-4 the chains agree to ~1e-3.
    assert 0 < gap < 2e-3, gap
    _, full_noise = sde_rollout
    assert np.abs(full_noise.stds).max() > 0.2  # (the default a = 0.5 is far from the ODE)


# ----------------------------------------------------------------------------- rescoring


def _check_rescore(params, policy_cfg, model_cfg, obs, out):
    log_probs, entropy, value = rescore_jit(params, policy_cfg, model_cfg, obs, out.chain, out.denoise_index)
    assert log_probs.shape == out.log_probs.shape and entropy.shape == value.shape == (BATCH,)
    ratio = np.exp(np.asarray(log_probs, np.float64) - np.asarray(out.log_probs, np.float64))
    np.testing.assert_allclose(ratio, 1.0, atol=2e-4)
    if policy_cfg.add_value_head and (policy_cfg.value_after_vlm or policy_cfg.joint_logprob):
        np.testing.assert_allclose(value, out.value, rtol=1e-5, atol=1e-6)
    if policy_cfg.noise_method == "flow_noise":
        if policy_cfg.joint_logprob:
            stds = np.concatenate([np.ones_like(out.stds[:, :1]), out.stds], axis=1)
        else:
            stds = np.take_along_axis(out.stds, np.asarray(out.denoise_index)[:, None, None, None], axis=1)
        expected = np.mean(0.5 * np.log(2 * np.pi * np.e * _scored(stds, policy_cfg) ** 2), axis=(1, 2, 3))
        np.testing.assert_allclose(entropy, expected, rtol=1e-5)
    else:
        np.testing.assert_array_equal(entropy, np.zeros(BATCH))
    return log_probs, entropy, value


def test_rescore_sde_single_step_gives_ratio_one(sde_rollout, obs):
    params, out = sde_rollout
    _check_rescore(params, SDE_CFG, MODEL_CFG, obs, out)


def test_rescore_flow_noise_joint_gives_ratio_one(noise_rollout, obs):
    params, out = noise_rollout
    _check_rescore(params, NOISE_CFG, MODEL_CFG, obs, out)


def test_rescore_depends_on_current_params(sde_rollout, obs):
    params, out = sde_rollout
    shifted = jax.tree.map(lambda x: x, params)
    bias = shifted["model"]["action_out_proj"]["bias"]
    shifted["model"]["action_out_proj"]["bias"] = bias + 0.5
    new, _, _ = rescore_jit(shifted, SDE_CFG, MODEL_CFG, obs, out.chain, out.denoise_index)
    # A shifted velocity moves the transition mean, so the stored sample becomes less or more likely.
    assert np.all(np.abs(np.asarray(new) - np.asarray(out.log_probs)) > 1e-3)


def test_rescore_on_a_batch_sharded_over_devices(noise_rollout, obs):
    params, out = noise_rollout
    devices = jax.devices()[:BATCH]
    if len(devices) < BATCH:
        pytest.skip("needs one device per sample (conftest fakes 8 CPU devices)")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.device_put((obs, out.chain, out.denoise_index), by_batch)
    result = rescore_jit(jax.device_put(params, replicated), NOISE_CFG, MODEL_CFG, *sharded)
    assert result[0].sharding.spec[0] == "data"
    reference = rescore_jit(params, NOISE_CFG, MODEL_CFG, obs, out.chain, out.denoise_index)
    for got, want in zip(result, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_only_trainable_params(model_params, obs, noise_rollout):
    params, out = noise_rollout

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def grads(p):
        # One forward pass, three backward passes (vmapped): d(sum log_probs), d(sum entropy), d(sum value).
        def outputs(q):
            log_probs, entropy, value = flow_policy.log_prob_and_value(
                q, NOISE_CFG, MODEL_CFG, obs, out.chain, out.denoise_index
            )
            return jnp.stack([log_probs.sum(), entropy.sum(), value.sum()])

        # As the update differentiates: w.r.t. the trainable part, the frozen part a constant.
        trainable, frozen = masks.split_frozen(p, masks.trainable_mask(p, NOISE_CFG, MODEL_CFG))
        return jax.jacrev(lambda t: outputs(masks.merge_frozen(t, frozen)))(trainable)

    jac = _labels_by_path(grads(params))
    mask = _labels_by_path(masks.trainable_mask(params, NOISE_CFG, MODEL_CFG))
    assert set(jac) == {path for path, trainable in mask.items() if trainable}  # frozen: none computed
    nonzero = {}
    for path, leaf in jac.items():
        leaf = np.asarray(leaf)
        for row, name in enumerate(("logp", "entropy", "value")):
            nonzero[(name, path)] = bool(np.any(leaf[row]))
    # The policy gradient reaches the expert, the projections and the noise head, not the critic.
    assert nonzero[("logp", "model/PaliGemma/llm/layers/attn/q_einsum_1/w")]
    assert nonzero[("logp", "model/action_out_proj/kernel")]
    assert nonzero[("logp", "noise_head/Dense_0/kernel")]
    assert not any(v for (n, p), v in nonzero.items() if n == "logp" and p.startswith("value_head/"))
    # The entropy depends on the noise-head std (and, through its input, on the expert).
    assert nonzero[("entropy", "noise_head/Dense_0/kernel")]
    # detach_critic_input: the value gradient stops at the expert's output.
    assert any(v for (n, p), v in nonzero.items() if n == "value" and p.startswith("value_head/"))
    assert not any(v for (n, p), v in nonzero.items() if n == "value" and not p.startswith("value_head/"))


# ----------------------------------------------------------------------------- the full option grid


@pytest.mark.nightly
@pytest.mark.parametrize("value_after_vlm", [False, True])
@pytest.mark.parametrize("logprob_type", ["token_level", "action_level", "chunk_level"])
@pytest.mark.parametrize(
    ("noise_method", "joint_logprob"),
    [
        ("flow_sde", False),
        ("flow_sde", True),
        ("flow_noise", False),
        ("flow_noise", True),
    ],
)
def test_rescore_ratio_one_for_every_option(noise_method, joint_logprob, logprob_type, value_after_vlm):
    # The VLM critic is the π0.5 recipe, so those cases run on the tiny π0.5.
    model_cfg = Pi0Config.tiny(pi05=value_after_vlm)
    model_params = _tiny_params(value_after_vlm)
    obs = _observation(model_cfg, 1)
    policy_cfg = FlowPolicyConfig(
        noise_method=noise_method,
        joint_logprob=joint_logprob,
        logprob_type=logprob_type,
        value_after_vlm=value_after_vlm,
        value_head_hidden=(32, 16),
    )
    params = _policy_params(policy_cfg, model_cfg, model_params)
    out = sample_jit(params, policy_cfg, model_cfg, jax.random.key(2), obs, mode="train")
    _check_rescore(params, policy_cfg, model_cfg, obs, jax.device_get(out))


_TINY_PARAMS = {}


def _tiny_params(pi05: bool):
    if pi05 not in _TINY_PARAMS:
        _TINY_PARAMS[pi05] = _random_model_params(Pi0Config.tiny(pi05=pi05))
    return _TINY_PARAMS[pi05]


def test_value_vlm_mode_picks_the_critic_input(sde_rollout, obs):
    params, out = sde_rollout
    values = {}
    for mode in ("mean_token", "first_token", "last_token"):
        cfg = dataclasses.replace(SDE_CFG, value_vlm_mode=mode)
        _, _, values[mode] = rescore_jit(params, cfg, MODEL_CFG, obs, out.chain, out.denoise_index)
    np.testing.assert_allclose(values["mean_token"], out.value, rtol=1e-5, atol=1e-6)  # the default
    for a, b in (("mean_token", "first_token"), ("mean_token", "last_token"), ("first_token", "last_token")):
        assert np.all(np.abs(np.asarray(values[a]) - np.asarray(values[b])) > 1e-6), (a, b)
    with pytest.raises(ValueError, match="value_vlm_mode"):
        FlowPolicyConfig(value_vlm_mode="max_token")


# ----------------------------------------------------------------------------- noise annealing


def test_noise_anneal_schedule_follows_rlinf():
    cfg = FlowPolicyConfig(noise_anneal=True, noise_params=(0.7, 0.3, 400))
    # RLinf: start + (end - start) * min(global_step, steps) / steps.
    for step, level in [(0, 0.7), (100, 0.6), (300, 0.4), (400, 0.3), (1000, 0.3)]:
        assert float(cfg.noise_level_at(step)) == pytest.approx(level, abs=1e-6)
        assert float(jax.jit(cfg.noise_level_at)(jnp.int32(step))) == pytest.approx(level, abs=1e-6)
    assert FlowPolicyConfig(noise_level=0.5).noise_level_at(300) == 0.5  # no anneal: the constant
    with pytest.raises(ValueError, match="no effect"):
        FlowPolicyConfig.flow_noise(noise_anneal=True)
    with pytest.raises(ValueError, match="steps >= 1"):
        FlowPolicyConfig(noise_anneal=True, noise_params=(0.7, 0.3, 0))


def test_annealed_level_samples_and_rescores_consistently(sde_rollout, obs):
    params, constant = sde_rollout
    level = FlowPolicyConfig(noise_anneal=True, noise_params=(0.7, 0.3, 400)).noise_level_at(300)  # 0.4
    out = jax.device_get(
        sample_jit(params, SDE_CFG, MODEL_CFG, jax.random.key(3), obs, mode="train", noise_level=level)
    )
    sched = flow_policy.denoise_schedule(SDE_CFG.num_steps, 0.4)
    ratio_to_default = (
        flow_policy.denoise_schedule(SDE_CFG.num_steps, SDE_CFG.noise_level).sde_std / sched.sde_std
    )
    np.testing.assert_allclose(ratio_to_default, 0.5 / 0.4, rtol=1e-6)  # σ is linear in the level
    for b in range(BATCH):
        k = int(out.denoise_index[b])
        assert k == int(constant.denoise_index[b])  # same key: same draws, smaller noise
        np.testing.assert_allclose(out.stds[b, k], sched.sde_std[k], rtol=1e-6)
        density = stats.norm.logpdf(
            _scored(out.chain[b, k + 1], SDE_CFG),
            _scored(out.means[b, k], SDE_CFG),
            _scored(out.stds[b, k], SDE_CFG),
        )
        np.testing.assert_allclose(out.log_probs[b], density.sum(), rtol=1e-5, atol=1e-3)
    # Rescoring at the level the chain was sampled with gives ratio 1; at the config's level it does not.
    same, _, _ = rescore_jit(
        params, SDE_CFG, MODEL_CFG, obs, out.chain, out.denoise_index, noise_level=jnp.full((BATCH,), 0.4)
    )
    np.testing.assert_allclose(np.exp(np.asarray(same) - out.log_probs), 1.0, atol=2e-4)
    other, _, _ = rescore_jit(params, SDE_CFG, MODEL_CFG, obs, out.chain, out.denoise_index)
    assert np.all(np.abs(np.asarray(other) - out.log_probs) > 1.0)
