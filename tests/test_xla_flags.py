"""`import pirl` switches XLA's CPU fusion emitters off (MJX rollouts in a scan run ~36x faster)
unless the user's XLA_FLAGS already decides."""

from __future__ import annotations

import os
import subprocess
import sys

import pirl


def _flags_after_import(xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, pirl; print(os.environ['XLA_FLAGS'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_tests_run_with_the_flag():
    assert pirl.cpu_flags_in_effect()


def test_import_adds_the_flag_and_keeps_other_flags():
    assert _flags_after_import(None).split() == ["--xla_cpu_use_fusion_emitters=false"]
    flags = _flags_after_import("--xla_force_host_platform_device_count=2").split()
    assert flags == ["--xla_force_host_platform_device_count=2", "--xla_cpu_use_fusion_emitters=false"]


def test_an_explicit_user_choice_is_left_alone():
    assert _flags_after_import("--xla_cpu_use_fusion_emitters=true").split() == [
        "--xla_cpu_use_fusion_emitters=true"
    ]
