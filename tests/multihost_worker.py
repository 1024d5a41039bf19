"""One process of the multi-host test (tests/test_multihost.py runs it 1x or 2x on localhost).

Over a mesh of all devices of all processes (params FSDP-sharded over every device), on fixed
synthetic global batches:
- two PPO update steps of the tiny policy (`pirl.rl.synthetic`), then a collective train-state
  checkpoint save;
- one SFT train step (`pirl.sft.train.make_train_step`) of the same tiny π0.
Process 0 writes the final parameters to `<out>.npz` (PPO) and `<out>.sft.npz` (SFT, with the
step's loss and grad norm), and the initial ones to `<out>.init.npz` / `<out>.sft_init.npz`.
With `--restore` it instead restores the latest checkpoint in `--ckpt` onto this process's mesh and
writes those parameters to `<out>.npz`. With `--data <dataset>` it only runs the data check:
`data_check` below.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pirl.distributed import mesh as mesh_lib  # noqa: E402
from pirl.distributed import multihost  # noqa: E402

SFT_BATCH = 8
DATA_BATCH = 8


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
    sharding = mesh_lib.batch_sharding(mesh)
    rows = multihost.process_batch_rows(sharding, SFT_BATCH)
    batch = multihost.host_local_batch_to_global(jax.tree.map(lambda x: x[rows], batch), sharding, SFT_BATCH)
    train_step = jax.jit(
        sft_train.make_train_step(config, tx, mask),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    state, metrics = train_step(state, batch)
    write_params({"params": state["params"], "metrics": metrics}, mesh, out + ".sft.npz")


class RecordingDataset:
    """A dataset that records which frames this process read."""

    def __init__(self, dataset):
        self.dataset, self.read, self._lock = dataset, [], threading.Lock()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        with self._lock:
            self.read.append(int(index))
        return self.dataset[index]


def data_check(data_dir: str, out: str, ckpt: str) -> None:
    """SFT's data path over a mesh of every device: each process loads only its rows of each global
    batch (`process_batch_rows`), the loader assembles global arrays; after 2 batches each process
    saves its loader state, a fresh loader restores it and loads batch 3. Process 0 writes the
    gathered global batches to `<out>.data.npz` (batch_0, batch_1, the restored loader's batch_2,
    and batch_2 of the uninterrupted loader); every process writes the frames it read and its rows
    to `<out>.data.p<i>.json`."""
    from pirl.data.lerobot import LeRobotDataset
    from pirl.data.loader import BatchLoader

    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, -1)))
    sharding = mesh_lib.batch_sharding(mesh)
    rows = multihost.process_batch_rows(sharding, DATA_BATCH)

    def loader() -> BatchLoader:
        dataset = RecordingDataset(LeRobotDataset(data_dir, delta_timestamps={"actions": [0.0, 0.1, 0.2]}))
        keys = ("image", "state", "actions", "actions_is_pad", "index")
        return BatchLoader(
            dataset, lambda item: {k: item[k] for k in keys}, DATA_BATCH, num_workers=2, rows=rows
        )

    gather = jax.jit(lambda x: x, out_shardings=mesh_lib.replicated(mesh))
    first, second = loader(), loader()
    batches = {}
    for i, batch in enumerate(first.device_batches(sharding, num_batches=2)):
        batches[f"batch_{i}"] = gather(batch)
    first.save_state(ckpt)
    assert second.restore_state(ckpt) and second.position == first.position
    batches["resumed_batch_2"] = gather(next(second.device_batches(sharding, num_batches=1)))
    batches["continued_batch_2"] = gather(next(first.device_batches(sharding, num_batches=1)))
    first.close()
    second.close()
    if jax.process_index() == 0:
        flat = {f"{name}/{k}": np.asarray(v) for name, b in batches.items() for k, v in b.items()}
        np.savez(out + ".data.npz", **flat)
    record = {"rows": rows.tolist(), "first": first.dataset.read, "second": second.dataset.read}
    with open(f"{out}.data.p{jax.process_index()}.json", "w") as f:
        json.dump(record, f)


def train_rl_check(run_root: str) -> None:
    """The real trainer (`train_rl`) on a tiny π0 and a short toy_spatial MJX episode (1 environment
    per device, flat-colour frames instead of the ray caster), 2 global steps with an evaluation and
    a video at steps 0 and 2. Process 0 writes the step metrics it logged to `<run_root>.p0.json`."""
    import dataclasses

    from pirl.envs import make_env
    from pirl.models.config import Pi0Config
    from pirl.policies.config import FlowPolicyConfig
    from pirl.rl import trainer
    from pirl.rl.config import EnvSpec, RLConfig

    steps = 4  # two chunk steps of two control steps

    def render(data):
        color = (jnp.tanh(data.qpos[:3]) * 127 + 128).astype(jnp.uint8)
        return jnp.broadcast_to(color, (2, 28, 28, 3))

    devices = jax.device_count()
    cfg = RLConfig(
        name="multi",
        run_root=run_root,
        model=Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"), action_dim=8, action_horizon=2),
        policy=FlowPolicyConfig(num_steps=2, action_chunk=2, value_head_hidden=(16,)),
        env=EnvSpec(
            name="toy_spatial", num_envs=devices, image_size=28, max_episode_steps=steps, task_ids=(0,)
        ),
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=devices,
        total_steps=2,
        random_init=True,
        eval_interval=2,
        eval_episodes=devices,
        video_interval=2,
        save_interval=2,
    )
    env = make_env("toy_spatial", image_size=28, render_fn=render, max_steps=steps)
    last = trainer.train_rl(cfg, env=env)
    if jax.process_index() == 0:
        with open(f"{run_root}.p0.json", "w") as f:
            json.dump({"last_eval": last, "config": dataclasses.asdict(cfg)["name"]}, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="output prefix (no extension)")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--restore", action="store_true")
    parser.add_argument("--data", help="a LeRobot dataset: run only the data check")
    parser.add_argument(
        "--train-rl", action="store_true", help="run only the trainer check (runs under --out)"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    out = args.out.removesuffix(".npz")
    multihost.initialize()
    if args.train_rl:
        train_rl_check(out)
        print(f"done {jax.process_index()} after {time.perf_counter() - t0:.1f} s", flush=True)
        return
    if args.data:
        data_check(args.data, out, args.ckpt)
        print(f"done {jax.process_index()} after {time.perf_counter() - t0:.1f} s", flush=True)
        return

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
