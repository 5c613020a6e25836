"""A real multi-process run: 2 processes × 2 CPU devices equal 1 process × 4 on the same mesh.

Three launches of tests/parallel/multiprocess_check.py share the work: 2 processes pretrain a
tiny BERT (process 1 gets a SIGTERM mid-run: both stop at one step, save it, and resume) and
fine-tune it (BitFit, early stopping); 1 process does the same, then resumes
copies of the 2-process workdirs (their checkpoints restored under another process count) and
runs a small study (a learning-rate sweep, selection, tables) on its pretrained model;
2 processes resume a copy of the 1-process pretraining workdir, another copy whose latest
checkpoint is truncated, and a copy of the 2-process one whose latest data position is corrupt
in process 1's file alone (in both, every process falls back to the step before and trains the
rest again), and run the same study.
"""

import copy
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from absl import app, flags
from absl.testing import flagsaver

from configs import study as study_config
from lmreuse.train.writers import read_metrics
from tests import xla_flags
from tests.experiments.test_study import TINY_CELLS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"mesh.data": 2, "mesh.fsdp": 2}  # 4 devices: one global mesh for both launches
TIMEOUT_S = 600  # a hang guard: each launch takes 1-2 minutes on 2 idle cores


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(tmp_path, name: str, jobs: list[dict], num_processes: int) -> list[dict]:
  """Runs the jobs in `num_processes` processes holding 4 devices in all; their reports."""
  out = tmp_path / name
  out.mkdir()
  plan = out / "plan.json"
  plan.write_text(json.dumps({"root": str(tmp_path), "jobs": jobs}))
  # The tests' compilation cache (tests/conftest.py): a resumed copy compiles what the run it
  # copies compiled, under the same process count.
  env = dict(
      os.environ,
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=xla_flags.with_host_devices(4 // num_processes),
      JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "lmreuse-test-jax-cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
  )
  port = free_port()
  procs = []
  for i in range(num_processes):
    distributed = (
        [
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={i}",
        ]
        if num_processes > 1
        else []
    )
    log = open(out / f"log_{i}.txt", "w")
    procs.append(
        (
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.parallel.multiprocess_check",
                    str(plan),
                    str(out),
                    *distributed,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    )
  deadline = time.monotonic() + TIMEOUT_S
  try:
    for proc, log in procs:
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      log.close()
  finally:
    for proc, _ in procs:
      if proc.poll() is None:
        proc.kill()
  for i, (proc, _) in enumerate(procs):
    assert proc.returncode == 0, (name, i, (out / f"log_{i}.txt").read_text()[-6000:])
  return [json.loads((out / f"process_{i}.json").read_text()) for i in range(num_processes)]


def close(a: float, b: float) -> bool:
  return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-12)


def same_cell(a: str, b: str) -> bool:
  """Two CSV cells: the same text, or numbers equal to float32 rounding (nan equal to nan)."""
  if a == b:
    return True
  try:
    x, y = float(a), float(b)
  except ValueError:
    return False
  return close(x, y) or (x != x and y != y)


def assert_same_metrics(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], float):
      assert close(a[k], b[k]), (k, a[k], b[k])


def train_losses(workdir) -> list[tuple[int, float]]:
  return [(r["step"], r["train/loss"]) for r in read_metrics(str(workdir)) if "train/loss" in r]


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in open(path)]


def small_study(init_from) -> dict:
  """Two BitFit cells (a swept learning rate) on a pretrained model, selection and tables."""
  config = study_config.get_config("tiny")
  config.study.update(
      dict(
          pretrain=(),
          checkpoints=(f"mine={init_from}",),
          from_scratch=False,
          tasks=("wordnet_supersense",),
          strategies=("bitfit",),
          seeds=(0,),
          bootstrap_resamples=100,
      )
  )
  config.study.sweep.learning_rate = (3e-3, 1e-2)
  for entry in config.study.strategy_sweeps.values():
    entry.learning_rate = ()
  config.finetune.update(dict(copy.deepcopy(TINY_CELLS), mesh=dict(data=2, fsdp=2)))
  return config.to_dict()


def test_run_refuses_incomplete_distributed_flags():
  import run  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(process_id=1, num_processes=None, coordinator_address=None):
    with pytest.raises(
        app.UsageError, match="--process_id also needs --coordinator_address, " "--num_processes"
    ):
      run._initialize_distributed()  # pylint: disable=protected-access
  with flagsaver.flagsaver(process_id=2, num_processes=2, coordinator_address="localhost:1"):
    with pytest.raises(app.UsageError, match=r"--process_id=2 must be in \[0, --num_processes"):
      run._initialize_distributed()  # pylint: disable=protected-access


@pytest.mark.slow
def test_two_processes_equal_one_and_their_checkpoints_restore_across(
    tiny_config, finetune_config, tmp_path
):
  pretrain = tiny_config(
      "bert",
      total_steps=8,
      eval_every=4,
      checkpoint_every=4,
      eval_steps=2,
      **{"model.num_layers": 1, **MESH},
  ).to_dict()

  def finetune(init_from):
    return finetune_config(
        "bert",
        init_from=str(init_from),
        eval_every=1,
        log_every=1,
        learning_rate=3e-3,
        **{
            "strategy.name": "bitfit",
            "early_stopping.metric": "loss",
            "early_stopping.mode": "max",
            "early_stopping.patience": 2,
            **MESH,
        },
    ).to_dict()

  names = ("p1", "f1", "p2", "f2", "p2_in1", "f2_in1", "p1_in2", "p1_bad_in2", "p2_bad1")
  names += ("s1", "s2")
  w = {name: tmp_path / name for name in names}

  def job(name, config, copy_from=None, **extra):
    return {
        "name": name,
        "config": config,
        "workdir": str(w[name]),
        "copy_from": str(w[copy_from]) if copy_from else None,
        **extra,
    }

  # p2 gets a SIGTERM in process 1 after step 2, stops, and is re-run (resumed) to the end.
  two = launch(
      tmp_path,
      "two",
      [job("p2", pretrain, sigterm={"step": 2, "process": 1}), job("f2", finetune(w["p2"]))],
      2,
  )
  one = launch(
      tmp_path,
      "one",
      [
          job("p1", pretrain),
          job("f1", finetune(w["p1"])),
          job("p2_in1", pretrain, "p2"),
          job("f2_in1", finetune(w["p2"]), "f2"),
          job("s1", small_study(w["p1"])),
      ],
      1,
  )
  back = launch(
      tmp_path,
      "back",
      [
          job("p1_in2", pretrain, "p1"),
          job("p1_bad_in2", pretrain, "p1", truncate={"step": 8}),
          job("p2_bad1", pretrain, "p2", corrupt_data={"step": 8, "process": 1}),
          job("s2", small_study(w["p1"])),
      ],
      2,
  )
  assert [r["processes"] for r in two + one + back] == [2, 2, 1, 2, 2]
  assert {r["devices"] for r in two + one + back} == {4}

  # Both processes stopped at the step the preemption service chose, with a checkpoint of it.
  stops = [r["results"]["p2"]["preempted"] for r in two]
  assert stops[0] == stops[1] and 2 <= stops[0]["step"] < 8, stops
  assert str(stops[0]["step"]) in stops[0]["checkpoints"]

  # The same per-step losses (the preempted and resumed p2 included), evaluation, early
  # stopping and predictions.
  for a, b in (("p1", "p2"), ("f1", "f2")):
    losses_a, losses_b = train_losses(w[a]), train_losses(w[b])
    assert [s for s, _ in losses_a] == [s for s, _ in losses_b] and losses_a
    assert all(close(x, y) for (_, x), (_, y) in zip(losses_a, losses_b)), (losses_a, losses_b)
    assert one[0]["results"][a]["steps"] == two[0]["results"][b]["steps"]
    assert_same_metrics(one[0]["results"][a]["metrics"], two[0]["results"][b]["metrics"])
  f1, f2 = one[0]["results"]["f1"], two[0]["results"]["f2"]
  assert f1["stopped_early"] and (f1["best_step"], f1["steps"]) == (f2["best_step"], f2["steps"])
  histories = [
      json.loads((w[n] / "early_stopping.json").read_text())["history"] for n in ("f1", "f2")
  ]
  assert [s for s, _ in histories[0]] == [s for s, _ in histories[1]]
  assert all(close(x, y) for (_, x), (_, y) in zip(*histories))
  assert read_jsonl(w["f1"] / "predictions.jsonl") == read_jsonl(w["f2"] / "predictions.jsonl")
  # The 2 processes' results equal each other's (each computed them; process 0 wrote them).
  assert two[0]["results"] == two[1]["results"] and back[0]["results"] == back[1]["results"]

  # Checkpoints written by 2 processes restore in 1 (and a pretraining one the reverse),
  # evaluating the same.
  for copied, original, report in (
      ("p2_in1", "p2", one[0]),
      ("f2_in1", "f2", one[0]),
      ("p1_in2", "p1", back[0]),
  ):
    source = (two[0] if original.endswith("2") else one[0])["results"][original]
    assert report["results"][copied]["steps"] == source["steps"]
    assert_same_metrics(report["results"][copied]["metrics"], source["metrics"])
  assert read_jsonl(w["f2_in1"] / "predictions.jsonl") == read_jsonl(w["f2"] / "predictions.jsonl")

  # A latest checkpoint that does not restore: p1_bad_in2's arrays are truncated, as every
  # process sees them; p2_bad1's data position is corrupt in process 1's file only, so process 0
  # restores it and must still fall back with process 1. Both processes resume from the step
  # before, set step 8 aside and train the rest again, to the same losses and evaluation as
  # the run copied.
  for name, source, report in (("p1_bad_in2", "p1", one[0]), ("p2_bad1", "p2", two[0])):
    original = dict(train_losses(w[source]))
    bad, saved = back[0]["results"][name], os.listdir(w[source] / "checkpoints")
    assert bad["checkpoints"] == sorted([*saved, "unrestorable"]), (name, bad["checkpoints"])
    assert bad["steps"] == report["results"][source]["steps"]
    assert_same_metrics(bad["metrics"], report["results"][source]["metrics"])
    resumed = max(int(step) for step in saved if step != "8")
    redone = [(s, x) for s, x in train_losses(w[name]) if s > resumed]
    assert [s for s, _ in redone] == list(range(resumed + 1, 9)), (name, redone)
    assert all(close(x, original[s]) for s, x in redone), (name, redone, original)

  # The study: the same cells, selection, metrics, FLOPs, memory and comparisons from 2
  # processes as from 1 (all but the wall times; numbers to float32 rounding, since losses are
  # sums in another order across processes).
  for table in ("sweep.csv", "comparisons.csv", "results.csv"):
    readers = [csv.DictReader(open(w[s] / table)) for s in ("s1", "s2")]
    rows = [list(r) for r in readers]
    assert readers[0].fieldnames == readers[1].fieldnames and len(rows[0]) == len(rows[1]), table
    for a, b in zip(*rows):
      untimed = [k for k in a if "time_sec" not in k]
      assert all(same_cell(a[k], b[k]) for k in untimed), (table, a, b)
  assert len(rows[0]) == 1, rows  # results.csv: the one selected cell
  assert sorted(os.listdir(w["s1"] / "runs")) == sorted(os.listdir(w["s2"] / "runs"))

  # Only process 0 writes run outputs; orbax writes the checkpoints collectively.
  assert two[1]["writes"] == [] and back[1]["writes"] == []
  assert {
      "p2/metrics.jsonl",
      "p2/results.json",
      "p2/config.json",
      "f2/predictions.jsonl",
      "f2/labels.json",
      "f2/init_report.json",
      "f2/results.json",
      "f2/early_stopping.json",
  } <= set(two[0]["writes"])
  for name, sessions in (("p2", 2), ("f2", 1)):  # one events file per session (p2 resumed)
    assert len(os.listdir(w[name] / "tensorboard")) == sessions
    assert len(read_metrics(str(w[name]))) == len(read_metrics(str(w[name.replace("2", "1")])))
  assert (w["f2"] / "trainable").is_dir()
