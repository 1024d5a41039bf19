"""The faithful LIBERO MJX env (`make_env("libero_spatial", task_ids=(0,))`): batched reset and step.

    python benchmarks/libero_mjx_env.py --suite libero_spatial --tasks 0 --num-envs 1 2 4 16 --steps 5 [--solver 30 40] [--max-wall-growth inf]

`--tasks 0 1 ... 9`: one env over several tasks that share a scene (libero_spatial, libero_goal), env i
running task tasks[i % len(tasks)].

Prints one JSON object per line per batch size: the first (compiling) calls of the vmapped
`reset_to` (10 settle steps inside) and `step`, then env-steps/s over `--steps` timed calls
(physics + OSC + success predicates, no cameras unless --render).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp

import pirl  # XLA CPU flags before JAX starts
from pirl.envs import make_env
from pirl.envs.libero_mjx_env import shared_scene
from pirl.envs.libero_scene import SceneConfig


def bench(
    suite: str,
    tasks: tuple[int, ...],
    num_envs: int,
    steps: int,
    render: bool,
    size: int,
    batching: str,
    scene: SceneConfig,
) -> dict:
    env = make_env(suite, task_ids=tasks, image_size=size, render=render, batching=batching, scene=scene)
    reset = jax.jit(env.batched(env.reset_to))
    step = jax.jit(env.batched(env.step))
    t0 = time.perf_counter()
    rows = jnp.arange(num_envs, dtype=jnp.int32)
    state = reset(jnp.asarray(tasks, jnp.int32)[rows % len(tasks)], rows % env.num_init_states)
    jax.block_until_ready(state)
    reset_s = time.perf_counter() - t0
    actions = jax.random.uniform(jax.random.PRNGKey(0), (steps + 2, num_envs, 7), minval=-0.3, maxval=0.3)
    t0 = time.perf_counter()
    # two untimed calls: the second may compile again on the step's own output layout (docs/osc.md)
    state = step(state, actions[0])
    state = step(state, actions[1])
    jax.block_until_ready(state)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        state = step(state, actions[k + 2])
    jax.block_until_ready(state)
    dt = time.perf_counter() - t0
    return {
        "bench": "libero_mjx_env",
        "suite": suite,
        "tasks": list(tasks),
        "backend": jax.default_backend(),
        "num_envs": num_envs,
        "render": render,
        "batching": batching,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_cpu_threads": os.environ.get("PIRL_XLA_CPU_THREADS", "1"),
        "solver_iterations": scene.solver_iterations,
        "grip_condim": scene.grip_condim,
        "max_wall_growth": shared_scene(scene, suite, tasks).for_task(suite, tasks[0]).max_wall_growth,
        "ngeom": env.task.model.ngeom,
        "npair": env.task.model.npair,
        "ls_iterations": scene.ls_iterations,
        "max_geom_pairs": scene.max_geom_pairs,
        "max_contact_points": scene.max_contact_points,
        "steps": steps,
        "reset_first_call_s": round(reset_s, 1),
        "step_first_two_calls_s": round(first_s, 1),
        "env_steps_per_s": round(num_envs * steps / dt, 2),
        "ms_per_batched_step": round(1000 * dt / steps, 2),
        "finite": bool(jnp.isfinite(state.data.qpos).all()),
        "success": int(state.info["success"].sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", "--task", type=int, nargs="+", default=[0], help="task ids (one env over all)")
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--render", action="store_true", help="render both cameras every step")
    p.add_argument("--size", type=int, default=128, help="image side with --render")
    p.add_argument("--batching", default="vmap", choices=("vmap", "map"), help="how envs are batched")
    p.add_argument("--solver", nargs=2, type=int, default=None, metavar=("ITERATIONS", "LS_ITERATIONS"),
                   help="the scene's solver and line-search iterations (default: SceneConfig's)")  # fmt: skip
    p.add_argument("--caps", nargs=2, type=int, default=None, metavar=("PAIRS", "POINTS"),
                   help="the scene's max_geom_pairs and max_contact_points (default: SceneConfig's)")  # fmt: skip
    p.add_argument("--grip-condim", type=int, default=None, choices=(3, 4, 6),
                   help="condim of the gripper's pairs (default: SceneConfig's)")  # fmt: skip
    p.add_argument("--max-wall-growth", type=float, default=None,
                   help="SceneConfig.max_wall_growth (inf: the k-means fit before i15-bowl)")  # fmt: skip
    args = p.parse_args()
    scene = SceneConfig()
    if args.max_wall_growth is not None:
        scene = dataclasses.replace(scene, max_wall_growth=args.max_wall_growth, task_wall_growth=())
    if args.grip_condim is not None:
        scene = dataclasses.replace(scene, grip_condim=args.grip_condim)
    if args.solver is not None:
        scene = dataclasses.replace(scene, solver_iterations=args.solver[0], ls_iterations=args.solver[1])
    if args.caps is not None:
        scene = dataclasses.replace(scene, max_geom_pairs=args.caps[0], max_contact_points=args.caps[1])
    pirl.create_backends()  # XLA's CPU pool as pirl.train sizes it (PIRL_XLA_CPU_THREADS)
    for n in args.num_envs:
        print(
            json.dumps(
                bench(
                    args.suite, tuple(args.tasks), n, args.steps, args.render, args.size, args.batching, scene
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
