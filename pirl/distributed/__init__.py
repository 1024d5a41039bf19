"""Distributed execution: `MeshConfig` and mesh presets, batch sharding, FSDP-style parameter sharding rules."""

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
