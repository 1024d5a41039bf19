"""LIBERO drawn with its real meshes and textures by pirl's JAX renderer, against the real LIBERO.

The real LIBERO (a spawned process, osmesa) resets a task to an init state and settles it as
`pirl.envs.libero_check --checks images` does; pirl renders LIBERO's own compiled model at that
qpos in the env's meshes look (`libero_render.libero_cameras(task, LiberoRenderConfig(look="meshes",
mesh_max_triangles=budget))`, the one code path the env and libero_check use), per mesh triangle
budget. Prints one JSON line per
(budget, camera): PSNR / SSIM against LIBERO's raw image and against MuJoCo's own render of the
same model, render cost; `--png-dir` saves real | pirl | MuJoCo side by side (upright).

    MUJOCO_GL=osmesa .venv/bin/python benchmarks/render_libero_meshes.py [--suite libero_spatial]
        [--task 0] [--init 0] [--size 128] [--budgets 300,2000] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib
import time

import jax
import mujoco
import numpy as np

from pirl.envs import libero_check as lc
from pirl.envs import libero_render as lr
from pirl.envs import libero_scene as ls
from pirl.envs import render as rd
from pirl.envs.build_libero import task_dir

SETTLE_STEPS = 10
"""Settling steps after set_init_state, as libero_check's image check."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--init", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budgets", default="300,2000", help="RenderConfig.mesh_max_triangles values")
    parser.add_argument("--png-dir", default="")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")  # MuJoCo's GL backend is chosen at import, per process
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        real = pool.submit(
            lc.real_images, args.suite, args.task, args.init, SETTLE_STEPS, [args.size], lr.LIBERO_CAMERAS
        ).result()
    model = mujoco.MjModel.from_xml_path(str(task_dir(args.suite, args.task) / "scene.xml"))
    data = mujoco.MjData(model)
    data.qpos[:] = real["qpos"]
    mujoco.mj_forward(model, data)
    kin = rd.host_kinematics(data)  # body poses: the MJX scene has LIBERO's bodies
    task = ls.load_task(args.suite, args.task)
    for budget in (int(b) for b in args.budgets.split(",")):
        t0 = time.perf_counter()
        cams = lr.libero_cameras(task, lr.LiberoRenderConfig(look="meshes", mesh_max_triangles=budget))
        scene = cams.scene
        build_s = time.perf_counter() - t0
        fn = jax.jit(lambda k, cams=cams: lr.render_upright(cams, k, args.size))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(kin))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = np.asarray(fn(kin))
        render_s = time.perf_counter() - t0
        for i, key in enumerate(lr.LIBERO_CAMERAS):
            ours = images[i][::-1]  # LIBERO's raw orientation (rows reversed)
            real_rgb = real["images"][args.size][key]
            mj_rgb = real["mujoco"][args.size][key][0]
            record = {
                "bench": "render_libero_meshes",
                "suite": args.suite,
                "task": args.task,
                "init": args.init,
                "size": args.size,
                "camera": key,
                "mesh_budget": budget,
                "triangles": scene.num_triangles,
                "geoms": scene.num_geoms,
                "psnr_db": round(lc.psnr(real_rgb, ours), 2),
                "ssim": round(lc.ssim(real_rgb, ours), 3),
                "vs_mujoco_psnr_db": round(lc.psnr(mj_rgb, ours), 2),
                "vs_mujoco_ssim": round(lc.ssim(mj_rgb, ours), 3),
                "build_s": round(build_s, 1),
                "compile_s": round(compile_s, 1),
                "render_s_both_cameras": round(render_s, 3),
            }
            print(json.dumps(record), flush=True)
            if args.png_dir:
                from PIL import Image

                path = pathlib.Path(args.png_dir)
                path.mkdir(parents=True, exist_ok=True)
                row = np.concatenate([real_rgb, ours, mj_rgb], axis=1)[::-1]
                name = (
                    f"{args.suite}_task{args.task}_init{args.init}_{key.removesuffix('_image')}_{budget}.png"
                )
                Image.fromarray(np.ascontiguousarray(row)).save(path / name)


if __name__ == "__main__":
    main()
