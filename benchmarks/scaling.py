"""PPO update-step throughput over 1, 2, 4, 8 fake CPU devices and 2 local processes (JSON lines).

    python benchmarks/scaling.py                 # all layouts, tiny π0
    python benchmarks/scaling.py --devices 1 8   # a subset

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
    sys.path.insert(0, str(ROOT / "tests"))
    import jax.numpy as jnp
    import numpy as np
    from multihost_worker import synthetic_batch

    from pirl.distributed import mesh as mesh_lib
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.policies.config import FlowPolicyConfig
    from pirl.policies.env_io import make_env_adapter
    from pirl.policies.masks import trainable_mask
    from pirl.rl.config import EnvSpec, RLConfig
    from pirl.rl.optim import make_optimizer
    from pirl.rl.update import ppo_update

    cfg = RLConfig(
        model=Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb")),
        policy=FlowPolicyConfig(value_head_hidden=(64,)),
        env=EnvSpec(name="libero_spatial", num_envs=batch, image_size=28, max_episode_steps=5),
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=batch,
    )
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, -1)))
    init = lambda: flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))  # noqa: E731
    shardings = mesh_lib.param_shardings(jax.eval_shape(init), mesh, min_size=256)
    params = jax.jit(init, out_shardings=shardings)()
    trainable = trainable_mask(params, cfg.policy, cfg.model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    opt_state = jax.jit(optimizer.init)(params)
    adapter = make_env_adapter(["a"], lambda p: (np.arange(16, dtype=np.int32) % 5, np.arange(16) < 4), None)
    data = synthetic_batch(cfg, batch)
    data = multihost.host_local_batch_to_global(
        jax.tree.map(lambda x: x[multihost.process_batch_slice(batch)], data), mesh
    )
    update = jax.jit(
        lambda p, o, s, b, r: ppo_update(
            p,
            o,
            s,
            b,
            r,
            cfg=cfg,
            adapter=adapter,
            optimizer=optimizer,
            trainable_mask=trainable,
            batch_sharding=mesh_lib.batch_sharding(mesh),
        )
    )
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.batch, args.steps)
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
