"""Reading compiled HLO (pirl.distributed.hlo); the training programs as the trainers compile them:
the model's batch constraints active, gradients reduced once per optimizer step."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from pirl.distributed import hlo
from pirl.distributed import mesh as mesh_lib
from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.rl import optim, synthetic, trainer
from pirl.rl import update as update_lib
from pirl.rl.config import EnvSpec
from pirl.sft import train as sft_train
from pirl.sft.config import SFTConfig

LAYERS, OUTER, BATCH, WIDTH = 5, 3, 8, 64


def _nested_scan_loss(w, x):
    """OUTER passes over LAYERS scanned tanh(x @ w_l) layers: 15 dots forward, 30 backward."""

    def layer(c, wi):
        return jnp.tanh(c @ wi), None

    def outer(c, _):
        return jax.lax.scan(layer, c, w)[0], None

    return jax.lax.scan(outer, x, None, length=OUTER)[0].sum()


def test_dot_flops_count_every_loop_iteration():
    w = jax.ShapeDtypeStruct((LAYERS, WIDTH, WIDTH), jnp.float32)
    x = jax.ShapeDtypeStruct((BATCH, WIDTH), jnp.float32)
    compiled = jax.jit(jax.grad(_nested_scan_loss)).lower(w, x).compile()
    counted = hlo.dot_flops(compiled.as_text())
    per_dot = 2 * BATCH * WIDTH * WIDTH
    # Forward: OUTER x LAYERS dots; backward: two per forward dot (w.r.t. the carry and the weight).
    assert counted.flops == 3 * OUTER * LAYERS * per_dot
    assert sorted(counted.trip_counts) == [OUTER, OUTER, LAYERS, LAYERS]
    # Loop bodies once: the forward, the carry-gradient and the weight-gradient dot, once each,
    # i.e. what XLA's own cost analysis counts (plus its elementwise ops, a few % here).
    assert counted.flops_bodies_once == 3 * per_dot
    xla = compiled.cost_analysis()["flops"]
    assert counted.flops_bodies_once <= xla < 1.2 * counted.flops_bodies_once


def test_collective_counts_follow_loop_trip_counts():
    """FSDP-style: per-layer weights sharded over 8 devices are all-gathered once per scan step."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 8)))
    w = jax.ShapeDtypeStruct(
        (LAYERS, WIDTH, WIDTH), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "fsdp"))
    )
    x = jax.ShapeDtypeStruct((BATCH, WIDTH), jnp.float32, sharding=mesh_lib.batch_sharding(mesh))

    def forward(w, x):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]

    ops = hlo.collectives(jax.jit(forward).lower(w, x).compile().as_text())
    gathers = [op for op in ops if op.op == "all-gather"]
    assert gathers and all(op.count == LAYERS for op in gathers), ops
    layer_bytes = WIDTH * WIDTH * 4
    assert hlo.bytes_by_op(gathers) == {"all-gather": layer_bytes * len(gathers)}
    assert hlo.bytes_by_op(gathers, executed=True) == {"all-gather": LAYERS * layer_bytes * len(gathers)}


def test_constrain_batch_is_a_no_op_without_a_mesh():
    x = jnp.arange(16.0).reshape(8, 2)
    assert mesh_lib.constrain_batch(x) is x
    text = jax.jit(mesh_lib.constrain_batch).lower(x).as_text()
    assert "sharding" not in text.lower()


SIZE, MICRO = 56, 16
"""56x56 cameras (16 SigLIP tokens each), micro-batches of 16 (2 samples per device on 8)."""
TINY_MODEL = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"), image_resolution=(SIZE, SIZE))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@functools.cache
def _trainer_update(axis_sizes: tuple[int, int], global_batch: int, num_envs: int):
    """(collectives, trainable bytes, optimizer steps) of the tiny update compiled by the trainer's own
    `trainer.jit_update` on abstract inputs (nothing allocated): one compile per mesh, shared."""
    cfg = synthetic.tiny_ppo_config(
        model=TINY_MODEL,
        env=EnvSpec(name="toy_spatial", num_envs=num_envs, image_size=SIZE, max_episode_steps=10),
        global_batch_size=global_batch,
        micro_batch_size=MICRO,
    )
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=axis_sizes))
    abstract = jax.eval_shape(
        lambda: flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    )
    adapter = synthetic.toy_env_adapter(cfg)
    program = synthetic.ppo_update_program(cfg, abstract, adapter, mesh)
    opt_abstract = jax.eval_shape(program.optimizer.init, abstract)
    shardings = {
        "params": mesh_lib.param_shardings(abstract, mesh, min_size=256),
        "opt_state": mesh_lib.param_shardings(opt_abstract, mesh, min_size=256),
    }
    update = trainer.jit_update(cfg, mesh, program.optimizer, program.trainable_mask, shardings)
    replicated, batch_sharding = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    num = cfg.transitions_per_step
    batch = synthetic.synthetic_transitions(cfg, num)
    compiled = update.lower(
        _abstract(abstract, shardings["params"]),
        _abstract(opt_abstract, shardings["opt_state"]),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding), batch),
        jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
        adapter=adapter,
    ).compile()
    trainable = sum(
        math.prod(x.shape) * x.dtype.itemsize
        for x, t in zip(jax.tree.leaves(abstract), jax.tree.leaves(program.trainable_mask), strict=True)
        if t
    )
    steps = cfg.update_epochs * num // global_batch
    return hlo.collectives(compiled.as_text()), trainable, steps


def _activation_ops(ops, batch, model):
    """Collectives carrying an activation of the whole (micro-)batch: SigLIP [batch x cameras,
    16 tokens, ...] or Gemma [batch, prefix 48 | suffix horizon + 1 tokens, ...]. Each device should
    hold its own samples' activations only."""
    cameras, tokens = len(model.image_keys), model.tokens_per_image
    assert tokens == 16
    prefix, suffix = cameras * tokens + model.max_token_len, model.action_horizon + 1
    activations = {(batch * cameras, tokens), (batch, prefix), (batch, suffix)}
    return [op for op in ops if any(d[:2] in activations for _, d in op.shapes)]


def test_trainer_update_traces_on_its_mesh():
    """The tiny FSDP update on 8 devices as the trainer jits it (`trainer.jit_update`, no mesh context
    around the call): no SigLIP activation [16 x 2 cameras, 16 tokens, ...] or Gemma activation
    [16, tokens, width] crosses devices, only weights are gathered. The program traces under its mesh (`mesh.jit_on_mesh`), so the model's
    `constrain_batch` pins the layer inputs to the batch axes. Without it the partitioner
    replicates the micro-batch and splits the matmuls over the FSDP-sharded weight dims instead:
    this program then all-reduces q / k / v as f32[32,16,2,16] (at full size f32[96,256,16,72] x 3,
    docs/scaling.md) and its executed all-reduce bytes are 5.5x higher (4.59 vs 0.84 MB)."""
    ops, _, _ = _trainer_update((1, 8), MICRO, 8)
    assert not _activation_ops(ops, MICRO, TINY_MODEL)
    assert {"all-gather", "all-reduce"} <= {op.op for op in ops}  # weights gathered, grads reduced
    assert hlo.bytes_by_op(ops, executed=True)["all-reduce"] < 1.5e6


def test_gradients_reduced_once_per_optimizer_step_on_the_data_axis():
    """Data-parallel mesh (data=8): 2 optimizer steps of 2 micro-batches each. The gradients of a
    micro-batch stay per-device partial sums (`optim.accumulate_gradients` with `local_axes`), and
    the trainable gradients cross devices once per optimizer step: every non-scalar all-reduce runs
    2 times per call, and they move the trainable bytes 2 times, nothing else. Before, each
    micro-batch's gradient was all-reduced inside the backward layer scan (4 x 4 layer runs per
    step here, 3.9 TB per global step per device for pi0_libero_ppo)."""
    ops, trainable, steps = _trainer_update((8, 1), 2 * MICRO, 32)
    assert steps == 2
    reductions = [op for op in ops if op.op in ("all-reduce", "reduce-scatter") and op.bytes > 1024]
    assert reductions and all(op.count == steps for op in reductions), reductions
    moved = sum(op.bytes * op.count for op in reductions)
    assert trainable * steps <= moved < 1.01 * trainable * steps, (moved, trainable)
    assert not _activation_ops(ops, MICRO, TINY_MODEL) and not {"all-gather", "all-to-all"} & {
        op.op for op in ops
    }


def test_sft_step_traces_on_its_mesh():
    """The SFT program as `pirl.sft.train` jits it (`jit_train_step`), tiny model, FSDP over 8 devices,
    batch 16: no activation of the whole batch crosses devices. Without the mesh trace the
    partitioner all-gathers and all-reduces the Gemma layers' [16, 48 | 51, 64] activations (5.8 vs
    1.7 MB of all-reduce, 5.7 vs 1.0 MB of all-gather)."""
    config = SFTConfig(model=dataclasses.replace(TINY_MODEL, action_horizon=50), batch_size=MICRO)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 8)))
    abstract = sft_train.frozen_params_cast(config, pi0.abstract_params(config.model))
    mask = sft_train.trainable_mask(abstract)
    tx = sft_train.make_optimizer(config, mask)
    state = jax.eval_shape(
        lambda p: {"params": p, "opt_state": tx.init(p), "rng": jax.random.key(0), "step": jnp.int32(0)},
        abstract,
    )
    shardings = sft_train.train_state_shardings(state, mesh)
    m, b = config.model, config.batch_size
    batch = sft_train.abstract_batch(config, mesh_lib.batch_sharding(mesh))
    step = sft_train.jit_train_step(config, tx, mask, mesh, shardings)
    ops = hlo.collectives(step.lower(_abstract(state, shardings), batch).compile().as_text())
    assert {"all-gather", "all-reduce"} <= {op.op for op in ops}
    assert not _activation_ops(ops, b, m)


def test_shard_local_accumulation_equals_the_plain_one():
    """`accumulate_gradients` with `local_axes`: a 2-layer MLP (first layer frozen) with a masked-mean
    loss on a data=8 mesh, 4 micro-batches of 16. Same loss, aux and gradients as the plain
    accumulation, and the second layer's gradient is reduced across the data axis once per call
    instead of once per micro-batch."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(8, 1)))
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(keys[0], (8, 32)), "w2": jax.random.normal(keys[1], (32, 4))}
    params = jax.device_put(params, mesh_lib.replicated(mesh))
    batch = {"x": jax.random.normal(keys[2], (64, 8)), "mask": jax.random.uniform(keys[3], (64,)) > 0.3}
    batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
    mask = {"w1": False, "w2": True}

    def forward(p, mb):
        return jnp.tanh(jnp.tanh(mb["x"] @ p["w1"]) @ p["w2"])

    def objective(out, mb):
        per_sample = (out**2).sum(-1)
        loss = (per_sample * mb["mask"]).sum() / jnp.maximum(mb["mask"].sum(), 1)
        return loss, {"max": per_sample.max()}

    def run(params, batch, local_axes):
        return optim.accumulate_gradients(
            objective,
            params,
            batch,
            4,
            trainable_mask=mask,
            forward=forward,
            mesh=mesh,
            local_axes=local_axes,
        )

    plain = jax.jit(functools.partial(run, local_axes=()))
    local = jax.jit(functools.partial(run, local_axes=("data",)))
    (loss_a, aux_a), grads_a = plain(params, batch)
    (loss_b, aux_b), grads_b = local(params, batch)
    assert grads_b["w1"] is None and grads_a["w1"] is None
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    np.testing.assert_allclose(aux_b["max"], aux_a["max"], rtol=1e-6)
    np.testing.assert_allclose(grads_b["w2"], grads_a["w2"], rtol=1e-5, atol=1e-6)

    def w2_reductions(jitted):
        ops = hlo.collectives(jitted.lower(params, batch).compile().as_text())
        return sum(op.count for op in ops if {("f32", (32, 4)), ("f32", (4, 32))} & set(op.shapes))

    assert (w2_reductions(plain), w2_reductions(local)) == (4, 1)


@pytest.mark.nightly
def test_ppo_update_on_the_data_mesh_matches_1_device():
    """The tiny PPO update (2 epochs x 2 minibatches of 2 micro-batches of 8) on data=8, where the
    gradients are accumulated per device (`update.data_parallel_axes` = ("data",)), gives the
    parameters and metrics of the same update on 1 device."""
    cfg = synthetic.tiny_ppo_config(
        update_epochs=2,
        global_batch_size=16,
        micro_batch_size=8,
        env=EnvSpec(name="toy_spatial", num_envs=16, image_size=28, max_episode_steps=10),
    )
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))

    def run(axis_sizes, devices):
        mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=axis_sizes), devices)
        ppo = synthetic.make_ppo_update_setup(cfg, mesh, params=params, shuffle_shards=8)
        batch = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, 32), mesh)
        out, _, step, metrics = ppo.update(
            ppo.params, ppo.opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(1)
        )
        return jax.device_get(out), int(step), jax.device_get(metrics)

    assert update_lib.data_parallel_axes(
        cfg, mesh_lib.batch_sharding(mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(8, 1))))
    ) == ("data",)
    one, steps_one, metrics_one = run((1, 1), jax.devices()[:1])
    eight, steps_eight, metrics_eight = run((8, 1), jax.devices()[:8])
    assert steps_one == steps_eight == 4
    for (path, a), b in zip(jax.tree.leaves_with_path(one), jax.tree.leaves(eight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    for key in metrics_one:
        np.testing.assert_allclose(metrics_one[key], metrics_eight[key], rtol=1e-3, atol=1e-5, err_msg=key)
    assert not np.allclose(
        params["model"]["action_out_proj"]["kernel"], one["model"]["action_out_proj"]["kernel"]
    )
