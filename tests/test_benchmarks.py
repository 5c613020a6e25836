"""The benchmark scripts still run end to end: they use Trainer internals (the compiled step, its
memory analysis) that refactors can break without any other test noticing."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
  proc = subprocess.run([sys.executable, os.path.join("benchmarks", name), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_strategies_benchmark_prints_ratios_against_full(tokenizer_path):
  out = run_script("strategies.py", "--quick", "--strategies=full,lora:rank=4:targets=all_linear,gradual_unfreeze",
                   f"--tokenizer={tokenizer_path}", "--batch_size=8", "--seq_len=32")
  rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
          if line.startswith("| ") and not line.startswith("| strategy")}
  assert set(rows) == {"full", "lora:rank=4:targets=all_linear", "gradual_unfreeze"}
  assert float(rows["full"][2]) == 1.0  # the ratio column of the baseline
  lora = rows["lora:rank=4:targets=all_linear"]
  assert float(lora[0]) < float(rows["full"][0]) == 100.0  # trainable %
  assert all(float(r[4]) > 0 for r in rows.values())  # XLA's memory account was read


@pytest.mark.slow
def test_throughput_benchmark_compares_with_hugging_face():
  out = run_script("train_throughput.py", "--quick")
  assert "ratio ours/hf:" in out and "MFU" in out
