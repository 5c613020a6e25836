"""XLA compile time of the tests' tiny train steps under the XLA flags tests/xla_flags.py sets,
next to the same steps without its fusion-emitter flag.

The test suite's time on two cores is mostly XLA compilation, so the flags that make compiling
cheaper are chosen by this measurement. Each variant compiles the tiny bert, gpt and t5
pretraining train steps (synthetic batches, one device, compilation cache off) in a fresh
process; rounds alternate the variants so that a noisy machine slows both alike, and the
median round is reported with the ratio against the baseline from the same run.

  python benchmarks/suite_compile.py              # 3 rounds
  python benchmarks/suite_compile.py --rounds=1 --presets=bert   # smoke run
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_PRESETS = flags.DEFINE_list("presets", ["bert", "gpt", "t5"], "Tiny presets whose steps compile.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per variant.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: compile the steps and print the seconds.")


def compile_seconds() -> float:
  """Seconds XLA takes to compile the tiny train steps of --presets in this process."""
  import jax  # pylint: disable=import-outside-toplevel

  from tests.parallel import steps  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_enable_compilation_cache", False)
  total = 0.0
  for preset in _PRESETS.value:
    trainer, state, batch = steps.pretrain_setup(preset, {})
    lowered = trainer.lower_train_step(state, batch)
    start = time.perf_counter()
    lowered.compile()
    total += time.perf_counter() - start
  return total


def variants() -> dict[str, dict[str, str]]:
  """The environments compared: the tests' (tests/xla_flags.py sets them in os.environ, as it
  does for the suite) and the same without the fusion-emitter flag."""
  from tests import xla_flags  # pylint: disable=import-outside-toplevel

  tests_env = dict(os.environ)
  without = tests_env.get("XLA_FLAGS", "").replace(xla_flags.FAST_FUSIONS, "").strip()
  return {
      "without fusion flag (baseline)": dict(tests_env, XLA_FLAGS=without),
      "tests' flags": tests_env,
  }


def run_child(env: dict[str, str]) -> float:
  proc = subprocess.run(
      [
          sys.executable,
          os.path.abspath(__file__),
          "--child",
          f"--presets={','.join(_PRESETS.value)}",
      ],
      env=dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      check=False,
  )
  if proc.returncode != 0:
    raise RuntimeError(f"compile child failed:\n{proc.stderr[-3000:]}")
  return float(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    print(f"{compile_seconds():.4f}")
    return
  envs = variants()
  times = {name: [] for name in envs}
  for _ in range(_ROUNDS.value):
    for name, env in envs.items():
      times[name].append(run_child(env))
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, XLA compile of the")
  print(f"tiny {', '.join(_PRESETS.value)} train steps, median of {_ROUNDS.value} rounds\n")
  print("| XLA flags | compile s | ratio |")
  print("|---|---:|---:|")
  baseline = statistics.median(next(iter(times.values())))
  for name, seconds in times.items():
    median = statistics.median(seconds)
    print(f"| {name} | {median:.2f} | {median / baseline:.2f} |")


if __name__ == "__main__":
  app.run(main)
