"""pirl: online RL fine-tuning of pi0 / pi0.5 flow-matching VLA policies in JAX.

Importing pirl sets two XLA CPU flags in XLA_FLAGS, each unless XLA_FLAGS already says something
about it (they only affect the CPU backend; XLA reads them when JAX starts its backends, so import
pirl before the first JAX computation):

- `--xla_cpu_use_fusion_emitters=false`: with the new fusion emitters XLA fuses MJX's
  kinematic-tree quaternion chain into one loop fusion that recomputes every parent rotation per
  output element; inside a rollout's `lax.scan` that made an 8-env LIBERO chunk step 36x slower
  on the CPU (measured: 4.3 s against 0.12 s).
- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions; dots run as XLA's own
  Eigen dot thunks): with YNNPACK's dot fusions on the intra-op thread pool, the compiled
  evaluation rollout of the demo stopped for good every 5-10 calls on a 2-core machine: every
  XLA thread idle in its pool, the caller waiting forever for the result (with or without async
  dispatch); `benchmarks/eval_stall.py` measures it.
"""

import os as _os

_CPU_FLAGS = (
    ("xla_cpu_use_fusion_emitters", "--xla_cpu_use_fusion_emitters=false"),
    ("xla_cpu_experimental_ynn_fusion_type", "--xla_cpu_experimental_ynn_fusion_type="),
)
for _name, _flag in _CPU_FLAGS:
    if _name not in _os.environ.get("XLA_FLAGS", ""):
        _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_flag}".strip()


def cpu_flags_missing() -> list[str]:
    """pirl's CPU flags that XLA_FLAGS does not carry (someone set them otherwise); [] normally."""
    flags = _os.environ.get("XLA_FLAGS", "").split()
    return [flag for _, flag in _CPU_FLAGS if flag not in flags]
