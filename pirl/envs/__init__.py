"""Manipulation environments: the on-device MJX suites (scenes in assets/, OSC-style controller, JAX
renderer, LIBERO / ManiSkill-style task suites, batching, scripted experts), LIBERO's own tasks
rebuilt for MJX (`libero_scene`, `libero_predicates`, `libero_mjx_env`) and the real LIBERO in
host worker processes (`pirl.envs.libero_pool`).

The MJX names below are imported on first use, so that a LIBERO worker process (which imports
`pirl.envs.libero_pool`) does not pay for JAX and MJX.
"""

import importlib

_EXPORTS = {
    "BatchEnv": "pirl.envs.batch",
    "EnvConfig": "pirl.envs.env",
    "ManipEnv": "pirl.envs.env",
    "LiberoMJXEnv": "pirl.envs.libero_mjx_env",
    "State": "pirl.envs.env",
    "make_env": "pirl.envs.env",
    "ExpertConfig": "pirl.envs.expert",
    "expert_action": "pirl.envs.expert",
    "expert_policy": "pirl.envs.expert",
    "random_action": "pirl.envs.expert",
    "random_policy": "pirl.envs.expert",
    "run_episodes": "pirl.envs.expert",
    "SUITES": "pirl.envs.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pirl.envs' has no attribute {name!r}")


def __dir__():
    return __all__
