"""Data-pipeline and SFT-step throughput; prints one JSON object per line.

1. Loader frames/s: frames read (PNG-in-parquet or mp4 video; LeRobot v2.1 and v3.0), decoded,
   transformed with the pi0_libero pipeline (repack, delta actions, z-score, resize-with-pad,
   tokenise, pad) and batched, for 1 and 2 worker threads, at the full-size 224x224 (and, with
   `--tiny-resolution`, at the tiny model's).
2. Per-host bytes read in a simulated 2-process job: a second dataset of many short episodes
   (LIBERO-like: a batch touches few frames of each episode); one process reading whole global
   batches vs two processes each reading its rows (`BatchLoader(rows=...)`), counted with
   /proc/self/io (rchar: bytes of every read call) over the same global batches, the image cache
   off (at LIBERO's size a random batch misses any cache). `ratio` = per-host / one process.
3. Tiny-model SFT step samples/s (jitted train step, compile excluded).
4. Loader-vs-step: SFT steps fed by the loader (2 workers) vs the same steps on one pre-loaded
   batch; `loader_overhead` near 0 means the loader is not the bottleneck.

Usage: `python benchmarks/data.py [--frames 256] [--steps 10] [--skip-video]`. The datasets are
LIBERO-shaped (two 256x256 cameras, state 8, actions 7) and are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


def make_dataset(
    root: Path, num_frames: int, use_videos: bool, version: str, image_size: int = 256, per_episode: int = 64
) -> Path:
    from pirl.data.lerobot_writer import write_lerobot_dataset

    rng = np.random.default_rng(0)
    episodes = []
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    for ep in range(max(1, num_frames // per_episode)):
        t = np.arange(per_episode)
        # Smooth, moving images (compress like camera frames rather than like noise).
        frames = np.stack(
            [np.stack([(xx + 3 * i) % 256, (yy + ep * 7) % 256, ((xx + yy) // 2 + i) % 256], -1) for i in t]
        ).astype(np.uint8)
        episodes.append(
            {
                "image": frames,
                "wrist_image": frames[:, ::-1],
                "state": rng.normal(size=(per_episode, 8)).astype(np.float32),
                "actions": rng.normal(size=(per_episode, 7)).astype(np.float32),
                "task": f"pick up the object number {ep % 5} and place it on the plate",
            }
        )
    return write_lerobot_dataset(root, episodes, fps=10, use_videos=use_videos, codebase_version=version)


def bytes_read() -> int:
    """Bytes this process has read with read-like system calls (Linux /proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def make_tokenizer(path: Path, max_len: int):
    import sentencepiece

    from pirl.models.tokenizer import PaligemmaTokenizer

    words = [
        "pick",
        "up",
        "the",
        "object",
        "number",
        "and",
        "place",
        "it",
        "on",
        "plate",
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    rng = random.Random(0)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)),
        model_writer=proto,
        vocab_size=60,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        minloglevel=2,
    )
    path.write_bytes(proto.getvalue())
    return PaligemmaTokenizer(path, max_len=max_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="frames in the throughput datasets")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed SFT steps")
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--tiny-resolution", action="store_true", help="also time at the tiny model's size")
    parser.add_argument("--bytes-frames", type=int, default=1024, help="frames in the bytes-read dataset")
    parser.add_argument("--bytes-batches", type=int, default=16, help="global batches of the bytes-read job")
    args = parser.parse_args()

    import jax

    from pirl.data import configs
    from pirl.data.lerobot import LeRobotDataset
    from pirl.data.loader import BatchLoader
    from pirl.data.normalize import NormStats
    from pirl.models.config import Pi0Config

    tmp = Path(tempfile.mkdtemp(prefix="pirl_bench_"))
    log(
        bench="setup",
        cpu_count=os.cpu_count(),
        devices=[str(d) for d in jax.devices()][:2],
        jax=jax.__version__,
    )
    tiny = Pi0Config.tiny(action_horizon=10)
    tokenizer = make_tokenizer(tmp / "tok.model", tiny.max_token_len)
    stats = {
        "state": NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8)),
        "actions": NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7)),
    }
    data_cfg = configs.get_data_config("pi0_libero", action_horizon=tiny.action_horizon)
    deltas = {"actions": [t / 10 for t in range(tiny.action_horizon)]}

    def transform_for(dataset: LeRobotDataset, resolution: tuple[int, int]):
        return configs.make_transforms(
            data_cfg,
            model_action_dim=32,
            image_resolution=resolution,
            tasks=dataset.tasks,
            norm_stats=stats,
            tokenizer=tokenizer,
        )

    def loader_for(root: Path, resolution: tuple[int, int], workers: int, **kwargs) -> BatchLoader:
        dataset = LeRobotDataset(root, delta_timestamps=deltas, **kwargs)
        transform = transform_for(dataset, resolution)
        return BatchLoader(dataset, transform, args.batch_size, seed=0, num_workers=workers)

    storages = [("parquet_png", False)] + ([] if args.skip_video else [("mp4_video", True)])
    versions = ("v2.1", "v3.0")
    roots = {}
    for name, use_videos in storages:
        for version in versions:
            start = time.perf_counter()
            roots[name, version] = make_dataset(tmp / f"{name}_{version}", args.frames, use_videos, version)
            log(
                bench="write_dataset",
                storage=name,
                version=version,
                frames=args.frames,
                seconds=round(time.perf_counter() - start, 2),
            )

    resolutions = [(224, 224)] + ([tiny.image_resolution] if args.tiny_resolution else [])
    for (name, version), root in roots.items():
        for resolution in resolutions:
            for workers in (1, 2):
                with loader_for(root, resolution, workers) as loader:
                    num_batches = max(4, args.frames // args.batch_size // 2)
                    next(loader.batches(1))  # warm the page cache / codec
                    start = time.perf_counter()
                    for _ in loader.batches(num_batches):
                        pass
                    seconds = time.perf_counter() - start
                log(
                    bench="loader",
                    storage=name,
                    version=version,
                    resolution=list(resolution),
                    num_workers=workers,
                    batch_size=args.batch_size,
                    frames_per_s=round(num_batches * args.batch_size / seconds, 1),
                )

    # --- per-host bytes read: 1 process vs each of 2 processes, over the same global batches.
    half = args.batch_size // 2
    for name, use_videos in storages:
        for version in versions:
            root = make_dataset(
                tmp / f"bytes_{name}_{version}", args.bytes_frames, use_videos, version, per_episode=16
            )
            per_process = {}
            for label, rows in (
                ("one_process", None),
                ("process_0", range(half)),
                ("process_1", range(half, args.batch_size)),
            ):
                before = bytes_read()
                dataset = LeRobotDataset(root, delta_timestamps=deltas, image_cache_mb=0)
                opened = bytes_read() - before
                with BatchLoader(
                    dataset,
                    transform_for(dataset, (224, 224)),
                    args.batch_size,
                    seed=0,
                    num_workers=0,
                    rows=rows,
                ) as loader:
                    before = bytes_read()
                    for _ in loader.batches(args.bytes_batches):
                        pass
                    per_process[label] = (bytes_read() - before, opened)
            host = (per_process["process_0"][0] + per_process["process_1"][0]) / 2
            log(
                bench="bytes_per_host",
                storage=name,
                version=version,
                frames=args.bytes_frames,
                frames_per_episode=16,
                global_batch_size=args.batch_size,
                global_batches=args.bytes_batches,
                one_process_mb=round(per_process["one_process"][0] / 2**20, 2),
                process_0_mb=round(per_process["process_0"][0] / 2**20, 2),
                process_1_mb=round(per_process["process_1"][0] / 2**20, 2),
                ratio=round(host / per_process["one_process"][0], 3),
                dataset_open_mb=round(per_process["one_process"][1] / 2**20, 2),
            )

    # --- tiny SFT step, and the loader feeding it.
    import jax.numpy as jnp

    from pirl.distributed.mesh import MeshConfig
    from pirl.models import pi0
    from pirl.sft.config import SFTConfig
    from pirl.sft.train import make_optimizer, make_train_step, trainable_mask

    cfg = SFTConfig(
        model=tiny,
        data=data_cfg,
        batch_size=args.batch_size,
        warmup_steps=0,
        mesh=MeshConfig(),
        ema_decay=0.99,
    )
    params = jax.jit(lambda r: pi0.init_params(tiny, r))(jax.random.PRNGKey(0))
    mask = trainable_mask(params)
    tx = make_optimizer(cfg, mask)
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(1),
        "step": jnp.int32(0),
        "ema_params": jax.tree.map(jnp.copy, params),
    }
    step = jax.jit(make_train_step(cfg, tx, mask), donate_argnums=0)
    with loader_for(roots["parquet_png", "v2.1"], tiny.image_resolution, 2) as loader:
        batches = loader.device_batches()
        fixed = next(batches)
        start = time.perf_counter()
        state, metrics = step(state, fixed)
        jax.block_until_ready(metrics)
        log(bench="sft_compile", seconds=round(time.perf_counter() - start, 1))
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, fixed)
        jax.block_until_ready(metrics)
        step_seconds = (time.perf_counter() - start) / args.steps
        log(
            bench="sft_step_tiny",
            batch_size=args.batch_size,
            seconds_per_step=round(step_seconds, 3),
            samples_per_s=round(args.batch_size / step_seconds, 1),
        )
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, next(batches))
        jax.block_until_ready(metrics)
        fed_seconds = (time.perf_counter() - start) / args.steps
    log(
        bench="sft_step_tiny_with_loader",
        num_workers=2,
        seconds_per_step=round(fed_seconds, 3),
        samples_per_s=round(args.batch_size / fed_seconds, 1),
        loader_overhead=round(fed_seconds / step_seconds - 1, 3),
    )


if __name__ == "__main__":
    main()
