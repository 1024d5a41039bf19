"""Throughput of checkpoint import / export (pirl.checkpoints): MB/s and seconds per operation.

Builds a parameter tree with the shapes of a (by default small) Pi0Config filled with random values,
then times: openpi JAX save / load (numpy and jax.Array with a sharding), openpi-PyTorch export
(float32 and bfloat16) / load, and the full-size π0 / π0.5 PyTorch key maps (eval_shape only).
Prints one JSON line per measurement.

    .venv/bin/python benchmarks/checkpoints.py [--paligemma-variant dummy] [--expert-variant dummy]
        [--siglip-variant S/14] [--vocab-size 257152] [--repeats 3] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from pirl.checkpoints import (
    export_pytorch_params,
    load_openpi_params,
    load_pytorch_params,
    pytorch_key_map,
    save_openpi_params,
)
from pirl.models import pi0
from pirl.models.config import Pi0Config


def _nbytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time over `repeats` calls (disk caches are warm after the first)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        jax.block_until_ready(result)
        best = min(best, time.perf_counter() - start)
    return best, result


def _emit(name: str, seconds: float, nbytes: int | None = None, **extra) -> None:
    record = {"benchmark": "checkpoints", "op": name, "seconds": round(seconds, 4)}
    if nbytes is not None:
        record |= {"mbytes": round(nbytes / 1e6, 1), "mb_per_s": round(nbytes / 1e6 / seconds, 1)}
    print(json.dumps(record | extra), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paligemma-variant", default="dummy")
    parser.add_argument("--expert-variant", default="dummy")
    parser.add_argument("--siglip-variant", default="S/14")
    parser.add_argument("--vocab-size", type=int, default=257_152)
    parser.add_argument("--pi05", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", type=Path, default=None, help="sentencepiece model to time tokenize()")
    args = parser.parse_args()

    cfg = Pi0Config(
        paligemma_variant=args.paligemma_variant,
        action_expert_variant=args.expert_variant,
        siglip_variant=args.siglip_variant,
        vocab_size=args.vocab_size,
        pi05=args.pi05,
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), pi0.abstract_params(cfg))
    nbytes = _nbytes(params)
    config = {
        "paligemma": cfg.paligemma_variant,
        "expert": cfg.action_expert_variant,
        "siglip": cfg.siglip_variant,
        "params": int(pi0.param_count(params)),
        "device": jax.devices()[0].platform,
    }
    print(json.dumps({"benchmark": "checkpoints", "op": "setup", **config}), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="pirl_ckpt_bench_"))
    try:

        def save():
            shutil.rmtree(workdir / "jax", ignore_errors=True)
            return save_openpi_params(params, workdir / "jax")

        seconds, _ = _timed(save, args.repeats)
        _emit("openpi_jax_save", seconds, nbytes)
        seconds, _ = _timed(lambda: load_openpi_params(workdir / "jax", expected=cfg), args.repeats)
        _emit("openpi_jax_load_numpy", seconds, nbytes)
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        seconds, _ = _timed(
            lambda: load_openpi_params(workdir / "jax", expected=cfg, sharding=sharding), args.repeats
        )
        _emit("openpi_jax_load_sharded", seconds, nbytes)

        for dtype in ("float32", "bfloat16"):
            out = workdir / f"torch_{dtype}"
            seconds, file = _timed(
                lambda out=out, dtype=dtype: export_pytorch_params(params, cfg, out, dtype=dtype),
                args.repeats,
            )
            size = file.stat().st_size
            _emit(f"pytorch_export_{dtype}", seconds, size)
            seconds, _ = _timed(lambda file=file: load_pytorch_params(file, cfg), args.repeats)
            _emit(f"pytorch_load_{dtype}", seconds, size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    for pi05 in (False, True):
        full = Pi0Config(pi05=pi05)
        seconds, key_map = _timed(lambda full=full: pytorch_key_map(pi0.abstract_params(full)), 1)
        _emit("pytorch_key_map_full_size", seconds, None, pi05=pi05, torch_keys=len(key_map))

    if args.tokenizer is not None:
        from pirl.models.tokenizer import PaligemmaTokenizer

        tokenizer = PaligemmaTokenizer(args.tokenizer, max_len=200)
        state = rng.uniform(-1, 1, 8)
        prompts = [f"put the bowl number {i} on the plate" for i in range(1000)]
        seconds, _ = _timed(lambda: [tokenizer.tokenize(p, state) for p in prompts], args.repeats)
        _emit(
            "tokenize_pi05_per_prompt",
            seconds / len(prompts),
            None,
            prompts_per_s=round(len(prompts) / seconds),
        )


if __name__ == "__main__":
    main()
