"""The command line: unknown config keys fail at parse time, naming the key; start-up skips
what a run never uses."""

import os
import subprocess
import sys

from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None):
  return subprocess.run(
      [sys.executable, "run.py", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      env=env,
  )


def test_unknown_config_key_is_refused(tmp_path):
  proc = run_cli(
      "--config=configs/pretrain.py:bert", f"--workdir={tmp_path}/w", "--config.modle.d_model=32"
  )
  assert proc.returncode != 0
  assert "modle" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_parameters_that_do_not_split_over_the_mesh_are_refused_before_writing(
    tmp_path, tokenizer_path
):
  """ELECTRA's tiny generator has 1 attention head: tensor=2 cannot split it. Two fake devices;
  the refusal comes from the trainer's check, before the workdir is created."""
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_host_devices(2), JAX_PLATFORMS="cpu")
  proc = run_cli(
      "--config=configs/pretrain.py:electra",
      f"--workdir={tmp_path}/w",
      "--config.mesh.tensor=2",
      f"--config.tokenizer.path={tokenizer_path}",
      "--config.tokenizer.vocab_size=1024",
      env=env,
  )
  assert proc.returncode != 0
  assert "['generator']['layers_0']['self_attention']" in proc.stderr, proc.stderr[-2000:]
  assert "does not divide over mesh axes ('tensor',)" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_preset_is_refused(tmp_path):
  proc = run_cli("--config=configs/pretrain.py:bort", f"--workdir={tmp_path}/w")
  assert proc.returncode != 0
  assert "preset must be one of ['bert', 'electra', 'gpt', 'prefix_lm', 't5']" in proc.stderr


def test_a_runs_start_up_and_metric_writer_leave_torch_unimported(tmp_path):
  """torch is installed for the reference tests, and tensorboardX would import it (writers.py
  says why it is hidden): run.py, the experiments and a TensorBoard writer load without it."""
  script = (
      "import sys, run, experiments.finetune, experiments.pretrain\n"
      "from lmreuse.train import writers\n"
      f"w = writers.MetricWriter({str(tmp_path)!r})\n"
      "w.write(1, {'train/loss': 0.5}); w.close()\n"
      "print('torch' in sys.modules)\n"
  )
  proc = subprocess.run(
      [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["False"]
  assert os.listdir(tmp_path / "tensorboard")  # the events file was still written
