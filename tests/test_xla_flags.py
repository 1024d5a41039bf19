"""`import pirl` sets its XLA CPU flags (fusion emitters off: MJX rollouts in a scan ~36x faster;
YNNPACK fusions off: the compiled evaluation rollout stalled every 5-10 calls) unless the user's
XLA_FLAGS already decides each of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

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


def _pool_after_create_backends(threads: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PIRL_XLA_CPU_THREADS")}
    if threads is not None:
        env["PIRL_XLA_CPU_THREADS"] = threads
    code = (
        "import json, os, pirl; before = sorted(os.sched_getaffinity(0)); pirl.create_backends(); "
        "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]; "
        "print(json.dumps({'pool': names.count('tf_XLAEigen'), 'before': before, "
        "'after': sorted(os.sched_getaffinity(0))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell the pool sizes apart")
def test_create_backends_sizes_the_cpu_pool_and_restores_the_thread():
    default = _pool_after_create_backends(None)
    assert default["pool"] == 1  # the stall-free size (pirl/__init__.py)
    assert default["after"] == default["before"]  # only the pool is confined, not the caller
    everything = _pool_after_create_backends("0")
    assert everything["pool"] == len(everything["before"]) > 1
