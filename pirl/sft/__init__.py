"""Supervised flow-matching fine-tuning (SFT) of π0 / π0.5 on LeRobot datasets.

`config.SFTConfig` (frozen, tyro-readable) and `config.sft_presets()` (`<data config>_sft`);
`train.train_sft(config)`: AdamW with warm-up + cosine decay, EMA, full fine-tuning / LoRA /
expert-only via optimizer masks, FSDP-sharded params over the mesh, TensorBoard logging, orbax
checkpoints with resume (params also in openpi's `<ckpt>/<step>/params` layout).
"""
