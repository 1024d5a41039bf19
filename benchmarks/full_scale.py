"""Full-size programs (RL update, rollout policy call, SFT step), AOT-compiled on 8 simulated CPU devices.

    python benchmarks/full_scale.py                                   # pi0_libero_ppo update + rollout
    python benchmarks/full_scale.py --presets pi0_libero_sft pi05_libero_grpo --mesh-sizes 1 8
    python benchmarks/full_scale.py --step-seconds update=120 rollout=0.1 sft=0.5

For each preset the real programs are lowered on abstract inputs (`jax.ShapeDtypeStruct`s from
`jax.eval_shape`: nothing is allocated) and compiled by XLA's CPU backend on 8 fake devices, with
the preset's mesh scaled to 8 devices (its `-1` axis takes the rest; `--mesh-sizes` overrides):

- `update` (RL presets): `ppo_update` of one global step (every epoch, minibatch, micro-batch);
- `rollout` (RL presets): one policy call of a rollout stage, `host_rollout.sample_stage` over all
  `env.num_envs / pipeline_stage_num` environments (prefix pass, K denoise steps, value). This is
  the whole device program of the LIBERO presets' rollouts: their simulator runs in host processes;
- `sft` (SFT presets): `make_train_step` of one batch, full fine-tuning with EMA.

Printed as one JSON line per (preset, program):
- XLA's memory analysis per device: arguments, outputs, temporaries, aliased, total;
- FLOPs: XLA's cost analysis per device (which counts every loop body once), the dot +
  convolution FLOPs of the optimized HLO with every loop body multiplied by its trip count
  (`pirl.distributed.hlo.dot_flops`) per device and per global step (x devices), and the analytic
  count of `pirl.distributed.cost_model` for the same program, with their ratio;
- every cross-device collective (grouped by op and shape: instructions, bytes, executions per
  call), bytes per op both static (each op once) and executed (times its loops' trip counts);
- the step time the analytic FLOPs imply at an assumed `--mfu` on `--chip`, and the MFU the counted
  FLOPs imply at `--step-seconds` (assumed or measured step times per program).

The CPU compiler's buffer plan is a proxy for the GPU / TPU one (same partitioned HLO, different
fusion and scheduling); docs/scaling.md puts the figures next to the analytic estimates. Compiling
full π0 takes minutes on a CPU; a program that fails prints an "error" row and the next one runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import time
import traceback
from typing import Any

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pirl  # noqa: F401  (CPU flags before JAX starts)

RL_PRESETS = ("pi0_libero_ppo", "pi0_libero_grpo", "pi05_libero_ppo", "pi05_libero_grpo")
"""RL presets whose update and rollout programs compile here (LIBERO: the rollout is `sample_stage`)."""
PROGRAMS = ("update", "rollout", "sft")
GB = 1e9


def _tree_id() -> str:
    """The git commit the figures come from (+ '-dirty' with uncommitted changes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _abstract(tree: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _nbytes(tree: Any) -> int:
    import jax

    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _mesh(cfg: Any, sizes: tuple[int, ...] | None):
    import dataclasses

    from pirl.distributed import mesh as mesh_lib

    mesh_cfg = cfg.mesh if sizes is None else dataclasses.replace(cfg.mesh, axis_sizes=sizes)
    return mesh_lib.make_mesh(mesh_cfg)


def analyse(
    compiled: Any,
    *,
    devices: int,
    analytic_flops: float,
    step_seconds: float | None,
    chip_name: str,
    mfu: float,
    dump: str | None = None,
) -> dict:
    """Memory, FLOP and collective figures of a compiled SPMD program (per device and per call);
    `dump`: a file to write the optimized HLO text to."""
    from pirl.distributed import cost_model, hlo

    memory = compiled.memory_analysis()
    text = compiled.as_text()
    if dump:
        os.makedirs(os.path.dirname(dump) or ".", exist_ok=True)
        with open(dump, "w") as f:
            f.write(text)
    ops = hlo.collectives(text)
    counted = hlo.dot_flops(text)
    chip = cost_model.CHIPS[chip_name]
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    groups: dict[tuple, dict] = {}
    for op in ops:
        g = groups.setdefault(
            (op.op, op.shapes),
            {"op": op.op, "shapes": op.shapes, "instructions": 0, "bytes": op.bytes, "runs": 0},
        )
        g["instructions"] += 1
        g["runs"] += op.count
    largest = max(ops, key=lambda op: op.bytes, default=None)
    step_flops = counted.flops * devices
    return {
        "per_device": {
            "argument_bytes": memory.argument_size_in_bytes,
            "output_bytes": memory.output_size_in_bytes,
            "temp_bytes": memory.temp_size_in_bytes,
            "alias_bytes": memory.alias_size_in_bytes,
            "generated_code_bytes": memory.generated_code_size_in_bytes,
        },
        "per_device_total_gb": round(total / GB, 2),
        "flops": {
            # XLA's cost analysis counts every while-loop body once (scans over layers, denoise
            # steps, epochs, minibatches, micro-batches): not a per-call figure.
            "xla_cost_analysis_per_device_bodies_once": float(compiled.cost_analysis()["flops"]),
            "hlo_dots_per_device_bodies_once": counted.flops_bodies_once,
            "hlo_dots_per_device": counted.flops,
            "hlo_dots_per_step": step_flops,
            "analytic_per_step": analytic_flops,
            "hlo_over_analytic": step_flops / analytic_flops if analytic_flops else None,
            "loop_trip_counts": sorted({t for t in counted.trip_counts if t is not None}),
            "loops_without_trip_count": sum(t is None for t in counted.trip_counts),
        },
        "collectives": {
            "instructions": len(ops),
            "static_bytes_by_op": hlo.bytes_by_op(ops),
            "executed_bytes_by_op": hlo.bytes_by_op(ops, executed=True),
            "largest_bytes": largest.bytes if largest else 0,
            "largest": f"{largest.op} {largest.shapes} x{largest.count}" if largest else None,
            "ops": sorted(
                ({**g, "shapes": [f"{d}{list(s)}" for d, s in g["shapes"]]} for g in groups.values()),
                key=lambda g: -g["bytes"],
            ),
        },
        "chip": chip.name,
        "assumed_mfu": mfu,
        "seconds_at_assumed_mfu": analytic_flops / (devices * chip.peak_flops * mfu),
        "step_seconds": step_seconds,
        "mfu_at_step_seconds": None
        if step_seconds is None
        else step_flops / (step_seconds * devices * chip.peak_flops),
    }


def _dump_path(opts: dict, preset: str, program: str) -> str | None:
    return None if not opts.get("dump_hlo") else os.path.join(opts["dump_hlo"], f"{preset}.{program}.hlo.txt")


def _compile(lower: Any, *args: Any) -> tuple[Any, float, float]:
    """`lower(*args).compile()` with both times; the programs trace on their mesh themselves
    (`pirl.distributed.mesh.jit_on_mesh` / `tracing_on`), as in training."""
    t0 = time.perf_counter()
    lowered = lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def rl_rows(name: str, programs: list[str], sizes: tuple[int, ...] | None, opts: dict) -> list[dict]:
    """The update and / or rollout rows of an RL preset."""
    import jax
    import jax.numpy as jnp

    import configs
    from pirl.distributed import cost_model
    from pirl.distributed import mesh as mesh_lib
    from pirl.policies import flow_policy
    from pirl.rl import host_rollout, synthetic, trainer

    cfg = configs.get_preset(name)
    mesh = _mesh(cfg, sizes)
    devices = mesh.devices.size
    abstract = jax.eval_shape(
        lambda: flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(0))
    )
    params_sh = mesh_lib.param_shardings(abstract, mesh)
    replicated = mesh_lib.replicated(mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    adapter = synthetic.toy_env_adapter(cfg, prompts=tuple(f"task {i}" for i in range(10)))
    program = synthetic.ppo_update_program(cfg, abstract, adapter, mesh)
    trainable_bytes = sum(
        math.prod(x.shape) * x.dtype.itemsize
        for x, t in zip(jax.tree.leaves(abstract), jax.tree.leaves(program.trainable_mask), strict=True)
        if t
    )
    small = synthetic.synthetic_transitions(cfg, 8)
    common = {
        "preset": name,
        "mesh": dict(mesh.shape),
        "tree": opts["tree"],
        "params_gb": round(_nbytes(abstract) / GB, 2),
        "trainable_params_gb": round(trainable_bytes / GB, 2),
    }
    rows = []
    for prog in programs:
        row: dict[str, Any] = {"program": prog, **common}
        try:
            if prog == "update":
                num = cfg.transitions_per_step
                transitions = jax.tree.map(
                    lambda x, n=num: jax.ShapeDtypeStruct(
                        (n, *x.shape[1:]), x.dtype, sharding=batch_sharding
                    ),
                    small,
                )
                opt_abstract = jax.eval_shape(program.optimizer.init, abstract)
                opt_sh = mesh_lib.param_shardings(opt_abstract, mesh)
                # The trainer's own update program (pirl.rl.trainer.build_programs uses it too).
                update = trainer.jit_update(
                    cfg,
                    mesh,
                    program.optimizer,
                    program.trainable_mask,
                    {"params": params_sh, "opt_state": opt_sh},
                )
                lower = functools.partial(update.lower, adapter=adapter)
                args = (
                    _abstract(abstract, params_sh),
                    _abstract(opt_abstract, opt_sh),
                    jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                    transitions,
                    jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
                )
                steps = cfg.policy.num_steps if cfg.policy.joint_logprob else 1
                per_sample = cost_model.ppo_update_flops_per_sample(cfg.model, joint_logprob_steps=steps)
                analytic = per_sample["total"] * num * cfg.update_epochs
                row.update(
                    transitions=num,
                    transition_bytes=_nbytes(jax.tree.map(lambda x: x[0], small)),
                    optimizer_steps=cfg.update_epochs * (num // cfg.global_batch_size),
                    micro_batches_per_optimizer_step=cfg.global_batch_size
                    // (cfg.micro_batch_size or cfg.global_batch_size),
                )
            else:
                envs = cfg.env.num_envs // cfg.env.pipeline_stage_num
                env_obs = jax.tree.map(
                    lambda x, n=envs: jax.ShapeDtypeStruct(
                        (n, *x.shape[1:]), x.dtype, sharding=batch_sharding
                    ),
                    small.env_obs,
                )
                ints = jax.ShapeDtypeStruct((envs,), jnp.int32, sharding=batch_sharding)
                # As pirl.rl.host_rollout.HostCollector calls it (it traces on the mesh itself).
                lower = functools.partial(
                    host_rollout.sample_stage.lower,
                    model_cfg=cfg.model,
                    policy_cfg=cfg.policy,
                    micro_batch=cfg.env.sample_micro_batch,
                    mode="train",
                    sharding=batch_sharding,
                )
                args = (
                    _abstract(abstract, params_sh),
                    adapter,
                    env_obs,
                    ints,
                    ints,
                    jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
                    jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                )
                analytic = (
                    cost_model.rollout_flops_per_sample(cfg.model, cfg.policy.num_steps)["total"] * envs
                )
                row.update(environments=envs, denoise_steps=cfg.policy.num_steps)
            compiled, lower_s, compile_s = _compile(lower, *args)
            row.update(lower_s=round(lower_s, 1), compile_s=round(compile_s, 1))
            row.update(
                analyse(
                    compiled,
                    devices=devices,
                    analytic_flops=analytic,
                    step_seconds=opts["step_seconds"].get(prog),
                    chip_name=opts["chip"],
                    mfu=opts["mfu"],
                    dump=_dump_path(opts, name, prog),
                )
            )
        except Exception as error:  # e.g. the host runs out of memory: report it, go on
            traceback.print_exc()
            row["error"] = repr(error)[:500]
        rows.append(row)
    return rows


def sft_row(name: str, sizes: tuple[int, ...] | None, opts: dict) -> dict:
    """The SFT train step of an SFT preset (state donated, batch split over the mesh)."""
    import jax
    import jax.numpy as jnp

    import configs
    from pirl.distributed import cost_model
    from pirl.distributed import mesh as mesh_lib
    from pirl.models import pi0
    from pirl.policies import masks
    from pirl.sft import train as sft_train

    cfg = configs.get_preset(name)
    mesh = _mesh(cfg, sizes)
    row: dict[str, Any] = {"program": "sft", "preset": name, "mesh": dict(mesh.shape), "tree": opts["tree"]}
    try:
        batch_sharding = mesh_lib.batch_sharding(mesh)
        # As pirl.sft.train: frozen leaves stored as model.frozen_dtype, EMA of the trainable ones.
        abstract = sft_train.frozen_params_cast(cfg, pi0.abstract_params(cfg.model))
        mask = sft_train.trainable_mask(abstract, cfg.train_expert_only)
        tx = sft_train.make_optimizer(cfg, mask)

        def make_state(params):
            state = {
                "params": params,
                "opt_state": tx.init(params),
                "rng": jax.random.PRNGKey(0),
                "step": jnp.int32(0),
            }
            if cfg.ema_decay is not None:
                state["ema_params"] = masks.split_frozen(params, mask)[0]
            return state

        state = jax.eval_shape(make_state, abstract)
        shardings = sft_train.train_state_shardings(state, mesh)
        b = cfg.batch_size
        batch = sft_train.abstract_batch(cfg, batch_sharding)
        step = sft_train.jit_train_step(cfg, tx, mask, mesh, shardings)  # pirl.sft.train's own program
        compiled, lower_s, compile_s = _compile(step.lower, _abstract(state, shardings), batch)
        row.update(
            batch=b,
            params_gb=round(_nbytes(abstract) / GB, 2),
            lower_s=round(lower_s, 1),
            compile_s=round(compile_s, 1),
        )
        row.update(
            analyse(
                compiled,
                devices=mesh.devices.size,
                analytic_flops=cost_model.sft_flops_per_sample(cfg.model)["total"] * b,
                step_seconds=opts["step_seconds"].get("sft"),
                chip_name=opts["chip"],
                mfu=opts["mfu"],
                dump=_dump_path(opts, name, "sft"),
            )
        )
    except Exception as error:
        traceback.print_exc()
        row["error"] = repr(error)[:500]
    return row


def main() -> None:
    from configs import sft as sft_configs

    sft_presets = tuple(sorted(sft_configs.presets()))  # every `<data config>_sft`
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        nargs="*",
        default=["pi0_libero_ppo"],
        choices=RL_PRESETS + sft_presets,
        help="presets to compile",
    )
    parser.add_argument(
        "--programs",
        nargs="*",
        default=list(PROGRAMS),
        choices=PROGRAMS,
        help="programs (sft: SFT presets only)",
    )
    parser.add_argument(
        "--mesh-sizes",
        type=int,
        nargs="*",
        default=None,
        help="mesh axis sizes (default: the preset's, 8 devices)",
    )
    parser.add_argument(
        "--step-seconds",
        nargs="*",
        default=[],
        metavar="PROGRAM=SECONDS",
        help="assumed or measured time of one call per program (gives the MFU), e.g. update=120",
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the implied step time")
    parser.add_argument("--chip", default="h100", help="pirl.distributed.cost_model.CHIPS key")
    parser.add_argument("--dump-hlo", default=None, help="folder to write each optimized HLO module to")
    args = parser.parse_args()
    step_seconds = {}
    for item in args.step_seconds:
        prog, _, value = item.partition("=")
        if prog not in PROGRAMS or not value:
            parser.error(f"--step-seconds takes PROGRAM=SECONDS with PROGRAM in {PROGRAMS}, got {item!r}")
        step_seconds[prog] = float(value)
    opts = {
        "tree": _tree_id(),
        "step_seconds": step_seconds,
        "chip": args.chip,
        "mfu": args.mfu,
        "dump_hlo": args.dump_hlo,
    }
    sizes = tuple(args.mesh_sizes) if args.mesh_sizes else None
    for name in args.presets:
        if name in sft_presets:
            rows = [sft_row(name, sizes, opts)] if "sft" in args.programs else []
        else:
            rows = rl_rows(name, [p for p in args.programs if p != "sft"], sizes, opts)
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
