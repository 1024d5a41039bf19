"""Multi-host start-up: one process per host, one global mesh (JAX's multi-controller runtime).

`initialize(DistributedConfig)` picks the cluster from the environment, in this order:
1. explicit: `--distributed.coordinator-address host:port --distributed.num-processes N
   --distributed.process-id i` (or the variables PIRL_COORDINATOR_ADDRESS, PIRL_NUM_PROCESSES,
   PIRL_PROCESS_ID, which `launch/local.sh` sets for N processes on one machine);
2. SLURM (`SLURM_JOB_ID` with more than one task): JAX's own SLURM detection;
3. Cloud TPU pods: JAX's own TPU detection (`TPU_WORKER_HOSTNAMES` / metadata server);
4. none of these: a single process, nothing to initialise.

Each host then works on its own shard only: arrays are created inside `jit` with batch-split
shardings (each host computes only its environments), and host-side data is loaded for the rows
`process_batch_rows` names and assembled with `host_local_batch_to_global`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process JAX job (all None/'auto' = detect from the environment)."""

    mode: str = "auto"
    """'auto' (explicit > SLURM > TPU pod > single), 'explicit', 'slurm', 'tpu' or 'single'."""
    coordinator_address: str | None = None
    """host:port of process 0's coordinator (explicit mode)."""
    num_processes: int | None = None
    """Total number of processes (explicit mode)."""
    process_id: int | None = None
    """This process's index in [0, num_processes) (explicit mode)."""
    local_device_ids: tuple[int, ...] | None = None
    """Restrict this process to these local devices (e.g. one GPU per process); None = all."""
    initialization_timeout_s: int = 300
    """Seconds to wait for every process to reach the coordinator."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def detect_mode(cfg: DistributedConfig, environ: dict[str, str] | None = None) -> str:
    """Which kind of cluster this process runs in (see the module docstring)."""
    env = os.environ if environ is None else environ
    if cfg.mode != "auto":
        return cfg.mode
    if cfg.coordinator_address or env.get("PIRL_COORDINATOR_ADDRESS"):
        return "explicit"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("CLOUD_TPU_TASK_ID") is not None:
        return "tpu"
    return "single"


def initialize(cfg: DistributedConfig = DistributedConfig()) -> str:
    """Join the multi-process job (idempotent); returns the mode used. Call before any JAX work."""
    mode = detect_mode(cfg)
    if mode == "single" or jax.distributed.is_initialized():
        return mode
    kwargs: dict[str, Any] = {"initialization_timeout": cfg.initialization_timeout_s}
    if cfg.local_device_ids is not None:
        kwargs["local_device_ids"] = list(cfg.local_device_ids)
    if mode == "explicit":
        address = cfg.coordinator_address or os.environ.get("PIRL_COORDINATOR_ADDRESS")
        num = cfg.num_processes if cfg.num_processes is not None else _env_int("PIRL_NUM_PROCESSES")
        pid = cfg.process_id if cfg.process_id is not None else _env_int("PIRL_PROCESS_ID")
        if not address or num is None or pid is None:
            raise ValueError(
                "explicit multi-process mode needs coordinator_address, num_processes and process_id "
                f"(got {address!r}, {num!r}, {pid!r}); set --distributed.* or PIRL_COORDINATOR_ADDRESS, "
                "PIRL_NUM_PROCESSES, PIRL_PROCESS_ID"
            )
        if not 0 <= pid < num:
            raise ValueError(f"process_id {pid} must lie in [0, num_processes={num})")
        jax.distributed.initialize(address, num_processes=num, process_id=pid, **kwargs)
    elif mode in ("slurm", "tpu"):
        jax.distributed.initialize(**kwargs)  # JAX's cluster detection fills in the rest
    else:
        raise ValueError(f"unknown distributed mode {mode!r}; use auto, explicit, slurm, tpu or single")
    log.info("joined as process %d of %d (%s)", jax.process_index(), jax.process_count(), mode)
    return mode


def describe_devices(mesh: Mesh | None = None) -> str:
    """A human-readable account of the global device layout (processes, kinds, mesh)."""
    devices = jax.devices()
    per_process = Counter(d.process_index for d in devices)
    kinds = Counter(d.device_kind for d in devices)
    lines = [
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} global devices ({', '.join(f'{n}x {k}' for k, n in kinds.items())})",
        "devices per process: " + ", ".join(f"p{p}={n}" for p, n in sorted(per_process.items())),
    ]
    if mesh is not None:
        ids = np.vectorize(lambda d: d.id)(mesh.devices)
        lines.append(f"mesh {dict(mesh.shape)}; device ids:\n{ids}")
    return "\n".join(lines)


def process_batch_rows(sharding: jax.sharding.Sharding, global_batch_size: int) -> np.ndarray:
    """The rows of a global batch [global_batch_size, ...] this process's devices hold under
    `sharding` (increasing): the rows it loads, in the order `host_local_batch_to_global` expects."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
        rows.update(range(*index[0].indices(global_batch_size)))
    return np.asarray(sorted(rows), np.int64)


def host_local_batch_to_global(
    local_batch: Any, sharding: Mesh | jax.sharding.Sharding, global_batch_size: int | None = None
) -> Any:
    """Assemble each process's rows (see `process_batch_rows`) into global arrays of
    `global_batch_size` rows (None: inferred from the sharding) split over the mesh (a Mesh:
    its batch sharding)."""
    if isinstance(sharding, Mesh):
        from pirl.distributed.mesh import batch_sharding

        sharding = batch_sharding(sharding)

    def assemble(x: Any) -> jax.Array:
        x = np.asarray(x)
        shape = None if global_batch_size is None else (global_batch_size, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(assemble, local_batch)


def process_local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array split over its leading axis (the inverse of
    `host_local_batch_to_global`: the rows of `process_batch_rows`, in order), replicas counted once."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    by_start = {(s.index[0].start or 0): s for s in x.addressable_shards} if x.ndim else {}
    if not by_start:
        return np.asarray(x.addressable_shards[0].data)
    return np.concatenate([np.asarray(by_start[k].data) for k in sorted(by_start)])


def device_put_global(tree: Any, sharding: Any) -> Any:
    """`jax.device_put` of a tree whose every leaf holds the same value on every process onto a
    sharding that may span several processes. Leaves go through host memory (a device array
    committed to one local device cannot be put on other processes' devices); PRNG key arrays keep
    their key type. `sharding`: one Sharding for every leaf, or a tree of them like `tree`."""

    def put(x: Any, sharding: jax.sharding.Sharding) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=impl)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.device_put(np.asarray(x), sharding)

    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: put(x, sharding), tree)
    return jax.tree.map(put, tree, sharding)


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process reaches `name` (the coordination service's barrier, not a device
    collective, so a process may arrive many minutes after another). No-op with one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client has no public accessor (orbax reads it the same way)

    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))


def compile_then_barrier(name: str, jitted: Any) -> Any:
    """`jitted`, but with several processes its first call compiles ahead of time and waits for every
    process before running: gloo's CPU collectives give up after 30 s when one process is still
    compiling a program the other has started. Later calls reuse the compiled program (same
    shapes and shardings every call)."""
    if jax.process_count() == 1:
        return jitted
    compiled = None

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            compiled = jitted.lower(*args, **kwargs).compile()
            barrier(f"pirl compiled {name}")
        return compiled(*args, **kwargs)

    return call
