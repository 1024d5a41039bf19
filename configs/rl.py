"""RL fine-tuning presets (PPO / GRPO) with RLinf's hyper-parameters (see shared rl-algorithms doc).

Every real preset needs the SFT checkpoint the user fine-tunes:
`python -m pirl.train pi0_libero_ppo --init-checkpoint /path/to/ckpt` (a pirl run or SFT checkpoint,
an openpi orbax checkpoint directory, or a directory holding openpi-PyTorch `model.safetensors`);
its assets must hold the tokenizer and norm stats, or pass `--tokenizer-path` / `--norm-stats-path`.
The data config (`RLConfig.data_config`; default pi0_libero for π0, pi05_libero for π0.5) decides
the policy's input and output transforms; a pirl checkpoint's own one wins.
`pi0_demo_cpu` is the exception: a tiny π0 that trains from scratch on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

from pirl.models.config import Pi0Config
from pirl.policies.config import FlowPolicyConfig
from pirl.rl.config import AdvantageConfig, EnvSpec, RLConfig, WarmStartConfig
from pirl.rl.losses import PPOLossConfig
from pirl.rl.optim import OptimizerConfig
from pirl.rl.rlinf_config import OPENPI_MODELS

PI0 = Pi0Config()
PI05_LIBERO = OPENPI_MODELS["pi05_libero"]

# Values every RLinf openpi recipe shares (its examples/embodiment/config/*.yaml; docs/rlinf_presets.md
# has the full table). RLinf's LIBERO env renders 256x256 cameras, never bootstraps without auto-reset,
# and runs with eval off (val_check_interval: -1) and a checkpoint every 40 steps.
RLINF_OPTIM = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, critic_warmup_steps=0)
RLINF_LIBERO_RUN = dict(total_steps=1000, save_interval=40, eval_interval=0, eval_episodes=500, seed=42)


def _libero_env(name: str, max_steps: int, **overrides) -> EnvSpec:
    """RLinf's LIBERO training env: the real LIBERO, fresh episodes each rollout, terminate on success."""
    fields = dict(
        name=name,
        backend="libero",
        num_envs=64,
        image_size=256,
        max_episode_steps=max_steps,
        auto_reset=False,
        ignore_terminations=False,
        reward_coef=1.0,
        use_rel_reward=True,
        use_step_penalty=False,
        pipeline_stage_num=1,
    )
    fields.update(overrides)
    return EnvSpec(**fields)


def pi0_libero_ppo() -> RLConfig:
    """π0, LIBERO-Spatial, PPO: Flow-SDE (one stochastic step), GAE, critic on the expert (RLinf's
    libero_spatial_ppo_openpi)."""
    return RLConfig(
        name="pi0_libero_ppo",
        model=PI0,
        policy=FlowPolicyConfig(
            noise_method="flow_sde",
            noise_level=0.5,
            num_steps=4,
            action_chunk=5,
            chunk_critic_input=False,
            detach_critic_input=True,
        ),
        env=_libero_env("libero_spatial", 240),
        adv=AdvantageConfig(adv_type="gae", gamma=0.99, gae_lambda=0.95, bootstrap_on_truncation=False),
        loss=PPOLossConfig(entropy_bonus=0.0),
        optim=OptimizerConfig(lr=5e-6, value_lr=1e-4, clip_grad_norm=1.0, **RLINF_OPTIM),
        rollout_epochs=8,
        update_epochs=4,
        global_batch_size=2048,
        micro_batch_size=32,
        **RLINF_LIBERO_RUN,
    )


def pi0_libero_grpo() -> RLConfig:
    """π0, LIBERO-10 (long), GRPO with groups of 8 sharing a reset state, no critic (RLinf's
    libero_10_grpo_openpi)."""
    return RLConfig(
        name="pi0_libero_grpo",
        model=PI0,
        policy=FlowPolicyConfig(
            num_steps=4,
            action_chunk=10,
            add_value_head=False,
            chunk_critic_input=False,
            detach_critic_input=False,
        ),
        # reward_coef: the recipe interpolates ${algorithm.reward_coef} = 1.0 over env/libero_10's 5.0
        env=_libero_env("libero_10", 480),
        adv=AdvantageConfig(
            adv_type="grpo",
            group_size=8,
            filter_rewards=True,
            filter_bounds=(0.1, 0.9),
            bootstrap_on_truncation=False,
        ),
        loss=PPOLossConfig(entropy_bonus=0.0),
        optim=OptimizerConfig(lr=5e-6, value_lr=1e-4, clip_grad_norm=2.0, **RLINF_OPTIM),
        rollout_epochs=8,
        update_epochs=2,
        global_batch_size=2048,
        micro_batch_size=32,
        **RLINF_LIBERO_RUN,
    )


def pi05_libero_ppo() -> RLConfig:
    """π0.5, LIBERO-Spatial, PPO with the critic after the VLM (RLinf's libero_spatial_ppo_openpi_pi05)."""
    return RLConfig(
        name="pi05_libero_ppo",
        model=PI05_LIBERO,
        policy=FlowPolicyConfig.pi05(
            num_steps=3,
            action_chunk=5,
            value_vlm_mode="mean_token",
            chunk_critic_input=False,
            detach_critic_input=False,
        ),
        env=_libero_env("libero_spatial", 240),
        adv=AdvantageConfig(adv_type="gae", gamma=0.99, gae_lambda=0.95, bootstrap_on_truncation=False),
        loss=PPOLossConfig(entropy_bonus=0.0),
        optim=OptimizerConfig(lr=5e-6, value_lr=1e-4, clip_grad_norm=1.0, **RLINF_OPTIM),
        rollout_epochs=8,
        update_epochs=1,
        global_batch_size=2048,
        micro_batch_size=32,
        **RLINF_LIBERO_RUN,
    )


def pi05_libero_grpo() -> RLConfig:
    """π0.5, LIBERO-10, GRPO (G = 8), no critic (RLinf's libero_10_grpo_openpi_pi05)."""
    return RLConfig(
        name="pi05_libero_grpo",
        model=PI05_LIBERO,
        # model/pi0_5.yaml's value_after_vlm (False) stands; without a critic it has no effect.
        policy=FlowPolicyConfig.pi05(
            num_steps=4,
            action_chunk=10,
            add_value_head=False,
            value_after_vlm=False,
            chunk_critic_input=False,
            detach_critic_input=False,
        ),
        env=_libero_env("libero_10", 480),
        adv=AdvantageConfig(
            adv_type="grpo",
            group_size=8,
            filter_rewards=True,
            filter_bounds=(0.1, 0.9),
            bootstrap_on_truncation=False,
        ),
        loss=PPOLossConfig(entropy_bonus=0.0),
        optim=OptimizerConfig(lr=5e-6, value_lr=1e-4, clip_grad_norm=1.0, **RLINF_OPTIM),
        rollout_epochs=8,
        update_epochs=4,
        global_batch_size=2048,
        micro_batch_size=32,
        **RLINF_LIBERO_RUN,
    )


def pi0_maniskill_ppo() -> RLConfig:
    """π0, ManiSkill-style put-on-plate (MJX), PPO with Flow-Noise (joint log-prob) and entropy 0.005
    (RLinf's maniskill_ppo_openpi: environments auto-reset and episodes carry over between rollouts)."""
    return RLConfig(
        name="pi0_maniskill_ppo",
        model=Pi0Config(action_horizon=8),
        policy=FlowPolicyConfig.flow_noise(
            num_steps=4, action_chunk=5, chunk_critic_input=False, detach_critic_input=True
        ),
        env=EnvSpec(
            name="maniskill_put_on_plate",
            num_envs=320,
            image_size=224,
            max_episode_steps=80,
            reward_coef=1.0,
            use_rel_reward=True,
            auto_reset=True,
            ignore_terminations=False,
        ),
        # bootstrap_type: always: with auto-reset every done chunk gets γ·V(final observation).
        adv=AdvantageConfig(
            adv_type="gae",
            gamma=0.99,
            gae_lambda=0.95,
            filter_bounds=(0.0, 1.0),
            bootstrap_on_truncation=True,
            bootstrap_terminations=True,
        ),
        loss=PPOLossConfig(entropy_bonus=0.005),
        optim=OptimizerConfig(lr=7.91e-6, value_lr=1.55e-4, clip_grad_norm=1.0, **RLINF_OPTIM),
        rollout_epochs=1,
        update_epochs=4,
        global_batch_size=5120,
        micro_batch_size=32,
        total_steps=1000,
        save_interval=50,
        eval_interval=10,
        eval_episodes=320,
        seed=0,
    )


def pi0_demo_cpu() -> RLConfig:
    """CPU demo: tiny π0 from scratch, warm-started by SFT on expert demos, then PPO (2-core CPU)."""
    return RLConfig(
        name="pi0_demo_cpu",
        # 8 action dims (7 + padding to the 8-D state) and a 5-step horizon: nothing to waste capacity on.
        model=Pi0Config.tiny(
            image_keys=("base_0_rgb", "left_wrist_0_rgb"),
            image_resolution=(56, 56),  # 16 SigLIP tokens per camera: enough to see the grasp
            max_token_len=32,
            action_dim=8,
            action_horizon=5,
        ),
        policy=FlowPolicyConfig(num_steps=4, action_chunk=5, value_head_hidden=(64, 64), noise_level=0.5),
        # One spatial task, 4 of its fixed initial states, short episodes: the expert solves it in
        # about 40 control steps. 32 environments (8 per initial state): with 16 the PPO gradient was
        # too noisy and evaluation success wandered after 10-20 steps (measured 2026-12-03).
        env=EnvSpec(
            name="toy_spatial",
            num_envs=32,
            image_size=56,
            max_episode_steps=50,
            task_ids=(0,),
            init_ids=(0, 1, 2, 3),
        ),
        # No bootstrap at the 50-step limit: the state has no clock, so the critic cannot see the end
        # coming; bootstrapping paid a timed-out (failed) episode γ·V ≈ 0.9, almost a success (RLinf
        # bootstraps only with auto_reset).
        adv=AdvantageConfig(adv_type="gae", bootstrap_on_truncation=False),
        optim=OptimizerConfig(lr=5e-5, value_lr=1e-3, clip_grad_norm=1.0),
        # 4 noisy (DART) expert episodes per initial state; labels stay the expert's clean actions.
        # 500 SFT steps leave room for PPO (measured: 800 started at 0.91 eval success, 400 at 0.34
        # with a flat rollout curve, 500 at 0.41 rising to 0.6-0.8 within 10-30 PPO steps). Tried
        # without a better curve: critic warm-up 5 steps, lr 3e-5 (also with 4 update epochs), GAE
        # λ 1, value lr 3e-3; lr 1e-4 wandered and 2e-4 collapsed (0.53 -> 0.19-0.34).
        warm_start=WarmStartConfig(
            episodes_per_task=16, sft_steps=500, batch_size=32, lr=1e-3, action_noise=0.05
        ),
        rollout_epochs=1,
        update_epochs=2,
        global_batch_size=160,  # 2 minibatches of the 320 transitions per global step
        total_steps=60,
        random_init=True,
        data_config="pi0_toy",
        # 32 evaluation episodes (8 per initial state, fixed noise): a less noisy curve than 8.
        eval_interval=10,
        eval_episodes=32,
        video_interval=10,
        save_interval=10,
        # Tuned before RLinf's per-episode loss weighting existed; keeps plain masked means.
        episode_loss_weighting=False,
    )


def presets() -> dict[str, tuple[str, Any]]:
    """name -> (description, config) of every RL preset."""
    makers = [
        pi0_libero_ppo,
        pi0_libero_grpo,
        pi05_libero_ppo,
        pi05_libero_grpo,
        pi0_maniskill_ppo,
        pi0_demo_cpu,
    ]
    return {m.__name__: ((m.__doc__ or "").strip().splitlines()[0], m()) for m in makers}
