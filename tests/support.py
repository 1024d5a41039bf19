"""Helpers shared by several test modules (subprocess jobs, run metrics)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pirl.logging.writer import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(devices: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a test subprocess: CPU JAX with `devices` fake devices, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRL_")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra or {})
    return env


def run_metrics(run_dir: Path) -> dict[int, dict]:
    """A training run's metrics.jsonl merged per step: {step: {name: value}}."""
    out: dict[int, dict] = {}
    for record in read_jsonl(Path(run_dir) / "tb" / "metrics.jsonl"):
        out.setdefault(record["step"], {}).update(record)
    return out


TINY_RL_MAX_STEPS = 4
"""Episode length of `tiny_rl_config`'s envs: two chunk steps of two control steps."""


def tiny_rl_config(run_root: Path, name: str, cache_dir: Path, **overrides):
    """The demo preset shrunk for trainer tests: 28² images, 2-step chunks, 8 `toy_spatial` envs on
    task 0 (episodes of TINY_RL_MAX_STEPS), no warm start, no video, a checkpoint every step."""
    import dataclasses

    from configs.rl import pi0_demo_cpu
    from pirl.rl.config import EnvSpec, WarmStartConfig

    demo = pi0_demo_cpu()
    env = EnvSpec(
        name="toy_spatial",
        num_envs=8,
        image_size=28,
        max_episode_steps=TINY_RL_MAX_STEPS,
        task_ids=(0,),
        init_ids=overrides.pop("init_ids", ()),
    )
    return dataclasses.replace(
        demo,
        name=name,
        run_root=str(run_root),
        model=dataclasses.replace(demo.model, image_resolution=(28, 28)),
        policy=dataclasses.replace(demo.policy, action_chunk=2),
        env=env,
        warm_start=WarmStartConfig(),
        global_batch_size=8,
        update_epochs=1,
        video_interval=0,
        save_interval=1,
        compilation_cache_dir=str(cache_dir),
        **overrides,
    )


def flat_color_render(data):
    """A stand-in for the ray caster in trainer tests (it compiles for minutes on a CPU): both
    cameras one 28² colour that follows the arm, so images still depend on the state."""
    import jax.numpy as jnp

    color = (jnp.tanh(data.qpos[:3]) * 127 + 128).astype(jnp.uint8)
    return jnp.broadcast_to(color, (2, 28, 28, 3))


def settled_scene_data(task, init_id: int, open_fingers: bool = True):
    """MuJoCo C data of a faithful task's MJX scene (`pirl.envs.libero_scene.load_task`) at official
    initial state `init_id` after openpi's settle steps with the arm held still (`settle_held`): what
    a plan reads at its first step (the objects start above their supports). `open_fingers`: the
    fingers as the settle's open command leaves them."""
    import mujoco

    from pirl.envs import libero_scene as ls
    from pirl.envs.libero_predicates import settle_held
    from pirl.envs.osc import OSCConfig

    m = task.model
    d = mujoco.MjData(m)
    s = task.init_states[init_id]
    d.qpos[:], d.qvel[:] = s[1 : 1 + m.nq], s[1 + m.nq :]
    if open_fingers:
        d.qpos[7:9] = [0.0388, -0.0388]
    settle_held(m, d, ls.SETTLE_STEPS * OSCConfig().control_dt)
    return d
