"""The LIBERO pick-and-place expert in MJX over a batch of initial states (check (c), `--checks expert`).

    python benchmarks/libero_expert.py --suite libero_spatial --tasks 0 1 --num-inits 10 [--steps 240]

Prints one JSON object per line per task: the batched reset (compile included on first use), the
first control step call (compiling, unless an earlier task of the same static model structure
compiled it already), the median batched control step after it (physics + OSC + kinematics, the
host plan and the success predicates around it not included), env-steps/s, the whole batch's wall
time and its successes (`pirl.envs.libero_check.mjx_expert`). One XLA CPU pool thread
(`pirl.create_backends()`).
"""

from __future__ import annotations

import argparse
import json
import os

import pirl  # XLA CPU flags before JAX starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", nargs="+", type=int, default=[0, 1])
    p.add_argument("--num-inits", type=int, default=10, help="initial states 0..N-1, stepped as one batch")
    p.add_argument(
        "--steps", type=int, default=240, help="control steps at most (the batch stops when all are done)"
    )
    args = p.parse_args()
    pirl.create_backends()
    from pirl.envs.libero_check import mjx_expert

    for t in args.tasks:
        r = mjx_expert(args.suite, t, list(range(args.num_inits)), steps=args.steps)
        step_s = r["step_s"]
        print(
            json.dumps(
                {
                    "suite": args.suite,
                    "task": t,
                    "num_envs": args.num_inits,
                    "reset_s": r["reset_s"],
                    "first_step_call_s": r["first_call_s"],
                    "batched_step_ms": round(1000 * step_s, 1) if step_s else None,
                    "env_steps_per_s": round(args.num_inits / step_s, 1) if step_s else None,
                    "control_steps": r["control_steps"],
                    "wall_s": r["wall_s"],
                    "successes": sum(s > 0 for s in r["success_step"]),
                    "load_1min": round(os.getloadavg()[0], 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
