"""Batched environment: N envs (vmapped, or looped with lax.map: `ManipEnv.batched`) with automatic reset of finished episodes.

Every method is a pure function of its inputs; jit them at the call site. The batch axis is the
leading axis of every leaf of State, so it can be sharded over a device mesh
(`jax.device_put(state, NamedSharding(mesh, P("data")))`) and jit keeps it sharded.

Auto-reset: after `step`/`chunk_step`, envs whose episode ended (`done`) are reset in the same
call, either to a fresh random (task, init) drawn from their own key (`reset_mode="random"`) or
to the same (task, init) they just ran (`"same"`, e.g. GRPO groups). The returned reward, done
and `info["final_success"]` describe the finished step; obs/data/other info already belong to the
new episode (Brax's convention).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from pirl.envs.env import ManipEnv, State


class BatchEnv:
    """`num_envs` copies of `env`, batched with `env.batched`, with auto-reset."""

    def __init__(self, env: ManipEnv, num_envs: int, reset_mode: Literal["random", "same"] = "random"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if reset_mode not in ("random", "same"):
            raise ValueError(f"reset_mode must be 'random' or 'same', got {reset_mode!r}")
        self.env = env
        self.num_envs = num_envs
        self.reset_mode = reset_mode
        self.prompts = env.prompts

    def _with_keys(self, state: State, keys: jax.Array) -> State:
        info = dict(state.info, rng=keys, final_success=jnp.zeros(self.num_envs, bool))
        return state.replace(info=info)

    def reset(self, rng: jax.Array) -> State:
        """Random (task, init) per env. State leaves have leading axis num_envs."""
        keys = jax.random.split(rng, (self.num_envs, 2))
        state = jax.vmap(self.env.reset)(keys[:, 0])
        return self._with_keys(state, keys[:, 1])

    def reset_to(self, task_ids: jax.Array, init_ids: jax.Array, rng: jax.Array | None = None) -> State:
        """Reset env i to (task_ids[i], init_ids[i]); i32[N] each."""
        task_ids = jnp.broadcast_to(jnp.asarray(task_ids, jnp.int32), (self.num_envs,))
        init_ids = jnp.broadcast_to(jnp.asarray(init_ids, jnp.int32), (self.num_envs,))
        state = jax.vmap(self.env.reset_to)(task_ids, init_ids)
        keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, self.num_envs)
        return self._with_keys(state, keys)

    def _auto_reset(self, state: State) -> State:
        keys = jax.vmap(jax.random.split)(state.info["rng"])  # [N, 2, key]
        if self.reset_mode == "random":
            fresh = jax.vmap(self.env.reset)(keys[:, 0])
        else:
            fresh = jax.vmap(self.env.reset_to)(state.info["task_id"], state.info["init_id"])
        done = state.done

        def pick(new, old):
            mask = done.reshape(done.shape + (1,) * (old.ndim - 1))
            return jnp.where(mask, new, old)

        data = jax.tree.map(pick, fresh.data, state.data)
        obs = jax.tree.map(pick, fresh.obs, state.obs)
        info = {k: pick(fresh.info[k], v) if k in fresh.info else v for k, v in state.info.items()}
        info["rng"] = keys[:, 1]
        info["final_success"] = state.info["success_once"]
        return State(data, obs, state.reward, done, info)

    def step(self, state: State, actions: jax.Array) -> State:
        """actions f32[N, 7]."""
        if actions.shape != (self.num_envs, self.env.action_size):
            raise ValueError(f"actions must be ({self.num_envs}, 7), got {actions.shape}")
        extra = {k: state.info[k] for k in ("rng", "final_success")}
        inner = state.replace(info={k: v for k, v in state.info.items() if k not in extra})
        nxt = self.env.batched(self.env.step)(inner, actions)
        return self._auto_reset(nxt.replace(info=dict(nxt.info, **extra)))

    def chunk_step(self, state: State, actions: jax.Array) -> State:
        """actions f32[N, H, 7]; each env stops at its own `done` inside the chunk, then resets."""
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self.env.action_size:
            raise ValueError(f"actions must be ({self.num_envs}, H, 7), got {actions.shape}")
        extra = {k: state.info[k] for k in ("rng", "final_success")}
        inner = state.replace(info={k: v for k, v in state.info.items() if k not in extra})
        nxt = self.env.batched(self.env.chunk_step)(inner, actions)
        return self._auto_reset(nxt.replace(info=dict(nxt.info, **extra)))
