"""Benchmark of LIBERO's cameras on the faithful MJX env (pirl.envs.libero_render), per look and backend.

One JSON line per (backend, look, size, batch): the env's `render` (both cameras, agentview and
robot0_eye_in_hand) from official initial states, jitted and vmapped over the batch, drawn by pirl's
JAX renderer or MJX's MuJoCo Warp one (`render_backend`; needs an NVIDIA GPU and the `warp` extra, else
one line says why it is unavailable), and with
`--chunk H` one line per batch for the physics of an H-step control chunk (`chunk_step` of a
render-free env) and, per (look, size, batch), the share of a chunk's time spent rendering (the
rollout renders once per chunk). Needs the `libero` extra (the task is built into pirl's cache on
first use).

    .venv/bin/python benchmarks/libero_render.py [--suite libero_spatial] [--task 0]
        [--looks primitives meshes] [--sizes 56 128] [--batches 1 16] [--repeats 3] [--chunk 5]
        [--backends jax warp]
    # on a GPU, Warp next to JAX at the RL batch: --batches 1024 --sizes 128 --chunk 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import jax
import jax.numpy as jnp
from mujoco import mjx

import pirl  # (XLA CPU flag before the first JAX computation)
from pirl.envs import libero_scene as ls
from pirl.envs.libero_mjx_env import make_libero_env
from pirl.envs.render_warp import check_warp_backend
from pirl.errors import UserError


def _timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first call s, mean s per later call)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return first, (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--looks", nargs="+", default=["primitives", "meshes"], choices=["primitives", "meshes"])
    p.add_argument("--sizes", nargs="+", type=int, default=[56, 128])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=5, help="control steps per chunk (0: no chunk timing)")
    p.add_argument("--backends", nargs="+", default=["jax", "warp"], choices=["jax", "warp"])
    args = p.parse_args()
    pirl.create_backends()  # XLA's CPU pool as pirl.train sizes it (vmapped physics hangs otherwise)
    task = ls.load_task(args.suite, args.task)
    mx = mjx.put_model(task.model)
    base = {
        "bench": "libero_render",
        "suite": args.suite,
        "task": args.task,
        "backend": jax.default_backend(),
    }
    chunk_s = {}
    if args.chunk:
        env = make_libero_env(args.suite, (args.task,), render=False, settle_steps=0)
        for batch in args.batches:
            states = jax.jit(jax.vmap(lambda i: env.reset_to(args.task, i)))(jnp.arange(batch) % 50)
            actions = jnp.zeros((batch, args.chunk, 7))
            first, dt = _timed(jax.jit(jax.vmap(env.chunk_step)), states, actions, repeats=args.repeats)
            chunk_s[batch] = dt
            rec = {**base, "what": "chunk_physics", "chunk_steps": args.chunk, "batch": batch,
                   "s_per_chunk": round(dt, 4), "compile_s": round(first - dt, 1)}  # fmt: skip
            print(json.dumps(rec), flush=True)
    backends = list(args.backends)
    if "warp" in backends:
        try:
            check_warp_backend(require_cuda=True)
        except UserError as e:
            print(json.dumps({**base, "what": "render", "render_backend": "warp", "unavailable": str(e)}))
            backends.remove("warp")
    n = min(max(args.batches), len(task.init_states))  # each official initial state once, then repeated
    inits = jax.tree.map(lambda *x: jnp.stack(x), *[ls.init_data(task, mx, i) for i in range(n)])
    for look, size, backend in itertools.product(args.looks, args.sizes, backends):  # Warp next to JAX
        t0 = time.perf_counter()
        env = make_libero_env(args.suite, (args.task,), image_size=size, look=look, render_backend=backend)
        build_s = time.perf_counter() - t0
        for batch in args.batches:
            idx = jnp.arange(batch) % n
            stacked = jax.tree.map(lambda x, idx=idx: x[idx], inits)
            first, dt = _timed(jax.jit(jax.vmap(env.render)), stacked, repeats=args.repeats)
            rec = {**base, "what": "render", "render_backend": backend, "look": look, "size": size,
                   "batch": batch, "s_per_call": round(dt, 4), "env_frames_per_s": round(batch / dt, 1),
                   "compile_s": round(first - dt, 1), "build_s": round(build_s, 1)}  # fmt: skip
            if batch in chunk_s:
                rec["render_share_of_chunk"] = round(dt / (dt + chunk_s[batch]), 3)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
