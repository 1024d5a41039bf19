"""The SFT loop: `train_sft(config)`.

One jitted step: flow-matching loss (`pi0.compute_loss`, mean over batch and horizon), AdamW
(global-norm clipping, warm-up + cosine decay), EMA over the trainable leaves. Frozen leaves (LoRA,
`train_expert_only`) go through `pirl.policies.masks`, the mechanism RL uses too: stored as
`model.frozen_dtype`, not differentiated, no optimizer state, passed through bit-identical; the EMA
holds the trainable part only. Params and optimizer state are sharded FSDP-style over the mesh, the
batch over all mesh axes.

Data: each process reads only its rows of every global batch (those its devices hold; see
`pirl.data.loader`), so a multi-host job reads each frame once and sees the same batches as one
process. Checkpoints (`<checkpoint_dir>/<step>/`): `state` + `metadata` (params, opt state, EMA, rng,
global loader position; resumable on any mesh), `loader/process_<i>-of-<n>.json` (each process's
loader state) and, for RL presets and openpi tools, `params` (openpi's orbax layout; the EMA params
when EMA is on), `assets/<asset id>/norm_stats.json`, and the policy description
`assets/policy.json` with a copy of the tokenizer (`pirl.policies.trained`). `check_sft_run`
refuses, before anything is built, missing files and a run without `resume` over an earlier run's
checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pirl.checkpoints.openpi_jax import load_openpi_params, merge_missing_params, save_openpi_params
from pirl.checkpoints.train_state import (
    CheckpointWriteError,
    TrainStateCheckpointer,
    check_resume_matches,
    committed_steps,
)
from pirl.data.configs import asset_id_for, make_transforms_for_model
from pirl.data.lerobot import LeRobotDataset, load_metadata
from pirl.data.loader import BatchLoader, LoaderPosition, to_device
from pirl.data.normalize import load_norm_stats, save_norm_stats
from pirl.distributed import mesh as mesh_lib
from pirl.distributed import multihost
from pirl.errors import UserError, disk_errors
from pirl.logging.writer import MetricWriter, progress
from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.models.tokenizer import PaligemmaTokenizer
from pirl.policies import masks
from pirl.policies.trained import PolicyDescription, save_policy_assets
from pirl.sft.config import SFTConfig

log = logging.getLogger(__name__)

Params = dict[str, Any]
TrainState = dict[str, Any]


# ------------------------------------------------------------------------------ trainable masks


def trainable_mask(params: Params, train_expert_only: bool = False) -> Any:
    """Pytree of Python bools, True where SFT updates the leaf (`masks.model_trainable_mask`).

    openpi's rules: with LoRA on the PaliGemma LLM, its non-LoRA weights are frozen (and the
    expert's too when the expert has LoRA); with LoRA on the expert only, the expert's non-LoRA
    weights are frozen. SigLIP and the projections stay trainable. `train_expert_only` freezes
    the whole VLM (PaliGemma/img and the LLM's non-expert weights, whose names lack `_1`).
    """
    return masks.model_trainable_mask(params, train_expert_only=train_expert_only)


# ------------------------------------------------------------------------------ optimizer


def learning_rate_schedule(config: SFTConfig) -> optax.Schedule:
    """Linear warm-up from lr/(warmup+1) to lr, then cosine decay to final_lr (openpi's schedule)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=config.lr / (config.warmup_steps + 1),
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.decay_steps, config.warmup_steps + 1),
        end_value=config.final_lr,
    )


def make_optimizer(config: SFTConfig, mask: Any) -> optax.GradientTransformation:
    """AdamW with clipping over the trainable leaves only (`masks.trainable_optimizer`: frozen leaves
    get no state, updates are the trainable part)."""
    adamw = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=1e-8,
            weight_decay=config.weight_decay,
        ),
    )
    return masks.trainable_optimizer(adamw, mask)


# ------------------------------------------------------------------------------ step


def batch_to_observation(model_cfg: Pi0Config, batch: dict[str, Any]) -> pi0.Observation:
    """Loader batch (uint8 images) -> model Observation (images in [-1, 1], masks, tokens)."""
    return pi0.preprocess_observation(model_cfg, pi0.Observation.from_dict(batch))


def make_train_step(
    config: SFTConfig, tx: optax.GradientTransformation, mask: Any
) -> Callable[[TrainState, dict[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """The (unjitted) train step: state, batch -> new state, {"loss", "grad_norm", "lr"}."""
    model_cfg = config.model
    schedule = learning_rate_schedule(config)

    def loss_fn(params: Params, rng: jax.Array, batch: dict[str, Any]) -> jax.Array:
        obs = batch_to_observation(model_cfg, batch)
        return jnp.mean(pi0.compute_loss(params, model_cfg, rng, obs, batch["actions"]))

    value_and_grad = masks.trainable_value_and_grad(loss_fn, mask)

    def train_step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state["rng"])
        loss, grads = value_and_grad(state["params"], step_rng, batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = masks.apply_trainable_updates(state["params"], updates, mask)
        new_state = {**state, "params": params, "opt_state": opt_state, "rng": rng, "step": state["step"] + 1}
        if "ema_params" in state:
            decay = config.ema_decay
            new_state["ema_params"] = jax.tree.map(
                lambda e, p: decay * e + (1 - decay) * p,
                state["ema_params"],
                masks.split_frozen(params, mask)[0],
            )
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step


def jit_train_step(
    config: SFTConfig,
    tx: optax.GradientTransformation,
    mask: Any,
    mesh: jax.sharding.Mesh,
    state_shardings: Any,
) -> Any:
    """The SFT program: jit(make_train_step) traced on the mesh (`mesh.jit_on_mesh`: the model's
    batch constraints act), state donated and kept in `state_shardings`, batch split over the mesh.
    `benchmarks/full_scale.py` lowers this very function on abstract inputs."""
    return mesh_lib.jit_on_mesh(
        make_train_step(config, tx, mask),
        mesh,
        in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh)),
        out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def make_eval_step(config: SFTConfig) -> Callable[[Params, jax.Array, dict[str, Any]], jax.Array]:
    def eval_step(params: Params, rng: jax.Array, batch: dict[str, Any]) -> jax.Array:
        obs = batch_to_observation(config.model, batch)
        return jnp.mean(pi0.compute_loss(params, config.model, rng, obs, batch["actions"]))

    return eval_step


# ------------------------------------------------------------------------------ data


@dataclasses.dataclass
class SFTData:
    train: BatchLoader
    val: BatchLoader | None
    norm_stats: dict[str, Any]
    norm_stats_dir: Path


def make_data(
    config: SFTConfig, position: LoaderPosition = LoaderPosition(), rows: np.ndarray | None = None
) -> SFTData:
    """Train / val loaders over the dataset (the last val_fraction of episodes held out), reading
    only `rows` of every global batch (this process's; None = all)."""
    data_cfg, model_cfg = config.data, config.model
    meta = load_metadata(data_cfg.repo_id)
    norm_dir = (
        Path(config.norm_stats_dir).expanduser() if config.norm_stats_dir else data_cfg.norm_stats_dir()
    )
    norm_stats = load_norm_stats(norm_dir)
    tokenizer = PaligemmaTokenizer(Path(config.tokenizer_path).expanduser(), max_len=model_cfg.max_token_len)
    transform = make_transforms_for_model(
        data_cfg, model_cfg, tasks=meta.tasks, norm_stats=norm_stats, tokenizer=tokenizer
    )
    episodes = [int(e["episode_index"]) for e in meta.episodes]
    num_val = math.ceil(len(episodes) * config.val_fraction) if config.val_fraction > 0 else 0
    num_val = min(num_val, len(episodes) - 1)
    deltas = {k: [t / meta.fps for t in range(data_cfg.action_horizon)] for k in data_cfg.dataset_action_keys}

    def loader(eps: list[int], shuffle: bool, start: LoaderPosition) -> BatchLoader:
        dataset = LeRobotDataset(data_cfg.repo_id, delta_timestamps=deltas, episodes=eps)
        return BatchLoader(
            dataset,
            transform,
            config.batch_size,
            seed=config.seed,
            shuffle=shuffle,
            num_workers=config.num_workers,
            position=start,
            rows=rows,
        )

    train = loader(episodes[: len(episodes) - num_val], True, position)
    val = None
    if num_val:
        try:
            val = loader(episodes[len(episodes) - num_val :], False, LoaderPosition())
        except ValueError as error:  # fewer val frames than one batch
            log.warning("no validation: %s", error)
    return SFTData(train=train, val=val, norm_stats=norm_stats, norm_stats_dir=norm_dir)


# ------------------------------------------------------------------------------ state


def init_params(config: SFTConfig, rng: jax.Array, shardings: Any) -> Params:
    """Random init, or the init checkpoint (missing LoRA leaves filled from the random init); frozen
    leaves stored as `config.model.frozen_dtype` (a float32 checkpoint is cast)."""
    init = jax.jit(
        lambda r: frozen_params_cast(config, pi0.init_params(config.model, r)), out_shardings=shardings
    )
    params = init(rng)
    if config.init_checkpoint:
        loaded = load_openpi_params(
            config.init_checkpoint,
            expected=params,
            sharding=shardings,
            missing_regex=".*lora.*",
            ignore_unexpected=False,
        )
        params = frozen_params_cast(config, merge_missing_params(loaded, params))
    return params


def frozen_params_cast(config: SFTConfig, params: Params) -> Params:
    """`params` (arrays or abstract) with the frozen leaves stored as `config.model.frozen_dtype`."""
    return masks.cast_frozen(
        params, trainable_mask(params, config.train_expert_only), config.model.frozen_dtype
    )


def export_params(state: TrainState, mask: Any) -> Params:
    """The params a checkpoint exports: the EMA of the trainable leaves (when EMA is on) merged with
    the frozen ones, else the params."""
    if "ema_params" not in state:
        return state["params"]
    return masks.merge_frozen(state["ema_params"], masks.split_frozen(state["params"], mask)[1])


def train_state_shardings(abstract_state: TrainState, mesh: jax.sharding.Mesh) -> Any:
    """Shardings of an SFT train state: params, Adam state and EMA FSDP-style, rng and step replicated."""
    replicated = mesh_lib.replicated(mesh)
    out = {
        "params": mesh_lib.param_shardings(abstract_state["params"], mesh),
        "opt_state": mesh_lib.param_shardings(abstract_state["opt_state"], mesh),
        "rng": replicated,
        "step": replicated,
    }
    if "ema_params" in abstract_state:
        out["ema_params"] = mesh_lib.param_shardings(abstract_state["ema_params"], mesh)
    return out


def abstract_batch(config: SFTConfig, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """ShapeDtypeStructs of one SFT batch as the loader feeds `train_step` (the model's images, masks,
    state, tokenized prompt and action chunk; `config.batch_size` rows placed by `sharding`), for
    lowering the step without data."""
    m, b = config.model, config.batch_size

    def spec(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((b, *shape), dtype, sharding=sharding)

    return {
        "image": {k: spec((*m.image_resolution, 3), jnp.uint8) for k in m.image_keys},
        "image_mask": {k: spec((), jnp.bool_) for k in m.image_keys},
        "state": spec((m.action_dim,), jnp.float32),
        "tokenized_prompt": spec((m.max_token_len,), jnp.int32),
        "tokenized_prompt_mask": spec((m.max_token_len,), jnp.bool_),
        "actions": spec((m.action_horizon, m.action_dim), jnp.float32),
    }


def save_checkpoint(
    ckpt: TrainStateCheckpointer,
    step: int,
    state: TrainState,
    config: SFTConfig,
    loader: BatchLoader,
    norm_stats: dict[str, Any],
    *,
    force: bool = False,
) -> bool:
    """Train state + metadata (async), then this process's loader state, openpi-layout params and
    norm-stats assets."""
    started = ckpt.save(step, state, {"loader_position": loader.position.to_dict()}, force=force)
    if not started:
        return False
    ckpt.wait()
    step_dir = Path(ckpt.directory) / str(step)
    loader.save_state(step_dir)
    export = export_params(state, trainable_mask(state["params"], config.train_expert_only))
    save_openpi_params(export, step_dir, overwrite=True)
    save_norm_stats(
        step_dir / "assets" / asset_id_for(config.data.asset_id or config.data.repo_id), norm_stats
    )
    # The step directory is a complete policy (pirl.eval / pirl.serve / pirl.train --init-checkpoint).
    description = PolicyDescription(model=config.model, data=config.data)
    save_policy_assets(step_dir / "assets", description, None, config.tokenizer_path)
    return True


# ------------------------------------------------------------------------------ loop


def _val_loss(
    eval_fn: Callable, params: Params, loader: BatchLoader, config: SFTConfig, sharding: Any
) -> float:
    losses = []
    rng = jax.random.PRNGKey(config.seed + 1)  # same noise every evaluation: comparable curves
    for i, batch in enumerate(loader.epoch_batches()):
        if i >= config.val_batches:
            break
        device_batch = to_device(batch, sharding, loader.batch_size)
        losses.append(eval_fn(params, jax.random.fold_in(rng, i), device_batch))
    return float(np.mean(jax.device_get(losses))) if losses else float("nan")


def check_sft_run(config: SFTConfig) -> None:
    """What can be checked before a dataset, a model or a compilation (UserError otherwise): the
    files the config names exist, and a run without --resume does not start over another run's
    checkpoints. A fresh run sets an earlier run's logs (one that saved no checkpoint) aside."""
    for flag, value in (
        ("--tokenizer-path", config.tokenizer_path),
        ("--init-checkpoint", config.init_checkpoint),
        ("--norm-stats-dir", config.norm_stats_dir),
    ):
        if value and "://" not in value and not Path(value).expanduser().exists():
            raise UserError(f"{flag} {value} does not exist")
    if not config.resume:
        check_resume_matches(
            config.checkpoint_dir,
            False,
            resume_flag="--resume",
            new_run_hint="another --checkpoint-dir (and --log-dir)",
        )
    norm_dir = config.norm_stats_dir or config.data.norm_stats_dir()
    try:
        load_norm_stats(Path(norm_dir).expanduser())
    except FileNotFoundError as error:
        raise UserError(f"{error} (or pass --norm-stats-dir)") from None
    log_dir = Path(config.log_dir).expanduser()
    fresh = not committed_steps(config.checkpoint_dir)
    if fresh and log_dir.is_dir() and any(log_dir.iterdir()) and jax.process_index() == 0:
        aside = log_dir.with_name(f"{log_dir.name}.previous-{int(time.time())}")
        with disk_errors(log_dir):
            log_dir.rename(aside)
        log.warning("moved the logs of an earlier run without checkpoints to %s", aside)


def train_sft(config: SFTConfig) -> dict[str, Any]:
    """Run SFT; returns {"step", "train_loss", "val_loss", "checkpoint_dir"} of the final state."""
    check_sft_run(config)
    with disk_errors(config.checkpoint_dir):
        return _train_sft(config)


def _train_sft(config: SFTConfig) -> dict[str, Any]:
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.check_divisible(config.batch_size, mesh, what="batch_size")
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)

    rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    abstract_params = frozen_params_cast(
        config, jax.eval_shape(lambda r: pi0.init_params(config.model, r), init_rng)
    )
    mask = trainable_mask(abstract_params, config.train_expert_only)
    tx = make_optimizer(config, mask)

    def make_state(params: Params) -> TrainState:
        state = {"params": params, "opt_state": tx.init(params), "rng": train_rng, "step": jnp.int32(0)}
        if config.ema_decay is not None:
            # A copy: the train step donates its state, and one buffer cannot be donated twice.
            state["ema_params"] = jax.tree.map(jnp.copy, masks.split_frozen(params, mask)[0])
        return state

    abstract_state = jax.eval_shape(make_state, abstract_params)
    state_shardings = train_state_shardings(abstract_state, mesh)

    rows = multihost.process_batch_rows(batch_sharding, config.batch_size)
    # First: a bad dataset / tokenizer / norm stats fails before any state is built.
    data = make_data(config, rows=rows)
    ckpt = TrainStateCheckpointer(
        config.checkpoint_dir, max_to_keep=config.keep_checkpoints, save_interval=config.save_interval
    )
    restored = ckpt.restore_latest(abstract_state, state_shardings) if config.resume else None
    if restored is not None:
        state = restored.state
        start_step = restored.step
        if not data.train.restore_state(Path(ckpt.directory) / str(start_step)):
            saved_position = restored.metadata.get("loader_position", {"epoch": 0, "batch": 0})
            data.train.set_position(LoaderPosition.from_dict(saved_position))
        log.info("resumed from step %d (%s)", start_step, ckpt.directory)
    else:
        params = init_params(config, init_rng, state_shardings["params"])
        state = jax.jit(make_state, out_shardings=state_shardings)(params)
        start_step = 0

    train_step = jit_train_step(config, tx, mask, mesh, state_shardings)
    eval_step = mesh_lib.jit_on_mesh(make_eval_step(config), mesh, out_shardings=replicated)

    writer = MetricWriter(config.log_dir)
    batches = data.train.device_batches(batch_sharding)
    step = start_step
    last_loss = val_loss = float("nan")
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    bar = progress(total=config.num_steps, initial=start_step, desc="sft", disable=not config.progress)
    try:
        while step < config.num_steps:
            batch = next(batches)
            new_state, metrics = train_step(state, batch)
            state, step = new_state, step + 1
            pending.append((step, metrics))
            if step % config.log_interval == 0 or step == config.num_steps:
                for logged_step, m in jax.device_get(pending):
                    writer.scalars({f"train/{k}": float(v) for k, v in m.items()}, logged_step)
                last_loss = float(jax.device_get(pending[-1][1]["loss"]))
                pending.clear()
                bar.set_postfix({"loss": f"{last_loss:.4f}"})
            if (
                data.val is not None
                and config.eval_interval
                and (step % config.eval_interval == 0 or step == config.num_steps)
            ):
                val_loss = _val_loss(eval_step, state["params"], data.val, config, batch_sharding)
                writer.scalars({"val/loss": val_loss}, step)
            save_checkpoint(
                ckpt,
                step,
                state,
                config,
                data.train,
                data.norm_stats,
                force=step == config.num_steps,
            )
            bar.update(1)
    except BaseException as error:
        # (not after a failed checkpoint write: a full disk would only fail again)
        if (
            not isinstance(error, CheckpointWriteError)
            and step > start_step
            and ckpt.emergency_save(step, state, {"loader_position": data.train.position.to_dict()})
        ):
            data.train.save_state(Path(ckpt.directory) / str(step))
        raise
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        data.train.close()
        if data.val is not None:
            data.val.close()
    if pending:
        last_loss = float(jax.device_get(pending[-1][1]["loss"]))
    return {
        "step": step,
        "train_loss": last_loss,
        "val_loss": val_loss,
        "checkpoint_dir": str(ckpt.directory),
    }
