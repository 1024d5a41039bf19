"""Benchmark of the π0 model: sample_actions latency and training-step throughput, as JSON lines.

    python benchmarks/model.py                 # tiny config + openpi's CPU reference config, on CPU
    python benchmarks/model.py --full          # full-size π0 in bf16 (needs a GPU), with MFU

Each line is one json.dumps dict with "name", "config", "batch" and the figures. Times are the
median of `--iters` steady-state calls after compilation and one warm-up call; compile time is
reported as compile_s (compile_and_first_s for the plain-jit loss).
The "openpi_ref" config (dummy Gemma x2, SigLIP mu/14, 224x224 images, float32, batch 2) is the
one openpi's own code was measured on here: jitted loss 0.60 s, sample_actions 0.56 s.
"""

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import jax
import optax

from pirl.models import config as mcfg
from pirl.models import pi0


def _time(fn: Callable[[], object], iters: int) -> tuple[float, float]:
    """(first call incl. compile, median steady-state) seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _flops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        return float(analysis["flops"])
    except Exception:  # cost analysis is best-effort and backend dependent
        return None


def _layer_flops_per_token(g: mcfg.GemmaConfig) -> int:
    proj = g.width * g.num_heads * g.head_dim * 2 + 2 * g.width * g.num_kv_heads * g.head_dim
    return 2 * (proj + 3 * g.width * g.mlp_dim)


def analytic_flops(cfg: mcfg.Pi0Config, batch: int, prefix: bool = True, suffix_passes: int = 1) -> float:
    """Forward matmul FLOPs (2 per multiply-add): SigLIP + LLM over the prefix (if `prefix`) and the
    expert over the suffix `suffix_passes` times (attending to the whole prefix). XLA's cost analysis
    counts a scan body once, so MFU uses this count instead."""
    sig, llm, exp = cfg.siglip, cfg.llm, cfg.expert
    n_img, n_cam = cfg.tokens_per_image, len(cfg.image_keys)
    p_len, s_len = cfg.prefix_len, cfg.suffix_len
    attn_dim = llm.num_heads * llm.head_dim
    total = 0.0
    if prefix:
        vit_layer = 2 * (4 * sig.width**2 + 2 * sig.width * sig.mlp_dim) * n_img + 4 * n_img**2 * sig.width
        vit = (
            sig.depth * vit_layer
            + 2 * n_img * sig.patch_size**2 * 3 * sig.width
            + 2 * n_img * sig.width * llm.width
        )
        total += n_cam * vit
        total += llm.depth * (_layer_flops_per_token(llm) * p_len + 4 * p_len * p_len * attn_dim)
    suffix = exp.depth * (_layer_flops_per_token(exp) * s_len + 4 * s_len * (p_len + s_len) * attn_dim)
    total += suffix_passes * suffix
    return batch * total


def _inputs(cfg: mcfg.Pi0Config, batch: int):
    obs = pi0.fake_observation(cfg, batch)
    actions = jax.random.normal(jax.random.key(1), (batch, cfg.action_horizon, cfg.action_dim))
    return obs, actions


def bench_sample(name, cfg, params, batch, iters, num_steps, peak_tflops):
    obs, _ = _inputs(cfg, batch)
    fn = jax.jit(pi0.sample_actions, static_argnums=(1, 4))
    start = time.perf_counter()
    compiled = fn.lower(params, cfg, jax.random.key(0), obs, num_steps).compile()
    compile_s = time.perf_counter() - start
    _, median = _time(lambda: compiled(params, jax.random.key(0), obs), iters)
    row = dict(
        name="sample_actions",
        config=name,
        batch=batch,
        num_steps=num_steps,
        compile_s=round(compile_s, 3),
        latency_s=round(median, 4),
    )
    flops = analytic_flops(cfg, batch, prefix=True, suffix_passes=num_steps)
    row["tflops"] = round(flops / 1e12, 4)
    if peak_tflops:
        row["mfu"] = round(flops / median / (peak_tflops * 1e12), 4)
    print(json.dumps(row), flush=True)


def bench_loss(name, cfg, params, batch, iters):
    obs, actions = _inputs(cfg, batch)
    fn = jax.jit(lambda p, r, o, a: pi0.compute_loss(p, cfg, r, o, a).mean())
    first, median = _time(lambda: fn(params, jax.random.key(0), obs, actions), iters)
    print(
        json.dumps(
            dict(
                name="loss",
                config=name,
                batch=batch,
                compile_and_first_s=round(first, 3),
                latency_s=round(median, 4),
            )
        ),
        flush=True,
    )


def bench_train_step(name, cfg, params, batch, iters, peak_tflops):
    obs, actions = _inputs(cfg, batch)
    optimizer = optax.adamw(1e-4)
    opt_state = jax.jit(optimizer.init)(params)

    def step(params, opt_state, rng, obs, actions):
        loss, grads = jax.value_and_grad(lambda p: pi0.compute_loss(p, cfg, rng, obs, actions).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, opt_state, jax.random.key(0), obs, actions)
        .compile()
    )
    compile_s = time.perf_counter() - start
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(
            state["params"], state["opt"], jax.random.key(0), obs, actions
        )
        return loss

    _, median = _time(run, iters)
    row = dict(
        name="train_step",
        config=name,
        batch=batch,
        compile_s=round(compile_s, 3),
        step_s=round(median, 4),
        samples_per_s=round(batch / median, 2),
    )
    # Training = forward + backward (2x forward); remat recomputation is not counted as useful work.
    flops = 3 * analytic_flops(cfg, batch)
    row["tflops_per_step"] = round(flops / 1e12, 4)
    xla_flops = _flops(compiled)
    if xla_flops:
        row["xla_cost_analysis_tflops"] = round(xla_flops / 1e12, 4)
    if peak_tflops:
        row["mfu"] = round(flops / median / (peak_tflops * 1e12), 4)
    print(json.dumps(row), flush=True)
    return state["params"]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="full-size π0 in bf16 (GPU) instead of the CPU configs"
    )
    parser.add_argument("--pi05", action="store_true", help="benchmark π0.5 instead of π0")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="peak bf16 TFLOP/s for MFU (H100: 989)"
    )
    parser.add_argument("--iters", type=int, default=5, help="timed calls after the warm-up call")
    parser.add_argument("--num-steps", type=int, default=10, help="Euler steps of sample_actions")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--train-batch", type=int, default=None, help="train-step batch (default 32, full: 8)"
    )
    args = parser.parse_args()
    print(
        json.dumps(
            dict(
                name="env",
                backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()][:1],
                jax=jax.__version__,
            )
        ),
        flush=True,
    )

    if args.full:
        cfg = mcfg.Pi0Config(pi05=args.pi05)
        runs = [("pi05_full_bf16" if args.pi05 else "pi0_full_bf16", cfg, args.train_batch or 8)]
        peak = args.peak_tflops
    else:
        tiny = mcfg.Pi0Config.tiny(pi05=args.pi05)
        runs = [("tiny", tiny, args.train_batch or 32)]
        peak = None
    for name, cfg, train_batch in runs:
        params = pi0.init_params(cfg, jax.random.key(0))
        print(json.dumps(dict(name="params", config=name, count=pi0.param_count(params))), flush=True)
        for batch in args.sample_batches:
            bench_sample(name, cfg, params, batch, args.iters, args.num_steps, peak)
        params = bench_train_step(name, cfg, params, train_batch, args.iters, peak)
        del params

    if not args.full:
        # openpi's own code measured here: loss 0.60 s, sample_actions 0.56 s (batch 2, float32).
        ref = dataclasses.replace(
            mcfg.Pi0Config.tiny(pi05=args.pi05),
            image_resolution=(224, 224),
            vocab_size=mcfg.PALIGEMMA_VOCAB_SIZE,
            action_horizon=50,
            max_token_len=200 if args.pi05 else 48,
            remat=True,
        )
        params = pi0.init_params(ref, jax.random.key(0))
        bench_loss("openpi_ref", ref, params, 2, args.iters)
        bench_sample("openpi_ref", ref, params, 2, args.iters, args.num_steps, None)


if __name__ == "__main__":
    main()
