"""RLinf's algorithm knobs on small arrays: loss aggregation and per-episode weighting,
critic warm-up, truncation bootstrap, global-step advantage normalisation, reward shaping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.policies.config import FlowPolicyConfig
from pirl.rl import advantages as adv_lib
from pirl.rl import losses
from pirl.rl import update as update_lib
from pirl.rl.config import AdvantageConfig, EnvSpec, RLConfig
from pirl.rl.rollout import Trajectory, control_step_reward, shape_chunk_reward


def _cfg(**overrides) -> RLConfig:
    fields = dict(
        policy=FlowPolicyConfig(action_chunk=5),
        env=EnvSpec(name="toy_spatial", num_envs=2, image_size=28, max_episode_steps=30),
        adv=AdvantageConfig(adv_type="gae", gamma=0.5, gae_lambda=1.0, normalize_advantages=False),
        rollout_epochs=1,
        global_batch_size=12,
    )
    fields.update(overrides)
    return RLConfig(**fields)


def _trajectory(rewards, values, dones, successes) -> Trajectory:
    t, b = np.shape(rewards)
    return Trajectory(
        env_obs={},
        task_id=jnp.zeros((t, b), jnp.int32),
        chain=jnp.zeros((t, b, 1)),
        denoise_index=jnp.zeros((t, b), jnp.int32),
        log_probs=jnp.zeros((t, b)),
        values=jnp.asarray(values, jnp.float32),
        rewards=jnp.asarray(rewards, jnp.float32),
        dones=jnp.asarray(dones, bool),
        successes=jnp.asarray(successes, bool),
    )


# ----------------------------------------------------------------------------- loss aggregation


def test_episode_weights_make_every_episode_weigh_the_same():
    # Two episodes in one batch: A is 2 chunk steps long, B 6 (chunks of 5, max 30 control steps).
    cfg = _cfg()
    dones = np.zeros((6, 2), bool)
    dones[1, 0] = dones[5, 1] = True
    valid = np.asarray(adv_lib.valid_step_mask(jnp.asarray(dones)))
    weights = np.asarray(update_lib.episode_loss_weights(cfg, jnp.asarray(valid)))
    np.testing.assert_allclose(weights[0], [30 / 10, 30 / 30])  # max_steps / (chunks * 5)
    # A per-sample loss of 1 everywhere: each episode's share of the mean is the same.
    flat_mask, flat_w = valid.reshape(-1), weights.reshape(-1)
    total = float(losses.aggregate_loss(jnp.ones(12), jnp.asarray(flat_mask), jnp.asarray(flat_w)))
    share_a = (flat_w * flat_mask * (np.arange(12) % 2 == 0)).sum() / 12
    share_b = (flat_w * flat_mask * (np.arange(12) % 2 == 1)).sum() / 12
    assert share_a == pytest.approx(share_b) == pytest.approx(0.5)
    assert total == pytest.approx(1.0)
    # The plain masked mean weighs B three times as much as A.
    assert float(losses.aggregate_loss(jnp.asarray([1.0, 0.0] * 6), jnp.asarray(flat_mask))) == pytest.approx(
        2 / 8
    )


def test_rollout_targets_carry_episode_weights_only_when_rlinf_would():
    dones = np.zeros((6, 2), bool)
    dones[1, 0] = dones[5, 1] = True
    traj = _trajectory(np.zeros((6, 2)), np.zeros((6, 2)), dones, np.zeros((6, 2)))
    on, _ = update_lib.rollout_targets(_cfg(), traj, jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(on.loss_weight)[:2], [3.0, 1.0])
    assert _cfg().episode_weights_active
    assert not _cfg(episode_loss_weighting=False).episode_weights_active
    off, _ = update_lib.rollout_targets(_cfg(episode_loss_weighting=False), traj, jnp.zeros(2))
    np.testing.assert_array_equal(np.asarray(off.loss_weight), np.ones(12))
    libero = _cfg(
        env=EnvSpec(
            name="libero_spatial", backend="libero", num_envs=2, max_episode_steps=30, auto_reset=True
        )
    )
    assert not libero.episode_weights_active  # RLinf: auto-reset -> plain token mean


def test_seq_mean_aggregations_by_hand():
    x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.asarray([True, False])
    assert float(losses.aggregate_loss(x, mask, agg="token-mean")) == pytest.approx(2.0)
    assert float(losses.aggregate_loss(x, mask, agg="seq-mean-token-sum")) == pytest.approx(6.0 / 2)
    assert float(losses.aggregate_loss(x, mask, agg="seq-mean-token-mean")) == pytest.approx(2.0 / 2)
    cfg = losses.PPOLossConfig(loss_agg_func="seq-mean-token-sum")
    lp = jnp.zeros((2, 3))
    adv = jnp.asarray([1.0, 2.0])
    loss, _ = losses.ppo_loss(cfg, logprobs=lp, old_logprobs=lp, advantages=adv)
    assert float(loss) == pytest.approx(-(3 * 1.0 + 3 * 2.0) / 2)  # ratio 1: -A summed over 3 tokens
    with pytest.raises(ValueError, match="loss_agg_func"):
        losses.PPOLossConfig(loss_agg_func="sum")


def test_critic_warmup_drops_the_actor_and_entropy_terms():
    cfg = losses.PPOLossConfig(entropy_bonus=0.1)
    lp = jnp.log(jnp.asarray([1.5, 1.0]))
    kwargs = dict(
        logprobs=lp,
        old_logprobs=jnp.zeros(2),
        advantages=jnp.asarray([1.0, -1.0]),
        values=jnp.asarray([1.0, 2.0]),
        old_values=jnp.asarray([1.0, 2.0]),
        returns=jnp.asarray([2.0, 2.0]),
        entropy=jnp.asarray([2.0, 2.0]),
    )
    full, metrics = losses.ppo_loss(cfg, **kwargs)
    warm, _ = losses.ppo_loss(cfg, **kwargs, critic_warmup=True)
    value_only = float(metrics["train/critic/value_loss"])  # huber(1)/2 = 0.25
    assert value_only == pytest.approx(0.25)
    assert float(warm) == pytest.approx(value_only)
    assert float(full) == pytest.approx(float(metrics["train/actor/policy_loss"]) + value_only - 0.1 * 2.0)


# ----------------------------------------------------------------------------- advantages


def test_bootstrap_fires_on_truncation_but_not_on_termination():
    # Env 0 is cut by the time limit in step 1 (done, no success), env 1 succeeds in step 1.
    rewards = [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    values = [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]  # step 2 holds each env's final observation
    dones = [[False, False], [True, True], [True, True]]
    successes = [[False, False], [False, True], [False, False]]
    traj = _trajectory(rewards, values, dones, successes)
    _, _, adv_on, _, valid = update_lib.compute_advantages(_cfg(), traj, jnp.zeros(2))
    off = _cfg(adv=AdvantageConfig(adv_type="gae", gamma=0.5, gae_lambda=1.0, bootstrap_on_truncation=False))
    _, _, adv_off, _, _ = update_lib.compute_advantages(off, traj, jnp.zeros(2))
    adv_on, adv_off = np.asarray(adv_on), np.asarray(adv_off)
    # Truncated env 0, step 1: r + γ·V(final obs) − V = 0 + 0.5·4 − 2 = 0; without the bootstrap −2.
    assert adv_on[1, 0] == pytest.approx(0.0)
    assert adv_off[1, 0] == pytest.approx(-2.0)
    # Terminated env 1, step 1: never bootstrapped: 1 − 2 = −1 either way.
    assert adv_on[1, 1] == pytest.approx(-1.0) and adv_off[1, 1] == pytest.approx(-1.0)
    # Step 0 of env 0: 0 + 0.5·2 − 1 + γλ·A_1 = 0 + 0.5·0 (on) / 0.5·(−2) (off).
    assert adv_on[0, 0] == pytest.approx(0.0) and adv_off[0, 0] == pytest.approx(-1.0)
    assert np.asarray(valid)[2].tolist() == [False, False]  # the idle steps after the episode
    ignore = _cfg(
        env=EnvSpec(
            name="libero_spatial",
            backend="libero",
            num_envs=2,
            max_episode_steps=30,
            ignore_terminations=True,
        )
    )
    assert not np.asarray(update_lib.terminations_of(ignore, traj)).any()  # every done is a truncation


def test_advantages_are_normalised_over_the_whole_global_step():
    cfg = _cfg(adv=AdvantageConfig(adv_type="gae"))
    # Two rollout epochs of 4 transitions with very different scales; one invalid entry.
    advantages = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 200.0, 300.0, 999.0], np.float32)
    mask = np.array([True] * 7 + [False])
    zeros = np.zeros(8, np.float32)
    batch = update_lib.Transitions(
        env_obs={},
        task_id=zeros,
        chain=zeros,
        denoise_index=zeros,
        old_log_probs=zeros,
        old_values=zeros,
        advantages=jnp.asarray(advantages),
        returns=zeros,
        mask=jnp.asarray(mask),
        loss_weight=zeros + 1,
    )
    out = np.asarray(update_lib.normalize_step_advantages(cfg, batch).advantages)
    valid = advantages[mask]
    np.testing.assert_allclose(out[mask], (valid - valid.mean()) / (valid.std() + 1e-5), rtol=1e-5)
    assert out[~mask].tolist() == [0.0]
    assert out[:4].max() < 0  # per-epoch normalisation would have centred the first epoch on 0
    off = _cfg(adv=AdvantageConfig(adv_type="gae", normalize_advantages=False))
    np.testing.assert_array_equal(
        np.asarray(update_lib.normalize_step_advantages(off, batch).advantages), advantages
    )


# ----------------------------------------------------------------------------- rewards


def test_control_step_reward_matches_rlinf():
    # Absolute: p + coef·s each step; relative: the difference (success paid once, penalty once).
    successes = [0, 0, 1, 1, 0]
    absolute = [control_step_reward(s, 0, 0, coef=5.0, rel=False, step_penalty=True) for s in successes]
    assert absolute == [-1.0, -1.0, 4.0, 4.0, -1.0]
    prev, rel = 0, []
    for k, s in enumerate(successes):
        rel.append(control_step_reward(s, prev, float(k == 0), coef=5.0, rel=True, step_penalty=True))
        prev = s
    assert rel == [-1.0, 0.0, 5.0, 0.0, -5.0]
    assert sum(rel) == pytest.approx(absolute[-1])  # a telescoping sum: the last absolute reward


def test_mjx_chunk_reward_shaping():
    success = jnp.asarray([1.0, 0.0, 0.0])
    before, after = jnp.asarray([0, 5, 10]), jnp.asarray([3, 10, 10])  # env 2 already ended
    rel = EnvSpec(reward_coef=5.0, use_step_penalty=True)
    np.testing.assert_allclose(shape_chunk_reward(rel, success, before, after), [4.0, 0.0, 0.0])
    absolute = EnvSpec(reward_coef=5.0, use_step_penalty=True, use_rel_reward=False)
    np.testing.assert_allclose(shape_chunk_reward(absolute, success, before, after), [2.0, -5.0, 0.0])
    np.testing.assert_allclose(shape_chunk_reward(EnvSpec(), success, before, after), [1.0, 0.0, 0.0])


def test_mjx_refuses_auto_reset_with_a_reason():
    with pytest.raises(ValueError, match="libero backend only"):
        _cfg(env=EnvSpec(name="toy_spatial", num_envs=2, auto_reset=True))


def test_lora_rank_and_alpha_are_config_values():
    from pirl.models import pi0
    from pirl.models.config import Pi0Config

    cfg = Pi0Config.tiny(paligemma_variant="dummy_lora", lora_rank=8, lora_alpha=2.0)
    assert cfg.llm.lora_attn.rank == 8 and cfg.llm.lora_attn.scaling == pytest.approx(0.25)
    assert cfg.expert.lora_attn is None  # the expert is not a LoRA variant
    shapes = [
        x.shape
        for path, x in jax.tree_util.tree_leaves_with_path(pi0.abstract_params(cfg))
        if "lora_a" in str(path)
    ]
    assert shapes and all(s[-1] == 8 for s in shapes)
    assert Pi0Config.tiny(paligemma_variant="dummy_lora").llm.lora_attn.rank == 4  # the variant's own
    with pytest.raises(ValueError, match="LoRA variant"):
        Pi0Config.tiny(lora_rank=8)
