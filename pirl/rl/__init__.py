"""RL fine-tuning: GAE / GRPO advantages, PPO losses, optimizer, rollout, update step and RL loop.

Model-independent pieces live in `advantages.py` (GAE, GRPO, normalisation, rollout metrics),
`losses.py` (PPO clipped policy / clipped-Huber value loss, entropy bonus, metrics) and `optim.py`
(AdamW with a separate value-head lr, frozen-parameter masks, gradient accumulation).
"""
