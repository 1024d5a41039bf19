"""Device mesh and sharding rules.

The mesh has two axes by default: "data" (pure data parallelism: parameters replicated) and "fsdp"
(data parallelism whose parameters and optimizer state are sharded, ZeRO-3 style). The batch is
split over both axes; a parameter leaf is split along one of its dims over "fsdp".

Parameter shardings come from declarative rules, MaxText-style: an ordered list of
`(regex over the '/'-joined parameter path, spec)`; the first regex that `re.search`es the path wins,
and leaves no rule matches get `default`. A spec is a `PartitionSpec`, or `AUTO_FSDP` = "split the
largest dim that the fsdp size divides, if the leaf has at least `min_size` elements; replicate
otherwise". With the default rules every leaf is AUTO_FSDP.

```python
mesh = make_mesh(MeshConfig(axis_sizes=(-1, 4)))     # 8 devices -> data=2, fsdp=4
shardings = param_shardings(jax.eval_shape(init, rng), mesh)
params = jax.jit(init, out_shardings=shardings)(rng)
check_divisible(global_batch_size, mesh, what="rl.global_batch_size")
batch = jax.device_put(batch, batch_sharding(mesh))
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pirl.errors import UserError

PyTree = Any

AUTO_FSDP = "auto_fsdp"
"""Rule spec: shard the leaf's largest fsdp-divisible dim (if it is large enough), else replicate."""

DEFAULT_MIN_SHARD_SIZE = 2**16
"""Leaves with fewer elements are replicated by AUTO_FSDP: splitting them saves little and costs
a gather per use."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Logical device mesh: axis names and sizes (-1 on one axis = all remaining devices)."""

    axis_names: tuple[str, ...] = ("data", "fsdp")
    """Names of the mesh axes; the batch is split over all of them."""
    axis_sizes: tuple[int, ...] = (-1, 1)
    """Size of each axis; at most one may be -1, meaning the device count over the others."""
    fsdp_axis: str = "fsdp"
    """Axis over which parameters and optimizer state are sharded."""
    explicit_axes: bool = False
    """Use JAX's Explicit axis types (sharding in types); False = Auto (classic GSPMD propagation)."""

    def resolve_sizes(self, num_devices: int) -> tuple[int, ...]:
        """Axis sizes with the -1 filled in; raises naming the numbers if they don't fit the devices."""
        if len(self.axis_names) != len(self.axis_sizes):
            raise ValueError(
                f"MeshConfig has {len(self.axis_names)} axis names {self.axis_names} but "
                f"{len(self.axis_sizes)} sizes {self.axis_sizes}; give one size per name"
            )
        if len(set(self.axis_names)) != len(self.axis_names):
            raise ValueError(f"mesh axis names must be distinct; got {self.axis_names}")
        if self.fsdp_axis not in self.axis_names:
            raise ValueError(f"fsdp_axis {self.fsdp_axis!r} is not one of the mesh axes {self.axis_names}")
        fills = [i for i, s in enumerate(self.axis_sizes) if s == -1]
        if len(fills) > 1 or any(s == 0 or s < -1 for s in self.axis_sizes):
            raise ValueError(
                f"mesh axis sizes {self.axis_sizes} are invalid: use positive sizes and at most one -1"
            )
        described = " x ".join(f"{n}={s}" for n, s in zip(self.axis_names, self.axis_sizes, strict=True))
        fixed = math.prod(s for s in self.axis_sizes if s != -1)
        if fills:
            if num_devices % fixed:
                raise ValueError(
                    f"mesh {described}: the fixed axes multiply to {fixed}, which does not divide the "
                    f"{num_devices} devices; choose sizes whose product divides {num_devices}"
                )
            sizes = list(self.axis_sizes)
            sizes[fills[0]] = num_devices // fixed
            return tuple(sizes)
        if fixed != num_devices:
            raise ValueError(
                f"mesh {described} needs {fixed} devices but {num_devices} are available; change the "
                f"sizes so they multiply to {num_devices}, or set one of them to -1"
            )
        return tuple(self.axis_sizes)


MESH_PRESETS: dict[str, MeshConfig] = {
    # One device (CPU tests, a single GPU).
    "cpu-1": MeshConfig(axis_sizes=(1, 1)),
    # One host with 8 GPUs: shard params/optimizer over all 8.
    "gpu-1x8": MeshConfig(axis_sizes=(1, 8)),
    # Two hosts with 8 GPUs each: FSDP within a host (NVLink), data parallel across hosts.
    "gpu-2x8": MeshConfig(axis_sizes=(2, 8)),
    # TPU v4-32: 16 chips.
    "tpu-v4-32": MeshConfig(axis_sizes=(2, 8)),
    # TPU v5p-64: 32 chips.
    "tpu-v5p-64": MeshConfig(axis_sizes=(4, 8)),
    # TPU v6e-64: 64 chips with 32 GiB HBM each; fsdp=8 holds pi0 params + AdamW state.
    "tpu-v6e-64": MeshConfig(axis_sizes=(8, 8)),
}
"""Named meshes; each fixes its sizes, so running on the wrong machine fails with the device count."""


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """Build the mesh over `devices` (default: all devices of all processes) with `jax.make_mesh`."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = cfg.resolve_sizes(len(devices))
    axis_type = AxisType.Explicit if cfg.explicit_axes else AxisType.Auto
    return jax.make_mesh(sizes, cfg.axis_names, (axis_type,) * len(sizes), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dim is split over (all of them)."""
    return tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for arrays with a leading batch dim split over every mesh axis (rest replicated)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


@contextlib.contextmanager
def tracing_on(mesh: Mesh) -> Iterator[None]:
    """Make `mesh` the context mesh of the code traced inside (works inside `jit`, where
    `jax.set_mesh` is refused), so that `constrain_batch` acts. `jit_on_mesh` puts every program
    the trainers compile under it; a function jitted on its own can use it in its body."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def jit_on_mesh(fun: Callable[..., Any], mesh: Mesh, **jit_kwargs: Any) -> Any:
    """`jax.jit(fun, **jit_kwargs)` whose every trace (call, `.lower`, `.trace`) runs under
    `tracing_on(mesh)`: the one way pirl's training programs (RL collect / update / evaluate, the
    SFT step) get the model's batch constraints, whoever calls or lowers them."""

    @functools.wraps(fun)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with tracing_on(mesh):
            return fun(*args, **kwargs)

    return jax.jit(traced, **jit_kwargs)


def constrain_batch(x: PyTree) -> PyTree:
    """Pin the leading (batch) dim of every leaf of `x` to the batch axes of the mesh the trace runs
    under (`tracing_on` / `jit_on_mesh`, or `with jax.set_mesh(mesh):` around it), the rest
    replicated; a no-op without one, or for a leaf whose batch dim does not split evenly. Axes that
    are manual at this point (inside a `shard_map` over them) are already split and left out.

    Model code calls this on its activations so that, under FSDP, the partitioner gathers the
    weights instead of gathering a micro-batch's activations and splitting the matmuls over the
    weights' sharded dims (which all-reduces activations: see docs/scaling.md).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t != AxisType.Manual)
    if not axes:
        return x
    shards = math.prod(mesh.shape[a] for a in axes)

    def pin(leaf):
        if leaf.ndim == 0 or leaf.shape[0] % shards:
            return leaf
        return jax.lax.with_sharding_constraint(leaf, PartitionSpec(axes))

    return jax.tree.map(pin, x)


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raise a UserError naming `what` unless `batch_size` splits evenly over the mesh's batch axes."""
    shards = math.prod(mesh.shape[a] for a in batch_axes(mesh))
    if batch_size % shards:
        layout = " x ".join(f"{a}={mesh.shape[a]}" for a in batch_axes(mesh))
        lower, upper = (batch_size // shards) * shards, (batch_size // shards + 1) * shards
        suggestion = f"{upper}" if lower == 0 else f"{lower} or {upper}"
        raise UserError(
            f"{what} = {batch_size} is not divisible by the {shards} batch shards of the mesh "
            f"({layout}); set {what} to a multiple of {shards} (e.g. {suggestion}) or change the mesh"
        )


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Place a host batch (leading dim = global batch) onto the mesh, split over the batch axes.

    Single-process only; with several processes each one should build its part with
    `jax.make_array_from_process_local_data`.
    """
    sharding = batch_sharding(mesh)
    for x in jax.tree.leaves(batch):
        check_divisible(np.shape(x)[0], mesh, what="the batch's leading dim")
    return jax.device_put(batch, sharding)


def path_to_string(path: Sequence[Any]) -> str:
    """'/'-joined names of a key path: `params/PaliGemma/llm/layers/mlp/gating_einsum`."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def auto_fsdp_spec(shape: Sequence[int], fsdp_size: int, fsdp_axis: str, min_size: int) -> PartitionSpec:
    """Split the largest dim divisible by `fsdp_size` (ties: the last one); replicate small leaves."""
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [(dim, i) for i, dim in enumerate(shape) if dim % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    spec = [None] * len(shape)
    spec[axis] = fsdp_axis
    return PartitionSpec(*spec)


def _check_spec(path: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ValueError(
            f"sharding rule for {path!r} gives {spec} but the leaf has rank {len(shape)} {tuple(shape)}"
        )
    for dim, axes in zip(shape, spec, strict=False):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        unknown = [a for a in names if a not in mesh.shape]
        if unknown:
            raise ValueError(
                f"sharding rule for {path!r} names axes {unknown} not in the mesh {dict(mesh.shape)}"
            )
        shards = math.prod(mesh.shape[a] for a in names)
        if dim % shards:
            raise ValueError(
                f"sharding rule for {path!r} splits a dim of size {dim} (shape {tuple(shape)}) over "
                f"{names} = {shards} devices, which does not divide it; change the rule or the mesh"
            )


def param_partition_specs(
    abstract_params: PyTree,
    mesh: Mesh,
    rules: Sequence[tuple[str, PartitionSpec | str]] = (),
    *,
    default: PartitionSpec | str = AUTO_FSDP,
    fsdp_axis: str = "fsdp",
    min_size: int = DEFAULT_MIN_SHARD_SIZE,
) -> PyTree:
    """PartitionSpecs for a params tree (leaves: arrays or `jax.ShapeDtypeStruct`s), per the rules."""
    if fsdp_axis not in mesh.shape:
        raise ValueError(f"fsdp_axis {fsdp_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
    fsdp_size = mesh.shape[fsdp_axis]

    def spec_for(key_path, leaf):
        path = path_to_string(key_path)
        shape = tuple(np.shape(leaf))
        spec = next((s for pattern, s in compiled if pattern.search(path)), default)
        if isinstance(spec, str):
            if spec != AUTO_FSDP:
                raise ValueError(f"unknown rule spec {spec!r} for {path!r}; use a PartitionSpec or AUTO_FSDP")
            return auto_fsdp_spec(shape, fsdp_size, fsdp_axis, min_size)
        _check_spec(path, shape, spec, mesh)
        return spec

    return jax.tree_util.tree_map_with_path(spec_for, abstract_params)


def param_shardings(
    abstract_params: PyTree,
    mesh: Mesh,
    rules: Sequence[tuple[str, PartitionSpec | str]] = (),
    *,
    default: PartitionSpec | str = AUTO_FSDP,
    fsdp_axis: str = "fsdp",
    min_size: int = DEFAULT_MIN_SHARD_SIZE,
) -> PyTree:
    """NamedShardings for a params tree (FSDP by default). See `param_partition_specs`.

    Also fits optimizer states: `param_shardings(jax.eval_shape(opt.init, abstract_params), mesh)`
    shards the Adam moments like their parameters (same shapes), and replicates scalars.
    """
    specs = param_partition_specs(
        abstract_params, mesh, rules, default=default, fsdp_axis=fsdp_axis, min_size=min_size
    )
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
