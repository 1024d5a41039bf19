"""Mesh construction, error messages and sharding rules on 8 fake CPU devices (see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from pirl.distributed import mesh as mesh_lib
from pirl.distributed.mesh import MeshConfig


@pytest.fixture(scope="module")
def mesh_2x4():
    if jax.device_count() != 8:
        pytest.skip("needs the 8 fake CPU devices set up by tests/conftest.py")
    return mesh_lib.make_mesh(MeshConfig(axis_sizes=(2, 4)))


def test_fill_axis_and_axis_types():
    assert MeshConfig(axis_sizes=(-1, 4)).resolve_sizes(8) == (2, 4)
    assert MeshConfig(axis_sizes=(2, -1)).resolve_sizes(8) == (2, 4)
    assert MeshConfig().resolve_sizes(8) == (8, 1)
    if jax.device_count() == 8:
        mesh = mesh_lib.make_mesh(MeshConfig(axis_sizes=(-1, 2)))
        assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
        assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
        one = mesh_lib.make_mesh(MeshConfig(axis_sizes=(1, 1)), devices=jax.devices()[:1])
        assert one.size == 1


def test_size_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"needs 6 devices but 8 are available"):
        MeshConfig(axis_sizes=(2, 3)).resolve_sizes(8)
    with pytest.raises(ValueError, match=r"multiply to 3, which does not divide the 8 devices"):
        MeshConfig(axis_sizes=(-1, 3)).resolve_sizes(8)
    with pytest.raises(ValueError, match="at most one -1"):
        MeshConfig(axis_sizes=(-1, -1)).resolve_sizes(8)
    with pytest.raises(ValueError, match="one size per name"):
        MeshConfig(axis_sizes=(8,)).resolve_sizes(8)
    with pytest.raises(ValueError, match="fsdp_axis 'model'"):
        MeshConfig(fsdp_axis="model").resolve_sizes(8)


def test_presets_are_consistent():
    expected_devices = {
        "cpu-1": 1,
        "gpu-1x8": 8,
        "gpu-2x8": 16,
        "tpu-v4-32": 16,
        "tpu-v5p-64": 32,
        "tpu-v6e-64": 64,
    }
    assert set(mesh_lib.MESH_PRESETS) == set(expected_devices)
    for name, cfg in mesh_lib.MESH_PRESETS.items():
        assert cfg.resolve_sizes(expected_devices[name]) == cfg.axis_sizes, name
    with pytest.raises(ValueError, match="needs 16 devices but 8"):
        mesh_lib.MESH_PRESETS["gpu-2x8"].resolve_sizes(8)


def test_batch_sharding_and_divisibility(mesh_2x4):
    sharding = mesh_lib.batch_sharding(mesh_2x4)
    assert sharding.spec == PartitionSpec(("data", "fsdp"))
    batch = mesh_lib.shard_batch({"obs": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh_2x4)
    assert batch["obs"].sharding.shard_shape((16, 3)) == (2, 3)
    mesh_lib.check_divisible(64, mesh_2x4, what="global_batch_size")
    with pytest.raises(
        ValueError, match=r"global_batch_size = 12 is not divisible by the 8 batch shards"
    ) as info:
        mesh_lib.check_divisible(12, mesh_2x4, what="global_batch_size")
    assert "data=2 x fsdp=4" in str(info.value) and "8 or 16" in str(info.value)


def test_auto_fsdp_param_shardings(mesh_2x4):
    params = {
        "llm": {
            "embedding": jax.ShapeDtypeStruct((1000, 64), jnp.float32),  # largest dim 1000 % 4 == 0
            "odd": jax.ShapeDtypeStruct((999, 65), jnp.float32),  # nothing divisible by 4
            "mlp": [jax.ShapeDtypeStruct((2, 64, 256), jnp.bfloat16)],  # largest dim 256
        },
        "bias": jax.ShapeDtypeStruct((256,), jnp.float32),  # small -> replicated
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    specs = mesh_lib.param_partition_specs(params, mesh_2x4, min_size=1024)
    assert specs["llm"]["embedding"] == PartitionSpec("fsdp", None)
    assert specs["llm"]["odd"] == PartitionSpec()
    assert specs["llm"]["mlp"][0] == PartitionSpec(None, None, "fsdp")
    assert specs["bias"] == PartitionSpec()
    assert specs["step"] == PartitionSpec()
    # Declarative rules win over the default, first match first; paths are '/'-joined.
    rules = [
        (r"llm/mlp/\d+$", PartitionSpec(None, "fsdp", None)),
        (r"embedding", PartitionSpec(None, "data")),
    ]
    ruled = mesh_lib.param_partition_specs(params, mesh_2x4, rules, min_size=1024)
    assert ruled["llm"]["mlp"][0] == PartitionSpec(None, "fsdp", None)
    assert ruled["llm"]["embedding"] == PartitionSpec(None, "data")
    shardings = mesh_lib.param_shardings(params, mesh_2x4, min_size=1024)
    placed = jax.jit(lambda: jnp.ones((1000, 64)), out_shardings=shardings["llm"]["embedding"])()
    assert placed.addressable_shards[0].data.shape == (250, 64)


def test_bad_rules_are_reported(mesh_2x4):
    params = {"w": jax.ShapeDtypeStruct((10, 8), jnp.float32)}
    with pytest.raises(ValueError, match=r"'w' splits a dim of size 10 .* over \('fsdp',\) = 4 devices"):
        mesh_lib.param_partition_specs(params, mesh_2x4, [("w", PartitionSpec("fsdp", None))])
    with pytest.raises(ValueError, match="not in the mesh"):
        mesh_lib.param_partition_specs(params, mesh_2x4, [("w", PartitionSpec(None, "model"))])
    with pytest.raises(ValueError, match="rank 2"):
        mesh_lib.param_partition_specs(params, mesh_2x4, [("w", PartitionSpec(None, None, "fsdp"))])


def test_mesh_for_other_device_count_fails_with_what_to_change():
    from configs import meshes

    with pytest.raises(SystemExit) as info:
        meshes.check_mesh_fits(meshes.get_mesh("tpu-v5p-64"), 8)
    message = str(info.value)
    assert "needs 32 devices but 8 are available" in message
    assert "--mesh gpu-1x8" in message and "--mesh.axis-sizes -1 8" in message
    with pytest.raises(SystemExit, match=r"no mesh preset has 2 devices.*--mesh.axis-sizes -1 2"):
        meshes.check_mesh_fits(meshes.get_mesh("gpu-2x8"), 2)
    assert meshes.check_mesh_fits(meshes.get_mesh("gpu-2x8"), 16) == (2, 8)
    assert meshes.presets_for(16) == ["gpu-2x8", "tpu-v4-32"]
    assert meshes.check_mesh_fits(MeshConfig(axis_sizes=(-1, 4)), 8) == (2, 4)


def test_train_checks_the_mesh_before_building_anything(monkeypatch):
    """`python -m pirl.train <preset> --mesh <name>` stops before run() (envs, compilation)."""
    from pirl import train

    if jax.device_count() != 8:
        pytest.skip("needs the 8 fake CPU devices set up by tests/conftest.py")

    def must_not_run(config):
        raise AssertionError("run() was reached with a mesh that does not fit the devices")

    monkeypatch.setattr(train, "run", must_not_run)
    with pytest.raises(SystemExit, match=r"(?s)needs 32 devices but 8 .*--mesh gpu-1x8"):
        train.main(["pi0_libero_ppo", "--mesh", "tpu-v5p-64"])
    monkeypatch.setattr(train, "run", lambda config: config)
    assert train.main(["pi0_demo_cpu", "--mesh", "gpu-1x8"]).mesh.axis_sizes == (1, 8)
