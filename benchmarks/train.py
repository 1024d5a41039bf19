"""RL training-step throughput per phase (rollout, advantages, update), as JSON lines.

    python benchmarks/train.py                      # tiny π0, MJX env, CPU
    python benchmarks/train.py --full --num-envs 64 --image-size 224   # full π0 (bf16) on a GPU
    python benchmarks/train.py --backend libero --workers 1,2,4 --stages 1,2   # real LIBERO

Each line: {"phase", "seconds", "samples_per_s", ...}; the update line also reports model FLOPs
utilisation (MFU) from XLA's cost analysis against `--peak-tflops` (989 = H100 SXM bf16 dense).

`--backend libero` (needs the `libero` extra) times host rollouts of the real LIBERO against the
number of worker processes and pipeline stages: one "libero_rollout" line per (workers, stages)
with env-steps/s (resets included), rollout seconds, the policy's time, the time the host waited
for the simulators, the workers' busy time, the pipelined overlap (the share of the policy's time
the workers spent stepping) and the control steps per second of one worker's stepping (resets
excluded); plus "libero_bare_env" lines: one LIBERO env stepped in a loop with both cameras
rendered every step (the usual figure) and only at chunk ends (what the pool does).
`--auto-reset` times MJX rollouts with RLinf's auto-reset (episodes of half a rollout, so every
environment resets and bootstraps once per rollout): the "rollout" line then has "auto_reset": true.
`--policy-latency-ms` adds a sleep to every policy call, emulating an accelerator's latency on a
CPU-only machine (where the tiny model competes with the simulators for the same cores).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn, *args, repeats: int):
    out = jax.block_until_ready(fn(*args))  # compile + warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0) / repeats


def _flops(jitted, *args) -> float | None:
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best-effort (not every backend reports it)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size π0 in bf16 (needs a GPU/TPU)")
    parser.add_argument("--env", default="toy_spatial")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--chunk-steps", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--auto-reset", action="store_true", help="mjx: auto-resetting rollouts")
    parser.add_argument("--backend", choices=("mjx", "libero"), default="mjx")
    parser.add_argument("--suite", default="libero_spatial", help="libero: the suite")
    parser.add_argument("--workers", default="1,2,4", help="libero: worker counts (0 = the core count)")
    parser.add_argument("--envs-per-worker", type=int, default=2, help="libero: environments per worker")
    parser.add_argument("--stages", default="1,2", help="libero: pipeline stage counts")
    parser.add_argument("--action-chunk", type=int, default=5, help="libero: actions per chunk")
    parser.add_argument(
        "--policy-latency-ms", type=float, default=0.0, help="libero: emulated policy latency"
    )
    parser.add_argument("--bare-steps", type=int, default=20, help="libero: steps of the bare-env loop")
    args = parser.parse_args()
    if args.backend == "libero":
        libero_main(args)
        return

    from pirl.data.configs import get_data_config
    from pirl.envs.env import make_env
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.policies.config import FlowPolicyConfig
    from pirl.policies.env_io import make_env_adapter
    from pirl.policies.masks import trainable_mask
    from pirl.rl import rollout as rollout_lib
    from pirl.rl import update as update_lib
    from pirl.rl.config import EnvSpec, RLConfig
    from pirl.rl.optim import make_optimizer

    if args.full:
        model = Pi0Config(image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
        policy = FlowPolicyConfig()
    else:
        model = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"))
        policy = FlowPolicyConfig(value_head_hidden=(64, 64))
    cfg = RLConfig(
        model=model,
        policy=policy,
        env=EnvSpec(
            name=args.env,
            num_envs=args.num_envs,
            image_size=args.image_size,
            auto_reset=args.auto_reset,
            # auto-reset: every episode ends (time limit) halfway through the rollout
            max_episode_steps=max(1, args.chunk_steps // 2) * policy.action_chunk
            if args.auto_reset
            else None,
        ),
        chunk_steps=args.chunk_steps,
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=args.minibatch,
    )
    env = make_env(cfg.env.name, image_size=cfg.env.image_size, max_steps=cfg.max_episode_steps)
    tokens = np.zeros(model.max_token_len, np.int32)
    tokens[:4] = [2, 5, 6, 7]
    adapter = make_env_adapter(
        get_data_config("pi0_toy"),
        env.prompts,
        lambda p: (tokens, tokens > 0),
        None,
        action_chunk=policy.action_chunk,
        model_image_keys=model.image_keys,
        env_cameras=env.image_keys,
    )
    params = jax.jit(lambda k: flow_policy.init_policy_params(policy, model, k))(jax.random.key(0))
    n = args.num_envs
    state = jax.jit(jax.vmap(env.reset_to))(jnp.zeros(n, jnp.int32), jnp.arange(n) % env.num_init_states)

    roll = jax.jit(
        lambda p, s, k: rollout_lib.rollout(
            p,
            adapter,
            s,
            k,
            env=env,
            policy_cfg=policy,
            model_cfg=model,
            chunk_steps=args.chunk_steps,
            env_spec=cfg.env,
            reset_pools=(jnp.zeros(1, jnp.int32), jnp.arange(env.num_init_states))
            if args.auto_reset
            else None,
            adv_cfg=cfg.adv,
        )
    )
    out, t_roll = _timed(roll, params, state, jax.random.key(1), repeats=args.repeats)
    env_steps = n * args.chunk_steps * policy.action_chunk
    print(
        json.dumps(
            {
                "phase": "rollout",
                "seconds": t_roll,
                "env_steps_per_s": env_steps / t_roll,
                "chunk_samples_per_s": n * args.chunk_steps / t_roll,
                "num_envs": n,
                "image_size": args.image_size,
                "auto_reset": args.auto_reset,
                "full": args.full,
                "device": jax.devices()[0].device_kind,
            }
        )
    )

    adv = jax.jit(lambda tr, v: update_lib.compute_advantages(cfg, tr, v))
    (traj, _, a, r, valid), t_adv = _timed(adv, out.trajectory, out.final_value, repeats=args.repeats)
    print(
        json.dumps({"phase": "advantages", "seconds": t_adv, "samples_per_s": n * args.chunk_steps / t_adv})
    )

    batch = update_lib.flatten_transitions(traj, a, r, valid)
    num = batch.mask.shape[0]
    trainable = trainable_mask(params, policy, model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    opt_state = jax.jit(optimizer.init)(params)
    upd = jax.jit(
        lambda p, o, s, b, k: update_lib.ppo_update(
            p, o, s, b, k, cfg=cfg, adapter=adapter, optimizer=optimizer, trainable_mask=trainable
        )
    )
    upd_args = (params, opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(2))
    flops = _flops(upd, *upd_args)
    _, t_upd = _timed(upd, *upd_args, repeats=args.repeats)
    record = {"phase": "update", "seconds": t_upd, "samples_per_s": num / t_upd, "transitions": num}
    if flops:
        record["tflops_per_s"] = flops / t_upd / 1e12
        record["mfu"] = flops / t_upd / (args.peak_tflops * 1e12)
    print(json.dumps(record))
    print(
        json.dumps(
            {
                "phase": "global_step",
                "seconds": t_roll + t_adv + t_upd,
                "samples_per_s": num / (t_roll + t_adv + t_upd),
            }
        )
    )


def bare_env_rate(suite: str, image_size: int, steps: int, chunk: int) -> list[dict]:
    """Control steps/s of one LIBERO env stepped in a loop: cameras every step, and at chunk ends only."""
    from pirl.envs.libero_pool import EpisodeSpec, LiberoPool

    out = []
    for every_step in (True, False):
        with LiberoPool(1, 0, resolution=image_size, settle_steps=0, render_every_step=every_step) as pool:
            pool.reset([0], [EpisodeSpec(suite, 0, 0, 0)])
            rng = np.random.default_rng(0)
            chunks = [rng.uniform(-0.3, 0.3, (chunk, 7)) for _ in range(max(1, steps // chunk))]
            t0 = time.perf_counter()
            for c in chunks:
                pool.step([0], [c])
            seconds = time.perf_counter() - t0
        out.append(
            {
                "phase": "libero_bare_env",
                "render": "every_step" if every_step else "chunk_end",
                "steps_per_s": len(chunks) * chunk / seconds,
                "image_size": image_size,
                "cameras": 2,
            }
        )
    return out


def libero_main(args) -> None:
    """Host rollouts of the real LIBERO against workers and pipeline stages (see the module doc)."""
    import dataclasses

    from pirl.distributed import mesh as mesh_lib
    from pirl.envs.libero_pool import EpisodeSpec, default_num_workers
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.policies.config import FlowPolicyConfig
    from pirl.rl.config import EnvSpec, RLConfig
    from pirl.rl.host_rollout import HostCollector, LiberoTrainEnv
    from pirl.rl.synthetic import toy_env_adapter

    for record in bare_env_rate(args.suite, args.image_size, args.bare_steps, args.action_chunk):
        print(json.dumps(record), flush=True)
    if args.full:
        model = Pi0Config()
    else:
        model = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"), image_resolution=(56, 56))
    policy = FlowPolicyConfig(action_chunk=args.action_chunk, value_head_hidden=(64, 64))
    params = jax.jit(lambda k: flow_policy.init_policy_params(policy, model, k))(jax.random.key(0))
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 1)), devices=jax.devices()[:1])
    for workers in (int(w) for w in args.workers.split(",")):
        workers = workers or default_num_workers(1 << 30)
        num_envs = workers * args.envs_per_worker
        base = RLConfig(
            model=model,
            policy=policy,
            env=EnvSpec(
                name=args.suite,
                backend="libero",
                num_envs=num_envs,
                image_size=args.image_size,
                num_workers=workers,
                task_ids=(0,),
            ),
            chunk_steps=args.chunk_steps,
            rollout_epochs=1,
            update_epochs=1,
            global_batch_size=num_envs * args.chunk_steps,
        )
        env = LiberoTrainEnv(base)
        adapter = toy_env_adapter(base, env.prompts, rotate_images=True)
        specs = [EpisodeSpec(args.suite, 0, i % env.num_init_states, 0) for i in range(num_envs)]
        try:
            for stages in (int(s) for s in args.stages.split(",")):
                if num_envs % stages:
                    continue
                cfg = dataclasses.replace(base, env=dataclasses.replace(base.env, pipeline_stage_num=stages))
                collector = HostCollector(cfg, env, mesh)
                collector.policy_latency_s = args.policy_latency_ms / 1000
                collector.play(params, adapter, jax.random.key(1), "train", specs)  # start-up + compile
                records = [
                    collector.play(params, adapter, jax.random.key(2 + r), "train", specs)
                    for r in range(args.repeats)
                ]
                wall = sum(r.timing.wall for r in records)
                policy_s = sum(r.timing.policy for r in records)
                busy = sum(r.timing.env_busy for r in records)
                steps = sum(r.timing.control_steps for r in records)
                print(
                    json.dumps(
                        {
                            "phase": "libero_rollout",
                            "workers": workers,
                            "envs": num_envs,
                            "stages": stages,
                            "chunk_steps": args.chunk_steps,
                            "rollout_seconds": wall / args.repeats,
                            "env_steps_per_s": steps / wall,
                            "policy_seconds": policy_s / args.repeats,
                            "env_wait_seconds": sum(r.timing.env_wait for r in records) / args.repeats,
                            "env_busy_seconds": busy / args.repeats,
                            # Stepping alone (resets excluded), per worker: compare with the bare env loop.
                            "steps_per_worker_second": steps / sum(r.timing.step_busy for r in records),
                            "pipeline_overlap": min(1.0, max(0.0, busy + policy_s - wall) / policy_s),
                            "policy_latency_ms": args.policy_latency_ms,
                            "image_size": args.image_size,
                            "full": args.full,
                            "device": jax.devices()[0].device_kind,
                        }
                    ),
                    flush=True,
                )
        finally:
            env.close()


if __name__ == "__main__":
    main()
