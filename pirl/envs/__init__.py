"""On-device MJX manipulation environments: scenes (MJCF in assets/), OSC-style controller,
JAX renderer, LIBERO / ManiSkill-style task suites, batching and scripted experts."""

from pirl.envs.batch import BatchEnv
from pirl.envs.env import EnvConfig, ManipEnv, State, make_env
from pirl.envs.expert import (
    ExpertConfig,
    expert_action,
    expert_policy,
    random_action,
    random_policy,
    run_episodes,
)
from pirl.envs.tasks import SUITES

__all__ = [
    "SUITES",
    "BatchEnv",
    "EnvConfig",
    "ExpertConfig",
    "ManipEnv",
    "State",
    "expert_action",
    "expert_policy",
    "make_env",
    "random_action",
    "random_policy",
    "run_episodes",
]
