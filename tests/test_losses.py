"""PPO loss pieces and the optimizer (pirl.rl.optim) against hand-computed numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pirl.policies import masks
from pirl.rl import losses, optim


def test_policy_loss_clip_fraction_ratio_and_kl_by_hand():
    # Four chunk-level samples; ratios 1.5 (A>0: clipped), 0.5 (A<0: clipped), 1.1 and 0.9 (inside).
    ratios = np.array([1.5, 0.5, 1.1, 0.9])
    old = np.array([-1.0, -2.0, -0.5, -3.0])
    new = old + np.log(ratios)
    advantages = np.array([2.0, -1.0, 1.0, -2.0])
    loss, m = losses.policy_loss(new, old, advantages)
    per_sample = [-2.0 * 1.2, 1.0 * 0.8, -1.0 * 1.1, 2.0 * 0.9]  # max(−Aρ, −A·clip(ρ))
    assert math.isclose(float(loss), np.mean(per_sample), rel_tol=1e-5)
    assert math.isclose(float(m["train/actor/clip_fraction"]), 0.5, rel_tol=1e-6)
    assert math.isclose(float(m["train/actor/ratio"]), ratios.mean(), rel_tol=1e-5)
    assert math.isclose(float(m["train/actor/clipped_ratio"]), np.mean([1.2, 0.8, 1.1, 0.9]), rel_tol=1e-5)
    assert math.isclose(float(m["train/actor/approx_kl"]), np.mean(-np.log(ratios)), rel_tol=1e-5)


def test_policy_loss_no_clip_when_ratio_moves_toward_safety():
    # A>0 with ρ < 1−ε, A<0 with ρ > 1+ε: the unclipped branch is the larger loss -> not clipped.
    old = np.zeros(2)
    new = np.log(np.array([0.5, 1.5]))
    loss, m = losses.policy_loss(new, old, np.array([1.0, -1.0]))
    assert float(m["train/actor/clip_fraction"]) == 0.0
    assert math.isclose(float(loss), np.mean([-0.5, 1.5]), rel_tol=1e-5)


def test_policy_loss_token_level_broadcast_and_mask():
    # [N=2, chunk=2, dims=3] log-probs, per-sample advantages and mask; sample 1 is masked out.
    old = jnp.zeros((2, 2, 3))
    new = jnp.full((2, 2, 3), jnp.log(1.1)).at[1].set(5.0)
    loss, m = losses.policy_loss(new, old, jnp.array([2.0, -7.0]), jnp.array([True, False]))
    assert math.isclose(float(loss), -2.0 * 1.1, rel_tol=1e-5)
    assert math.isclose(float(m["train/actor/ratio"]), 1.1, rel_tol=1e-5)
    assert float(m["train/actor/clip_fraction"]) == 0.0


def test_policy_gradient_is_zero_where_clipped():
    old = jnp.zeros(2)
    advantages = jnp.array([1.0, 1.0])
    grad = jax.grad(lambda lp: losses.policy_loss(lp, old, advantages)[0])(jnp.log(jnp.array([1.5, 1.0])))
    np.testing.assert_allclose(grad, [0.0, -0.5], atol=1e-6)  # d/dlp of −A·e^lp / 2 at ρ=1


def test_value_loss_clip_ratio_and_huber_by_hand():
    old_values = np.array([0.0, 0.0, 1.0, 5.0])
    values = np.array([0.5, 0.1, 0.7, 5.0])
    returns = np.array([1.0, -1.0, 0.0, 25.0])
    loss, m = losses.value_loss(values, old_values, returns, value_clip=0.2, huber_delta=10.0)
    # sample 0: V_clip = 0.2; errors 0.5 / 0.8 -> max(0.125, 0.32) = 0.32
    # sample 1: V_clip = 0.1 (inside); error -1.1 -> 0.605
    # sample 2: V_clip = 0.8; errors -0.7 / -0.8 -> max(0.245, 0.32) = 0.32
    # sample 3: error 20 -> Huber linear branch: 10·(20 − 5) = 150
    expected = np.mean([0.32, 0.605, 0.32, 150.0])
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert math.isclose(float(m["train/critic/value_clip_ratio"]), 0.5, rel_tol=1e-6)
    ev = 1.0 - np.var(returns - values) / np.var(returns)
    assert math.isclose(float(m["train/critic/explained_variance"]), ev, rel_tol=1e-5)


def test_explained_variance_edge_cases():
    returns = jnp.array([1.0, 2.0, 3.0, 100.0])
    mask = jnp.array([1, 1, 1, 0], bool)
    assert math.isclose(float(losses.explained_variance(returns, returns, mask)), 1.0)
    zero = losses.explained_variance(jnp.zeros(4), returns, mask)
    assert math.isclose(float(zero), 0.0, abs_tol=1e-6)
    assert math.isnan(float(losses.explained_variance(jnp.zeros(2), jnp.ones(2))))


def test_ppo_loss_total_and_metric_names():
    cfg = losses.PPOLossConfig(entropy_bonus=0.1, value_loss_coef=0.5)
    old = jnp.zeros(3)
    new = jnp.log(jnp.array([1.0, 1.0, 1.0]))
    advantages = jnp.array([1.0, -1.0, 2.0])
    values, old_values, returns = jnp.zeros(3), jnp.zeros(3), jnp.array([1.0, 1.0, 1.0])
    entropy = jnp.full((3, 4), 2.0)
    mask = jnp.array([True, True, False])
    loss, metrics = losses.ppo_loss(
        cfg,
        logprobs=new,
        old_logprobs=old,
        advantages=advantages,
        mask=mask,
        values=values,
        old_values=old_values,
        returns=returns,
        entropy=entropy,
    )
    policy = np.mean([-1.0, 1.0])  # 0
    value = 0.5  # Huber(1) = 0.5 on the two valid samples
    assert math.isclose(float(loss), policy + 0.5 * value - 0.1 * 2.0, rel_tol=1e-6)
    expected_names = {
        f"train/actor/{n}"
        for n in (
            "policy_loss",
            "ratio",
            "clipped_ratio",
            "approx_kl",
            "clip_fraction",
            "entropy_loss",
            "total_loss",
        )
    } | {f"train/critic/{n}" for n in ("value_loss", "value_clip_ratio", "explained_variance")}
    assert set(metrics) == expected_names
    assert math.isclose(float(metrics["train/actor/total_loss"]), float(loss))
    # Critic-free (GRPO): no critic metrics; half the critic args is an error.
    _, grpo_metrics = losses.ppo_loss(cfg, logprobs=new, old_logprobs=old, advantages=advantages)
    assert not any(k.startswith("train/critic") for k in grpo_metrics)
    with pytest.raises(ValueError, match="together"):
        losses.ppo_loss(cfg, logprobs=new, old_logprobs=old, advantages=advantages, values=values)


# ---------------------------------------------------------------- optimizer (pirl.rl.optim)


def make_params():
    rng = np.random.default_rng(0)
    return {
        "vlm": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32).at[0, 0].set(-0.0)},
        "expert": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "bias": jnp.zeros((2,))},
        "value_head": {"kernel": jnp.asarray(rng.normal(size=(2, 1)), jnp.float32)},
    }


TRAINABLE = {
    "vlm": {"kernel": False},
    "expert": {"kernel": True, "bias": True},
    "value_head": {"kernel": True},
}
VALUE_HEAD = {
    "vlm": {"kernel": False},
    "expert": {"kernel": False, "bias": False},
    "value_head": {"kernel": True},
}


def loss_fn(params, batch):
    hidden = (
        jnp.tanh(batch["x"] @ params["vlm"]["kernel"]) @ params["expert"]["kernel"] + params["expert"]["bias"]
    )
    pred = (hidden @ params["value_head"]["kernel"])[:, 0]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"loss": loss}


def make_batch(n=8):
    rng = np.random.default_rng(1)
    return {
        "x": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
    }


def test_frozen_leaves_bit_identical_and_stateless():
    cfg = optim.OptimizerConfig(lr=1e-2, value_lr=1e-1)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params = make_params()
    opt_state = optimizer.init(params)
    # No Adam moments are allocated for the frozen VLM kernel.
    state_sizes = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size") and x.ndim > 0)
    trainable_size = 3 * 2 + 2 + 2 * 1
    assert state_sizes == 2 * trainable_size

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: loss_fn(p, batch)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates, TRAINABLE), opt_state

    new_params = params
    for _ in range(3):
        new_params, opt_state = step(new_params, opt_state, make_batch())
    before = np.asarray(params["vlm"]["kernel"]).view(np.uint32)
    after = np.asarray(new_params["vlm"]["kernel"]).view(np.uint32)
    np.testing.assert_array_equal(before, after)  # bit-identical, -0.0 included
    assert not np.allclose(params["expert"]["kernel"], new_params["expert"]["kernel"])


def test_value_lr_applies_to_value_head_only():
    # First AdamW step without decay/clip moves every trainable leaf by ≈ lr·sign(grad).
    cfg = optim.OptimizerConfig(lr=1e-3, value_lr=0.25, weight_decay=0.0, clip_grad_norm=0.0)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params = make_params()
    grads = jax.grad(lambda p: loss_fn(p, make_batch())[0])(params)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    np.testing.assert_allclose(np.abs(updates["value_head"]["kernel"]), 0.25, rtol=1e-4)
    np.testing.assert_allclose(np.abs(updates["expert"]["kernel"]), 1e-3, rtol=1e-4)
    assert updates["vlm"]["kernel"] is None  # updates cover the trainable part only


def test_clip_and_grad_norm_ignore_frozen_gradients():
    cfg = optim.OptimizerConfig(lr=1.0, clip_grad_norm=1.0)
    params = make_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["vlm"]["kernel"] = jnp.full((4, 3), 1e6)  # huge but frozen
    grads["expert"]["bias"] = jnp.array([0.3, -0.4])  # norm 0.5 < 1: must not be scaled down
    metrics = optim.optimizer_metrics(cfg, grads, 0, TRAINABLE)
    assert np.isclose(float(metrics["train/actor/grad_norm"]), 0.5)
    assert float(metrics["train/actor/lr"]) == 1.0
    # make_optimizer's clip stage on its own, behind the same trainable-only wrapper.
    clip_only = masks.trainable_optimizer(optax.clip_by_global_norm(cfg.clip_grad_norm), TRAINABLE)
    update = jax.jit(clip_only.update)
    clipped, _ = update(grads, clip_only.init(params), params)
    np.testing.assert_allclose(clipped["expert"]["bias"], [0.3, -0.4], rtol=1e-6)
    assert clipped["vlm"]["kernel"] is None
    grads["expert"]["bias"] = jnp.array([3.0, -4.0])  # norm 5: scaled to norm 1
    clipped, _ = update(grads, clip_only.init(params), params)
    np.testing.assert_allclose(clipped["expert"]["bias"], [0.6, -0.8], rtol=1e-6)


def test_accumulation_over_two_micro_batches_equals_full_batch():
    cfg = optim.OptimizerConfig(lr=1e-2, value_lr=1e-2)
    optimizer = optim.make_optimizer(cfg, TRAINABLE, VALUE_HEAD)
    params, batch = make_params(), make_batch(8)
    opt_state = optimizer.init(params)

    def step(params, opt_state, num_micro):
        (loss, aux), grads = optim.accumulate_gradients(
            loss_fn, params, batch, num_micro, trainable_mask=TRAINABLE
        )
        updates, _ = optimizer.update(grads, opt_state, params)
        return loss, aux, grads, optim.apply_updates(params, updates, TRAINABLE)

    step = jax.jit(step, static_argnums=2)
    loss1, _, grads1, new1 = step(params, opt_state, 1)
    loss2, aux2, grads2, new2 = step(params, opt_state, 2)
    (ref_loss, _), ref_grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    np.testing.assert_allclose(loss1, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(loss2, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(aux2["loss"], ref_loss, rtol=1e-6)
    ref_trainable = masks.split_frozen(ref_grads, TRAINABLE)[0]
    for a, b, ref in zip(
        jax.tree.leaves(grads1), jax.tree.leaves(grads2), jax.tree.leaves(ref_trainable), strict=True
    ):
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, ref, rtol=1e-5, atol=1e-7)
    assert grads1["vlm"]["kernel"] is None and grads2["vlm"]["kernel"] is None  # frozen: not computed
    for a, b in zip(jax.tree.leaves(new1), jax.tree.leaves(new2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by num_micro=3"):
        optim.accumulate_gradients(loss_fn, params, batch, 3)


def test_multisteps_accumulation_and_no_value_head():
    cfg = optim.OptimizerConfig(lr=1e-2, accumulate_steps=2, weight_decay=0.0)
    optimizer = optim.make_optimizer(cfg)  # everything trainable, no value head
    params = {"w": jnp.ones((3,))}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    updates, state = update({"w": jnp.ones(3)}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)  # accumulating
    updates, state = update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -1e-2, rtol=1e-4)


def test_prefix_masks_and_bad_masks():
    params = make_params()
    prefix_trainable = {"vlm": False, "expert": True, "value_head": True}
    prefix_value = {"vlm": False, "expert": False, "value_head": True}
    assert optim.param_labels(params, prefix_trainable, prefix_value) == optim.param_labels(
        params, TRAINABLE, VALUE_HEAD
    )
    assert optim.param_labels(params, lambda p: TRAINABLE)["vlm"]["kernel"] == "frozen"
    with pytest.raises(ValueError, match="structure of the params"):
        optim.param_labels({"a": jnp.zeros(2), "b": jnp.zeros(2)}, {"a": True})
    with pytest.raises(ValueError, match="Python bools"):
        optim.param_labels({"a": jnp.zeros(2)}, {"a": jnp.array(True)})
