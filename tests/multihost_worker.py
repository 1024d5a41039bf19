"""One process of the multi-host test (tests/test_multihost.py runs it 1x or 2x on localhost).

Runs two PPO update steps of the tiny model on a fixed synthetic global batch over a mesh of all
devices of all processes, saves a train-state checkpoint collectively, and (process 0) writes the
final parameters to an .npz. With `--restore DIR` it instead restores DIR's latest checkpoint onto
this process's mesh and writes those parameters.
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pirl.distributed import mesh as mesh_lib  # noqa: E402
from pirl.distributed import multihost  # noqa: E402


def synthetic_batch(cfg, num: int):
    """A deterministic batch of transitions (the same on every process)."""
    from pirl.rl.update import Transitions

    rng = np.random.default_rng(0)
    k, h, a = cfg.policy.num_steps, cfg.model.action_horizon, cfg.model.action_dim
    size = cfg.env.image_size
    return Transitions(
        env_obs={
            "agentview_image": rng.integers(0, 255, (num, size, size, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (num, size, size, 3), dtype=np.uint8),
            "state": rng.normal(size=(num, 8)).astype(np.float32),
        },
        task_id=rng.integers(0, 2, num).astype(np.int32),
        chain=rng.normal(size=(num, k + 1, h, a)).astype(np.float32),
        denoise_index=rng.integers(0, k, num).astype(np.int32),
        old_log_probs=rng.normal(size=(num,)).astype(np.float32) - 50.0,
        old_values=rng.normal(size=(num,)).astype(np.float32),
        advantages=rng.normal(size=(num,)).astype(np.float32),
        returns=rng.normal(size=(num,)).astype(np.float32),
        mask=rng.random(num) > 0.1,
    )


def write_params(params, mesh, path: str) -> None:
    """Gather the (FSDP-sharded) params to every process; process 0 writes them as flat .npz."""
    from pirl.checkpoints import flatten_params

    gathered = jax.jit(lambda x: x, out_shardings=mesh_lib.replicated(mesh))(params)
    if jax.process_index() == 0:
        np.savez(path, **{k: np.asarray(v) for k, v in flatten_params(gathered).items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--restore", action="store_true")
    args = parser.parse_args()
    multihost.initialize()

    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.policies.config import FlowPolicyConfig
    from pirl.policies.env_io import make_env_adapter
    from pirl.policies.masks import trainable_mask
    from pirl.rl.config import EnvSpec, RLConfig
    from pirl.rl.optim import OptimizerConfig, make_optimizer
    from pirl.rl.update import ppo_update

    cfg = RLConfig(
        model=Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb")),
        policy=FlowPolicyConfig(value_head_hidden=(16,)),
        env=EnvSpec(name="maniskill_put_on_plate", num_envs=8, image_size=28, max_episode_steps=10),
        optim=OptimizerConfig(lr=1e-3, value_lr=1e-3),
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=8,
        micro_batch_size=4,
    )
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, -1)))  # FSDP over every device
    print(multihost.describe_devices(mesh), flush=True)
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    trainable = trainable_mask(params, cfg.policy, cfg.model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    shardings = mesh_lib.param_shardings(jax.eval_shape(lambda: params), mesh, min_size=256)
    init = jax.jit(
        lambda: flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0)),
        out_shardings=shardings,
    )
    params = init()
    opt_state = jax.jit(optimizer.init)(params)
    state = {"params": params, "opt_state": opt_state, "opt_step": jnp.zeros((), jnp.int32)}
    if not args.restore:
        write_params(params, mesh, args.out.removesuffix(".npz") + ".init.npz")
    ckpt = TrainStateCheckpointer(args.ckpt, async_save=False)
    if args.restore:
        state = ckpt.restore_latest(state).state
    else:
        adapter = make_env_adapter(
            ["a b", "c d"], lambda p: (np.arange(16, dtype=np.int32) % 5, np.arange(16) < 4), None
        )
        batch = synthetic_batch(cfg, 16)
        rows = multihost.process_batch_slice(16)
        batch = multihost.host_local_batch_to_global(jax.tree.map(lambda x: x[rows], batch), mesh)
        update = jax.jit(
            lambda p, o, s, b, r: ppo_update(
                p,
                o,
                s,
                b,
                r,
                cfg=cfg,
                adapter=adapter,
                optimizer=optimizer,
                trainable_mask=trainable,
                batch_sharding=mesh_lib.batch_sharding(mesh),
            )
        )
        for step in range(2):
            p, o, s, _ = update(
                state["params"], state["opt_state"], state["opt_step"], batch, jax.random.key(step)
            )
            state = {"params": p, "opt_state": o, "opt_step": s}
        ckpt.save(2, state, force=True)
    ckpt.close()
    write_params(state["params"], mesh, args.out)
    print("done", jax.process_index(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
