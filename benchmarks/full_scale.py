"""The full-size PPO / GRPO update programs, AOT-compiled on a simulated 8-device CPU mesh (JSON lines).

    python benchmarks/full_scale.py                              # pi0_libero_ppo
    python benchmarks/full_scale.py --presets pi0_libero_ppo pi05_libero_grpo --step-seconds 20

For each preset the real `ppo_update` of one global step (every epoch, minibatch and micro-batch,
the parameters FSDP-sharded over all 8 devices, the transitions split over them) is lowered on
abstract inputs (`jax.ShapeDtypeStruct`s: nothing is allocated) and compiled by XLA's CPU backend.
Printed per preset:
- XLA's memory analysis per device: arguments, outputs, temporaries, total (bytes, and GB);
- the analytic FLOP count of the step (`pirl.distributed.cost_model`) and XLA's cost-analysis
  figure, which counts the body of every `lax.scan` once (see docs/scaling.md);
- every cross-device collective of the per-device program (bytes, static: once per appearance);
- the update time the analytic FLOPs imply at an assumed `--mfu` on `--chip`, and the MFU at a
  measured `--step-seconds`.

The CPU compiler's memory plan is a proxy for the GPU / TPU one (same HLO, different fusion and
scheduling); docs/scaling.md compares it with the analytic estimate. Compiling full π0 on a CPU takes
minutes and several GB of host memory; a preset that fails (e.g. out of memory) prints an "error" row
and the next one runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
import traceback

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pirl  # noqa: F401  (CPU flags before JAX starts)

PRESETS = ("pi0_libero_ppo", "pi0_libero_grpo", "pi05_libero_ppo", "pi05_libero_grpo")
GB = 1e9


def abstract_transitions(cfg, num: int, sharding):
    """ShapeDtypeStructs of `num` transitions in the trainer's layout, split over the mesh."""
    import jax

    from pirl.rl import synthetic

    small = synthetic.synthetic_transitions(cfg, 8)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((num, *x.shape[1:]), x.dtype, sharding=sharding), small
    )


def update_row(
    name: str, mesh_sizes: tuple[int, ...], step_seconds: float | None, chip_name: str, mfu: float
) -> dict:
    import jax
    import jax.numpy as jnp

    import configs
    from pirl.distributed import cost_model, hlo
    from pirl.distributed import mesh as mesh_lib
    from pirl.policies import flow_policy
    from pirl.policies.masks import trainable_mask
    from pirl.rl import synthetic
    from pirl.rl.optim import make_optimizer
    from pirl.rl.update import ppo_update

    cfg = configs.get_preset(name)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=mesh_sizes))
    abstract = jax.eval_shape(
        lambda: flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    )
    trainable = trainable_mask(abstract, cfg.policy, cfg.model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in abstract.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    params_sh = mesh_lib.param_shardings(abstract, mesh)
    opt_abstract = jax.eval_shape(optimizer.init, abstract)
    opt_sh = mesh_lib.param_shardings(opt_abstract, mesh)
    replicated = mesh_lib.replicated(mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)

    def with_sharding(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    adapter = synthetic.toy_env_adapter(cfg, prompts=tuple(f"task {i}" for i in range(10)))
    num = cfg.transitions_per_step
    args = (
        with_sharding(abstract, params_sh),
        with_sharding(opt_abstract, opt_sh),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        abstract_transitions(cfg, num, batch_sharding),
        jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
    )
    update = jax.jit(
        functools.partial(
            ppo_update,
            cfg=cfg,
            adapter=adapter,
            optimizer=optimizer,
            trainable_mask=trainable,
            batch_sharding=batch_sharding,
        ),
        out_shardings=(params_sh, opt_sh, replicated, replicated),
        donate_argnums=(0, 1),
    )
    t0 = time.perf_counter()
    lowered = update.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    memory = compiled.memory_analysis()
    ops = hlo.collectives(compiled.as_text())
    minibatches = num // cfg.global_batch_size
    micro = cfg.global_batch_size // (cfg.micro_batch_size or cfg.global_batch_size)
    trips = cfg.update_epochs * minibatches * micro
    xla_flops_body = float(compiled.cost_analysis()["flops"])
    analytic = cost_model.ppo_update_flops_per_sample(cfg.model)
    analytic_total = float(analytic["total"]) * num * cfg.update_epochs
    chip = cost_model.CHIPS[chip_name]
    devices = math.prod(mesh.shape.values())
    params_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    per_device = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "generated_code_bytes": memory.generated_code_size_in_bytes,
    }
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    return {
        "program": "ppo_update",
        "preset": name,
        "mesh": dict(mesh.shape),
        "transitions": num,
        "transition_bytes": sum(math.prod(x.shape[1:]) * x.dtype.itemsize for x in jax.tree.leaves(args[3])),
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
        "per_device": per_device,
        "per_device_total_gb": round(total / GB, 2),
        "params_gb": round(params_bytes / GB, 2),
        "loop_trips": trips,
        # XLA's cost analysis counts every scan body once (epochs, minibatches, micro-batches and
        # the layer loops inside the model), so it is not a per-step count; the analytic one is.
        "xla_cost_analysis_flops_per_device": xla_flops_body,
        "analytic_flops_per_step": analytic_total,
        "collectives": {
            "count": len(ops),
            "bytes_by_op": hlo.bytes_by_op(ops),
            "largest": max((op.bytes for op in ops), default=0),
            "largest_op": next(
                (f"{op.op} {op.shapes}" for op in sorted(ops, key=lambda op: -op.bytes)[:1]), None
            ),
        },
        "chip": chip.name,
        "assumed_mfu": mfu,
        "step_seconds_at_assumed_mfu": analytic_total / (devices * chip.peak_flops * mfu),
        "step_seconds": step_seconds,
        "mfu": None if step_seconds is None else analytic_total / (step_seconds * devices * chip.peak_flops),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="*", default=["pi0_libero_ppo"], choices=PRESETS)
    parser.add_argument("--mesh", type=int, nargs=2, default=(1, 8), help="(data, fsdp) sizes, 8 devices")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=None,
        help="measured update time per global step (gives the MFU)",
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the implied step time")
    parser.add_argument("--chip", default="h100", help="pirl.distributed.cost_model.CHIPS key for the MFU")
    args = parser.parse_args()
    for name in args.presets:
        try:
            row = update_row(name, tuple(args.mesh), args.step_seconds, args.chip, args.mfu)
        except Exception as error:  # e.g. the host runs out of memory: report it, go on
            row = {"program": "ppo_update", "preset": name, "error": repr(error)[:500]}
            traceback.print_exc()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
