"""Flow policies for RL: Flow-SDE / Flow-Noise stochastic denoising over π0 / π0.5.

Owns the policy config (`config.FlowPolicyConfig`), rollout sampling and rescoring
(`flow_policy.sample`, `flow_policy.log_prob_and_value`, `flow_policy.init_policy_params`), the
Flow-Noise noise head (`noise_head`) and the freeze masks with the one mechanism that keeps frozen
parameters frozen in RL and SFT (`masks`);
the on-device env <-> model adapter built from a data config (`env_io`) and the trained-policy
description every run saves with its checkpoints (`trained`).
"""

from pirl.policies.config import FlowPolicyConfig
from pirl.policies.flow_policy import (
    SampleOutput,
    aggregate_log_probs,
    denoise_schedule,
    init_policy_params,
    log_prob_and_value,
    sample,
)
from pirl.policies.masks import optimizer_labels, trainable_mask

__all__ = [
    "FlowPolicyConfig",
    "SampleOutput",
    "aggregate_log_probs",
    "denoise_schedule",
    "init_policy_params",
    "log_prob_and_value",
    "optimizer_labels",
    "sample",
    "trainable_mask",
]
