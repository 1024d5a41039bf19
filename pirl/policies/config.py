"""`FlowPolicyConfig`: how a flow-matching VLA is turned into a stochastic RL policy.

Defaults follow RLinf's π0 LIBERO PPO recipe (Flow-SDE, noise level 0.5, 4 denoise steps, one
stochastic step per rollout, chunk-level log-probs, expert critic with a detached input, VLM
frozen). `FlowPolicyConfig.pi05()` and `FlowPolicyConfig.flow_noise()` give the other presets.
"""

import dataclasses
from typing import Literal

from pirl.errors import UserError

NoiseMethod = Literal["flow_sde", "flow_noise"]
LogprobType = Literal["token_level", "action_level", "chunk_level"]

ValueVlmMode = Literal["mean_token", "first_token", "last_token"]

_NOISE_METHODS = ("flow_sde", "flow_noise")
_VALUE_VLM_MODES = ("mean_token", "first_token", "last_token")
_LOGPROB_TYPES = ("token_level", "action_level", "chunk_level")


@dataclasses.dataclass(frozen=True)
class FlowPolicyConfig:
    """Stochastic denoising, log-probability, critic and freezing options of a flow policy."""

    noise_method: NoiseMethod = "flow_sde"
    """'flow_sde': fixed SDE noise schedule; 'flow_noise': a learned noise head predicts the std."""
    noise_level: float = 0.5
    """Flow-SDE noise scale a in sigma_i = a * sqrt(t_i / (1 - t_i))."""
    num_steps: int = 4
    """Denoise steps K of the action expert per action chunk."""
    joint_logprob: bool = False
    """True: every step is stochastic and scored (mean over K+1 terms); False: one random step k."""
    logprob_type: LogprobType = "chunk_level"
    """Ratio granularity: per element (token_level), per action step (action_level) or per chunk."""
    action_chunk: int = 5
    """Leading action steps of the horizon that the environment executes (and that are scored)."""
    action_env_dim: int = 7
    """Leading action dims the environment uses (and that are scored); the rest is padding."""
    noise_logvar_range: tuple[float, float] = (0.08, 0.16)
    """Flow-Noise: (min, max) std the noise head's output is squashed into."""
    noise_head_hidden: tuple[int, ...] = (128, 64)
    """Flow-Noise: hidden widths of the tanh noise-head MLP (expert width -> ... -> action_dim)."""
    add_value_head: bool = True
    """Attach a critic (value head) for PPO; False for GRPO (value outputs are then zeros)."""
    value_after_vlm: bool = False
    """Critic input: False = action-expert suffix output (π0); True = VLM prefix output (π0.5)."""
    value_vlm_mode: ValueVlmMode = "mean_token"
    """VLM critic input (RLinf's value_vlm_mode): mean over the valid prefix tokens, or the prefix's
    first / last position."""
    value_head_hidden: tuple[int, ...] = (512, 256, 128)
    """ReLU hidden widths of the value head MLP ((1024, 512, 256) for π0.5)."""
    chunk_critic_input: bool = True
    """Expert critic averages only the first action_chunk action tokens (False: all H tokens)."""
    detach_critic_input: bool = True
    """Stop the value loss's gradient at the expert's output (expert critic only)."""
    train_expert_only: bool = True
    """Freeze the whole VLM (SigLIP, embedder, PaliGemma LLM weights); train the expert and heads."""
    freeze_vision_with_lora: bool = True
    """With LoRA on the LLM, freeze SigLIP as well (openpi's own LoRA filter leaves it trainable)."""

    def __post_init__(self):
        object.__setattr__(self, "noise_logvar_range", tuple(float(x) for x in self.noise_logvar_range))
        object.__setattr__(self, "noise_head_hidden", tuple(int(x) for x in self.noise_head_hidden))
        object.__setattr__(self, "value_head_hidden", tuple(int(x) for x in self.value_head_hidden))
        if self.noise_method not in _NOISE_METHODS:
            raise ValueError(f"noise_method must be one of {_NOISE_METHODS}, got {self.noise_method!r}")
        if self.logprob_type not in _LOGPROB_TYPES:
            raise ValueError(f"logprob_type must be one of {_LOGPROB_TYPES}, got {self.logprob_type!r}")
        if self.value_vlm_mode not in _VALUE_VLM_MODES:
            raise UserError(f"value_vlm_mode must be one of {_VALUE_VLM_MODES}, got {self.value_vlm_mode!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")
        if self.action_chunk < 1 or self.action_env_dim < 1:
            raise ValueError(
                f"action_chunk and action_env_dim must be >= 1, got {self.action_chunk}, {self.action_env_dim}"
            )
        if (
            len(self.noise_logvar_range) != 2
            or not 0 < self.noise_logvar_range[0] <= self.noise_logvar_range[1]
        ):
            raise ValueError(
                f"noise_logvar_range must be (min_std, max_std) with 0 < min <= max, got {self.noise_logvar_range}"
            )

    @property
    def single_step(self) -> bool:
        """Only one denoise step per rollout is stochastic and rescored."""
        return not self.joint_logprob

    @classmethod
    def pi05(cls, **overrides) -> "FlowPolicyConfig":
        """π0.5 recipe: critic on the VLM prefix output with a wider value head."""
        kwargs = dict(value_after_vlm=True, value_head_hidden=(1024, 512, 256))
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def flow_noise(cls, **overrides) -> "FlowPolicyConfig":
        """Flow-Noise recipe (ManiSkill): learned noise head, all K steps stochastic, joint log-prob."""
        kwargs = dict(noise_method="flow_noise", joint_logprob=True, logprob_type="token_level")
        kwargs.update(overrides)
        return cls(**kwargs)
