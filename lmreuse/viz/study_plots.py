"""A study's figures, per task: score vs trainable share, score vs train FLOPs (the Pareto view),
score vs the model's stored bytes where they differ (compression), validation learning curves
(of the trained groups: a compressed group has none of its own), validation score vs learning
rate (the sweep), and score vs training-data fraction when there are several. Each figure names
in its title what it leaves out (failed or missing groups), so a gap never passes for a result.
"""

from __future__ import annotations

import json
import os
import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmreuse import workdir as workdir_lib
from lmreuse.study import selection, tables
from lmreuse.study.grid import SCRATCH
from lmreuse.study.results import COMPRESSED, GROUP, by_group

_MARKERS = "osD^vPX*<>"
_LINESTYLES = ("-", "--", ":", "-.")
SWEPT_RATE = "learning_rate"


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
    return dict(
        color=colour,
        marker=self.marker[line["strategy"]],
        markersize=7,
        capsize=3,
        markerfacecolor="none" if line["init"].endswith(SCRATCH) else colour,
    )

  def legend(self, lines: Sequence[dict]) -> list[Line2D]:
    handles = [
        Line2D([], [], color=self.colour[s], marker=self.marker[s], linestyle="none", label=s)
        for s in dict.fromkeys(line["strategy"] for line in lines)
    ]
    return handles + [
        Line2D([], [], color="grey", marker="o", linestyle="none", label="pretrained"),
        Line2D(
            [],
            [],
            color="grey",
            marker="o",
            markerfacecolor="none",
            linestyle="none",
            label="scratch",
        ),
    ]


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


def _error(line: dict, score: str, scale: float) -> float:
  """The 95% interval's half-width (0 where one seed gives none)."""
  ci = line[f"{score}.ci95"]
  return 0.0 if ci != ci else ci * scale


def _score_vs(
    lines: Sequence[dict], x_key: str, score: str, scale: float, style: _Style, xlabel: str
) -> tuple[Figure, list[str]]:
  """Test score (mean, 95% CI) of each selected configuration against a per-group cost."""
  fig, ax = _figure()
  not_shown = []
  for line in lines:
    if f"{score}.mean" not in line or f"{x_key}.mean" not in line:
      not_shown.append(_not_shown(line, f"no {score if f'{score}.mean' not in line else x_key}"))
      continue
    x, y = line[f"{x_key}.mean"], line[f"{score}.mean"] * scale
    ax.errorbar(x, y, yerr=_error(line, score, scale), linestyle="none", **style.point(line))
    ax.annotate(line["init"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
  ax.legend(handles=style.legend(lines), fontsize=7)
  ax.set_xscale("log")
  ax.set(xlabel=xlabel, ylabel=_axis_label(score, scale))
  return fig, not_shown


def _pareto(
    lines: Sequence[dict], score: str, scale: float, mode: str, style: _Style
) -> tuple[Figure, list[str]]:
  """Score against train FLOPs, with the frontier of groups no cheaper group beats."""
  fig, not_shown = _score_vs(
      lines, "train_flops", score, scale, style, "train FLOPs (XLA cost analysis × steps)"
  )
  sign = -1 if mode == "max" else 1  # at equal cost the better group comes first
  points = sorted(
      (
          (line["train_flops.mean"], line[f"{score}.mean"] * scale)
          for line in lines
          if f"{score}.mean" in line and "train_flops.mean" in line
      ),
      key=lambda p: (p[0], sign * p[1]),
  )
  frontier, best = [], None
  for flops, value in points:
    if best is None or (value > best if mode == "max" else value < best):
      frontier.append((flops, value))
      best = value
  if len(frontier) > 1:
    fig.axes[0].step(*zip(*frontier), where="post", color="grey", alpha=0.5, linewidth=1)
  return fig, not_shown


def _curve(run_dir: str, key: str) -> dict[int, float]:
  path = os.path.join(run_dir, workdir_lib.METRICS)
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


def _learning_curves(
    lines: Sequence[dict], seeds: dict[tuple, list[dict]], key: str, scale: float, style: _Style
) -> tuple[Figure, list[str]]:
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
    ax.plot(
        steps,
        [m * scale for m in means],
        color=colour,
        linestyle=style.linestyle[line["init"]],
        label=_label(line),
    )
    ax.fill_between(
        steps,
        [(m - s) * scale for m, s in zip(means, stds)],
        [(m + s) * scale for m, s in zip(means, stds)],
        color=colour,
        alpha=0.2,
    )
  if ax.lines:
    ax.legend(fontsize=7)
  ax.set(xlabel="step", ylabel=_axis_label(key, scale))
  return fig, not_shown


def _score_vs_data(
    lines: Sequence[dict], score: str, scale: float, style: _Style
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
    ax.errorbar(
        [p["train_fraction"] for p in points],
        [p[f"{score}.mean"] * scale for p in points],
        yerr=[_error(p, score, scale) for p in points],
        linestyle=style.linestyle[points[0]["init"]],
        label=_label(points[0]),
        **style.point(points[0]),
    )
  if pairs:
    ax.legend(fontsize=7)
  fractions = sorted({line["train_fraction"] for line in lines})
  ax.set_xscale("log")
  ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
  ax.set(xlabel="training-data fraction", ylabel=_axis_label(score, scale))
  return fig, not_shown


def _sweep(
    choices: Sequence[selection.Choice], lines: Sequence[dict], scale: float, style: _Style
) -> tuple[Figure, list[str]]:
  """Validation score against the learning rate per (strategy, init), the other swept keys held
  at the selected values; the selected rate is starred. Shows whether a range brackets its
  optimum."""
  fig, ax = _figure()
  not_shown = []
  by_key = {tuple(line[k] for k in GROUP): line for line in lines}
  for choice in choices:
    line = by_key[choice.key]
    if choice.selected is None:
      not_shown.append(_not_shown(line, "nothing selected"))
      continue
    others = {k: v for k, v in choice.selected.hparams.items() if k != SWEPT_RATE}
    points = sorted(
        (c.hparams[SWEPT_RATE], c.score["mean"] * scale)
        for c in choice.candidates
        if c.score and {k: c.hparams[k] for k in others} == others
    )
    colour = style.colour[line["strategy"]]
    ax.plot(
        *zip(*points),
        color=colour,
        linestyle=style.linestyle[line["init"]],
        marker=style.marker[line["strategy"]],
        markerfacecolor="none" if line["init"].endswith(SCRATCH) else colour,
        label=_label(line),
    )
    ax.plot(
        choice.selected.hparams[SWEPT_RATE],
        choice.selected.score["mean"] * scale,
        marker="*",
        markersize=14,
        color=colour,
        linestyle="none",
    )
  if ax.lines:
    ax.legend(fontsize=7)
  ax.set_xscale("log")
  metric = next((c.metric for c in choices if c.metric), "validation")
  ax.set(xlabel="learning rate (★ selected)", ylabel=_axis_label(metric, scale))
  return fig, not_shown


def _task_figures(
    task: str,
    lines: Sequence[dict],
    found: tuple[str, str, str, float],
    choices: dict[tuple, selection.Choice],
    seeds: dict[tuple, list[dict]],
    style: _Style,
) -> list[tuple[str, str, tuple[Figure, list[str]]]]:
  """(file name, title, (figure, not shown)) of one task's figures."""
  metric, mode, score, scale = found
  fractions = sorted({line["train_fraction"] for line in lines})
  full = [line for line in lines if line["train_fraction"] == fractions[-1]]
  at = f", data fraction {fractions[-1]:g}" if len(fractions) > 1 else ""
  name = tables.slug(task)
  trained = [line for line in full if COMPRESSED not in line["strategy"]]
  trainable = "trainable parameters (fraction of total)"
  figures = [
      (
          f"score_vs_trainable_{name}",
          f"{task}: {score} vs trainable share{at}",
          _score_vs(full, "trainable_fraction", score, scale, style, trainable),
      ),
      (
          f"score_vs_flops_{name}",
          f"{task}: {score} vs train FLOPs{at}",
          _pareto(full, score, scale, mode, style),
      ),
      (
          f"learning_curves_{name}",
          f"{task}: validation/{metric} by step{at}",
          _learning_curves(trained, seeds, f"validation/{metric}", scale, style),
      ),
  ]
  if len({line["model_bytes.mean"] for line in full if "model_bytes.mean" in line}) > 1:
    figures.append(
        (
            f"score_vs_bytes_{name}",
            f"{task}: {score} vs model bytes{at}",
            _score_vs(full, "model_bytes", score, scale, style, "model bytes (stored)"),
        )
    )
  swept = [choices[tuple(line[k] for k in GROUP)] for line in full]
  swept = [c for c in swept if len({h.hparams.get(SWEPT_RATE) for h in c.candidates}) > 1]
  if swept:
    title = f"{task}: validation/{metric} vs learning rate{at}"
    figures.append((f"sweep_{name}", title, _sweep(swept, full, scale, style)))
  if len(fractions) > 1:
    title = f"{task}: {score} vs training data"
    figures.append((f"score_vs_data_{name}", title, _score_vs_data(lines, score, scale, style)))
  return figures


def write(
    workdir: str,
    rows: Sequence[dict],
    summary: Sequence[dict],
    choices: dict[tuple, selection.Choice],
) -> list[str]:
  """W/plots/ per task: score vs trainable share, score vs train FLOPs and learning curves (at
  the largest data fraction), validation vs learning rate when it was swept, and score vs data
  fraction when there are several. Tasks with no finished run get none: the tables list them."""
  out_dir = os.path.join(workdir, workdir_lib.PLOTS)
  os.makedirs(out_dir, exist_ok=True)
  style = _Style(summary)
  seeds = {
      key: [r for r in selection.reported(choices[key], members) if r["status"] == "ok"]
      for key, members in by_group(rows).items()
  }
  paths = []
  for task, lines in tables.by_task(summary).items():
    found = tables.headline(lines)
    if found is None:
      continue
    paths += [
        _save(fig, title, not_shown, os.path.join(out_dir, f"{fname}.png"))
        for fname, title, (fig, not_shown) in _task_figures(
            task, lines, found, choices, seeds, style
        )
    ]
  return paths
