"""GAE / GRPO / normalisation against hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.rl import advantages as adv

GAMMA, LAM = 0.9, 0.5


def reference_gae(rewards, values, dones, gamma, lam):
    """Plain-Python GAE in RLinf's layout: values/dones have T + 1 entries, dones[k + 1] ends step k."""
    num_steps = len(rewards)
    advantages = [0.0] * num_steps
    next_advantage = 0.0
    for k in reversed(range(num_steps)):
        cont = 1.0 - dones[k + 1]
        delta = rewards[k] + gamma * values[k + 1] * cont - values[k]
        next_advantage = delta + gamma * lam * cont * next_advantage
        advantages[k] = next_advantage
    return np.array(advantages), np.array(advantages) + np.array(values[:-1])


def test_gae_with_done_in_the_middle_by_hand():
    # One env, T = 4; the episode ends during step 1, a new one starts at step 2 (auto-reset).
    rewards = jnp.array([[1.0], [2.0], [0.0], [3.0]])
    values = jnp.array([[0.5], [1.0], [2.0], [1.5], [4.0]])  # V_0..V_4
    dones = jnp.array([[0], [1], [0], [0]], bool)
    advantages, returns = adv.gae_advantages(rewards, values, dones, gamma=GAMMA, lam=LAM)
    # Hand computation (γ = 0.9, λ = 0.5, γλ = 0.45):
    a3 = 3.0 + 0.9 * 4.0 - 1.5  # 5.1
    a2 = (0.0 + 0.9 * 1.5 - 2.0) + 0.45 * a3  # -0.65 + 2.295 = 1.645
    a1 = 2.0 - 1.0  # done: no bootstrap, no carry -> 1.0
    a0 = (1.0 + 0.9 * 1.0 - 0.5) + 0.45 * a1  # 1.4 + 0.45 = 1.85
    expected = np.array([a0, a1, a2, a3])
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(returns[:, 0], expected + np.array([0.5, 1.0, 2.0, 1.5]), rtol=1e-6)


def test_gae_layouts_agree_and_match_reference():
    rng = np.random.default_rng(0)
    num_steps, batch = 6, 3
    rewards = rng.normal(size=(num_steps, batch)).astype(np.float32)
    values = rng.normal(size=(num_steps + 1, batch)).astype(np.float32)
    dones = rng.random((num_steps, batch)) < 0.3
    rlinf_dones = np.concatenate([np.ones((1, batch), bool), dones])  # dones[0] must be ignored
    a_pirl, r_pirl = adv.gae_advantages(rewards, values, dones, gamma=GAMMA, lam=LAM)
    a_rlinf, r_rlinf = adv.gae_advantages(rewards, values, rlinf_dones, gamma=GAMMA, lam=LAM)
    a_next, _ = adv.gae_advantages(rewards, values[:-1], dones, gamma=GAMMA, lam=LAM, next_value=values[-1])
    for b in range(batch):
        ref_a, ref_r = reference_gae(rewards[:, b], values[:, b], rlinf_dones[:, b].astype(float), GAMMA, LAM)
        np.testing.assert_allclose(a_pirl[:, b], ref_a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r_pirl[:, b], ref_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a_pirl, a_rlinf)
    np.testing.assert_array_equal(r_pirl, r_rlinf)
    np.testing.assert_array_equal(a_pirl, a_next)


def test_gae_truncation_bootstrap_adds_discounted_final_value():
    rewards = jnp.array([[1.0], [1.0], [1.0]])
    values = jnp.array([[0.0], [0.0], [9.0], [7.0]])  # V_2 = 9 belongs to the episode after the reset
    dones = jnp.array([[0], [1], [0]], bool)
    truncated = jnp.array([[0], [1], [0]], bool)
    final_values = jnp.array([[100.0], [2.0], [100.0]])  # only step 1's entry is used
    advantages, _ = adv.gae_advantages(
        rewards, values, dones, gamma=GAMMA, lam=LAM, truncated=truncated, final_values=final_values
    )
    a2 = 1.0 + 0.9 * 7.0 - 9.0  # -1.7
    a1 = 1.0 + 0.9 * 2.0  # truncated: r + γ·V(final obs); V_2 and A_2 still cut -> 2.8
    a0 = 1.0 + 0.45 * a1  # 2.26
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2], rtol=1e-6)
    boosted = adv.bootstrap_truncated_rewards(rewards, truncated, final_values, GAMMA)
    np.testing.assert_allclose(boosted[:, 0], [1.0, 2.8, 1.0], rtol=1e-6)


def test_valid_mask_and_masked_gae():
    dones = jnp.array([[0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]], bool)
    valid = adv.valid_step_mask(dones)
    expected = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 1, 0]], bool)
    np.testing.assert_array_equal(valid, expected)
    # RLinf layout with a done carried in from before the rollout: that env is entirely invalid.
    rlinf = jnp.concatenate([jnp.array([[0, 1, 0]], bool), dones])
    np.testing.assert_array_equal(
        adv.valid_step_mask(rlinf, num_steps=4), expected & np.array([True, False, True])
    )
    rewards = jnp.ones((4, 3))
    values = jnp.ones((5, 3))
    advantages, returns = adv.gae_advantages(rewards, values, dones, valid_mask=valid)
    assert np.all(np.asarray(advantages)[~expected] == 0) and np.all(np.asarray(returns)[~expected] == 0)
    # Masking does not change the valid entries (the done cuts off everything after it).
    unmasked, _ = adv.gae_advantages(rewards, values, dones)
    np.testing.assert_array_equal(np.asarray(advantages)[expected], np.asarray(unmasked)[expected])


def test_gae_is_jittable_and_errors_are_clear():
    fn = jax.jit(lambda r, v, d: adv.gae_advantages(r, v, d))
    a, r = fn(jnp.ones((3, 2)), jnp.zeros((4, 2)), jnp.zeros((3, 2), bool))
    assert a.shape == r.shape == (3, 2)
    with pytest.raises(ValueError, match="next_value"):
        adv.gae_advantages(jnp.ones((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="dones has 5 time steps"):
        adv.gae_advantages(jnp.ones((3, 2)), jnp.zeros((4, 2)), jnp.zeros((5, 2)))


def test_grpo_scores_groups_and_all_equal_group():
    # T = 3, B = 4, G = 2. Env 0: reward after its done is ignored. Group 1 scores are equal.
    rewards = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    dones = jnp.array([[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0]], bool)
    result = adv.grpo_advantages(rewards, dones, group_size=2)
    np.testing.assert_allclose(result.scores, [1.0, 1.0, 1.0, 1.0])
    # Group 0: scores (1, 1) -> equal as well; make a non-trivial case too.
    rewards2 = rewards.at[1, 1].set(2.0)  # env 1 score = 1 + 2 = 3
    result2 = adv.grpo_advantages(rewards2, dones, group_size=2)
    np.testing.assert_allclose(result2.scores, [1.0, 3.0, 1.0, 1.0])
    std = np.std([1.0, 3.0], ddof=1)  # unbiased: sqrt(2)
    a0, a1 = (1.0 - 2.0) / (std + 1e-6), (3.0 - 2.0) / (std + 1e-6)
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0]], bool)
    np.testing.assert_array_equal(result2.mask, valid)
    expected = np.where(valid, np.array([a0, a1, 0.0, 0.0])[None], 0.0)  # all-equal group -> 0
    np.testing.assert_allclose(result2.advantages, expected, rtol=1e-6)
    assert np.all(np.isfinite(result2.advantages))


def test_grpo_filter_rewards_masks_saturated_groups():
    # Three groups of 2 with success scores (1,1) mean 1.0, (0,1) mean 0.5, (0,0) mean 0.
    rewards = jnp.array([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    dones = jnp.ones((1, 6), bool)
    kept = adv.grpo_advantages(rewards, dones, 2, filter_rewards=True, bounds=(0.1, 0.9))
    np.testing.assert_array_equal(kept.mask[0], [0, 0, 1, 1, 0, 0])
    a = 0.5 / (np.std([0.0, 1.0], ddof=1) + 1e-6)
    np.testing.assert_allclose(kept.advantages[0], [0, 0, -a, a, 0, 0], rtol=1e-6)
    unfiltered = adv.grpo_advantages(rewards, dones, 2)
    np.testing.assert_array_equal(unfiltered.mask[0], np.ones(6, bool))
    with pytest.raises(ValueError, match="multiple of group_size"):
        adv.grpo_advantages(jnp.ones((2, 5)), jnp.zeros((2, 5)), 2)


def test_normalize_advantages_over_valid_entries_only():
    advantages = jnp.array([[1.0, 100.0], [3.0, -50.0]])
    mask = jnp.array([[1, 0], [1, 0]], bool)
    normalized = adv.normalize_advantages(advantages, mask)
    # valid: (1, 3): mean 2, population std 1
    np.testing.assert_allclose(normalized, [[-1 / (1 + 1e-5), 0.0], [1 / (1 + 1e-5), 0.0]], rtol=1e-6)
    full = adv.normalize_advantages(jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(full, [-1 / (1 + 1e-5), 1 / (1 + 1e-5)], rtol=1e-6)


def test_rollout_metrics():
    rewards = jnp.array([[1.0, 9.0], [3.0, 9.0]])
    advantages = jnp.array([[-1.0, 50.0], [2.0, 50.0]])
    returns = jnp.array([[0.5, 60.0], [1.5, 60.0]])
    mask = jnp.array([[1, 0], [1, 0]], bool)
    metrics = adv.rollout_metrics(rewards, advantages, returns, mask)
    assert float(metrics["rollout/rewards"]) == 2.0
    assert float(metrics["rollout/advantages_mean"]) == 0.5
    assert float(metrics["rollout/advantages_max"]) == 2.0
    assert float(metrics["rollout/advantages_min"]) == -1.0
    assert float(metrics["rollout/returns_max"]) == 1.5
    assert "rollout/returns_mean" not in adv.rollout_metrics(rewards, advantages, None, mask)
