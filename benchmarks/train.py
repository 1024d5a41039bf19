"""RL training-step throughput per phase (rollout, advantages, update), as JSON lines.

    python benchmarks/train.py                      # tiny π0, MJX env, CPU
    python benchmarks/train.py --full --num-envs 64 --image-size 224   # full π0 (bf16) on a GPU

Each line: {"phase", "seconds", "samples_per_s", ...}; the update line also reports model FLOPs
utilisation (MFU) from XLA's cost analysis against `--peak-tflops` (989 = H100 SXM bf16 dense).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn, *args, repeats: int):
    out = jax.block_until_ready(fn(*args))  # compile + warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0) / repeats


def _flops(jitted, *args) -> float | None:
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best-effort (not every backend reports it)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size π0 in bf16 (needs a GPU/TPU)")
    parser.add_argument("--env", default="toy_spatial")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--chunk-steps", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    from pirl.envs.env import make_env
    from pirl.models.config import Pi0Config
    from pirl.policies import flow_policy
    from pirl.policies.config import FlowPolicyConfig
    from pirl.policies.env_io import make_env_adapter
    from pirl.policies.masks import trainable_mask
    from pirl.rl import rollout as rollout_lib
    from pirl.rl import update as update_lib
    from pirl.rl.config import EnvSpec, RLConfig
    from pirl.rl.optim import make_optimizer

    if args.full:
        model = Pi0Config(image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
        policy = FlowPolicyConfig()
    else:
        model = Pi0Config.tiny(image_keys=("base_0_rgb", "left_wrist_0_rgb"))
        policy = FlowPolicyConfig(value_head_hidden=(64, 64))
    cfg = RLConfig(
        model=model,
        policy=policy,
        env=EnvSpec(name=args.env, num_envs=args.num_envs, image_size=args.image_size),
        chunk_steps=args.chunk_steps,
        rollout_epochs=1,
        update_epochs=1,
        global_batch_size=args.minibatch,
    )
    env = make_env(cfg.env.name, image_size=cfg.env.image_size)
    tokens = np.zeros(model.max_token_len, np.int32)
    tokens[:4] = [2, 5, 6, 7]
    adapter = make_env_adapter(
        env.prompts, lambda p: (tokens, tokens > 0), None, action_chunk=policy.action_chunk
    )
    params = jax.jit(lambda k: flow_policy.init_policy_params(policy, model, k))(jax.random.key(0))
    n = args.num_envs
    state = jax.jit(jax.vmap(env.reset_to))(jnp.zeros(n, jnp.int32), jnp.arange(n) % env.num_init_states)

    roll = jax.jit(
        lambda p, s, k: rollout_lib.rollout(
            p, adapter, s, k, env=env, policy_cfg=policy, model_cfg=model, chunk_steps=args.chunk_steps
        )
    )
    out, t_roll = _timed(roll, params, state, jax.random.key(1), repeats=args.repeats)
    env_steps = n * args.chunk_steps * policy.action_chunk
    print(
        json.dumps(
            {
                "phase": "rollout",
                "seconds": t_roll,
                "env_steps_per_s": env_steps / t_roll,
                "chunk_samples_per_s": n * args.chunk_steps / t_roll,
                "num_envs": n,
                "image_size": args.image_size,
                "full": args.full,
                "device": jax.devices()[0].device_kind,
            }
        )
    )

    adv = jax.jit(lambda tr, v: update_lib.compute_advantages(cfg, tr, v))
    (traj, _, a, r, valid), t_adv = _timed(adv, out.trajectory, out.final_value, repeats=args.repeats)
    print(
        json.dumps({"phase": "advantages", "seconds": t_adv, "samples_per_s": n * args.chunk_steps / t_adv})
    )

    batch = update_lib.flatten_transitions(traj, a, r, valid)
    num = batch.mask.shape[0]
    trainable = trainable_mask(params, policy, model)
    value_mask = {k: jax.tree.map(lambda _, k=k: k == "value_head", v) for k, v in params.items()}
    optimizer = make_optimizer(cfg.optim, trainable, value_mask)
    opt_state = jax.jit(optimizer.init)(params)
    upd = jax.jit(
        lambda p, o, s, b, k: update_lib.ppo_update(
            p, o, s, b, k, cfg=cfg, adapter=adapter, optimizer=optimizer, trainable_mask=trainable
        )
    )
    upd_args = (params, opt_state, jnp.zeros((), jnp.int32), batch, jax.random.key(2))
    flops = _flops(upd, *upd_args)
    _, t_upd = _timed(upd, *upd_args, repeats=args.repeats)
    record = {"phase": "update", "seconds": t_upd, "samples_per_s": num / t_upd, "transitions": num}
    if flops:
        record["tflops_per_s"] = flops / t_upd / 1e12
        record["mfu"] = flops / t_upd / (args.peak_tflops * 1e12)
    print(json.dumps(record))
    print(
        json.dumps(
            {
                "phase": "global_step",
                "seconds": t_roll + t_adv + t_upd,
                "samples_per_s": num / (t_roll + t_adv + t_upd),
            }
        )
    )


if __name__ == "__main__":
    main()
