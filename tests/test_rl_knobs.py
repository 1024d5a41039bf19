"""RLinf's algorithm knobs on small arrays: loss aggregation and per-episode weighting,
critic warm-up, truncation bootstrap, global-step advantage normalisation, reward shaping; and the
episode rules of MJX rollouts (auto-reset, ignore_terminations, bootstrap_type always) through
`rollout()` on a scripted stand-in env with exact numbers (the real MJX suite: nightly)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import flat_color_render

from pirl.policies.config import FlowPolicyConfig
from pirl.policies.env_io import env_obs_to_model
from pirl.rl import advantages as adv_lib
from pirl.rl import losses
from pirl.rl import update as update_lib
from pirl.rl.config import AdvantageConfig, EnvSpec, RLConfig
from pirl.rl.rollout import Trajectory, control_step_reward, finished_episode_metrics, shape_chunk_reward

# These programs run a few times: XLA's cheapest backend pass, as compiling dominates.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


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
    # Env-major rows (env * T + t): env 0's episode lasts 2 of 6 steps (weight 6/2), env 1's all 6.
    np.testing.assert_allclose(np.asarray(on.loss_weight).reshape(2, 6)[:, 0], [3.0, 1.0])
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


def test_mjx_ignore_terminations_pays_success_as_a_difference():
    # Per control step successes 0 0 1 1 | 0 0 1 1 | 1 0 ... in chunks of 2 / 2 / 2: RLinf's per-step
    # rewards summed per chunk (coef 5, step penalty on the first step) with the env's flag before/after.
    spec = EnvSpec(reward_coef=5.0, use_step_penalty=True, ignore_terminations=True)
    steps_before, steps_after = jnp.asarray([0, 2, 4, 6]), jnp.asarray([2, 4, 6, 8])
    success_before = jnp.asarray([True, False, True, True])  # env 0: a leftover flag of a past episode
    success_after = jnp.asarray([False, True, True, False])
    env_reward = jnp.asarray([0.0, 1.0, 2.0, 1.0])  # success steps in the chunk (terminate_on_success=False)
    got = shape_chunk_reward(spec, env_reward, steps_before, steps_after, success_before, success_after)
    np.testing.assert_allclose(got, [-1.0, 5.0, 0.0, -5.0])  # paid once, taken back when lost
    per_step = [  # the same numbers from control_step_reward step by step (env 3: 1 -> 1, 0)
        control_step_reward(1, 1, 0, coef=5.0, rel=True, step_penalty=True)
        + control_step_reward(0, 1, 0, coef=5.0, rel=True, step_penalty=True)
    ]
    assert per_step == [-5.0]
    # Absolute rewards: coef per success step minus one per executed step.
    absolute = dataclasses.replace(spec, use_rel_reward=False)
    np.testing.assert_allclose(
        shape_chunk_reward(absolute, env_reward, steps_before, steps_after, success_before, success_after),
        [-2.0, 3.0, 8.0, 3.0],
    )


def test_bootstrap_terminations_needs_auto_reset():
    with pytest.raises(ValueError, match="bootstrap_terminations"):
        _cfg(adv=AdvantageConfig(bootstrap_terminations=True))
    cfg = _cfg(
        env=EnvSpec(name="toy_spatial", num_envs=2, image_size=28, max_episode_steps=30, auto_reset=True),
        adv=AdvantageConfig(bootstrap_terminations=True),
    )
    assert cfg.env.auto_reset and not cfg.episode_weights_active


# ----------------------------------------------------------------------------- rollout episode rules

SCRIPT_MAX_STEPS = 6  # three chunks of two control steps
SCRIPT_SUCCESS = np.zeros((4, SCRIPT_MAX_STEPS + 1), bool)  # [init id, control step since reset]
SCRIPT_SUCCESS[0, 3:] = True  # init 0: success from step 3 on (the episode terminates in chunk 2)
SCRIPT_SUCCESS[2, [2, 5]] = True  # init 2: success at steps 2 and 5 only (lost in between)
# init 1 and 3: never


class ScriptedEnv:
    """What `rollout` needs of a ManipEnv (batched, reset_to, chunk_step, the State fields), with
    success on the SCRIPT_SUCCESS schedule and the env's own termination / reward rules."""

    prompts = ("a b", "c d")

    def __init__(self, terminate_on_success: bool):
        self.terminate = terminate_on_success
        self.max_steps = SCRIPT_MAX_STEPS

    def batched(self, fn):
        return jax.vmap(fn)

    def _obs(self, init_id, step):
        image = jnp.full((28, 28, 3), 30 * init_id + 7 * step, jnp.uint8)
        return {"agentview_image": image, "wrist_image": image, "state": jnp.full((8,), 0.1 * step)}

    def reset_to(self, task_id, init_id):
        from pirl.envs.env import State

        info = dict(
            task_id=jnp.asarray(task_id, jnp.int32),
            init_id=jnp.asarray(init_id, jnp.int32),
            step=jnp.zeros((), jnp.int32),
            success=jnp.zeros((), bool),
            success_once=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
        )
        return State(None, self._obs(info["init_id"], 0), jnp.zeros(()), jnp.zeros((), bool), info)

    def chunk_step(self, state, actions):
        def body(carry, _):
            st, total = carry
            step = st.info["step"] + 1
            success = jnp.asarray(SCRIPT_SUCCESS)[st.info["init_id"], step]
            once = st.info["success_once"] | success
            truncated = step >= self.max_steps
            if self.terminate:
                reward, done = (once & ~st.info["success_once"]).astype(jnp.float32), once | truncated
            else:
                reward, done = success.astype(jnp.float32), truncated
            info = dict(st.info, step=step, success=success, success_once=once, truncated=truncated)
            nxt = st.replace(reward=reward, done=done, info=info)
            nxt = jax.tree.map(lambda new, old: jnp.where(st.done, old, new), nxt, st)
            return (nxt, total + jnp.where(st.done, 0.0, nxt.reward)), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), actions)
        return state.replace(obs=self._obs(state.info["init_id"], state.info["step"]), reward=total)


@pytest.fixture(scope="module")
def scripted():
    """Tiny π0 with a VLM critic (its value depends on the observation only) and a rollout maker."""
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.rl import rollout as rollout_lib
    from pirl.rl.synthetic import toy_env_adapter

    base = RLConfig(
        model=Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"), image_resolution=(28, 28)),
        policy=FlowPolicyConfig(num_steps=2, action_chunk=2, value_after_vlm=True, value_head_hidden=(16,)),
        env=EnvSpec(name="toy_spatial", num_envs=4, image_size=28, max_episode_steps=SCRIPT_MAX_STEPS),
        chunk_steps=4,
        rollout_epochs=1,
        global_batch_size=16,
    )
    params = jax.jit(lambda k: flow_policy.init_policy_params(base.policy, base.model, k))(jax.random.key(0))
    adapter = toy_env_adapter(base, ScriptedEnv.prompts)

    @functools.partial(jax.jit, static_argnames=("spec", "adv", "terminate"), compiler_options=FAST_COMPILE)
    def play(state, ret, rng, *, spec, adv, terminate):
        return rollout_lib.rollout(
            params,
            adapter,
            state,
            rng,
            env=ScriptedEnv(terminate),
            policy_cfg=base.policy,
            model_cfg=base.model,
            chunk_steps=4,
            env_spec=spec,
            reset_pools=(jnp.asarray([0]), jnp.asarray([1])),
            adv_cfg=adv,
            episode_return=ret,
        )

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def value_of(init_id, step):
        obs = jax.vmap(ScriptedEnv(True)._obs)(init_id, step)
        model_obs = env_obs_to_model(adapter, base.model, obs, jnp.zeros_like(init_id))
        return flow_policy.sample(params, base.policy, base.model, jax.random.key(9), model_obs).value

    start = jax.vmap(ScriptedEnv(True).reset_to)(jnp.zeros(4, jnp.int32), jnp.arange(4))
    return play, value_of, start


def test_auto_reset_rollout_follows_rlinf_episode_rules(scripted):
    play, value_of, start = scripted
    spec = EnvSpec(name="toy_spatial", num_envs=4, reward_coef=2.0, auto_reset=True)
    adv = AdvantageConfig(gamma=0.5)
    out = play(start, jnp.zeros(4), jax.random.key(1), spec=spec, adv=adv, terminate=True)
    dones = np.asarray(out.trajectory.dones)
    # init 0 succeeds at step 3 (chunk 2) and init 2 at step 2 (chunk 1): terminated; inits 1 and 3 run
    # to the limit (chunk 3): truncated. Every reset draws (task 0, init 1), which runs to the limit.
    np.testing.assert_array_equal(
        dones.T,
        [
            [False, True, False, False],
            [False, False, True, False],
            [True, False, False, True],
            [False, False, True, False],
        ],
    )
    # Truncated chunks get γ·V(final observation: init 1 or 3 at step 6); terminated ones do not.
    v1, v3 = np.asarray(value_of(jnp.asarray([1, 3]), jnp.full(2, SCRIPT_MAX_STEPS)))
    expected = np.zeros((4, 4), np.float32)
    expected[1, 0] = expected[0, 2] = 2.0  # coef · (1 − 0), paid once
    expected[2, 1], expected[2, 3], expected[3, 2] = 0.5 * v1, 0.5 * v3, 0.5 * v1
    np.testing.assert_allclose(np.asarray(out.trajectory.rewards), expected, rtol=1e-5, atol=1e-7)
    assert v1 != 0 and v3 != 0  # the bootstrap is visible
    # Episodes carry into the next rollout: each env's new episode (init 1) is 4, 2, 0 or 2 steps in.
    np.testing.assert_array_equal(np.asarray(out.final_state.info["init_id"]), [1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(out.final_state.info["step"]), [4, 2, 0, 2])
    np.testing.assert_allclose(np.asarray(out.episode_return), 0.0)
    metrics = {k: float(v) for k, v in finished_episode_metrics(out.finished).items()}
    assert metrics["env/episodes"] == 5 and metrics["env/success_once"] == pytest.approx(0.4)
    # init 0 terminates on step 3 (the env freezes for the rest of the chunk), init 2 on step 2.
    assert metrics["env/episode_len"] == pytest.approx((3 + 6 + 2 + 6 + 6) / 5)
    assert metrics["env/return"] == pytest.approx(4.0 / 5)  # bootstraps are not returns
    # The next rollout continues them: env 0's episode (4 steps in) ends in its first chunk.
    nxt = play(out.final_state, out.episode_return, jax.random.key(2), spec=spec, adv=adv, terminate=True)
    np.testing.assert_array_equal(np.asarray(nxt.trajectory.dones)[:, 0], [True, False, False, True])
    np.testing.assert_array_equal(
        np.asarray(nxt.trajectory.env_obs["state"][0, :, 0]), np.asarray(out.final_state.obs["state"][:, 0])
    )
    # bootstrap_type always: terminated chunks are bootstrapped too (init 0 at step 3, init 2 at step 2).
    always = play(
        start,
        jnp.zeros(4),
        jax.random.key(1),
        spec=spec,
        adv=AdvantageConfig(gamma=0.5, bootstrap_terminations=True),
        terminate=True,
    )
    v0, v2 = np.asarray(value_of(jnp.asarray([0, 2]), jnp.asarray([3, 2])))
    assert float(always.trajectory.rewards[1, 0]) == pytest.approx(2.0 + 0.5 * v0, rel=1e-5)
    assert float(always.trajectory.rewards[0, 2]) == pytest.approx(2.0 + 0.5 * v2, rel=1e-5)


def test_ignore_terminations_rollout_pays_success_as_a_difference(scripted):
    play, _, start = scripted
    spec = EnvSpec(name="toy_spatial", num_envs=4, reward_coef=2.0, auto_reset=True, ignore_terminations=True)
    out = play(
        start,
        jnp.zeros(4),
        jax.random.key(1),
        spec=spec,
        adv=AdvantageConfig(gamma=0.5, bootstrap_on_truncation=False),
        terminate=False,
    )
    # Success does not end an episode: all run 6 steps (3 chunks).
    np.testing.assert_array_equal(
        np.asarray(out.trajectory.dones), [[False] * 4, [False] * 4, [True] * 4, [False] * 4]
    )
    rewards = np.asarray(out.trajectory.rewards)
    # init 0: success from step 3 → +2 in chunk 2; init 2: success at 2 (+2), lost at 3 (−2), 5 and 6 (+2 −2).
    np.testing.assert_allclose(rewards[:, 0], [0.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(rewards[:, 2], [2.0, -2.0, 0.0, 0.0])
    np.testing.assert_allclose(rewards[:, [1, 3]], 0.0)
    np.testing.assert_array_equal(np.asarray(out.trajectory.successes)[:, 2], [True, False, True, False])
    metrics = {k: float(v) for k, v in finished_episode_metrics(out.finished).items()}
    assert (
        metrics["env/success_once"] == 0.5 and metrics["env/success_at_end"] == 0.25
    )  # init 0 ends successful
    assert metrics["env/episode_len"] == SCRIPT_MAX_STEPS


# ----------------------------------------------------------------------------- MJX auto-reset

AR_MAX_STEPS = 4  # episodes of two chunks of two control steps; rollouts of three chunks


@pytest.fixture(scope="module")
def auto_reset_rollout():
    """A jitted MJX auto-reset rollout (toy_spatial, tiny π0, 2 envs) and what it needs."""
    from pirl.envs import make_env
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.rl import rollout as rollout_lib
    from pirl.rl.synthetic import toy_env_adapter

    cfg = RLConfig(
        model=Pi0Config.tiny(
            image_keys=("base_0_rgb", "left_wrist_0_rgb"),
            image_resolution=(28, 28),
            action_dim=8,
            action_horizon=4,
        ),
        policy=FlowPolicyConfig(num_steps=2, action_chunk=2, value_head_hidden=(16,)),
        env=EnvSpec(
            name="toy_spatial", num_envs=2, image_size=28, max_episode_steps=AR_MAX_STEPS, auto_reset=True
        ),
        adv=AdvantageConfig(gamma=0.5),
        chunk_steps=3,
        rollout_epochs=1,
        global_batch_size=6,
    )
    # lax.map batching and XLA's cheapest backend pass: these programs run once, compiling dominates.
    env = make_env(
        "toy_spatial", image_size=28, render_fn=flat_color_render, max_steps=AR_MAX_STEPS, batching="map"
    )
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    adapter = toy_env_adapter(cfg, env.prompts)
    pools = (jnp.asarray([0, 1], jnp.int32), jnp.asarray([3, 7], jnp.int32))

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def play(state, ret, rng):
        return rollout_lib.rollout(
            params,
            adapter,
            state,
            rng,
            env=env,
            policy_cfg=cfg.policy,
            model_cfg=cfg.model,
            chunk_steps=3,
            env_spec=cfg.env,
            reset_pools=pools,
            adv_cfg=cfg.adv,
            episode_return=ret,
        )

    start = jax.jit(env.batched(env.reset_to), compiler_options=FAST_COMPILE)(
        jnp.asarray([0, 1]), jnp.asarray([3, 7])
    )
    return play, start, pools


@pytest.mark.nightly  # ~155 s on 2 CPU cores (MJX compile); the scripted-env tests above cover the rules in CI
def test_mjx_auto_reset_carries_episodes_across_rollouts(auto_reset_rollout):
    play, start, (task_pool, init_pool) = auto_reset_rollout
    first = play(start, jnp.zeros(2), jax.random.key(1))
    # Chunk 2 ends the 4-step episode (time limit): the env resets, and chunk 3 is the new
    # episode's first two steps, which carry into the next rollout.
    np.testing.assert_array_equal(np.asarray(first.trajectory.dones), [[False] * 2, [True] * 2, [False] * 2])
    np.testing.assert_array_equal(np.asarray(first.final_state.info["step"]), [2, 2])
    assert np.isin(np.asarray(first.final_state.info["task_id"]), np.asarray(task_pool)).all()
    assert np.isin(np.asarray(first.final_state.info["init_id"]), np.asarray(init_pool)).all()
    # The truncated chunk's reward is γ·V(final obs) (no success: every other reward is 0).
    rewards = np.asarray(first.trajectory.rewards)
    assert np.all(rewards[[0, 2]] == 0.0) and np.all(rewards[1] != 0.0)
    np.testing.assert_array_equal(np.asarray(first.finished["done"]), np.asarray(first.trajectory.dones))
    np.testing.assert_array_equal(np.asarray(first.finished["length"])[1], [AR_MAX_STEPS] * 2)
    np.testing.assert_allclose(np.asarray(first.finished["return"]), 0.0)  # no bootstrap in the return

    second = play(first.final_state, first.episode_return, jax.random.key(2))
    # The carried episode goes on where it stopped: its first chunk reaches step 4 and ends it,
    # and the next episode (chunks 2 and 3) ends at the rollout's last chunk.
    np.testing.assert_array_equal(
        np.asarray(second.trajectory.env_obs["state"][0]), np.asarray(first.final_state.obs["state"])
    )
    np.testing.assert_array_equal(np.asarray(second.trajectory.dones), [[True] * 2, [False] * 2, [True] * 2])
    np.testing.assert_array_equal(np.asarray(second.final_state.info["step"]), [0, 0])
    metrics = {k: float(v) for k, v in finished_episode_metrics(second.finished).items()}
    assert metrics["env/episodes"] == 4.0 and metrics["env/episode_len"] == AR_MAX_STEPS
    assert metrics["env/success_once"] == 0.0 and metrics["env/return"] == 0.0


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
