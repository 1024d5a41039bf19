"""Cost of the flow policy's rollout sampling and PPO rescoring, relative to one `pi0.sample_actions`.

    .venv/bin/python benchmarks/policy.py               # tiny π0 on CPU
    .venv/bin/python benchmarks/policy.py --full        # full-size π0 (bfloat16) on the accelerator

Prints one JSON object per line: for each measured function the median wall time over `iters`
calls (after one compile call) and its ratio to `sample_actions` with the same K. The
single-step Flow-SDE rescore should cost about one prefix pass plus one expert pass ("prefill" +
"expert_step"), not K expert passes; the joint Flow-Noise rescore pays K expert passes.
"""

import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from pirl.models import pi0
from pirl.models.config import Pi0Config
from pirl.policies import flow_policy
from pirl.policies.config import FlowPolicyConfig


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    full: bool = False
    """Full-size π0 (gemma_2b + gemma_300m, So400m, bfloat16) instead of the tiny test model."""
    batch: int = 0
    """Observations per call; 0 means 8 for the tiny model and 32 for the full one."""
    num_steps: int = 4
    """Denoise steps K."""
    iters: int = 5
    """Timed calls per function (after one warm-up call that compiles)."""


def _time(iters: int, fn, *args) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of the timed calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _observation(cfg: Pi0Config, batch: int) -> pi0.Observation:
    rng = np.random.default_rng(0)
    h, w = cfg.image_resolution
    prompt_mask = np.zeros((batch, cfg.max_token_len), bool)
    prompt_mask[:, : cfg.max_token_len // 2] = True
    return pi0.Observation(
        images={k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in cfg.image_keys},
        image_masks={k: jnp.ones((batch,), bool) for k in cfg.image_keys},
        state=jnp.asarray(rng.normal(size=(batch, cfg.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(np.where(prompt_mask, 7, 0), jnp.int32),
        tokenized_prompt_mask=jnp.asarray(prompt_mask),
    )


def main(args: Args) -> None:
    model_cfg = Pi0Config(remat=False) if args.full else Pi0Config.tiny()
    batch = args.batch or (32 if args.full else 8)
    k = args.num_steps
    model_params = jax.jit(pi0.init_params, static_argnums=0)(model_cfg, jax.random.key(0))
    obs = _observation(model_cfg, batch)
    common = dict(batch=batch, num_steps=k, full=args.full, device=str(jax.devices()[0].device_kind))

    def emit(name: str, first: float, median: float, reference: float | None) -> None:
        row = dict(bench=name, **common, compile_and_first_s=round(first, 4), median_s=round(median, 5))
        if reference:
            row["ratio_to_sample_actions"] = round(median / reference, 3)
        print(json.dumps(row), flush=True)

    sample_actions = jax.jit(lambda p, o: pi0.sample_actions(p, model_cfg, jax.random.key(1), o, num_steps=k))
    first, reference = _time(args.iters, sample_actions, model_params, obs)
    emit("sample_actions", first, reference, None)

    prefill = jax.jit(lambda p, o: pi0.prefill(p, model_cfg, o))
    emit("prefill", *_time(args.iters, prefill, model_params, obs), reference)
    cache = prefill(model_params, obs)
    x = jnp.zeros((batch, model_cfg.action_horizon, model_cfg.action_dim), jnp.float32)
    expert = jax.jit(lambda p, c, s, x: pi0.predict_velocity(p, model_cfg, c, s, x, jnp.full((batch,), 0.5)))
    emit("expert_step", *_time(args.iters, expert, model_params, cache, obs.state, x), reference)

    recipes = {
        "flow_sde_single": FlowPolicyConfig(num_steps=k),
        "flow_noise_joint": FlowPolicyConfig.flow_noise(num_steps=k),
    }
    for name, policy_cfg in recipes.items():
        params = flow_policy.init_policy_params(
            policy_cfg, model_cfg, jax.random.key(2), model_params=model_params
        )
        sample = jax.jit(
            lambda p, r, o, c=policy_cfg: flow_policy.sample(p, c, model_cfg, r, o, mode="train")
        )
        emit(f"sample/{name}", *_time(args.iters, sample, params, jax.random.key(3), obs), reference)
        out = sample(params, jax.random.key(3), obs)
        rescore = jax.jit(
            lambda p, o, ch, ix, c=policy_cfg: flow_policy.log_prob_and_value(p, c, model_cfg, o, ch, ix)
        )
        emit(
            f"log_prob_and_value/{name}",
            *_time(args.iters, rescore, params, obs, out.chain, out.denoise_index),
            reference,
        )

        def loss(p, o, ch, ix, old, c=policy_cfg):
            log_probs, entropy, value = flow_policy.log_prob_and_value(p, c, model_cfg, o, ch, ix)
            ratio = jnp.exp(log_probs - old)
            return -jnp.mean(ratio) + jnp.mean(jnp.square(value)) - 0.005 * jnp.mean(entropy)

        grad = jax.jit(jax.value_and_grad(loss))
        emit(
            f"log_prob_and_value_grad/{name}",
            *_time(args.iters, grad, params, obs, out.chain, out.denoise_index, out.log_probs),
            reference,
        )
        del params, out


if __name__ == "__main__":
    main(tyro.cli(Args))
