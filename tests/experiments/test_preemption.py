"""A real run.py gets a real SIGTERM mid-run: it saves that step, exits with the documented
status, and the re-run resumes to the uninterrupted run's losses bit for bit. A finished run
extends when re-run with a larger total_steps."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import pretrain
from lmreuse.train import optim, preemption
from lmreuse.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 50  # long enough that the signal (after 3 logged steps) lands mid-run


def flags(config) -> list[str]:
  keys = ("tokenizer.path", "tokenizer.vocab_size", "tokenizer.num_sentinels", "data.tfds_dir",
          "data.seq_len", "model.max_len", "batch_size", "total_steps", "log_every",
          "eval_every", "eval_steps", "checkpoint_every")
  value = lambda key: config[key.split(".")[0]][key.split(".")[1]] if "." in key else config[key]
  return [f"--config.{key}={value(key)}" for key in keys]


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_matches_bitwise(tiny_config, tmp_path):
  config = tiny_config("bert", total_steps=STEPS, checkpoint_every=10_000, eval_steps=1)
  workdir = tmp_path / "preempted"
  command = [sys.executable, "run.py", "--config=configs/pretrain.py:bert,size=tiny",
             f"--workdir={workdir}", *flags(config)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=240)[0]
  assert proc.returncode == preemption.EXIT_STATUS, output[-3000:]
  (saved,) = os.listdir(workdir / "checkpoints")
  stopped = int(saved)
  assert 3 <= stopped < STEPS and f"stopped after step {stopped}" in output
  assert read_metrics(str(workdir))[-1]["step"] == stopped  # the last step's metrics kept

  pretrain.run(config, str(workdir))  # the same command again: resumes at `stopped`
  straight = tmp_path / "straight"
  pretrain.run(config, str(straight))
  a, b = read_metrics(str(straight)), read_metrics(str(workdir))
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
  assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
  assert a[-1]["eval/loss"] == b[-1]["eval/loss"]


def test_a_larger_total_steps_extends_a_finished_run(tiny_config, tmp_path):
  config = lambda steps: tiny_config("bert", total_steps=steps, checkpoint_every=2,
                                     **{"optimizer.warmup_steps": 0})
  pretrain.run(config(2), str(tmp_path))
  first = read_metrics(str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.total_steps: 2 → 1"):
    pretrain.run(config(1), str(tmp_path))
  results = pretrain.run(config(3), str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[:2] == first
  assert results["steps"] == 3
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 3
  # The resumed update (0-based step 2) follows the schedule recomputed for the new total.
  new, old = (optim.make_schedule(config(3).optimizer, total) for total in (3, 2))
  assert rows[2]["train/learning_rate"] == pytest.approx(float(new(2)), rel=1e-6)
  assert float(new(2)) != pytest.approx(float(old(2)))
