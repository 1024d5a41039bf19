"""RL fine-tuning: GAE / GRPO advantages, PPO losses, optimizer, rollout, update step and RL loop.

Model-independent pieces live in `advantages.py` (GAE, GRPO, normalisation, rollout metrics),
`losses.py` (PPO clipped policy / clipped-Huber value loss, entropy bonus, metrics) and `optim.py`
(AdamW with a separate value-head lr, frozen-parameter masks, gradient accumulation). The loop:
`rollout.py` (policy + MJX envs in one `lax.scan`), `update.py` (PPO epochs x minibatches in one
jit), `warm_start.py` (expert demos + SFT for runs from random weights), `trainer.py` (`train_rl`).
`synthetic.py` builds a tiny update on synthetic transitions for tests and benchmarks.
"""
