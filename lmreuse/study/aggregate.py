"""A study's child workdirs → selected configurations → per-group statistics → comparisons →
tables (csv, md, tex) and plots.

Every fine-tuning cell gets a row and every group a summary line whether or not it finished:
failed and missing groups are listed in the tables and named in the figures, so a result never
looks complete when part of the grid did not run. Test numbers come only from each group's
configuration selected on validation (lmreuse/study/selection.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import logging

from lmreuse.study import comparisons, results, selection, statistics, tables
from lmreuse.study.results import GROUP
from lmreuse.viz import study_plots

# results.json's compute section, flattened into summary columns (see lmreuse/train/).
COMPUTE = (
    "train_flops",
    "train_flops_6nd",
    "peak_memory_bytes",
    "tokens",
    "time_sec.compile",
    "time_sec.train",
    "time_sec.eval",
    "time_sec.checkpoint",
)


def collect(workdir: str) -> list[dict]:
  """One row per fine-tuning cell, in grid order (lmreuse/study/results.py)."""
  return results.collect(workdir)


def _status(n_ok: int, n_failed: int, n_missing: int) -> str:
  total = n_ok + n_failed + n_missing
  if n_ok == total:
    return "ok"
  if n_failed == total:
    return "failed"
  if n_missing == total:
    return "missing"
  return f"{n_ok}/{total} seeds ({n_failed} failed, {n_missing} missing)"


def _compute(row: dict) -> dict[str, float]:
  flat = {}
  for key in COMPUTE:
    value: Any = row["compute"]
    for part in key.split("."):
      value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, (int, float)):
      flat[key] = float(value)
  return flat


def _values(members: Sequence[dict]) -> dict[str, list[float]]:
  """Per column, one value per finished seed: metrics (every evaluation set's `<set>/<metric>`,
  config.task.extra_eval's included), parameters, compute, wall time, and the model's stored
  bytes."""
  values: dict[str, list[float]] = {}
  for row in (r for r in members if r["status"] == "ok"):
    for name, value in sorted(row["metrics"].items()):
      if "/" in name and isinstance(value, (int, float)):
        values.setdefault(name, []).append(float(value))
    for name in ("trainable", "trainable_fraction"):
      values.setdefault(name, []).append(float(row["parameters"][name]))
    for name, value in _compute(row).items():
      values.setdefault(name, []).append(value)
    values.setdefault("wall_time_sec", []).append(float(row["wall_time_sec"]))
    if row.get("model_bytes") is not None:
      values.setdefault("model_bytes", []).append(float(row["model_bytes"]))
  return values


def summarize(
    rows: Sequence[dict], choices: dict[tuple, selection.Choice] | None = None
) -> list[dict]:
  """One line per group in study order: the selected configuration's seed counts, status and
  `<key>.mean` / `.std` / `.ci95` (95% Student-t interval half-width) / `n` columns."""
  choices = choices if choices is not None else selection.choose_all(rows)
  groups = results.by_group(rows)
  task_types = {row["task"]: row["task_type"] for row in rows if row["status"] == "ok"}
  summary = []
  for key, members in groups.items():
    choice = choices[key]
    chosen = selection.reported(choice, members)
    counts = {s: sum(r["status"] == s for r in chosen) for s in ("ok", "failed", "missing")}
    line = {
        **dict(zip(GROUP, key)),
        "task_type": task_types.get(key[0]),
        **{f"n_{s}": n for s, n in counts.items()},
        "n_total": len(chosen),
        "status": _status(counts["ok"], counts["failed"], counts["missing"]),
        "selected_hparams": (
            selection.describe(choice.selected.hparams) if choice.selected else ""
        ),
        "configurations": len(choice.candidates),
        "selection_note": choice.note(),
    }
    for name, seeds in _values(chosen).items():
      stats = statistics.interval(seeds)
      line.update(
          {
              f"{name}.mean": stats["mean"],
              f"{name}.std": stats["std"],
              f"{name}.ci95": stats["ci95"],
          }
      )
    line["n"] = counts["ok"]
    line["errors"] = " | ".join(dict.fromkeys(r["error"] for r in members if r["error"]))
    summary.append(line)
  return summary


def sweep_lines(choices: dict[tuple, selection.Choice]) -> list[dict]:
  """One line per (group, configuration) of every swept group: its validation score over the
  seeds selection read, its cells' statuses, and whether it was selected or tied."""
  lines = []
  for key, choice in choices.items():
    if not choice.swept:
      continue
    for candidate in choice.candidates:
      counts = candidate.counts
      marker = (
          "selected"
          if candidate is choice.selected
          else "tie"
          if any(candidate is t for t in choice.ties)
          else ""
      )
      lines.append(
          {
              **dict(zip(GROUP, key)),
              "hparams": selection.describe(candidate.hparams),
              **{f"hparam/{k}": v for k, v in candidate.hparams.items()},
              "metric": choice.metric or "",
              "seeds": ",".join(str(r["seed"]) for r in candidate.rows),
              **{f"n_{s}": n for s, n in counts.items()},
              "status": _status(counts["ok"], counts["failed"], counts["missing"]),
              "eligible": candidate.eligible,
              **(
                  {f"{choice.metric}.{k}": v for k, v in candidate.score.items()}
                  if candidate.score
                  else {}
              ),
              "selected": marker,
          }
      )
  return lines


def report(workdir: str, bootstrap_resamples: int | None = None) -> dict:
  """collect → select → summarize → compare → tables and plots; the study runner calls it when
  its grid is done. `bootstrap_resamples` defaults to the manifest's."""
  manifest = results.manifest(workdir)
  rows = results.collect(workdir, manifest["cells"])
  seeds = manifest.get("seeds") or sorted({r["seed"] for r in rows})
  mode = manifest.get("selection", "all")
  choices = selection.choose_all(rows, mode, seeds[0] if seeds else None)
  summary = summarize(rows, choices)
  sweep = sweep_lines(choices)
  resamples = bootstrap_resamples or manifest.get("bootstrap_resamples", 1000)
  compared = comparisons.compare(
      rows,
      summary,
      choices,
      manifest.get("twins", {}),
      manifest.get("adapted", {}),
      n_resamples=resamples,
  )
  few = sorted({line["n"] for line in summary if 0 < line["n"] < 3})
  warnings = []
  if few:
    warnings.append(
        f"fewer than 3 finished seeds in some groups (n = "
        f"{', '.join(map(str, few))}): intervals are wide "
        "and Welch's test has little power; add seeds with --config.study.seeds"
    )
  for warning in warnings:
    logging.warning("%s", warning)
  return {
      "tables": tables.write(workdir, summary, sweep, compared, warnings),
      "plots": study_plots.write(workdir, rows, summary, choices),
      "summary": summary,
      "sweep": sweep,
      "comparisons": compared,
      "warnings": warnings,
  }
