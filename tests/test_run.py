"""The command line: unknown config keys fail at parse time, naming the key."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
  return subprocess.run(
      [sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


def test_unknown_config_key_is_refused(tmp_path):
  proc = run_cli(
      "--config=configs/pretrain.py:bert", f"--workdir={tmp_path}/w", "--config.modle.d_model=32"
  )
  assert proc.returncode != 0
  assert "modle" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_preset_is_refused(tmp_path):
  proc = run_cli("--config=configs/pretrain.py:bort", f"--workdir={tmp_path}/w")
  assert proc.returncode != 0
  assert "preset must be one of ['bert', 'gpt', 't5']" in proc.stderr
