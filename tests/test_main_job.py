"""The README's main job as a newcomer runs it: `python -m pirl.train pi0_demo_cpu` in a fresh working
directory with the default *relative* run root (`runs/`), shortened only by command-line overrides;
then `--resume` with more steps continues from the last checkpoint; then a re-run without `--resume`
is refused before anything is built, and leaves the run as it was.

Both training runs share one persistent compilation cache, so the resumed run loads the compiled
programs instead of compiling them again.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest
from support import run_metrics, subprocess_env

from pirl.logging.writer import read_jsonl

SHORT = [
    # a few warm-start demos and SFT steps, small episodes and evaluations, 4 environments
    "--warm-start.episodes-per-task", "4",
    "--warm-start.sft-steps", "3",
    "--warm-start.batch-size", "8",
    "--env.num-envs", "4",
    "--env.max-episode-steps", "10",
    "--global-batch-size", "8",
    "--eval-episodes", "4",
    # a checkpoint, an evaluation and a video every step
    "--save-interval", "1",
    "--eval-interval", "1",
    "--video-interval", "1",
]  # fmt: skip


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _train(cwd, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pirl.train", "pi0_demo_cpu", *SHORT, *args]
    return subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(1), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_readme_main_job_from_a_fresh_directory_then_resume(tmp_path):
    work = tmp_path / "fresh_clone"
    work.mkdir()
    cache = ["--compilation-cache-dir", str(tmp_path / "xla_cache")]
    t0, c0 = time.monotonic(), _child_cpu_s()
    first = _train(work, "--total-steps", "2", *cache)
    t1, c1 = time.monotonic(), _child_cpu_s()
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = work / "runs" / "pi0_demo_cpu"  # the default, relative --run-root
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]
    metrics = run_metrics(run_dir)
    assert set(metrics) == {0, 1, 2} and all("eval/success_once" in metrics[s] for s in (0, 1, 2))
    assert "train/actor/policy_loss" in metrics[2] and "warm_start/sft_loss" in metrics[0]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "videos").glob("*.mp4")) == [
        f"eval_step{s:06d}.mp4" for s in (0, 1, 2)
    ]
    logged_before = len(list(read_jsonl(run_dir / "tb" / "metrics.jsonl")))

    resumed = _train(work, "--resume", "--total-steps", "3", *cache)
    t2, c2 = time.monotonic(), _child_cpu_s()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stderr
    new_records = list(read_jsonl(run_dir / "tb" / "metrics.jsonl"))[logged_before:]
    assert new_records and min(r["step"] for r in new_records) == 3, [r["step"] for r in new_records]
    assert "3" in {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert (run_dir / "videos" / "eval_step000003.mp4").is_file()

    # Again without --resume: refused before any environment or compilation, nothing touched.
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    refused = _train(work, "--total-steps", "3", *cache, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    err = refused.stderr.strip().splitlines()
    assert len(err) <= 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "--resume" in err[-1] and "--name" in err[-1] and str(run_dir / "checkpoints") in err[-1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert len(list(read_jsonl(run_dir / "tb" / "metrics.jsonl"))) == logged_before + len(new_records)
    print(
        f"\nmain job: first run {t1 - t0:.0f} s wall / {c1 - c0:.0f} s CPU, "
        f"resumed run {t2 - t1:.0f} s wall / {c2 - c1:.0f} s CPU"
    )
