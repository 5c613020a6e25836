"""Train steps on every 8-device mesh compile without involuntary rematerialization, shard what
the rules shard, and (pretraining) equal the 1-device step.

One subprocess per architecture (tests/parallel/sharded_check.py; ELECTRA with BERT and the
prefix LM with GPT, on one mesh) compiles each step once for all three checks; they are one test
per architecture, because pytest-xdist would run a module fixture once per worker, and three
tests spread over the workers.
"""

import json
import os
import subprocess
import sys

import pytest

from configs import pretrain as pretrain_config
from lmreuse import objectives
from tests import xla_flags
from tests.parallel import sharded_check, steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESETS = ("bert", "gpt", "t5")
# Relative errors: float32 sums in another order. Updated params are measured against the step's
# largest update (sharded_check.relative_errors says why; its Adam eps keeps that update well
# conditioned, sharded_check.OPTIMIZER); a real bug is off by about 1 there.
TOLERANCE = {"params": 1e-4}
DEFAULT_TOLERANCE = 1e-5


def run_check(preset: str, tokenizer_path: str) -> dict:
  env = dict(
      os.environ,
      # The compile-time flags tests/xla_flags.py sets change no partitioning, only the CPU code
      # XLA generates.
      XLA_FLAGS=xla_flags.with_host_devices(8),
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="0",  # the partitioner's warnings are what the test reads
  )
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "tests.parallel.sharded_check",
          f"--preset={preset}",
          f"--tokenizer={tokenizer_path}",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def problems(name: str, case: dict, mesh_axes: dict) -> list[str]:
  found = []
  for kind in ("train", "eval"):
    if case[f"{kind}_remat"]:
      found.append(
          f"{name}: {case[f'{kind}_remat']} involuntary full rematerializations in the {kind} "
          f"step: {case[f'{kind}_remat_ops']}"
      )
  if case["not_sharded"]:
    found.append(f"{name}: leaves not split as the rules say: {case['not_sharded'][:3]}")
  if any(mesh_axes.get(a, 1) > 1 for a in ("fsdp", "tensor")) and not case["sharded_leaves"]:
    found.append(f"{name}: the rules shard nothing on mesh {mesh_axes}")
  for group, error in case.get("errors", {}).items():
    if error > TOLERANCE.get(group, DEFAULT_TOLERANCE):
      found.append(f"{name}: {group} differs from the 1-device step by {error:.2e} (relative)")
  return found


def test_every_objective_is_checked_on_8_devices():
  """A new objective's step must join a preset's process here (SAME_ARCHITECTURE)."""
  presets = [*PRESETS, *(p for more in sharded_check.SAME_ARCHITECTURE.values() for p in more)]
  assert sorted(pretrain_config.OBJECTIVE_OF[p] for p in presets) == objectives.names()


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_sharded_steps_are_partitioned_well_and_match_single_device(preset, tokenizer_path):
  report = run_check(preset, tokenizer_path)
  assert report.pop("control") > 0, "the partitioner's warnings were not seen; the check is blind"
  # A state held whole on every device: each leaf the rules split must be flagged.
  control_mesh = f"{preset}/{sharded_check.CONTROL_MESH}/pretrain"
  assert report.pop("sharding_control") == report[control_mesh]["sharded_leaves"] > 0
  finetune = {
      f"{preset}/{mesh}/{strategy}"
      for mesh, strategy in sharded_check.FINETUNE_CASES[preset].items()
  }
  pretrain = {f"{preset}/{mesh}/pretrain" for mesh in steps.MESHES}
  others = sharded_check.SAME_ARCHITECTURE[preset]
  pretrain |= {f"{other}/{sharded_check.CONTROL_MESH}/pretrain" for other in others}
  assert set(sharded_check.FINETUNE_CASES[preset]) == set(steps.MESHES)  # fine-tuned on each
  references = {f"{name}/reference" for name in (preset, *others)}
  assert set(report) == pretrain | finetune | references
  # Without warm-up the step trains: Adam moves each weight by ~lr.
  for reference in references:
    assert report.pop(reference)["moved"] > 5e-4, reference
  found = []
  for name, case in sorted(report.items()):
    found += problems(name, case, steps.MESHES[name.split("/")[1]])
    if name in pretrain:
      groups = set(case["errors"])
      assert {"loss", "grad_norm", "params"} <= groups, case
      assert {g.rsplit(".", 1)[-1] for g in groups if g.startswith("opt_state")} >= {"mu", "nu"}
  assert not found, "\n".join(found)
