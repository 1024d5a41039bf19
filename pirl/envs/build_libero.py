"""Build LIBERO's own task scenes into pirl's cache, from the installed LIBERO package.

For each task, LIBERO's env is built once on the host as LIBERO builds it (BDDL file -> robosuite
MJCF with LIBERO's object/fixture XML, meshes and textures, robosuite's Panda), reset with a fixed
numpy seed (the seed places the static fixtures), and the MJCF MuJoCo compiled is saved with the
task's facts: prompt, BDDL text, the 50 official initial states, the joint layout. Nothing here is
committed: the files go to a cache directory (default ~/.cache/pirl/libero_mjx, or
$PIRL_LIBERO_MJX_CACHE) and `pirl.envs.libero_scene` turns them into MJX models.

    python -m pirl.envs.build_libero                          # all four suites, 40 tasks
    python -m pirl.envs.build_libero --suite libero_spatial --tasks 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import time
from typing import Any

import numpy as np

from pirl.errors import UserError

FAITHFUL_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
"""The LIBERO suites pirl builds MJX stand-ins for."""

BUILD_SEED = 0
"""numpy seed before LIBERO's reset when building (places the static fixtures; the check uses it too)."""

SETTLE_STEPS = 10
"""No-op control steps after a reset (openpi's LIBERO evaluation waits 10; pirl's pool default is 15)."""

SETTLE_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
"""openpi's dummy action while objects settle: no motion, gripper open."""

FORMAT_VERSION = 1
"""Bumped when the cached files change meaning, so stale caches are rebuilt."""


def cache_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """Cache directory: `root`, else $PIRL_LIBERO_MJX_CACHE, else ~/.cache/pirl/libero_mjx."""
    if root is not None:
        return pathlib.Path(root).expanduser()
    env = os.environ.get("PIRL_LIBERO_MJX_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "pirl" / "libero_mjx"


def task_dir(suite: str, task_id: int, root: str | os.PathLike | None = None) -> pathlib.Path:
    """Where one task's files live: <cache>/<suite>/task<id>/ (scene.xml, meta.json, init_states.npy)."""
    return cache_root(root) / suite / f"task{task_id:02d}"


def check_suite(suite: str, task_id: int | None = None) -> None:
    """Fail early on a suite or task id pirl does not build."""
    if suite not in FAITHFUL_SUITES:
        raise UserError(f"unknown LIBERO suite {suite!r}; choose from {', '.join(FAITHFUL_SUITES)}")
    if task_id is not None and not 0 <= task_id < 10:
        raise UserError(f"{suite} has tasks 0..9, got task {task_id}")


def is_built(suite: str, task_id: int, root: str | os.PathLike | None = None) -> bool:
    """Whether the task's files are in the cache, in the current format."""
    meta = task_dir(suite, task_id, root) / "meta.json"
    if not meta.exists():
        return False
    try:
        if json.loads(meta.read_text()).get("format") != FORMAT_VERSION:
            return False
    except json.JSONDecodeError:
        return False
    # the saved MJCF names LIBERO's meshes and textures by absolute path inside the virtual environment
    # that built it; a cache built from another (since removed) checkout must be rebuilt
    xml = (meta.parent / "scene.xml").read_text() if (meta.parent / "scene.xml").exists() else ""
    files = set(re.findall(r'file="(/[^"]+)"', xml))
    return bool(xml) and all(os.path.exists(f) for f in files)


def make_libero_env(suite: str, task_id: int, cameras: bool = False, size: int = 128) -> tuple[Any, Any]:
    """LIBERO's ControlEnv of a task (as OffScreenRenderEnv builds it; without a renderer unless
    `cameras`) and its benchmark task suite object."""
    from pirl.envs.libero_pool import require_libero

    benchmark = require_libero()
    from libero.libero import get_libero_path
    from libero.libero.envs.env_wrapper import ControlEnv

    task_suite = benchmark.get_benchmark_dict()[suite]()
    task = task_suite.get_task(task_id)
    bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    env = ControlEnv(
        bddl_file_name=str(bddl),
        has_renderer=False,
        has_offscreen_renderer=cameras,
        use_camera_obs=cameras,
        camera_heights=size,
        camera_widths=size,
    )
    return env, task_suite


def build_task(
    suite: str, task_id: int, root: str | os.PathLike | None = None, force: bool = False
) -> pathlib.Path:
    """Build one task into the cache (no-op when built, unless `force`); returns its directory."""
    check_suite(suite, task_id)
    out = task_dir(suite, task_id, root)
    if is_built(suite, task_id, root) and not force:
        return out
    import mujoco

    env, task_suite = make_libero_env(suite, task_id)
    try:
        env.seed(BUILD_SEED)
        np.random.seed(BUILD_SEED)
        env.reset()
        model = env.sim.model._model
        out.mkdir(parents=True, exist_ok=True)
        # per-process temporary names: two processes (pytest workers, a check beside a training run)
        # may build the same task at once, and each must publish whole files only
        suffix = f".tmp{os.getpid()}"
        tmp = out / f"scene.xml{suffix}"
        # robosuite compiles from an XML string; the last one parsed is this env's model (hard reset)
        mujoco.mj_saveLastXML(str(tmp), model)
        saved = mujoco.MjModel.from_xml_path(str(tmp))
        if (saved.nq, saved.nv, saved.ngeom, saved.nbody) != (model.nq, model.nv, model.ngeom, model.nbody):
            raise RuntimeError(f"saved XML of {suite} task {task_id} does not match LIBERO's compiled model")
        task = task_suite.get_task(task_id)
        init_states = np.asarray(task_suite.get_task_init_states(task_id), np.float64)
        with open(out / f"init_states.npy{suffix}", "wb") as f:
            np.save(f, init_states)
        bddl_path = pathlib.Path(env.env.bddl_file_name) if hasattr(env.env, "bddl_file_name") else None
        names = lambda kind, n: [mujoco.mj_id2name(model, kind, i) for i in range(n)]  # noqa: E731
        meta = {
            "format": FORMAT_VERSION,
            "suite": suite,
            "task_id": task_id,
            "name": task.name,
            "prompt": task.language,
            "bddl": bddl_path.read_text() if bddl_path else "",
            "seed": BUILD_SEED,
            "nq": int(model.nq),
            "nv": int(model.nv),
            "joints": names(mujoco.mjtObj.mjOBJ_JOINT, model.njnt),
            "bodies": names(mujoco.mjtObj.mjOBJ_BODY, model.nbody),
            "obj_of_interest": list(env.obj_of_interest),
            "goal": env.env.parsed_problem["goal_state"],
        }
        (out / f"meta.json{suffix}").write_text(json.dumps(meta, indent=1))
        (out / f"init_states.npy{suffix}").replace(out / "init_states.npy")
        tmp.replace(out / "scene.xml")
        (out / f"meta.json{suffix}").replace(out / "meta.json")  # last: it marks the task built
    finally:
        env.close()
    return out


def ensure_built(suite: str, task_id: int, root: str | os.PathLike | None = None) -> pathlib.Path:
    """The task's cache directory, building it first if missing (needs the `libero` extra)."""
    if not is_built(suite, task_id, root):
        try:
            build_task(suite, task_id, root)
        except ImportError as e:
            raise UserError(
                f"{suite} task {task_id} is not in the cache ({task_dir(suite, task_id, root)}) and building it "
                f"needs the installed LIBERO: uv sync --extra libero ({e})"
            ) from e
    return task_dir(suite, task_id, root)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", nargs="+", default=list(FAITHFUL_SUITES), help="suites to build")
    p.add_argument("--tasks", nargs="+", type=int, default=list(range(10)), help="task ids")
    p.add_argument("--cache", default=None, help="cache directory (default ~/.cache/pirl/libero_mjx)")
    p.add_argument("--force", action="store_true", help="rebuild tasks already in the cache")
    args = p.parse_args(argv)
    for suite in args.suite:
        for t in args.tasks:
            start = time.perf_counter()
            path = build_task(suite, t, args.cache, force=args.force)
            print(
                json.dumps(
                    {"suite": suite, "task": t, "dir": str(path), "s": round(time.perf_counter() - start, 1)}
                )
            )


if __name__ == "__main__":
    main()
