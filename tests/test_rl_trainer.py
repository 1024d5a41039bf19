"""The RL trainer end to end on a tiny π0 and a short MJX episode: an interrupted run resumed from
its emergency checkpoint logs the same next metrics as an uninterrupted run.

MJX physics compiles for about a minute per program on a 2-core CPU, so the runs share one
persistent compilation cache: only the first run compiles; the resumed runs load the programs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

import numpy as np
import pytest
from support import TINY_RL_MAX_STEPS, flat_color_render, run_metrics, tiny_rl_config

from pirl.envs import make_env
from pirl.errors import run_cli
from pirl.rl import trainer

MAX_STEPS = TINY_RL_MAX_STEPS


def _config(tmp_path, name: str, total_steps: int, **overrides):
    # eval_interval 0: the evaluation program would be one more MJX compile
    return tiny_rl_config(
        tmp_path / "runs", name, tmp_path / "xla_cache", total_steps=total_steps, eval_interval=0, **overrides
    )


@pytest.fixture(scope="module")
def env():
    # One environment per fake CPU device (the batch is sharded over the 8-device mesh).
    return make_env("toy_spatial", image_size=28, render_fn=flat_color_render, max_steps=MAX_STEPS)


@pytest.mark.slow
def test_interrupted_run_resumes_with_the_same_nextrun_metrics(env, tmp_path, monkeypatch):
    full = _config(tmp_path, "full", total_steps=3)
    trainer.train_rl(full, env=env)
    reference = run_metrics(tmp_path / "runs" / "full")
    assert {1, 2, 3} <= set(reference)
    assert (
        sorted(p.name for p in (tmp_path / "runs" / "full" / "checkpoints").iterdir() if p.name.isdigit())[-1]
        == "3"
    )

    # SIGTERM (SLURM, preemption, `timeout`) the second run while it logs step 2, before step 2's
    # regular checkpoint is written: as on Ctrl-C the emergency save must keep step 2's state, the
    # command exit 143, and --resume carry on from it.
    original = trainer.MetricWriter.scalars

    def interrupting_scalars(self, metrics, step):
        if step == 2 and "train/actor/policy_loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)  # run_cli's handler raises in this (main) thread
        return original(self, metrics, step)

    monkeypatch.setattr(trainer.MetricWriter, "scalars", interrupting_scalars)
    monkeypatch.setattr(sys, "argv", ["pirl.train"])
    cut = _config(tmp_path, "cut", total_steps=3)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: trainer.train_rl(cut, env=env))
    assert stop.value.code == 128 + signal.SIGTERM
    monkeypatch.setattr(trainer.MetricWriter, "scalars", original)
    run_dir = tmp_path / "runs" / "cut"
    assert (run_dir / "checkpoints" / "2").is_dir(), "the interrupted step's state was not saved"

    trainer.train_rl(dataclasses.replace(cut, resume=True), env=env)
    resumed = run_metrics(run_dir)
    keys = [k for k in reference[3] if k.split("/")[0] in ("train", "env", "rollout", "eval")]
    assert any(k.startswith("train/actor") for k in keys) and "env/success_once" in keys
    for key in keys:
        np.testing.assert_allclose(resumed[3][key], reference[3][key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_given_env_must_match_the_episode_limit(env, tmp_path):
    cfg = _config(tmp_path, "bad", 1)
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_steps=8))
    with pytest.raises(ValueError, match="max_steps=8"):
        trainer.train_rl(cfg, env=env)
