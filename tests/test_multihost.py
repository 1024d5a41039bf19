"""Multi-process JAX on localhost: 2 processes (jax.distributed, CPU collectives) vs 1 process.

Both runs apply two PPO update steps and then one SFT train step to the same global batches with
parameters FSDP-sharded over all devices; they must end with the same parameters (and the same SFT
loss). The 2-process run's checkpoint must restore in a 1-process run with a different mesh
(1 device instead of 2). The real trainer (`train_rl`) runs on 2 processes x 2 devices with
evaluation and video (`test_train_rl_on_two_processes`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import free_port, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multihost_worker.py"


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 900) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-4000:]


@pytest.mark.nightly
def test_two_processes_match_one_and_restore_elsewhere(tmp_path):
    """Nightly: CI runs the real trainer on two processes (test_train_rl_on_two_processes); this
    hand-built worker adds exact 1-vs-2-process equality of PPO/SFT steps and a cross-mesh restore."""
    # One process with 2 devices.
    single = _run(
        ["--out", str(tmp_path / "single.npz"), "--ckpt", str(tmp_path / "ckpt1")], subprocess_env(2)
    )
    # Two processes with 1 device each, one global mesh.
    port = free_port()
    multi = [
        _run(
            ["--out", str(tmp_path / "multi.npz"), "--ckpt", str(tmp_path / "ckpt2")],
            subprocess_env(
                1,
                {
                    "PIRL_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                    "PIRL_NUM_PROCESSES": "2",
                    "PIRL_PROCESS_ID": str(i),
                },
            ),
        )
        for i in range(2)
    ]
    _finish([single, *multi])
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=2e-6, err_msg=key)
    # The updates really moved the trainable parameters (not two untouched inits compared).
    init = np.load(tmp_path / "multi.init.npz")
    assert not np.allclose(init["model/action_out_proj/kernel"], b["model/action_out_proj/kernel"])
    np.testing.assert_array_equal(
        init["model/PaliGemma/llm/embedder/input_embedding"],
        b["model/PaliGemma/llm/embedder/input_embedding"],
    )
    # SFT: same params, loss and grad norm after one step on 2 processes as on 1; the step moved them.
    sft_one, sft_two = np.load(tmp_path / "single.sft.npz"), np.load(tmp_path / "multi.sft.npz")
    assert sorted(sft_one.files) == sorted(sft_two.files) and "metrics/loss" in sft_one.files
    for key in sft_one.files:
        np.testing.assert_allclose(sft_one[key], sft_two[key], rtol=2e-5, atol=2e-6, err_msg=key)
    assert np.isfinite(sft_two["metrics/loss"]) and sft_two["metrics/grad_norm"] > 0
    sft_init = np.load(tmp_path / "multi.sft_init.npz")
    for key in ("params/action_out_proj/kernel", "params/PaliGemma/llm/embedder/input_embedding"):
        assert not np.allclose(sft_init[key.removeprefix("params/")], sft_two[key]), key
    # Saved by 2 processes on 2 devices, restored by 1 process on 1 device.
    restore = _run(
        ["--out", str(tmp_path / "restored.npz"), "--ckpt", str(tmp_path / "ckpt2"), "--restore"],
        subprocess_env(1),
    )
    _finish([restore])
    c = np.load(tmp_path / "restored.npz")
    for key in b.files:
        np.testing.assert_array_equal(b[key], c[key], err_msg=key)


def test_each_process_reads_only_its_rows_and_resumes_exactly(tmp_path):
    """SFT's data path on 2 processes x 1 device vs 1 process x 2 devices (a LeRobot v3.0 dataset,
    episodes packed into shared files): the same global batches; each process read exactly its
    half of every batch's frames (disjoint, together the 1-process reads); a loader restored from
    each process's saved state continues with the same batch."""
    from pirl.data.lerobot_writer import write_lerobot_dataset

    rng = np.random.default_rng(0)
    episodes = [
        {
            "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 4)).astype(np.float32),
            "actions": rng.normal(size=(n, 3)).astype(np.float32),
            "task": f"task {ep % 2}",
        }
        for ep, n in enumerate((7, 9, 6, 8))
    ]
    data = write_lerobot_dataset(
        tmp_path / "ds", episodes, fps=10, codebase_version="v3.0", data_files_size_in_mb=0.002
    )
    args = ["--data", str(data)]
    single = _run(
        ["--out", str(tmp_path / "single"), "--ckpt", str(tmp_path / "ckpt1"), *args], subprocess_env(2)
    )
    port = free_port()
    multi = [
        _run(
            ["--out", str(tmp_path / "multi"), "--ckpt", str(tmp_path / "ckpt2"), *args],
            subprocess_env(
                1,
                {
                    "PIRL_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                    "PIRL_NUM_PROCESSES": "2",
                    "PIRL_PROCESS_ID": str(i),
                },
            ),
        )
        for i in range(2)
    ]
    _finish([single, *multi], timeout=300)
    one, two = np.load(tmp_path / "single.data.npz"), np.load(tmp_path / "multi.data.npz")
    assert sorted(one.files) == sorted(two.files) and "batch_0/image" in one.files
    for key in one.files:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    for key in ("image", "state", "actions", "index"):
        np.testing.assert_array_equal(one[f"resumed_batch_2/{key}"], one[f"continued_batch_2/{key}"])
    assert not np.array_equal(one["batch_0/index"], one["batch_1/index"])

    reads = {
        name: json.loads((tmp_path / f"{name}.json").read_text())
        for name in ("single.data.p0", "multi.data.p0", "multi.data.p1")
    }
    assert reads["multi.data.p0"]["rows"] == [0, 1, 2, 3] and reads["multi.data.p1"]["rows"] == [4, 5, 6, 7]
    for stage, batches in (("first", 3), ("second", 1)):
        everything = reads["single.data.p0"][stage]
        mine, theirs = reads["multi.data.p0"][stage], reads["multi.data.p1"][stage]
        assert len(everything) == 8 * batches and len(mine) == len(theirs) == 4 * batches
        assert not set(mine) & set(theirs) and sorted(mine + theirs) == sorted(everything)
    # Each global batch: rows 0-3 are frames process 0 read, rows 4-7 frames process 1 read.
    for i in range(3):
        batch = two["continued_batch_2/index" if i == 2 else f"batch_{i}/index"]
        assert set(batch[:4]) <= set(reads["multi.data.p0"]["first"])
        assert set(batch[4:]) <= set(reads["multi.data.p1"]["first"])


@pytest.mark.slow
def test_train_rl_on_two_processes(tmp_path):
    """The real trainer on 2 processes x 2 devices (tiny π0, toy_spatial MJX, one environment per
    device) for 2 global steps, evaluating with a video at steps 0 and 2: both processes finish,
    only process 0 writes the config, metrics and videos (one record per step, not two), and the
    video holds the evaluation frames gathered from both processes' devices."""
    port = free_port()
    out = tmp_path / "runs"
    procs = [
        _run(
            ["--out", str(out), "--ckpt", str(tmp_path / "unused"), "--train-rl"],
            subprocess_env(
                2,
                {
                    "PIRL_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                    "PIRL_NUM_PROCESSES": "2",
                    "PIRL_PROCESS_ID": str(i),
                },
            ),
        )
        for i in range(2)
    ]
    _finish(procs, timeout=900)
    run_dir = out / "multi"
    assert json.loads((run_dir / "config.json").read_text())["name"] == "multi"
    records = [json.loads(line) for line in (run_dir / "tb" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if "eval/success_once" in r]
    trains = [r["step"] for r in records if "train/actor/policy_loss" in r]
    assert evals == [0, 2] and trains == [1, 2]  # written once, by process 0
    assert all(np.isfinite(r["train/actor/policy_loss"]) for r in records if "train/actor/policy_loss" in r)
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert [v.split(".")[0] for v in videos] == ["eval_step000000", "eval_step000002"], videos
    assert all((run_dir / "videos" / v).stat().st_size > 0 for v in videos)
    last = json.loads((tmp_path / "runs.p0.json").read_text())["last_eval"]
    assert 0.0 <= last["eval/success_once"] <= 1.0
    assert not (tmp_path / "runs.p1.json").exists()
    assert (run_dir / "checkpoints" / "2").is_dir()
