"""XLA flags for the test session and for the subprocesses it starts.

Tiny test programs spend far longer in XLA's CPU compiler than running, and the suite's time on
two cores is mostly compilation. These flags trade the compiled code's speed for compile time
(figures in benchmarks/README.md). They are set in the environment before jax is imported, so
run.py, benchmark and multi-device subprocesses inherit them.
"""

import os
import subprocess
import sys

# Kept: the HLO passes tests inspect (sharding propagation, rematerialization). Skipped: the rest
# of the backend optimizer.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# The MLIR fusion emitters compile a fusion much more slowly than the older LLVM IR emitters and
# make no difference to what a test computes. An XLA that no longer knows the flag aborts at
# start-up, so a child process checks it once; the result is kept in the environment, which
# pytest-xdist workers and test subprocesses inherit.
FAST_FUSIONS = "--xla_cpu_use_fusion_emitters=false"
_PROBED = "LMREUSE_TEST_XLA_FLAGS_PROBED"


def _xla_accepts(flags: str) -> bool:
  probe = "import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.zeros(2)).block_until_ready()"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


if _PROBED not in os.environ:
  os.environ[_PROBED] = "1"
  inherited = os.environ.get("XLA_FLAGS", "")
  fast = f"{inherited} {FAST_FUSIONS}".strip()
  if FAST_FUSIONS not in inherited and _xla_accepts(fast):
    os.environ["XLA_FLAGS"] = fast


def with_host_devices(count: int) -> str:
  """XLA_FLAGS for a subprocess with `count` fake CPU devices: the session's flags plus the count
  (replacing XLA_FLAGS outright would drop the session's compile-time flags)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
