"""The benchmark scripts still run end to end: they use Trainer internals (the compiled step, its
memory analysis) that refactors can break without any other test noticing."""

import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_rows(stdout: str, header: str) -> dict[str, list[str]]:
  """A printed markdown table's rows by their first cell."""
  return {
      line.split("|")[1].strip(): line.split("|")[2:-1]
      for line in stdout.splitlines()
      if line.startswith("| ") and not line.startswith(f"| {header}")
  }


def run_script(name, *args):
  return subprocess.run(
      [sys.executable, os.path.join("benchmarks", name), *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_strategies_benchmark_refuses_a_key_the_strategy_lacks(tokenizer_path):
  proc = run_script(
      "strategies.py", "--quick", "--strategies=full,lora:rnk=4", f"--tokenizer={tokenizer_path}"
  )
  assert proc.returncode != 0
  assert "'lora:rnk=4': config.strategy has no key ['rnk']" in proc.stderr


@pytest.mark.slow
def test_dropout_benchmark_times_each_kind_of_mask(tokenizer_path):
  proc = run_script(
      "dropout.py", "--quick", f"--tokenizer={tokenizer_path}", "--batch_size=8", "--seq_len=32"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {k: [float(x) for x in v] for k, v in table_rows(proc.stdout, "masks").items()}
  assert set(rows) == {"nn.Dropout masks", "lmreuse masks"}  # --quick: the threefry rows
  assert rows["nn.Dropout masks"][1] == 1.0 and all(r[0] > 0 and r[1] > 0 for r in rows.values())


@pytest.mark.slow
def test_throughput_benchmark_compares_with_hugging_face():
  # BERT-mini's weights at a tiny batch: the run still compiles and times every runner, which is
  # what the smoke test is for, while each step costs little.
  proc = run_script(
      "train_throughput.py", "--quick", "--batch_size=2", "--seq_len=16", "--peak_size=256"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ratios = re.findall(r"^ratio ours/hf: (\S+)$", proc.stdout, re.MULTILINE)
  assert len(ratios) == 1, proc.stdout[-3000:]
  ratio = float(ratios[0])
  assert math.isfinite(ratio) and ratio > 0, ratio
  assert re.search(r"^our MFU: [0-9.]+% of [0-9.]+ GFLOP/s$", proc.stdout, re.MULTILINE)


@pytest.mark.slow
def test_quantized_inference_benchmark_compares_quantized_forms_with_float(tokenizer_path):
  proc = run_script(
      "quantized_inference.py",
      "--quick",
      f"--tokenizer={tokenizer_path}",
      "--batch_size=8",
      "--seq_len=32",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {k: [float(x) for x in v] for k, v in table_rows(proc.stdout, "form").items()}
  assert set(rows) == {"float", "int8w", "int4w", "int8"}
  assert rows["float"][1] == rows["float"][3] == 1.0  # the baseline's ratio columns
  assert rows["int8"][3] == rows["int8w"][3] <= 0.3 and rows["int4w"][3] < rows["int8"][3]
  assert all(r[0] > 0 and r[4] > 0 for r in rows.values())  # times and XLA memory were read


@pytest.mark.slow
def test_collectives_benchmark_reads_the_partitioned_steps_collectives():
  """One mesh with all three axes: the HLO parse finds collectives and the expectation is
  computed (a parse that stopped matching XLA's text would print zeros)."""
  proc = run_script("collectives.py", "--quick", "--meshes=data2_fsdp2_tensor2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = table_rows(proc.stdout, "mesh")
  assert set(rows) == {"data2_fsdp2_tensor2"}, proc.stdout[-3000:]
  *kinds, total, ratio = rows["data2_fsdp2_tensor2"]
  measured, expected = (float(x) for x in total.split("/"))
  assert measured > 0 and expected > 0 and math.isfinite(float(ratio)) and float(ratio) > 0
  assert len(kinds) == 5 and all(len(k.split("/")) == 2 for k in kinds)


@pytest.mark.slow
def test_suite_compile_benchmark_compares_the_tests_xla_flags_with_a_baseline():
  proc = run_script("suite_compile.py", "--rounds=1", "--presets=bert")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = table_rows(proc.stdout, "XLA flags")
  assert set(rows) == {"without fusion flag (baseline)", "tests' flags"}, proc.stdout[-3000:]
  assert float(rows["without fusion flag (baseline)"][1]) == 1.0
  assert all(float(seconds) > 0 for seconds, _ in rows.values())


def test_compile_depth_benchmark_lowers_and_compiles_each_depth():
  proc = run_script(
      "compile_depth.py", "--sizes=tiny", "--layers=1", "--vocab=1024", "--seq_len=32"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = table_rows(proc.stdout, "model")
  assert set(rows) == {"bert-tiny"}, proc.stdout[-3000:]
  layers, parameters, lower, compile_s, total, ratio = rows["bert-tiny"]
  assert int(layers) == 1 and int(parameters.replace(",", "")) > 0 and float(ratio) == 1.0
  assert float(lower) > 0 and float(compile_s) > 0 and float(total) > 0


@pytest.mark.slow
def test_device_check_runs_its_quick_form_on_cpu(tokenizer_path):
  """The GPU check's script, at tiny sizes: MFU rows for both models against a measured peak,
  XLA attention timed and cuDNN reported unavailable off a GPU, and the strategy ratios of
  benchmarks/strategies.py (full, LoRA on all linear layers, gradual unfreezing)."""
  proc = subprocess.run(
      [
          "bash",
          os.path.join("benchmarks", "device_check.sh"),
          "--quick",
          f"--tokenizer={tokenizer_path}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  models = table_rows(proc.stdout, "model")
  assert {"bert,size=tiny", "gpt,size=tiny"} <= set(models), proc.stdout[-3000:]
  for row in (models["bert,size=tiny"], models["gpt,size=tiny"]):
    assert "measured" in row[8] and float(row[9].strip(" %")) > 0
  attention = table_rows(proc.stdout, "attention")
  assert float(attention["xla"][0]) > 0 and "not available" in attention["cudnn"][0]
  # benchmarks/strategies.py's table (its smoke test: one run serves both).
  rows = table_rows(proc.stdout[proc.stdout.index("| strategy |") :], "strategy")
  assert set(rows) == {"full", "lora:rank=4:targets=all_linear", "gradual_unfreeze"}
  assert float(rows["full"][2]) == 1.0  # the ratio column of the baseline
  lora = rows["lora:rank=4:targets=all_linear"]
  assert float(lora[0]) < float(rows["full"][0]) == 100.0  # trainable %
  assert all(float(r[4]) > 0 for r in rows.values())  # XLA's memory account was read
  bad = subprocess.run(
      ["bash", os.path.join("benchmarks", "device_check.sh"), "--fast"],
      cwd=ROOT,
      capture_output=True,
      text=True,
  )
  assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
