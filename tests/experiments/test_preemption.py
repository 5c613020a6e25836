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

from experiments import finetune, pretrain
from lmreuse.train import optim, preemption, trainer as trainer_lib
from lmreuse.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 50  # long enough that the signal (after 3 logged steps) lands mid-run


def flags(config) -> list[str]:
  keys = (
      "tokenizer.path",
      "tokenizer.vocab_size",
      "tokenizer.num_sentinels",
      "data.tfds_dir",
      "data.seq_len",
      "model.max_len",
      "batch_size",
      "total_steps",
      "log_every",
      "eval_every",
      "eval_steps",
      "checkpoint_every",
  )
  value = lambda key: config[key.split(".")[0]][key.split(".")[1]] if "." in key else config[key]
  return [f"--config.{key}={value(key)}" for key in keys]


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_matches_bitwise(
    tiny_config, tmp_path, counted_steps
):
  config = tiny_config("bert", total_steps=STEPS, checkpoint_every=10_000, eval_steps=1)
  workdir = tmp_path / "preempted"
  command = [
      sys.executable,
      "run.py",
      "--config=configs/pretrain.py:bert,size=tiny",
      f"--workdir={workdir}",
      *flags(config),
  ]
  # Also: run.py's persistent compilation cache is on by default, in the user's cache dir.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "cache"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.Popen(
      command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
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
  assert os.listdir(tmp_path / "cache" / "lmreuse" / "jax")  # the train step, at least

  steps, _ = counted_steps
  pretrain.run(config, str(workdir))  # the same command again: resumes at `stopped`
  assert steps == list(range(stopped, STEPS))  # only the steps left, not a fresh start
  straight = tmp_path / "straight"
  pretrain.run(config, str(straight))
  a, b = read_metrics(str(straight)), read_metrics(str(workdir))
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
  assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
  assert a[-1]["eval/loss"] == b[-1]["eval/loss"]


def test_a_larger_total_steps_extends_a_finished_run(tiny_config, tmp_path):
  config = lambda steps: tiny_config(
      "bert", total_steps=steps, checkpoint_every=2, **{"optimizer.warmup_steps": 0}
  )
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


def without_timing(workdir) -> list[dict]:
  """metrics.jsonl without the throughput columns, which differ between any two runs."""
  return [
      {k: v for k, v in r.items() if not k.endswith("_per_sec")} for r in read_metrics(str(workdir))
  ]


@pytest.fixture
def counted_steps(monkeypatch):
  """The (0-based) steps Trainer.train_step runs; `signal_after[0]` set to a step makes the
  process send itself a real SIGTERM right after that update."""
  steps, signal_after = [], [None]
  original = trainer_lib.Trainer.train_step

  def train_step(self, state, batch, step=None):
    out = original(self, state, batch, step)
    steps.append(step)
    if step == signal_after[0]:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(trainer_lib.Trainer, "train_step", train_step)
  return steps, signal_after


@pytest.mark.slow
def test_finetuning_preempted_at_an_eval_step_resumes_bitwise(
    finetune_config, tmp_path, counted_steps
):
  # Validation loss under mode=max: the first evaluation stays the best and patience 3 stops
  # the run at step 4, so the early-stopping state crosses the interruption.
  config = finetune_config(
      total_steps=8,
      eval_every=1,
      log_every=1,
      checkpoint_every=100,
      learning_rate=3e-3,
      **{
          "early_stopping.metric": "loss",
          "early_stopping.mode": "max",
          "early_stopping.patience": 3,
      },
  )
  steps, signal_after = counted_steps
  straight = finetune.run(config, str(tmp_path / "straight"))
  assert straight["stopped_early"] and straight["steps"] == 4

  workdir = tmp_path / "preempted"
  steps.clear()
  signal_after[0] = 1  # after the update of step 2, an evaluation step
  with pytest.raises(preemption.Preempted, match="stopped after step 2"):
    finetune.run(config, str(workdir))
  signal_after[0] = None
  steps.clear()
  resumed = finetune.run(config, str(workdir))
  assert steps == [2, 3]  # only the steps left: it continued, it did not start over

  assert without_timing(workdir) == without_timing(tmp_path / "straight")
  for name in ("early_stopping.json", "predictions.jsonl"):
    assert (workdir / name).read_text() == (tmp_path / "straight" / name).read_text(), name
  assert (resumed["metrics"], resumed["best_step"], resumed["steps"]) == (
      straight["metrics"],
      straight["best_step"],
      straight["steps"],
  )


@pytest.mark.slow
def test_a_run_preempted_inside_its_adaptation_phase_resumes_the_phase_bitwise(
    bert_pretrained, finetune_config, tmp_path, counted_steps
):
  """config.adapt's continued pretraining (W/adapt) stops at the signal like any run; the rerun
  trains the phase's remaining steps, then fine-tunes, as an uninterrupted run does."""
  config = finetune_config(
      init_from=bert_pretrained[0], total_steps=2, checkpoint_every=100, **{"adapt.steps": 4}
  )
  steps, signal_after = counted_steps
  straight = finetune.run(config, str(tmp_path / "straight"))
  assert steps == [0, 1, 2, 3, 0, 1]  # the phase's 4 steps, then fine-tuning's 2

  workdir = tmp_path / "preempted"
  steps.clear()
  signal_after[0] = 1  # inside the phase
  with pytest.raises(preemption.Preempted, match="stopped after step 2"):
    finetune.run(config, str(workdir))
  assert (
      not (workdir / "adapt" / "results.json").exists() and not (workdir / "results.json").exists()
  )
  signal_after[0] = None
  steps.clear()
  resumed = finetune.run(config, str(workdir))
  assert steps == [2, 3, 0, 1]  # the phase's remaining steps, then fine-tuning

  for run in ("adapt", ""):
    assert without_timing(workdir / run) == without_timing(tmp_path / "straight" / run), run
  same = lambda record: {k: v for k, v in record.items() if k != "init_from"}  # its own W/adapt
  assert same(resumed["adapt"]) == same(straight["adapt"])
  assert resumed["metrics"] == straight["metrics"]
