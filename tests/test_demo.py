"""The README's main job, `python -m pirl.train pi0_demo_cpu`, learns: run as the README runs it (a
fresh process on one CPU device), the evaluation success on the fixed initial states rises.
Nightly: about 9 minutes of a 2-core CPU, about half of it compiling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pirl.logging.writer import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.nightly
def test_demo_preset_raises_evaluation_success(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the tests' 8 fake devices
    cmd = [sys.executable, "-m", "pirl.train", "pi0_demo_cpu", "--run-root", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=3600)
    records = list(read_jsonl(tmp_path / "pi0_demo_cpu" / "tb" / "metrics.jsonl"))
    evals = {r["step"]: r["eval/success_once"] for r in records if "eval/success_once" in r}
    assert 0 in evals and len(evals) >= 3, evals
    assert evals[max(evals)] > evals[0], f"evaluation success did not rise: {evals}"
    rollout = [r["env/success_once"] for r in records if "env/success_once" in r]
    first, last = np.mean(rollout[:10]), np.mean(rollout[-10:])
    assert last > first, f"rollout success did not rise: first 10 steps {first:.2f}, last 10 {last:.2f}"
    assert list((tmp_path / "pi0_demo_cpu" / "videos").glob("*.mp4")), "no evaluation video written"
