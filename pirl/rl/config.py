"""`RLConfig`: everything one PPO / GRPO fine-tuning run needs, as one frozen, tyro-readable tree.

Batch vocabulary (RLinf's): one *global step* = `rollout_epochs` rollouts of `env.num_envs`
environments for `chunk_steps` chunk steps each (one chunk step = one policy call executing
`policy.action_chunk` control steps), then `update_epochs` passes over the collected transitions in
shuffled minibatches of `global_batch_size` transitions (one optimizer step each), each minibatch
computed in micro-batches of `micro_batch_size`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from pirl.distributed.mesh import MeshConfig
from pirl.errors import UserError, check_at_least
from pirl.models.config import Pi0Config
from pirl.policies.config import FlowPolicyConfig
from pirl.rl.losses import PPOLossConfig
from pirl.rl.optim import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Which task suite to train on, how many copies, and how episodes run."""

    name: str = "toy_spatial"
    """Suite. backend mjx: toy_spatial, toy_object, toy_goal, toy_10, maniskill_put_on_plate, or LIBERO's
    own tasks rebuilt in MJX (libero_spatial, libero_object, libero_goal, libero_10; several tasks in a run
    only where their scenes match: all of libero_spatial / libero_goal, one of libero_object / libero_10);
    backend libero: libero_spatial, libero_object, libero_goal, libero_10 or libero_90."""
    backend: Literal["mjx", "libero"] = "mjx"
    """'mjx': pirl's scenes, simulated and rendered on the devices; 'libero': the real LIBERO in host
    worker processes (the `libero` extra) feeding the on-device policy."""
    num_envs: int = 64
    """Environments stepped in parallel (sharded over the mesh's batch axes and the processes)."""
    image_size: int = 224
    """Rendered camera resolution (square); resized on device if it differs from the model's."""
    max_episode_steps: int | None = None
    """Control steps per episode; None = the suite's own limit (240/240/320/480/80)."""
    task_ids: tuple[int, ...] = ()
    """Tasks to train on (empty = every task of the suite)."""
    init_ids: tuple[int, ...] = ()
    """Fixed initial states (0..49) to train and evaluate on (empty = all 50)."""
    auto_reset: bool = False
    """RLinf's auto_reset: an environment resets as soon as its episode ends and carries on from
    one rollout to the next (every step is trained on); False: each rollout starts fresh episodes
    and environments whose episode ended idle, masked out. The carried episodes are not part of a
    checkpoint: a resumed run starts fresh ones."""
    ignore_terminations: bool = False
    """RLinf's ignore_terminations: success does not end an episode; episodes run to
    max_episode_steps (the success reward is paid as a difference, so it can be taken back)."""
    reward_coef: float = 1.0
    """Success reward (RLinf's reward_coef; its LIBERO-10 recipe uses 5)."""
    use_rel_reward: bool = True
    """RLinf's use_rel_reward: pay each control step's reward as the difference to the previous
    step's (success paid once, the step penalty only on the first step); False: the absolute reward."""
    use_step_penalty: bool = False
    """RLinf's use_step_penalty: −1 per control step (see `use_rel_reward`)."""
    num_workers: int = 0
    """libero: simulator processes on each host (0 = one per CPU core, at most one per environment)."""
    pipeline_stage_num: int = 1
    """libero: split each host's environments into this many stages; the device samples actions for
    one stage while the CPUs step the others (RLinf's rollout.pipeline_stage_num)."""
    libero_look: Literal["primitives", "meshes"] = "meshes"
    """LIBERO's tasks in MJX: camera images of fitted primitives or of LIBERO's meshes and textures
    (`LiberoEnvConfig.look`)."""
    libero_render_backend: Literal["jax", "warp"] = "jax"
    """LIBERO's tasks in MJX: who draws the camera images, pirl's JAX renderer or MJX's MuJoCo Warp one
    (NVIDIA GPU and the `warp` extra; `LiberoEnvConfig.render_backend`)."""
    settle_steps: int = 15
    """libero, and LIBERO's tasks in MJX: no-op steps with the gripper open after each reset while objects
    settle (RLinf: 15)."""
    sample_micro_batch: int | None = None
    """libero: environments per device per policy forward within a sampling call (None = all of a
    device's rows at once). A size that divides every stage's per-device rows makes trajectories
    bit-identical across pipeline_stage_num."""
    worker_timeout_s: float = 300.0
    """libero: seconds a worker may take per environment of a request before it is restarted."""


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become advantages."""

    adv_type: Literal["gae", "grpo"] = "gae"
    """'gae' (PPO with a critic) or 'grpo' (group-relative scores, no critic)."""
    gamma: float = 0.99
    """Discount per chunk step."""
    gae_lambda: float = 0.95
    """GAE λ per chunk step."""
    group_size: int = 8
    """GRPO: environments per group that share one reset state."""
    filter_rewards: bool = False
    """GRPO: drop groups whose mean score lies outside `filter_bounds`."""
    filter_bounds: tuple[float, float] = (0.1, 0.9)
    """GRPO: (low, high) bounds of the group mean score kept by `filter_rewards`."""
    normalize_advantages: bool = True
    """Normalise advantages over the valid transitions of a whole global step (all rollout epochs)."""
    bootstrap_on_truncation: bool = True
    """Bootstrap an episode cut by the time limit with γ·V(its final obs) (never a termination).
    RLinf bootstraps only with env.auto_reset, so its recipes without auto-reset correspond to False."""
    bootstrap_terminations: bool = False
    """RLinf's bootstrap_type: always: with env.auto_reset, chunks that end by success also get
    γ·V(final obs) added to their reward, like truncated ones (False: RLinf's 'standard')."""


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """Optional warm start by supervised flow matching on the scripted expert's demonstrations.

    Used by the CPU demo, which starts from a randomly initialised tiny π0; real presets start from
    an SFT checkpoint instead (`init_checkpoint`)."""

    episodes_per_task: int = 0
    """Expert episodes to record per task and initial state batch (0 disables the warm start)."""
    sft_steps: int = 0
    """Optimizer steps of flow-matching SFT on the recorded demonstrations."""
    batch_size: int = 32
    """SFT batch size (transitions)."""
    lr: float = 1e-3
    """SFT AdamW learning rate (cosine-decayed after a short warm-up)."""
    action_noise: float = 0.0
    """Std of noise on the executed arm actions; labels stay the expert's (DART: recovery demos)."""


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One PPO / GRPO run: model, flow policy, environments, algorithm, optimizer, mesh, logging."""

    name: str = "rl"
    """Run name; logs and checkpoints go to `<run_root>/<name>`."""
    model: Pi0Config = Pi0Config()
    """The π0 / π0.5 model."""
    policy: FlowPolicyConfig = FlowPolicyConfig()
    """Stochastic flow policy (Flow-SDE / Flow-Noise), critic placement and freezing."""
    env: EnvSpec = EnvSpec()
    """Training environments."""
    adv: AdvantageConfig = AdvantageConfig()
    """Advantage estimation."""
    loss: PPOLossConfig = PPOLossConfig()
    """PPO loss coefficients."""
    optim: OptimizerConfig = OptimizerConfig()
    """AdamW settings."""
    mesh: MeshConfig = MeshConfig()
    """Device mesh; the environment batch and minibatches are split over its axes."""
    warm_start: WarmStartConfig = WarmStartConfig()
    """Optional SFT warm start on expert demonstrations (CPU demo)."""
    rollout_epochs: int = 8
    """Rollouts of all environments collected per global step."""
    chunk_steps: int | None = None
    """Chunk steps per rollout; None = ceil(max_episode_steps / action_chunk)."""
    update_epochs: int = 4
    """Passes over the collected transitions per global step."""
    global_batch_size: int = 2048
    """Transitions per minibatch (one optimizer step each)."""
    micro_batch_size: int | None = None
    """Transitions per gradient micro-batch (None = the whole minibatch at once)."""
    total_steps: int = 1000
    """Global steps to train."""
    init_checkpoint: str | None = None
    """SFT checkpoint to start from: pirl or openpi orbax dir, or a dir with model.safetensors."""
    random_init: bool = False
    """Start from random weights instead of a checkpoint (tests and the CPU demo only)."""
    tokenizer_path: str | None = None
    """PaliGemma sentencepiece model; None = look inside the checkpoint's assets."""
    recompute_logprobs: bool = False
    """RLinf's recompute_logprobs: rescore the rollout's log-probs under the same params before the
    update (pirl's rollout and update share params and precision, so it only removes the sampling
    path's numeric differences, at the cost of one extra forward pass over the batch)."""
    episode_loss_weighting: bool = True
    """RLinf's loss_agg_func override: without env.auto_reset and env.ignore_terminations, weight each
    sample's policy and value loss by max_episode_steps / its episode's length and take the mean over
    all samples (every episode weighs the same); False: plain masked means."""
    data_config: str | None = None
    """Data config of the policy's input / output transforms (pi0_libero: z-score, delta actions on
    the first 6 dims; pi05_libero: quantile, absolute). None = the one saved with --init-checkpoint,
    else `default_data_config` of the model and suite. Must agree with a saved one."""
    norm_stats_path: str | None = None
    """Directory holding norm_stats.json; None = look inside the checkpoint's assets."""
    eval_interval: int = 10
    """Evaluate on the fixed initial states every this many global steps (0 = never)."""
    eval_episodes: int = 50
    """Episodes per evaluation (fixed (task, init state) pairs, pure ODE sampling)."""
    video_interval: int = 10
    """Write a rollout video every this many global steps (0 = never)."""
    save_interval: int = 10
    """Save a checkpoint every this many global steps (0 = only at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk."""
    run_root: str = "runs"
    """Parent directory of the run directory."""
    resume: bool = False
    """Continue from the latest checkpoint of the run directory."""
    seed: int = 0
    """Seed of parameter init, environments and sampling."""
    compilation_cache_dir: str | None = "~/.cache/pirl/xla"
    """Persistent XLA compilation cache (a re-run or --resume skips compiling); None = off."""

    def __post_init__(self):
        self._check_counts()
        self._check_env()
        if self.rollout_epochs < 1 or self.update_epochs < 1 or self.total_steps < 0:
            raise ValueError("rollout_epochs and update_epochs must be >= 1 and total_steps >= 0")
        if self.adv.adv_type not in ("gae", "grpo"):
            raise ValueError(f"adv.adv_type must be 'gae' or 'grpo', got {self.adv.adv_type!r}")
        if self.adv.adv_type == "gae" and not self.policy.add_value_head:
            raise ValueError(
                "adv.adv_type='gae' needs a critic: set policy.add_value_head=True (or use grpo)"
            )
        if self.adv.adv_type == "grpo" and self.env.num_envs % self.adv.group_size:
            raise ValueError(
                f"env.num_envs={self.env.num_envs} must be a multiple of adv.group_size={self.adv.group_size} "
                "(each GRPO group shares one reset state)"
            )
        if self.policy.action_chunk > self.model.action_horizon:
            raise ValueError(
                f"policy.action_chunk={self.policy.action_chunk} exceeds model.action_horizon={self.model.action_horizon}"
            )
        micro = self.micro_batch_size
        if micro is not None and (micro < 1 or self.global_batch_size % micro):
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a multiple of micro_batch_size={micro}"
            )
        if self.transitions_per_step % self.global_batch_size:
            raise ValueError(
                f"a global step collects rollout_epochs*num_envs*chunk_steps = {self.rollout_epochs}*"
                f"{self.env.num_envs}*{self.resolved_chunk_steps} = {self.transitions_per_step} transitions, "
                f"which global_batch_size={self.global_batch_size} must divide"
            )

    def _check_counts(self) -> None:
        """Every count and size of the config is in range, before any arithmetic divides by one
        (the policy and model configs check their own)."""
        env, ws = self.env, self.warm_start
        check_at_least(
            {
                "env.num_envs": (env.num_envs, 1),
                "env.image_size": (env.image_size, 1),
                "env.max_episode_steps": (env.max_episode_steps, 1),
                "env.num_workers": (env.num_workers, 0),
                "env.pipeline_stage_num": (env.pipeline_stage_num, 1),
                "env.settle_steps": (env.settle_steps, 0),
                "env.sample_micro_batch": (env.sample_micro_batch, 1),
                "adv.group_size": (self.adv.group_size, 1),
                "warm_start.episodes_per_task": (ws.episodes_per_task, 0),
                "warm_start.sft_steps": (ws.sft_steps, 0),
                "warm_start.batch_size": (ws.batch_size, 1),
                "warm_start.action_noise": (ws.action_noise, 0.0),
                "rollout_epochs": (self.rollout_epochs, 1),
                "chunk_steps": (self.chunk_steps, 1),
                "update_epochs": (self.update_epochs, 1),
                "global_batch_size": (self.global_batch_size, 1),
                "micro_batch_size": (self.micro_batch_size, 1),
                "total_steps": (self.total_steps, 0),
                "eval_interval": (self.eval_interval, 0),
                "eval_episodes": (self.eval_episodes, 1 if self.eval_interval else 0),
                "video_interval": (self.video_interval, 0),
                "save_interval": (self.save_interval, 0),
                "keep_checkpoints": (self.keep_checkpoints, 1),
            }
        )
        if any(i < 0 for i in env.task_ids + env.init_ids):
            raise UserError(f"env.task_ids {env.task_ids} and env.init_ids {env.init_ids} must be >= 0")
        if ws.sft_steps > 0 and ws.episodes_per_task == 0:
            raise UserError(
                f"warm_start.sft_steps={ws.sft_steps} needs demonstrations: set --warm-start.episodes-per-task "
                "above 0, or --warm-start.sft-steps 0"
            )

    def _check_env(self) -> None:
        env = self.env
        if env.backend not in ("mjx", "libero"):
            raise ValueError(f"env.backend must be 'mjx' or 'libero', got {env.backend!r}")
        if env.auto_reset and self.adv.adv_type == "grpo":
            raise ValueError(
                "GRPO groups share one reset state: use env.auto_reset=False with adv.adv_type='grpo'"
            )
        if self.adv.bootstrap_terminations and not (env.auto_reset and self.adv.bootstrap_on_truncation):
            raise ValueError(
                "adv.bootstrap_terminations (RLinf's bootstrap_type: always) acts only with env.auto_reset=True "
                "and adv.bootstrap_on_truncation=True; set it False otherwise"
            )
        if env.backend == "mjx":
            return  # (several faithful tasks in one MJX env: `make_libero_env` checks their scenes match)
        from pirl.envs.libero_pool import EPISODE_LIMITS

        if env.name not in EPISODE_LIMITS["rl"]:
            raise ValueError(
                f"env.name={env.name!r} is not a LIBERO suite; with --env.backend libero use one of "
                f"{sorted(EPISODE_LIMITS['rl'])}"
            )
        stages = env.pipeline_stage_num
        if stages < 1 or env.num_envs % stages:
            raise ValueError(
                f"env.num_envs={env.num_envs} must be a positive multiple of env.pipeline_stage_num={stages}"
            )
        micro = env.sample_micro_batch
        if micro is not None and (micro < 1 or (env.num_envs // stages) % micro):
            raise ValueError(
                f"env.sample_micro_batch={micro} must divide the stage size num_envs/pipeline_stage_num = "
                f"{env.num_envs // stages} (and the rows each device holds of it)"
            )
        if env.num_workers < 0 or env.settle_steps < 0 or env.worker_timeout_s <= 0:
            raise ValueError("env.num_workers and env.settle_steps must be >= 0 and env.worker_timeout_s > 0")
        if self.warm_start.sft_steps > 0:
            raise ValueError(
                "the expert warm start records demos in the MJX scenes; with --env.backend libero start from "
                "--init-checkpoint (warm_start.sft_steps=0)"
            )

    @property
    def episode_weights_active(self) -> bool:
        """RLinf's per-episode loss weighting is on (`episode_loss_weighting`, episodes neither
        auto-reset nor ignore terminations)."""
        return self.episode_loss_weighting and not (self.env.auto_reset or self.env.ignore_terminations)

    @property
    def max_episode_steps(self) -> int:
        """Control steps per episode (the suite default unless overridden)."""
        if self.env.max_episode_steps is not None:
            return self.env.max_episode_steps
        from pirl.envs.libero_pool import EPISODE_LIMITS

        if self.env.backend == "libero" or self.env.name in EPISODE_LIMITS["rl"]:
            # the same episodes on both backends for LIBERO's tasks (RLinf's limits)
            return EPISODE_LIMITS["rl"][self.env.name]
        from pirl.envs.tasks import get_suite

        return get_suite(self.env.name).max_steps

    @property
    def resolved_chunk_steps(self) -> int:
        """Chunk steps per rollout."""
        if self.chunk_steps is not None:
            return self.chunk_steps
        return math.ceil(self.max_episode_steps / self.policy.action_chunk)

    @property
    def transitions_per_step(self) -> int:
        """Transitions collected per global step."""
        return self.rollout_epochs * self.env.num_envs * self.resolved_chunk_steps

    @property
    def default_data_config(self) -> str:
        """pi0_libero / pi05_libero (π0 / π0.5), pi0_maniskill / pi05_maniskill for the put-on-plate suite."""
        robot = "maniskill" if self.env.name.startswith("maniskill") else "libero"
        return f"{'pi05' if self.model.pi05 else 'pi0'}_{robot}"

    @property
    def run_dir(self) -> str:
        return f"{self.run_root}/{self.name}"
