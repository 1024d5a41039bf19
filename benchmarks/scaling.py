"""PPO update-step throughput over 1, 2, 4, 8 fake CPU devices and 2 local processes (JSON lines),
preceded by the on-paper estimates for full π0 on TPU v5p-64 / 2x8 H100 (docs/scaling.md).

    python benchmarks/scaling.py                   # estimates + all layouts, tiny π0
    python benchmarks/scaling.py --devices 1 8     # a subset
    python benchmarks/scaling.py --estimate-only   # the analytic figures only (seconds)

Each layout runs in its own subprocess (XLA fixes the device count at start-up): the parameters are
FSDP-sharded over every device of every process and the minibatch is split over them, so the
difference between "8 devices" and "2 processes x 4 devices" is the cost of cross-process
collectives. On a 2-core CPU the fake devices share the cores: the figures show overhead, not
speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(batch: int, steps: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from pirl.distributed import multihost

    multihost.initialize()
    import jax.numpy as jnp

    from pirl.distributed import mesh as mesh_lib
    from pirl.rl import synthetic

    # The tiny PPO setup of tests/test_rl_update.py, with one minibatch of `batch` transitions.
    cfg = synthetic.tiny_ppo_config(global_batch_size=batch, micro_batch_size=None)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, -1)))
    ppo = synthetic.make_ppo_update_setup(cfg, mesh)
    data = synthetic.place_transitions(synthetic.synthetic_transitions(cfg, batch), mesh)
    update, params, opt_state = ppo.update, ppo.params, ppo.opt_state
    step = jnp.zeros((), jnp.int32)
    for _ in range(2):  # the second call may compile again: its inputs carry the outputs' shardings
        params, opt_state, step, _ = jax.block_until_ready(
            update(params, opt_state, step, data, jax.random.key(0))
        )
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, step, _ = update(params, opt_state, step, data, jax.random.key(i))
    jax.block_until_ready(params)
    seconds = (time.perf_counter() - t0) / steps
    if jax.process_index() == 0:
        print(
            "RESULT " + json.dumps({"seconds_per_step": seconds, "samples_per_s": batch / seconds}),
            flush=True,
        )


def estimates(mfu: float) -> list[dict]:
    """The on-paper figures of docs/scaling.md: full π0 PPO update (pi0_libero_ppo) and SFT
    (pi0_libero_sft) on the tpu-v5p-64 and gpu-2x8 mesh presets, from `pirl.distributed.cost_model`.
    """
    import jax

    import configs
    from pirl.distributed import cost_model
    from pirl.distributed.mesh import MESH_PRESETS
    from pirl.models import pi0
    from pirl.policies import flow_policy
    from pirl.policies.masks import trainable_mask
    from pirl.rl import synthetic

    ppo = configs.get_preset("pi0_libero_ppo")
    sft = configs.get_preset("pi0_libero_sft")
    policy_params = jax.eval_shape(
        lambda: flow_policy.init_policy_params(ppo.policy, ppo.model, jax.random.key(0))
    )
    ppo_mask = trainable_mask(policy_params, ppo.policy, ppo.model)
    ppo_trainable = sum(
        x.size for x, t in zip(jax.tree.leaves(policy_params), jax.tree.leaves(ppo_mask), strict=True) if t
    )
    sft_params = pi0.abstract_params(sft.model)
    groups = cost_model.param_groups(sft_params)
    rows = [
        {
            "estimate": "pi0 parameter count",
            **groups,
            "total": sum(groups.values()),
            "ppo_trainable": ppo_trainable,
        }
    ]
    targets = (("tpu-v5p-64", cost_model.CHIPS["tpu-v5p"]), ("gpu-2x8", cost_model.CHIPS["h100"]))
    for mesh_name, chip in targets:
        mesh = MESH_PRESETS[mesh_name]
        for replicate_frozen in (False, True):
            row = cost_model.estimate_step(
                "ppo",
                ppo.model,
                policy_params,
                ppo_trainable,
                mesh,
                chip,
                global_batch=ppo.global_batch_size,
                micro_batch=ppo.micro_batch_size,
                mfu=mfu,
                replicate_frozen=replicate_frozen,
            )
            variant = ", frozen VLM replicated" if replicate_frozen else ""
            rows.append({"estimate": f"pi0_libero_ppo update step on {mesh_name}{variant}", **row})
        sft_row = cost_model.estimate_step(
            "sft",
            sft.model,
            sft_params,
            sum(groups.values()),
            mesh,
            chip,
            global_batch=sft.batch_size,
            mfu=mfu,
            ema=sft.ema_decay is not None,
        )
        rows.append({"estimate": f"pi0_libero_sft step on {mesh_name}", **sft_row})
    tiny = synthetic.tiny_ppo_config()
    rows.append(
        {
            "estimate": "tiny pi0 PPO update FLOPs per transition (the CPU benchmark's model)",
            **cost_model.ppo_update_flops_per_sample(tiny.model),
        }
    )
    return rows


def check_flops() -> dict:
    """XLA's HLO cost analysis of the full-π0 training forward (lowered on abstract inputs, nothing
    allocated or compiled) vs the analytic count. XLA counts each scanned layer loop body once, so
    the analytic side counts one layer per tower too."""
    import jax
    import jax.numpy as jnp

    from pirl.distributed import cost_model
    from pirl.models import pi0
    from pirl.models.config import Pi0Config

    cfg = Pi0Config()
    obs = jax.eval_shape(lambda: pi0.fake_observation(cfg, 1))
    actions = jax.ShapeDtypeStruct((1, cfg.action_horizon, cfg.action_dim), jnp.float32)

    def loss(params, obs, actions):
        return jnp.mean(pi0.compute_loss(params, cfg, jax.random.PRNGKey(0), obs, actions))

    lowered = jax.jit(loss).lower(pi0.abstract_params(cfg), obs, actions)
    xla = float(lowered.cost_analysis()["flops"])
    analytic = sum(cost_model.forward_flops(cfg, joint=True, loop_bodies_once=True).values())
    return {
        "check": "full pi0 forward FLOPs, one layer per tower (batch 1)",
        "xla_cost_analysis_flops": xla,
        "analytic_flops": analytic,
        "analytic_over_xla": analytic / xla,
    }


def run_layout(processes: int, devices_per_process: int, batch: int, steps: int) -> dict:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{port.getsockname()[1]}"
    port.close()
    procs = []
    for pid in range(processes):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            PYTHONPATH=str(ROOT),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        )
        if processes > 1:
            env.update(
                PIRL_COORDINATOR_ADDRESS=address, PIRL_NUM_PROCESSES=str(processes), PIRL_PROCESS_ID=str(pid)
            )
        cmd = [sys.executable, __file__, "--worker", "--batch", str(batch), "--steps", str(steps)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode:
            raise RuntimeError(out[-3000:])
    line = next(ln for ln in outputs[0].splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument(
        "--processes", type=int, default=2, help="local processes for the multi-process row (0 skips)"
    )
    parser.add_argument("--batch", type=int, default=16, help="global minibatch (transitions)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU of the on-paper estimates")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimates, measure nothing")
    parser.add_argument(
        "--check-flops", action="store_true", help="also compare the FLOP count with XLA's cost analysis"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.batch, args.steps)
    for row in estimates(args.mfu):
        print(json.dumps(row), flush=True)
    if args.check_flops:
        print(json.dumps(check_flops()), flush=True)
    if args.estimate_only:
        return None
    for n in args.devices:
        result = run_layout(1, n, args.batch, args.steps)
        print(
            json.dumps({"layout": f"1 process x {n} devices", "devices": n, "processes": 1, **result}),
            flush=True,
        )
    if args.processes > 1:
        per = max(1, max(args.devices) // args.processes)
        result = run_layout(args.processes, per, args.batch, args.steps)
        print(
            json.dumps(
                {
                    "layout": f"{args.processes} processes x {per} devices",
                    "devices": per * args.processes,
                    "processes": args.processes,
                    **result,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
