"""Rollouts on host-CPU simulators (the real LIBERO) feeding the on-device policy, pipelined.

With `env.backend = "libero"` the trainer's environment is a `LiberoTrainEnv`: the suite's prompts
and official initial states, and a `LiberoPool` of worker processes holding this JAX process's share
of the environments (process p owns global environments [p·L, (p+1)·L), L = num_envs / processes;
no process ever sees another's observations). `HostCollector.collect` / `.evaluate` return what
the MJX backend's compiled collect / evaluate return (flat `Transitions` and metrics), built from
the same `Trajectory` record, advantages (`update.rollout_targets`) and metric functions.

Pipeline (RLinf's `rollout.pipeline_stage_num` = S): each process's environments are split into S
contiguous stages (spread over all workers). For each chunk step and each stage in turn the host
waits for the stage's observations, samples its action chunks on the device in one compiled call,
and hands them to the workers, which step that stage while the device samples the next one. With
S = 1 the device and the CPUs take turns; with S >= 2 the policy's time hides behind the stepping.

Randomness: environment g's sampling keys at chunk step t are fold_in(fold_in(rollout key, t), g)
(per-example keys, see `flow_policy.sample`), and its (task, initial state) come from the global
reset draw, so nothing depends on the stage split or the number of workers; with a fixed
`env.sample_micro_batch` neither do the numerics: trajectories are bit-identical across S.

Episodes follow RLinf's LIBERO env: the official initial state, `settle_steps` no-ops, then chunks
of `policy.action_chunk` actions. Per control step the reward is RLinf's (`rollout.control_step_reward`:
by default coef·(success_k − success_{k−1}), paid once, taken back if success is lost); terminated = success (never, with
`ignore_terminations`); truncated = `max_episode_steps` reached. A chunk's reward is the sum over its
steps and it is done if a step terminated or truncated. Without `auto_reset` each rollout starts
fresh episodes and an environment whose episode ended is not stepped again (its later steps repeat
the last observation and are masked); with `auto_reset` it starts a new episode right after the
chunk (a fresh (task, initial state) from the pools), chunks cut by truncation get γ·V(final
observation) added to their reward, and episodes carry over from one rollout to the next.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from pirl.distributed import mesh as mesh_lib
from pirl.distributed import multihost
from pirl.envs.libero_pool import STATE_DIM, EpisodeSpec, LiberoPool, default_num_workers, suite_info
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig
from pirl.policies.env_io import EnvAdapter, env_obs_to_model, model_actions_to_env
from pirl.rl import rollout as rollout_lib
from pirl.rl import update as update_lib
from pirl.rl.config import RLConfig
from pirl.rl.rollout import Trajectory

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the environment


class LiberoTrainEnv:
    """The real-LIBERO backend of the trainer: suite facts and this process's worker pool."""

    images_upside_down = True
    """Raw LIBERO renders: the policy input is rotated by 180 degrees (openpi's convention)."""
    state_dim = STATE_DIM

    def __init__(self, cfg: RLConfig):
        env = cfg.env
        info = suite_info(env.name)
        self.name = env.name
        self.prompts = list(info.prompts)
        self.num_tasks = len(self.prompts)
        self.num_init_states = min(info.num_init_states)
        self.max_steps = cfg.max_episode_steps
        processes = jax.process_count()
        if env.num_envs % (processes * env.pipeline_stage_num):
            raise ValueError(
                f"env.num_envs={env.num_envs} must split evenly over {processes} process(es) x "
                f"env.pipeline_stage_num={env.pipeline_stage_num} stages"
            )
        self.local_envs = env.num_envs // processes
        self.first_env = jax.process_index() * self.local_envs
        self.num_workers = env.num_workers or default_num_workers(self.local_envs)
        self.cfg = cfg
        self._pool: LiberoPool | None = None

    @property
    def pool(self) -> LiberoPool:
        """The worker pool (started on first use)."""
        if self._pool is None:
            env = self.cfg.env
            log.info(
                "starting %d LIBERO worker process(es) for %d environments (%s, %dx%d renders)",
                self.num_workers,
                self.local_envs,
                self.name,
                env.image_size,
                env.image_size,
            )
            self._pool = LiberoPool(
                self.local_envs,
                self.num_workers,
                resolution=env.image_size,
                settle_steps=env.settle_steps,
                timeout_s=env.worker_timeout_s,
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


# ----------------------------------------------------------------------------- device side


@flax.struct.dataclass
class ChunkSample:
    """The policy's answer for a batch of observations: env actions plus what PPO records."""

    env_actions: Float[Array, "b c e"]
    chain: Float[Array, "b k1 h a"]
    denoise_index: Int[Array, " b"]
    log_probs: Array
    value: Float[Array, " b"]


def policy_chunk(
    params: dict,
    adapter: EnvAdapter,
    env_obs: dict[str, Array],
    task_id: Int[Array, " b"],
    keys: jax.Array,
    *,
    model_cfg: Pi0Config,
    policy_cfg: FlowPolicyConfig,
    mode: str,
    noise_level: Array | None = None,
) -> ChunkSample:
    """Env observations -> model inputs -> flow-policy sample -> env action chunks (one batch).

    The adapter rotates raw LIBERO renders (its `rotate_images`), here and when PPO rescores the
    recorded observations."""
    model_obs = env_obs_to_model(adapter, model_cfg, env_obs, task_id)
    out = flow_policy.sample(
        params, policy_cfg, model_cfg, keys, model_obs, mode=mode, noise_level=noise_level
    )
    actions = model_actions_to_env(adapter, out.actions, env_obs["state"])
    return ChunkSample(actions, out.chain, out.denoise_index, out.log_probs, out.value)


@functools.partial(jax.jit, static_argnames=("model_cfg", "policy_cfg", "micro_batch", "mode", "sharding"))
def sample_stage(
    params: dict,
    adapter: EnvAdapter,
    env_obs: dict[str, Array],
    task_id: Int[Array, " b"],
    env_ids: Int[Array, " b"],
    rng: jax.Array,
    step: Int[Array, ""],
    noise_level: Array | None = None,
    *,
    model_cfg: Pi0Config,
    policy_cfg: FlowPolicyConfig,
    micro_batch: int | None,
    mode: str,
    sharding: jax.sharding.NamedSharding,
) -> ChunkSample:
    """One stage's action chunks (compiled), with per-environment keys fold_in(fold_in(rng, step), env id)
    (`noise_level`: the Flow-SDE level under policy.noise_anneal, None = the config's).

    Each device computes its rows in micro-batches of `micro_batch` (a lax.map over [micro-batch
    step, device x micro-batch]), so an environment's numbers do not depend on how many others share
    the call; None = all of a device's rows at once."""
    keys = jax.vmap(lambda g: jax.random.fold_in(jax.random.fold_in(rng, step), g))(env_ids)
    batch = env_ids.shape[0]
    shards = math.prod(sharding.mesh.shape[a] for a in mesh_lib.batch_axes(sharding.mesh))
    per_shard = batch // shards
    micro = micro_batch or per_shard
    if batch % shards or per_shard % micro:
        raise ValueError(
            f"a stage of {batch} environments over {shards} batch shards does not split into "
            f"micro-batches of env.sample_micro_batch={micro}"
        )
    steps = per_shard // micro

    def to_steps(x):  # [batch] rows (device-major) -> [steps, shards * micro]
        x = x.reshape(shards, steps, micro, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(steps, shards * micro, *x.shape[3:])

    def from_steps(x):
        x = x.reshape(steps, shards, micro, *x.shape[2:]).swapaxes(0, 1)
        return x.reshape(batch, *x.shape[3:])

    def one(args):
        obs, task, key = jax.lax.with_sharding_constraint(args, sharding)
        out = policy_chunk(
            params,
            adapter,
            obs,
            task,
            key,
            model_cfg=model_cfg,
            policy_cfg=policy_cfg,
            mode=mode,
            noise_level=noise_level,
        )
        return jax.lax.with_sharding_constraint(out, sharding)

    with mesh_lib.tracing_on(sharding.mesh):  # the model's batch constraints act (as in the trainer)
        out = jax.lax.map(one, jax.tree.map(to_steps, (env_obs, task_id, keys)))
    return jax.tree.map(from_steps, out)


# ----------------------------------------------------------------------------- host side


@dataclasses.dataclass
class Episode:
    """Host bookkeeping of one environment's episode."""

    spec: EpisodeSpec
    steps: int = 0
    chunks: int = 0
    prev_success: bool = False
    success_once: bool = False
    success_now: bool = False
    ret: float = 0.0
    done: bool = False


@dataclasses.dataclass
class RolloutTiming:
    """Where a rollout's time went (seconds) and how many control steps it ran."""

    wall: float = 0.0
    policy: float = 0.0
    env_wait: float = 0.0
    env_busy: float = 0.0
    """Seconds the workers were busy (average over workers)."""
    step_busy: float = 0.0
    """Worker-seconds spent executing chunks (summed over workers; resets excluded)."""
    control_steps: int = 0

    def add(self, other: RolloutTiming) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class HostRecord:
    """A rollout on the host: this process's environments, time-major numpy arrays [T, L, ...]."""

    env_obs: dict[str, np.ndarray]
    task_id: np.ndarray
    sample: dict[str, np.ndarray]
    """chain, denoise_index, log_probs, value of each policy call."""
    rewards: np.ndarray
    dones: np.ndarray
    successes: np.ndarray
    final_value: np.ndarray
    """[L] critic value of the observation after the last chunk step (zeros in eval mode)."""
    finished: list[Episode] = dataclasses.field(default_factory=list)
    """Episodes that ended during the rollout."""
    timing: RolloutTiming = dataclasses.field(default_factory=RolloutTiming)


class HostCollector:
    """Rollouts of a `LiberoTrainEnv` with the trainer's `collect` / `evaluate` signatures."""

    def __init__(self, cfg: RLConfig, env: LiberoTrainEnv, mesh: jax.sharding.Mesh):
        self.cfg, self.env, self.mesh = cfg, env, mesh
        self.stages = cfg.env.pipeline_stage_num
        self.stage_size = env.local_envs // self.stages
        shards = math.prod(mesh.shape[a] for a in mesh_lib.batch_axes(mesh))
        if (cfg.env.num_envs // self.stages) % shards:
            raise ValueError(
                f"a pipeline stage holds num_envs/pipeline_stage_num = {cfg.env.num_envs // self.stages} "
                f"environments, which must split over the mesh's {shards} batch shards"
            )
        self.chunk_steps = cfg.resolved_chunk_steps
        self.max_steps = cfg.max_episode_steps
        self.group = cfg.adv.group_size if cfg.adv.adv_type == "grpo" else 1
        if env.local_envs % self.group:
            raise ValueError(
                f"each process's {env.local_envs} environments must hold whole GRPO groups of {self.group}"
            )
        sharding = mesh_lib.batch_sharding(mesh)
        micro = cfg.env.sample_micro_batch
        if micro is not None and (cfg.env.num_envs // self.stages // shards) % micro:
            raise ValueError(
                f"env.sample_micro_batch={micro} must divide the environments each device holds per stage, "
                f"num_envs / pipeline_stage_num / batch shards = {cfg.env.num_envs // self.stages // shards}"
            )
        self._sample = {
            mode: functools.partial(
                sample_stage,
                model_cfg=cfg.model,
                policy_cfg=cfg.policy,
                micro_batch=micro,
                mode=mode,
                sharding=sharding,
            )
            for mode in ("train", "eval")
        }

        def targets(trajectory: Trajectory, final_value: Array):
            trajectory = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), trajectory)  # -> time-major
            transitions, metrics = update_lib.rollout_targets(cfg, trajectory, final_value)
            return jax.lax.with_sharding_constraint(transitions, sharding), metrics

        self._targets = jax.jit(targets)
        self._merge_epochs = jax.jit(
            lambda ts: update_lib.merge_rollout_epochs(jax.tree.map(lambda *xs: jnp.stack(xs), *ts)),
            out_shardings=sharding,
        )
        self._metrics = jax.jit(
            lambda traj, weights: update_lib.env_metrics(
                jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), traj), cfg, weights
            )
        )
        self._reset_ids = jax.jit(
            functools.partial(rollout_lib.sample_reset_ids, num_envs=cfg.env.num_envs, group=self.group)
        )
        self._noise_level: np.float32 | None = None  # the training rollouts' level (noise_anneal)
        self.policy_latency_s = 0.0
        """Added to every policy call (benchmarks: emulate an accelerator's latency on a CPU-only host)."""
        self._carry: tuple[list[Episode], list[dict]] | None = None
        # Pools auto-resets draw from (collect() sets the trainer's).
        self._task_pool = np.arange(len(env.prompts))
        self._init_pool = np.arange(env.num_init_states)

    # -------------------------------------------------------------- trainer API

    def collect(
        self, params, adapter, rng, task_pool, init_pool, global_step: int = 0
    ) -> tuple[Any, dict[str, Any]]:
        """`rollout_epochs` rollouts -> (flat transitions on the mesh, mean metrics); `global_step`
        sets the Flow-SDE noise level under policy.noise_anneal."""
        policy = self.cfg.policy
        self._noise_level = np.float32(policy.noise_level_at(global_step)) if policy.noise_anneal else None
        self._task_pool = multihost.process_local_rows(task_pool)
        self._init_pool = multihost.process_local_rows(init_pool)
        epochs, timing, finished = [], RolloutTiming(), []
        restarts = self.env.pool.restarts
        for epoch in range(self.cfg.rollout_epochs):
            key = jax.random.fold_in(rng, epoch)
            k_reset, k_roll = jax.random.split(key)
            if self.cfg.env.auto_reset and self._carry is not None:
                specs = None
            else:
                tasks, inits = (
                    multihost.process_local_rows(x) for x in self._reset_ids(k_reset, task_pool, init_pool)
                )
                lo = self.env.first_env
                specs = [self._spec(tasks[lo + i], inits[lo + i]) for i in range(self.env.local_envs)]
            record = self.play(params, adapter, k_roll, "train", specs)
            timing.add(record.timing)
            finished += record.finished
            trajectory, final_value = self._to_global(record)
            epochs.append(self._targets(trajectory, final_value))
        transitions = self._merge_epochs([t for t, _ in epochs])
        metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *[m for _, m in epochs])
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if self.cfg.env.auto_reset:
            metrics |= self._finished_metrics(finished)
        metrics["rollout/worker_restarts"] = float(self.env.pool.restarts - restarts)
        return transitions, metrics | self._timing_metrics(timing)

    def evaluate(
        self, params, adapter, task_ids, init_ids, rng, episode_ids=None
    ) -> tuple[dict, np.ndarray, np.ndarray]:
        """Fixed (task, initial state) episodes with the ODE sampler, in rounds of `num_envs`
        (`episode_ids`, the MJX program's per-episode noise index, is not used: the pool's
        environments draw by environment id).

        Returns (env/* metrics over the given episodes, this process's per-episode success, upright
        agentview frames [T, n, S, S, 3] of this process's first episodes for a video)."""
        tasks = multihost.process_local_rows(task_ids)
        inits = multihost.process_local_rows(init_ids)
        n, total, local = len(tasks), self.cfg.env.num_envs, self.env.local_envs
        rounds = -(-n // total)
        records, weights, frames = [], [], None
        # Evaluation borrows the training environments: carried-over episodes (auto-reset) are
        # replayed into them afterwards.
        saved_carry, self._carry = self._carry, None
        saved_episodes = self.env.pool.histories() if saved_carry is not None else None
        try:
            for r in range(rounds):
                index = [(r * total + self.env.first_env + i) % n for i in range(local)]
                specs = [self._spec(tasks[i], inits[i]) for i in index]
                base = r * total
                record = self.play(params, adapter, rng, "eval", specs, env_id_base=base)
                records.append(record)
                weights.append(
                    np.array([base + self.env.first_env + i < n for i in range(local)], np.float32)
                )
                if frames is None and "agentview_image" in record.env_obs:
                    frames = record.env_obs["agentview_image"][:, : min(4, local), ::-1, ::-1]
        finally:
            self._carry = saved_carry
            if saved_episodes is not None:
                self.env.pool.restore(saved_episodes)
        stacked = {
            "rewards": np.concatenate([r.rewards for r in records], axis=1),
            "dones": np.concatenate([r.dones for r in records], axis=1),
            "successes": np.concatenate([r.successes for r in records], axis=1),
        }
        trajectory = Trajectory(
            env_obs={},
            task_id=None,
            chain=None,
            denoise_index=None,
            log_probs=None,
            values=None,
            **{k: np.swapaxes(v, 0, 1) for k, v in stacked.items()},
        )
        global_traj, global_weights = multihost.host_local_batch_to_global(
            (trajectory, np.concatenate(weights)), self.mesh
        )
        metrics = self._metrics(global_traj, global_weights)
        success = np.any(stacked["successes"], axis=0)
        return metrics, success, frames

    # -------------------------------------------------------------- rollout

    def _spec(self, task_id, init_id) -> EpisodeSpec:
        return EpisodeSpec(self.env.name, int(task_id), int(init_id), self.cfg.seed)

    def play(
        self,
        params,
        adapter,
        rng,
        mode: str = "train",
        specs: list[EpisodeSpec] | None = None,
        env_id_base: int = 0,
    ) -> HostRecord:
        """One rollout of `chunk_steps` chunk steps of this process's environments (see module doc).

        `specs`: one fresh episode per local environment, or None to continue the episodes carried
        over from the previous rollout (auto-reset). `env_id_base` offsets the environments' global
        ids (evaluation rounds)."""
        if specs is None and self._carry is None:
            raise ValueError("no episodes to continue: pass specs for a fresh start")
        if adapter.rotate_images != self.env.images_upside_down:
            raise ValueError(
                f"the adapter's rotate_images={adapter.rotate_images} but the env's renders are "
                f"{'' if self.env.images_upside_down else 'not '}upside down: build it with "
                f"make_env_adapter(..., rotate_images={self.env.images_upside_down})"
            )
        timing, finished = RolloutTiming(), []
        cfg, pool = self.cfg, self.env.pool
        env_cfg = cfg.env
        auto_reset = env_cfg.auto_reset and mode == "train"
        ignore_terminations = env_cfg.ignore_terminations and mode == "train"
        T, L, b, S = self.chunk_steps, self.env.local_envs, self.stage_size, self.stages
        stage_slots = [list(range(s * b, (s + 1) * b)) for s in range(S)]
        env_ids = np.arange(L, dtype=np.int32) + self.env.first_env + env_id_base
        sample = self._sample[mode]
        t_start, busy0, step_busy0 = (
            time.perf_counter(),
            sum(pool.busy_seconds.values()),
            pool.busy_by_kind["step"],
        )

        pending: list[Any] = [None] * S
        if specs is None:
            episodes, obs = self._carry
        else:
            episodes, obs = [Episode(spec) for spec in specs], [None] * L
            pending = [pool.submit_reset(slots, [specs[i] for i in slots]) for slots in stage_slots]
        rec: HostRecord | None = None
        steps_done = 0

        def absorb(s: int, t: int) -> None:
            """Wait for stage s's chunk (or resets) and book its outcome at chunk step t - 1."""
            nonlocal steps_done
            t0 = time.perf_counter()
            results = pool.wait(pending[s])
            timing.env_wait += time.perf_counter() - t0
            pending[s] = None
            ended, truncated_obs = [], {}
            for slot, result in results.items():
                if t == 0 or not hasattr(result, "success"):  # a reset's observation
                    obs[slot] = result
                    continue
                ep = episodes[slot]
                reward, success_any, terminated = 0.0, False, False
                for success in result.success:
                    ep.steps += 1
                    success = bool(success)
                    reward += rollout_lib.control_step_reward(
                        float(success),
                        float(ep.prev_success),
                        float(ep.steps == 1),
                        coef=env_cfg.reward_coef,
                        rel=env_cfg.use_rel_reward,
                        step_penalty=env_cfg.use_step_penalty,
                    )
                    ep.prev_success = success
                    success_any |= success
                    terminated |= success and not ignore_terminations
                steps_done += len(result.success)
                truncated = ep.steps >= self.max_steps
                ep.chunks += 1
                ep.ret += reward
                ep.success_once |= success_any
                ep.success_now = ep.prev_success
                obs[slot] = result.obs
                rec.rewards[t - 1, slot] = reward
                rec.successes[t - 1, slot] = success_any
                if terminated or truncated:
                    ep.done = True
                    rec.dones[t - 1, slot] = True
                    ended.append(slot)
                    if (truncated and not terminated) or (terminated and cfg.adv.bootstrap_terminations):
                        truncated_obs[slot] = result.obs  # bootstrapped (bootstrap_type always: every done)
            if auto_reset and ended:
                if truncated_obs and cfg.adv.bootstrap_on_truncation:
                    # γ·V(final observation) for chunks cut by the time limit (RLinf's "standard" bootstrap)
                    final = [truncated_obs.get(i, obs[i]) for i in stage_slots[s]]
                    out = self._call(
                        sample,
                        params,
                        adapter,
                        final,
                        stage_slots[s],
                        episodes,
                        env_ids,
                        rng,
                        T + 1 + t,
                        timing,
                    )
                    values = multihost.process_local_rows(out.value)
                    for slot in truncated_obs:
                        rec.rewards[t - 1, slot] += cfg.adv.gamma * float(values[slot - stage_slots[s][0]])
                finished.extend(episodes[i] for i in ended)
                new = [self._auto_reset_spec(rng, t, env_ids[i]) for i in ended]
                for slot, spec in zip(ended, new, strict=True):
                    episodes[slot] = Episode(spec)
                t0 = time.perf_counter()
                for slot, o in pool.reset(ended, new).items():
                    obs[slot] = o
                timing.env_wait += time.perf_counter() - t0
            elif ended:
                finished.extend(episodes[i] for i in ended)

        final_value = np.zeros(L, np.float32)
        for t in range(T + 1):
            for s, slots in enumerate(stage_slots):
                if pending[s] is not None:
                    absorb(s, t)
                if t == T and mode == "eval":
                    continue
                if rec is None:
                    rec = self._new_record(T, L, obs)
                if t < T:
                    for slot in slots:
                        if episodes[slot].done and not auto_reset:  # idles, masked
                            rec.dones[t, slot] = True
                out = self._call(
                    sample, params, adapter, [obs[i] for i in slots], slots, episodes, env_ids, rng, t, timing
                )
                if t == T:
                    final_value[slots] = multihost.process_local_rows(out.value)
                    continue
                t0 = time.perf_counter()
                host = jax.tree.map(multihost.process_local_rows, out)
                timing.policy += time.perf_counter() - t0
                for key in obs[slots[0]]:
                    rec.env_obs[key][t, slots] = np.stack([obs[i][key] for i in slots])
                rec.task_id[t, slots] = [episodes[i].spec.task_id for i in slots]
                for key in rec.sample:
                    rec.sample[key][t, slots] = getattr(host, key)
                live = [i for i in slots if auto_reset or not episodes[i].done]
                if live:
                    chunks = [
                        host.env_actions[i - slots[0], : self.max_steps - episodes[i].steps] for i in live
                    ]
                    pending[s] = pool.submit_step(live, chunks)
        if auto_reset:
            self._carry = (episodes, obs)
        rec.final_value = final_value
        rec.finished = finished
        rec.timing = timing
        timing.wall += time.perf_counter() - t_start
        timing.env_busy += (sum(pool.busy_seconds.values()) - busy0) / max(1, pool.num_workers)
        timing.step_busy += pool.busy_by_kind["step"] - step_busy0
        timing.control_steps += steps_done
        return rec

    def _call(
        self, sample, params, adapter, stage_obs, slots, episodes, env_ids, rng, step, timing
    ) -> ChunkSample:
        """One compiled policy call on a stage (this process's rows assembled into the global batch)."""
        t0 = time.perf_counter()
        local = {
            "env_obs": {k: np.stack([o[k] for o in stage_obs]) for k in stage_obs[0]},
            "task_id": np.asarray([episodes[i].spec.task_id for i in slots], np.int32),
            "env_ids": env_ids[slots],
        }
        batch = multihost.host_local_batch_to_global(local, self.mesh)
        level = self._noise_level if sample is self._sample["train"] else None
        out = sample(
            params, adapter, batch["env_obs"], batch["task_id"], batch["env_ids"], rng, np.int32(step), level
        )
        jax.block_until_ready(out.env_actions)
        if self.policy_latency_s:
            time.sleep(self.policy_latency_s)
        timing.policy += time.perf_counter() - t0
        return out

    def _new_record(self, T: int, L: int, obs: list[dict]) -> HostRecord:
        probe = obs[0]
        k1, h, a = self.cfg.policy.num_steps + 1, self.cfg.model.action_horizon, self.cfg.model.action_dim
        lp_shape = {
            "chunk_level": (),
            "action_level": (self.cfg.policy.action_chunk,),
            "token_level": (self.cfg.policy.action_chunk, self.cfg.policy.action_env_dim),
        }[self.cfg.policy.logprob_type]
        return HostRecord(
            env_obs={k: np.zeros((T, L, *v.shape), v.dtype) for k, v in probe.items()},
            task_id=np.zeros((T, L), np.int32),
            sample={
                "chain": np.zeros((T, L, k1, h, a), np.float32),
                "denoise_index": np.zeros((T, L), np.int32),
                "log_probs": np.zeros((T, L, *lp_shape), np.float32),
                "value": np.zeros((T, L), np.float32),
            },
            rewards=np.zeros((T, L), np.float32),
            dones=np.zeros((T, L), bool),
            successes=np.zeros((T, L), bool),
            final_value=np.zeros(L, np.float32),
        )

    def _auto_reset_spec(self, rng, t: int, env_id: int) -> EpisodeSpec:
        """A fresh (task, initial state) for an environment that auto-resets (its own draw)."""
        seed = [int(x) for x in np.asarray(jax.random.key_data(rng)).ravel()] + [t, int(env_id)]
        draw = np.random.default_rng(seed)
        return self._spec(draw.choice(self._task_pool), draw.choice(self._init_pool))

    def _to_global(self, rec: HostRecord) -> tuple[Trajectory, Array]:
        """Batch-major global arrays of a record (each process contributes its rows)."""
        trajectory = Trajectory(
            env_obs=rec.env_obs,
            task_id=rec.task_id,
            chain=rec.sample["chain"],
            denoise_index=rec.sample["denoise_index"],
            log_probs=rec.sample["log_probs"],
            values=rec.sample["value"],
            rewards=rec.rewards,
            dones=rec.dones,
            successes=rec.successes,
            noise_level=None
            if self._noise_level is None
            else np.full(rec.rewards.shape, self._noise_level, np.float32),
        )
        batch_major = jax.tree.map(lambda x: np.swapaxes(x, 0, 1), trajectory)
        return multihost.host_local_batch_to_global((batch_major, rec.final_value), self.mesh)

    # -------------------------------------------------------------- metrics

    def _finished_metrics(self, finished: list[Episode]) -> dict[str, float]:
        """env/* over the episodes that ended in this step's rollouts (auto-reset), all processes."""
        stats = np.array(
            [[e.success_once, e.ret, e.steps, e.success_now] for e in finished] or np.zeros((0, 4)),
            np.float64,
        )
        sums = np.concatenate([stats.sum(axis=0), [len(finished)]])
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            sums = np.asarray(multihost_utils.process_allgather(sums)).sum(axis=0)
        count = sums[-1]
        if count == 0:
            return {}
        names = ("env/success_once", "env/return", "env/episode_len", "env/success_at_end")
        return {name: float(sums[i] / count) for i, name in enumerate(names)} | {"env/episodes": float(count)}

    def _timing_metrics(self, timing: RolloutTiming) -> dict[str, float]:
        """Where the rollout time went; `rollout/pipeline_overlap` = the share of the policy's time that
        the workers spent stepping (1: hidden behind the simulators, 0: the two took turns)."""
        overlap = max(0.0, timing.env_busy + timing.policy - timing.wall)
        return {
            "time/rollout_policy": timing.policy,
            "time/rollout_env_wait": timing.env_wait,
            "time/rollout_env_busy": timing.env_busy,
            "rollout/pipeline_overlap": min(1.0, overlap / timing.policy) if timing.policy else 0.0,
            "rollout/env_steps_per_s": timing.control_steps / timing.wall if timing.wall else 0.0,
        }
