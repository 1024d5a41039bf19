"""The PPO update step: same parameters on a mesh of 8 (fake CPU) devices as on 1; GRPO targets."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.checkpoints.detect import load_checkpoint_params
from pirl.checkpoints.openpi_jax import load_openpi_params, save_openpi_params
from pirl.distributed import hlo
from pirl.distributed import mesh as mesh_lib
from pirl.models import pi0
from pirl.policies import flow_policy, masks
from pirl.policies.config import FlowPolicyConfig
from pirl.rl import optim, synthetic
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
    # The shuffle permutes within each device's block of transitions: draw the 8-device minibatches.
    ppo = synthetic.make_ppo_update_setup(cfg, mesh, params=params, shuffle_shards=8)
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


def _collectives(jitted, *args):
    return hlo.collectives(jitted.lower(*args).compile().as_text())


def test_update_moves_no_transition_data_between_devices():
    """The compiled 8-device update (12 shuffled minibatches of 2 micro-batches each) exchanges
    parameters, gradients and statistics only: no collective carries a transition field (its
    leading dim N) or anything near a whole field's size. The old global `x[perm]` shuffle lowered
    to an all-reduce of every image of the buffer (2 x 451,584 bytes here)."""
    num = 192
    cfg = synthetic.tiny_ppo_config(global_batch_size=16, micro_batch_size=8)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(2, -1)))
    ppo = synthetic.make_ppo_update_setup(cfg, mesh)
    batch = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, num), mesh)
    ops = _collectives(
        ppo.update, ppo.params, ppo.opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(1)
    )
    assert {op.op for op in ops} >= {"all-reduce", "all-gather"}  # FSDP gathers + gradient reductions
    image_bytes = batch.env_obs["agentview_image"].nbytes  # 451,584; the chain field is larger
    largest = max(ops, key=lambda op: op.bytes)
    assert largest.bytes < image_bytes / 4, largest
    carrying_n = [op for op in ops if any(num in dims for _, dims in op.shapes)]
    assert not carrying_n, carrying_n


def test_flattening_rollouts_is_local():
    """[E, T, B] rollouts with B split over 8 devices -> flat env-major transitions split the same
    way: no collective at all (time-major flattening all-gathers the buffer)."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(2, -1)))
    epochs, steps, envs = 2, 3, 16
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, ("data", "fsdp")))
    images = jax.ShapeDtypeStruct((epochs, steps, envs, 28, 28, 3), jnp.uint8, sharding=spec)
    scalars = jax.ShapeDtypeStruct((epochs, steps, envs), jnp.float32, sharding=spec)

    def flatten(images, values):
        traj = Trajectory(
            env_obs={"image": images},
            task_id=values,
            chain=values,
            denoise_index=values,
            log_probs=values,
            values=values,
            rewards=values,
            dones=values,
            successes=values,
        )
        flat = jax.vmap(lambda t: update_lib.flatten_transitions(t, t.values, t.values, t.dones))(traj)
        return update_lib.merge_rollout_epochs(flat)

    out = jax.jit(flatten, out_shardings=mesh_lib.batch_sharding(mesh))
    assert _collectives(out, images, scalars) == []
    # Env-major order: row (b, e, t) of the flat batch is environment b's step t of epoch e.
    values = jnp.arange(epochs * steps * envs, dtype=jnp.float32).reshape(epochs, steps, envs)
    flat = jax.jit(flatten)(jnp.zeros((epochs, steps, envs, 1, 1, 1), jnp.uint8), values)
    b, e, t = 5, 1, 2
    assert float(flat.old_values[(b * epochs + e) * steps + t]) == float(values[e, t, b])
    # The time-major flattening this replaced gathers the image buffer.
    time_major = jax.jit(lambda x: x.reshape(-1, *x.shape[3:]), out_shardings=mesh_lib.batch_sharding(mesh))
    assert any(op.op == "all-gather" for op in _collectives(time_major, images))


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


# What passes a weight (or one scanned layer of it) along unchanged; a gather of embedding rows does not.
_MOVES = {"slice", "dynamic_slice", "squeeze", "reshape", "transpose", "broadcast_in_dim", "copy"}


def _upcasts_of(jaxpr, tainted: set) -> tuple[list[tuple[tuple[int, ...], str]], set]:
    """(shape, source file) of the bf16 -> f32 converts of `tainted` vars of `jaxpr` (or of slices /
    reshapes of them, also inside nested jaxprs: scan, remat, pjit, ...), and which outvars carry
    tainted values out."""
    found = []
    tainted = set(tainted)

    def is_tainted(v) -> bool:
        return not isinstance(v, jax.extend.core.Literal) and v in tainted

    for eqn in jaxpr.eqns:
        hit = any(is_tainted(v) for v in eqn.invars)
        name = eqn.primitive.name
        if name == "convert_element_type" and hit:
            if eqn.invars[0].aval.dtype == jnp.bfloat16 and eqn.params["new_dtype"] == jnp.float32:
                where = jax._src.source_info_util.summarize(eqn.source_info)
                found.append((eqn.invars[0].aval.shape, where.rsplit("/", 1)[-1]))
        elif name in _MOVES and hit:
            tainted.update(eqn.outvars)
        elif name == "optimization_barrier":
            tainted.update(o for i, o in zip(eqn.invars, eqn.outvars, strict=True) if is_tainted(i))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            # Nested jaxprs take the equation's last len(sub.invars) operands (scan, pjit, remat: all).
            offset = len(eqn.invars) - len(sub.invars)
            inner = {sub.invars[k] for k, v in enumerate(eqn.invars[offset:]) if is_tainted(v)}
            sub_found, sub_out = _upcasts_of(sub, inner)
            found += sub_found
            if len(sub.outvars) == len(eqn.outvars):
                tainted.update(
                    o
                    for o, i in zip(eqn.outvars, sub.outvars, strict=True)
                    if not isinstance(i, jax.extend.core.Literal) and i in sub_out
                )
    return found, {v for v in jaxpr.outvars if is_tainted(v)}


def test_frozen_vlm_in_bf16_restore_train_save_restore(tmp_path):
    """The full-size presets' setting (bf16 compute, VLM frozen and stored in bf16) on the tiny
    model: a float32 openpi checkpoint is restored as the trainer does (float32) and cast; the
    optimizer holds no moments and the gradient no leaf for the frozen VLM, whose matrices enter the
    matmuls as stored; after an update it is still bf16 and bit-identical; the saved params restore
    (as stored, or through the trainer's float32 path)."""
    base = synthetic.tiny_ppo_config()
    model = dataclasses.replace(base.model, dtype="bfloat16", frozen_dtype="bfloat16")
    cfg = synthetic.tiny_ppo_config(model=model)
    save_openpi_params(pi0.init_params(cfg.model, jax.random.key(0)), tmp_path / "sft")  # float32
    loaded = load_checkpoint_params(tmp_path / "sft", cfg.model, dtype=np.float32)
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0), loaded)
    mask = masks.trainable_mask(params, cfg.policy, cfg.model)
    flat_mask = dict(jax.tree_util.tree_leaves_with_path(mask))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    frozen = {path for path, _ in leaves if not flat_mask[path]}
    assert any("img" in jax.tree_util.keystr(p) for p in frozen)  # train_expert_only: the VLM
    for path, leaf in leaves:
        assert leaf.dtype == (jnp.bfloat16 if path in frozen else jnp.float32), jax.tree_util.keystr(path)

    # The gradient tree has no frozen leaf: the VLM's weight gradients are never formed; and the
    # gradient program upcasts no frozen weight matrix (nor a scanned layer of one) to float32.
    batch = synthetic.synthetic_transitions(cfg, 8)
    adapter = synthetic.toy_env_adapter(cfg)
    jaxpr, ((_, _), grads) = jax.make_jaxpr(
        lambda p, b: optim.accumulate_gradients(
            lambda q, mb: update_lib.ppo_loss_fn(q, mb, cfg=cfg, adapter=adapter, critic_warmup=False),
            p,
            b,
            2,
            trainable_mask=mask,
        ),
        return_shape=True,
    )(params, batch)
    trainable = masks.split_frozen(params, mask)[0]
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    num_trainable = sum(x.size for x in jax.tree.leaves(trainable))
    assert len(jax.tree.leaves(grads)) == len(leaves) - len(frozen)
    flat_mask = jax.tree.leaves(mask)
    frozen_vars = [v for v, t in zip(jaxpr.jaxpr.invars, flat_mask, strict=False) if not t]
    assert len(frozen_vars) == len(frozen)  # the params come first among the invars
    upcasts, _ = _upcasts_of(jaxpr.jaxpr, {v for v in frozen_vars if v.aval.ndim >= 2})
    # Allowed: per-layer vectors (RMSNorm scales) and SigLIP's small float32 pieces (the patch-
    # embedding conv, the position embedding, the LayerNorms), of width siglip.width; no matrix of
    # the Gemma LLM.
    width = cfg.model.siglip.width
    assert width != cfg.model.llm.width
    matrices = [(shape, where) for shape, where in upcasts if len(shape) >= 2]
    assert [(shape, where) for shape, where in matrices if shape[-1] != width or "gemma" in where] == []
    assert any(len(shape) == 4 for shape, _ in upcasts)  # the check does see the conv kernel's upcast

    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 1)), jax.devices()[:1])
    ppo = synthetic.make_ppo_update_setup(cfg, mesh, params=params)
    # AdamW: two moments per trainable element, none for the frozen ones (scalars: step counts).
    state_sizes = sum(x.size for x in jax.tree.leaves(ppo.opt_state) if x.ndim > 0)
    assert state_sizes == 2 * num_trainable
    new, _, _, metrics = ppo.update(
        ppo.params,
        ppo.opt_state,
        jnp.zeros((), jnp.int32),
        synthetic.place_transitions(batch, mesh),
        jax.random.key(1),
    )
    assert np.isfinite(float(metrics["train/actor/grad_norm"]))
    new = jax.device_get(new)
    for (path, before), after in zip(leaves, jax.tree.leaves(new), strict=True):
        assert after.dtype == before.dtype, jax.tree_util.keystr(path)
        if path in frozen:
            assert np.asarray(after).tobytes() == np.asarray(before).tobytes(), jax.tree_util.keystr(path)
    assert not np.allclose(
        params["model"]["action_out_proj"]["kernel"], new["model"]["action_out_proj"]["kernel"]
    )

    # Saved as stored (bf16 frozen, float32 trained, like openpi's own params), restored bit-exact,
    # and again through the trainer's path (float32 restore, then the cast).
    save_openpi_params(new["model"], tmp_path / "rl")
    for restored in (
        load_openpi_params(tmp_path / "rl"),
        flow_policy.init_policy_params(
            cfg.policy,
            cfg.model,
            jax.random.key(0),
            load_checkpoint_params(tmp_path / "rl", cfg.model, np.float32),
        )["model"],
    ):
        for (path, want), got in zip(
            jax.tree_util.tree_leaves_with_path(new["model"]), jax.tree.leaves(restored), strict=True
        ):
            got = np.asarray(got)
            assert got.dtype == want.dtype and got.tobytes() == np.asarray(want).tobytes(), path
