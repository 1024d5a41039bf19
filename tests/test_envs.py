"""Tests of pirl.envs: scenes, init states, predicates, env API, batching, scripted experts.

MJX compiles slowly on CPU (about a minute for one physics step program on a busy 2-core
machine), so the fast tests avoid compiling the physics step; every test that steps physics is
marked slow (CI) or nightly and shares one module-scoped toy_spatial env and its jitted
functions where it can. That env loops over its batch with lax.map (`batching="map"`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from mujoco import mjx

from pirl.envs import (
    BatchEnv,
    expert_action,
    expert_policy,
    make_env,
    random_policy,
    run_episodes,
)
from pirl.envs import tasks as tsk
from pirl.envs.controller import mat_to_rotvec, quat_to_rotvec, rotvec_to_mat
from pirl.envs.scene import load_scene

SUITE_NAMES = tuple(tsk.SUITES)


NUM_ENVS = 6  # one shape for every fast test: toy_spatial has 6 tasks


@pytest.fixture(scope="module")
def spatial():
    env = make_env("toy_spatial", render=False, batching="map")  # real branches: finished envs stop
    batch = BatchEnv(env, NUM_ENVS, reset_mode="same")
    fns = {
        "reset": jax.jit(batch.reset_to),
        "step": jax.jit(batch.step),
        "expert": jax.jit(env.batched(lambda s: expert_action(env, s))),
        # Per env: policy 0 the expert, 1 random actions; each with its own step limit.
        "run": jax.jit(
            lambda tasks, inits, rng, policy_ids, limits: run_episodes(
                env, (expert_policy(env), random_policy), tasks, inits, rng, env.max_steps, policy_ids, limits
            )
        ),
    }
    return env, batch, fns


def test_suites_have_tasks_prompts_and_fixed_init_states():
    for name in SUITE_NAMES:
        suite = tsk.get_suite(name)
        info = load_scene(suite.scene)
        assert len(suite.tasks) >= 5, name
        assert all(t.instruction and t.instruction == t.instruction.lower() for t in suite.tasks)
        tsk.make_goal_table(suite, info)  # names resolve
        a = tsk.make_init_states(suite, info, num=4)
        b = tsk.make_init_states(suite, info, num=4)
        np.testing.assert_array_equal(a.qpos, b.qpos)  # reproducible from the seed
        assert not np.allclose(a.qpos[0, 0], a.qpos[0, 1])  # but jittered across inits
        # Objects rest on the table at their collision half-height, upright.
        for i, adr in enumerate(info.object_qpos_adr):
            np.testing.assert_allclose(a.qpos[..., adr + 2], info.object_half_size[i, 2], atol=1e-6)
    assert tsk.get_suite("toy_10").tasks[0].goals[1].kind == "in"
    assert tsk.get_suite("maniskill_put_on_plate").max_steps == 80
    with pytest.raises(ValueError, match="unknown suite"):
        tsk.get_suite("libero_100")


def test_rotation_helpers_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(5):
        r = rng.normal(size=3)
        r = r / np.linalg.norm(r) * rng.uniform(0.1, 3.0)
        m = rotvec_to_mat(jnp.asarray(r))
        np.testing.assert_allclose(np.asarray(m @ m.T), np.eye(3), atol=1e-5)
        np.testing.assert_allclose(np.asarray(mat_to_rotvec(m)), r, atol=1e-4)
    # LIBERO's eef orientation pointing down is axis-angle (pi, 0, 0) for quaternion (0, 1, 0, 0).
    np.testing.assert_allclose(
        np.asarray(quat_to_rotvec(jnp.array([0.0, 1.0, 0.0, 0.0]))), [np.pi, 0, 0], atol=1e-5
    )


def test_reset_obs_and_success_predicate(spatial):
    env, _, fns = spatial
    assert (
        env.prompts[0] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    state = fns["reset"](jnp.arange(NUM_ENVS), jnp.zeros(NUM_ENVS, jnp.int32))
    assert state.obs["state"].shape == (NUM_ENVS, 8)
    assert "agentview_image" not in state.obs  # render=False: physics only
    np.testing.assert_allclose(np.asarray(state.obs["state"][:, 6:]), [[0.04, -0.04]] * NUM_ENVS, atol=1e-6)
    assert not bool(state.info["success"].any())
    # Teleport the target bowl (bowl_0 in task 0) onto the plate: the predicate must hold.
    data = jax.tree.map(lambda x: x[0], state.data)
    adr = env.info.object_qpos_adr[0]
    plate_xy = data.mocap_pos[env.info.mocap_id["plate"], :2]
    on_plate = data.replace(qpos=data.qpos.at[adr : adr + 2].set(plate_xy))
    check = jax.jit(lambda d: tsk.task_success(env.goal_table, env.info, mjx.kinematics(env.mx, d), 0))
    assert bool(check(on_plate))
    assert not bool(check(data))
    lifted = on_plate.replace(qpos=on_plate.qpos.at[adr + 2].add(0.1))
    assert not bool(check(lifted))  # above the plate is not on it


@pytest.mark.slow
def test_expert_solves_spatial_and_random_does_not(spatial):
    """CI's check of the scripted expert: one init state of every toy_spatial task, expert
    >= 90%; random actions (as many envs, a short horizon) < 5%. One compiled program runs both:
    the policy is picked per env, and finished envs are skipped (lax.map)."""
    env, _, fns = spatial
    n_random = 3
    tasks = jnp.concatenate([jnp.arange(NUM_ENVS), jnp.arange(n_random)])
    inits = jnp.concatenate([jnp.full(NUM_ENVS, 7), jnp.arange(n_random) * 11 + 2]).astype(jnp.int32)
    limits = jnp.concatenate([jnp.full(NUM_ENVS, env.max_steps), jnp.full(n_random, 30)])
    policy_ids = jnp.concatenate([jnp.zeros(NUM_ENVS), jnp.ones(n_random)]).astype(jnp.int32)
    success, first = fns["run"](tasks, inits, jax.random.PRNGKey(0), policy_ids, limits)
    success, first = np.asarray(success), np.asarray(first)
    assert success[:NUM_ENVS].mean() >= 0.9, f"expert success {success[:NUM_ENVS]}, first steps {first}"
    assert success[NUM_ENVS:].mean() < 0.05, f"random actions succeeded: {success[NUM_ENVS:]}"
    assert (first[success] > 10).all()  # nothing starts solved: the expert did the work


@pytest.mark.nightly
def test_batch_env_expert_rewards_and_auto_reset(spatial):
    """Through BatchEnv: the expert solves, reward is paid once, solved envs are auto-reset."""
    env, _, fns = spatial
    tasks, inits = jnp.arange(NUM_ENVS), jnp.zeros(NUM_ENVS, jnp.int32)
    state = fns["reset"](tasks, inits)
    start_state = state.obs["state"]
    solved = np.zeros(NUM_ENVS, bool)
    reward_total = np.zeros(NUM_ENVS)
    for k in range(env.max_steps):
        state = fns["step"](state, fns["expert"](state))
        if k == 2:  # the expert moved the arm: the controller follows actions
            assert float(jnp.abs(state.obs["state"][:, :3] - start_state[:, :3]).max()) > 0.03
        # reset_mode="same": a finished episode restarts; final_success tells how it ended.
        finished = np.asarray(state.done & state.info["final_success"])
        # Auto-reset: an env that just finished already holds its fresh episode (step counter 0).
        assert (np.asarray(state.info["step"])[finished] == 0).all(), np.asarray(state.info["step"])
        solved |= finished
        reward_total += np.asarray(state.reward)
        if solved.all():
            break
    assert solved.mean() >= 0.9, f"expert success {solved}"
    np.testing.assert_array_equal(reward_total, solved.astype(np.float64))  # sparse, paid once
    with pytest.raises(ValueError, match="actions must be"):
        fns["step"](state, jnp.zeros((3, 7)))


def test_unknown_batching_mode_is_refused():
    with pytest.raises(ValueError, match="batching must be 'vmap' or 'map', got 'auto'"):
        make_env("toy_spatial", render=False, batching="auto")


def _mesh_sharding() -> NamedSharding:
    """The batch axis over a 'data' mesh of 3 of the 8 fake CPU devices (2 envs each)."""
    return NamedSharding(Mesh(np.array(jax.devices()[:3]), ("data",)), P("data"))


def test_batch_reset_shards_over_device_mesh(spatial):
    """Sharded (task, init) ids -> a jitted BatchEnv reset returns a state sharded the same way,
    equal to the unsharded one."""
    _, _, fns = spatial
    sharded = _mesh_sharding()
    tasks, inits = jnp.arange(NUM_ENVS), jnp.arange(NUM_ENVS) * 7
    ref = fns["reset"](tasks, inits)
    state = fns["reset"](jax.device_put(tasks, sharded), jax.device_put(inits, sharded))
    for leaf in (state.data.qpos, state.obs["state"], state.info["task_id"]):
        assert leaf.sharding.is_equivalent_to(sharded, leaf.ndim), leaf.sharding
    np.testing.assert_allclose(np.asarray(state.obs["state"]), np.asarray(ref.obs["state"]), atol=1e-6)


@pytest.mark.nightly
def test_batch_step_shards_over_device_mesh(spatial):
    """A jitted BatchEnv step on a mesh-sharded state keeps it sharded and matches the unsharded
    step (nightly: the sharded input compiles the physics step a second time, ~2 min on CPU)."""
    _, _, fns = spatial
    sharded = _mesh_sharding()
    tasks, inits = jnp.arange(NUM_ENVS), jnp.arange(NUM_ENVS) * 7
    ref = fns["reset"](tasks, inits)
    state = jax.device_put(ref, sharded)
    actions = jnp.tile(jnp.array([[0.4, -0.3, -0.5, 0.0, 0.0, 0.2, 1.0]]), (NUM_ENVS, 1))
    ref = fns["step"](ref, actions)
    state = fns["step"](state, jax.device_put(actions, sharded))
    for leaf in (state.data.qpos, state.obs["state"], state.info["step"]):
        assert leaf.sharding.is_equivalent_to(sharded, leaf.ndim), leaf.sharding
    np.testing.assert_allclose(np.asarray(state.data.qpos), np.asarray(ref.data.qpos), atol=1e-5)
    assert float(jnp.abs(state.data.qpos - fns["reset"](tasks, inits).data.qpos).max()) > 0.01  # it moved


@pytest.mark.nightly
def test_init_state_is_at_rest(spatial):
    """A no-op step from an initial state leaves the objects where they were (no settling)."""
    env, _, fns = spatial
    state = fns["reset"](jnp.arange(NUM_ENVS), jnp.full(NUM_ENVS, 5, jnp.int32))
    noop = jnp.zeros((NUM_ENVS, 7)).at[:, 6].set(-1.0)
    after = fns["step"](state, noop)
    body = env.info.object_body
    drift = jnp.abs(after.data.xpos[:, body] - state.data.xpos[:, body]).max()
    assert float(drift) < 2e-3, float(drift)


@pytest.mark.slow
def test_chunk_step_matches_steps():
    env = make_env("toy_spatial", render=False)
    state = jax.jit(env.reset_to)(1, 3)
    actions = jnp.tile(jnp.array([[0.5, 0.0, -0.3, 0.0, 0.0, 0.1, -1.0]]), (3, 1))
    chunk = jax.jit(env.chunk_step)(state, actions)
    assert int(chunk.info["step"]) == 3
    step_fn = jax.jit(env.step)
    ref = state
    for a in actions:
        ref = step_fn(ref, a)
    np.testing.assert_allclose(np.asarray(chunk.obs["state"]), np.asarray(ref.obs["state"]), atol=1e-5)
    d = np.asarray(chunk.obs["state"][:3] - state.obs["state"][:3])
    assert d[0] > 0.03 and d[2] < -0.02, d  # moved the commanded way (+x, -z)


@pytest.mark.nightly
@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_expert_all_suites(suite):
    """Expert >= 90% on 2 fixed init states of every task of every suite (physics only)."""
    env = make_env(suite, render=False, batching="map")  # real branches: finished envs stop
    run = jax.jit(lambda t, i, k: run_episodes(env, expert_policy(env), t, i, k, env.max_steps))
    tasks = jnp.repeat(jnp.arange(env.num_tasks), 2)
    inits = jnp.tile(jnp.array([0, 25]), env.num_tasks)
    success, first = run(tasks, inits, jax.random.PRNGKey(0))
    rate = float(success.mean())
    assert rate >= 0.9, (
        f"{suite}: expert success {rate}: {np.asarray(success)}, first steps {np.asarray(first)}"
    )


@pytest.mark.nightly
def test_demos_command_writes_a_readable_lerobot_dataset(tmp_path):
    """`python -m pirl.envs.demos --format v3.0` end to end (1 episode per task, 16 px): pirl.data
    reads it."""
    from pirl.data.lerobot import LeRobotDataset
    from pirl.envs.demos import DemoConfig, main

    cfg = DemoConfig(
        suite="toy_spatial",
        episodes_per_task=1,
        out=str(tmp_path / "demos"),
        image_size=16,
        batch_size=6,
        format="v3.0",
    )
    main(cfg)
    ds = LeRobotDataset(cfg.out)
    assert ds.meta.version == "v3.0" and (tmp_path / "demos" / "meta" / "tasks.parquet").is_file()
    assert len(ds.meta.episodes) >= 5 and ds.fps == 20
    item = ds[0]
    assert item["image"].shape == (16, 16, 3) and item["wrist_image"].shape == (16, 16, 3)
    assert item["state"].shape == (8,) and item["actions"].shape == (7,)
    assert item["task"].startswith("pick up the black bowl")
    assert np.abs(np.asarray(item["actions"])).max() <= 1.0
