"""Study aggregation on a hand-written study: mean ± std worked out by hand, failed and missing
cells kept visible in every table and figure, well-formed LaTeX."""

import csv
import json
import os

import pytest

from lmreuse.study import aggregate

TRACEBACK = """Traceback (most recent call last):
  File "experiments/study.py", line 59, in run_cell
    finetune.run(child, workdir)
ValueError: loss is nan at step 12
"""


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def make_study(root, cells):
  """cells: (task, task_type, init, strategy, fraction, seed, outcome); outcome is a test
  accuracy-like score (results.json + metrics.jsonl), "failed" (error.txt) or None (missing)."""
  manifest = [{"index": 0, "name": "pretrain-bert", "kind": "pretrain",
               "workdir": "runs/pretrain-bert", "depends_on": None,
               "group": {"objective": "bert"}, "seed": 0}]
  for task, task_type, init, strategy, fraction, seed, outcome in cells:
    name = f"{task}.{init}.{strategy}.data{fraction:g}.seed{seed}"
    manifest.append({"index": len(manifest), "name": name, "kind": "finetune",
                     "workdir": f"runs/{name}", "depends_on": "pretrain-bert", "seed": seed,
                     "group": {"task": task, "strategy": strategy, "init": init,
                               "train_fraction": fraction}})
    run_dir = os.path.join(root, "runs", name)
    os.makedirs(run_dir)
    if outcome == "failed":
      with open(os.path.join(run_dir, "error.txt"), "w") as f:
        f.write(TRACEBACK)
    elif outcome is not None:
      trainable = 100 if strategy == "full" else 1
      metric = {"classification": "accuracy", "tagging": "f1"}[task_type]
      write_json(os.path.join(run_dir, "results.json"), {
          "metrics": {f"test/{metric}": outcome, f"validation/{metric}": outcome + 0.01,
                      "validation/loss": 2.0},
          "parameters": {"total": 100, "trainable": trainable,
                         "trainable_fraction": trainable / 100},
          "wall_time_sec": 10.0 + seed, "steps": 20, "best_step": 20, "strategy": strategy,
          "task": {"name": task, "type": task_type},
          "selection": {"metric": f"validation/{metric}", "mode": "max"}})
      with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in (5, 10, 15, 20):
          f.write(json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n")
          if step % 10 == 0:
            f.write(json.dumps({"step": step, f"validation/{metric}": outcome * step / 20})
                    + "\n")
  write_json(os.path.join(root, "study.json"), {"name": "test", "cells": manifest})
  return str(root)


@pytest.fixture
def study(tmp_path):
  cls = [("sst_2", "classification", init, strategy, 1.0, seed, outcome)
         for init, strategy, outcomes in [
             ("bert", "full", (0.40, 0.42, 0.44)),
             ("bert", "lora", (0.50, "failed", 0.60)),
             ("scratch", "full", (0.30, 0.34, None)),
             ("scratch", "lora", ("failed", "failed", "failed"))]
         for seed, outcome in enumerate(outcomes)]
  tag = [("ner", "tagging", "bert", "lora", fraction, seed, outcome)
         for fraction, outcomes in [(0.1, (0.2, None)), (1.0, (0.7, 0.8))]
         for seed, outcome in enumerate(outcomes)]
  tag += [("ner", "tagging", "bert", "full", 1.0, seed, None) for seed in range(2)]
  return make_study(tmp_path, cls + tag)


def by_group(summary):
  return {(s["task"], s["init"], s["strategy"], s["train_fraction"]): s for s in summary}


def test_collect_rows_and_statuses(study):
  rows = aggregate.collect(study)
  assert len(rows) == 18  # the pretraining cell is not a row
  statuses = [r["status"] for r in rows if r["task"] == "sst_2"]
  assert statuses == ["ok"] * 4 + ["failed", "ok", "ok", "ok", "missing"] + ["failed"] * 3
  failed = rows[4]
  assert (failed["strategy"], failed["seed"]) == ("lora", 1)
  assert failed["error"] == "ValueError: loss is nan at step 12"
  assert rows[0]["metrics"]["test/accuracy"] == 0.40
  assert rows[0]["parameters"]["trainable_fraction"] == 1.0
  assert rows[0]["task_type"] == "classification"


def test_summarize_means_stds_and_status(study):
  summary = aggregate.summarize(aggregate.collect(study))
  assert len(summary) == 7  # every group, finished or not
  groups = by_group(summary)
  full = groups["sst_2", "bert", "full", 1.0]
  assert full["status"] == "ok" and (full["n_ok"], full["n_total"]) == (3, 3)
  assert full["test/accuracy.mean"] == pytest.approx(0.42)
  assert full["test/accuracy.std"] == pytest.approx(0.02)
  assert full["validation/accuracy.mean"] == pytest.approx(0.43)
  assert full["validation/loss.std"] == 0.0
  assert full["wall_time_sec.mean"] == pytest.approx(11.0)
  assert full["wall_time_sec.std"] == pytest.approx(1.0)
  assert full["trainable.mean"] == 100 and full["trainable_fraction.mean"] == 1.0

  lora = groups["sst_2", "bert", "lora", 1.0]
  assert lora["status"] == "2/3 seeds (1 failed, 0 missing)"
  assert lora["test/accuracy.mean"] == pytest.approx(0.55)
  assert lora["test/accuracy.std"] == pytest.approx(0.05 * 2 ** 0.5)  # ddof=1
  assert lora["errors"] == "ValueError: loss is nan at step 12"
  assert groups["sst_2", "scratch", "full", 1.0]["status"] == "2/3 seeds (0 failed, 1 missing)"

  dead = groups["sst_2", "scratch", "lora", 1.0]
  assert dead["status"] == "failed" and dead["n_ok"] == 0
  assert "test/accuracy.mean" not in dead and dead["task_type"] == "classification"
  assert groups["ner", "bert", "full", 1.0]["status"] == "missing"
  one_seed = groups["ner", "bert", "lora", 0.1]
  assert one_seed["status"] == "1/2 seeds (0 failed, 1 missing)"
  assert (one_seed["test/f1.mean"], one_seed["test/f1.std"]) == (pytest.approx(0.2), 0.0)


def test_report_writes_tables_and_plots(study):
  result = aggregate.report(study)
  tables = result["tables"]
  assert set(tables) == {"csv", "md", "tex"}

  with open(tables["csv"]) as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == 7
  dead = next(r for r in csv_rows if r["init"] == "scratch" and r["strategy"] == "lora")
  assert dead["status"] == "failed" and dead["test/accuracy.mean"] == ""
  assert float(csv_rows[0]["test/accuracy.mean"]) == pytest.approx(0.42)

  md = open(tables["md"]).read()
  assert "## sst_2" in md and "## ner" in md
  assert "| bert | full | 42.0 ± 2.0 | 43.0 ± 2.0 | 100.0 | 11 | 3/3 |" in md
  assert "| scratch | lora | — | — | — | — | failed |" in md
  assert "| bert | lora | **55.0 ± 7.1** |" in md and "2/3 seeds (1 failed, 0 missing)" in md
  # ner has two data fractions: the column appears, the best is bold per fraction.
  assert "| bert | lora | 0.1 | **20.0 ± 0.0** |" in md
  assert "| bert | lora | 1 | **75.0 ± 7.1** |" in md
  assert "| bert | full | 1 | — | — | — | — | missing |" in md
  assert "data fraction" not in md.split("## ner")[0]

  tex = open(tables["tex"]).read()
  for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
    assert tex.count(rule) == 2  # one table per task
  assert r"sst\_2" in tex and "sst_2" not in tex.replace(r"sst\_2", "").replace("tab:sst_2", "")
  assert r"trainable \%" in tex
  assert r"\textbf{55.0 $\pm$ 7.1}" in tex  # lora beats full fine-tuning here
  assert r"\textbf{42.0" not in tex

  plots = sorted(os.path.basename(p) for p in result["plots"])
  assert plots == ["learning_curves_ner.png", "learning_curves_sst_2.png",
                   "score_vs_data_ner.png", "score_vs_trainable_ner.png",
                   "score_vs_trainable_sst_2.png"]
  for path in result["plots"]:
    assert os.path.dirname(path) == os.path.join(study, "plots")
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
  assert result["summary"] == aggregate.summarize(aggregate.collect(study))


def test_plots_name_what_they_leave_out(study, monkeypatch):
  titles = {}
  save = aggregate._save

  def record(fig, title, not_shown, path):
    titles[os.path.basename(path)] = list(not_shown)
    return save(fig, title, not_shown, path)

  monkeypatch.setattr(aggregate, "_save", record)
  rows = aggregate.collect(study)
  aggregate.write_plots(study, rows, aggregate.summarize(rows))
  assert titles["score_vs_trainable_sst_2.png"] == ["lora/scratch (failed)"]
  assert titles["learning_curves_sst_2.png"] == ["lora/scratch (failed)"]
  assert titles["score_vs_trainable_ner.png"] == ["full/bert (missing)"]
  assert titles["score_vs_data_ner.png"] == ["full/bert@1 (missing)"]


def test_missing_manifest_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="study.json"):
    aggregate.report(str(tmp_path))
