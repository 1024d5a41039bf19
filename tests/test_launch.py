"""launch/ scripts: --help works and --dry-run prints well-formed commands for a sample pod and cluster."""

import shlex
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
CMD = ["python", "-m", "pirl.train", "pi0_libero_ppo", "--mesh", "tpu-v5p-64"]


def _run(script: str, *args: str) -> list[list[str]]:
    out = subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60, check=True
    )
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm.sh", "local.sh"])
def test_help(script):
    out = subprocess.run(["bash", str(LAUNCH / script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Usage:" in out.stdout and "--dry-run" in out.stdout


def test_tpu_pod_dry_run():
    lines = _run(
        "tpu_pod.sh",
        "--name",
        "pirl-v5p",
        "--zone",
        "us-east5-a",
        "--accelerator",
        "v5p-64",
        "--dry-run",
        "--",
        *CMD,
    )
    create, ssh_run = lines[0], lines[-3]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "v5p-64" in create
    assert all(line[0] in {"gcloud", "tar", "mkdir"} for line in lines)
    ssh = [line for line in lines if line[4:5] == ["ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in line for line in ssh)
    assert "uv sync --frozen" in ssh[0][-1]
    assert ssh_run[4] == "ssh" and shlex.join(CMD) in ssh_run[-1]


def test_slurm_dry_run():
    lines = _run(
        "slurm.sh", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--dry-run", "--", *CMD
    )
    assert lines[0] == ["uv", "sync", "--frozen"]
    sbatch = lines[1]
    assert (
        sbatch[0] == "sbatch"
        and "--nodes=2" in sbatch
        and "--gpus-per-node=8" in sbatch
        and "--partition=gpu" in sbatch
    )
    assert sbatch[-len(CMD) :] == CMD and sbatch[-len(CMD) - 1].endswith("slurm.sbatch")


def test_local_dry_run():
    lines = _run(
        "local.sh",
        "--num-processes",
        "2",
        "--devices-per-process",
        "4",
        "--port",
        "23456",
        "--dry-run",
        "--",
        *CMD,
    )
    assert len(lines) == 2
    for pid, line in enumerate(lines):
        env = dict(a.split("=", 1) for a in line[1:6])
        assert env["PIRL_COORDINATOR_ADDRESS"] == "127.0.0.1:23456" and env["PIRL_NUM_PROCESSES"] == "2"
        assert env["PIRL_PROCESS_ID"] == str(pid) and env["XLA_FLAGS"].endswith("=4")
        assert line[6 : 6 + len(CMD)] == CMD


def test_missing_arguments_fail_with_a_message():
    out = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--name and --zone are required" in out.stderr
