"""A study's child workdirs → per-group mean ± std over seeds → tables (csv, md, tex) and plots.

Every fine-tuning cell gets a row and every group a summary line whether or not it finished:
failed and missing groups are listed in the tables and named in the figures, so a result never
looks complete when part of the grid did not run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import textwrap
from typing import Any, Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmreuse.eval.metrics import HEADLINE
from lmreuse.study.grid import SCRATCH

GROUP = ("task", "init", "strategy", "train_fraction")
# Their metrics are fractions, shown ×100; SQuAD F1, BLEU and ROUGE are already on 0-100.
FRACTION_TYPES = ("classification", "regression", "tagging")
_HEAD = (*GROUP, "task_type", "n_ok", "n_failed", "n_missing", "n_total", "status")
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_MARKERS = "osD^vPX*<>"
_LINESTYLES = ("-", "--", ":", "-.")


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _error_line(text: str) -> str:
  """The final exception's first line: error.txt is a traceback, whose first line says nothing."""
  lines = text.strip().splitlines()
  frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
  tail = lines[frames[-1] + 1:] if frames else lines
  return next((line for line in tail if line and not line[0].isspace()), "")


def collect(workdir: str) -> list[dict]:
  """One row per fine-tuning cell; its status is what its workdir holds (results, error, none)."""
  manifest = os.path.join(workdir, "study.json")
  if not os.path.exists(manifest):
    raise FileNotFoundError(f"{manifest} not found: not a study workdir")
  rows = []
  for cell in _read_json(manifest)["cells"]:
    if cell["kind"] != "finetune":
      continue
    run_dir = os.path.join(workdir, cell["workdir"])
    row = {**{k: cell["group"][k] for k in GROUP}, "seed": cell["seed"], "name": cell["name"],
           "workdir": run_dir, "status": "missing", "task_type": None, "metrics": {},
           "parameters": {}, "wall_time_sec": None, "steps": None, "best_step": None,
           "error": None}
    if os.path.exists(os.path.join(run_dir, "results.json")):
      results = _read_json(os.path.join(run_dir, "results.json"))
      row.update(status="ok", task_type=results["task"]["type"], metrics=results["metrics"],
                 parameters=results["parameters"], wall_time_sec=results["wall_time_sec"],
                 steps=results["steps"], best_step=results["best_step"])
    elif os.path.exists(os.path.join(run_dir, "error.txt")):
      with open(os.path.join(run_dir, "error.txt")) as f:
        row.update(status="failed", error=_error_line(f.read()))
    rows.append(row)
  return rows


def _status(n_ok: int, n_failed: int, n_missing: int) -> str:
  total = n_ok + n_failed + n_missing
  if n_ok == total:
    return "ok"
  if n_failed == total:
    return "failed"
  if n_missing == total:
    return "missing"
  return f"{n_ok}/{total} seeds ({n_failed} failed, {n_missing} missing)"


def summarize(rows: Sequence[dict]) -> list[dict]:
  """One line per group in study order: seed counts, status, `<key>.mean` / `<key>.std` columns."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in GROUP), []).append(row)
  task_types = {row["task"]: row["task_type"] for row in rows if row["status"] == "ok"}
  summary = []
  for key, members in groups.items():
    counts = {s: sum(r["status"] == s for r in members) for s in ("ok", "failed", "missing")}
    line = {**dict(zip(GROUP, key)), "task_type": task_types.get(key[0]),
            **{f"n_{s}": n for s, n in counts.items()}, "n_total": len(members),
            "status": _status(counts["ok"], counts["failed"], counts["missing"])}
    values: dict[str, list[float]] = {}
    for row in (r for r in members if r["status"] == "ok"):
      for name, value in sorted(row["metrics"].items()):
        if name.startswith(("test/", "validation/")) and isinstance(value, (int, float)):
          values.setdefault(name, []).append(float(value))
      for name in ("trainable", "trainable_fraction"):
        values.setdefault(name, []).append(float(row["parameters"][name]))
      values.setdefault("wall_time_sec", []).append(float(row["wall_time_sec"]))
    for name, seeds in values.items():
      line[f"{name}.mean"] = statistics.fmean(seeds)
      line[f"{name}.std"] = statistics.stdev(seeds) if len(seeds) > 1 else 0.0
    line["errors"] = " | ".join(dict.fromkeys(r["error"] for r in members if r["error"]))
    summary.append(line)
  return summary


def _by_task(summary: Sequence[dict]) -> dict[str, list[dict]]:
  tasks: dict[str, list[dict]] = {}
  for line in summary:
    tasks.setdefault(line["task"], []).append(line)
  return tasks


def _headline(lines: Sequence[dict]) -> tuple[str, str, str, float] | None:
  """(metric, mode, score key, scale) of a task; the score is test/, or validation/ without a
  test split. None when no seed of the task finished, so its type is unknown."""
  task_type = lines[0]["task_type"]
  if task_type is None:
    return None
  metric, mode = HEADLINE[task_type]
  split = "test" if any(f"test/{metric}.mean" in line for line in lines) else "validation"
  return metric, mode, f"{split}/{metric}", 100.0 if task_type in FRACTION_TYPES else 1.0


def _best(lines: Sequence[dict], key: str, mode: str) -> set[int]:
  """Indices of the best mean score, per data fraction (more data wins anyway)."""
  pick = max if mode == "max" else min
  best: dict[float, float] = {}
  for line in lines:
    if f"{key}.mean" in line:
      value, fraction = line[f"{key}.mean"], line["train_fraction"]
      best[fraction] = pick(best.get(fraction, value), value)
  return {i for i, line in enumerate(lines)
          if f"{key}.mean" in line and line[f"{key}.mean"] == best[line["train_fraction"]]}


def _task_table(lines: Sequence[dict], esc: Callable[[str], str], pm: str, none: str,
                bold: Callable[[str], str]) -> tuple[list[str], list[list[str]], list[bool]]:
  """Header, cells and which columns are numeric, for one task; md and tex render them."""
  headline = _headline(lines)
  metric, mode, score, scale = headline or ("score", "max", "", 1.0)
  fractions = len({line["train_fraction"] for line in lines}) > 1
  best = _best(lines, score, mode) if headline else set()

  def mean_std(line: dict, key: str) -> str:
    if f"{key}.mean" not in line:
      return none
    return f"{line[f'{key}.mean'] * scale:.1f}{pm}{line[f'{key}.std'] * scale:.1f}"

  header = ["init", "strategy", *(["data fraction"] if fractions else []), f"test {metric}",
            f"validation {metric}", "trainable %", "wall time (s)", "seeds"]
  numeric = [False, False, *([True] if fractions else []), True, True, True, True, False]
  cells = []
  for i, line in enumerate(lines):
    scores = {key: mean_std(line, key) for key in (f"test/{metric}", f"validation/{metric}")}
    if i in best:
      scores[score] = bold(scores[score])
    ok = line["n_ok"] > 0
    cells.append([
        esc(line["init"]), esc(line["strategy"]),
        *([f"{line['train_fraction']:g}"] if fractions else []), *scores.values(),
        _percent(line["trainable_fraction.mean"]) if ok else none,
        f"{line['wall_time_sec.mean']:.0f}" if ok else none,
        esc(f"{line['n_ok']}/{line['n_total']}" if line["status"] == "ok" else line["status"])])
  return [esc(h) for h in header], cells, numeric


def _percent(fraction: float) -> str:
  """Trainable share in percent: 1 decimal, or 2 significant digits for PEFT's tiny shares."""
  percent = 100 * fraction
  return f"{percent:.1f}" if percent >= 1 else f"{percent:.2g}"


def _caption(task: str, lines: Sequence[dict]) -> str:
  headline = _headline(lines)
  if headline is None:
    return f"{task}: no finished run"
  scale = "×100" if headline[3] == 100 else "0-100"
  per = " per data fraction" if len({line["train_fraction"] for line in lines}) > 1 else ""
  return (f"{task} ({lines[0]['task_type']}): {headline[0]} ({scale}), mean ± std over finished "
          f"seeds; best {headline[2]}{per} in bold")


def _markdown(summary: Sequence[dict]) -> str:
  out = ["# Results", ""]
  for task, lines in _by_task(summary).items():
    header, cells, numeric = _task_table(lines, str, " ± ", "—", lambda s: f"**{s}**")
    out += [f"## {task}", "", _caption(task, lines) + ".", "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
            *("| " + " | ".join(row) + " |" for row in cells), ""]
  return "\n".join(out)


def _tex_escape(text: str) -> str:
  return "".join(_TEX.get(c, c) for c in text)


def _latex(summary: Sequence[dict]) -> str:
  out = [r"% Written by lmreuse/study/aggregate.py; needs \usepackage{booktabs}."]
  for task, lines in _by_task(summary).items():
    header, cells, numeric = _task_table(lines, _tex_escape, r" $\pm$ ", "--",
                                         lambda s: rf"\textbf{{{s}}}")
    caption = _tex_escape(_caption(task, lines)).replace("±", r"$\pm$").replace("×", r"$\times$")
    out += ["", r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}.}}",
            rf"\label{{tab:{_slug(task)}}}",
            r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", r"\toprule",
            " & ".join(header) + r" \\", r"\midrule",
            *(" & ".join(row) + r" \\" for row in cells), r"\bottomrule", r"\end{tabular}",
            r"\end{table}"]
  return "\n".join(out) + "\n"


def write_tables(workdir: str, summary: Sequence[dict]) -> dict[str, str]:
  """W/results.csv (every column), W/results.md and W/results.tex (headline columns per task)."""
  paths = {ext: os.path.join(workdir, f"results.{ext}") for ext in ("csv", "md", "tex")}
  stats = dict.fromkeys(k for line in summary for k in line if k not in _HEAD and k != "errors")
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*_HEAD, *stats, "errors"], restval="")
    writer.writeheader()
    writer.writerows(summary)
  with open(paths["md"], "w") as f:
    f.write(_markdown(summary))
  with open(paths["tex"], "w") as f:
    f.write(_latex(summary))
  return paths


def _slug(text: str) -> str:
  return re.sub(r"[^\w.+-]", "_", text)


def _label(line: dict, fraction: bool = False) -> str:
  at = f"@{line['train_fraction']:g}" if fraction else ""
  return f"{line['strategy']}/{line['init']}{at}"


def _not_shown(line: dict, why: str, fraction: bool = False) -> str:
  return f"{_label(line, fraction)} ({line['status'] if line['n_ok'] == 0 else why})"


class _Style:
  """One colour and marker per strategy, one line style per init, in every figure of a study;
  scratch inits get hollow markers."""

  def __init__(self, summary: Sequence[dict]):
    strategies = list(dict.fromkeys(line["strategy"] for line in summary))
    inits = list(dict.fromkeys(line["init"] for line in summary))
    self.colour = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    self.marker = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(strategies)}
    self.linestyle = {init: _LINESTYLES[i % len(_LINESTYLES)] for i, init in enumerate(inits)}

  def point(self, line: dict) -> dict:
    colour = self.colour[line["strategy"]]
    return dict(color=colour, marker=self.marker[line["strategy"]], markersize=7, capsize=3,
                markerfacecolor="none" if line["init"].endswith(SCRATCH) else colour)


def _axis_label(key: str, scale: float) -> str:
  return f"{key} (×100)" if scale == 100 else key


def _figure() -> tuple[Figure, Any]:
  fig = Figure(figsize=(6.4, 4.8))
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def _save(fig: Figure, title: str, not_shown: Sequence[str], path: str) -> str:
  if not_shown:
    title += "\n" + textwrap.fill("not shown: " + ", ".join(not_shown), 90)
  fig.axes[0].set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  return path


def _score_vs_trainable(lines: Sequence[dict], score: str, scale: float, style: _Style
                        ) -> tuple[Figure, list[str]]:
  fig, ax = _figure()
  not_shown = []
  for line in lines:
    if f"{score}.mean" not in line:
      not_shown.append(_not_shown(line, f"no {score}"))
      continue
    x, y = line["trainable_fraction.mean"], line[f"{score}.mean"] * scale
    ax.errorbar(x, y, yerr=line[f"{score}.std"] * scale, linestyle="none", **style.point(line))
    ax.annotate(line["init"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
  legend = [Line2D([], [], color=style.colour[s], marker=style.marker[s], linestyle="none",
                   label=s) for s in dict.fromkeys(line["strategy"] for line in lines)]
  legend += [Line2D([], [], color="grey", marker="o", linestyle="none", label="pretrained"),
             Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="none",
                    label="scratch")]
  ax.legend(handles=legend, fontsize=7)
  ax.set_xscale("log")
  ax.set(xlabel="trainable parameters (fraction of total)", ylabel=_axis_label(score, scale))
  return fig, not_shown


def _curve(run_dir: str, key: str) -> dict[int, float]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: float(r[key]) for r in records if key in r}


def _mean_curve(curves: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
  """Mean and std over the seeds evaluated at each step (early stopping ends seeds apart)."""
  steps = sorted({step for curve in curves for step in curve})
  means, stds = [], []
  for step in steps:
    values = [curve[step] for curve in curves if step in curve]
    means.append(statistics.fmean(values))
    stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
  return steps, means, stds


def _learning_curves(lines: Sequence[dict], seeds: dict[tuple, list[dict]], key: str,
                     scale: float, style: _Style) -> tuple[Figure, list[str]]:
  fig, ax = _figure()
  not_shown = []
  for line in lines:
    group = seeds.get(tuple(line[k] for k in GROUP), [])
    curves = [c for c in (_curve(row["workdir"], key) for row in group) if c]
    if not curves:
      not_shown.append(_not_shown(line, "no learning curve"))
      continue
    steps, means, stds = _mean_curve(curves)
    colour = style.colour[line["strategy"]]
    ax.plot(steps, [m * scale for m in means], color=colour,
            linestyle=style.linestyle[line["init"]], label=_label(line))
    ax.fill_between(steps, [(m - s) * scale for m, s in zip(means, stds)],
                    [(m + s) * scale for m, s in zip(means, stds)], color=colour, alpha=0.2)
  if ax.lines:
    ax.legend(fontsize=7)
  ax.set(xlabel="step", ylabel=_axis_label(key, scale))
  return fig, not_shown


def _score_vs_data(lines: Sequence[dict], score: str, scale: float, style: _Style
                   ) -> tuple[Figure, list[str]]:
  fig, ax = _figure()
  not_shown, pairs = [], {}
  for line in lines:
    if f"{score}.mean" in line:
      pairs.setdefault((line["init"], line["strategy"]), []).append(line)
    else:
      not_shown.append(_not_shown(line, f"no {score}", fraction=True))
  for points in pairs.values():
    points.sort(key=lambda line: line["train_fraction"])
    ax.errorbar([p["train_fraction"] for p in points],
                [p[f"{score}.mean"] * scale for p in points],
                yerr=[p[f"{score}.std"] * scale for p in points],
                linestyle=style.linestyle[points[0]["init"]], label=_label(points[0]),
                **style.point(points[0]))
  if pairs:
    ax.legend(fontsize=7)
  fractions = sorted({line["train_fraction"] for line in lines})
  ax.set_xscale("log")
  ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
  ax.set(xlabel="training-data fraction", ylabel=_axis_label(score, scale))
  return fig, not_shown


def write_plots(workdir: str, rows: Sequence[dict], summary: Sequence[dict]) -> list[str]:
  """W/plots/ per task: score vs trainable share and learning curves (at the largest data
  fraction), and score vs data fraction when there are several. Tasks with no finished run
  get none: the tables list them."""
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  style = _Style(summary)
  seeds: dict[tuple, list[dict]] = {}
  for row in rows:
    if row["status"] == "ok":
      seeds.setdefault(tuple(row[k] for k in GROUP), []).append(row)
  paths = []
  for task, lines in _by_task(summary).items():
    headline = _headline(lines)
    if headline is None:
      continue
    metric, _, score, scale = headline
    fractions = sorted({line["train_fraction"] for line in lines})
    full = [line for line in lines if line["train_fraction"] == fractions[-1]]
    at = f", data fraction {fractions[-1]:g}" if len(fractions) > 1 else ""
    figures = [
        (f"score_vs_trainable_{_slug(task)}", f"{task}: {score} vs trainable share{at}",
         _score_vs_trainable(full, score, scale, style)),
        (f"learning_curves_{_slug(task)}", f"{task}: validation/{metric} by step{at}",
         _learning_curves(full, seeds, f"validation/{metric}", scale, style))]
    if len(fractions) > 1:
      figures.append((f"score_vs_data_{_slug(task)}", f"{task}: {score} vs training data",
                      _score_vs_data(lines, score, scale, style)))
    paths += [_save(fig, title, not_shown, os.path.join(out_dir, f"{name}.png"))
              for name, title, (fig, not_shown) in figures]
  return paths


def report(workdir: str) -> dict:
  """collect → summarize → tables and plots; the study runner calls it when its grid is done."""
  rows = collect(workdir)
  summary = summarize(rows)
  return {"tables": write_tables(workdir, summary), "plots": write_plots(workdir, rows, summary),
          "summary": summary}
