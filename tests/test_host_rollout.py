"""Host-driven rollouts (`pirl.rl.host_rollout`) against a scripted stand-in for the LIBERO pool.

The stand-in reports LIBERO's success flag on a fixed schedule per initial state, so RLinf's episode
semantics can be checked exactly and fast (no simulator): the success reward paid as a difference,
terminations and truncations, idle (masked) environments after their episode ended, RLinf's
`ignore_terminations` and `auto_reset` (episodes carried over between rollouts, γ·V(final obs)
added on truncation), and bit-identical records with 1 and 2 pipeline stages.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import numpy as np
import pytest

from pirl.distributed import mesh as mesh_lib
from pirl.envs.libero_pool import ChunkOutcome, EpisodeSpec
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig
from pirl.rl.config import EnvSpec, RLConfig
from pirl.rl.host_rollout import HostCollector
from pirl.rl.synthetic import toy_env_adapter

NUM_ENVS = 16  # 2 stages x 8 fake devices x 1 environment
MAX_STEPS = 6  # three chunks of two control steps
SUCCESS_AT = {0: {3, 4, 5, 6}, 1: set(), 2: {2}, 3: {5, 6}}
"""initial state -> control steps (since reset) at which LIBERO would report success."""


class ScriptedPool:
    """What HostCollector needs of a LiberoPool, with success on the SUCCESS_AT schedule."""

    num_workers = 1
    restarts = 0

    def __init__(self):
        self.busy_seconds = collections.Counter()
        self.busy_by_kind = collections.Counter()
        self.spec: dict[int, EpisodeSpec] = {}
        self.steps: dict[int, int] = {}
        self.resets = collections.Counter()
        self.chunks = collections.Counter()

    def _obs(self, slot: int) -> dict[str, np.ndarray]:
        k, init = self.steps[slot], self.spec[slot].init_id
        image = np.full((8, 8, 3), 30 * init + 7 * k, np.uint8)
        return {
            "agentview_image": image,
            "wrist_image": image[::-1],
            "state": np.full(8, 0.1 * k, np.float32),
        }

    def submit_reset(self, slots, specs):
        for slot, spec in zip(slots, specs, strict=True):
            self.spec[slot], self.steps[slot] = spec, 0
            self.resets[slot] += 1
        return {slot: self._obs(slot) for slot in slots}

    def submit_step(self, slots, chunks):
        out = {}
        for slot, chunk in zip(slots, chunks, strict=True):
            assert chunk.shape[1] == 7 and np.all(np.abs(chunk) <= 1.0)
            success = []
            for _ in range(len(chunk)):
                self.steps[slot] += 1
                success.append(self.steps[slot] in SUCCESS_AT[self.spec[slot].init_id])
            self.chunks[slot] += 1
            out[slot] = ChunkOutcome(self._obs(slot), np.asarray(success))
        return out

    def wait(self, ticket):
        return ticket

    def histories(self):
        return {slot: (self.spec[slot], self.steps[slot]) for slot in self.spec}

    def restore(self, histories):
        for slot, (spec, steps) in histories.items():
            self.spec[slot], self.steps[slot] = spec, steps

    def reset(self, slots, specs):
        return self.submit_reset(slots, specs)


@dataclasses.dataclass
class ScriptedEnv:
    """What HostCollector needs of a LiberoTrainEnv."""

    pool: ScriptedPool
    name: str = "libero_spatial"
    prompts: tuple[str, ...] = ("put the bowl on the plate", "open the drawer")
    num_init_states: int = 4
    max_steps: int = MAX_STEPS
    local_envs: int = NUM_ENVS
    first_env: int = 0
    images_upside_down: bool = True
    state_dim: int = 8


def _config(**env_overrides) -> RLConfig:
    env = dict(
        name="libero_spatial",
        backend="libero",
        num_envs=NUM_ENVS,
        image_size=8,
        max_episode_steps=MAX_STEPS,
        pipeline_stage_num=2,
        sample_micro_batch=1,
        reward_coef=2.0,
    )
    env.update(env_overrides)
    return RLConfig(
        model=Pi0Config.tiny(
            image_keys=("base_0_rgb", "left_wrist_0_rgb"),
            image_resolution=(28, 28),
            action_dim=8,
            action_horizon=4,
        ),
        policy=FlowPolicyConfig(num_steps=2, action_chunk=2, value_head_hidden=(16,)),
        env=EnvSpec(**env),
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=NUM_ENVS,
    )


@pytest.fixture(scope="module")
def policy():
    cfg = _config()
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    return params, toy_env_adapter(cfg, ScriptedEnv.prompts)


def _specs() -> list[EpisodeSpec]:
    return [EpisodeSpec("libero_spatial", i % 2, i % 4, 0) for i in range(NUM_ENVS)]


def _collector(**env_overrides) -> tuple[HostCollector, ScriptedPool]:
    cfg = _config(**env_overrides)
    pool = ScriptedPool()
    return HostCollector(cfg, ScriptedEnv(pool), mesh_lib.make_mesh(cfg.mesh)), pool


def test_rlinf_rewards_terminations_truncations_and_idle_envs(policy):
    collector, pool = _collector()
    rec = collector.play(*policy, jax.random.key(1), "train", _specs())
    assert rec.rewards.shape == (3, NUM_ENVS) and rec.env_obs["agentview_image"].shape == (
        3,
        NUM_ENVS,
        8,
        8,
        3,
    )
    by_init = {i: rec.rewards[:, i].tolist() for i in range(4)}
    # init 0: success from step 3 on (chunk 1); init 1: never (truncated in chunk 2); init 2:
    # success at step 2 (chunk 0) ends the episode; init 3: success at step 5 (chunk 2).
    assert by_init == {0: [0, 2, 0], 1: [0, 0, 0], 2: [2, 0, 0], 3: [0, 0, 2]}
    dones = rec.dones[:, :4].T.tolist()
    assert dones == [[False, True, True], [False, False, True], [True, True, True], [False, False, True]]
    assert rec.successes[:, :4].T.tolist() == [
        [False, True, False],
        [False] * 3,
        [True, False, False],
        [False, False, True],
    ]
    # Finished environments are not stepped again; their later observations repeat the last one.
    assert pool.chunks[0] == 2 and pool.chunks[1] == 3 and pool.chunks[2] == 1 and pool.chunks[3] == 3
    np.testing.assert_array_equal(rec.env_obs["state"][2, 2], rec.env_obs["state"][1, 2])
    assert len(rec.finished) == NUM_ENVS and rec.timing.control_steps == 4 * (4 + 6 + 2 + 6)
    assert np.all(rec.final_value != 0)  # the critic's bootstrap values of the last observation


def test_ignore_terminations_runs_to_the_limit_and_takes_the_reward_back(policy):
    collector, pool = _collector(ignore_terminations=True)
    rec = collector.play(*policy, jax.random.key(1), "train", _specs())
    # init 2: success at step 2 only: +2 in chunk 0, taken back in chunk 1; the episode goes on.
    assert rec.rewards[:, 2].tolist() == [2, -2, 0]
    assert rec.dones[:, :4].T.tolist() == [[False, False, True]] * 4
    assert all(pool.chunks[i] == 3 for i in range(NUM_ENVS))


def test_auto_reset_carries_episodes_over_and_bootstraps_truncations(policy):
    params, adapter = policy
    collector, pool = _collector(auto_reset=True, max_episode_steps=4)
    first = collector.play(params, adapter, jax.random.key(1), "train", _specs())
    # init 2 ends in chunk 0 (success) and restarts at once; init 1 is truncated after 4 steps (chunk 1).
    assert first.dones[0, 2] and first.dones[:, 1].tolist() == [False, True]
    assert pool.resets[2] >= 2 and pool.resets[1] == 2 and len(first.finished) >= 12
    resets_before = sum(pool.resets.values())
    second = collector.play(params, adapter, jax.random.key(2), "train", None)
    assert sum(pool.resets.values()) - resets_before == len(second.finished)  # no fresh start

    # The truncated chunk carries γ·V(final observation); nothing else changes without the bootstrap.
    plain, _ = _collector(auto_reset=True, max_episode_steps=4)
    plain.cfg = dataclasses.replace(
        plain.cfg, adv=dataclasses.replace(plain.cfg.adv, bootstrap_on_truncation=False)
    )
    ref = plain.play(params, adapter, jax.random.key(1), "train", _specs())
    bootstrapped = np.zeros(first.rewards.shape, bool)
    bootstrapped[1, [i for i in range(NUM_ENVS) if i % 4 in (1, 3)]] = True  # truncated, not terminated
    np.testing.assert_array_equal(first.rewards != ref.rewards, bootstrapped)


def test_one_and_two_stages_give_bit_identical_records(policy):
    records = []
    for stages in (1, 2):
        collector, _ = _collector(pipeline_stage_num=stages)
        records.append(collector.play(*policy, jax.random.key(3), "train", _specs()))
    one, two = records
    for key in one.sample:
        np.testing.assert_array_equal(one.sample[key], two.sample[key], err_msg=key)
    np.testing.assert_array_equal(one.final_value, two.final_value)
    np.testing.assert_array_equal(one.rewards, two.rewards)


def test_evaluation_leaves_the_carried_over_episodes_alone(policy):
    params, adapter = policy
    collector, pool = _collector(auto_reset=True, max_episode_steps=4)
    collector.play(params, adapter, jax.random.key(1), "train", _specs())
    before = dict(pool.histories())
    tasks, inits = np.zeros(6, np.int32), np.arange(6, dtype=np.int32) % 4
    metrics, success, frames = collector.evaluate(params, adapter, tasks, inits, jax.random.key(9))
    # Within 4 steps: init 0 succeeds at step 3, init 2 at step 2; init 1 never, init 3 only at step 5.
    assert float(metrics["env/success_once"]) == pytest.approx(3 / 6)
    assert success[:4].tolist() == [True, False, True, False] and frames.shape == (2, 4, 8, 8, 3)
    assert pool.histories() == before  # the training episodes were put back
    collector.play(params, adapter, jax.random.key(2), "train", None)  # and continue


@pytest.mark.parametrize(
    "env, message",
    [
        (dict(backend="mjx", name="toy_spatial", auto_reset=True), "libero backend only"),
        (dict(backend="mjx", name="toy_spatial", ignore_terminations=True), "libero backend only"),
        (dict(backend="libero", name="toy_spatial"), "not a LIBERO suite"),
        (
            dict(backend="libero", name="libero_10", num_envs=6, pipeline_stage_num=4),
            "multiple of env.pipeline",
        ),
        (
            dict(backend="libero", name="libero_10", num_envs=8, pipeline_stage_num=2, sample_micro_batch=3),
            "divide",
        ),
    ],
)
def test_env_config_refusals(env, message):
    with pytest.raises(ValueError, match=message):
        RLConfig(env=EnvSpec(**env))
    assert RLConfig(env=EnvSpec(backend="libero", name="libero_10")).max_episode_steps == 480
