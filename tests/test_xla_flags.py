"""`import pirl` sets its XLA CPU flags (fusion emitters off: MJX rollouts in a scan ~36x faster;
YNNPACK fusions off: the compiled evaluation rollout stalled every 5-10 calls) unless the user's
XLA_FLAGS already decides each of them."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

import pirl

EMITTERS = "--xla_cpu_use_fusion_emitters=false"
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="


def _flags_after_import(xla_flags: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, pirl; print(os.environ['XLA_FLAGS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tests_run_with_the_flags():
    assert pirl.cpu_flags_missing() == []


def test_import_adds_the_flags_and_keeps_other_flags():
    assert _flags_after_import(None) == [EMITTERS, NO_YNN]
    flags = _flags_after_import("--xla_force_host_platform_device_count=2")
    assert flags == ["--xla_force_host_platform_device_count=2", EMITTERS, NO_YNN]


def test_an_explicit_user_choice_is_left_alone():
    assert _flags_after_import("--xla_cpu_use_fusion_emitters=true") == [
        "--xla_cpu_use_fusion_emitters=true",
        NO_YNN,
    ]
    assert _flags_after_import("--xla_cpu_experimental_ynn_fusion_type=dot") == [
        "--xla_cpu_experimental_ynn_fusion_type=dot",
        EMITTERS,
    ]


def test_compiled_dots_use_no_ynnpack_fusion():
    # The flag must reach the compiler: a dot that XLA would hand to YNNPACK stays an XLA dot.
    text = jax.jit(lambda a, b: jnp.tanh(a @ b).sum()).lower(jnp.ones((32, 256)), jnp.ones((256, 64)))
    optimized = text.compile().as_text()
    assert "__ynn_fusion" not in optimized
    assert " dot(" in optimized
