"""Study workers: claimed cells run once (a dead worker's cell is taken over), static I/N
shares wait for the cells they need, failures are not retried by workers, and print_launch
writes launch scripts that build the right commands."""

import fcntl
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import jax
import pytest

from configs import study as study_config
from experiments import finetune, pretrain, study
from lmreuse import lock, workdir as workdir_lib
from lmreuse.train import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = [
    "pretrain-bert",
    "wordnet_supersense.bert.full.seed0",
    "wordnet_supersense.bert.full.seed1",
    "wordnet_supersense.bert.lora.seed0",
    "wordnet_supersense.bert.lora.seed1",
]


def small_study(worker=""):
  """1 pretraining cell and 4 fine-tuning cells (full, lora × 2 seeds), no sweep."""
  config = study_config.get_config("tiny")
  config.study.sweep.learning_rate = ()
  for entry in config.study.strategy_sweeps.values():
    entry.learning_rate = ()
  config.study.update(
      dict(
          strategies=("full", "lora"),
          seeds=(0, 1),
          from_scratch=False,
          report=False,
          poll_seconds=0.05,
          worker=worker,
      )
  )
  return config


@pytest.fixture
def fake_cells(monkeypatch):
  """Cells that finish at once (writing results.json) instead of training: the order and the
  time each one ran, by name; a name in `fail` raises once."""
  calls, fail = [], set()

  def fake(config, workdir):
    name = os.path.basename(workdir)
    calls.append((name, time.time()))
    if name in fail:
      fail.discard(name)
      raise FloatingPointError(f"{name} diverged")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"fake": True}, f)

  monkeypatch.setattr(pretrain, "run", fake)
  monkeypatch.setattr(finetune, "run", fake)
  return calls, fail


def hold_elsewhere(workdir, seconds):
  """Holds `workdir`'s lock as another process would (its own open file description), with
  that process's record in the file; after `seconds` it "dies": the flock goes, the record
  stays."""
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, lock.LOCK_FILE), os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  os.write(
      fd,
      json.dumps(
          {
              "host": "elsewhere",
              "pid": 4242,
              "start_time": "T0",
              "command": "run.py --config.study.worker=claim",
          }
      ).encode(),
  )
  timer = threading.Timer(seconds, os.close, [fd])
  timer.start()
  return timer


def test_claim_runs_each_cell_once_takes_over_a_dead_workers_cell_and_keeps_failures(
    tmp_path, fake_cells, caplog
):
  calls, fail = fake_cells
  fail.add(NAMES[4])
  timer = hold_elsewhere(str(tmp_path / "runs" / NAMES[3]), 1.5)
  with caplog.at_level(logging.INFO, logger="absl"):  # absl sets its own level
    result = study.run(small_study("claim"), str(tmp_path))
  timer.join()
  # Cell 3 was running elsewhere: the others went first, then it was taken over.
  assert [name for name, _ in calls] == [NAMES[0], NAMES[1], NAMES[2], NAMES[4], NAMES[3]]
  assert "taking over the stale lock of host elsewhere pid 4242 started T0" in caplog.text
  assert "waiting for 1 cells" in caplog.text
  assert result["cells"] == {**dict.fromkeys(NAMES, "finished"), NAMES[4]: "failed"}
  assert open(tmp_path / "runs" / NAMES[3] / lock.LOCK_FILE).read() == ""  # released

  calls.clear()
  again = study.run(small_study("claim"), str(tmp_path))  # a worker does not retry failures
  assert calls == [] and again["failed"] == [NAMES[4]]
  retried = study.run(small_study(""), str(tmp_path))  # a sequential run does
  assert [name for name, _ in calls] == [NAMES[4]] and retried["failed"] == []


def test_a_preempted_cell_stops_the_study_without_being_recorded_as_failed(tmp_path, monkeypatch):
  """Preempted is not a failure: the cell keeps no error.txt and the study stops (to exit 75
  and resume), instead of recording it and going on to the next cell."""
  ran = []

  def preempted(config, workdir):
    ran.append(os.path.basename(workdir))
    raise preemption.Preempted(3, "received SIGTERM")

  monkeypatch.setattr(pretrain, "run", preempted)
  with pytest.raises(preemption.Preempted):
    study.run(small_study(), str(tmp_path))
  assert ran == [NAMES[0]]
  cell = tmp_path / workdir_lib.RUNS / NAMES[0]
  assert not (cell / workdir_lib.ERROR).exists()
  # Released: the fake run wrote nothing, so the lock went with the directory it created.
  assert not (cell / lock.LOCK_FILE).exists() or not (cell / lock.LOCK_FILE).read_text()


def test_static_shares_wait_for_cells_of_other_shares(tmp_path, fake_cells):
  calls, _ = fake_cells
  pretraining = tmp_path / "runs" / NAMES[0]

  def finish_pretraining():  # as worker 0/2 would
    pretraining.mkdir(parents=True)
    (pretraining / "results.json").write_text("{}")

  timer = threading.Timer(1.0, finish_pretraining)
  started = time.time()
  timer.start()
  result = study.run(small_study("1/2"), str(tmp_path))
  timer.join()
  assert [name for name, _ in calls] == [NAMES[1], NAMES[3]]  # positions 1 and 3 of 0..4
  assert calls[0][1] - started >= 1.0  # only once its pretraining cell had finished
  assert result["cells"] == {NAMES[1]: "finished", NAMES[3]: "finished"}

  calls.clear()
  timer = hold_elsewhere(str(tmp_path / "runs" / NAMES[2]), 60)
  try:
    with pytest.raises(lock.LockHeld, match=f"{NAMES[2]} is in use by host elsewhere pid 4242"):
      study.run(small_study(""), str(tmp_path))  # a sequential run stops at a busy cell
  finally:
    timer.cancel()
    timer.function(*timer.args)
  for bad in ("2/2", "claim-all", "1/", "a/b"):
    with pytest.raises(ValueError, match=f"config.study.worker='{re.escape(bad)}'"):
      study.run(small_study(bad), str(tmp_path))


def test_print_launch_writes_scripts_that_run_claiming_workers(tmp_path, monkeypatch):
  workdir = tmp_path / "study"
  argv = [
      "run.py",
      "--config=configs/study.py:tiny",
      f"--workdir={workdir}",
      "--config.study.print_launch=True",
      "--config.study.seeds=(0,1)",
  ]
  monkeypatch.setattr(sys, "argv", argv)
  config = small_study()
  config.study.print_launch = True
  assert study.run(config, str(workdir)) == {"cells": 5}
  assert sorted(os.listdir(workdir)) == [workdir_lib.LAUNCH]  # no config.json: nothing ran
  fleet, slurm = (
      str(workdir / workdir_lib.LAUNCH / n) for n in ("tpu_vm_fleet.sh", "slurm_array.sbatch")
  )
  for script in (fleet, slurm):
    subprocess.run(["bash", "-n", script], check=True)
  assert "#SBATCH --array=0-4" in open(slurm).read()

  # Run both with stand-ins for gcloud and python that record their arguments.
  bin_dir, record = tmp_path / "bin", tmp_path / "record"
  bin_dir.mkdir()
  for tool in ("gcloud", "python"):
    (bin_dir / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\n')
    (bin_dir / tool).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  unset = subprocess.run(["bash", fleet], env=env, capture_output=True, text=True)
  assert unset.returncode == 2 and "set VMS and ZONE" in unset.stderr
  subprocess.run(
      ["bash", fleet],
      check=True,
      capture_output=True,
      env={**env, "VMS": "vm-a vm-b", "ZONE": "us-central2-b", "REPO": "/r p"},
  )
  lines = record.read_text().splitlines()
  assert lines.count("--worker=all") == 2 and "vm-b" in lines and "--zone=us-central2-b" in lines
  command = next(line for line in lines if line.startswith("--command="))
  assert shlex.split(command.removeprefix("--command=")) == [  # as the VM's shell reads it
      "cd",
      "/r p",
      "&&",
      "python3",
      "run.py",
      "--config=configs/study.py:tiny",
      "--config.study.seeds=(0,1)",
      f"--workdir={workdir}",
      "--config.study.worker=claim",
      "--distributed",
  ]

  record.unlink()
  subprocess.run(
      ["bash", slurm],
      check=True,
      cwd=tmp_path,
      env={
          **env,
          "PYTHON": "python",
          "MODE": "static",
          "SLURM_ARRAY_TASK_ID": "1",
          "SLURM_ARRAY_TASK_COUNT": "3",
      },
  )
  assert record.read_text().splitlines() == [
      "run.py",
      "--config=configs/study.py:tiny",
      "--config.study.seeds=(0,1)",
      f"--workdir={workdir}",
      "--config.study.worker=1/3",
  ]


WORKER_CONFIG = """
from configs import study


def get_config(arg=None):
  config = study.get_config("tiny")
  config.study.sweep.learning_rate = ()
  for entry in config.study.strategy_sweeps.values():
    entry.learning_rate = ()
  config.study.update(dict(strategies=("full",), seeds=(0, 1), from_scratch=False,
                           poll_seconds=0.5, bootstrap_resamples=10))
  config.pretrain.update(dict(
      total_steps=2, batch_size=8, eval_steps=1, checkpoint_every=2, log_every=1,
      tokenizer=dict(path={tokenizer!r}, vocab_size=1024, num_sentinels=32),
      data=dict(seq_len=32, tfds_dir={tfds!r}), model=dict(max_len=32)))
  config.finetune.update(dict(
      total_steps=2, batch_size=8, eval_every=0, checkpoint_every=2, log_every=1, max_len=24,
      optimizer=dict(warmup_steps=1), task=dict(max_train_examples=32, max_eval_examples=16)))
  return config
"""


@pytest.mark.slow
def test_concurrent_claiming_workers_run_every_cell_once(tmp_path, tokenizer_path, tfds_dir):
  """Two real workers start together; the one pretraining is killed (SIGKILL) mid-cell; the
  other takes its cell over, a third joins, and between them every cell runs once, the
  fine-tuning cells only after the pretraining has finished."""
  config_path = tmp_path / "workers_study.py"
  config_path.write_text(WORKER_CONFIG.format(tokenizer=tokenizer_path, tfds=tfds_dir))
  workdir = tmp_path / "study"
  # The suite's compilation cache (tests/conftest.py): these cells compile test_study's programs.
  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  }

  def start(name):
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [
            sys.executable,
            "run.py",
            f"--config={config_path}",
            f"--workdir={workdir}",
            "--config.study.worker=claim",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )

  workers = {name: start(name) for name in ("a", "b")}
  try:
    pretraining = workdir / "runs" / "pretrain-bert"
    deadline = time.time() + 240
    while not (pretraining / "config.json").exists():  # the pretraining run has started
      assert time.time() < deadline and all(w.poll() is None for w in workers.values())
      time.sleep(0.05)
    holder = json.loads((pretraining / lock.LOCK_FILE).read_text())["pid"]
    assert not (pretraining / "results.json").exists()
    victim = next(name for name, w in workers.items() if w.pid == holder)
    workers.pop(victim).send_signal(signal.SIGKILL)
    workers["c"] = start("c")
    for worker in workers.values():
      assert worker.wait(timeout=400) == 0
  finally:
    for worker in workers.values():
      if worker.poll() is None:
        worker.kill()

  logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("a", "b", "c")}
  survivors = "".join(logs[name] for name in workers)
  assert "taking over the stale lock of host" in survivors and f"pid {holder} " in survivors
  cells = [
      "pretrain-bert",
      "wordnet_supersense.bert.full.seed0",
      "wordnet_supersense.bert.full.seed1",
  ]
  for cell in cells:  # the survivors ran each cell once, the pretraining cell included
    assert sum(logs[name].count(f" {cell}: running in ") for name in workers) == 1, cell
    assert (workdir / "runs" / cell / "results.json").exists()
  pretrained_at = os.path.getmtime(pretraining / "results.json")
  for cell in cells[1:]:
    assert os.path.getmtime(workdir / "runs" / cell / "config.json") >= pretrained_at
  assert (workdir / "results.md").stat().st_size > 0
  assert sum("cells finished" in text for text in logs.values()) == 2
