"""Evaluation on pirl's MJX suites: every (task, episode) pair in parallel on device, in one program.

Per batch of (task, initial state) pairs: `reset_to` (vmapped), then the RL trainer's own
evaluation rollout (`pirl.rl.rollout.rollout`, mode="eval"): observations -> model inputs on device
through the adapter built from the policy's data config (`pirl.policies.env_io`: normalised state,
images in [-1, 1], the prompt table indexed by task id) -> `flow_policy.sample` in eval mode (pure
ODE sampling, openpi's Euler sampler, with the policy's `num_steps`) -> unnormalise, undo delta
actions, keep the env's dims and the first `action_chunk` steps, clip to [-1, 1] ->
`env.chunk_step` (the chunk runs open loop; the policy replans after it). Episode e of task t draws
its noise from `episode_keys` (seed, t, e), so a run's evaluation episodes give the same outcomes
here as in the trainer. The environment freezes after success or its step limit. No host round
trip inside a batch.

Same outputs as the real-LIBERO runner: episodes.jsonl (resume per batch), results.json,
results.md and videos (one frame per chunk step, agentview; the MJX renderer draws it upright).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pathlib
import time
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from pirl.envs.libero_pool import EPISODE_LIMITS
from pirl.errors import UserError
from pirl.eval.report import EpisodeLog, EpisodeResult, episode_key, write_report

if TYPE_CHECKING:
    from pirl.serving.policy import Policy

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MjxEvalConfig:
    """MJX-suite evaluation options."""

    suites: tuple[str, ...] = ("toy_spatial",)
    """MJX suites: toy_spatial, toy_object, toy_goal, toy_10, maniskill_put_on_plate, or LIBERO's own tasks
    rebuilt in MJX (libero_spatial, libero_object, libero_goal, libero_10: one compiled program per set of
    tasks that share a scene)."""
    task_ids: tuple[int, ...] = ()
    """Tasks of each suite (empty = all)."""
    episodes_per_task: int = 50
    """Episodes per task; episode i starts from fixed initial state init_ids[i % len(init_ids)]."""
    init_ids: tuple[int, ...] = ()
    """Fixed initial states the episodes cycle through (empty = all of the suite's, 0..49)."""
    episode_limits: Literal["rl", "openpi", "suite"] = "rl"
    """Control steps per episode: RL fine-tuning's, openpi's, or the suite's own default."""
    max_steps: int | None = None
    """Override the preset's control steps per episode."""
    action_chunk: int = 5
    """Actions executed open loop per policy call."""
    image_size: int | None = None
    """Render size; None = the model's image resolution (no resize)."""
    max_parallel: int = 0
    """Environments per compiled batch (0 = all pending episodes at once)."""
    videos_per_task: int = 1
    """Record the agentview of this many first episodes per task."""
    seed: int = 0
    """Seed of the sampling noise."""

    def limit(self, suite: str, suite_default: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        table = EPISODE_LIMITS.get(self.episode_limits, {})
        return table.get(suite, suite_default)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable static arguments of the compiled evaluation."""

    chunk_steps: int
    num_video: int


def _evaluate_batch(
    static: _Static,
    env: Any,
    model_cfg: Any,
    policy_cfg: Any,
    params: dict,
    adapter: Any,
    task_ids: Int[Array, " b"],
    init_ids: Int[Array, " b"],
    episode_ids: Int[Array, " b"],
    rng: jax.Array,
) -> tuple[Bool[Array, " b"], Int[Array, " b"], Array]:
    """(success bool[B], length i32[B], frames u8[T, V, S, S, 3] of the first V environments)."""
    from pirl.rl import rollout as rollout_lib

    state = jax.vmap(env.reset_to)(task_ids, init_ids)
    out = rollout_lib.rollout(
        {"model": params},
        adapter,
        state,
        rollout_lib.episode_keys(rng, task_ids, episode_ids),
        env=env,
        policy_cfg=policy_cfg,
        model_cfg=model_cfg,
        chunk_steps=static.chunk_steps,
        mode="eval",
    )
    final = out.final_state
    if static.num_video:
        frames = out.trajectory.env_obs["agentview_image"][:, : static.num_video]
        frames = jnp.concatenate([frames, final.obs["agentview_image"][None, : static.num_video]])
    else:
        frames = jnp.zeros(())
    return final.info["success_once"], final.info["step"], frames


def evaluate_mjx(
    policy: Policy,
    cfg: MjxEvalConfig,
    out_dir: str | pathlib.Path,
    meta: dict | None = None,
    *,
    render_fn: Any = None,
) -> dict[str, Any]:
    """Run (or resume) the evaluation of `policy` on the MJX suites; writes the report files.

    `render_fn` replaces the env's ray-casting renderer (data -> u8[ncam, S, S, 3]); tests pass a
    cheap one because the renderer takes minutes to compile on a CPU.
    """
    from pirl.envs import make_env
    from pirl.envs.build_libero import FAITHFUL_SUITES
    from pirl.envs.libero_mjx_env import EPISODE_LIMITS as LIBERO_MJX_LIMITS
    from pirl.envs.libero_mjx_env import task_groups
    from pirl.envs.tasks import get_suite
    from pirl.policies.env_io import make_env_adapter

    model_cfg = policy.model_cfg
    if model_cfg.discrete_state_input:
        raise UserError(
            "MJX evaluation tokenises prompts once per task; discrete_state_input models are not supported"
        )
    if cfg.action_chunk > model_cfg.action_horizon:
        raise UserError(
            f"action_chunk {cfg.action_chunk} exceeds the model's action_horizon {model_cfg.action_horizon}"
        )
    out = pathlib.Path(out_dir)
    log = EpisodeLog(out)
    finished = log.load()
    image_size = cfg.image_size or model_cfg.image_resolution[0]
    all_keys, limits = [], {}
    for suite in cfg.suites:
        faithful = suite in FAITHFUL_SUITES
        spec = None if faithful else get_suite(suite)
        limit = cfg.limit(suite, LIBERO_MJX_LIMITS[suite] if faithful else spec.max_steps)
        limits[suite] = limit
        num_tasks = 10 if faithful else len(spec.tasks)
        task_ids = cfg.task_ids or tuple(range(num_tasks))
        bad = [t for t in task_ids if not 0 <= t < num_tasks]
        if bad:
            raise ValueError(f"task ids {bad} out of range: {suite} has {num_tasks} tasks")
        # LIBERO's own tasks in MJX: one env (one compiled program) per set of tasks that share a scene
        groups = task_groups(suite, task_ids) if faithful else [task_ids]
        for group in groups:
            pairs = [(t, e) for t in group for e in range(cfg.episodes_per_task)]
            all_keys += [episode_key("mjx", suite, t, e) for t, e in pairs]
            todo = [(t, e) for t, e in pairs if episode_key("mjx", suite, t, e) not in finished]
            logger.info("MJX eval %s tasks %s: %d episodes, %d to run", suite, group, len(pairs), len(todo))
            if not todo:
                continue
            tasks = {"task_ids": group} if faithful else {}
            env = make_env(suite, image_size=image_size, render_fn=render_fn, max_steps=limit, **tasks)
            adapter = make_env_adapter(
                policy.data_cfg,
                env.prompts,
                policy.tokenizer.tokenize,
                policy.norm_stats,
                state_dim=int(jax.eval_shape(env.reset_to, group[0], 0).obs["state"].shape[-1]),
                action_env_dim=env.action_size,
                action_chunk=cfg.action_chunk,
                model_image_keys=model_cfg.image_keys,
                env_cameras=env.image_keys,
                env_name=f"MJX suite {suite!r}",
            )
            _run_suite(policy, cfg, env, adapter, suite, limit, todo, log, out)
    results = [r for k, r in log.load().items() if k in set(all_keys)]
    meta = {
        "backend": "mjx",
        "episode_limits": limits,
        "action_chunk": cfg.action_chunk,
        "num_steps": policy.num_steps,
        **(meta or {}),
    }
    return write_report(out, results, meta)


def _run_suite(policy, cfg, env, adapter, suite, limit, todo, log, out) -> None:
    from pirl.policies.config import FlowPolicyConfig

    batch = cfg.max_parallel or len(todo)
    video_pairs = {(t, e) for t, e in todo if e < cfg.videos_per_task}
    # Episodes with videos go first so they land in the recorded leading slots.
    todo = sorted(todo, key=lambda p: (p not in video_pairs, p))
    num_video = min(len(video_pairs), batch)
    static = _Static(chunk_steps=math.ceil(limit / cfg.action_chunk), num_video=num_video)
    # The trainer's evaluation sampler: flow_policy.sample in eval mode (the pure ODE).
    policy_cfg = FlowPolicyConfig(
        num_steps=policy.num_steps,
        action_chunk=cfg.action_chunk,
        action_env_dim=env.action_size,
        add_value_head=False,
    )
    run = jax.jit(functools.partial(_evaluate_batch, static, env, policy.model_cfg, policy_cfg))
    inits = _init_pool(cfg, env)
    rng = jax.random.key(cfg.seed)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        task_ids = jnp.asarray([t for t, _ in padded], jnp.int32)
        init_ids = jnp.asarray([inits[e % len(inits)] for _, e in padded], jnp.int32)
        episode_ids = jnp.asarray([e for _, e in padded], jnp.int32)
        t0 = time.monotonic()
        success, length, frames = run(policy.params, adapter, task_ids, init_ids, episode_ids, rng)
        success, length = np.asarray(success), np.asarray(length)
        seconds = (time.monotonic() - t0) / len(chunk)
        for i, (task_id, episode) in enumerate(chunk):
            log.append(
                EpisodeResult(
                    backend="mjx",
                    suite=suite,
                    task_id=task_id,
                    episode=episode,
                    init_id=int(inits[episode % len(inits)]),
                    success=bool(success[i]),
                    length=int(length[i]),
                    prompt=env.prompts[task_id],
                    seconds=seconds,
                )
            )
            if (task_id, episode) in video_pairs and i < num_video:
                _write_video(out, suite, task_id, episode, bool(success[i]), np.asarray(frames[:, i]), cfg)


def _init_pool(cfg: MjxEvalConfig, env: Any) -> list[int]:
    """The initial states episodes cycle through, checked against the suite's count."""
    inits = list(cfg.init_ids or range(env.num_init_states))
    bad = [i for i in inits if not 0 <= i < env.num_init_states]
    if bad:
        raise UserError(f"init ids {bad} out of range: the suite has {env.num_init_states} initial states")
    return inits


def _write_video(out, suite, task_id, episode, success, frames, cfg) -> None:
    from pirl.logging.video import write_video

    outcome = "success" if success else "failure"
    path = out / "videos" / f"mjx_{suite}_task{task_id:02d}_ep{episode:03d}_{outcome}.mp4"
    write_video(path, frames, fps=max(1.0, 20.0 / cfg.action_chunk))
