"""Helpers shared by several test modules (subprocess jobs, run metrics)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pirl.logging.writer import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(devices: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a test subprocess: CPU JAX with `devices` fake devices, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRL_")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra or {})
    return env


def run_metrics(run_dir: Path) -> dict[int, dict]:
    """A training run's metrics.jsonl merged per step: {step: {name: value}}."""
    out: dict[int, dict] = {}
    for record in read_jsonl(Path(run_dir) / "tb" / "metrics.jsonl"):
        out.setdefault(record["step"], {}).update(record)
    return out
