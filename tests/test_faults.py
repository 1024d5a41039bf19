"""Training that never loses, mixes or leaks: relative run directories, refused re-runs and
resumes, one-line user errors (exit 2, no traceback unless --debug), config counts checked at
parse time, write failures that keep every committed checkpoint, and SIGTERM handled like Ctrl-C.

Everything here is refused before an environment is built or anything is compiled, so it is cheap;
the trainers' own SIGTERM path is tested in tests/test_rl_trainer.py, the whole main job in
tests/test_main_job.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from support import subprocess_env

from pirl import train
from pirl.checkpoints.train_state import TrainStateCheckpointer
from pirl.errors import UserError, run_cli
from pirl.rl import trainer


def test_relative_checkpoint_directory_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with TrainStateCheckpointer("runs/x/checkpoints", max_to_keep=2) as ckpt:
        assert ckpt.directory == tmp_path / "runs" / "x" / "checkpoints"
        for step in (1, 2, 3):  # asynchronous saves: each one waits for the previous commit
            assert ckpt.save(step, {"w": jnp.full((4,), float(step))})
    monkeypatch.chdir(tmp_path / "runs")
    with TrainStateCheckpointer("x/checkpoints") as ckpt:
        restored = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert restored.step == 3 and float(restored.state["w"][0]) == 3.0
    assert sorted(p.name for p in (tmp_path / "runs" / "x" / "checkpoints").iterdir()) == ["2", "3"]


# A save that hits the file-size limit (RLIMIT_FSIZE: a real write failure, also as root) inside the
# background writer: one line, exit 2, and the committed step survives.
WRITE_FAILS = textwrap.dedent(
    """
    import resource, signal, sys
    import jax, jax.numpy as jnp
    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.errors import run_cli

    def main():
        ckpt = TrainStateCheckpointer(sys.argv[1], max_to_keep=1)
        ckpt.save(1, {"w": jnp.ones(8)})
        ckpt.wait()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        big = {"w": jax.random.normal(jax.random.key(0), (100_000,))}
        try:
            ckpt.save(2, big)
            ckpt.save(3, big)
        except BaseException:
            ckpt.emergency_save(2, big)
            raise

    run_cli(main)
    """
)


def test_a_failing_checkpoint_write_is_one_line_and_keeps_committed_steps(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", WRITE_FAILS, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(1),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) <= 2, out.stderr[-3000:]
    assert lines[-1].startswith(
        f"error: could not write checkpoint step 2 in {tmp_path / 'ckpt'}: File too large"
    )
    assert "committed steps [1] are intact" in lines[-1]
    with TrainStateCheckpointer(tmp_path / "ckpt") as ckpt:
        restored = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((8,), jnp.float32)})
    assert restored.step == 1 and float(restored.state["w"].sum()) == 8.0


def _cli(argv, monkeypatch, capsys) -> tuple[int, list[str]]:
    """Run `python -m pirl.train argv` in this process; (exit status, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["pirl.train", *argv])
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main)
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a refused run gets as far as building its environment."""

    def fail(cfg):
        raise AssertionError("the environment was built before the run was refused")

    monkeypatch.setattr(trainer, "make_rl_env", fail)


FAST = [
    "--compilation-cache-dir",
    "None",
    "--warm-start.sft-steps",
    "0",
    "--warm-start.episodes-per-task",
    "0",
]


def test_refusals_name_the_way_on_and_create_nothing(tmp_path, monkeypatch, capsys, nothing_built):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "runs" / "pi0_demo_cpu" / "checkpoints"
    for argv, message in [
        (["--init-checkpoint", "/no/such/ckpt"], "error: --init-checkpoint /no/such/ckpt does not exist"),
        (["--tokenizer-path", "nope.model"], "error: --tokenizer-path nope.model does not exist"),
        (["--norm-stats-path", "no_stats"], "error: --norm-stats-path no_stats does not exist"),
        (["--resume"], f"error: --resume: there is no checkpoint to resume in {checkpoints}"),
    ]:
        code, err = _cli(["pi0_demo_cpu", *FAST, *argv], monkeypatch, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(message), err
        assert not (tmp_path / "runs").exists(), "a refused run left a run directory behind"

    code, err = _cli(["pi0_libero_ppo"], monkeypatch, capsys)
    assert code == 2 and len(err) == 1 and "pass --init-checkpoint" in err[0], err

    # A run directory through a regular file (what a read-only one is for root, who ignores chmod).
    (tmp_path / "file").write_text("")
    code, err = _cli(["pi0_demo_cpu", *FAST, "--run-root", "file/runs"], monkeypatch, capsys)
    assert code == 2 and err == ["error: cannot write file/runs/pi0_demo_cpu: Not a directory"], err

    # An earlier run's checkpoints: refused without --resume, nothing deleted.
    (checkpoints / "10" / "state").mkdir(parents=True)
    code, err = _cli(["pi0_demo_cpu", *FAST], monkeypatch, capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{checkpoints} already holds checkpoints [10]" in err[0]
    assert "--resume" in err[0] and "--name" in err[0]
    assert (checkpoints / "10" / "state").is_dir() and not (checkpoints.parent / "config.json").exists()


def test_debug_adds_the_traceback(tmp_path, monkeypatch, capsys, nothing_built):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(["pi0_demo_cpu", "--debug", *FAST, "--tokenizer-path", "nope"], monkeypatch, capsys)
    assert code == 2 and err[0].startswith("Traceback") and err[-1].startswith("error: --tokenizer-path nope")
    monkeypatch.setenv("PIRL_DEBUG", "1")
    code, err = _cli(["pi0_demo_cpu", *FAST, "--tokenizer-path", "nope"], monkeypatch, capsys)
    assert code == 2 and err[0].startswith("Traceback")


def test_internal_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 / 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env.num-envs", "0"], "env.num_envs must be >= 1, got 0"),
        (["--global-batch-size", "0"], "global_batch_size must be >= 1, got 0"),
        (["--warm-start.batch-size", "0"], "warm_start.batch_size must be >= 1, got 0"),
        (["--eval-episodes", "0"], "eval_episodes must be >= 1, got 0"),
        (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1, got 0"),
        (["--env.max-episode-steps", "0"], "env.max_episode_steps must be >= 1, got 0"),
        (["--warm-start.episodes-per-task", "0"], "warm_start.sft_steps=500 needs demonstrations"),
    ],
)
def test_bad_counts_are_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_config(["pi0_demo_cpu", *argv])
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # undo tyro's boxed wrapping
    assert stop.value.code == 2 and message in err, err


def test_sft_counts_are_checked():
    from pirl.sft.config import sft_config_for

    for field in ("batch_size", "log_interval", "save_interval", "keep_checkpoints"):
        with pytest.raises(UserError, match=f"{field} must be >= 1, got 0"):
            sft_config_for("pi0_libero", **{field: 0})


def test_the_command_line_exits_2_in_one_line(tmp_path):
    """The real entry point: exit 2, one line on stderr, no traceback, no run directory."""
    out = subprocess.run(
        [sys.executable, "-m", "pirl.train", "pi0_demo_cpu", "--init-checkpoint", "missing"],
        cwd=tmp_path,
        env=subprocess_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == ["error: --init-checkpoint missing does not exist"]
    assert not (tmp_path / "runs").exists()


# The trainers' pattern (see pirl/checkpoints/train_state.py) under run_cli: SIGTERM must reach the
# `except BaseException` branch, write the emergency checkpoint and exit 143.
LOOP = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    from pirl.checkpoints.train_state import TrainStateCheckpointer
    from pirl.errors import run_cli

    def main():
        ckpt = TrainStateCheckpointer(sys.argv[1], save_interval=1000)
        state, step = {"w": jnp.zeros(4)}, 0
        try:
            while True:
                state, step = {"w": state["w"] + 1}, step + 1
                if step == 3:
                    print("running", flush=True)
                time.sleep(0.01)
        except BaseException:
            ckpt.emergency_save(step, state)
            raise
        finally:
            ckpt.close()

    run_cli(main)
    """
)


def test_sigterm_saves_an_emergency_checkpoint_and_exits_nonzero(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP, str(tmp_path / "ckpt")],
        env=subprocess_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by signal SIGTERM" in err and "Traceback" not in err, err[-3000:]
    with TrainStateCheckpointer(tmp_path / "ckpt") as ckpt:
        (step,) = ckpt.all_steps()
        restored = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert step >= 3 and float(restored.state["w"][0]) == step


def _children(pid: int) -> set[int]:
    """Live child processes of `pid` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="real LIBERO is not installed")
def test_sigterm_stops_pirl_eval_and_its_libero_workers(tmp_path):
    """`python -m pirl.eval --backend libero` under SIGTERM: exit 143, no worker outlives it."""
    cmd = [
        sys.executable, "-m", "pirl.eval", "--random-tiny", "--backend", "libero",
        "--suites", "libero_spatial", "--task-ids", "0", "--episodes-per-task", "50",
        "--num-workers", "2", "--resolution", "64", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    env = subprocess_env(1, {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.5)
        assert len(workers) >= 2, "the evaluation started no worker processes"
        time.sleep(2.0)  # let the workers start building their scenes
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), f"workers {workers} outlived pirl.eval"


def _alive(pid: int) -> bool:
    """The process runs (not exited, not a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return False


def test_earlier_logs_are_set_aside_not_mixed(tmp_path):
    """A fresh run moves the logs of an earlier run without checkpoints aside; a resume moves the
    records of steps after the last checkpoint (a killed run's) to metrics.superseded.jsonl."""
    import json

    from configs.rl import pi0_demo_cpu

    cfg = dataclasses.replace(pi0_demo_cpu(), run_root=str(tmp_path))
    run = tmp_path / "pi0_demo_cpu"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "metrics.jsonl").write_text('{"step": 1, "x": 1.0}\n')
    trainer.prepare_run_dir(cfg)
    (aside,) = run.glob("previous-*")
    assert (aside / "tb" / "metrics.jsonl").read_text() == '{"step": 1, "x": 1.0}\n'
    assert (
        not (run / "tb").exists() and json.loads((run / "config.json").read_text())["name"] == "pi0_demo_cpu"
    )

    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "tb").mkdir()
    records = (
        "".join(json.dumps({"step": s, "x": float(s)}) + "\n" for s in (0, 1, 2, 3, 4)) + '{"step": 5, "x'
    )
    (run / "tb" / "metrics.jsonl").write_text(records)
    trainer.prepare_run_dir(dataclasses.replace(cfg, resume=True))
    kept = [json.loads(line)["step"] for line in (run / "tb" / "metrics.jsonl").read_text().splitlines()]
    moved = (run / "tb" / "metrics.superseded.jsonl").read_text().splitlines()
    assert (
        kept == [0, 1, 2] and [json.loads(line)["step"] for line in moved[:2]] == [3, 4] and len(moved) == 3
    )


def test_sft_refuses_to_start_over_an_earlier_runs_checkpoints(tmp_path):
    from pirl.sft.config import sft_config_for
    from pirl.sft.train import train_sft

    (tmp_path / "tok.model").write_text("")
    (tmp_path / "ckpt" / "7" / "state").mkdir(parents=True)
    cfg = sft_config_for(
        "pi0_libero",
        tokenizer_path=str(tmp_path / "tok.model"),
        norm_stats_dir=str(tmp_path),
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=str(tmp_path / "logs"),
        resume=False,
    )
    with pytest.raises(UserError, match=r"already holds checkpoints \[7\].*--resume.*--checkpoint-dir"):
        train_sft(cfg)
    with pytest.raises(UserError, match=r"--tokenizer-path .*missing\.model does not exist"):
        train_sft(dataclasses.replace(cfg, tokenizer_path=str(tmp_path / "missing.model")))
    assert (tmp_path / "ckpt" / "7" / "state").is_dir() and not (tmp_path / "logs").exists()


def test_other_clis_report_user_errors_in_one_line(monkeypatch, capsys):
    import tyro

    from pirl import norm_stats

    monkeypatch.setattr(sys, "argv", ["pirl.norm_stats", "--config-name", "pi0_libro"])
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: tyro.cli(norm_stats.main))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: unknown data config 'pi0_libro'") and "pi0_libero" in err[0]

    from pirl import serve
    from pirl.eval import __main__ as eval_cli

    for name, main in [
        ("pirl.serve", lambda: serve.main(tyro.cli(serve.ServeArgs))),
        ("pirl.eval", eval_cli.main),
    ]:
        monkeypatch.setattr(sys, "argv", [name, "--checkpoint", "/no/such/checkpoint"])
        with pytest.raises(SystemExit) as stop:
            run_cli(main)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) <= 2 and "Traceback" not in "".join(err), (name, err)
        assert err[-1].startswith("error: checkpoint /no/such/checkpoint does not exist"), (name, err)


def test_disk_errors_become_one_line_naming_the_path(tmp_path):
    import errno

    from pirl.errors import disk_errors

    full = pytest.raises(
        UserError, match=f"^cannot write {tmp_path}/tb/metrics.jsonl: No space left on device$"
    )
    with full, disk_errors(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "tb" / "metrics.jsonl"))
    quota = pytest.raises(UserError, match=f"^cannot write {tmp_path}: Disk quota exceeded$")
    with quota, disk_errors(tmp_path):
        raise OSError(errno.EDQUOT, "quota")  # no file name: the run directory is named
    with pytest.raises(ConnectionResetError), disk_errors(tmp_path):  # not a disk problem: unchanged
        raise ConnectionResetError(errno.ECONNRESET, "reset")
