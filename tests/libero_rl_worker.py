"""The real-LIBERO RL scenarios of tests/test_libero_rl.py, in one process with 2 CPU devices.

The suite's 8 fake devices would need 8+ environments per pipeline stage; here a mesh of 2 devices
holds 4 environments (2 LIBERO workers x 2 environments, libero_spatial task 0, initial states
0-3, 64x64 renders, 4-step episodes of 2-step chunks), shared by every scenario:

1. rollouts: the host collector with 1 and with 2 pipeline stages (sample_micro_batch = 1: one environment per device per forward) from the
   same key -> <out>/rollouts.npz (the flat transitions of each).
2. train: PPO through the trainer (`env.backend = "libero"`): "full" runs 2 steps with 2 stages,
   evaluations at steps 0 and 2, and a worker SIGKILLed in the middle of step 1's rollout; "cut"
   runs 1 step with 1 stage and "cut" --resume continues it to step 2 -> run dirs in <out>/runs.

With `--processes N --process-id i` (N > 1) only scenario 1's single-stage rollout runs, on this
process's share of the environments (multi-host; a test compares it with the 1-process run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.rl import pi0_demo_cpu  # noqa: E402
from pirl.distributed import mesh as mesh_lib  # noqa: E402
from pirl.rl.config import EnvSpec, RLConfig, WarmStartConfig  # noqa: E402


def tiny_libero_config(run_root: str, name: str, **overrides) -> RLConfig:
    """The tiny π0 of the CPU demo (28x28 inputs) on 4 real-LIBERO environments, 2-step chunks."""
    demo = pi0_demo_cpu()
    fields = dict(
        name=name,
        run_root=run_root,
        model=dataclasses.replace(demo.model, image_resolution=(28, 28)),
        policy=dataclasses.replace(demo.policy, action_chunk=2),
        env=EnvSpec(
            name="libero_spatial",
            backend="libero",
            num_envs=4,
            image_size=64,
            max_episode_steps=4,
            task_ids=(0,),
            init_ids=(0, 1, 2, 3),
            num_workers=2,
            pipeline_stage_num=2,
            settle_steps=2,
            sample_micro_batch=1,
            worker_timeout_s=600.0,
        ),
        warm_start=WarmStartConfig(),
        random_init=True,
        rollout_epochs=1,
        global_batch_size=8,
        update_epochs=1,
        total_steps=2,
        eval_interval=0,
        eval_episodes=4,
        video_interval=2,
        save_interval=1,
        compilation_cache_dir=str(Path(run_root).parent / "xla_cache"),
    )
    fields.update(overrides)
    return RLConfig(**fields)


def _with_env(cfg: RLConfig, **env_overrides) -> RLConfig:
    return dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, **env_overrides))


def _gather(tree, mesh):
    """Every leaf of a mesh-sharded tree as one numpy array (process 0's copy)."""
    full = jax.jit(lambda x: x, out_shardings=mesh_lib.replicated(mesh))(tree)
    return jax.tree.map(np.asarray, full)


def rollouts(out: Path, env, cfg: RLConfig, stages: tuple[int, ...]) -> None:
    """Scenario 1: the same rollout with each stage count; writes the flat transitions."""
    from pirl.policies import flow_policy
    from pirl.rl.host_rollout import HostCollector
    from pirl.rl.synthetic import toy_env_adapter

    mesh = mesh_lib.make_mesh(cfg.mesh)
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    adapter = toy_env_adapter(cfg, env.prompts, rotate_images=True)
    task_pool, init_pool = np.asarray([0], np.int32), np.asarray([0, 1, 2, 3], np.int32)
    arrays, timings = {}, {}
    for s in stages:
        collector = HostCollector(_with_env(cfg, pipeline_stage_num=s), env, mesh)
        t0 = time.perf_counter()
        transitions, metrics = collector.collect(params, adapter, jax.random.key(7), task_pool, init_pool)
        timings[s] = time.perf_counter() - t0
        for path, value in jax.tree_util.tree_leaves_with_path(_gather(transitions, mesh)):
            arrays[f"stages{s}/{jax.tree_util.keystr(path)}"] = value
        arrays[f"stages{s}/metric/env_success_once"] = np.asarray(metrics["env/success_once"])
    if jax.process_index() == 0:
        np.savez(out / f"rollouts_p{jax.process_count()}.npz", **arrays)
    print(json.dumps({"rollout_seconds": timings}), flush=True)


def train(out: Path, env, base: RLConfig) -> None:
    """Scenario 2: PPO end to end, a worker killed mid-rollout, checkpoints and --resume."""
    from pirl.rl import trainer

    pool = env.pool
    original = pool.submit_step
    calls = {"n": 0}

    def kill_in_step_one(slots, chunks):
        ticket = original(slots, chunks)
        calls["n"] += 1
        if calls["n"] == 6:  # step 1's rollout, a chunk in flight (the step-0 evaluation made 4 requests)
            pool.kill_worker(1)
        return ticket

    pool.submit_step = kill_in_step_one
    try:
        trainer.train_rl(dataclasses.replace(base, name="full", eval_interval=2), env=env)
    finally:
        pool.submit_step = original
    cut = _with_env(dataclasses.replace(base, name="cut", total_steps=1), pipeline_stage_num=1)
    trainer.train_rl(cut, env=env)
    trainer.train_rl(dataclasses.replace(cut, total_steps=2, resume=True), env=env)
    print(json.dumps({"restarts": pool.restarts}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="")
    args = parser.parse_args()
    if args.processes > 1:
        jax.distributed.initialize(args.coordinator, num_processes=args.processes, process_id=args.process_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pirl.rl.host_rollout import LiberoTrainEnv

    workers = max(1, 2 // args.processes)
    cfg = _with_env(tiny_libero_config(str(out / "runs"), "rollouts"), num_workers=workers)
    env = LiberoTrainEnv(cfg)
    try:
        if args.processes > 1:
            rollouts(out, env, cfg, stages=(1,))
        else:
            rollouts(out, env, cfg, stages=(1, 2))
            train(out, env, cfg)
    finally:
        env.close()


if __name__ == "__main__":
    main()
