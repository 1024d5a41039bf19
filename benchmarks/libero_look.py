"""How close pirl's LIBERO look is to LIBERO's own frames, over many states (JSON lines).

Two references:
- `--reference mujoco` (default; cheap, so all 50 initial states): MuJoCo's own OpenGL render
  (osmesa, spawned process) of LIBERO's compiled model as robosuite draws it (geom group 0 hidden) at
  each official initial state's qpos. That is LIBERO's renderer on LIBERO's model: at the same
  settled state the real LIBERO's frame and this render agree to 50-63 dB (`libero_check --checks
  images`, field real_vs_mujoco_raw_psnr_db), so what differs from it is pirl's renderer.
- `--episode`: the scripted pick-and-place (`pirl.envs.expert`, as `libero_check --checks
  pick_place`) run in the real LIBERO from one initial state, with its camera frames every
  `--every` control steps; pirl renders the real simulator's qpos at those steps.

pirl's side: `libero_cameras(task, LiberoRenderConfig(look=...))`, the env's path (host
kinematics of LIBERO's model: the MJX scene has LIBERO's bodies), raw rows as LIBERO's. One line
per (suite, task, size, camera, look): mean / min PSNR and SSIM over the states, per-state lists.

    MUJOCO_GL=osmesa .venv/bin/python benchmarks/libero_look.py --suite libero_object --tasks 0 1
        [--inits 0-49] [--sizes 128 224] [--looks meshes] [--episode] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import time

import jax
import mujoco
import numpy as np

import pirl  # noqa: F401  (XLA CPU flag before the first JAX computation)
from pirl.envs import libero_check as lc
from pirl.envs import libero_render as lr
from pirl.envs import libero_scene as ls
from pirl.envs import render as rd
from pirl.envs.build_libero import task_dir


def mujoco_frames(suite: str, task_id: int, qpos: np.ndarray, sizes: list[int]) -> dict:
    """{size: {key: u8[N, S, S, 3]}}: `libero_check.mujoco_views` (raw rows) at each qpos row."""
    m = mujoco.MjModel.from_xml_path(str(task_dir(suite, task_id) / "scene.xml"))
    out = {}
    for size in sizes:
        views = [lc.mujoco_views(m, q, size, lr.LIBERO_CAMERAS) for q in qpos]
        out[size] = {key: np.stack([v[key][0] for v in views]) for key in lr.LIBERO_CAMERAS}
    return out


def real_episode(suite: str, task_id: int, init_id: int, size: int, steps: int, every: int) -> dict:
    """libero_check's scripted plan in the real LIBERO from `init_id`, recording every `every` steps
    (qpos, phase, raw frames at `size`). Run it in a spawned process (MuJoCo's GL backend)."""
    from pirl.envs.expert import LiberoPlanConfig

    task = ls.load_task(suite, task_id)
    geo = lc.pick_place_geometry(task.model, *lc.pick_place_goal(task.meta))
    rec = lc.real_pick_place(
        suite,
        task_id,
        [init_id],
        lc.SETTLE_STEPS,
        steps,
        geo,
        LiberoPlanConfig(),
        record_every=every,
        size=size,
    )[0]
    traj = rec["trajectory"]
    return {"qpos": np.stack(traj["qpos"]), "phases": traj["phase"],
            "frames": {k: np.stack(v) for k, v in traj["frames"].items()}}  # fmt: skip


def _spawned(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    os.environ.setdefault("MUJOCO_GL", "osmesa")  # inherited by the child at spawn
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def _pirl_frames(
    task: ls.LiberoTask, cfg: lr.LiberoRenderConfig, qpos: np.ndarray, size: int
) -> tuple[dict, float, float]:
    """({key: u8[N, S, S, 3]} raw rows, compile s, render s per state) of pirl's look at each qpos."""
    cams = lr.libero_cameras(task, cfg)
    fn = jax.jit(lambda k: lr.render_libero_cameras(cams, k, size))
    compiled = mujoco.MjModel.from_xml_path(str(task_dir(task.suite, task.task_id) / "scene.xml"))
    data = mujoco.MjData(compiled)
    out: dict = {key: [] for key in lr.LIBERO_CAMERAS}
    compile_s = render_s = 0.0
    for i, q in enumerate(qpos):
        data.qpos[:] = q
        mujoco.mj_kinematics(compiled, data)
        t0 = time.perf_counter()
        images = jax.device_get(fn(rd.host_kinematics(data)))
        if i == 0:
            compile_s = time.perf_counter() - t0
        else:
            render_s += time.perf_counter() - t0
        for key in lr.LIBERO_CAMERAS:
            out[key].append(np.asarray(images[key]))
    return {k: np.stack(v) for k, v in out.items()}, compile_s, render_s / max(len(qpos) - 1, 1)


def _inits(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--inits", default="0-49", help="initial states: 'a-b' or 'a,b,c'")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--looks", nargs="+", default=["meshes"], choices=["primitives", "meshes"])
    parser.add_argument(
        "--episode", action="store_true", help="the scripted episode in the real LIBERO instead"
    )
    parser.add_argument(
        "--steps", type=int, default=lc.PICK_PLACE_STEPS, help="--episode: control steps at most"
    )
    parser.add_argument("--every", type=int, default=20, help="--episode: a frame every this many steps")
    parser.add_argument("--supersample", type=int, default=1, help="rays per pixel side (anti-aliasing)")
    parser.add_argument("--no-reflections", action="store_true", help="leave out MuJoCo's mirror pass")
    parser.add_argument("--png-dir", default="", help="save LIBERO | pirl per look side by side (upright)")
    args = parser.parse_args()

    for task_id in args.tasks:
        task = ls.load_task(args.suite, task_id)
        if args.episode:
            init = _inits(args.inits)[0]
            states = {size: _spawned(real_episode, args.suite, task_id, init, size, args.steps, args.every)
                      for size in args.sizes}  # fmt: skip
            refs = {size: states[size]["frames"] for size in args.sizes}
            qpos = {size: states[size]["qpos"] for size in args.sizes}
            labels = {size: [f"step{i * args.every}_{p}" for i, p in enumerate(states[size]["phases"])]
                      for size in args.sizes}  # fmt: skip
        else:
            inits = _inits(args.inits)
            q = task.init_states[inits][:, 1 : 1 + task.model.nq]
            refs = _spawned(mujoco_frames, args.suite, task_id, q, args.sizes)
            qpos = {size: q for size in args.sizes}
            labels = {size: [f"init{i}" for i in inits] for size in args.sizes}
        for look in args.looks:
            for size in args.sizes:
                cfg = lr.LiberoRenderConfig(
                    look=look, supersample=args.supersample, reflections=not args.no_reflections
                )
                ours, compile_s, render_s = _pirl_frames(task, cfg, qpos[size], size)
                for key in lr.LIBERO_CAMERAS:
                    ref, img = refs[size][key], ours[key]
                    p = [lc.psnr(a, b) for a, b in zip(ref, img, strict=True)]
                    s = [lc.ssim(a, b) for a, b in zip(ref, img, strict=True)]
                    record = {
                        "bench": "libero_look", "suite": args.suite, "task": task_id, "look": look,
                        "reference": "real_episode" if args.episode else "mujoco", "size": size,
                        "supersample": args.supersample, "reflections": not args.no_reflections,
                        "camera": key, "states": len(p), "psnr_db_mean": round(float(np.mean(p)), 2),
                        "psnr_db_min": round(float(np.min(p)), 2), "ssim_mean": round(float(np.mean(s)), 3),
                        "ssim_min": round(float(np.min(s)), 3), "labels": labels[size],
                        "psnr_db": [round(x, 2) for x in p], "ssim": [round(x, 3) for x in s],
                        "compile_s": round(compile_s, 1), "render_s_both_cameras": round(render_s, 3),
                    }  # fmt: skip
                    print(json.dumps(record), flush=True)
                    if args.png_dir:
                        from PIL import Image

                        path = pathlib.Path(args.png_dir)
                        path.mkdir(parents=True, exist_ok=True)
                        for i, label in enumerate(labels[size]):
                            if not args.episode and i > 0:
                                break  # the first state only
                            row = np.concatenate([ref[i], img[i]], axis=1)[::-1]
                            name = f"{args.suite}_task{task_id}_{label}_{key.removesuffix('_image')}_{size}_{look}"
                            name += f"_ss{args.supersample}" if args.supersample > 1 else ""
                            name += "_norefl" if args.no_reflections else ""
                            name += ".png"
                            Image.fromarray(np.ascontiguousarray(row)).save(path / name)


if __name__ == "__main__":
    main()
