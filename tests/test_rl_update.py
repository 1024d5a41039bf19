"""The PPO update step: same parameters on a mesh of 8 (fake CPU) devices as on 1; GRPO targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.distributed import mesh as mesh_lib
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig
from pirl.rl import synthetic
from pirl.rl import update as update_lib
from pirl.rl.config import AdvantageConfig, EnvSpec, RLConfig
from pirl.rl.rollout import Trajectory


@pytest.fixture(scope="module")
def setup():
    cfg = synthetic.tiny_ppo_config(update_epochs=2)
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    return cfg, params


def _run_update(setup, devices):
    cfg, params = setup
    mesh = mesh_lib.make_mesh(
        mesh_lib.MeshConfig(axis_sizes=(2, -1) if len(devices) > 1 else (1, 1)), devices
    )
    ppo = synthetic.make_ppo_update_setup(cfg, mesh, params=params)
    batch = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, 16), mesh)
    p, _, step, metrics = ppo.update(
        ppo.params, ppo.opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(1)
    )
    return jax.device_get(p), int(step), jax.device_get(metrics)


def test_update_on_8_devices_matches_1_device(setup):
    assert len(jax.devices()) >= 8, "tests/conftest.py provides 8 fake CPU devices"
    one, steps_one, metrics_one = _run_update(setup, jax.devices()[:1])
    eight, steps_eight, metrics_eight = _run_update(setup, jax.devices()[:8])
    assert steps_one == steps_eight == 4  # 2 epochs x 2 minibatches
    flat_one, flat_eight = jax.tree.leaves_with_path(one), jax.tree.leaves(eight)
    for (path, a), b in zip(flat_one, flat_eight, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    for key in metrics_one:
        np.testing.assert_allclose(metrics_one[key], metrics_eight[key], rtol=1e-3, atol=1e-5, err_msg=key)
    # The update really trained the expert and left the frozen VLM bit-identical.
    _, params = setup
    assert not np.allclose(
        params["model"]["action_out_proj"]["kernel"], one["model"]["action_out_proj"]["kernel"]
    )
    np.testing.assert_array_equal(
        params["model"]["PaliGemma"]["img"]["embedding"]["kernel"],
        one["model"]["PaliGemma"]["img"]["embedding"]["kernel"],
    )


def test_grpo_targets_mask_after_first_done_and_filter(setup):
    cfg = RLConfig(
        model=setup[0].model,
        policy=FlowPolicyConfig(add_value_head=False),
        env=EnvSpec(name="toy_spatial", num_envs=4, image_size=28, max_episode_steps=15),
        adv=AdvantageConfig(adv_type="grpo", group_size=2, normalize_advantages=False),
        rollout_epochs=1,
        global_batch_size=4,
    )
    t, b = 3, 4
    rewards = jnp.zeros((t, b)).at[1, 0].set(1.0).at[2, 2].set(1.0).at[0, 3].set(1.0)
    dones = rewards > 0
    traj = Trajectory(
        env_obs={},
        task_id=jnp.zeros((t, b), jnp.int32),
        chain=jnp.zeros((t, b, 1)),
        denoise_index=jnp.zeros((t, b), jnp.int32),
        log_probs=jnp.zeros((t, b)),
        values=jnp.zeros((t, b)),
        rewards=rewards,
        dones=dones,
        successes=dones,
    )
    _, metrics, adv, _, valid = update_lib.compute_advantages(cfg, traj, jnp.zeros(b))
    # Group (0, 1): scores 1 and 0 -> +-1/sqrt(2) (unbiased std); group (2, 3): both 1 -> 0.
    expected = np.array([1, -1, 0, 0]) / np.sqrt(2)
    np.testing.assert_allclose(np.asarray(adv)[0], expected, atol=1e-5)
    assert np.asarray(valid)[:, 0].tolist() == [True, True, False]  # masked after the first done
    assert np.asarray(valid)[:, 3].tolist() == [True, False, False]
    assert "rollout/returns_mean" not in metrics


@pytest.mark.nightly
def test_critic_warmup_and_recomputed_log_probs(setup):
    """Within critic_warmup_steps only the value head moves; recompute_logprobs rescores the rollout's
    log-probs (the synthetic ones are off by ~50 nats), so the ratio is exactly 1 throughout."""
    from pirl.rl.optim import OptimizerConfig

    _, params = setup
    cfg = synthetic.tiny_ppo_config(
        recompute_logprobs=True,
        optim=OptimizerConfig(lr=1e-3, value_lr=1e-3, weight_decay=0.0, critic_warmup_steps=100),
    )
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 1)), jax.devices()[:1])
    ppo = synthetic.make_ppo_update_setup(cfg, mesh, params=params)
    batch = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, 16), mesh)
    new, _, step, metrics = ppo.update(
        ppo.params, ppo.opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(1)
    )
    new, metrics = jax.device_get(new), jax.device_get(metrics)
    assert int(step) == 2
    assert float(metrics["train/actor/ratio"]) == pytest.approx(1.0, abs=1e-3)  # f32 rescoring noise
    np.testing.assert_array_equal(
        new["model"]["action_out_proj"]["kernel"], params["model"]["action_out_proj"]["kernel"]
    )
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: np.abs(a - b).max(), new["value_head"], params["value_head"])
    )
    assert max(moved) > 1e-5
