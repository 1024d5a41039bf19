"""One process of the multi-host test (tests/test_multihost.py runs it 1x or 2x on localhost).

Over a mesh of all devices of all processes (params FSDP-sharded over every device), on fixed
synthetic global batches:
- two PPO update steps of the tiny policy (`pirl.rl.synthetic`), then a collective train-state
  checkpoint save;
- one SFT train step (`pirl.sft.train.make_train_step`) of the same tiny π0.
Process 0 writes the final parameters to `<out>.npz` (PPO) and `<out>.sft.npz` (SFT, with the
step's loss and grad norm), and the initial ones to `<out>.init.npz` / `<out>.sft_init.npz`.
With `--restore` it instead restores the latest checkpoint in `--ckpt` onto this process's mesh and
writes those parameters to `<out>.npz`.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pirl.distributed import mesh as mesh_lib  # noqa: E402
from pirl.distributed import multihost  # noqa: E402

SFT_BATCH = 8


def write_params(tree, mesh, path: str) -> None:
    """Gather a (FSDP-sharded) tree to every process; process 0 writes it as a flat .npz."""
    from pirl.checkpoints import flatten_params

    gathered = jax.jit(lambda x: x, out_shardings=mesh_lib.replicated(mesh))(tree)
    if jax.process_index() == 0:
        np.savez(path, **{k: np.asarray(v) for k, v in flatten_params(gathered).items()})


def synthetic_sft_batch(model_cfg, num: int, seed: int = 1) -> dict[str, np.ndarray]:
    """A deterministic SFT batch in the data loader's format (the same on every process)."""
    rng = np.random.default_rng(seed)
    height, width = model_cfg.image_resolution
    length = model_cfg.max_token_len
    return {
        "image": {
            k: rng.integers(0, 255, (num, height, width, 3), dtype=np.uint8) for k in model_cfg.image_keys
        },
        "image_mask": {k: np.ones((num,), bool) for k in model_cfg.image_keys},
        "state": rng.normal(size=(num, model_cfg.action_dim)).astype(np.float32),
        "tokenized_prompt": rng.integers(0, model_cfg.vocab_size, (num, length)).astype(np.int32),
        "tokenized_prompt_mask": np.arange(length)[None].repeat(num, 0) < 6,
        "actions": rng.normal(size=(num, model_cfg.action_horizon, model_cfg.action_dim)).astype(np.float32),
    }


def sft_step(model_cfg, mesh, out: str) -> None:
    """One SFT step (full fine-tuning, AdamW; no EMA, which only adds compile time) with the state
    FSDP-sharded over `mesh`."""
    from pirl.data.configs import get_data_config
    from pirl.models import pi0
    from pirl.sft import train as sft_train
    from pirl.sft.config import SFTConfig

    config = SFTConfig(
        model=model_cfg,
        data=get_data_config("pi0_libero", action_horizon=model_cfg.action_horizon),
        batch_size=SFT_BATCH,
        lr=1e-3,
        warmup_steps=0,
        ema_decay=None,
    )
    abstract_params = jax.eval_shape(lambda: pi0.init_params(model_cfg, jax.random.PRNGKey(0)))
    mask = sft_train.trainable_mask(abstract_params)
    tx = sft_train.make_optimizer(config, mask)

    def make_state():
        params = pi0.init_params(model_cfg, jax.random.PRNGKey(0))
        return {
            "params": params,
            "opt_state": tx.init(params),
            "rng": jax.random.PRNGKey(1),
            "step": jnp.int32(0),
        }

    abstract = jax.eval_shape(make_state)
    replicated = mesh_lib.replicated(mesh)
    params_sharding = mesh_lib.param_shardings(abstract["params"], mesh, min_size=256)
    shardings = {
        "params": params_sharding,
        "opt_state": mesh_lib.param_shardings(abstract["opt_state"], mesh, min_size=256),
        "rng": replicated,
        "step": replicated,
    }
    state = jax.jit(make_state, out_shardings=shardings)()
    write_params(state["params"], mesh, out + ".sft_init.npz")
    batch = synthetic_sft_batch(model_cfg, SFT_BATCH)
    rows = multihost.process_batch_slice(SFT_BATCH)
    batch = multihost.host_local_batch_to_global(jax.tree.map(lambda x: x[rows], batch), mesh)
    train_step = jax.jit(
        sft_train.make_train_step(config, tx, mask),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    state, metrics = train_step(state, batch)
    write_params({"params": state["params"], "metrics": metrics}, mesh, out + ".sft.npz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="output prefix (no extension)")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--restore", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    out = args.out.removesuffix(".npz")
    multihost.initialize()

    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.rl import synthetic

    cfg = synthetic.tiny_ppo_config()
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, -1)))  # FSDP over every device
    print(multihost.describe_devices(mesh), flush=True)
    ppo = synthetic.make_ppo_update_setup(cfg, mesh)
    state = {"params": ppo.params, "opt_state": ppo.opt_state, "opt_step": jnp.zeros((), jnp.int32)}
    ckpt = TrainStateCheckpointer(args.ckpt, async_save=False)
    if args.restore:
        state = ckpt.restore_latest(state).state
    else:
        write_params(state["params"], mesh, out + ".init.npz")
        batch = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, 16), mesh)
        for step in range(2):
            p, o, s, _ = ppo.update(
                state["params"], state["opt_state"], state["opt_step"], batch, jax.random.key(step)
            )
            state = {"params": p, "opt_state": o, "opt_step": s}
        ckpt.save(2, state, force=True)
    ckpt.close()
    write_params(state["params"], mesh, out + ".npz")
    if not args.restore:
        started = time.perf_counter()
        sft_step(cfg.model, mesh, out)
        print(f"sft step (compile + run): {time.perf_counter() - started:.1f} s", flush=True)
    print(f"done {jax.process_index()} after {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
