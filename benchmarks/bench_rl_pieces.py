"""Benchmark the model-independent RL pieces; prints one JSON object per line.

    .venv/bin/python benchmarks/bench_rl_pieces.py [--params-millions 50] [--ckpt-mb 256]

Figures:
* gae / grpo: one jitted call on a LIBERO-Spatial-sized rollout (T = 48 chunk steps, B = 512 envs).
* ppo_loss: loss + grad w.r.t. log-probs/values on a token-level minibatch [2048, 5, 7].
* optimizer_update: one jitted AdamW step (clip, value-head lr, 50% frozen) over N params.
* accumulate_gradients: an MLP step with 1 vs 4 micro-batches (scan overhead).
* checkpoint: blocking time of an async save, time to commit, restore time and throughput.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pirl.checkpoints.train_state import TrainStateCheckpointer
from pirl.rl import advantages as adv
from pirl.rl import losses, optim


def timed(fn, *args, repeats: int = 5) -> tuple[float, float]:
    """(compile + first run seconds, median seconds of the next `repeats` runs)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def emit(**record) -> None:
    print(json.dumps({"device": jax.devices()[0].platform, **record}), flush=True)


def bench_advantages(num_steps: int, num_envs: int) -> None:
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.random((num_steps, num_envs)) < 0.02, jnp.float32)
    values = jnp.asarray(rng.normal(size=(num_steps + 1, num_envs)), jnp.float32)
    dones = jnp.asarray(rng.random((num_steps, num_envs)) < 0.02)

    @jax.jit
    def gae(rewards, values, dones):
        valid = adv.valid_step_mask(dones)
        a, r = adv.gae_advantages(rewards, values, dones, valid_mask=valid)
        return adv.normalize_advantages(a, valid), r

    first, median = timed(gae, rewards, values, dones)
    emit(bench="gae", T=num_steps, B=num_envs, compile_s=round(first, 4), run_ms=round(median * 1e3, 4))
    grpo = jax.jit(lambda r, d: adv.grpo_advantages(r, d, 8, filter_rewards=True))
    first, median = timed(grpo, rewards, dones)
    emit(bench="grpo", T=num_steps, B=num_envs, G=8, compile_s=round(first, 4), run_ms=round(median * 1e3, 4))


def bench_ppo_loss(n: int = 2048, chunk: int = 5, dims: int = 7, episode_weighted: bool = False) -> None:
    rng = np.random.default_rng(0)
    old = jnp.asarray(rng.normal(size=(n, chunk, dims)), jnp.float32)
    new = old + 0.1 * jnp.asarray(rng.normal(size=old.shape), jnp.float32)
    batch = {
        "advantages": jnp.asarray(rng.normal(size=n), jnp.float32),
        "mask": jnp.asarray(rng.random(n) < 0.9),
        "old_values": jnp.zeros(n),
        "returns": jnp.ones(n),
        # RLinf's per-episode weighting: max_episode_steps / episode length (1..4 here).
        "weights": jnp.asarray(rng.uniform(1.0, 4.0, n), jnp.float32) if episode_weighted else None,
    }
    cfg = losses.PPOLossConfig()

    @jax.jit
    def loss_and_grad(new, values):
        def f(new, values):
            return losses.ppo_loss(
                cfg,
                logprobs=new,
                old_logprobs=old,
                advantages=batch["advantages"],
                mask=batch["mask"],
                values=values,
                old_values=batch["old_values"],
                returns=batch["returns"],
                weights=batch["weights"],
            )

        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(new, values)

    first, median = timed(loss_and_grad, new, jnp.zeros(n))
    emit(
        bench="ppo_loss_and_grad",
        shape=[n, chunk, dims],
        episode_weighted=episode_weighted,
        compile_s=round(first, 4),
        run_ms=round(median * 1e3, 4),
    )


def bench_optimizer(params_millions: float) -> None:
    width = 2048
    rows = max(int(params_millions * 1e6 / width / 4), 1)
    params = {f"layer{i}": {"kernel": jnp.full((rows, width), 0.01, jnp.float32)} for i in range(4)}
    params["value_head"] = {"kernel": jnp.full((width, 1), 0.01, jnp.float32)}
    trainable = {f"layer{i}": {"kernel": i >= 2} for i in range(4)} | {"value_head": {"kernel": True}}
    value_head = {f"layer{i}": {"kernel": False} for i in range(4)} | {"value_head": {"kernel": True}}
    cfg = optim.OptimizerConfig()
    optimizer = optim.make_optimizer(cfg, trainable, value_head)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def step(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optim.apply_updates(params, updates, trainable), opt_state

    # Reference: optax clip + AdamW over only the trainable leaves (what the masks should cost: 0).
    subset = {k: v for k, v in params.items() if trainable[k]["kernel"]}
    plain = optax.chain(
        optax.clip_by_global_norm(cfg.clip_grad_norm),
        optax.adamw(cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )

    def plain_step(params, opt_state, grads):
        updates, opt_state = plain.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    trainable_total = sum(x.size for x in jax.tree.leaves(subset))
    for name, fn, tree, state in (
        ("optimizer_update", step, params, opt_state),
        ("optimizer_update_reference_optax_trainable_subset_only", plain_step, subset, plain.init(subset)),
    ):
        # Donate params and state as a trainer does, so XLA updates them in place.
        jitted = jax.jit(fn, donate_argnums=(0, 1))
        tree_grads = {k: v for k, v in grads.items() if k in tree}
        current = (jax.tree.map(jnp.copy, tree), state)
        start = time.perf_counter()
        current = jax.block_until_ready(jitted(*current, tree_grads))
        first = time.perf_counter() - start
        times = []
        for _ in range(3):
            start = time.perf_counter()
            current = jax.block_until_ready(jitted(*current, tree_grads))
            times.append(time.perf_counter() - start)
        emit(
            bench=name,
            params_millions=round(sum(x.size for x in jax.tree.leaves(tree)) / 1e6, 2),
            trainable_millions=round(trainable_total / 1e6, 2),
            compile_s=round(first, 3),
            run_ms=round(float(np.median(times)) * 1e3, 3),
        )


def bench_accumulation(batch: int = 1024, width: int = 512) -> None:
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(width, width)) / np.sqrt(width), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(width, 1)) / np.sqrt(width), jnp.float32),
    }
    data = {
        "x": jnp.asarray(rng.normal(size=(batch, width)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=batch), jnp.float32),
    }

    def loss_fn(p, b):
        loss = jnp.mean((jnp.tanh(b["x"] @ p["w1"]) @ p["w2"])[:, 0] - b["y"]) ** 2
        return loss, {}

    for num_micro in (1, 4):
        fn = jax.jit(lambda p, b, n=num_micro: optim.accumulate_gradients(loss_fn, p, b, n))
        first, median = timed(fn, params, data)
        emit(
            bench="accumulate_gradients",
            batch=batch,
            width=width,
            num_micro=num_micro,
            compile_s=round(first, 3),
            run_ms=round(median * 1e3, 3),
        )


def bench_checkpoint(megabytes: int) -> None:
    n = megabytes * 2**20 // 4
    state = {
        "params": {"w": jnp.ones((n // 2,), jnp.float32)},
        "opt_state": {"mu": jnp.zeros((n // 2,), jnp.float32)},
        "step": jnp.int32(0),
        "rng": jax.random.key(0),
    }
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as directory:
        ckpt = TrainStateCheckpointer(directory, max_to_keep=2)
        ckpt.save(0, state)  # warm-up (creates handlers, directories)
        ckpt.wait()
        start = time.perf_counter()
        ckpt.save(1, state, {"data_position": 1})
        blocking = time.perf_counter() - start
        ckpt.wait()
        committed = time.perf_counter() - start
        abstract = jax.eval_shape(lambda: state)
        start = time.perf_counter()
        restored = ckpt.restore_latest(abstract)
        jax.block_until_ready(restored.state)
        restore = time.perf_counter() - start
        ckpt.close()
    emit(
        bench="checkpoint",
        state_mb=megabytes,
        save_blocking_s=round(blocking, 3),
        save_commit_s=round(committed, 3),
        save_mb_per_s=round(megabytes / committed, 1),
        restore_s=round(restore, 3),
        restore_mb_per_s=round(megabytes / restore, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-steps", type=int, default=48)
    parser.add_argument("--num-envs", type=int, default=512)
    parser.add_argument("--params-millions", type=float, default=50.0)
    parser.add_argument("--ckpt-mb", type=int, default=256)
    args = parser.parse_args()
    bench_advantages(args.chunk_steps, args.num_envs)
    bench_ppo_loss()
    bench_ppo_loss(episode_weighted=True)
    bench_optimizer(args.params_millions)
    bench_accumulation()
    bench_checkpoint(args.ckpt_mb)


if __name__ == "__main__":
    main()
