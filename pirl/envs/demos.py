"""Roll out the scripted expert (batched, jitted, with rendering) and write a LeRobot dataset.

    python -m pirl.envs.demos --suite toy_spatial --episodes-per-task 10 --out /tmp/demos \
        --image-size 64 [--format v3.0]

Features follow openpi's LIBERO LeRobot dataset (the keys pirl.data's LIBERO config reads):
`image` (agentview, upright), `wrist_image`, `state` f32[8], `actions` f32[7], plus LeRobot's
index columns; the task string is the suite's instruction. Only successful episodes are kept
(truncated at success + `tail_steps`), as in LIBERO's demonstration sets.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from pirl.envs.env import make_env
from pirl.envs.expert import expert_action


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Options of the demo command."""

    suite: str = "toy_spatial"
    """Suite name (toy_spatial, toy_object, toy_goal, toy_10, maniskill_put_on_plate)."""
    episodes_per_task: int = 10
    """Episodes per task; init states 0..N-1 of the 50 fixed ones."""
    out: str = "/tmp/pirl_demos"
    """Output dataset folder."""
    image_size: int = 64
    """Square image side."""
    batch_size: int = 16
    """Episodes rolled out in parallel (one jitted batched step)."""
    tail_steps: int = 5
    """Steps kept after success."""
    use_videos: bool = False
    """Store images as mp4 instead of PNG-in-parquet."""
    format: Literal["v2.1", "v3.0"] = "v2.1"
    """LeRobot codebase version: v2.1 (one file per episode; openpi's lerobot reads it) or v3.0
    (episodes packed into shared files, as lerobot >= 0.4 writes)."""
    overwrite: bool = False
    """Replace an existing dataset at `out`."""


def rollout_expert(
    env, task_ids: np.ndarray, init_ids: np.ndarray, tail_steps: int = 5, num_real: int | None = None
) -> list[dict]:
    """Run the expert on (task, init) pairs in one batch; returns the successful episodes among
    the first `num_real` (default all) as numpy dicts."""
    reset = jax.jit(jax.vmap(env.reset_to))

    def act_and_step(state):
        action = expert_action(env, state)
        return action, env.step(state, action)

    step = jax.jit(env.batched(act_and_step))

    state = reset(jnp.asarray(task_ids), jnp.asarray(init_ids))
    frames: list[dict] = []
    for _ in range(env.max_steps):
        action, nxt = step(state)
        frame = {k: np.asarray(v) for k, v in state.obs.items()}
        frame["actions"] = np.asarray(action)
        frame["success"] = np.asarray(nxt.info["success_once"])
        frames.append(frame)
        state = nxt
        if (
            bool(np.all(frame["success"]))
            and len(frames) > 1
            and all(bool(np.all(f["success"])) for f in frames[-tail_steps:])
        ):
            break
    succ = np.stack([f["success"] for f in frames])  # [T, B]
    episodes = []
    for b in range(len(task_ids) if num_real is None else num_real):
        if not succ[:, b].any():
            continue
        end = min(int(np.argmax(succ[:, b])) + 1 + tail_steps, len(frames))
        ep = {
            "state": np.stack([f["state"][b] for f in frames[:end]]).astype(np.float32),
            "actions": np.stack([f["actions"][b] for f in frames[:end]]).astype(np.float32),
            "task": env.prompts[int(task_ids[b])],
        }
        for key, name in (("agentview_image", "image"), ("wrist_image", "wrist_image")):
            if key in frames[0]:
                ep[name] = np.stack([f[key][b] for f in frames[:end]])
        episodes.append(ep)
    return episodes


def main(cfg: DemoConfig) -> None:
    from pirl.data.lerobot_writer import write_lerobot_dataset

    env = make_env(cfg.suite, image_size=cfg.image_size, render=True)
    pairs = [(t, i) for t in range(env.num_tasks) for i in range(cfg.episodes_per_task)]
    if cfg.episodes_per_task > env.num_init_states:
        raise ValueError(f"episodes_per_task must be <= {env.num_init_states}")
    episodes, t0 = [], time.time()
    for start in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[start : start + cfg.batch_size]
        chunk = chunk + [chunk[-1]] * (cfg.batch_size - len(chunk))  # keep one compiled shape
        tasks = np.array([p[0] for p in chunk], np.int32)
        inits = np.array([p[1] for p in chunk], np.int32)
        n_real = min(cfg.batch_size, len(pairs) - start)
        episodes.extend(rollout_expert(env, tasks, inits, cfg.tail_steps, n_real))
        print(
            f"{min(start + cfg.batch_size, len(pairs))}/{len(pairs)} rolled out, "
            f"{len(episodes)} successful, {time.time() - t0:.0f}s",
            flush=True,
        )
    if not episodes:
        raise SystemExit("the expert produced no successful episode")
    root = write_lerobot_dataset(
        cfg.out,
        episodes,
        fps=env.suite.control_hz,
        tasks=env.prompts,
        use_videos=cfg.use_videos,
        codebase_version=cfg.format,
        robot_type="panda",
        overwrite=cfg.overwrite,
    )
    print(f"wrote {len(episodes)} episodes ({sum(len(e['actions']) for e in episodes)} frames) to {root}")


if __name__ == "__main__":
    main(tyro.cli(DemoConfig))
