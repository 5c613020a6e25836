"""Which differences in a study's tables are real: every strategy against full fine-tuning at
the same init, every pretrained init against its from-scratch twin at the same strategy, every
adapted init (continued pretraining) against its model at the same strategy, and every task
fine-tuned in a multi-task mixture against its single-task run from the same init.

Each pair is tested twice, for the two sources of noise a reviewer asks about: Welch's t-test
over the seeds' scores (training randomness) and a paired bootstrap over test examples (which
examples the test set happens to hold; each resample scores both rows, every seed, on the same
examples). A difference is called significant only when both say p < ALPHA. Rows name the
compared groups as "<init>/<strategy>" (e.g. bert/full against scratch/full).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmreuse.study import results, selection, statistics
from lmreuse.study.results import COMPRESSED, GROUP, MULTITASK, split_compressed
from lmreuse.tasks import types as task_types

ALPHA = 0.05
TESTS = ("welch", "paired_bootstrap")
BASELINE_STRATEGY = "full"
ADAPTED_KIND = "adapted vs not"
MULTITASK_KIND = "multi-task vs single-task"


def pairs(
    summary: Sequence[dict], twins: dict[str, str], adapted: dict[str, str] | None = None
) -> list[tuple[tuple, tuple, str]]:
  """(a, b, kind) group keys to compare, in table order: strategy vs full, a compressed group
  vs its float self, reuse, then an adapted init (`adapted`: name → the init it continues)
  against its model at the same strategy, then a multi-task row against its single-task one."""
  keys = [tuple(line[k] for k in GROUP) for line in summary]
  present = set(keys)
  out = []
  for task, init, strategy, fraction in keys:
    full = (task, init, BASELINE_STRATEGY, fraction)
    if strategy != BASELINE_STRATEGY and COMPRESSED not in strategy and full in present:
      out.append(((task, init, strategy, fraction), full, "strategy vs full"))
  for task, init, strategy, fraction in keys:
    float_self = (task, init, split_compressed(strategy)[0], fraction)
    if COMPRESSED in strategy and float_self in present:
      out.append(((task, init, strategy, fraction), float_self, "compressed vs float"))
  for task, init, strategy, fraction in keys:
    twin = twins.get(init)
    if twin and (task, twin, strategy, fraction) in present:
      out.append(
          (
              (task, twin, strategy, fraction),
              (task, init, strategy, fraction),
              "pretrained vs scratch",
          )
      )
  for task, init, strategy, fraction in keys:
    model = (adapted or {}).get(init)
    if model and (task, model, strategy, fraction) in present:
      out.append(
          ((task, init, strategy, fraction), (task, model, strategy, fraction), ADAPTED_KIND)
      )
  for task, init, strategy, fraction in keys:
    single = (task, init.removesuffix(MULTITASK), strategy, fraction)
    if init.endswith(MULTITASK) and single in present:
      out.append(((task, init, strategy, fraction), single, MULTITASK_KIND))
  return out


def headline_metric(lines: Sequence[dict]) -> tuple[str, str] | None:
  """(metric, "<split>/<metric>") of a task's lines: test, or validation without a test split."""
  task_type = next((line["task_type"] for line in lines if line["task_type"]), None)
  if task_type is None:
    return None
  metric = task_types.get(task_type).headline
  split = "test" if any(f"test/{metric}.mean" in line for line in lines) else "validation"
  return metric, f"{split}/{metric}"


def label(key: tuple) -> str:
  return f"{key[1]}/{key[2]}"


def _records(rows: Sequence[dict]) -> list[list[dict]]:
  return [results.predictions(r) for r in rows]


def compare(
    rows: Sequence[dict],
    summary: Sequence[dict],
    choices: dict[tuple, selection.Choice],
    twins: dict[str, str],
    adapted: dict[str, str] | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict]:
  """comparisons.csv's rows: one per compared pair and test, with Benjamini-Hochberg adjusted
  p-values over each task's comparisons of one test (`p_adjusted`)."""
  finished = _finished(rows, choices)
  lines_of: dict[str, list[dict]] = {}
  for line in summary:
    lines_of.setdefault(line["task"], []).append(line)
  out = []
  for a, b, kind in pairs(summary, twins, adapted):
    out.extend(_pair_rows(a, b, kind, lines_of[a[0]], finished, n_resamples=n_resamples, seed=seed))
  _adjust(out, lines_of)
  for r in out:
    r["significant"] = bool("p_value" in r and r["p_value"] < ALPHA)
  return out


def _finished(rows: Sequence[dict], choices: dict[tuple, selection.Choice]) -> dict:
  """Per group, its reported runs that finished: only they carry scores to compare."""
  return {
      key: [r for r in selection.reported(choices[key], members) if r["status"] == "ok"]
      for key, members in results.by_group(rows).items()
  }


def _pair_rows(
    a: tuple,
    b: tuple,
    kind: str,
    lines: Sequence[dict],
    finished: dict[tuple, list[dict]],
    *,
    n_resamples: int,
    seed: int,
) -> list[dict]:
  """One pair's rows, one per test; a note stands in for a p-value where a test cannot run."""
  headline = headline_metric(lines)
  if headline is None:
    return []
  metric, key = headline
  values = {
      k: [float(r["metrics"][key]) for r in finished[k] if key in r["metrics"]] for k in (a, b)
  }
  base = {
      "task": a[0],
      "train_fraction": a[3],
      "a": label(a),
      "b": label(b),
      "kind": kind,
      "metric": key,
      "n_a": len(values[a]),
      "n_b": len(values[b]),
  }
  if not values[a] or not values[b]:
    return [{**base, "test": test, "note": "a side has no finished seed"} for test in TESTS]
  base.update(
      mean_a=statistics.interval(values[a])["mean"], mean_b=statistics.interval(values[b])["mean"]
  )
  welch = statistics.welch(values[a], values[b])
  welch_row = {
      **base,
      "test": "welch",
      "mean_diff": welch["mean_diff"],
      "p_value": welch["p_value"],
      "note": "" if min(len(values[a]), len(values[b])) >= 2 else "needs 2+ seeds per side",
  }
  boot_row = _bootstrap_row(
      base, metric, finished[a], finished[b], n_resamples=n_resamples, seed=seed
  )
  return [welch_row, boot_row]


def _bootstrap_row(
    base: dict,
    metric: str,
    finished_a: list[dict],
    finished_b: list[dict],
    *,
    n_resamples: int,
    seed: int,
) -> dict:
  """The paired bootstrap's row, or a note when the runs' predictions can't be paired."""
  try:
    boot = statistics.compare_predictions(
        finished_a[0]["task_type"],
        metric,
        _records(finished_a),
        _records(finished_b),
        n_resamples=n_resamples,
        seed=seed,
    )
  except (OSError, ValueError) as e:  # no predictions.jsonl, or different examples
    return {**base, "test": "paired_bootstrap", "note": f"not compared: {e}"}
  return {
      **base,
      "test": "paired_bootstrap",
      "mean_diff": boot["mean_diff"],
      "p_value": boot["p_value"],
      "ci95_low": boot["ci95_low"],
      "ci95_high": boot["ci95_high"],
      "n_examples": boot["n_examples"],
      "n_resamples": boot["n_resamples"],
      "note": "" if base["metric"].startswith("test/") else "on validation: no test split",
  }


def _adjust(out: list[dict], tasks: dict[str, list[dict]]) -> None:
  """Adds p_adjusted per task and test: each task's family of comparisons is corrected alone."""
  for task in tasks:
    for test in TESTS:
      chosen = [r for r in out if r["task"] == task and r["test"] == test and "p_value" in r]
      for r, adjusted in zip(chosen, statistics.adjust([r["p_value"] for r in chosen])):
        r["p_adjusted"] = adjusted


def verdicts(compared: Sequence[dict]) -> dict[tuple[str, float, str, str], dict]:
  """Per pair (task, fraction, a, b): mean_diff, both p-values and 'significant' when both
  tests give p < ALPHA, else 'not significant' ('not tested' without a p-value)."""
  out: dict[tuple[str, float, str, str], dict] = {}
  for r in compared:
    pair = out.setdefault(
        (r["task"], r["train_fraction"], r["a"], r["b"]),
        {"mean_diff": r.get("mean_diff"), "kind": r["kind"], "p": {}},
    )
    if "p_value" in r:
      pair["p"][r["test"]] = r["p_value"]
    if "n_resamples" in r:  # the bootstrap's p-value moves in steps of 2 / resamples
      pair["p_floor"] = 2.0 / r["n_resamples"]
  for pair in out.values():
    tested = [pair["p"].get(t) for t in TESTS]
    if any(p is None or p != p for p in tested):  # a missing or nan p-value
      pair["verdict"] = "not tested" if not pair["p"] else "not significant"
    else:
      pair["verdict"] = "significant" if all(p < ALPHA for p in tested) else "not significant"
  return out
