"""The RL training loop: `train_rl(RLConfig)`.

Per global step: `collect` (jit: `rollout_epochs` rollouts from fresh resets, or with
`env.auto_reset` continuing the episodes of the previous rollout (`AutoResetCollect`) → advantages →
flat transitions, all on device) and `update` (jit: every PPO optimizer step of the step). Both are
compiled once with the parameters FSDP-sharded and the environment / transition batch split over
the mesh's batch axes. The host only loops, logs, evaluates, writes videos and saves checkpoints.

Before any environment, tokenizer or compilation, `train_rl` checks the named files exist and the run
directory matches `resume` (no fresh run over an earlier run's checkpoints, no resume from nothing);
any exception (Ctrl-C, SIGTERM under `pirl.errors.run_cli`, a failed write) first saves an emergency
checkpoint of the last completed step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import pirl
from pirl.checkpoints.detect import load_checkpoint_params
from pirl.checkpoints.train_state import (
    CheckpointWriteError,
    TrainStateCheckpointer,
    check_resume_matches,
    committed_steps,
)
from pirl.data.configs import DataConfig, asset_id_for, get_data_config
from pirl.data.normalize import NormStats, load_norm_stats
from pirl.distributed import mesh as mesh_lib
from pirl.distributed import multihost
from pirl.errors import UserError, disk_errors
from pirl.logging.video import video_grid, write_video
from pirl.logging.writer import MetricWriter, progress
from pirl.models.tokenizer import PaligemmaTokenizer
from pirl.policies import flow_policy
from pirl.policies.env_io import ENV_CAMERAS, make_env_adapter
from pirl.policies.masks import trainable_mask as policy_trainable_mask
from pirl.policies.trained import (
    POLICY_FILE,
    TOKENIZER_FILE,
    PolicyDescription,
    asset_roots,
    find_policy_description,
    save_policy_assets,
)
from pirl.rl import rollout as rollout_lib
from pirl.rl import update as update_lib
from pirl.rl import warm_start
from pirl.rl.config import RLConfig
from pirl.rl.optim import make_optimizer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- set-up


def make_rl_env(cfg: RLConfig) -> Any:
    """The config's environment: an MJX suite (single-environment API; batched with vmap), or for
    `env.backend = "libero"` the real LIBERO in host worker processes (`host_rollout.LiberoTrainEnv`)."""
    if cfg.env.backend == "libero":
        from pirl.rl.host_rollout import LiberoTrainEnv

        return LiberoTrainEnv(cfg)
    from pirl.envs import make_env
    from pirl.envs.build_libero import FAITHFUL_SUITES

    # LIBERO's own tasks in MJX: one compiled model per task, settled like the libero backend
    faithful = (
        {
            "task_ids": cfg.env.task_ids,
            "settle_steps": cfg.env.settle_steps,
            "look": cfg.env.libero_look,
            "render_backend": cfg.env.libero_render_backend,
        }
        if cfg.env.name in FAITHFUL_SUITES
        else {}
    )
    return make_env(
        cfg.env.name,
        image_size=cfg.env.image_size,
        max_steps=cfg.max_episode_steps,
        terminate_on_success=not cfg.env.ignore_terminations,
        **faithful,
    )


def state_dim_of(env: Any) -> int:
    """Width of the env's proprio state (8 for LIBERO)."""
    if hasattr(env, "state_dim"):
        return env.state_dim
    return jax.eval_shape(env.reset_to, 0, 0).obs["state"].shape[-1]


def _id_pool(chosen: tuple[int, ...], count: int, field: str, limit: str) -> np.ndarray:
    """`chosen` ids (all of 0..count-1 when empty), checked to lie in range; `limit` explains count."""
    ids = np.asarray(chosen or range(count), np.int32)
    if ids.min() < 0 or ids.max() >= count:
        raise UserError(f"env.{field} {tuple(ids.tolist())} out of range: {limit}")
    return ids


def init_ids_of(cfg: RLConfig, env: Any) -> np.ndarray:
    """The fixed initial states to train / evaluate on (all 50 unless the config names some)."""
    n = env.num_init_states
    return _id_pool(cfg.env.init_ids, n, "init_ids", f"each task has {n} initial states")


def task_ids_of(cfg: RLConfig, env: Any) -> np.ndarray:
    """The tasks to train / evaluate on (all of the suite's unless the config names some)."""
    n = len(env.prompts)
    return _id_pool(cfg.env.task_ids, n, "task_ids", f"{cfg.env.name} has {n} tasks")


def saved_policy(cfg: RLConfig) -> PolicyDescription | None:
    """The policy description saved with `init_checkpoint` (a pirl run's assets), or on --resume
    with the run itself; None for checkpoints without one (openpi, RLinf)."""
    if cfg.init_checkpoint and not Path(cfg.init_checkpoint).expanduser().exists():
        raise UserError(
            f"--init-checkpoint {cfg.init_checkpoint} does not exist; pass the directory of an SFT checkpoint"
        )
    if cfg.resume and (Path(cfg.run_dir) / "assets" / POLICY_FILE).is_file():
        return find_policy_description(Path(cfg.run_dir) / "assets")
    if cfg.init_checkpoint:
        return find_policy_description(cfg.init_checkpoint)
    return None


def resolve_data_config(cfg: RLConfig, saved: PolicyDescription | None) -> DataConfig:
    """The data config that drives the policy's inputs and outputs: the saved one (an explicit
    --data-config must agree with it), else --data-config or the preset's default."""
    if saved is not None:
        if cfg.data_config is not None and cfg.data_config != saved.data.name:
            raise UserError(
                f"--data-config {cfg.data_config} conflicts with the checkpoint's data config "
                f"{saved.data.name!r} (saved in its assets/{POLICY_FILE}); drop --data-config"
            )
        return saved.data
    name = cfg.data_config or cfg.default_data_config
    try:
        return get_data_config(name, action_horizon=cfg.model.action_horizon)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None


def tokenizer_path_for(cfg: RLConfig, env: Any, run_dir: Path) -> Path:
    """The PaliGemma tokenizer: --tokenizer-path, the checkpoint's (or, resuming, the run's) assets,
    or (random init) one trained here on the suite's prompts."""
    from pirl.models.tokenizer import find_tokenizer, train_tiny_tokenizer

    own = run_dir / "assets" / TOKENIZER_FILE
    if cfg.tokenizer_path:
        return Path(cfg.tokenizer_path).expanduser()
    if cfg.resume and own.is_file():
        return own
    if cfg.init_checkpoint:
        errors = []
        for root in asset_roots(cfg.init_checkpoint):
            try:
                return find_tokenizer(root)
            except FileNotFoundError as e:
                errors.append(str(e))
        raise UserError(f"no tokenizer with --init-checkpoint: {errors[0]}; pass --tokenizer-path")
    if cfg.random_init:
        if jax.process_index() == 0 and not own.exists():
            train_tiny_tokenizer(list(env.prompts), own, cfg.model.vocab_size)
        multihost.barrier("pirl tokenizer written")  # the other processes read process 0's file
        return own
    raise UserError("no tokenizer: set --tokenizer-path or --init-checkpoint")


def load_model_params(cfg: RLConfig) -> dict | None:
    """Model params from `init_checkpoint` (any kind: `pirl.checkpoints.load_checkpoint_params`)."""
    if cfg.init_checkpoint is None:
        if cfg.random_init:
            return None
        raise UserError(
            f"preset {cfg.name!r} fine-tunes an SFT checkpoint: pass --init-checkpoint /path/to/checkpoint "
            "(a pirl run, an openpi orbax checkpoint dir, or a dir with model.safetensors), or --random-init for a smoke test"
        )
    # train (and keep Adam state) in float32
    return load_checkpoint_params(cfg.init_checkpoint, cfg.model, dtype=np.float32)


def load_norm_stats_for(cfg: RLConfig, data_cfg: DataConfig | None = None) -> dict[str, NormStats] | None:
    """Norm stats from --norm-stats-path or the checkpoint's assets: `<ckpt>/assets/`, or the data
    config's asset folder `<ckpt>/<repo id>/` (openpi's and RLinf's layout); None: computed from demos."""
    if cfg.norm_stats_path:
        return load_norm_stats(cfg.norm_stats_path)
    if cfg.init_checkpoint:
        asset_id = None if data_cfg is None else asset_id_for(data_cfg.asset_id or data_cfg.repo_id)
        errors = []
        for root in asset_roots(cfg.init_checkpoint):
            for sub in ((asset_id,) if asset_id else ()) + (None,):
                try:
                    return load_norm_stats(root, sub)
                except FileNotFoundError as e:
                    errors.append(str(e))
        raise UserError(f"no norm stats with --init-checkpoint: {errors[-1]}; pass --norm-stats-path")
    if cfg.random_init:
        return None
    raise UserError("no norm stats: set --norm-stats-path (a directory with norm_stats.json)")


def make_adapter(cfg: RLConfig, env: Any, data_cfg: DataConfig, tokenizer: Any, stats: dict | None):
    """The on-device adapter of the run's policy, built from its data config and checked against the env."""
    if cfg.model.discrete_state_input:
        raise UserError(
            "model.discrete_state_input puts the state into the prompt, but RL rollouts tokenise each task's "
            "prompt once on the host: use a model with discrete_state_input=False (openpi's pi05_libero)"
        )
    return make_env_adapter(
        data_cfg,
        env.prompts,
        tokenizer.tokenize,
        stats,
        state_dim=state_dim_of(env),
        action_env_dim=cfg.policy.action_env_dim,
        action_chunk=cfg.policy.action_chunk,
        model_image_keys=cfg.model.image_keys,
        env_cameras=getattr(env, "image_keys", ENV_CAMERAS) or ENV_CAMERAS,
        env_name=f"env {cfg.env.name!r}",
        rotate_images=getattr(env, "images_upside_down", False),
    )


def check_paths(cfg: RLConfig) -> None:
    """The files the config names exist, and a real preset has a checkpoint (UserError otherwise)."""
    if cfg.init_checkpoint is None and not cfg.random_init:
        raise UserError(
            f"preset {cfg.name!r} fine-tunes an SFT checkpoint: pass --init-checkpoint /path/to/checkpoint "
            "(a pirl or openpi orbax checkpoint dir, or a dir with model.safetensors), or --random-init for a smoke test"
        )
    for flag, value in (
        ("--init-checkpoint", cfg.init_checkpoint),
        ("--tokenizer-path", cfg.tokenizer_path),
        ("--norm-stats-path", cfg.norm_stats_path),
    ):
        if value and "://" not in value and not Path(value).expanduser().exists():
            raise UserError(f"{flag} {value} does not exist")


def prepare_run_dir(cfg: RLConfig) -> Path:
    """Create the run directory and write config.json, after refusing a fresh run over an earlier
    run's checkpoints and a --resume with none; a fresh run sets the earlier run's logs aside."""
    run_dir = Path(cfg.run_dir)
    check_resume_matches(
        run_dir / "checkpoints",
        cfg.resume,
        resume_flag="--resume",
        new_run_hint="--name <new name> (or another --run-root)",
    )
    with disk_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        earlier = [run_dir / d for d in ("tb", "videos") if (run_dir / d).exists()]
        if not cfg.resume and earlier and jax.process_index() == 0:
            # Logs of an earlier run that saved no checkpoint: kept, but not mixed with this run's.
            aside = run_dir / f"previous-{int(time.time())}"
            aside.mkdir()
            for path in earlier:
                path.rename(aside / path.name)
            log.warning("moved the logs of an earlier run without checkpoints to %s", aside)
        if cfg.resume and jax.process_index() == 0:
            set_aside_metrics_after(
                run_dir / "tb" / "metrics.jsonl", committed_steps(run_dir / "checkpoints")[-1]
            )
        if jax.process_index() == 0:  # one writer for the files every process would write alike
            (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    return run_dir


def set_aside_metrics_after(path: Path, step: int) -> int:
    """Move the records of steps after `step` (logged after the last checkpoint by a run that was
    killed) from metrics.jsonl to metrics.superseded.jsonl, so the resumed run's records of those steps
    are the only ones; returns how many were moved."""
    if not path.is_file():
        return 0
    keep, later = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            (later if json.loads(line).get("step", 0) > step else keep).append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            later.append(line if line.endswith("\n") else line + "\n")
    if later:
        with open(path.with_name("metrics.superseded.jsonl"), "a", encoding="utf-8") as f:
            f.writelines(later)
        path.write_text("".join(keep))
        log.warning("moved %d metric records of steps after checkpoint %d to %s", len(later), step, f.name)
    return len(later)


# ----------------------------------------------------------------------------- programs

VIDEO_EPISODES = 4
"""Evaluation episodes tiled into the logged video."""


@dataclasses.dataclass(frozen=True)
class Programs:
    """The compiled pieces of a run (closures over static config and environment)."""

    collect: Any
    update: Any
    evaluate: Any
    reset: Any


class AutoResetCollect:
    """`collect` with env.auto_reset on the MJX backend: the environments' states and running
    returns carry over from one global step to the next (held here, like `HostCollector`'s).

    They are not checkpointed: a resumed run (or a new `AutoResetCollect`) starts fresh episodes."""

    def __init__(self, collect: Any, start: Any):
        self._collect, self._start = collect, start
        self.carry: Any = None
        """(batched env state, f32[num_envs] returns so far), or None before the first rollout."""

    def __call__(self, params, adapter, rng, task_pool, init_pool, global_step=0):
        if self.carry is None:
            self.carry = self._start(jax.random.fold_in(rng, 1), task_pool, init_pool)
        transitions, metrics, self.carry = self._collect(
            params, adapter, rng, task_pool, init_pool, np.int32(global_step), self.carry
        )
        return transitions, metrics


def jit_update(
    cfg: RLConfig,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    trainable: Any,
    state_shardings: Any,
) -> Any:
    """The trainer's update program: jit(ppo_update) traced on the mesh (`mesh.jit_on_mesh`),
    (params, opt_state, opt_step, transitions, rng, *, adapter) -> (params, opt_state, opt_step,
    metrics), params and optimizer state donated. `state_shardings` ({"params", "opt_state"}
    shardings) pin its outputs, so the step compiles once and keeps the FSDP layout from step to
    step. `benchmarks/full_scale.py` lowers this very function on abstract inputs."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return mesh_lib.jit_on_mesh(
        functools.partial(
            update_lib.ppo_update,
            cfg=cfg,
            optimizer=optimizer,
            trainable_mask=trainable,
            batch_sharding=mesh_lib.batch_sharding(mesh),
        ),
        mesh,
        donate_argnums=(0, 1),
        out_shardings=(state_shardings["params"], state_shardings["opt_state"], replicated, replicated),
    )


def build_programs(
    cfg: RLConfig,
    env: Any,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    trainable: Any,
    state_shardings: Any,
) -> Programs:
    """Jit the reset / collect / update / evaluate functions with the mesh's shardings, each traced
    on the mesh (`mesh.jit_on_mesh`: the model's batch constraints act).

    `state_shardings` ({"params", "opt_state"} shardings) pin the update's inputs and outputs."""
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    update = multihost.compile_then_barrier(
        "update", jit_update(cfg, mesh, optimizer, trainable, state_shardings)
    )
    if cfg.env.backend == "libero":  # host simulators: rollouts driven from Python, same update
        from pirl.rl.host_rollout import HostCollector

        host = HostCollector(cfg, env, mesh)
        return Programs(collect=host.collect, update=update, evaluate=host.evaluate, reset=None)
    chunk_steps = cfg.resolved_chunk_steps
    num_envs, group = cfg.env.num_envs, cfg.adv.group_size if cfg.adv.adv_type == "grpo" else 1
    reset_batch = jax.vmap(env.reset_to)

    def reset(rng, task_pool, init_pool):
        """Fresh episodes: each group of `group` envs shares a random (task, initial state)."""
        tasks, inits = rollout_lib.sample_reset_ids(rng, task_pool, init_pool, num_envs, group)
        return jax.lax.with_sharding_constraint(reset_batch(tasks, inits), batch_sharding)

    auto_reset = cfg.env.auto_reset

    def collect(params, adapter, rng, task_pool, init_pool, global_step, carry=None):
        noise_level = cfg.policy.noise_level_at(global_step) if cfg.policy.noise_anneal else None

        def one_epoch(carry, key):
            k_reset, k_roll = jax.random.split(key)
            state, ret = (reset(k_reset, task_pool, init_pool), None) if carry is None else carry
            out = rollout_lib.rollout(
                params,
                adapter,
                state,
                k_roll,
                env=env,
                policy_cfg=cfg.policy,
                model_cfg=cfg.model,
                chunk_steps=chunk_steps,
                env_spec=cfg.env,
                reset_pools=(task_pool, init_pool) if auto_reset else None,
                adv_cfg=cfg.adv,
                episode_return=ret,
                noise_level=noise_level,
            )
            carry = (out.final_state, out.episode_return) if auto_reset else None
            return carry, (update_lib.rollout_targets(cfg, out.trajectory, out.final_value), out.finished)

        carry, ((transitions, metrics), finished) = jax.lax.scan(
            one_epoch, carry, jax.random.split(rng, cfg.rollout_epochs)
        )
        transitions = jax.lax.with_sharding_constraint(
            update_lib.merge_rollout_epochs(transitions), batch_sharding
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        if not auto_reset:
            return transitions, metrics
        return transitions, metrics | rollout_lib.finished_episode_metrics(finished), carry

    if auto_reset:
        collect = AutoResetCollect(
            mesh_lib.jit_on_mesh(collect, mesh),
            jax.jit(
                lambda rng, tasks, inits: (reset(rng, tasks, inits), jnp.zeros((num_envs,), jnp.float32))
            ),
        )
    else:
        jitted = multihost.compile_then_barrier("collect", mesh_lib.jit_on_mesh(collect, mesh))
        collect = lambda params, adapter, rng, tasks, inits, global_step=0: jitted(  # noqa: E731
            params, adapter, rng, tasks, inits, np.int32(global_step)
        )

    def evaluate(params, adapter, task_ids, init_ids, rng, episode_ids):
        state = jax.lax.with_sharding_constraint(reset_batch(task_ids, init_ids), batch_sharding)
        out = rollout_lib.rollout(
            params,
            adapter,
            state,
            rollout_lib.episode_keys(rng, task_ids, episode_ids),
            env=env,
            policy_cfg=cfg.policy,
            model_cfg=cfg.model,
            chunk_steps=chunk_steps,
            mode="eval",
        )
        traj = out.trajectory
        metrics = update_lib.env_metrics(traj, cfg)
        frames = traj.env_obs.get("agentview_image")
        if frames is not None:  # the video's episodes, gathered to every process (not the whole batch)
            frames = jax.lax.with_sharding_constraint(frames[:, :VIDEO_EPISODES], replicated)
        return metrics, jnp.any(traj.successes, axis=0), frames

    return Programs(
        collect=collect,
        update=update,
        evaluate=multihost.compile_then_barrier("evaluate", mesh_lib.jit_on_mesh(evaluate, mesh)),
        reset=jax.jit(reset),
    )


def eval_pairs(cfg: RLConfig, env: Any, mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed episodes of an evaluation, padded to split over the mesh: (task, initial state,
    episode number within its task). Episode e of a task starts from init_ids[e % len(init_ids)],
    as `pirl.eval --task-ids ... --init-ids ...` numbers them."""
    tasks, inits = task_ids_of(cfg, env), init_ids_of(cfg, env)
    n = cfg.eval_episodes
    shards = math.prod(mesh.shape[a] for a in mesh_lib.batch_axes(mesh))
    n_padded = -(-n // shards) * shards
    idx = np.arange(n_padded) % n
    episode = idx // len(tasks)
    return tasks[idx % len(tasks)], inits[episode % len(inits)], episode


# ----------------------------------------------------------------------------- loop


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(tree))


def _warm_start(
    cfg: RLConfig, env: Any, params: dict, adapter_from_stats, rng, writer: MetricWriter, run_dir: Path
):
    """Record expert demos, compute norm stats, and SFT the model on them."""
    from pirl.envs.expert import expert_action

    ws = cfg.warm_start
    tasks = task_ids_of(cfg, env)
    n = ws.episodes_per_task * len(tasks)
    task_ids = jnp.asarray(np.repeat(tasks, ws.episodes_per_task), jnp.int32)
    inits = init_ids_of(cfg, env)
    init_ids = jnp.asarray(
        np.tile(inits[np.arange(ws.episodes_per_task) % len(inits)], len(tasks)), jnp.int32
    )
    t0 = time.time()
    record = jax.jit(
        lambda t, i, k: warm_start.record_expert_demos(
            env,
            expert_action,
            t,
            i,
            k,
            num_steps=cfg.max_episode_steps,
            horizon=cfg.model.action_horizon,
            action_noise=ws.action_noise,
        )
    )
    log.info(
        "recording %d expert episodes of %d steps (the first call compiles the MJX rollout)",
        n,
        cfg.max_episode_steps,
    )
    demos = jax.block_until_ready(record(task_ids, init_ids, rng))
    valid = np.asarray(demos.valid)
    success_rate = float(np.asarray(demos.success).reshape(-1, n)[0].mean()) if n else 0.0
    log.info(
        "recorded %d expert steps from %d episodes in %.1fs (expert success %.2f)",
        valid.sum(),
        n,
        time.time() - t0,
        success_rate,
    )
    stats = warm_start.demo_norm_stats(demos)
    adapter = adapter_from_stats(stats)
    # Clean demos: imitate successful episodes only. Noisy (DART) demos: every valid step is labelled
    # with the expert's own action, so failed episodes still teach how to recover.
    keep = np.flatnonzero(valid if ws.action_noise > 0 else valid & np.asarray(demos.success))
    if keep.size == 0:  # e.g. episodes shorter than the task: imitate the expert's partial motions
        log.warning("the expert succeeded on no demo episode; warm-starting on all of its valid steps")
        keep = np.flatnonzero(valid)
    demos = jax.tree.map(lambda x: x[keep], demos)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, ws.lr, max(1, ws.sft_steps // 20), max(1, ws.sft_steps), ws.lr * 0.05
    )
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    model_params = params["model"]
    opt_state = optimizer.init(model_params)
    sft_step = warm_start.make_sft_step(cfg.model, adapter, optimizer)
    rng_np = np.random.default_rng(cfg.seed)
    bar = progress(total=ws.sft_steps, desc="warm-start SFT", unit="step")
    for i in range(ws.sft_steps):
        idx = rng_np.integers(0, keep.size, ws.batch_size)
        batch = jax.tree.map(lambda x, idx=idx: x[idx], demos)
        model_params, opt_state, loss = sft_step(model_params, opt_state, batch, jax.random.fold_in(rng, i))
        if i % 20 == 0 or i == ws.sft_steps - 1:
            loss = float(loss)
            writer.scalars({"warm_start/sft_loss": loss}, step=i)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)
    bar.close()
    writer.flush()
    return {**params, "model": model_params}, stats, adapter


def _log_pirl_info() -> None:
    """Show pirl's INFO messages on stderr (other libraries keep their own levels)."""
    pirl_log = logging.getLogger("pirl")
    if not pirl_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pirl_log.addHandler(handler)
        pirl_log.setLevel(logging.INFO)
        pirl_log.propagate = False


def train_rl(cfg: RLConfig, env: Any | None = None) -> dict[str, float]:
    """Train; returns the last evaluation's metrics (env/success_once, ...).

    `env`: a ready ManipEnv (e.g. a custom scene or render_fn); None builds `make_rl_env(cfg)`."""
    _log_pirl_info()
    if jax.default_backend() == "cpu" and pirl.cpu_flags_missing():
        log.warning(
            "XLA_FLAGS overrides pirl's CPU flags %s: MJX rollouts can run many times slower or "
            "stall on the CPU (see pirl/__init__.py); drop those settings from XLA_FLAGS",
            pirl.cpu_flags_missing(),
        )
    # Everything checkable is checked before an environment, a tokenizer or a compilation.
    check_paths(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    mesh_lib.check_divisible(cfg.env.num_envs, mesh, what="env.num_envs")
    mesh_lib.check_divisible(cfg.global_batch_size, mesh, what="global_batch_size")
    if cfg.micro_batch_size is not None:
        mesh_lib.check_divisible(cfg.micro_batch_size, mesh, what="micro_batch_size")
    run_dir = prepare_run_dir(cfg)
    if cfg.compilation_cache_dir:
        cache_dir = Path(cfg.compilation_cache_dir).expanduser()
        with disk_errors(cache_dir):
            cache_dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    with disk_errors(run_dir):
        return _train(cfg, env, run_dir, mesh)


def _train(cfg: RLConfig, env: Any | None, run_dir: Path, mesh: jax.sharding.Mesh) -> dict[str, float]:
    owns_env = env is None
    if env is None:
        env = make_rl_env(cfg)
    elif env.max_steps != cfg.max_episode_steps:
        raise ValueError(
            f"the given env ends episodes after {env.max_steps} steps but the config says "
            f"{cfg.max_episode_steps}: build it with make_env(..., max_steps={cfg.max_episode_steps})"
        )
    elif (
        getattr(env, "config", None) is not None
        and env.config.terminate_on_success == cfg.env.ignore_terminations
    ):
        raise ValueError(
            f"env.ignore_terminations={cfg.env.ignore_terminations} needs an env built with "
            f"make_env(..., terminate_on_success={not cfg.env.ignore_terminations})"
        )
    saved = saved_policy(cfg)
    data_cfg = resolve_data_config(cfg, saved)
    tokenizer_path = tokenizer_path_for(cfg, env, run_dir)
    tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=cfg.model.max_token_len)
    rng = jax.random.key(cfg.seed)
    rng, k_init, k_warm = jax.random.split(rng, 3)

    def adapter_from_stats(stats):
        return make_adapter(cfg, env, data_cfg, tokenizer, stats)

    writer = MetricWriter(run_dir / "tb")
    ckpt = TrainStateCheckpointer(
        run_dir / "checkpoints",
        max_to_keep=cfg.keep_checkpoints,
        save_interval=max(1, cfg.save_interval or cfg.total_steps or 1),
    )
    params = flow_policy.init_policy_params(cfg.policy, cfg.model, k_init, load_model_params(cfg))
    resumable = cfg.resume and ckpt.latest_step() is not None
    if resumable and not cfg.norm_stats_path and (run_dir / "assets" / "norm_stats.json").exists():
        stats = load_norm_stats(run_dir / "assets")  # the run's own (e.g. from the warm start's demos)
    else:
        stats = load_norm_stats_for(cfg, data_cfg)
    adapter = adapter_from_stats(stats)  # checks the data config and stats against the env first
    if stats is None and cfg.warm_start.sft_steps > 0:
        params, stats, adapter = _warm_start(cfg, env, params, adapter_from_stats, k_warm, writer, run_dir)
    # The run directory is a complete policy from here on (pirl.eval / pirl.serve --checkpoint run_dir).
    description = PolicyDescription(model=cfg.model, data=data_cfg, num_steps=cfg.policy.num_steps)
    save_policy_assets(run_dir / "assets", description, stats, tokenizer_path)

    trainable = policy_trainable_mask(params, cfg.policy, cfg.model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    param_shardings = mesh_lib.param_shardings(jax.eval_shape(lambda: params), mesh)
    params = multihost.device_put_global(params, param_shardings)
    opt_state = jax.jit(optimizer.init)(params)
    # Leaves created inside optimizer.init (step counts) come out on one device: replicate them over
    # the mesh so that every state leaf, and the update's pinned out_shardings, span the same devices.
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else multihost.device_put_global(x, replicated),
        opt_state,
    )
    state = {
        "params": params,
        "opt_state": opt_state,
        "opt_step": multihost.device_put_global(np.zeros((), np.int32), replicated),
        "rng": multihost.device_put_global(rng, replicated),
    }
    start = 0
    if resumable:
        restored = ckpt.restore_latest(state)  # the live state carries the FSDP shardings
        if restored is not None:
            state, start = restored.state, restored.step
            log.info("resumed from step %d", restored.step)
    state_shardings = jax.tree.map(
        lambda x: x.sharding, {"params": state["params"], "opt_state": state["opt_state"]}
    )
    programs = build_programs(cfg, env, mesh, optimizer, trainable, state_shardings)
    log.info("compiling the rollout, update and evaluation programs on first use")
    # Every small input (prompt tokens, norm stats, task / init pools) lives replicated on the mesh, so
    # no argument of a program is committed to a single device while the params span all of them.
    adapter = multihost.device_put_global(adapter, replicated)
    task_pool = multihost.device_put_global(task_ids_of(cfg, env), replicated)
    init_pool = multihost.device_put_global(init_ids_of(cfg, env), replicated)
    eval_tasks, eval_inits, eval_episodes = (
        multihost.device_put_global(np.asarray(x, np.int32), replicated) for x in eval_pairs(cfg, env, mesh)
    )

    last_eval: dict[str, float] = {}

    def run_eval(step: int, params) -> dict[str, float]:
        t0 = time.time()
        metrics, _, frames = programs.evaluate(
            params, adapter, eval_tasks, eval_inits, jax.random.key(cfg.seed + 1), eval_episodes
        )
        metrics = {f"eval/{k.split('/', 1)[1]}": v for k, v in _host(metrics).items()}
        metrics["time/eval"] = time.time() - t0
        writer.scalars(metrics, step)
        if frames is not None and cfg.video_interval and step % cfg.video_interval == 0:
            grid = video_grid(np.asarray(frames[:, :VIDEO_EPISODES]).transpose(1, 0, 2, 3, 4))
            fps = max(1.0, 20.0 / cfg.policy.action_chunk)  # one frame per chunk step
            writer.video("eval/video", grid, step, fps=fps)
            if jax.process_index() == 0:  # MetricWriter and config.json: process 0 only too
                write_video(run_dir / "videos" / f"eval_step{step:06d}.mp4", grid, fps=fps)
        return metrics

    completed = start  # global steps whose results `state` holds
    try:
        if start == 0 and cfg.eval_interval:
            last_eval = run_eval(0, state["params"])
            log.info("step 0 eval: %s", last_eval)
        bar = progress(total=cfg.total_steps, initial=start, desc=cfg.name, unit="step")
        for step in range(start, cfg.total_steps):
            rng_step = jax.random.fold_in(state["rng"], step)
            k_collect, k_update = jax.random.split(rng_step)
            t0 = time.time()
            transitions, roll_metrics = programs.collect(
                state["params"], adapter, k_collect, task_pool, init_pool, global_step=step
            )
            roll_metrics = _host(roll_metrics)
            t1 = time.time()
            params, opt_state, opt_step, train_metrics = programs.update(
                state["params"], state["opt_state"], state["opt_step"], transitions, k_update, adapter=adapter
            )
            state = {"params": params, "opt_state": opt_state, "opt_step": opt_step, "rng": state["rng"]}
            completed = step + 1
            train_metrics = _host(train_metrics)
            t2 = time.time()
            metrics = (
                roll_metrics
                | train_metrics
                | {"time/rollout": t1 - t0, "time/update": t2 - t1, "time/step": t2 - t0}
            )
            writer.scalars(metrics, step + 1)
            if cfg.eval_interval and (step + 1) % cfg.eval_interval == 0:
                last_eval = run_eval(step + 1, state["params"])
                log.info("step %d eval: %s", step + 1, {k: round(v, 3) for k, v in last_eval.items()})
            ckpt.save(step + 1, state, {"name": cfg.name})
            writer.flush()  # metrics.jsonl and TensorBoard are readable while the run goes on
            bar.set_postfix(
                success=f"{metrics['env/success_once']:.2f}",
                eval=f"{last_eval.get('eval/success_once', float('nan')):.2f}",
            )
            bar.update(1)
        bar.close()
        ckpt.save(cfg.total_steps, state, {"name": cfg.name}, force=True)
    except BaseException as error:
        if not isinstance(error, CheckpointWriteError):  # a full disk would only fail again
            ckpt.emergency_save(completed, state, {"name": cfg.name})
        raise
    finally:
        ckpt.close()
        writer.close()
        if owns_env and hasattr(env, "close"):
            env.close()  # the LIBERO worker processes
    return last_eval
