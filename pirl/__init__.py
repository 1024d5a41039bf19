"""pirl: online RL fine-tuning of pi0 / pi0.5 flow-matching VLA policies in JAX.

Importing pirl turns off XLA's new CPU fusion emitters (`--xla_cpu_use_fusion_emitters=false` in
XLA_FLAGS) unless XLA_FLAGS already says something about them. With them on, XLA fuses MJX's
kinematic-tree quaternion chain into one loop fusion that recomputes every parent rotation per
output element; inside a rollout's `lax.scan` that made an 8-env LIBERO chunk step 36x slower on
the CPU (measured: 4.3 s against 0.12 s). The flag only affects the CPU backend, and XLA reads it
when JAX starts its backends, so import pirl before the first JAX computation.
"""

import os as _os

_CPU_FLAG = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_CPU_FLAG}".strip()


def cpu_flags_in_effect() -> bool:
    """Whether XLA_FLAGS carries pirl's CPU flag (False: someone set the emitters back on)."""
    return _CPU_FLAG in _os.environ.get("XLA_FLAGS", "").split()
