"""Distributed execution: `MeshConfig` and mesh presets, batch sharding, FSDP-style parameter sharding rules
(`mesh.py`), multi-host start-up (`multihost.py`), and the on-paper step cost model behind
docs/scaling.md (`cost_model.py`)."""

from pirl.distributed.mesh import (
    AUTO_FSDP,
    MESH_PRESETS,
    MeshConfig,
    batch_sharding,
    check_divisible,
    make_mesh,
    param_shardings,
    replicated,
    shard_batch,
)

__all__ = [
    "AUTO_FSDP",
    "MESH_PRESETS",
    "MeshConfig",
    "batch_sharding",
    "check_divisible",
    "make_mesh",
    "param_shardings",
    "replicated",
    "shard_batch",
]
