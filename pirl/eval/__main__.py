"""`python -m pirl.eval --checkpoint DIR --backend {mjx,libero} --suites libero_spatial,... --out results/`.

Evaluates a checkpoint (openpi JAX, openpi-PyTorch or pirl run; auto-detected) with the same host
`Policy` the server uses. Rerunning with the same `--out` resumes: finished episodes (in
`<out>/episodes.jsonl`) are skipped. Writes results.json, results.md and videos/ under `--out`.
User errors exit 2 in one or two lines (`--debug` for the traceback); SIGTERM closes the LIBERO
worker processes before the command exits (status 143).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Literal

import tyro

import pirl
from pirl.errors import UserError, run_cli
from pirl.serving.policy import policy_from_args


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    """Command-line options of `python -m pirl.eval`."""

    checkpoint: str | None = None
    """Checkpoint directory (or .safetensors file); required unless --random-tiny."""
    config_name: str | None = None
    """Data config of the input/output transforms (pi0_libero, pi05_libero, ...); None = the
    checkpoint's own (a pirl run's assets/policy.json), else pi0_libero."""
    random_tiny: bool = False
    """Evaluate Pi0Config.tiny() with random weights (smoke test)."""
    tokenizer_path: str | None = None
    """PaliGemma sentencepiece model; default: found in the checkpoint's assets."""
    norm_stats_path: str | None = None
    """Directory holding norm_stats.json; default: found in the checkpoint's assets."""
    backend: Literal["mjx", "libero"] = "libero"
    """'libero': the real benchmark (needs pirl[libero]); 'mjx': pirl's on-device suites."""
    suites: str = "libero_spatial"
    """Comma-separated suites, e.g. libero_spatial,libero_object,libero_goal,libero_10."""
    task_ids: str = ""
    """Comma-separated task ids of each suite (empty = all)."""
    episodes_per_task: int = 50
    """Episodes per task (episode i uses initial state i, or init_ids[i % len] with --init-ids)."""
    init_ids: str = ""
    """mjx: comma-separated initial states the episodes cycle through (empty = all); a pirl run's
    env.init_ids reproduce its own evaluation episodes (with --seed = the run's seed + 1)."""
    episode_limits: Literal["rl", "openpi"] = "rl"
    """Episode limits: RL fine-tuning's 240/240/320/480 or openpi's 220/280/300/520."""
    max_steps: int | None = None
    """Override the per-suite episode limit (policy steps)."""
    action_chunk: int = 5
    """Actions executed open loop between policy queries."""
    num_steps: int | None = None
    """Flow-matching Euler steps per action chunk; None = the checkpoint's own (a pirl run's), else 10."""
    num_workers: int = 2
    """libero: parallel LIBERO processes (0 = in the main process)."""
    envs_per_worker: int = 1
    """libero: environments per process."""
    settle_steps: int = 10
    """libero: no-op steps after reset."""
    resolution: int = 256
    """libero: camera render size."""
    max_parallel: int = 0
    """mjx: environments per compiled batch (0 = all at once)."""
    videos_per_task: int = 1
    """Videos of the first N episodes of each task."""
    seed: int = 7
    """Environment / sampling seed."""
    out: str = "results"
    """Output directory (episodes.jsonl, results.json, results.md, videos/)."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise UserError("--suites needs at least one suite, e.g. --suites libero_spatial")
    return names


def run(args: EvalArgs) -> dict:
    """Evaluate as `args` say; returns the summary written to results.json."""
    policy = policy_from_args(args)
    meta = {"checkpoint": args.checkpoint or "random-tiny", "config_name": policy.data_cfg.name}
    if args.backend == "libero":
        from pirl.eval.libero import LiberoEvalConfig, evaluate_libero

        cfg = LiberoEvalConfig(
            suites=_names(args.suites),
            task_ids=_ints(args.task_ids),
            episodes_per_task=args.episodes_per_task,
            episode_limits=args.episode_limits,
            max_steps=args.max_steps,
            settle_steps=args.settle_steps,
            action_chunk=args.action_chunk,
            resolution=args.resolution,
            num_workers=args.num_workers,
            envs_per_worker=args.envs_per_worker,
            seed=args.seed,
            videos_per_task=args.videos_per_task,
        )
        return evaluate_libero(policy, cfg, args.out, meta)
    from pirl.eval.mjx import MjxEvalConfig, evaluate_mjx

    cfg = MjxEvalConfig(
        suites=_names(args.suites),
        task_ids=_ints(args.task_ids),
        episodes_per_task=args.episodes_per_task,
        init_ids=_ints(args.init_ids),
        episode_limits=args.episode_limits,
        max_steps=args.max_steps,
        action_chunk=args.action_chunk,
        max_parallel=args.max_parallel,
        videos_per_task=args.videos_per_task,
        seed=args.seed,
    )
    return evaluate_mjx(policy, cfg, args.out, meta)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = tyro.cli(EvalArgs)
    pirl.create_backends()  # XLA's CPU pool as pirl sizes it (see pirl/__init__.py)
    summary = run(args)
    print(json.dumps({name: s["success_rate"] for name, s in summary["suites"].items()}))


if __name__ == "__main__":
    run_cli(main)
