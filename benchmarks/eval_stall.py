"""The demo's compiled evaluation program called again and again: per-call seconds, and stalls.

    python benchmarks/eval_stall.py                       # 40 calls of pi0_demo_cpu's evaluation
    python benchmarks/eval_stall.py --calls 60 -- --env.num-envs 8    # overrides after `--`

Why it exists: on a 2-core machine this program stopped for good every 5-40 calls when XLA's CPU
thread pool had two threads (all XLA threads idle, the caller waiting forever), with or without
async dispatch, YNNPACK's dot fusions or parallel loop partitions; with a pool of one it did not.
The stacks of such a stall (gdb, in docs/libero_mjx.md) end in jaxlib 0.10's batched LAPACK
Cholesky (MJX's Newton solver, vmapped), which waits on the pool from a pool thread.
`pirl.create_backends()` (called here as by the CLIs) therefore sizes the pool from
`PIRL_XLA_CPU_THREADS` (default 1): `PIRL_XLA_CPU_THREADS=0` gives XLA's own size and reproduces
the stall. A stall is a call that has produced no result for `--stall-s` while the process used
under 0.5 s of CPU time in the last 30 s; the script then prints a "stall" line and exits with
status 3 (`py-spy dump --native --pid` on the process before that shows the waiting thread).

It runs the real trainer path (`train_rl` with a short warm start and no PPO step) and wraps
`trainer.build_programs` so that the step-0 evaluation is called `--calls` times. Lines:
{"call", "seconds", "eval_success_once"} per call, then {"calls", "median_s", "stalls", ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import pirl  # XLA CPU flags before JAX starts


def _cpu_seconds() -> float:
    with open(f"/proc/{os.getpid()}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watchdog(last_result: list[float], stall_s: float) -> None:
    history: list[tuple[float, float]] = []
    while True:
        time.sleep(5)
        history = [*history, (time.time(), _cpu_seconds())][-7:]
        idle = len(history) == 7 and history[-1][1] - history[0][1] < 0.5
        if idle and time.time() - last_result[0] > stall_s:
            print(json.dumps({"stall": True, "waited_s": round(time.time() - last_result[0], 1)}), flush=True)
            os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=40, help="evaluation calls")
    parser.add_argument("--stall-s", type=float, default=120.0, help="seconds without a result (and idle)")
    parser.add_argument("--sft-steps", type=int, default=20, help="warm-start SFT steps (norm stats)")
    parser.add_argument("overrides", nargs="*", help="pi0_demo_cpu overrides, after `--`")
    args = parser.parse_args()

    import jax

    pirl.create_backends()
    from pirl.rl import trainer
    from pirl.train import parse_config

    last_result = [time.time()]
    times: list[float] = []
    build_programs = trainer.build_programs

    def repeated_evaluation(*a, **k):
        programs = build_programs(*a, **k)

        def evaluate(*inputs):
            for call in range(args.calls):
                t0 = last_result[0] = time.time()
                out = jax.block_until_ready(programs.evaluate(*inputs))
                times.append(time.time() - t0)
                last_result[0] = time.time()
                success = float(out[0]["env/success_once"])
                print(
                    json.dumps({"call": call, "seconds": round(times[-1], 3), "eval_success_once": success})
                )
            return out

        return dataclasses.replace(programs, evaluate=evaluate)

    trainer.build_programs = repeated_evaluation
    threading.Thread(target=_watchdog, args=(last_result, args.stall_s), daemon=True).start()
    with tempfile.TemporaryDirectory() as run_root:
        argv = ["pi0_demo_cpu", "--warm-start.sft-steps", str(args.sft_steps), "--total-steps", "0"]
        cfg = parse_config([*argv, "--run-root", run_root, "--video-interval", "0", *args.overrides])
        trainer.train_rl(cfg)
    summary = {"calls": len(times), "median_s": round(statistics.median(times), 3), "stalls": 0}
    threads = os.environ.get("PIRL_XLA_CPU_THREADS", "1")
    print(
        json.dumps(summary | {"pirl_xla_cpu_threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", "")})
    )


if __name__ == "__main__":
    sys.exit(main())
