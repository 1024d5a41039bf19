"""The README's main job, `python -m pirl.train pi0_demo_cpu`, learns: run as the README runs it (a
fresh process on one CPU device), the evaluation success on the fixed initial states rises.
Nightly: about 15 minutes of a 2-core CPU, most of it MJX compilation and physics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pirl.logging.writer import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.nightly
def test_demo_preset_raises_evaluation_success(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the tests' 8 fake devices
    cmd = [sys.executable, "-m", "pirl.train", "pi0_demo_cpu", "--run-root", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=3600)
    evals = {}
    for record in read_jsonl(tmp_path / "pi0_demo_cpu" / "tb" / "metrics.jsonl"):
        if "eval/success_once" in record:
            evals[record["step"]] = record["eval/success_once"]
    assert 0 in evals and len(evals) >= 3, evals
    assert evals[max(evals)] > evals[0], f"evaluation success did not rise: {evals}"
    assert list((tmp_path / "pi0_demo_cpu" / "videos").glob("*.mp4")), "no evaluation video written"
