"""Side-by-side check of pirl's MJX LIBERO tasks against the real LIBERO (needs the `libero` extra).

For each task and official initial state, both simulators start from the same state (LIBERO: the
task's env built with pirl's build seed, reset, set_init_state; pirl: the MJX scene of
`pirl.envs.libero_scene` with the state loaded) and settle with openpi's no-op steps. Reported, one
JSON line each:

- (a) `settled`: the 8-D state (eef position, robosuite axis-angle, finger qpos) of both after
  settling; target: position within 5 mm, axis-angle within 0.05 rad;
- (b) `eef`: the eef trajectory under open-loop action sequences of 20 steps (each axis +/-0.5,
  each rotation +/-0.5, gripper close) started after settling; target: within 1 cm.

    python -m pirl.envs.libero_check --suite libero_spatial --tasks 0 1 --init-states 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pirl.envs.build_libero import BUILD_SEED, SETTLE_ACTION, SETTLE_STEPS, make_libero_env

SEQUENCE_STEPS = 20
"""Control steps per open-loop sequence."""

POS_TOL, ROT_TOL, EEF_TOL = 0.005, 0.05, 0.01
"""Targets: settled eef position (m), settled axis-angle (rad), eef after each sequence (m)."""


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


def real_rollouts(
    suite: str, task_id: int, init_id: int, sequences: dict[str, np.ndarray], settle: int
) -> dict:
    """Settled state f32[8] and per-sequence states f32[T, 8] in the real LIBERO."""
    from pirl.envs.libero_pool import libero_state

    env, task_suite = make_libero_env(suite, task_id)
    init = task_suite.get_task_init_states(task_id)[init_id]
    env.seed(BUILD_SEED)

    def start():
        np.random.seed(BUILD_SEED)  # LIBERO's reset places the fixtures from numpy's global generator
        env.reset()
        obs = env.set_init_state(init)
        for _ in range(settle):
            obs, _, _, _ = env.step(list(SETTLE_ACTION))
        return libero_state(obs)

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


def real_rollouts_isolated(
    suite: str, task_id: int, init_id: int, sequences: dict[str, np.ndarray], settle: int
) -> dict:
    """`real_rollouts` in a fresh (spawned) process: robosuite stepping in a process whose JAX
    runtime is up deadlocked here (all threads in futex waits), so the two never share a process."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:  # raises if the child dies
        return pool.submit(real_rollouts, suite, task_id, init_id, sequences, settle).result()


def mjx_rollouts_fn(task, settle: int):
    """(init data, actions f32[S, T, 7]) -> (settled state f32[8], settled qpos, states f32[S, T, 8]).

    One jitted control step driven from Python: a vmapped lax.scan of these steps over the sequences
    hung here inside XLA's CPU runtime (all threads idle in futex waits, no CPU used)."""
    import jax
    import jax.numpy as jnp
    from mujoco import mjx

    from pirl.envs import libero_scene as ls
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", nargs="+", type=int, default=[0])
    p.add_argument("--init-states", nargs="+", type=int, default=[0])
    p.add_argument("--settle", type=int, default=SETTLE_STEPS, help="no-op steps after the reset")
    args = p.parse_args(argv)
    import pirl  # noqa: F401  (XLA CPU flag before the first JAX computation)

    ok = True
    for t in args.tasks:
        recs = compare(args.suite, t, args.init_states, args.settle)
        ok &= all(r["pass"] for r in recs)
    print(
        json.dumps(
            {
                "summary": True,
                "suite": args.suite,
                "tasks": args.tasks,
                "init_states": args.init_states,
                "pass": ok,
            }
        )
    )


if __name__ == "__main__":
    main()
