"""robosuite OSC_POSE in MJX (pirl.envs.osc): control steps/s of controller + physics, robot only.

    python benchmarks/osc.py                                  # 1, 16, 64 envs at 0.002 / 0.005 / 0.01 s
    python benchmarks/osc.py --num-envs 16 --timesteps 0.002 --accuracy

Needs the `libero` extra (the model is robosuite's Panda, built by pirl.envs.osc_reference;
contacts off). One env-step = one 20 Hz control step: the goal, then control_dt / timestep physics
substeps with the torques recomputed before each. Prints one JSON object per line; with
--accuracy also the worst eef / orientation / finger error against robosuite's own controller over
the recorded sequences (tests/fixtures/osc_reference.json). For comparison, the real LIBERO env
runs 54-72 control steps/s per process on this kind of CPU (docs/libero.md), robot and objects.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from pirl.envs.osc import OSCConfig, OSCIndices, osc_control_step, osc_reset
from pirl.envs.osc_reference import RobosuiteArm, load_fixture, mjx_against_fixture, mjx_robot_model


def bench(xml: str, init_qpos: np.ndarray, timestep: float, num_envs: int, steps: int) -> dict:
    model = mjx_robot_model(xml, timestep)
    cfg, idx, mx = OSCConfig(timestep=timestep), OSCIndices.from_model(model), mjx.put_model(model)
    data = mjx.make_data(model).replace(qpos=jnp.asarray(init_qpos, jnp.float32))
    data = osc_reset(cfg, idx, mx, data)
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs, *x.shape)), data)
    # commit every leaf to the device, as the step's outputs will be: a mix of committed and
    # uncommitted inputs makes the second call compile again
    batch = jax.device_put(batch, jax.devices()[0])
    step = jax.jit(jax.vmap(lambda d, a: osc_control_step(cfg, idx, mx, d, a)))
    actions = jax.random.uniform(jax.random.PRNGKey(0), (steps + 1, num_envs, 7), minval=-0.5, maxval=0.5)
    t0 = time.perf_counter()
    batch = jax.block_until_ready(step(batch, actions[0]))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        batch = step(batch, actions[k + 1])
    jax.block_until_ready(batch)
    dt = time.perf_counter() - t0
    return {
        "bench": "osc_robot_only",
        "backend": jax.default_backend(),
        "timestep": timestep,
        "substeps": cfg.substeps,
        "num_envs": num_envs,
        "steps": steps,
        "env_steps_per_s": round(num_envs * steps / dt, 1),
        "ms_per_batched_step": round(1000 * dt / steps, 2),
        "first_call_s": round(first, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--timesteps", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    p.add_argument("--steps", type=int, default=10, help="timed control steps per configuration")
    p.add_argument("--accuracy", action="store_true", help="also the error against robosuite per timestep")
    args = p.parse_args()
    xml = RobosuiteArm().xml
    fixture = load_fixture()
    for ts in args.timesteps:
        if args.accuracy:
            errors = mjx_against_fixture(ts, fixture)
            worst = {k: max(e[k] for e in errors.values()) for k in next(iter(errors.values()))}
            print(json.dumps({"bench": "osc_accuracy", "timestep": ts, **worst}), flush=True)
        for n in args.num_envs:
            print(json.dumps(bench(xml, np.asarray(fixture["init_qpos"]), ts, n, args.steps)), flush=True)


if __name__ == "__main__":
    main()
