"""Test-suite setup: eight fake CPU devices, so mesh and sharding tests run on one machine.

XLA reads the flag when JAX initialises its backends, so it is set here, before any test module
imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import pirl  # noqa: F401  (adds pirl's CPU XLA flags to XLA_FLAGS before JAX starts)
