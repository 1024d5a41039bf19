"""A tiny-π0 PPO update on synthetic transitions: one setup shared by tests and benchmarks.

The update-step tests (1 vs 8 devices, 1 vs 2 processes) and `benchmarks/scaling.py` all need the
same pieces: a tiny `RLConfig`, a deterministic batch of transitions, params FSDP-sharded over a
mesh, the optimizer with its frozen / value-head masks, and the jitted `ppo_update`.

```python
cfg = tiny_ppo_config(update_epochs=2)
setup = make_ppo_update_setup(cfg, mesh)                      # params + opt state on the mesh
batch = place_transitions(synthetic_transitions(cfg, 16), mesh)
params, opt_state, step, metrics = setup.update(
    setup.params, setup.opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(1)
)
```

Everything is deterministic: every process (and every mesh) gets the same init and the same batch,
so results on different meshes / process counts can be compared leaf by leaf.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from pirl.data.configs import get_data_config
from pirl.distributed import mesh as mesh_lib
from pirl.distributed import multihost
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig
from pirl.policies.env_io import EnvAdapter, make_env_adapter
from pirl.policies.masks import trainable_mask
from pirl.rl.config import EnvSpec, RLConfig
from pirl.rl.optim import OptimizerConfig, make_optimizer
from pirl.rl.update import Transitions, ppo_update

PyTree = Any

TINY_STATE_DIM = 8
"""Raw env state width of the synthetic transitions (LIBERO's 8-dim proprio)."""


def tiny_ppo_config(**overrides: Any) -> RLConfig:
    """The tiny π0 (2 cameras at 28x28, dummy Gemma) with a (16,) value head, lr 1e-3 (so one step
    moves the params visibly), 1 update epoch, minibatches of 8 in micro-batches of 4.

    `overrides` replace top-level `RLConfig` fields (e.g. `update_epochs=2`, `global_batch_size=16`).
    """
    fields: dict[str, Any] = dict(
        model=Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb")),
        policy=FlowPolicyConfig(value_head_hidden=(16,)),
        env=EnvSpec(name="toy_spatial", num_envs=8, image_size=28, max_episode_steps=10),
        optim=OptimizerConfig(lr=1e-3, value_lr=1e-3),
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=8,
        micro_batch_size=4,
    )
    fields.update(overrides)
    return RLConfig(**fields)


def synthetic_transitions(cfg: RLConfig, num: int, seed: int = 0) -> Transitions:
    """`num` random transitions (numpy leaves, the same on every process for the same seed).

    Images are uint8 [num, S, S, 3] with S = cfg.env.image_size, state f32 [num, 8], chains
    f32 [num, K+1, H, A], task ids in {0, 1} (see `toy_env_adapter`), ~10% masked out.
    """
    rng = np.random.default_rng(seed)
    k, h, a = cfg.policy.num_steps, cfg.model.action_horizon, cfg.model.action_dim
    size = cfg.env.image_size
    return Transitions(
        env_obs={
            "agentview_image": rng.integers(0, 255, (num, size, size, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (num, size, size, 3), dtype=np.uint8),
            "state": rng.normal(size=(num, TINY_STATE_DIM)).astype(np.float32),
        },
        task_id=rng.integers(0, 2, num).astype(np.int32),
        chain=rng.normal(size=(num, k + 1, h, a)).astype(np.float32),
        denoise_index=rng.integers(0, k, num).astype(np.int32),
        old_log_probs=rng.normal(size=(num,)).astype(np.float32) - 50.0,
        old_values=rng.normal(size=(num,)).astype(np.float32),
        advantages=rng.normal(size=(num,)).astype(np.float32),
        returns=rng.normal(size=(num,)).astype(np.float32),
        mask=rng.random(num) > 0.1,
        loss_weight=rng.uniform(1.0, 3.0, num).astype(np.float32),
    )


def toy_env_adapter(
    cfg: RLConfig, prompts: Sequence[str] = ("a b", "c d"), *, rotate_images: bool = False
) -> EnvAdapter:
    """An adapter for `prompts` (default: two tasks) with fixed prompt token ids (no tokenizer) and
    no normalisation; `rotate_images` for raw (upside-down) LIBERO renders."""
    length = cfg.model.max_token_len

    def tokenize(_prompt: str) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(length, dtype=np.int32) % 5, np.arange(length) < 4

    return make_env_adapter(
        get_data_config("pi0_toy"),
        list(prompts),
        tokenize,
        None,
        state_dim=TINY_STATE_DIM,
        model_image_keys=cfg.model.image_keys,
        rotate_images=rotate_images,
        action_env_dim=cfg.policy.action_env_dim,
        action_chunk=cfg.policy.action_chunk,
    )


def place_transitions(transitions: Transitions, mesh: Mesh) -> Transitions:
    """Put a global host batch (identical on every process) onto `mesh`, split over its batch axes;
    each process contributes only its own rows (works for one or many processes)."""
    num = transitions.mask.shape[0]
    mesh_lib.check_divisible(num, mesh, what="the number of transitions")
    sharding = mesh_lib.batch_sharding(mesh)
    rows = multihost.process_batch_rows(sharding, num)
    return multihost.host_local_batch_to_global(jax.tree.map(lambda x: x[rows], transitions), sharding, num)


UpdateFn = Callable[
    [PyTree, PyTree, jax.Array, Transitions, jax.Array], tuple[PyTree, PyTree, jax.Array, dict]
]


@dataclasses.dataclass(frozen=True)
class PPOUpdateSetup:
    """Everything `ppo_update` needs on one mesh, plus the jitted update itself."""

    cfg: RLConfig
    """The run config (tiny model)."""
    mesh: Mesh
    """Mesh the params, optimizer state and batch live on."""
    params: PyTree
    """Policy params {"model", "value_head"}, FSDP-sharded over the mesh's fsdp axis."""
    opt_state: PyTree
    """AdamW state of the trainable leaves, sharded like the params."""
    trainable_mask: PyTree
    """Python bools: True where the update trains the leaf (the expert and heads; VLM frozen)."""
    optimizer: optax.GradientTransformation
    """AdamW (policy lr / value lr) + clipping + frozen masking."""
    adapter: EnvAdapter
    """Env -> model input mapping (`toy_env_adapter`)."""
    update: UpdateFn
    """jit(ppo_update): (params, opt_state, opt_step, batch, rng) -> (params, opt_state, opt_step, metrics)."""


def make_ppo_update_setup(
    cfg: RLConfig,
    mesh: Mesh,
    *,
    params: PyTree | None = None,
    seed: int = 0,
    min_shard_size: int = 256,
    shuffle_shards: int | None = None,
) -> PPOUpdateSetup:
    """Init (or place) the policy params FSDP-sharded over `mesh`, build the optimizer and its
    state, and jit `ppo_update` with the minibatches pinned to the mesh's batch axes.

    Args:
      cfg: run config (e.g. `tiny_ppo_config()`).
      mesh: target mesh (may span several processes).
      params: host params to place instead of a fresh init (the init is deterministic anyway).
      seed: init seed when `params` is None.
      min_shard_size: leaves with fewer elements stay replicated; the small default makes the tiny
        model's leaves really shard.
    """

    def init() -> PyTree:
        return flow_policy.init_policy_params(cfg.policy, cfg.model, jax.random.key(seed))

    abstract = jax.eval_shape(init)
    shardings = mesh_lib.param_shardings(abstract, mesh, min_size=min_shard_size)
    placed = jax.jit(init, out_shardings=shardings)() if params is None else jax.device_put(params, shardings)
    adapter = toy_env_adapter(cfg)
    program = ppo_update_program(cfg, abstract, adapter, mesh, shuffle_shards=shuffle_shards)
    opt_state = jax.jit(program.optimizer.init)(placed)
    return PPOUpdateSetup(
        cfg=cfg,
        mesh=mesh,
        params=placed,
        opt_state=opt_state,
        trainable_mask=program.trainable_mask,
        optimizer=program.optimizer,
        adapter=adapter,
        update=mesh_lib.jit_on_mesh(program.update, mesh),
    )


@dataclasses.dataclass(frozen=True)
class PPOUpdateProgram:
    """The unjitted `ppo_update` of a config with its optimizer (no arrays: works on abstract params)."""

    trainable_mask: PyTree
    """Python bools: True where the update trains the leaf."""
    optimizer: optax.GradientTransformation
    """AdamW (policy lr / value lr) + clipping + frozen masking."""
    update: UpdateFn
    """ppo_update with everything but (params, opt_state, opt_step, batch, rng) bound."""


def ppo_update_program(
    cfg: RLConfig,
    abstract_params: PyTree,
    adapter: EnvAdapter,
    mesh: Mesh,
    *,
    shuffle_shards: int | None = None,
) -> PPOUpdateProgram:
    """The update of `cfg` on `mesh` for params shaped like `abstract_params` (ShapeDtypeStructs
    suffice): shared by `make_ppo_update_setup` and `benchmarks/full_scale.py`, which compiles the
    full-size program without allocating it."""
    trainable = trainable_mask(abstract_params, cfg.policy, cfg.model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in abstract_params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    update = functools.partial(
        ppo_update,
        cfg=cfg,
        adapter=adapter,
        optimizer=optimizer,
        trainable_mask=trainable,
        batch_sharding=mesh_lib.batch_sharding(mesh),
        shuffle_shards=shuffle_shards,
    )
    return PPOUpdateProgram(trainable, optimizer, update)
