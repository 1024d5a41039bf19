"""Benchmark of LIBERO's cameras on the faithful MJX scenes (pirl.envs.libero_render).

One JSON line per (size, batch): both cameras (agentview, robot0_eye_in_hand) of a LIBERO task
rendered from official initial states, jitted and vmapped over the batch; needs the `libero` extra
(the task is built into pirl's cache on first use).

    .venv/bin/python benchmarks/libero_render.py [--suite libero_spatial] [--task 0]
        [--sizes 128 224] [--batches 1 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from mujoco import mjx

import pirl  # noqa: F401  (XLA CPU flag before the first JAX computation)
from pirl.envs import libero_render as lr
from pirl.envs import libero_scene as ls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    task = ls.load_task(args.suite, args.task)
    t0 = time.perf_counter()
    cams = lr.libero_cameras(task)
    prep_s = time.perf_counter() - t0
    mx = mjx.put_model(task.model)
    for batch in args.batches:
        data = [ls.init_data(task, mx, i % len(task.init_states)) for i in range(batch)]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *data)
        for size in args.sizes:
            fn = jax.jit(jax.vmap(lambda d, size=size: lr.render_libero_cameras(cams, d, size)))
            t0 = time.perf_counter()
            jax.block_until_ready(fn(stacked))
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                jax.block_until_ready(fn(stacked))
            dt = (time.perf_counter() - t0) / args.repeats
            print(
                json.dumps(
                    {
                        "bench": "libero_render",
                        "suite": args.suite,
                        "task": args.task,
                        "size": size,
                        "batch": batch,
                        "geoms": cams.scene.num_geoms,
                        "cameras": len(cams.camera_keys),
                        "s_per_call": round(dt, 4),
                        "env_frames_per_s": round(batch / dt, 1),
                        "compile_s": round(compile_s, 1),
                        "prepare_s": round(prep_s, 2),
                        "backend": jax.default_backend(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
