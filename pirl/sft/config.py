"""SFT configuration and presets (`<data config>_sft` for every named data config)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pirl.data.configs import DataConfig, data_config_names, get_data_config
from pirl.distributed.mesh import MeshConfig
from pirl.errors import check_at_least
from pirl.models.config import Pi0Config, model_config_for


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning run: model, data, optimiser, checkpoints and logging."""

    model: Pi0Config = Pi0Config()
    """Model to train (LoRA: paligemma_variant / action_expert_variant '*_lora')."""
    data: DataConfig = get_data_config("pi0_libero")
    """Dataset and transforms (see pirl/data/configs.py)."""
    tokenizer_path: str = "~/.cache/openpi/big_vision/paligemma_tokenizer.model"
    """PaliGemma sentencepiece model used to tokenise prompts."""
    init_checkpoint: str | None = None
    """openpi params checkpoint (<ckpt>/params) to start from; None = random init."""
    norm_stats_dir: str | None = None
    """Folder with norm_stats.json; None = <data.assets_dir>/<data.name>/<repo id>."""
    batch_size: int = 32
    """Global batch size (split over the mesh's batch axes)."""
    num_steps: int = 30_000
    """Optimizer steps."""
    lr: float = 2.5e-5
    """Peak learning rate (after warm-up)."""
    warmup_steps: int = 1_000
    """Linear warm-up steps from lr / (warmup_steps + 1)."""
    decay_steps: int = 30_000
    """Cosine decay length (counted from step 0, as optax's warmup_cosine_decay_schedule)."""
    final_lr: float = 2.5e-6
    """Learning rate at the end of the cosine decay."""
    weight_decay: float = 1e-10
    """AdamW decoupled weight decay (openpi's default)."""
    adam_b1: float = 0.9
    """AdamW beta1."""
    adam_b2: float = 0.95
    """AdamW beta2."""
    grad_clip_norm: float = 1.0
    """Clip gradients to this global norm."""
    ema_decay: float | None = 0.99
    """EMA of the params (None = no EMA); the EMA params are the exported ones."""
    train_expert_only: bool = False
    """Freeze the whole VLM (SigLIP + PaliGemma LLM), train the action expert and projections."""
    mesh: MeshConfig = MeshConfig()
    """Device mesh: batch over all axes, params FSDP-sharded over the fsdp axis."""
    seed: int = 0
    """Seed of the params init, the flow-matching noise and the data order."""
    num_workers: int = 2
    """Data-loader worker threads."""
    log_dir: str = "runs/sft"
    """TensorBoard / metrics.jsonl folder."""
    checkpoint_dir: str = "checkpoints/sft"
    """Checkpoint folder: <checkpoint_dir>/<step>/{state, metadata, params, assets}."""
    log_interval: int = 10
    """Log train/loss, train/grad_norm, train/lr every this many steps."""
    save_interval: int = 1_000
    """Save a checkpoint every this many steps (and at the end)."""
    eval_interval: int = 500
    """Compute val/loss every this many steps (0 = never)."""
    val_fraction: float = 0.05
    """Fraction of episodes (the last ones) held out for val/loss; 0 = no validation."""
    val_batches: int = 8
    """At most this many batches per validation."""
    keep_checkpoints: int = 3
    """Keep the newest N checkpoints."""
    resume: bool = True
    """Continue from the newest checkpoint in checkpoint_dir, if any."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        check_at_least(
            {
                "batch_size": (self.batch_size, 1),
                "num_steps": (self.num_steps, 0),
                "lr": (self.lr, 0.0),
                "warmup_steps": (self.warmup_steps, 0),
                "decay_steps": (self.decay_steps, 0),
                "num_workers": (self.num_workers, 0),
                "log_interval": (self.log_interval, 1),
                "save_interval": (self.save_interval, 1),
                "eval_interval": (self.eval_interval, 0),
                "val_batches": (self.val_batches, 1),
                "keep_checkpoints": (self.keep_checkpoints, 1),
            }
        )
        if self.model.action_horizon != self.data.action_horizon:
            raise ValueError(
                f"model.action_horizon ({self.model.action_horizon}) != data.action_horizon "
                f"({self.data.action_horizon}); set both (e.g. --model.action-horizon / --data.action-horizon)"
            )
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def sft_config_for(data_name: str, **overrides: Any) -> SFTConfig:
    """The SFT config of a named data config: π0 or π0.5 (names starting with "pi05") at its horizon."""
    data = get_data_config(data_name)
    if data_name.startswith("pi05"):
        model = model_config_for(data_name, data.action_horizon)
        defaults: dict[str, Any] = {
            "lr": 5e-5,
            "warmup_steps": 10_000,
            "decay_steps": 1_000_000,
            "final_lr": 5e-5,
        }
        defaults["ema_decay"] = 0.999
    else:
        model = model_config_for(data_name, data.action_horizon)
        defaults = {}
    return SFTConfig(**{"model": model, "data": data, **defaults, **overrides})


FSDP_MESH = MeshConfig(axis_sizes=(1, -1))
"""The SFT presets' mesh: params, EMA and Adam state sharded over all devices (data axis of size 1)."""


def sft_presets() -> dict[str, tuple[str, SFTConfig]]:
    """`<data config>_sft` -> (description, config) for every named data config."""
    presets = {}
    for name in data_config_names():
        cfg = sft_config_for(
            name,
            log_dir=f"runs/{name}_sft",
            checkpoint_dir=f"checkpoints/{name}_sft",
            # FSDP over every device: data-parallel full fine-tuning needs 77.7 / 80.5 GB per device (docs/scaling.md).
            mesh=FSDP_MESH,
        )
        kind = "π0.5" if cfg.model.pi05 else "π0"
        presets[f"{name}_sft"] = (f"SFT of {kind} on {cfg.data.repo_id} ({name} data config)", cfg)
    return presets
