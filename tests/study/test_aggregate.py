"""Study aggregation on a hand-written study: intervals and p-values equal scipy's on the same
numbers, test scores come only from the configuration selected on validation, failed and
missing cells stay visible in every table and figure, well-formed LaTeX."""

import csv
import json
import os

import numpy as np
import pytest
from scipy import stats

from lmreuse.study import aggregate
from lmreuse.viz import study_plots

TRACEBACK = """Traceback (most recent call last):
  File "experiments/study.py", line 59, in run_cell
    finetune.run(child, workdir)
ValueError: loss is nan at step 12
"""
N_TEST = 50
GOLD = ["a", "b"] * (N_TEST // 2)


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def make_study(root, cells, twins=None, selection="all", seeds=(0, 1, 2)):
  """cells: (task, task_type, init, strategy, fraction, seed, outcome[, hparams[, validation]]);
  outcome is a test score (results.json, metrics.jsonl and, for classification,
  predictions.jsonl right on the first round(outcome · N_TEST) examples), "failed" (error.txt)
  or None (missing). Validation defaults to outcome + 0.01."""
  manifest = [
      {
          "index": 0,
          "name": "pretrain-bert",
          "kind": "pretrain",
          "workdir": "runs/pretrain-bert",
          "depends_on": None,
          "group": {"objective": "bert"},
          "seed": 0,
          "hparams": {},
      }
  ]
  for task, task_type, init, strategy, fraction, seed, outcome, *rest in cells:
    hparams = rest[0] if rest else {}
    swept = "".join(f".{k}={v}" for k, v in hparams.items())
    name = f"{task}.{init}.{strategy}.data{fraction:g}{swept}.seed{seed}"
    manifest.append(
        {
            "index": len(manifest),
            "name": name,
            "kind": "finetune",
            "workdir": f"runs/{name}",
            "depends_on": "pretrain-bert",
            "seed": seed,
            "hparams": hparams,
            "group": {"task": task, "strategy": strategy, "init": init, "train_fraction": fraction},
        }
    )
    run_dir = os.path.join(root, "runs", name)
    os.makedirs(run_dir)
    if outcome == "failed":
      with open(os.path.join(run_dir, "error.txt"), "w") as f:
        f.write(TRACEBACK)
    elif outcome is not None:
      validation = rest[1] if len(rest) > 1 else outcome + 0.01
      trainable = 100 if strategy == "full" else 1
      metric = {"classification": "accuracy", "tagging": "f1"}[task_type]
      steps = 20
      write_json(
          os.path.join(run_dir, "results.json"),
          {
              "metrics": {
                  f"test/{metric}": outcome,
                  f"validation/{metric}": validation,
                  "validation/loss": 2.0,
              },
              "parameters": {
                  "total": 100,
                  "trainable": trainable,
                  "trainable_fraction": trainable / 100,
              },
              "compute": {
                  "train_flops": 1e9 * trainable * steps,
                  "train_flops_6nd": 6e9,
                  "peak_memory_bytes": 2**20 * trainable,
                  "tokens": 640,
                  "time_sec": {"compile": 1.0, "train": 5.0, "eval": 2.0, "checkpoint": 0.5},
              },
              "wall_time_sec": 10.0 + seed,
              "steps": steps,
              "best_step": steps,
              "strategy": strategy,
              "task": {"name": task, "type": task_type},
              "selection": {"metric": f"validation/{metric}", "mode": "max"},
          },
      )
      with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in (5, 10, 15, 20):
          f.write(json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n")
          if step % 10 == 0:
            f.write(
                json.dumps({"step": step, f"validation/{metric}": validation * step / 20}) + "\n"
            )
      if task_type == "classification":
        right = round(outcome * N_TEST)
        with open(os.path.join(run_dir, "predictions.jsonl"), "w") as f:
          for i, gold in enumerate(GOLD):
            wrong = "b" if gold == "a" else "a"
            f.write(
                json.dumps(
                    {
                        "text": f"example {i}",
                        "label": gold,
                        "prediction": gold if i < right else wrong,
                    }
                )
                + "\n"
            )
  write_json(
      os.path.join(root, "study.json"),
      {
          "name": "test",
          "selection": selection,
          "seeds": list(seeds),
          "bootstrap_resamples": 2000,
          "twins": twins if twins is not None else {"scratch": "bert"},
          "cells": manifest,
      },
  )
  return str(root)


@pytest.fixture
def study(tmp_path):
  cls = [
      ("sst_2", "classification", init, strategy, 1.0, seed, outcome)
      for init, strategy, outcomes in [
          ("bert", "full", (0.40, 0.42, 0.44)),
          ("bert", "lora", (0.50, "failed", 0.60)),
          ("scratch", "full", (0.30, 0.34, None)),
          ("scratch", "lora", ("failed", "failed", "failed")),
      ]
      for seed, outcome in enumerate(outcomes)
  ]
  tag = [
      ("ner", "tagging", "bert", "lora", fraction, seed, outcome)
      for fraction, outcomes in [(0.1, (0.2, None)), (1.0, (0.7, 0.8))]
      for seed, outcome in enumerate(outcomes)
  ]
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
  assert rows[0]["compute"]["train_flops"] == 2e12


def test_summarize_intervals_equal_scipys_and_status(study):
  summary = aggregate.summarize(aggregate.collect(study))
  assert len(summary) == 7  # every group, finished or not
  groups = by_group(summary)
  full = groups["sst_2", "bert", "full", 1.0]
  assert full["status"] == "ok" and (full["n_ok"], full["n_total"], full["n"]) == (3, 3, 3)
  accuracies = [0.40, 0.42, 0.44]
  low, high = stats.t.interval(0.95, 2, loc=np.mean(accuracies), scale=stats.sem(accuracies))
  assert full["test/accuracy.mean"] == pytest.approx(0.42)
  assert full["test/accuracy.std"] == pytest.approx(0.02)
  assert full["test/accuracy.ci95"] == pytest.approx((high - low) / 2)
  assert full["validation/accuracy.mean"] == pytest.approx(0.43)
  assert full["validation/loss.std"] == 0.0
  assert full["wall_time_sec.mean"] == pytest.approx(11.0)
  assert full["wall_time_sec.std"] == pytest.approx(1.0)
  assert full["trainable.mean"] == 100 and full["trainable_fraction.mean"] == 1.0
  assert full["train_flops.mean"] == 2e12 and full["peak_memory_bytes.mean"] == 100 * 2**20
  assert full["time_sec.compile.mean"] == 1.0 and full["selected_hparams"] == ""

  lora = groups["sst_2", "bert", "lora", 1.0]
  assert lora["status"] == "2/3 seeds (1 failed, 0 missing)"
  assert lora["test/accuracy.mean"] == pytest.approx(0.55)
  assert lora["test/accuracy.std"] == pytest.approx(0.05 * 2**0.5)  # ddof=1
  assert lora["errors"] == "ValueError: loss is nan at step 12"
  assert groups["sst_2", "scratch", "full", 1.0]["status"] == "2/3 seeds (0 failed, 1 missing)"

  dead = groups["sst_2", "scratch", "lora", 1.0]
  assert dead["status"] == "failed" and dead["n_ok"] == 0
  assert "test/accuracy.mean" not in dead and dead["task_type"] == "classification"
  assert groups["ner", "bert", "full", 1.0]["status"] == "missing"
  one_seed = groups["ner", "bert", "lora", 0.1]
  assert one_seed["status"] == "1/2 seeds (0 failed, 1 missing)"
  assert (one_seed["test/f1.mean"], one_seed["test/f1.std"]) == (pytest.approx(0.2), 0.0)
  assert np.isnan(one_seed["test/f1.ci95"])  # one seed gives no interval


def test_comparisons_equal_scipys_tests(study):
  result = aggregate.report(study)
  rows = {(r["a"], r["b"], r["test"]): r for r in result["comparisons"] if r["task"] == "sst_2"}
  reuse = rows["bert/full", "scratch/full", "welch"]
  assert reuse["kind"] == "pretrained vs scratch" and reuse["metric"] == "test/accuracy"
  expected = stats.ttest_ind([0.40, 0.42, 0.44], [0.30, 0.34], equal_var=False)
  assert reuse["p_value"] == pytest.approx(expected.pvalue)
  assert reuse["mean_diff"] == pytest.approx(0.42 - 0.32)
  boot = rows["bert/full", "scratch/full", "paired_bootstrap"]
  assert boot["mean_diff"] == pytest.approx(0.42 - 0.32) and boot["n_examples"] == N_TEST
  assert boot["ci95_low"] < boot["mean_diff"] < boot["ci95_high"]
  assert rows["bert/lora", "bert/full", "welch"]["kind"] == "strategy vs full"
  dead = rows["scratch/lora", "scratch/full", "welch"]
  assert dead["note"] == "a side has no finished seed" and "p_value" not in dead
  with open(result["tables"]["comparisons"]) as f:
    written = list(csv.DictReader(f))
  assert {"task", "a", "b", "metric", "mean_diff", "p_value", "test"} <= set(written[0])
  assert len(written) == len(result["comparisons"])


def test_report_writes_tables_and_plots(study):
  result = aggregate.report(study)
  tables = result["tables"]
  assert set(tables) == {"csv", "md", "tex", "sweep", "comparisons"}

  with open(tables["csv"]) as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == 7
  dead = next(r for r in csv_rows if r["init"] == "scratch" and r["strategy"] == "lora")
  assert dead["status"] == "failed" and dead["test/accuracy.mean"] == ""
  assert float(csv_rows[0]["test/accuracy.mean"]) == pytest.approx(0.42)
  assert float(csv_rows[0]["test/accuracy.ci95"]) > 0 and "selected_hparams" in csv_rows[0]

  md = open(tables["md"]).read()
  assert "## sst_2" in md and "## ner" in md and "95% confidence interval" in md
  assert "| bert | full | 42.0 ± 5.0 | 43.0 ± 5.0 | — |" in md
  assert "| scratch | lora | — | — | — | — | — | — | — | — | failed |" in md
  assert "| bert | lora | **55.0 ± 63.5** |" in md and "2/3 seeds (1 failed, 0 missing)" in md
  # Δ vs scratch on bert/full: +10.0, tested by both tests (3 vs 2 seeds here: not significant)
  assert "| bert | full | 42.0 ± 5.0 | 43.0 ± 5.0 | — | +10.0" in md
  assert "### sst_2: comparisons" in md and "not significant" in md
  # ner has two data fractions: the column appears, the best is bold per fraction.
  assert "| bert | lora | 0.1 | **20.0** |" in md
  assert "| bert | lora | 1 | **75.0 ± 63.5** |" in md
  assert "| bert | full | 1 | — | — | — | — | — | — | — | — | missing |" in md
  assert "data fraction" not in md.split("## ner")[0].split("### sst_2: comparisons")[0]

  tex = open(tables["tex"]).read()
  assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == tex.count(r"\begin{table}")
  assert r"sst\_2" in tex and "sst_2" not in tex.replace(r"sst\_2", "").replace("tab:sst_2", "")
  assert r"trainable \%" in tex
  assert r"\textbf{55.0 $\pm$ 63.5}" in tex  # lora beats full fine-tuning here
  assert r"\textbf{42.0" not in tex

  plot_names = sorted(os.path.basename(p) for p in result["plots"])
  assert plot_names == [
      "learning_curves_ner.png",
      "learning_curves_sst_2.png",
      "score_vs_data_ner.png",
      "score_vs_flops_ner.png",
      "score_vs_flops_sst_2.png",
      "score_vs_trainable_ner.png",
      "score_vs_trainable_sst_2.png",
  ]
  for path in result["plots"]:
    assert os.path.dirname(path) == os.path.join(study, "plots")
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
  assert result["summary"] == aggregate.summarize(aggregate.collect(study))


def test_plots_name_what_they_leave_out(study, monkeypatch):
  titles = {}
  save = study_plots._save

  def record(fig, title, not_shown, path):
    titles[os.path.basename(path)] = list(not_shown)
    return save(fig, title, not_shown, path)

  monkeypatch.setattr(study_plots, "_save", record)
  aggregate.report(study)
  assert titles["score_vs_trainable_sst_2.png"] == ["lora/scratch (failed)"]
  assert titles["score_vs_flops_sst_2.png"] == ["lora/scratch (failed)"]
  assert titles["learning_curves_sst_2.png"] == ["lora/scratch (failed)"]
  assert titles["score_vs_trainable_ner.png"] == ["full/bert (missing)"]
  assert titles["score_vs_data_ner.png"] == ["full/bert@1 (missing)"]


@pytest.fixture
def swept(tmp_path):
  """lr 1e-2 has the best test score but the worst validation; 3e-3 fails on one seed."""
  outcomes = {
      1e-3: ((0.40, 0.50), (0.44, 0.52)),
      3e-3: ((0.90, 0.90), ("failed", None)),
      1e-2: ((0.80, 0.20), (0.82, 0.22)),
  }  # lr: ((test, validation) per seed)
  cells = [
      ("sst_2", "classification", init, "full", 1.0, seed, test, {"learning_rate": lr}, validation)
      for init in ("bert", "scratch")
      for lr, seeds in outcomes.items()
      for seed, (test, validation) in enumerate(seeds)
  ]
  return make_study(tmp_path, cells, seeds=(0, 1))


def test_test_scores_come_only_from_the_configuration_selected_on_validation(swept):
  result = aggregate.report(swept)
  line = by_group(result["summary"])["sst_2", "bert", "full", 1.0]
  assert line["selected_hparams"] == "learning_rate=0.001"
  assert line["test/accuracy.mean"] == pytest.approx(0.42)  # not 1e-2's 0.81
  assert line["configurations"] == 3
  assert line["selection_note"] == "learning_rate at the edge of its range"  # widen it
  children = [
      json.load(open(os.path.join(swept, "runs", name, "results.json")))
      for name in (
          "sst_2.bert.full.data1.learning_rate=0.001.seed0",
          "sst_2.bert.full.data1.learning_rate=0.001.seed1",
      )
  ]
  assert line["validation/accuracy.mean"] == pytest.approx(
      np.mean([c["metrics"]["validation/accuracy"] for c in children])
  )

  with open(result["tables"]["sweep"]) as f:
    sweep = [r for r in csv.DictReader(f) if r["init"] == "bert"]
  assert [r["hparams"] for r in sweep] == [
      "learning_rate=0.001",
      "learning_rate=0.003",
      "learning_rate=0.01",
  ]
  assert [r["selected"] for r in sweep] == ["selected", "", ""]
  assert sweep[1]["status"] == "1/2 seeds (1 failed, 0 missing)"  # reported, not dropped
  assert sweep[1]["eligible"] == "False"  # 0.90 on its surviving seed does not win
  assert float(sweep[2]["validation/accuracy.mean"]) == pytest.approx(0.21)

  md = open(result["tables"]["md"]).read()
  assert "### sst_2: hyperparameter sweep" in md
  assert (
      "| bert | full | learning_rate=0.001 | **42.0 ± 25.4** | 51.0 ± 12.7 | — | +0.0 n.s. |" in md
  )
  assert "| bert | full | learning_rate=0.001 | **51.0 ± 1.4** | 0,1 | ok | selected |" in md
  assert (
      "| bert | full | learning_rate=0.003 | 90.0 ± 0.0 | 0,1 | 1/2 seeds (1 failed, 0 "
      "missing) |  |" in md
  )
  assert "sweep_sst_2.png" in {os.path.basename(p) for p in result["plots"]}


def test_missing_manifest_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"study.json"):
    aggregate.report(str(tmp_path))


def test_extra_evaluation_sets_get_their_own_columns(study):
  """config.task.extra_eval's scores (`<set>/<metric>` in results.json) are aggregated like the
  task's own splits and shown after validation's, for the tasks that have them."""
  for root, _, files in os.walk(os.path.join(study, "runs")):
    if "results.json" in files and "sst_2" in root:
      path = os.path.join(root, "results.json")
      results = json.load(open(path))
      results["metrics"]["ood/accuracy"] = results["metrics"]["test/accuracy"] - 0.1
      write_json(path, results)
  tables = aggregate.report(study)["tables"]
  rows = list(csv.DictReader(open(tables["csv"])))
  assert float(rows[0]["ood/accuracy.mean"]) == pytest.approx(0.32)  # bert/full: 0.42 - 0.1
  assert float(rows[0]["ood/accuracy.ci95"]) == pytest.approx(float(rows[0]["test/accuracy.ci95"]))
  md = open(tables["md"]).read()
  sst, ner = md.split("## ner")[0], md.split("## ner")[1]
  assert (
      "| init | strategy | test accuracy | validation accuracy | ood accuracy | Δ vs full |" in sst
  )
  assert "| bert | full | 42.0 ± 5.0 | 43.0 ± 5.0 | 32.0 ± 5.0 | — |" in sst
  assert "ood" not in ner
