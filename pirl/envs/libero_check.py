"""Side-by-side check of pirl's MJX LIBERO tasks against the real LIBERO (needs the `libero` extra).

For each task and official initial state, both simulators start from the same state (LIBERO: the
task's env built with pirl's build seed, reset, set_init_state; pirl: the MJX scene of
`pirl.envs.libero_scene` with the state loaded) and settle with openpi's no-op steps. Reported, one
JSON line each:

- (a) `settled`: the 8-D state (eef position, robosuite axis-angle, finger qpos) of both after
  settling; target: position within 5 mm, axis-angle within 0.05 rad;
- (b) `eef`: the eef trajectory under open-loop action sequences of 20 steps (each axis +/-0.5,
  each rotation +/-0.5, gripper close) started after settling; target: within 1 cm.
- (c) `pick_place` (`--checks pick_place`): the scripted plan (`pirl.envs.expert.pick_place_action`)
  run in both, each reading its own simulator, for tasks whose goal is one On / In (object, object
  or region): LIBERO's success and the MJX side's (the task's goal predicates,
  `pirl.envs.libero_predicates`, on the MJX data as the env rewards them), and every free object's
  position error at the end; target: within 2 cm. `--real-only` runs the real side alone (the
  expert's success rate there).
- (c) `expert` (`--checks expert`): the same plan's success over many initial states, one JSON line
  per task: in MJX with every initial state of `--init-states` stepped as one vmapped batch
  (`mjx_expert`; tasks whose MJX models share their static structure, e.g. all of libero_spatial,
  share one compiled step) and replayed in the real LIBERO (`--mjx-only` / `--real-only` for one
  side): successes, first-success step statistics, the failing inits and the phase they ended in.
- (c) `plan` (`--checks plan`): the goal-sequencing expert in both simulators for any task whose
  terms it plans (`goal_subplans`): drawers pulled open / pushed shut by their handle and knobs
  twisted (`pirl.envs.libero_artic_expert`), pick-and-places, in order (a drawer that holds the
  goal region is opened first, closing comes last); success in both, the goal joints' final values.
  `--trace-dir` also writes each episode's steps there (`plan_trace_line`), per init and simulator;
  `--mjx-only` runs the MJX side alone.
- (d) `images` (`--checks images`): LIBERO's agentview and wrist cameras rendered by the real LIBERO
  (robosuite's offscreen render) and by pirl (`pirl.envs.libero_render`) at the same state (the
  real settled qpos), per pirl look (`--looks primitives meshes`) and image size: PSNR and SSIM of the raw images, and the per-object IoU of
  the silhouettes (MuJoCo's segmentation render of LIBERO's compiled model vs pirl's geom ids),
  which is the figure that shows the cameras' pose, fovy and orientation are LIBERO's (with the
  primitives look the colours cannot match: mean texture colours vs textured meshes). `--images-dir`
  saves side-by-side PNGs (real | pirl | silhouettes).

    python -m pirl.envs.libero_check --suite libero_spatial --tasks 0 1 --init-states 0 1 2
    python -m pirl.envs.libero_check --tasks 0 1 --init-states 0 1 --checks pick_place
    python -m pirl.envs.libero_check --tasks 0 --init-states 0 --checks images --images-dir /tmp/libero_images
    python -m pirl.envs.libero_check --tasks 0 1 --init-states $(seq 0 49) --checks expert --mjx-only
    python -m pirl.envs.libero_check --suite libero_10 --tasks 7 --init-states 5 --checks plan --trace-dir /tmp/traces
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import types

import numpy as np

from pirl.envs.build_libero import BUILD_SEED, SETTLE_ACTION, SETTLE_STEPS, make_libero_env

SEQUENCE_STEPS = 20
"""Control steps per open-loop sequence."""

POS_TOL, ROT_TOL, EEF_TOL = 0.005, 0.05, 0.01
"""Targets: settled eef position (m), settled axis-angle (rad), eef after each sequence (m)."""

CHECKS = ("state", "pick_place", "expert", "images", "plan")
"""What `--checks` can run: (a)+(b) state, (c) pick_place, expert and plan (goal sequences, articulated goals), (d) images."""


def action_sequences(steps: int = SEQUENCE_STEPS) -> dict[str, np.ndarray]:
    """Named open-loop sequences f32[steps, 7]: each axis and rotation +/-0.5, gripper close."""
    out = {}
    for k, axis in enumerate(("x", "y", "z", "rx", "ry", "rz")):
        for sign, tag in ((1.0, "+"), (-1.0, "-")):
            a = np.zeros((steps, 7), np.float32)
            a[:, k] = 0.5 * sign
            a[:, 6] = -1.0
            out[tag + axis] = a
    close = np.zeros((steps, 7), np.float32)
    close[:, 6] = 1.0
    out["close"] = close
    return out


def settled_start(env, init: np.ndarray, settle: int) -> dict:
    """Reset the real LIBERO env to the official initial state `init` and run `settle` no-op steps (the
    gripper open, as openpi's evaluation waits); returns the last observation. numpy's global generator
    is reseeded first: LIBERO's reset places the fixtures from it."""
    np.random.seed(BUILD_SEED)
    env.reset()
    obs = env.set_init_state(init)
    for _ in range(settle):
        obs, _, _, _ = env.step(list(SETTLE_ACTION))
    return obs


def real_rollouts(
    suite: str, task_id: int, init_id: int, sequences: dict[str, np.ndarray], settle: int
) -> dict:
    """Settled state f32[8] and per-sequence states f32[T, 8] in the real LIBERO."""
    from pirl.envs.libero_pool import libero_state

    env, task_suite = make_libero_env(suite, task_id)
    init = task_suite.get_task_init_states(task_id)[init_id]
    env.seed(BUILD_SEED)

    def start():
        return libero_state(settled_start(env, init, settle))

    try:
        settled = start()
        settled_qpos = np.array(env.sim.data.qpos)
        traj = {}
        for name, seq in sequences.items():
            start()
            traj[name] = np.stack([libero_state(env.step(a.tolist())[0]) for a in seq])
    finally:
        env.close()
    return {"settled": settled, "qpos": settled_qpos, "traj": traj}


def _isolated(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a fresh (spawned) process: robosuite stepping in a process whose JAX runtime is up
    deadlocked here (all threads in futex waits), so the two never share a process."""
    import concurrent.futures
    import multiprocessing

    from pirl.envs.libero_pool import set_gl_environment

    # the child imports mujoco (choosing its GL backend) before LIBERO's own setup runs: hand it one
    # consistent MUJOCO_GL / PYOPENGL_PLATFORM (an inherited "egl" beside "osmesa" hides mujoco.Renderer)
    set_gl_environment(os.environ)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:  # raises if the child dies
        return pool.submit(fn, *args, **kwargs).result()


def real_rollouts_isolated(
    suite: str, task_id: int, init_id: int, sequences: dict[str, np.ndarray], settle: int
) -> dict:
    """`real_rollouts` in a fresh (spawned) process (`_isolated`)."""
    return _isolated(real_rollouts, suite, task_id, init_id, sequences, settle)


def mjx_rollouts_fn(task, settle: int):
    """(init data, actions f32[S, T, 7]) -> (settled state f32[8], settled qpos, states f32[S, T, 8]).

    One jitted control step driven from Python: a vmapped lax.scan of these steps over the sequences
    hung here inside XLA's CPU runtime (all threads idle in futex waits, no CPU used)."""
    import jax
    import jax.numpy as jnp

    from pirl.envs import libero_scene as ls
    from pirl.envs.mjx_module import mjx
    from pirl.envs.osc import OSCConfig, OSCIndices, osc_control_step, osc_reset

    m = task.model
    mx = mjx.put_model(m)
    cfg = OSCConfig(timestep=float(m.opt.timestep))
    idx = OSCIndices.from_model(m)
    eef = m.body(ls.EEF_BODY).id

    @jax.jit
    def step(d, a):
        d = osc_control_step(cfg, idx, mx, d, a)
        return d, ls.libero_state(idx, eef, d)

    reset = jax.jit(lambda d: osc_reset(cfg, idx, mx, d))

    def run(d0, actions):
        d = reset(jax.device_put(d0))
        state = None
        for _ in range(settle):
            d, state = step(d, jnp.asarray(SETTLE_ACTION, jnp.float32))
        settled = d
        seqs = []
        for acts in actions:
            d, states = settled, []
            for a in acts:
                d, s = step(d, jnp.asarray(a))
                states.append(s)
            seqs.append(jnp.stack(states))
        return state, settled.qpos, jnp.stack(seqs)

    return mx, run


def object_errors(task, qpos: np.ndarray, real_qpos: np.ndarray) -> dict[str, float]:
    """Position error (mm) of each free object between two qpos vectors of the task's layout."""
    import mujoco

    m = task.model
    out = {}
    for j in range(m.njnt):
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            a = m.jnt_qposadr[j]
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j).removesuffix("_joint0")
            out[name] = round(1000 * float(np.linalg.norm(qpos[a : a + 3] - real_qpos[a : a + 3])), 1)
    return out


# ----------------------------------------------------------------------------- (d) images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian filter over the two leading axes, 'valid' region only."""
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    n = 2 * radius + 1
    x = sum(w[i] * x[i : x.shape[0] - n + 1 + i] for i in range(n))
    return sum(w[i] * x[:, i : x.shape[1] - n + 1 + i] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two uint8 images [H, W(, C)] (Wang et al. 2004: 11-tap Gaussian
    window, sigma 1.5, K1 0.01, K2 0.03), averaged over pixels and channels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a**2
    var_b = _gaussian_filter(b * b) - mu_b**2
    cov = _gaussian_filter(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def body_labels(m) -> tuple[np.ndarray, list[str]]:
    """Silhouette label per body int[nbody] and the label names: each free object (its whole body
    tree), "robot" (robot0_/gripper0_ bodies); everything else -1."""
    import mujoco

    names: list[str] = []
    label = np.full(m.nbody, -1)
    for j in range(m.njnt):
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            names.append(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j).removesuffix("_joint0"))
            root = m.jnt_bodyid[j]
            for b in range(m.nbody):
                r = b
                while r not in (0, root):
                    r = m.body_parentid[r]
                if r == root:
                    label[b] = len(names) - 1
    names.append("robot")
    for b in range(m.nbody):
        if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or "").startswith(("robot0_", "gripper0_")):
            label[b] = len(names) - 1
    return label, names


def mujoco_views(
    m, qpos: np.ndarray, size: int, cameras: dict[str, str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MuJoCo's own render of a model at qpos as robosuite draws it (geom group 0, its collision
    geoms, hidden): per key (RGB u8[S, S, 3], body id i32[S, S] with -1 for no geom), both in
    LIBERO's raw orientation (mujoco.Renderer returns upright rows)."""
    import mujoco

    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_forward(m, d)
    option = mujoco.MjvOption()
    option.geomgroup[0] = 0
    out = {}
    with mujoco.Renderer(m, size, size) as r:
        for key, cam in cameras.items():
            r.update_scene(d, camera=cam, scene_option=option)
            rgb = r.render().copy()
            r.enable_segmentation_rendering()
            r.update_scene(d, camera=cam, scene_option=option)
            seg = r.render()
            r.disable_segmentation_rendering()
            geom = np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)
            body = np.where(geom >= 0, m.geom_bodyid[np.maximum(geom, 0)], -1)
            out[key] = (rgb[::-1], body[::-1])
    return out


def real_images(
    suite: str, task_id: int, init_id: int, settle: int, sizes: list[int], cameras: dict[str, str]
) -> dict:
    """The real LIBERO's raw camera images (keys of `cameras`) after reset + set_init_state + settling, per size, the
    settled qpos, and MuJoCo's own render (`mujoco_views`) of LIBERO's compiled model there. Run it
    in a spawned process (`_isolated`): MuJoCo's GL backend must be chosen before mujoco is imported."""
    from pirl.envs.libero_pool import CAMERA_KEYS

    out: dict = {"images": {}, "mujoco": {}}
    for size in sizes:
        env, task_suite = make_libero_env(suite, task_id, cameras=True, size=size)
        try:
            init = task_suite.get_task_init_states(task_id)[init_id]
            env.seed(BUILD_SEED)
            obs = settled_start(env, init, settle)
            out["images"][size] = {ours: np.array(obs[raw]) for raw, ours in CAMERA_KEYS.items()}
            out["qpos"] = np.array(env.sim.data.qpos)
            out["mujoco"][size] = mujoco_views(env.sim.model._model, out["qpos"], size, cameras)
        finally:
            env.close()
    return out


def _mask_picture(label: np.ndarray, n: int) -> np.ndarray:
    """Silhouette labels as colours u8[H, W, 3] (background black)."""
    palette = (np.stack([np.arange(n) * 97 % 255, np.arange(n) * 53 % 255 + 60, np.arange(n) * 181 % 255], 1)
               .clip(0, 255).astype(np.uint8))  # fmt: skip
    return np.where(label[..., None] >= 0, palette[np.maximum(label, 0)], 0).astype(np.uint8)


def compare_images(
    suite: str, task_id: int, init_ids: list[int], settle: int, sizes: list[int], images_dir: str | None,
    out=sys.stdout, looks: tuple[str, ...] = ("primitives",),
) -> list[dict]:  # fmt: skip
    """Check (d): one JSON line per (init, look, size, camera); returns the records. `looks`:
    `LiberoRenderConfig.look` values, each rendered at the same real states."""
    import pathlib

    import jax
    from PIL import Image

    from pirl.envs import libero_render as lr
    from pirl.envs import libero_scene as ls
    from pirl.envs.mjx_module import mjx

    task = ls.load_task(suite, task_id)
    label, names = body_labels(task.model)
    mx = mjx.put_model(task.model)
    fns = {}
    for look in looks:
        cams = lr.libero_cameras(task, lr.LiberoRenderConfig(look=look))
        for size in sizes:
            fns[look, size] = jax.jit(
                lambda d, size=size, cams=cams: (
                    lr.render_libero_cameras(cams, d, size),
                    lr.segment_libero_cameras(cams, d, size),
                )
            )
    records = []
    for init_id in init_ids:
        t0 = time.perf_counter()
        real = _isolated(real_images, suite, task_id, init_id, settle, sizes, lr.LIBERO_CAMERAS)
        t1 = time.perf_counter()
        d = mjx.make_data(mx)
        d = mjx.kinematics(mx, d.replace(qpos=jax.numpy.asarray(real["qpos"], d.qpos.dtype)))
        for look, size in fns:
            t2 = time.perf_counter()
            rgb, seg = jax.device_get(fns[look, size](d))
            t3 = time.perf_counter()
            ref = real["mujoco"][size]
            for key in lr.LIBERO_CAMERAS:
                real_rgb, ours_rgb = real["images"][size][key], np.asarray(rgb[key])
                mj_rgb, mj_body = ref[key]
                real_lab = np.where(mj_body >= 0, label[np.maximum(mj_body, 0)], -1)
                ours_body = np.asarray(seg[key])
                ours_lab = np.where(ours_body >= 0, label[np.maximum(ours_body, 0)], -1)
                iou = {}
                for i, name in enumerate(names):
                    a, b = real_lab == i, ours_lab == i
                    if a.sum() + b.sum() >= 20:  # visible in either (>= 20 px)
                        iou[name] = round(float((a & b).sum() / (a | b).sum()), 3)
                objects = [v for k, v in iou.items() if k != "robot"]
                rec = {
                    "suite": suite, "task": task_id, "init": init_id, "check": "images", "look": look,
                    "size": size, "camera": key,
                    "psnr_db": round(psnr(real_rgb, ours_rgb), 2),
                    "ssim": round(ssim(real_rgb, ours_rgb), 3),
                    # the raw orientation: LIBERO's image against MuJoCo's render of the same model,
                    # rows reversed (as pirl renders) and upright
                    "real_vs_mujoco_raw_psnr_db": round(psnr(real_rgb, mj_rgb), 2),
                    "real_vs_mujoco_upright_psnr_db": round(psnr(real_rgb, mj_rgb[::-1]), 2),
                    "iou": iou,
                    "object_iou_mean": round(float(np.mean(objects)), 3) if objects else None,
                    "real_s": round(t1 - t0, 1),
                    "render_s": round(t3 - t2, 2),  # both cameras, with compilation on first use
                }  # fmt: skip
                records.append(rec)
                out.write(json.dumps(rec) + "\n")
                out.flush()
                if images_dir:
                    path = pathlib.Path(images_dir)
                    path.mkdir(parents=True, exist_ok=True)
                    n = len(names)
                    row = np.concatenate(
                        [real_rgb, ours_rgb, _mask_picture(real_lab, n), _mask_picture(ours_lab, n)], 1
                    )
                    # saved upright (rows reversed back) for people; the metrics use the raw images
                    name = (
                        f"{suite}_task{task_id}_init{init_id}_{key.removesuffix('_image')}_{size}_{look}.png"
                    )
                    Image.fromarray(np.ascontiguousarray(row[::-1])).save(path / name)
    return records


# ----------------------------------------------------------------------------- (c) pick-and-place

PICK_PLACE_STEPS = 240
"""Control steps per pick-and-place episode (RL fine-tuning's libero_spatial limit)."""

OBJECT_TOL = 0.02
"""Target of (c): object positions after the plan within 2 cm of the real LIBERO's."""


CENTRE_GRASP_WIDTH = 0.07
"""Objects narrower than this (m, the smaller horizontal extent) are grasped across their middle;
wider ones (bowls) by their wall. The Panda's fingers open to 0.08 m."""


TOP_GRASP_CLEARANCE = 0.004
"""A wide object's narrow top part (`PickPlaceGeometry.top_grasp`) is grasped with the fingertips this
far (m) over the object's part under it (the moka pot's lid under its knob)."""


def pick_place_goal(meta: dict) -> tuple[str, str]:
    """(object, target) of a task whose goal is one On or In predicate (the target an object or a
    region); UserError otherwise."""
    from pirl.errors import UserError

    goal = meta["goal"]
    if len(goal) != 1 or goal[0][0].lower() not in ("on", "in"):
        raise UserError(
            f"the pick-and-place check handles one On / In (object, target) goal; this task has {goal}"
        )
    return goal[0][1], goal[0][2]


def _body(m, name: str) -> int:
    """LIBERO's body of an object name (`<name>_main` where it exists, as LIBERO's obj_body_id)."""
    import mujoco

    for n in (f"{name}_main", name):
        b = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)
        if b >= 0:
            return b
    raise ValueError(f"no body for object {name!r}")


def _target(m, name: str) -> tuple[str, int]:
    """A goal target: ("body", id) of an object, or ("site", id) of a region (LIBERO's sites)."""
    import mujoco

    try:
        return "body", _body(m, name)
    except ValueError:
        site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)
        if site < 0:
            raise ValueError(f"no body or site for goal target {name!r}") from None
        return "site", site


def pick_place_geometry(m, obj: str, target: str, inside: bool = False):
    """Extents of the object's and target's geoms (with their sub-bodies) in their body frames, from
    the MJX scene at qpos0. A region target's top is that of its site's body (with sub-bodies),
    relative to the site. `inside` (an In goal into a region): also the container's floor, the
    highest top of the site body's geoms under the site's centre and below it."""
    import mujoco

    from pirl.envs.expert import PickPlaceGeometry
    from pirl.envs.libero_scene import geom_points, is_table, tops_over

    d = mujoco.MjData(m)
    mujoco.mj_kinematics(m, d)

    def geoms_world(root: int, planes: bool = False):
        """World points f64[n, 3] of each geom of `root` and its sub-bodies, and the geoms' centres
        (`planes`: a plane's rectangle too, the top of a table whose region is the target)."""
        out = []
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            r = b
            while r not in (0, root):
                r = m.body_parentid[r]
            if r == root and (planes or m.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE):
                local = geom_points(m, g) - m.geom_pos[g]  # in the geom's body frame, about the geom
                out.append((d.xpos[b] + (local + m.geom_pos[g]) @ d.xmat[b].reshape(3, 3).T, d.geom_xpos[g]))
        return out

    def extents(root: int, planes: bool = False):
        rel = lambda x: (x - d.xpos[root]) @ d.xmat[root].reshape(3, 3)  # noqa: E731
        per = geoms_world(root, planes)
        each = [rel(p) for p, _ in per]
        pts = np.concatenate(each)
        centres = np.array([rel(c) for _, c in per])
        return pts.min(0), pts.max(0), centres, pts, each

    lo, hi, centres, pts, each = extents(_body(m, obj))
    kind, tid = _target(m, target)
    floor, entry, face = None, None, 0.0
    if kind == "body":  # (a table target, set down on for a while: MJX's table top is a plane)
        _, thi, _, _, _ = extents(tid, planes=is_table(m, tid))
    else:  # region: top of the site's body over the site (assumes the body's z axis is up, as LIBERO's)
        b = m.site_bodyid[tid]
        _, bhi, _, _, _ = extents(b, planes=True)
        site = d.site_xpos[tid]
        thi = np.array([0.0, 0.0, d.xpos[b][2] + bhi[2] - site[2]])
        if inside:
            tops = [z for z in tops_over([p for p, _ in geoms_world(b, True)], site[:2]) if z < site[2]]
            half = np.abs(d.site_xmat[tid].reshape(3, 3) @ m.site_size[tid])[2]
            floor = float(max(tops) - site[2]) if tops else float(-half)
            entry, face = side_entry(m, d, b, tid)
    is_upper = centres[:, 2] > hi[2] - 0.03
    upper = centres[is_upper]
    mid = 0.5 * (lo[:2] + hi[:2])
    # no geom centre near the top (one tall box: a book): no wall to grasp; the centre grasp below
    wall = float(np.mean(np.linalg.norm(upper[:, :2] - mid, axis=1))) if len(upper) else 0.0
    width = hi[:2] - lo[:2]
    axis, top = None, None
    if width.min() < CENTRE_GRASP_WIDTH:
        wall = 0.0  # fits between the fingers: grasp across its middle, along its narrow side
        axis = np.eye(3)[int(np.argmin(width))]
    elif is_upper.any():
        top_pts = np.concatenate([p for p, u in zip(each, is_upper, strict=True) if u])
        top_lo, top_hi = top_pts.min(0), top_pts.max(0)
        c = 0.5 * (top_lo[:2] + top_hi[:2])
        under = tops_over([p for p, u in zip(each, is_upper, strict=True) if not u], c)
        near = np.linalg.norm(c - mid) < width.min() / 4
        if (top_hi[:2] - top_lo[:2]).max() < CENTRE_GRASP_WIDTH and near and under:
            # a wide object whose narrow top part stands on it near its middle (the moka pot's lid
            # knob; the middle of its extents lies 1.9 cm off it, towards the handle): straddle that
            # part, the fingertips over the body under it. (The top of a mug's fitted boxes is its
            # handle, 4.6 cm off the middle, beside the cup: the wall grasp, as measured.)
            from pirl.envs.expert import FINGERTIP_BELOW_SITE

            z = max(under) + FINGERTIP_BELOW_SITE + TOP_GRASP_CLEARANCE
            wall, top = 0.0, np.array([c[0], c[1], min(z, top_hi[2])])
    return PickPlaceGeometry(obj_lo=lo, obj_hi=hi, target_hi=thi, wall_radius=wall, grasp_axis=axis,
                             obj_points=pts, target_floor=floor, top_grasp=top, entry=entry,
                             entry_face=face)  # fmt: skip


def side_entry(m, d, body: int, site: int) -> tuple[np.ndarray | None, float]:
    """(entry, face) of a region `site` inside a roofed container `body` (its own geoms, at the
    kinematics of `d`): a geom over the region's middle above its centre makes a roof; the one side
    of the four (the site frame's +-x, +-y) with no wall (a geom a quarter of the region's half size
    out, across its middle in width and height) is open. entry: world horizontal unit vector from that
    side in; face: how far (m) the roof reaches from the site, against it (what the hand must stay
    out from under; the microwave's control panel stands 2.3 cm further out, beside the opening). (None,
    0.0) without a roof, with other than one open side (a basket) or a region frame that is not upright
    (LIBERO's drawer regions: from above)."""
    import mujoco

    from pirl.envs.libero_scene import geom_world_points

    centre, frame, half = d.site_xpos[site], d.site_xmat[site].reshape(3, 3), m.site_size[site]
    if frame[2, 2] < 0.99:  # the region's frame is not upright (a drawer's): no roof to read
        return None, 0.0
    own = [(geom_world_points(m, d, g) - centre) @ frame for g in range(m.ngeom)
           if m.geom_bodyid[g] == body and m.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE]  # fmt: skip
    spans = lambda p, k: p[:, k].min() <= 0.0 <= p[:, k].max()  # noqa: E731
    roof = [p for p in own if p[:, 2].min() > 0.0 and spans(p, 0) and spans(p, 1)]
    if not roof:
        return None, 0.0
    open_sides = []
    for k in (0, 1):
        for sign in (1.0, -1.0):
            wall = any(
                (sign * p[:, k]).min() > 0.25 * half[k] and spans(p, 1 - k) and spans(p, 2) for p in own
            )
            if not wall:
                open_sides.append((k, sign))
    if len(open_sides) != 1:
        return None, 0.0
    k, sign = open_sides[0]
    entry = -sign * frame[:, k]
    entry[2] = 0.0
    face = max(float((sign * p[:, k]).max()) for p in roof)
    return entry / np.linalg.norm(entry), face


def goal_is_in(meta: dict) -> bool:
    """The task's (one) pick-and-place goal is an In (into a container's region), not an On."""
    return meta["goal"][0][0].lower() == "in"


def _view(m, d, obj_body: int, target: tuple[str, int]):
    """PickPlaceView from a MuJoCo model and data (host arrays with MuJoCo's field names); `target`
    from `_target`."""
    import mujoco

    from pirl.envs.expert import PickPlaceView

    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
    left = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_leftfinger")
    right = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_rightfinger")
    axis = np.asarray(d.xpos[left]) - np.asarray(d.xpos[right])
    return PickPlaceView(
        grip_pos=np.array(d.site_xpos[site], np.float64),
        grip_mat=np.array(d.site_xmat[site], np.float64).reshape(3, 3),
        finger_axis=axis / max(np.linalg.norm(axis), 1e-9),
        obj_pos=np.array(d.xpos[obj_body], np.float64),
        obj_mat=np.array(d.xmat[obj_body], np.float64).reshape(3, 3),
        target_pos=np.array((d.xpos if target[0] == "body" else d.site_xpos)[target[1]], np.float64),
    )


GRASP_CHOICES = (
    (0.0, 1.0),
    (0.0, -1.0),
    (np.pi / 2, 1.0),
    (np.pi / 2, -1.0),
    *(
        (turn, side)
        for turn in (np.pi / 6, -np.pi / 6, np.pi / 4, -np.pi / 4, np.pi / 3, -np.pi / 3)
        for side in (1.0, -1.0)
    ),
)
"""(grip turn about the vertical, wall side) a wall grasp may take, in order of preference: the
`SQUARE_GRASPS` square ones, then the wall between them, taken only when every square one touches
something (`grasp_choice`). libero_spatial 4's bowl settles in the cabinet's open drawer under its
frame: with `SceneConfig.group_frame` "tightest" at init 10 the best square grasp reaches 3.2 mm into
the frame, 45 degrees clears it by 1.1 mm (docs/libero_mjx.md, "The bowl's fit")."""
SQUARE_GRASPS = 4
"""GRASP_CHOICES' first ones, the square grasps (0 / 90 degrees, either side of the wall)."""
GRASP_CLEARANCE = 0.01
"""A wall grasp keeps the first choice whose gripper stands this far (m) from everything else."""
CENTRE_GRASP_TURNS = (0.0, -np.pi / 6, np.pi / 6, -np.pi / 4, np.pi / 4)
"""Turns (rad, about the vertical) of a centre grasp's closing axis off the object's narrow axis, in
order of preference: the closing fingers turn a flat box into line with them, and the hand (0.2 m
along the closing axis, 3.1 cm over the grip) clears a tall neighbour (libero_object 1's cream cheese
beside the tomato sauce)."""


def standing_footprints(m, d, skip: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """World (lo xy f64[2], hi xy f64[2], top z) boxes round each free object (a root body with a free
    joint) but `skip` (the object being picked), in model `m` at data `d` (either simulator; reads
    d.xpos, d.xmat): what an approach may have to pass over. Each simulator's own model: the real
    LIBERO's object bodies are framed unlike the MJX scene's, so its qpos does not pose the scene's."""
    import mujoco

    from pirl.envs.libero_scene import geom_world_points, root_body

    skip_root = root_body(m, _body(m, skip))
    free_joint = mujoco.mjtJoint.mjJNT_FREE
    free = {root_body(m, int(m.jnt_bodyid[j])) for j in range(m.njnt) if m.jnt_type[j] == free_joint}
    out = []
    for r in sorted(free - {skip_root}):
        pts = [
            geom_world_points(m, d, g)
            for g in range(m.ngeom)
            if root_body(m, int(m.geom_bodyid[g])) == r and m.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE
        ]
        if pts:
            p = np.concatenate(pts)
            out.append((p.min(0)[:2], p.max(0)[:2], float(p[:, 2].max())))
    return out


def gripper_parts(m, d) -> list[tuple[float, float]]:
    """(reach, bottom) of each collision geom of the gripper (the bodies named gripper0_*: the hand's
    box and the fingers) at the kinematics of `d`: its farthest xy distance (m) from the grip site at
    any turn about the vertical, and its lowest point's height (m) over the site (the grip pointing
    down), in either simulator's model: what `expert.transit_height` pads the footprints by."""
    import mujoco

    from pirl.envs.libero_scene import geom_world_points

    site = _grip_site(m)
    out = []
    for g in range(m.ngeom):
        body = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or ""
        # collision geoms: group 0 in both (robosuite's visual meshes are group 1; the MJX scene's
        # boxes collide through explicit pairs, contype 0)
        if body.startswith("gripper0_") and m.geom_group[g] == 0:
            pts = geom_world_points(m, d, g) - d.site_xpos[site]
            out.append((float(np.linalg.norm(pts[:, :2], axis=1).max()), float(pts[:, 2].min())))
    return out


WRIST_JOINT = "robot0_joint7"
"""The Panda's last joint: with the grip pointing down it turns the hand about the vertical."""
WRIST_MARGIN = 0.1
"""`wrist_turn` keeps the wrist this far (rad) inside its range."""


def wrist_turn(m, d, ref: np.ndarray, grip_mat: np.ndarray) -> np.ndarray:
    """`ref` f64[3, 3] (a grip orientation to turn to), or `ref` turned half a turn about the vertical
    when turning there from `grip_mat` would take the wrist (WRIST_JOINT, in `d.qpos`) past its range:
    the fingers and the hand are symmetric, so both hold the same grasp. libero_10 0: the wrist at its
    limit, the saturated yaw of the nearer turn stalled the approach for 150 steps."""
    import mujoco

    from pirl.envs.expert import rot_z, rotation_error

    j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, WRIST_JOINT)
    if j < 0:
        raise ValueError(
            f"wrist_turn: the model has no joint {WRIST_JOINT!r} (robosuite's Panda): plan on a LIBERO scene"
        )
    lo, hi = m.jnt_range[j]
    # pointing down, a turn about the world's vertical turns the wrist the other way
    after = float(d.qpos[m.jnt_qposadr[j]]) - float(rotation_error(ref, grip_mat)[2])
    if after < lo + WRIST_MARGIN:
        return rot_z(-np.pi) @ ref
    if after > hi - WRIST_MARGIN:
        return rot_z(np.pi) @ ref
    return ref


def gripper_and_others(
    m, d, obj_body: int
) -> tuple[list[int], list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """The gripper's geoms, their poses (position f64[3], orientation f64[3, 3]) in the grip site's
    frame at the kinematics of `d` (to be placed at a planned grip pose), and every geom that is
    neither the robot's nor the mount's nor of the object `obj_body` hangs from: what a planned grip
    pose is measured against (`grasp_choice`, `place_choice`)."""
    import mujoco

    from pirl.envs.libero_scene import root_body

    body_name = lambda b: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or ""  # noqa: E731
    roots = [root_body(m, b) for b in m.geom_bodyid]
    names = [body_name(r) for r in roots]
    grip = [g for g in range(m.ngeom)
            if names[g].startswith("robot0_") and body_name(m.geom_bodyid[g]).startswith("gripper0_")]  # fmt: skip
    held = root_body(m, obj_body)
    others = [
        g for g in range(m.ngeom) if not names[g].startswith(("robot0_", "mount0_")) and roots[g] != held
    ]
    site = _grip_site(m)
    return grip, geoms_in_frame(d, grip, d.site_xpos[site], d.site_xmat[site].reshape(3, 3)), others


def geoms_in_frame(
    d, geoms: list[int], pos: np.ndarray, mat: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Poses (position f64[3], orientation f64[3, 3]) of `geoms` in the frame (`pos`, `mat`), at the
    kinematics of `d`: what `pose_geoms` places them back from."""
    return [(mat.T @ (d.geom_xpos[g] - pos), mat.T @ d.geom_xmat[g].reshape(3, 3)) for g in geoms]


def pose_geoms(d, geoms: list[int], rel, pos: np.ndarray, mat: np.ndarray) -> None:
    """Write `geoms`' world poses into `d` with the frame they were measured in (`geoms_in_frame`) moved
    to (`pos`, `mat`): a planned grip or object pose, for mj_geomDistance."""
    for g, (rp, rr) in zip(geoms, rel, strict=True):
        d.geom_xpos[g] = pos + mat @ rp
        d.geom_xmat[g] = (mat @ rr).reshape(9)


def grasp_clearances(m, qpos: np.ndarray, obj: str, target: str, geo, plan_cfg, choices) -> list[float]:
    """For each (grasp_yaw, grasp_side) of `choices`, the least distance (m, at most 0.05) between the
    open gripper placed at the plan's grasp point and at its hover point above and every other geom
    (table, fixtures, other objects; not the object grasped). `m` is the MJX scene (LIBERO's qpos
    layout, so a real LIBERO qpos reads the same); the gripper's geoms keep their pose relative to the
    grip site at `qpos` (the settled start, fingers open). Centre grasps (geo.grasp_axis) are measured
    1 cm over the grasp point, leaving out the object's support, planes and geoms whose top is within
    5 mm of its bottom (the fingertips of a grasp of a flat box reach it)."""
    import mujoco

    from pirl.envs.expert import PlanState, grasp_point, pick_place_action
    from pirl.envs.libero_scene import geom_world_points, root_body

    centre = geo.grasp_axis is not None
    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    ob, tb = _body(m, obj), _target(m, target)
    view = _view(m, d, ob, tb)
    grip, rel, others = gripper_and_others(m, d, ob)
    if centre:  # the fingertips of a centre grasp reach the object's support: leave it out
        z_of = lambda g: geom_world_points(m, d, g)[:, 2]  # noqa: E731
        held = root_body(m, ob)
        bottom = min(z_of(g).min() for g in range(m.ngeom) if root_body(m, m.geom_bodyid[g]) == held)
        others = [
            h
            for h in others
            if m.geom_type[h] != mujoco.mjtGeom.mjGEOM_PLANE and z_of(h).max() > bottom + 0.005
        ]
    out = []
    for yaw, side in choices:
        _, st = pick_place_action(plan_cfg, geo, view, PlanState(grasp_yaw=yaw, grasp_side=side))
        point = grasp_point(view, st)
        clear = np.inf
        for lift in (0.01 if centre else 0.0, plan_cfg.hover):
            pose_geoms(d, grip, rel, point + np.array([0.0, 0.0, lift]), st.ref_mat)
            for g in grip:
                for h in others:
                    clear = min(clear, mujoco.mj_geomDistance(m, d, g, h, 0.05, None))
        out.append(float(clear))
    return out


def grasp_choice(m, qpos: np.ndarray, obj: str, target: str, geo, plan_cfg) -> tuple[float, float]:
    """(grasp_yaw, grasp_side) of the pick-and-place plan's PlanState for one episode, by
    `grasp_clearances`: a wall grasp takes the first of GRASP_CHOICES that clears by GRASP_CLEARANCE,
    else the square one that clears most if it touches nothing, else the one of all that clears most.
    A centre grasp (geo.grasp_axis) takes the first of CENTRE_GRASP_TURNS that clears, else the one
    that clears most, folded into +-90 degrees."""
    centre = geo.grasp_axis is not None
    choices = [(t, 1.0) for t in CENTRE_GRASP_TURNS] if centre else list(GRASP_CHOICES)
    clear = grasp_clearances(m, qpos, obj, target, geo, plan_cfg, choices)
    for choice, c in zip(choices, clear, strict=True):
        if c >= GRASP_CLEARANCE:
            return choice
    if centre:  # none clears: the turn that clears most, folded into +-90 degrees
        yaw, side = choices[int(np.argmax(clear))]
        return float((yaw + np.pi / 2) % np.pi - np.pi / 2), side
    square = int(np.argmax(clear[:SQUARE_GRASPS]))
    if clear[square] > 0.0:  # touches nothing: turned grasps lost more episodes than they won here
        return choices[square]
    return choices[int(np.argmax(clear))]


PICK_FLOOR_TOL = 0.015
"""An object stands on a geom whose top is within this (m) of its bottom (`pick_walls_top`)."""
PICK_WALL_REACH = 0.02
"""Walls of the body an object stands on count (`pick_walls_top`) where they come within this (m) of
its footprint: the sides of the drawer it stands in."""


def pick_walls_top(m, qpos: np.ndarray, obj: str) -> float | None:
    """The top (world z) of the walls round object `obj` as it stands in `qpos` (settled): the highest
    geom of the body (not the table, robot or the object) whose geom it stands on (a top within
    PICK_FLOOR_TOL of its bottom, under its footprint), among that body's geoms that start below its
    bottom + PICK_FLOOR_TOL and reach within PICK_WALL_REACH of its footprint; None when it stands on
    the table or on nothing. libero_spatial 4's bowl stands in the open top drawer, whose walls rise
    5.8 cm over its floor: carried 5 cm over where it stood, it caught on the front wall."""
    import mujoco

    from pirl.envs.libero_scene import geom_world_points, is_table, root_body

    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    ob = root_body(m, _body(m, obj))
    per_body: dict[int, list[np.ndarray]] = {}
    for g in range(m.ngeom):
        per_body.setdefault(m.geom_bodyid[g], []).append(geom_world_points(m, d, g))
    mine = np.concatenate([p for b, ps in per_body.items() if root_body(m, b) == ob for p in ps])
    lo, hi = mine.min(0), mine.max(0)

    def overlaps(p: np.ndarray, reach: float) -> bool:
        return bool(np.all(p[:, :2].min(0) < hi[:2] + reach) and np.all(p[:, :2].max(0) > lo[:2] - reach))

    best = None
    for b, ps in per_body.items():
        r = root_body(m, b)
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, r) or ""
        if r in (0, ob) or name.startswith(("robot0_", "mount0_")) or is_table(m, b):
            continue
        if not any(overlaps(p, 0.0) and abs(p[:, 2].max() - lo[2]) < PICK_FLOOR_TOL for p in ps):
            continue
        top = max(
            p[:, 2].max()
            for p in ps
            if overlaps(p, PICK_WALL_REACH) and p[:, 2].min() < lo[2] + PICK_FLOOR_TOL
        )
        best = top if best is None else max(best, top)
    return None if best is None else float(best)


PLACE_SHIFT = 0.6
"""Place shifts `place_choice` tries within an On region, as a fraction of its half size (LIBERO checks
the object's body origin inside the region)."""
PLACE_TURNS = (0.0, np.pi / 2, -np.pi / 2, np.pi / 4, -np.pi / 4)
"""Carry turns (rad, about the vertical) `place_choice` tries, in order of preference."""
PLACE_CLEARANCE = 0.01
"""`place_choice` takes the first place whose hand, fingers and object stand this far (m) from
everything else at the release."""
CONTAINER_TURNS = tuple(np.deg2rad([0, 15, -15, 30, -30, 45, -45, 60, -60, 75, -75, 90]))
"""Carry turns (rad) `place_choice` tries into a container: a compartment narrower than the object's
footprint takes it only lined up with its walls (libero_10 5's book: 6 cm by 13 cm, the book 11 cm long
and carried turned 50 degrees off)."""


def place_choice(
    m, qpos: np.ndarray, obj: str, target: str, geo, plan_cfg, begin, place_offset=(0.0, 0.0, 0.0)
) -> tuple[float, np.ndarray | None]:
    """(place_yaw, place_shift) of a pick-and-place onto or into a region for one episode: where the
    default release (the object's origin over the region's middle, unturned) brings the open hand,
    fingers or object into anything else (table and the robot left out, bodies as in `qpos`), the first
    of the region shifts (0, then PLACE_SHIFT of its half size along x, y and the diagonals) x carry
    turns (PLACE_TURNS) whose release clears by PLACE_CLEARANCE, else the one that clears most. `begin`:
    the episode's PlanState with its grasp; `place_offset`: the sub-plan's own
    (`SubPlan.place_offset`), added to the target first. libero_10 6: the hand's box (0.2 m along
    the closing axis) came down on the porcelain mug's rim beside the pudding's region and pushed the
    mug off the plate. Into a container (`geo.target_floor`; not a side entry) only the object against
    the container's own geoms counts, at its release height inside (the grip no lower than `rim_grip`
    under the rim), turned by CONTAINER_TURNS with its footprint's middle over the region's: libero_10
    5's book, carried turned, came down on the caddy's back wall, tipped over in the grasp and fell
    across the compartments."""
    import mujoco

    from pirl.envs.expert import pick_place_action, release_height, rot_z, world_extents
    from pirl.envs.libero_scene import is_table, root_body

    kind, tid = _target(m, target)
    inside = geo.target_floor is not None
    if kind != "site" or geo.entry is not None:
        return 0.0, None
    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    ob = _body(m, obj)
    view = _view(m, d, ob, (kind, tid))
    view = dataclasses.replace(view, target_pos=view.target_pos + np.asarray(place_offset, np.float64))
    _, st = pick_place_action(plan_cfg, geo, view, begin)
    offset = view.obj_mat @ st.grasp_offset if st.grasp_in_body else st.grasp_offset
    grip, grip_rel, others = gripper_and_others(m, d, ob)
    others = [
        g
        for g in others
        if not is_table(m, m.geom_bodyid[g]) and m.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE
    ]
    if inside:  # the container's own walls: objects already in it are spread by `place_offset`
        container = root_body(m, m.site_bodyid[tid])
        others = [g for g in others if root_body(m, m.geom_bodyid[g]) == container]
    root = root_body(m, ob)
    held = [g for g in range(m.ngeom) if root_body(m, m.geom_bodyid[g]) == root]
    obj_r, obj_p = view.obj_mat, view.obj_pos
    held_rel = geoms_in_frame(d, held, obj_p, obj_r)
    w_lo = world_extents(geo, view.obj_mat)[0]
    bottom = release_height(plan_cfg, geo, view.target_pos, offset[2] - w_lo[2])  # as the plan lowers it
    half = np.asarray(m.site_size[tid][:2], np.float64) * PLACE_SHIFT

    def clearance(turn: float, shift: np.ndarray) -> float:
        r = rot_z(turn)
        o_pos = np.array([*(view.target_pos[:2] + shift[:2]), bottom - w_lo[2]])
        o_mat = r @ obj_r
        g_pos = o_pos + r @ offset
        pose_geoms(d, grip, grip_rel, g_pos, r @ st.ref_mat)
        pose_geoms(d, held, held_rel, o_pos, o_mat)
        return min(
            mujoco.mj_geomDistance(m, d, g, h, 0.05, None)
            for g in (held if inside else grip + held)
            for h in others
        )

    best = (clearance(0.0, np.zeros(3)), 0.0, np.zeros(3))
    if best[0] >= 0.0:
        return 0.0, None
    if inside:
        # the object's footprint, not its origin, over the region's middle (the book's box stands 12 mm
        # off its origin: onto the divider of a compartment 2 cm wider than the book)
        choices = []
        for turn in CONTAINER_TURNS:
            lo, hi = world_extents(geo, rot_z(turn) @ obj_r)
            choices.append((turn, np.append(-0.5 * (lo + hi)[:2], 0.0)))
    else:
        shifts = [np.zeros(3)] + [np.array([sx * half[0], sy * half[1], 0.0])
                                  for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))]  # fmt: skip
        choices = [(turn, shift) for shift in shifts for turn in PLACE_TURNS]
    for turn, shift in choices:
        clear = clearance(turn, shift)
        if clear >= PLACE_CLEARANCE:
            return float(turn), (None if not shift.any() else shift)
        best = max(best, (clear, float(turn), shift), key=lambda b: b[0])
    # none clears by PLACE_CLEARANCE: the one that clears most (libero_10 6 init 12: the default's hand
    # stood 4.8 cm into the set-down mug, the best choice 3.7 mm clear of it)
    _, turn, shift = best
    return turn, (None if not shift.any() else shift)


ENTRY_SHIFTS = np.arange(-0.1, 0.1001, 0.01)
"""Shifts (m) across the opening `entry_place` tries for a side entry's place."""
ENTRY_PATH = np.arange(0.0, 0.26, 0.05)
"""Distances (m) back out of the opening at which `entry_place` measures the hand on its way in."""


def entry_place(m, qpos: np.ndarray, obj: str, target: str, geo, plan_cfg, begin) -> np.ndarray:
    """World shift f64[3] of a side entry's place (`PickPlaceGeometry.entry`) from the target's position,
    for one episode (`qpos`, bodies as there; `begin`: its PlanState): against the entry, so far that
    the hand's side towards the container stays at its open face (the object's position just inside:
    a closing door pushes it the rest of the way); across, the one of ENTRY_SHIFTS that clears most
    (the smallest on a tie), measured for the gripper at the place and ENTRY_PATH back out, and for
    the object at the place against what stands within its height (not the container's floor and
    roof). libero_10 9: the open microwave door's free end stands 11.5-19.6 cm left of the opening's
    middle, by its angle, and the hand's box is 20 cm long across it."""
    import mujoco

    from pirl.envs.expert import HAND_HALF_DEPTH, pick_place_action, world_extents
    from pirl.envs.libero_scene import geom_world_points, is_table, root_body

    d = mujoco.MjData(m)
    d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    ob, (kind, tid) = _body(m, obj), _target(m, target)
    view = _view(m, d, ob, (kind, tid))
    _, st = pick_place_action(plan_cfg, geo, view, begin)
    offset = st.grasp_offset  # world frame (a side entry's grasp)
    e = geo.entry
    across = np.cross([0.0, 0.0, 1.0], e)
    along = -geo.entry_face - HAND_HALF_DEPTH - float(offset @ e)
    grip, grip_rel, others = gripper_and_others(m, d, ob)
    others = [g for g in others
              if not is_table(m, m.geom_bodyid[g]) and m.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE]  # fmt: skip
    root = root_body(m, ob)
    held = [g for g in range(m.ngeom) if root_body(m, m.geom_bodyid[g]) == root]
    held_rel = geoms_in_frame(d, held, view.obj_pos, view.obj_mat)
    lo, hi = world_extents(geo, view.obj_mat)
    bottom = view.target_pos[2] + geo.target_floor + plan_cfg.entry_gap
    z_of = {h: geom_world_points(m, d, h)[:, 2] for h in others}
    band = [h for h in others if z_of[h].max() > bottom and z_of[h].min() < bottom + hi[2] - lo[2]]

    def clearance(shift: float) -> float:
        place = view.target_pos + e * along + across * shift
        place[2] = bottom - lo[2]
        pose_geoms(d, held, held_rel, place, view.obj_mat)
        clear = min(mujoco.mj_geomDistance(m, d, g, h, 0.05, None) for g in held for h in band)
        for back in ENTRY_PATH:
            at = place - e * back + offset
            pose_geoms(d, grip, grip_rel, at, st.ref_mat)
            clear = min(
                clear, min(mujoco.mj_geomDistance(m, d, g, h, 0.05, None) for g in grip for h in others)
            )
        return clear

    best = max(ENTRY_SHIFTS, key=lambda s_: (round(clearance(s_), 4), -abs(s_)))
    return e * along + across * best


def plan_start(m, qpos: np.ndarray, obj: str, target: str, geo, plan_cfg, place_offset=(0.0, 0.0, 0.0)):
    """The pick-and-place plan's PlanState for one episode from its settled start `qpos` on the MJX
    scene `m` (a real LIBERO qpos reads the same): the grasp (`grasp_choice`), the walls the object
    is lifted over before it is carried (`pick_walls_top`) and, onto an On region, the place's turn and
    shift (`place_choice`, from the sub-plan's `place_offset`)."""
    from pirl.envs.expert import PlanState

    if geo.entry is not None:  # in through a container's open side: its own grasp and place
        begin = PlanState(pick_walls_top=pick_walls_top(m, qpos, obj))
        return dataclasses.replace(begin, place_shift=entry_place(m, qpos, obj, target, geo, plan_cfg, begin))
    yaw, side = grasp_choice(m, qpos, obj, target, geo, plan_cfg)
    begin = PlanState(grasp_yaw=yaw, grasp_side=side, pick_walls_top=pick_walls_top(m, qpos, obj))
    turn, shift = place_choice(m, qpos, obj, target, geo, plan_cfg, begin, place_offset)
    return dataclasses.replace(begin, place_yaw=turn, place_shift=shift)


def real_pick_place(
    suite: str, task_id: int, init_ids: list[int], settle: int, steps: int, geo, plan_cfg,
    record_every: int = 0, size: int = 128, scene_cfg=None,
) -> list[dict]:  # fmt: skip
    """The plan in the real LIBERO (reading the real simulator), per initial state: LIBERO's own
    success (first step), the final qpos, the phase reached (run it in a spawned process). With
    `record_every` > 0 also "trajectory": the qpos, phase and raw camera frames (`size` px, pirl's
    keys) every that many steps from the settled state. `scene_cfg`: the MJX scene's SceneConfig,
    on which the grasp is chosen (default: its defaults)."""
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import PHASES, pick_place_action
    from pirl.envs.libero_pool import CAMERA_KEYS

    env, task_suite = make_libero_env(suite, task_id, cameras=record_every > 0, size=size)
    obj, target = pick_place_goal({"goal": env.env.parsed_problem["goal_state"]})
    m = env.sim.model._model
    ob, tb = _body(m, obj), _target(m, target)
    # the grasp is chosen on the MJX scene, as on the MJX side
    scene = ls.load_task(suite, task_id, scene_cfg or ls.SceneConfig()).model
    inits = task_suite.get_task_init_states(task_id)
    out = []
    try:
        env.seed(BUILD_SEED)
        for init_id in init_ids:
            obs = settled_start(env, inits[init_id], settle)
            state, first = plan_start(scene, np.array(env.sim.data.qpos), obj, target, geo, plan_cfg), -1
            trajectory: dict = {"qpos": [], "phase": [], "frames": {k: [] for k in CAMERA_KEYS.values()}}
            for t in range(steps):
                if record_every and t % record_every == 0:
                    trajectory["qpos"].append(np.array(env.sim.data.qpos))
                    trajectory["phase"].append(PHASES[state.phase])
                    for raw, ours in CAMERA_KEYS.items():
                        trajectory["frames"][ours].append(np.array(obs[raw]))
                action, state = pick_place_action(plan_cfg, geo, _view(m, env.sim.data._data, ob, tb), state)
                obs, _, done, _ = env.step(action.tolist())
                if done and first < 0:
                    first = t + 1
                if PHASES[state.phase] == "done":
                    break
            rec = {"success_step": first, "qpos": np.array(env.sim.data.qpos), "phase": PHASES[state.phase],
                   "grasp": [state.grasp_yaw, state.grasp_side]}  # fmt: skip
            if record_every:
                rec["trajectory"] = trajectory
            out.append(rec)
    finally:
        env.close()
    return out


def _plan_stepper(m, goal) -> tuple:
    """(mjx model, jitted OSC reset, jitted control step) for driving a host plan on the MJX scene `m`
    (a mujoco.MjModel) towards the compiled goal `goal`: step(d, a) -> (d with current kinematics,
    {"success": the goal on the step's data as the env rewards it, and the fields a plan's view reads})."""
    import jax
    import jax.numpy as jnp

    from pirl.envs import libero_predicates as lp
    from pirl.envs.mjx_module import mjx
    from pirl.envs.osc import OSCConfig, OSCIndices, osc_control_step, osc_reset

    mx = mjx.put_model(m)
    cfg = OSCConfig(timestep=float(m.opt.timestep))
    idx = OSCIndices.from_model(m)
    fields = ("qpos", "qvel", "xpos", "xmat", "site_xpos", "site_xmat")

    @jax.jit
    def step(d, a):
        d = osc_control_step(cfg, idx, mx, d, a)
        success = lp.success(goal, lp.view_mjx(d), jnp)
        d = mjx.kinematics(mx, d)
        return d, {"success": success, **{k: getattr(d, k) for k in fields}}

    return mx, jax.jit(lambda d: osc_reset(cfg, idx, mx, d)), step


def compare_pick_place(
    suite: str,
    task_id: int,
    init_ids: list[int],
    settle: int,
    steps: int = PICK_PLACE_STEPS,
    scene_cfg=None,
    mjx_side: bool = True,
    out=sys.stdout,
) -> list[dict]:
    """Check (c): the plan in both simulators per initial state, each episode until the plan is done
    (after the retreat) or `steps`; one JSON line each, then a summary. `scene_cfg`: the MJX scene's
    SceneConfig (default: libero_scene's); `mjx_side=False` runs the real LIBERO only."""
    import jax
    import jax.numpy as jnp

    from pirl.envs import libero_predicates as lp
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import PHASES, LiberoPlanConfig, pick_place_action

    task = ls.load_task(suite, task_id, scene_cfg or ls.SceneConfig())
    m = task.model
    obj, target = pick_place_goal(task.meta)
    ob, tb = _body(m, obj), _target(m, target)
    # LIBERO's goal as the env evaluates it (the spec is read from LIBERO once, in its own process)
    goal = lp.compile_goal(_isolated(lp.ensure_goal_spec, suite, task_id), m)
    geo = pick_place_geometry(m, obj, target, goal_is_in(task.meta))
    plan_cfg = LiberoPlanConfig()
    mx, reset, step = _plan_stepper(m, goal)
    t0 = time.perf_counter()
    real = _isolated(
        real_pick_place, suite, task_id, init_ids, settle, steps, geo, plan_cfg, scene_cfg=scene_cfg
    )
    real_s = time.perf_counter() - t0
    records = []
    for k, init_id in enumerate(init_ids):
        r = real[k]
        if not mjx_side:
            rec = {"suite": suite, "task": task_id, "init": init_id, "check": "pick_place",
                   "real_success_step": r["success_step"], "real_phase": r["phase"], "pass": True}  # fmt: skip
            records.append(rec)
            out.write(json.dumps(rec) + "\n")
            continue
        t1 = time.perf_counter()
        d = reset(jax.device_put(ls.init_data(task, mx, init_id)))
        for _ in range(settle):
            d, host = step(d, jnp.asarray(SETTLE_ACTION, jnp.float32))
        state, first = plan_start(m, np.asarray(host["qpos"], np.float64), obj, target, geo, plan_cfg), -1
        for t in range(steps):
            view = _view(m, types.SimpleNamespace(**{kk: np.asarray(v) for kk, v in host.items()}), ob, tb)
            action, state = pick_place_action(plan_cfg, geo, view, state)
            d, host = step(d, jnp.asarray(action))
            if first < 0 and bool(host["success"]):  # LIBERO checks every step
                first = t + 1
        qpos = np.asarray(host["qpos"], np.float64)
        errs = object_errors(task, qpos, r["qpos"])
        rec = {
            "suite": suite, "task": task_id, "init": init_id, "check": "pick_place",
            "real_success_step": r["success_step"], "mjx_success_step": first,
            "real_phase": r["phase"], "mjx_phase": PHASES[state.phase],
            "object_err_mm": errs, "max_object_err_mm": max(errs.values()),
            "pass": max(errs.values()) <= 1000 * OBJECT_TOL,
            "mjx_s": round(time.perf_counter() - t1, 1),
        }  # fmt: skip
        records.append(rec)
        out.write(json.dumps(rec) + "\n")
        out.flush()
    summary = {
        "suite": suite, "task": task_id, "check": "pick_place_summary", "episodes": len(records),
        "real_successes": sum(r["real_success_step"] > 0 for r in records),
        "mjx_successes": sum(r["mjx_success_step"] > 0 for r in records) if mjx_side else None,
        "objects_within_2cm": sum(r["pass"] for r in records) if mjx_side else None,
        "caps": [int(m.numeric_data[m.numeric("max_geom_pairs").id]), int(m.numeric_data[m.numeric("max_contact_points").id])],
        "solver": [int(m.opt.iterations), int(m.opt.ls_iterations)],
        "real_s": round(real_s, 1),
    }  # fmt: skip
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return records


# ----------------------------------------------------------------------------- (c) the expert over all inits

EXPERT_FIELDS = ("qpos", "xpos", "xmat", "site_xpos", "site_xmat")
"""mjx.Data fields the plan's view reads (after the step's kinematics)."""


def _expert_step_fn():
    """The batched control step of the expert runs, jitted once per process: (OSC config, OSC
    indices) static, the MJX model an argument, so tasks whose models have the same static
    structure (every libero_spatial task; see docs/libero_mjx.md) share one compiled program.
    (data [N], actions f32[N, 7]) -> (data, goal view fields on the step's own data, view fields
    after kinematics)."""
    import functools

    import jax

    from pirl.envs import libero_predicates as lp
    from pirl.envs.mjx_module import mjx
    from pirl.envs.osc import osc_control_step

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def step(cfg, idx, mx, d, a):
        def one(d, a):
            d = osc_control_step(cfg, idx, mx, d, a)
            v = lp.view_mjx(d)  # what LIBERO's _check_success reads after env.step
            goal = (v.qpos, v.xpos, v.site_xpos, v.site_xmat, v.contact_geom, v.contact_on)
            d = mjx.kinematics(mx, d)
            return d, goal, tuple(getattr(d, k) for k in EXPERT_FIELDS)

        return jax.vmap(one)(d, a)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def reset(cfg, idx, mx, d0, qpos, qvel):
        from pirl.envs.osc import osc_reset

        def one(q, v):
            d = mjx.kinematics(mx, d0.replace(qpos=q, qvel=v))
            return osc_reset(cfg, idx, mx, d)

        return jax.vmap(one)(qpos, qvel)

    return step, reset


_EXPERT_FNS: list = []  # the jitted pair, made on first use (jit's cache then serves every task)


def mjx_expert(
    suite: str,
    task_id: int,
    init_ids: list[int],
    settle: int = SETTLE_STEPS,
    steps: int = PICK_PLACE_STEPS,
    scene_cfg=None,
    plan_cfg=None,
) -> dict:
    """The plan (`pirl.envs.expert.pick_place_action`, host numpy, one plan state per env) on every
    initial state of `init_ids` at once: one vmapped, jitted control step per control step for the
    whole batch; an env is finished at its first success (the task's goal predicates on the step's
    data, as the env rewards it) or when its plan is done, and the batch stops when all are.
    Returns per-init success steps (-1: never), final phases and qpos, and timings."""
    import jax
    import jax.numpy as jnp

    from pirl.envs import libero_predicates as lp
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import PHASES, LiberoPlanConfig, pick_place_batch
    from pirl.envs.mjx_module import mjx
    from pirl.envs.osc import OSCConfig, OSCIndices

    if not _EXPERT_FNS:
        _EXPERT_FNS.extend(_expert_step_fn())
    step, reset = _EXPERT_FNS
    task = ls.load_task(suite, task_id, scene_cfg or ls.SceneConfig())
    m = task.model
    obj, target = pick_place_goal(task.meta)
    ob, tb = _body(m, obj), _target(m, target)
    goal = lp.compile_goal(_isolated(lp.ensure_goal_spec, suite, task_id), m)
    geo = pick_place_geometry(m, obj, target, goal_is_in(task.meta))
    plan_cfg = plan_cfg or LiberoPlanConfig()
    mx = mjx.put_model(m)
    cfg = OSCConfig(timestep=float(m.opt.timestep))
    idx = OSCIndices.from_model(m)
    n = len(init_ids)
    init = task.init_states[np.asarray(init_ids)]
    t0 = time.perf_counter()
    d = reset(cfg, idx, mx, mjx.make_data(mx), jnp.asarray(init[:, 1 : 1 + m.nq], jnp.float32),
              jnp.asarray(init[:, 1 + m.nq : 1 + m.nq + m.nv], jnp.float32))  # fmt: skip
    host = jax.device_get(tuple(getattr(d, k) for k in EXPERT_FIELDS))
    reset_s = time.perf_counter() - t0
    settle_a = jnp.tile(jnp.asarray(SETTLE_ACTION, jnp.float32), (n, 1))
    step_s = []
    for _ in range(settle):
        t1 = time.perf_counter()
        d, _, host = step(cfg, idx, mx, d, settle_a)
        host = jax.device_get(host)
        step_s.append(time.perf_counter() - t1)
    first_call_s = step_s[0] if step_s else 0.0

    def sim_step(actions):
        nonlocal d, host
        t1 = time.perf_counter()
        d, gview, host = step(cfg, idx, mx, d, jnp.asarray(actions))
        gview, host = jax.device_get((gview, host))
        step_s.append(time.perf_counter() - t1)
        # LIBERO's success, checked every step, on the step's own data (as the env rewards it)
        success = np.array([bool(lp.success(goal, lp.SimView(*(x[i] for x in gview)), np)) for i in range(n)])
        return success, views(host)

    def views(host):
        return [
            _view(
                m,
                types.SimpleNamespace(**{k: v[i] for k, v in zip(EXPERT_FIELDS, host, strict=True)}),
                ob,
                tb,
            )
            for i in range(n)
        ]

    # the wall grasp per env, chosen on its settled start (host[0]: qpos)
    starts = [plan_start(m, np.asarray(host[0][i], np.float64), obj, target, geo, plan_cfg) for i in range(n)]
    first, states = pick_place_batch(plan_cfg, geo, views(host), sim_step, steps, starts)
    return {
        "success_step": first.tolist(),
        "phase": [PHASES[s.phase] for s in states],
        "grasp": [[round(s.grasp_yaw, 3), s.grasp_side] for s in starts],
        "qpos": np.asarray(host[0], np.float64),
        "geo": geo,
        "plan_cfg": plan_cfg,
        "control_steps": len(step_s) - settle,
        "reset_s": round(reset_s, 1),
        "first_call_s": round(first_call_s, 1),
        "step_s": round(float(np.median(step_s[1:])), 3) if len(step_s) > 1 else None,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def expert_report(
    suite: str,
    task_id: int,
    init_ids: list[int],
    settle: int = SETTLE_STEPS,
    steps: int = PICK_PLACE_STEPS,
    mjx_side: bool = True,
    real_side: bool = True,
    scene_cfg=None,
    out=sys.stdout,
) -> dict:
    """Check (c) over many initial states: the expert's success in MJX (`mjx_expert`, batched) and the
    same plan replayed in the real LIBERO (`real_pick_place`, in a spawned process): one JSON line
    per task with successes, first-success step statistics and the failing inits."""
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig

    rec: dict = {
        "suite": suite,
        "task": task_id,
        "check": "expert",
        "episodes": len(init_ids),
        "steps": steps,
    }
    task = ls.load_task(suite, task_id, scene_cfg or ls.SceneConfig())
    obj, target = pick_place_goal(task.meta)
    rec["goal"] = task.meta["goal"][0]

    def stats(first: list[int], side: str) -> None:
        ok = [s for s in first if s > 0]
        rec[f"{side}_successes"] = len(ok)
        rec[f"{side}_first_success_step"] = (
            {"min": min(ok), "median": float(np.median(ok)), "max": max(ok)} if ok else None
        )
        rec[f"{side}_failed_inits"] = [i for i, s in zip(init_ids, first, strict=True) if s <= 0]

    if mjx_side:
        r = mjx_expert(suite, task_id, init_ids, settle, steps, scene_cfg)
        stats(r["success_step"], "mjx")
        rec["mjx_failed_phases"] = [p for p, s in zip(r["phase"], r["success_step"], strict=True) if s <= 0]
        rec["mjx_grasps"] = r["grasp"]
        rec.update(
            {f"mjx_{k}": r[k] for k in ("control_steps", "reset_s", "first_call_s", "step_s", "wall_s")}
        )
    if real_side:
        geo = pick_place_geometry(task.model, obj, target, goal_is_in(task.meta))
        t0 = time.perf_counter()
        real = _isolated(
            real_pick_place,
            suite,
            task_id,
            init_ids,
            settle,
            steps,
            geo,
            LiberoPlanConfig(),
            scene_cfg=scene_cfg,
        )
        stats([x["success_step"] for x in real], "real")
        rec["real_failed_phases"] = [x["phase"] for x in real if x["success_step"] <= 0]
        rec["real_grasps"] = [x["grasp"] for x in real]
        rec["real_s"] = round(time.perf_counter() - t0, 1)
    out.write(json.dumps(rec) + "\n")
    out.flush()
    return rec


@dataclasses.dataclass(frozen=True)
class SubPlan:
    """One goal term's plan: "artic" (`geo`: an ArticGeometry) or "pick_place" (`obj`, `target`
    names, `geo`: a PickPlaceGeometry); ids are resolved per simulator's model by name."""

    kind: str
    """"artic", "pick_place", "push", "nudge" (`expert.nudge_action`, after a side entry: `geo` the
    pick-and-place's) or "home" (back to the episode's first grip pose, fingers open: after an object
    is set aside, so the next plan starts from the arm's pose it was measured from)."""
    geo: object
    obj: str = ""
    target: str = ""
    place_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """World offset (m) of a pick-and-place's place point from its target's origin (objects put on one
    region are set down apart, `shared_region_offsets`)."""


SHARED_REGION_SPREAD = 0.7
"""Objects put On one region are set down along its axis, the outer ones this fraction of its half
width from its middle: libero_10 8's two moka pots (9.1 cm across) on the stove's 15 cm cook region,
10.5 cm apart with the pots' body origins 2.25 cm inside it; both set down on its middle, the second
landed on the first and pushed it out."""


def shared_region_offsets(m, plans: list[SubPlan], qpos: np.ndarray | None = None) -> list[SubPlan]:
    """`plans` with a place offset for each pick-and-place that shares an On region (a site) with
    others: spread evenly along the region's in-plane axis across which the objects, as they stand in
    `qpos` (default qpos0), are narrowest in sum, out to SHARED_REGION_SPREAD of its half width; the
    first placed takes the slot farthest from where the later ones start (they are not carried over
    it). In regions (containers) are left as they are: objects may lie on one another there."""
    import mujoco

    from pirl.envs.expert import world_extents

    d = mujoco.MjData(m)
    if qpos is not None:
        d.qpos[:] = qpos
    mujoco.mj_kinematics(m, d)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(plans):
        if p.kind == "pick_place" and p.geo.target_floor is None and _target(m, p.target)[0] == "site":
            groups.setdefault(p.target, []).append(i)
    out = list(plans)
    for target, idx in groups.items():
        if len(idx) < 2:
            continue
        sid = _target(m, target)[1]
        axes, half = d.site_xmat[sid].reshape(3, 3)[:, :2].T, m.site_size[sid][:2]
        widths = np.zeros(2)
        starts = []
        for i in idx:
            b = _body(m, plans[i].obj)
            lo, hi = world_extents(plans[i].geo, d.xmat[b].reshape(3, 3))
            widths += [abs(a @ (hi - lo)) for a in axes]  # extents along the region's axes
            starts.append(np.array(d.xpos[b]))
        k = int(np.argmin(widths / half))  # the axis with the most room for the objects side by side
        reach = SHARED_REGION_SPREAD * half[k]
        slots = [s * axes[k] * [1.0, 1.0, 0.0] for s in np.linspace(-reach, reach, len(idx))]
        centre = np.array(d.site_xpos[sid])
        for n, i in enumerate(idx):
            later = starts[n + 1 :]
            if later:  # farthest from where the objects still to be placed start
                rest = np.mean(later, axis=0)
                pick = max(range(len(slots)), key=lambda j: np.linalg.norm((centre + slots[j] - rest)[:2]))
            else:
                pick = 0
            out[i] = dataclasses.replace(plans[i], place_offset=tuple(float(x) for x in slots.pop(pick)))
    return out


STAGE_CLEARANCE = 0.03
"""An object standing where a drawer to be opened first will reach is moved (`staging_point`) so that
its footprint keeps this far (m) from the opened drawer and every other body: room for the open
fingers at its wall (libero_goal 3's bowl stands under the open top drawer's overhang)."""
STAGE_STEP = 0.01
"""Step (m) of the shifts tried for a staging point."""
STAGE_REACH = 0.3
"""Longest shift (m) tried for a staging point."""
STAGE_ARM_REACH = (0.4, 0.7)
"""Distances (m, in xy) from the robot's base a staged object's centre keeps to: the arm works there.
Measured on libero_goal 3: set down 0.33 m from the base, the lift back out stalled (real LIBERO); 0.78
m away, the retreat stretched the elbow to its joint limit, where the OSC cannot fold it back (MJX)."""


def clear_shift(
    obj_lo: np.ndarray,
    obj_hi: np.ndarray,
    obstacles: list[tuple[np.ndarray, np.ndarray]],
    bounds: tuple[np.ndarray, np.ndarray],
    clearance: float = STAGE_CLEARANCE,
    step: float = STAGE_STEP,
    reach: float = STAGE_REACH,
    base: np.ndarray | None = None,
    arm_reach: tuple[float, float] = STAGE_ARM_REACH,
) -> np.ndarray | None:
    """The shortest shift f64[2] (on a grid of `step`, within `reach`) that moves the footprint
    `obj_lo`..`obj_hi` (f64[2] corners) `clearance` clear of every obstacle footprint (lo, hi
    corners) and keeps it inside `bounds` (the table top's corners) and, with `base` (the robot base's
    xy), its centre within `arm_reach` (min, max distance) of the base; None if there is none."""
    k = np.arange(-round(reach / step), round(reach / step) + 1) * step
    shifts = np.stack(np.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    shifts = shifts[np.linalg.norm(shifts, axis=1) <= reach + 1e-9]
    lo, hi = obj_lo + shifts, obj_hi + shifts
    ok = np.all(lo >= bounds[0], axis=1) & np.all(hi <= bounds[1], axis=1)
    for o_lo, o_hi in obstacles:
        ok &= np.any(lo > o_hi + clearance, axis=1) | np.any(hi < o_lo - clearance, axis=1)
    if base is not None:
        dist = np.linalg.norm(0.5 * (lo + hi) - base, axis=1)
        ok &= (dist >= arm_reach[0]) & (dist <= arm_reach[1])
    if not ok.any():
        return None
    shifts = shifts[ok]
    return shifts[int(np.argmin(np.linalg.norm(shifts, axis=1)))]


def staging_point(m, qpos: np.ndarray | None, obj: str, opener) -> np.ndarray | None:
    """Where (world xy f64[2], on the table top) to set object `obj` down before the drawer of `opener`
    (an ArticGeometry to pull out) is opened: None when the object's footprint keeps STAGE_CLEARANCE
    from the drawer opened to its goal, else the nearest point (`clear_shift`) whose footprint keeps it
    from the opened drawer's and every other body's (robot and table left out), on the table, within
    the arm's reach (`STAGE_ARM_REACH`). Bodies as they stand in `qpos` (default qpos0), footprints
    their geoms' world bounds (all geoms: MJX's scene collides by explicit pairs, so contype says
    nothing)."""
    import mujoco

    from pirl.envs.libero_scene import geom_world_points, is_table, robot_base_xy, root_body

    d = mujoco.MjData(m)
    if qpos is not None:
        d.qpos[:] = qpos
    d.qpos[opener.qpos_adr] = opener.q_goal
    mujoco.mj_kinematics(m, d)
    ob = root_body(m, _body(m, obj))
    drawer = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, opener.body)
    boxes: dict[int, list[np.ndarray]] = {}
    in_drawer: list[np.ndarray] = []
    table: list[np.ndarray] = []
    for g in range(m.ngeom):
        b = m.geom_bodyid[g]
        name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, root_body(m, b)) or ""
        if name.startswith(("robot0_", "mount0_")) or root_body(m, b) == 0:
            continue
        pts = geom_world_points(m, d, g)
        if is_table(m, b):  # its top's bounds (MJX's table top is a plane, a rectangle here)
            table.append(pts)
            continue
        boxes.setdefault(root_body(m, b), []).append(pts)
        a = b
        while a not in (0, drawer):
            a = m.body_parentid[a]
        if a == drawer:
            in_drawer.append(pts)
    if not table or not in_drawer:
        return None
    obj_pts = np.concatenate(boxes.pop(ob))
    lo, hi = obj_pts[:, :2].min(0), obj_pts[:, :2].max(0)
    dr = np.concatenate(in_drawer)[:, :2]
    if np.any(lo > dr.max(0) + STAGE_CLEARANCE) or np.any(hi < dr.min(0) - STAGE_CLEARANCE):
        return None
    obstacles = [(np.concatenate(p)[:, :2].min(0), np.concatenate(p)[:, :2].max(0)) for p in boxes.values()]
    top = np.concatenate(table)[:, :2]
    shift = clear_shift(lo, hi, obstacles, (top.min(0), top.max(0)), base=robot_base_xy(m, d))
    if shift is None:
        return None
    return d.xpos[ob][:2] + shift


def goal_subplans(m, spec: dict, qpos: np.ndarray | None = None) -> list[SubPlan]:
    """The task's goal terms as plans in the order they are run: drawers to open (an `open` term, or
    the drawer holding an `in` / `on` region when it is not open in `qpos`, after setting the object
    aside on the table when it stands where that drawer will open, `staging_point`) and knobs to turn
    first, then the pick-and-places (a push, `push_action`, for an object on a region that is too flat to
    grasp and too wide to straddle: a plate; objects put on one region set down apart,
    `shared_region_offsets`), then what is to be closed (drawers, doors). Geometry from model `m`
    (the MJX scene)."""
    import mujoco

    from pirl.envs.libero_artic_expert import articulation_geometry, push_geometry, pushable
    from pirl.envs.libero_scene import is_table
    from pirl.errors import UserError

    first, middle, last = [], [], []
    for t in spec["terms"]:
        if t["kind"] == "joints":
            (last if t["term"][0].lower() == "close" else first).append(
                SubPlan("artic", articulation_geometry(m, t))
            )
            continue
        if t["kind"] not in ("site_in", "site_on", "object_on"):
            raise UserError(f"no plan for goal term {t['term']}")
        if "open_joints" in t:
            lo, hi = t["open_intervals"][0]
            adr = m.jnt_qposadr[m.joint(t["open_joints"][0]).id]
            q = 0.0 if qpos is None else float(qpos[adr])
            if not lo < q < hi:
                opener = {"kind": "joints", "term": ["open", t["term"][2]], "joints": t["open_joints"][:1],
                          "intervals": t["open_intervals"][:1]}  # fmt: skip
                drawer = articulation_geometry(m, opener)
                stage = staging_point(m, qpos, t["term"][1], drawer)
                if stage is not None:  # the object stands where the drawer will open: set it aside first
                    table = next(b for b in range(1, m.nbody) if m.body_parentid[b] == 0 and is_table(m, b))
                    name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, table)
                    offset = (*(stage - m.body_pos[table][:2]), 0.0)  # the place height stays the table's top
                    first.append(SubPlan("pick_place", pick_place_geometry(m, t["term"][1], name),
                                         t["term"][1], name, place_offset=tuple(float(x) for x in offset)))  # fmt: skip
                    first.append(SubPlan("home", None))
                first.append(SubPlan("artic", drawer))
        obj, target = t["term"][1], t["term"][2]
        if t["kind"] != "object_on" and pushable(m, _body(m, obj)):
            middle.append(
                SubPlan("push", push_geometry(m, _body(m, obj), np.asarray(t["size"])), obj, target)
            )
            continue
        middle.append(
            SubPlan("pick_place", pick_place_geometry(m, obj, target, t["kind"] == "site_in"), obj, target)
        )
    entered = [p for p in middle if p.kind == "pick_place" and p.geo.entry is not None]
    for p in entered:  # pushed the rest of the way in (`nudge_action`)
        middle.insert(middle.index(p) + 1, SubPlan("nudge", p.geo, p.obj, p.target))
    if last and entered:
        # the side entry leaves the wrist turned a quarter: back to the first pose before the door
        # (pushed from there, the last joint stopped at its limit, libero_10 9)
        middle.append(SubPlan("home", None))
    return first + shared_region_offsets(m, middle, qpos) + last


def plan_label(plan: SubPlan) -> str:
    """A sub-plan in a report line: pick_place:<obj>, push:<obj>, nudge:<obj>, home, or
    <pull|push|turn>:<body>."""
    if plan.kind == "home":
        return "home"
    if plan.kind != "artic":
        return f"{plan.kind}:{plan.obj}"
    verb = {"slide": "pull" if plan.geo.pull else "push", "hinge": "turn", "door": "push"}[plan.geo.kind]
    return f"{verb}:{plan.geo.body}"


def _grip_site(m) -> int:
    import mujoco

    return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")


@dataclasses.dataclass(frozen=True)
class SequenceState:
    """Which sub-plan runs and its own plan state (None: not started)."""

    index: int = 0
    sub: object = None
    start_mat: np.ndarray | None = None
    """Grip orientation at the episode's first step."""
    start_pos: np.ndarray | None = None
    """Grip position at the episode's first step."""
    waited: int = 0
    """Control steps the current sub-plan has waited for the objects to come to rest."""


def sequence_action(
    plan_cfg, plans: list[SubPlan], m, d, state: SequenceState, push_cfg=None, scene=None
) -> tuple[np.ndarray, SequenceState, bool]:
    """One control step of a goal sequence in either simulator (model `m`, data `d` with MuJoCo's
    field names): (action, next state, whether every sub-plan is done). A sub-plan runs until its
    own plan is done, then the next starts from wherever the arm is; a pick-and-place chooses its
    grasp (`grasp_choice`) when it starts, from the poses then (a drawer opened before it).
    `push_cfg`: the push plan's PushConfig (default: its defaults); `scene`: the MJX scene's model
    the grasp is chosen on (default `m`; the real side passes it so both choose alike)."""
    import mujoco

    from pirl.envs.expert import (
        NUDGE_PHASES,
        PHASES,
        NudgeState,
        grasp_point,
        nudge_action,
        pick_place_action,
        rotation_error,
        servo_action,
        transit_height,
    )
    from pirl.envs.libero_artic_expert import (
        ARTIC_PHASES,
        PUSH_PHASES,
        ArticPlanState,
        PushConfig,
        PushPlanState,
        articulated_action,
        articulation_view,
        push_action,
        push_path,
    )

    push_cfg = push_cfg if push_cfg is not None else PushConfig()
    plan = plans[state.index]
    if state.start_mat is None:
        site = _grip_site(m)
        state = dataclasses.replace(
            state, start_mat=np.array(d.site_xmat[site]).reshape(3, 3), start_pos=np.array(d.site_xpos[site])
        )
    start = state.start_mat
    if plan.kind == "home":
        site = _grip_site(m)
        steps = state.sub or 0
        err = state.start_pos - np.asarray(d.site_xpos[site])
        turn = rotation_error(start, np.asarray(d.site_xmat[site]).reshape(3, 3))
        action = servo_action(plan_cfg, err, turn, -1.0)
        there = np.linalg.norm(err) < 2 * plan_cfg.reach_tol and np.linalg.norm(turn) < 0.1
        finished = there or steps + 1 >= plan_cfg.phase_timeout
        sub = steps + 1
    elif plan.kind == "nudge":
        sub = state.sub or NudgeState()
        action, sub = nudge_action(
            plan_cfg, plan.geo, _view(m, d, _body(m, plan.obj), _target(m, plan.target)), sub
        )
        finished = NUDGE_PHASES[sub.phase] == "done"
    elif plan.kind == "artic":
        sub = state.sub or ArticPlanState()
        action, sub = articulated_action(plan_cfg, plan.geo, articulation_view(m, d, plan.geo), sub)
        finished = ARTIC_PHASES[sub.phase] == "done"
    elif plan.kind == "push":
        view = _view(m, d, _body(m, plan.obj), _target(m, plan.target))
        sub = state.sub
        if sub is None:  # the object's way round what stands near it, from this episode's poses
            kind, tid = _target(m, plan.target)
            size = np.asarray(m.site_size[tid] if kind == "site" else [np.inf] * 3)
            ids = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n) for n, _ in plan.geo.others}
            pose = lambda name: (d.xpos[ids[name]], d.xmat[ids[name]])  # noqa: E731
            path = push_path(plan.geo, pose, view.obj_pos, view.obj_mat, view.target_pos, size, push_cfg)
            sub = PushPlanState(path=path)
        action, sub = push_action(plan_cfg, push_cfg, plan.geo, view, sub)
        finished = PUSH_PHASES[sub.phase] == "done"
    else:
        view = _view(m, d, _body(m, plan.obj), _target(m, plan.target))
        view = dataclasses.replace(view, target_pos=view.target_pos + np.asarray(plan.place_offset))
        sub = state.sub
        if sub is None and state.waited < plan_cfg.rest_wait:
            # objects still moving (thrown by the last release, or LIBERO's start) must land first
            free = [m.jnt_dofadr[j] for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
            speed = max((np.linalg.norm(d.qvel[a : a + 3]) for a in free), default=0.0)
            if speed > plan_cfg.rest_speed:
                hold = servo_action(plan_cfg, np.zeros(3), rotation_error(start, view.grip_mat), -1.0)
                return hold, dataclasses.replace(state, waited=state.waited + 1), False
        if sub is None:
            # after an articulated plan the grip may be left tilted: hold the episode's first orientation
            tilted = np.linalg.norm(rotation_error(start, view.grip_mat)) > 0.1
            qpos = np.asarray(d.qpos, np.float64)
            chooser = scene if scene is not None else m
            begin = plan_start(chooser, qpos, plan.obj, plan.target, plan.geo, plan_cfg, plan.place_offset)
            first = view
            if tilted:  # the grasp's turn and offset as from the first orientation
                closing = start @ view.grip_mat.T @ view.finger_axis
                first = dataclasses.replace(view, grip_mat=start, finger_axis=closing)
            _, sub = pick_place_action(plan_cfg, plan.geo, first, begin)
            sub = dataclasses.replace(sub, ref_mat=wrist_turn(m, d, sub.ref_mat, view.grip_mat))
            # over what stands between the arm and the hover point
            hover = grasp_point(view, sub) + np.array([0.0, 0.0, plan_cfg.hover])
            feet = standing_footprints(m, d, plan.obj)
            parts = gripper_parts(m, d)
            transit = transit_height(view.grip_pos, hover, feet, plan_cfg.transit_clearance, parts)
            sub = dataclasses.replace(sub, phase=0, steps=0, transit=transit)
        action, sub = pick_place_action(plan_cfg, plan.geo, view, sub)
        finished = PHASES[sub.phase] == "done"
    if finished and state.index + 1 < len(plans):
        return action, dataclasses.replace(state, index=state.index + 1, sub=None, waited=0), False
    return action, dataclasses.replace(state, sub=sub), finished


def _trace_file(trace_dir: str | None, suite: str, task_id: int, init_id: int, side: str):
    """A context manager: the open JSON-lines file for one episode's per-step trace in `trace_dir`
    (an existing folder), or None when there is no trace (closed even if the episode raises)."""
    if trace_dir is None:
        return contextlib.nullcontext()
    return open(os.path.join(trace_dir, f"{suite}_{task_id}_init{init_id}_{side}.jsonl"), "w")


def plan_trace_line(m, d, plans: list[SubPlan], state: SequenceState, action: np.ndarray, t: int) -> dict:
    """One control step of a goal sequence as a JSON-able record (`--trace-dir`): the step, the
    sub-plan running (index and label) and its phase, the grip site's position, the world position of
    every object a sub-plan moves, the goal joints' positions and the action taken. `m`, `d`: either
    simulator's model and data (MuJoCo's field names), after the step's action was chosen."""
    from pirl.envs.expert import NUDGE_PHASES, PHASES
    from pirl.envs.libero_artic_expert import ARTIC_PHASES, PUSH_PHASES

    plan, sub = plans[state.index], state.sub
    names = {"pick_place": PHASES, "nudge": NUDGE_PHASES, "artic": ARTIC_PHASES, "push": PUSH_PHASES}
    if plan.kind == "home":
        phase = "home"
    elif sub is None:
        phase = "wait"  # objects still moving before a pick-and-place starts
    else:
        phase = names[plan.kind][sub.phase]
    f64 = lambda x: np.asarray(x, np.float64).round(4).tolist()  # noqa: E731 (MJX's float32 read exactly)
    objects = {p.obj: f64(d.xpos[_body(m, p.obj)]) for p in plans if p.obj}
    # the goal joints by their body (LIBERO's qpos layout in both simulators)
    joints = {p.geo.body: round(float(d.qpos[p.geo.qpos_adr]), 4) for p in plans if p.kind == "artic"}
    return {
        "t": t, "subplan": state.index, "plan": plan_label(plan), "phase": phase,
        "grip": f64(d.site_xpos[_grip_site(m)]), "objects": objects, "joints": joints,
        "action": np.asarray(action, np.float64).round(3).tolist(),
    }  # fmt: skip


def real_plan(
    suite: str, task_id: int, init_ids: list[int], settle: int, steps: int, plans_per_init, plan_cfg,
    scene_cfg=None, trace_dir: str | None = None,
) -> list[dict]:  # fmt: skip
    """The goal sequence in the real LIBERO (reading the real simulator), per initial state (its own
    sub-plans, `plans_per_init`): LIBERO's own success (first step), the final qpos, the sub-plan
    reached (run it in a spawned process). `scene_cfg`: the MJX scene's SceneConfig, on which grasps
    are chosen (default: its defaults). `trace_dir`: write each step's `plan_trace_line` there."""
    from pirl.envs import libero_scene as ls

    env, task_suite = make_libero_env(suite, task_id)
    m = env.sim.model._model
    # grasps are chosen on the MJX scene, as on the MJX side
    scene = ls.load_task(suite, task_id, scene_cfg or ls.SceneConfig()).model
    inits = task_suite.get_task_init_states(task_id)
    out = []
    try:
        env.seed(BUILD_SEED)
        for init_id, plans in zip(init_ids, plans_per_init, strict=True):
            settled_start(env, inits[init_id], settle)
            state, first, t = SequenceState(), -1, 0
            with _trace_file(trace_dir, suite, task_id, init_id, "real") as trace:
                for t in range(steps):
                    data = env.sim.data._data
                    action, state, finished = sequence_action(plan_cfg, plans, m, data, state, scene=scene)
                    if trace is not None:
                        trace.write(json.dumps(plan_trace_line(m, data, plans, state, action, t)) + "\n")
                    _, _, done, _ = env.step(action.tolist())
                    if done and first < 0:
                        first = t + 1
                    if finished:
                        break
            out.append({"success_step": first, "qpos": np.array(env.sim.data.qpos), "subplan": state.index,
                        "steps": t + 1})  # fmt: skip
    finally:
        env.close()
    return out


PLAN_STEPS = 520
"""Control steps per episode of the goal-sequence check (openpi's libero_10 limit)."""


def compare_plan(
    suite: str, task_id: int, init_ids: list[int], settle: int, steps: int = PLAN_STEPS,
    mjx_side: bool = True, out=sys.stdout, scene=None, trace_dir: str | None = None, real_side: bool = True,
) -> list[dict]:  # fmt: skip
    """Check (c) with the goal-sequencing expert (`goal_subplans`: open / close / turn-on plans of
    `pirl.envs.libero_artic_expert` and pick-and-places, in order), in both simulators, each reading
    its own; one JSON line per initial state (success steps, goal joints' final values, object
    errors), then a summary. The MJX side's success is the goal predicates on each step's data.
    `scene`: the MJX scene's SceneConfig (default: its defaults). `trace_dir`: each episode's
    per-step record (`plan_trace_line`) as JSON lines there, one file per init and simulator.
    `real_side` False (`--mjx-only`): MJX alone, its real_* fields None (minutes less per task)."""
    if not (mjx_side or real_side):
        raise ValueError("compare_plan: nothing to run (both mjx_side and real_side are False)")
    import jax
    import jax.numpy as jnp

    from pirl.envs import libero_predicates as lp
    from pirl.envs import libero_scene as ls
    from pirl.envs.expert import LiberoPlanConfig

    if trace_dir is not None:  # before minutes of episodes
        if os.path.exists(trace_dir) and not os.path.isdir(trace_dir):
            raise ValueError(f"trace_dir {trace_dir!r} is a file: give a folder (created if missing)")
        os.makedirs(trace_dir, exist_ok=True)
    task = ls.load_task(suite, task_id, scene if scene is not None else ls.SceneConfig())
    m = task.model
    spec = _isolated(lp.ensure_goal_spec, suite, task_id)
    goal = lp.compile_goal(spec, m)
    # per init: where an object is set aside depends on where everything stands (`staging_point`)
    plans_per_init = [goal_subplans(m, spec, task.init_states[i][1 : 1 + m.nq]) for i in init_ids]
    plan_cfg = LiberoPlanConfig()
    mx, reset, step = _plan_stepper(m, goal)
    joints = [p.geo.qpos_adr for p in plans_per_init[0] if p.kind == "artic"]
    t0 = time.perf_counter()
    real = [None] * len(init_ids)
    if real_side:
        real = _isolated(real_plan, suite, task_id, init_ids, settle, steps, plans_per_init, plan_cfg,
                         scene_cfg=scene, trace_dir=trace_dir)  # fmt: skip
    real_s = time.perf_counter() - t0
    records = []
    for k, init_id in enumerate(init_ids):
        r, plans = real[k], plans_per_init[k]
        rec = {"suite": suite, "task": task_id, "init": init_id, "check": "plan",
               "plans": [plan_label(p) for p in plans],
               "real_success_step": r and r["success_step"], "real_subplan": r and r["subplan"],
               "real_steps": r and r["steps"], "real_q": r and [round(float(r["qpos"][a]), 4) for a in joints]}  # fmt: skip
        if mjx_side:
            t1 = time.perf_counter()
            d = reset(jax.device_put(ls.init_data(task, mx, init_id)))
            for _ in range(settle):
                d, host = step(d, jnp.asarray(SETTLE_ACTION, jnp.float32))
            state, first, t = SequenceState(), -1, 0
            with _trace_file(trace_dir, suite, task_id, init_id, "mjx") as trace:
                for t in range(steps):
                    view = types.SimpleNamespace(**{kk: np.asarray(v) for kk, v in host.items()})
                    action, state, finished = sequence_action(plan_cfg, plans, m, view, state)
                    if trace is not None:
                        trace.write(json.dumps(plan_trace_line(m, view, plans, state, action, t)) + "\n")
                    d, host = step(d, jnp.asarray(action))
                    if first < 0 and bool(host["success"]):
                        first = t + 1
                    if finished:
                        break
            qpos = np.asarray(host["qpos"], np.float64)
            errs = object_errors(task, qpos, r["qpos"]) if r is not None else {}
            rec.update(
                mjx_success_step=first, mjx_subplan=state.index, mjx_steps=t + 1,
                mjx_q=[round(float(qpos[a]), 4) for a in joints],
                object_err_mm=errs, max_object_err_mm=max(errs.values()) if errs else 0.0,
                mjx_s=round(time.perf_counter() - t1, 1),
            )  # fmt: skip
        rec["pass"] = (r is None or r["success_step"] > 0) and (not mjx_side or rec["mjx_success_step"] > 0)
        records.append(rec)
        out.write(json.dumps(rec) + "\n")
        out.flush()
    summary = {
        "suite": suite, "task": task_id, "check": "plan_summary", "episodes": len(records),
        "real_successes": sum(r["real_success_step"] > 0 for r in records) if real_side else None,
        "mjx_successes": sum(r["mjx_success_step"] > 0 for r in records) if mjx_side else None,
        "real_s": round(real_s, 1),
    }  # fmt: skip
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return records


def compare(suite: str, task_id: int, init_ids: list[int], settle: int, out=sys.stdout) -> list[dict]:
    """Run both simulators and write the JSON lines; returns the records."""
    from pirl.envs import libero_scene as ls

    task = ls.load_task(suite, task_id)
    seqs = action_sequences()
    names = list(seqs)
    actions = np.stack([seqs[n] for n in names])
    mx, run = mjx_rollouts_fn(task, settle)
    records = []
    for init_id in init_ids:
        t0 = time.perf_counter()
        real = real_rollouts_isolated(suite, task_id, init_id, seqs, settle)
        t1 = time.perf_counter()
        settled, qpos, traj = run(ls.init_data(task, mx, init_id), actions)
        settled, qpos, traj = np.asarray(settled), np.asarray(qpos), np.asarray(traj)
        t2 = time.perf_counter()
        base = {"suite": suite, "task": task_id, "init": init_id}
        pos_err = float(np.linalg.norm(settled[:3] - real["settled"][:3]))
        rot_err = float(np.linalg.norm(settled[3:6] - real["settled"][3:6]))
        rec = {
            **base,
            "check": "settled",
            "real": np.round(real["settled"], 4).tolist(),
            "mjx": np.round(settled, 4).tolist(),
            "pos_err_mm": round(1000 * pos_err, 2),
            "axis_angle_err_rad": round(rot_err, 4),
            "finger_err_mm": round(1000 * float(np.abs(settled[6:] - real["settled"][6:]).max()), 3),
            "object_err_mm": object_errors(task, qpos, real["qpos"]),
            "pass": pos_err <= POS_TOL and rot_err <= ROT_TOL,
            "real_s": round(t1 - t0, 1),
            "mjx_s": round(t2 - t1, 1),
        }
        records.append(rec)
        for k, name in enumerate(names):
            r, s = real["traj"][name], traj[k]
            err = np.linalg.norm(r[:, :3] - s[:, :3], axis=1)
            records.append(
                {
                    **base,
                    "check": "eef",
                    "sequence": name,
                    "real_disp_mm": round(1000 * float(np.linalg.norm(r[-1, :3] - real["settled"][:3])), 1),
                    "mjx_disp_mm": round(1000 * float(np.linalg.norm(s[-1, :3] - settled[:3])), 1),
                    "final_err_mm": round(1000 * float(err[-1]), 2),
                    "max_err_mm": round(1000 * float(err.max()), 2),
                    "axis_angle_err_rad": round(
                        float(np.linalg.norm(r[:, 3:6] - s[:, 3:6], axis=1).max()), 4
                    ),
                    "finger_err_mm": round(1000 * float(np.abs(r[:, 6:] - s[:, 6:]).max()), 3),
                    "pass": float(err[-1]) <= EEF_TOL,
                }
            )
        for rec in records[-(1 + len(names)) :]:
            out.write(json.dumps(rec) + "\n")
            out.flush()
    return records


def main(argv: list[str] | None = None) -> None:
    from pirl.envs.libero_scene import GROUP_FRAMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", nargs="+", type=int, default=[0])
    p.add_argument("--init-states", nargs="+", type=int, default=[0])
    p.add_argument("--settle", type=int, default=SETTLE_STEPS, help="no-op steps after the reset")
    p.add_argument("--checks", nargs="+", choices=CHECKS, default=["state"],
                   help="state: (a) settled state and (b) eef trajectories; pick_place: (c) side by side; "
                        "expert: (c) success over the init states, MJX batched and real; plan: (c) goal sequences; "
                        "images: (d)")  # fmt: skip
    p.add_argument("--steps", type=int, default=PICK_PLACE_STEPS, help="(c): control steps per episode")
    p.add_argument(
        "--caps",
        nargs=2,
        type=int,
        default=None,
        metavar=("PAIRS", "POINTS"),
        help="(c): the MJX scene's max_geom_pairs and max_contact_points (default: SceneConfig's)",
    )
    p.add_argument(
        "--solver",
        nargs=2,
        type=int,
        default=None,
        metavar=("ITERATIONS", "LS_ITERATIONS"),
        help="(c): the MJX scene's solver and line-search iterations (default: SceneConfig's)",
    )
    p.add_argument(
        "--group-frame",
        choices=GROUP_FRAMES,
        default=None,
        help="(c): the MJX scene's group_frame (default: SceneConfig's)",
    )
    p.add_argument(
        "--box-frames",
        choices=("canonical", "member"),
        default=None,
        help="(c): the fitted boxes' frames, SceneConfig.canonical_box_frames (default: SceneConfig's)",
    )
    p.add_argument(
        "--finger-boxes",
        type=int,
        default=None,
        help="(c): boxes per finger, SceneConfig.finger_boxes (slabs along the tapered finger)",
    )
    p.add_argument(
        "--object-wall-growth",
        nargs=2,
        default=None,
        metavar=("NAME_PREFIX", "GROWTH"),
        help="(c): SceneConfig.object_wall_growth for one name prefix (e.g. akita_black_bowl 0.003)",
    )
    p.add_argument("--max-wall-growth", type=float, default=None,
                   help="(c): the MJX scene's max_wall_growth (default: SceneConfig's)")  # fmt: skip
    p.add_argument("--real-only", action="store_true", help="(c): run the plan in the real LIBERO only")
    p.add_argument("--mjx-only", action="store_true", help="(c) expert, plan: run it in MJX only")
    p.add_argument("--plan-steps", type=int, default=PLAN_STEPS, help="(c) plan: control steps per episode")
    p.add_argument("--trace-dir", default=None,
                   help="(c) plan: write each episode's per-step trace (sub-plan, phase, grip, objects, action) "
                        "as JSON lines here, one file per init and simulator")  # fmt: skip
    p.add_argument("--image-sizes", nargs="+", type=int, default=[128, 224], help="(d): square image sides")
    p.add_argument("--images-dir", default=None, help="(d): save side-by-side PNGs here")
    p.add_argument("--looks", nargs="+", choices=["primitives", "meshes"], default=["primitives"],
                   help="(d): pirl's looks to compare (LiberoRenderConfig.look)")  # fmt: skip
    args = p.parse_args(argv)
    if args.real_only and args.mjx_only:
        p.error("--real-only and --mjx-only together leave nothing to run: give one of them")
    if args.trace_dir is not None and "plan" not in args.checks:
        p.error("--trace-dir traces the goal-sequence plans: add --checks plan (or drop --trace-dir)")
    import pirl  # XLA CPU flag before the first JAX computation

    pirl.create_backends()  # one XLA CPU pool thread: vmapped MJX steps deadlock jaxlib 0.10's LAPACK otherwise

    ok = True
    for t in args.tasks:
        if "state" in args.checks:
            recs = compare(args.suite, t, args.init_states, args.settle)
            ok &= all(r["pass"] for r in recs)
        if {"pick_place", "expert", "plan"} & set(args.checks):
            from pirl.envs.libero_scene import SceneConfig

            scene = {}
            if args.caps is not None:
                scene.update(max_geom_pairs=args.caps[0], max_contact_points=args.caps[1])
            if args.solver is not None:
                scene.update(solver_iterations=args.solver[0], ls_iterations=args.solver[1])
            if args.max_wall_growth is not None:
                scene.update(max_wall_growth=args.max_wall_growth, task_wall_growth=())
            if args.object_wall_growth is not None:
                scene.update(
                    object_wall_growth=((args.object_wall_growth[0], float(args.object_wall_growth[1])),)
                )
            if args.group_frame is not None:
                scene.update(group_frame=args.group_frame)
            if args.box_frames is not None:
                scene.update(canonical_box_frames=args.box_frames == "canonical")
            if args.finger_boxes is not None:
                scene.update(finger_boxes=args.finger_boxes)
        if "expert" in args.checks:
            expert_report(args.suite, t, args.init_states, args.settle, args.steps, not args.real_only,
                          not args.mjx_only, SceneConfig(**scene))  # fmt: skip
        if "pick_place" in args.checks:
            recs = compare_pick_place(
                args.suite,
                t,
                args.init_states,
                args.settle,
                args.steps,
                SceneConfig(**scene),
                not args.real_only,
            )
            ok &= all(r["pass"] for r in recs)
        if "plan" in args.checks:
            recs = compare_plan(
                args.suite,
                t,
                args.init_states,
                args.settle,
                args.plan_steps,
                not args.real_only,
                scene=SceneConfig(**scene),
                trace_dir=args.trace_dir,
                real_side=not args.mjx_only,
            )
            ok &= all(r["pass"] for r in recs)
        if "images" in args.checks:
            compare_images(args.suite, t, args.init_states, args.settle, args.image_sizes, args.images_dir,
                           looks=tuple(args.looks))  # fmt: skip
    print(
        json.dumps(
            {
                "summary": True,
                "suite": args.suite,
                "tasks": args.tasks,
                "init_states": args.init_states,
                "checks": args.checks,
                "pass": ok,
            }
        )
    )


if __name__ == "__main__":
    main()
