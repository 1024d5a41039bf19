"""pirl: online RL fine-tuning of pi0 / pi0.5 flow-matching VLA policies in JAX."""
