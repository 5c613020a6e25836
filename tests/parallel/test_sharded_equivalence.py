"""A train step on 8 devices (data×fsdp×tensor) equals the 1-device step."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_sharded_train_step_matches_single_device():
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
  )
  proc = subprocess.run(
      [sys.executable, "-m", "tests.parallel.sharded_check"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(report) == {f"{a}/data2_fsdp2_tensor2" for a in ("bert", "gpt", "t5")}
  for name, worst_relative_error in report.items():
    assert worst_relative_error <= 1e-5, (name, worst_relative_error)
