"""Train-state checkpoints: round trip, async save, kill mid-save, corrupt latest, restore on another mesh."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from pirl.checkpoints.train_state import CheckpointRestoreError, TrainStateCheckpointer
from pirl.distributed import mesh as mesh_lib


def make_state(scale: float = 1.0):
    params = {"w": jnp.arange(32.0).reshape(8, 4) * scale, "b": jnp.full((4,), scale)}
    optimizer = optax.adamw(1e-3)
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.int32(int(scale)),
        "rng": jax.random.key(int(scale)),
    }


def assert_state_equal(a, b):
    a = jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, a
    )
    b = jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, b
    )
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_async_interval_and_retention(tmp_path):
    with TrainStateCheckpointer(tmp_path, max_to_keep=2, save_interval=2) as ckpt:
        assert ckpt.restore_latest(make_state()) is None  # fresh run
        saved = [
            step for step in range(1, 7) if ckpt.save(step, make_state(step), {"data_position": step * 10})
        ]
        assert saved == [2, 4, 6]
        assert ckpt.save(6, make_state(6), force=True) is False  # already saved (still in flight)
        ckpt.wait()
        assert ckpt.all_steps() == [4, 6]  # max_to_keep
        assert ckpt.save(7, make_state(7), {"data_position": 70}, force=True)  # forced off-interval save
        restored = ckpt.restore_latest(jax.eval_shape(make_state))
    assert restored.step == 7 and restored.metadata["data_position"] == 70 and restored.metadata["step"] == 7
    assert_state_equal(restored.state, make_state(7))
    reopened = TrainStateCheckpointer(tmp_path)
    older = reopened.restore(6, make_state())
    assert older.metadata["data_position"] == 60
    assert_state_equal(older.state, make_state(6))
    reopened.close()


def test_corrupt_latest_falls_back_with_warning(tmp_path):
    ckpt = TrainStateCheckpointer(tmp_path, max_to_keep=3)
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
    ckpt.wait()
    data_files = [p for p in (tmp_path / "2" / "state" / "d").iterdir()]
    assert data_files
    for path in data_files:  # truncate the array data of the newest checkpoint
        path.write_bytes(path.read_bytes()[:3])
    with pytest.warns(UserWarning) as caught:
        restored = ckpt.restore_latest(make_state())
    messages = [str(w.message) for w in caught]
    assert any("step 2" in m and "could not be restored" in m for m in messages), messages
    assert any("resumed from step 1" in m for m in messages), messages
    assert restored.step == 1
    assert_state_equal(restored.state, make_state(1))
    assert ckpt.all_steps() == [1]
    assert any(p.name.startswith("2.corrupt-") for p in tmp_path.iterdir())  # kept for inspection
    assert ckpt.save(2, make_state(2.0))  # the resumed run can write step 2 again
    ckpt.close()
    # A structural mismatch is not corruption: one error names the directory and every step tried,
    # and nothing is renamed.
    ckpt = TrainStateCheckpointer(tmp_path)
    with pytest.raises(CheckpointRestoreError) as error:
        ckpt.restore_latest({"something": jnp.zeros(3)})
    message = str(error.value)
    assert str(tmp_path) in message and "[2, 1]" in message and "\n" not in message, message
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from pirl.checkpoints.train_state import CheckpointRestoreError, TrainStateCheckpointer

    ckpt = TrainStateCheckpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.ones((64,))})
    ckpt.wait()
    rename = atomicity.async_path.rename

    async def die_before_commit(src, dst):
        if os.path.basename(str(dst)) == "2":  # all of step 2 is written; kill before the commit
            os._exit(17)
        return await rename(src, dst)

    atomicity.async_path.rename = die_before_commit
    ckpt.save(2, {"w": jnp.zeros((64,))})
    ckpt.wait()
    sys.exit(0)
    """
)


def test_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", **__import__("os").environ},
    )
    assert result.returncode == 17, result.stderr[-2000:]
    assert any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())  # the half-written step
    ckpt = TrainStateCheckpointer(tmp_path)
    assert ckpt.all_steps() == [1]
    restored = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((64,), jnp.float32)})
    assert restored.step == 1 and float(restored.state["w"].sum()) == 64.0
    assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())  # cleaned up on open
    assert ckpt.save(2, {"w": jnp.zeros((64,))})
    ckpt.close()


def test_restore_onto_a_different_mesh(tmp_path):
    if jax.device_count() != 8:
        pytest.skip("needs the 8 fake CPU devices set up by tests/conftest.py")
    mesh8 = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(2, 4)))
    state = make_state(3)
    shardings8 = mesh_lib.param_shardings(state, mesh8, min_size=1)
    state8 = jax.device_put(state, shardings8)
    assert state8["params"]["w"].sharding.spec == PartitionSpec("fsdp", None)
    with TrainStateCheckpointer(tmp_path) as ckpt:
        ckpt.save(3, state8)
    mesh1 = mesh_lib.make_mesh(mesh_lib.MeshConfig(axis_sizes=(1, 1)), devices=jax.devices()[:1])
    with TrainStateCheckpointer(tmp_path) as ckpt:
        restored = ckpt.restore_latest(jax.eval_shape(make_state), NamedSharding(mesh1, PartitionSpec()))
        # ... and back onto the 8-device mesh with per-leaf shardings.
        resharded = ckpt.restore(3, jax.eval_shape(make_state), shardings8)
    assert restored.state["params"]["w"].sharding.mesh.size == 1
    assert_state_equal(restored.state, make_state(3))
    assert resharded.state["params"]["w"].sharding.spec == PartitionSpec("fsdp", None)
    assert_state_equal(resharded.state, make_state(3))
