"""PPO loss pieces against hand-computed numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.rl import losses


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
        for n in ("policy_loss", "ratio", "clipped_ratio", "approx_kl", "clip_fraction", "entropy_loss", "total_loss")
    } | {f"train/critic/{n}" for n in ("value_loss", "value_clip_ratio", "explained_variance")}
    assert set(metrics) == expected_names
    assert math.isclose(float(metrics["train/actor/total_loss"]), float(loss))
    # Critic-free (GRPO): no critic metrics; half the critic args is an error.
    _, grpo_metrics = losses.ppo_loss(cfg, logprobs=new, old_logprobs=old, advantages=advantages)
    assert not any(k.startswith("train/critic") for k in grpo_metrics)
    with pytest.raises(ValueError, match="together"):
        losses.ppo_loss(cfg, logprobs=new, old_logprobs=old, advantages=advantages, values=values)
