"""pirl: online RL fine-tuning of pi0 / pi0.5 flow-matching VLA policies in JAX.

Importing pirl sets two XLA CPU flags in XLA_FLAGS, each unless XLA_FLAGS already says something
about it (they only affect the CPU backend; XLA reads them when JAX starts its backends, so import
pirl before the first JAX computation):

- `--xla_cpu_use_fusion_emitters=false`: with the new fusion emitters XLA fuses MJX's
  kinematic-tree quaternion chain into one loop fusion that recomputes every parent rotation per
  output element; inside a rollout's `lax.scan` that made an 8-env LIBERO chunk step 36x slower
  on the CPU (measured: 4.3 s against 0.12 s).
- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions; dots run as XLA's own
  Eigen dot thunks): with a two-thread XLA pool the demo's compiled evaluation rollout stalled for
  good after 6, 6 and 9 calls with YNNPACK's dot fusions, after 42 without them. The stall itself
  is avoided by `create_backends` below (a pool of one thread on CPU-only installs).
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


def _accelerator_plugins_installed() -> bool:
    """Whether a JAX accelerator plugin (CUDA, ROCm, TPU) is installed, found without starting JAX."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("jax_plugins") is not None or importlib.util.find_spec("libtpu") is not None:
        return True
    return any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))


def create_backends() -> None:
    """Start JAX's backends now, with XLA's CPU thread pool limited to `PIRL_XLA_CPU_THREADS`
    threads (default 1; 0 = XLA's own choice, one per schedulable CPU) when no accelerator plugin
    is installed. Call it before the first JAX computation (after `jax.distributed.initialize`).

    Why: on a 2-core machine a compiled MJX rollout stalled for good every 5-40 calls with two
    pool threads (every XLA thread idle, the result never ready; with or without async dispatch,
    YNNPACK or parallel loop partitions), and never with one (`benchmarks/eval_stall.py`). The
    stacks (gdb, docs/libero_mjx.md) show why: MJX's Newton solver factorises with `cho_factor`,
    vmapped a batched LAPACK `potrf`, and jaxlib 0.10's batched LAPACK kernels split the batch onto
    the same pool and block a pool thread until the chunks finish; with as many kernels in flight
    as pool threads, no thread is left to run the chunks (reported fixed in jaxlib >= 0.11.1). XLA
    sizes its pool from the CPUs it may run on, so the pool is created while this thread runs on
    `PIRL_XLA_CPU_THREADS` of them; the thread's own CPUs are restored right after."""
    import jax

    threads = int(_os.environ.get("PIRL_XLA_CPU_THREADS", "1"))
    cpus = _os.sched_getaffinity(0) if hasattr(_os, "sched_getaffinity") else set()
    if threads <= 0 or threads >= len(cpus) or _accelerator_plugins_installed():
        jax.devices()
        return
    _os.sched_setaffinity(0, set(sorted(cpus)[:threads]))
    try:
        jax.devices()
    finally:
        _os.sched_setaffinity(0, cpus)
