"""A study's tables: results.csv (every column), results.md and results.tex (per task: the
selected configurations with 95% intervals, differences marked by their significance, cost;
then the sweep appendix and the comparisons), sweep.csv and comparisons.csv.

md and tex are rendered from the same header/cells lists, so they never disagree.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Sequence

from lmreuse import workdir as workdir_lib
from lmreuse.study import comparisons
from lmreuse.study.comparisons import ADAPTED_KIND, MULTITASK_KIND
from lmreuse.study.results import ADAPTED, COMPRESSED, GROUP, MULTITASK
from lmreuse.tasks import types

_HEAD = (
    *GROUP,
    "task_type",
    "selected_hparams",
    "configurations",
    "selection_note",
    "n",
    "n_ok",
    "n_failed",
    "n_missing",
    "n_total",
    "status",
)
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
LEGEND = (
    f"± is the 95% confidence interval over seeds (Student t). Δ columns: the row minus "
    f"full fine-tuning at the same init, or minus the from-scratch twin at the same "
    f"strategy; * = significant (p < {comparisons.ALPHA} in both Welch's t-test over "
    f"seeds and the paired bootstrap over test examples), n.s. = not significant. Each "
    f"row is the configuration selected on validation."
)
# Added to LEGEND where a task's table has compressed rows.
COMPRESSED_LEGEND = (
    "A row strategy@method is that strategy's fine-tuned models quantized after training "
    "(configs/compress.py:method), selected on its own validation scores; Δ vs float is it "
    "minus the same strategy in float, and model (MB) the stored weights."
)

# Added to LEGEND where a task's table has adapted rows.
ADAPTED_LEGEND = (
    f"An init <model>{ADAPTED}N continues <model>'s pretraining objective for N steps before "
    "fine-tuning, on the task's training inputs unless config.adapt.corpus names a file; "
    "Δ vs not adapted is it minus <model> at the same strategy."
)
# Added to LEGEND where a task's table has multi-task rows.
MULTITASK_LEGEND = (
    f"An init <init>{MULTITASK} is this task's head on a backbone fine-tuned with the other tasks "
    "of its mixture (config.task.name 'a+b'): each run's step selected by the mixture's mean "
    "validation score, the configuration by this task's; Δ vs single-task is it minus <init> "
    "at the same strategy. Its trainable %, FLOPs, memory and time are the whole mixture's."
)


@dataclasses.dataclass(frozen=True)
class Format:
  """How md and tex spell the pieces of a cell."""

  esc: Callable[[str], str]
  pm: str
  none: str
  bold: Callable[[str], str]


MD = Format(str, " ± ", "—", lambda s: f"**{s}**")
TEX = Format(
    lambda s: "".join(_TEX.get(c, c) for c in s), r" $\pm$ ", "--", lambda s: rf"\textbf{{{s}}}"
)


def by_task(lines: Sequence[dict]) -> dict[str, list[dict]]:
  tasks: dict[str, list[dict]] = {}
  for line in lines:
    tasks.setdefault(line["task"], []).append(line)
  return tasks


def headline(lines: Sequence[dict]) -> tuple[str, str, str, float] | None:
  """(metric, mode, score key, scale) of a task; the score is test/, or validation/ without a
  test split. None when no seed of the task finished, so its type is unknown."""
  found = comparisons.headline_metric(lines)
  if found is None:
    return None
  task_type = next(line["task_type"] for line in lines if line["task_type"])
  metric, score = found
  spec = types.get(task_type)  # fractions are shown ×100; SQuAD F1, BLEU, ROUGE are 0-100
  return metric, spec.mode, score, 100.0 if spec.fraction_scores else 1.0


def _best(lines: Sequence[dict], key: str, mode: str) -> set[int]:
  """Indices of the best mean score, per data fraction (more data wins anyway)."""
  pick = max if mode == "max" else min
  best: dict[float, float] = {}
  for line in lines:
    if f"{key}.mean" in line:
      value, fraction = line[f"{key}.mean"], line["train_fraction"]
      best[fraction] = pick(best.get(fraction, value), value)
  return {
      i
      for i, line in enumerate(lines)
      if f"{key}.mean" in line and line[f"{key}.mean"] == best[line["train_fraction"]]
  }


def percent(fraction: float) -> str:
  """Trainable share in percent: 1 decimal, or 2 significant digits for PEFT's tiny shares."""
  value = 100 * fraction
  return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _scientific(value: float) -> str:
  return f"{value:.2g}".replace("e+", "e")


def _delta(pair: dict | None, scale: float, fmt: Format) -> str:
  if pair is None or pair["mean_diff"] is None:
    return fmt.none
  mark = "*" if pair["verdict"] == "significant" else " n.s."
  return fmt.esc(f"{pair['mean_diff'] * scale:+.1f}{mark}")


def results_table(
    lines: Sequence[dict], verdicts: dict, fmt: Format
) -> tuple[list[str], list[list[str]], list[bool]]:
  """Header, cells and which columns are numeric, for one task's selected configurations."""
  found = headline(lines)
  metric, mode, score, scale = found or ("score", "max", "", 1.0)
  fractions = len({line["train_fraction"] for line in lines}) > 1
  swept = any(line["configurations"] > 1 for line in lines)
  compressed = any(COMPRESSED in line["strategy"] for line in lines)
  adapted = any(ADAPTED in line["init"] for line in lines)
  multitask = any(MULTITASK in line["init"] for line in lines)
  best = _best(lines, score, mode) if found else set()
  extras = extra_sets(lines, metric)
  header, numeric = _results_columns(
      metric,
      extras,
      fractions=fractions,
      swept=swept,
      compressed=compressed,
      adapted=adapted,
      multitask=multitask,
  )
  kinds = ["strategy vs full", *(["compressed vs float"] if compressed else [])]
  after = [
      "pretrained vs scratch",
      *([ADAPTED_KIND] if adapted else []),
      *([MULTITASK_KIND] if multitask else []),
  ]
  cells = []
  for i, line in enumerate(lines):
    keys = (f"test/{metric}", f"validation/{metric}", *(f"{name}/{metric}" for name in extras))
    scores = {key: _interval(line, key, scale, fmt) for key in keys}
    if i in best:
      scores[score] = fmt.bold(scores[score])
    deltas = [_delta(_verdict(verdicts, line, kind), scale, fmt) for kind in (*kinds, *after)]
    cells.append(
        _results_row(
            line, scores, deltas, fmt, fractions=fractions, swept=swept, compressed=compressed
        )
    )
  return [fmt.esc(h) for h in header], cells, numeric


def extra_sets(lines: Sequence[dict], metric: str) -> list[str]:
  """The config.task.extra_eval sets some line has a `metric` score on, sorted."""
  suffix = f"/{metric}.mean"
  names = {key.removesuffix(suffix) for line in lines for key in line if key.endswith(suffix)}
  return sorted(names - {"test", "validation"})


def _results_columns(
    metric: str,
    extras: Sequence[str],
    *,
    fractions: bool,
    swept: bool,
    compressed: bool,
    adapted: bool = False,
    multitask: bool = False,
) -> tuple[list[str], list[bool]]:
  """The header and which columns are numeric; the data fraction, selected hparams and
  compression's columns only show where they vary, so a single-run table stays narrow; each
  extra evaluation set (out-of-distribution data) gets a score column after validation's."""
  columns = [
      ("init", False),
      ("strategy", False),
      *([("data fraction", True)] if fractions else []),
      *([("selected", False)] if swept else []),
      (f"test {metric}", True),
      (f"validation {metric}", True),
      *[(f"{name} {metric}", True) for name in extras],
      ("Δ vs full", True),
      *([("Δ vs float", True)] if compressed else []),
      ("Δ vs scratch", True),
      *([("Δ vs not adapted", True)] if adapted else []),
      *([("Δ vs single-task", True)] if multitask else []),
      ("trainable %", True),
      *([("model (MB)", True)] if compressed else []),
      ("train FLOPs", True),
      ("peak memory (MB)", True),
      ("wall time (s)", True),
      ("seeds", False),
  ]
  return [name for name, _ in columns], [is_numeric for _, is_numeric in columns]


def _interval(line: dict, key: str, scale: float, fmt: Format) -> str:
  """Mean ± 95% interval of `key`, without the ± where one seed leaves the interval nan."""
  if f"{key}.mean" not in line:
    return fmt.none
  ci = line[f"{key}.ci95"]
  spread = f"{fmt.pm}{ci * scale:.1f}" if not math.isnan(ci) else ""
  return f"{line[f'{key}.mean'] * scale:.1f}{spread}"


def _verdict(verdicts: dict, line: dict, kind: str) -> dict | None:
  """The verdict of the `kind` comparison whose first side is this line's row, if any."""
  return next(
      (
          p
          for (task, fraction, a, _), p in verdicts.items()
          if p["kind"] == kind
          and task == line["task"]
          and fraction == line["train_fraction"]
          and a == f"{line['init']}/{line['strategy']}"
      ),
      None,
  )


def _results_row(
    line: dict,
    scores: dict[str, str],
    deltas: list[str],
    fmt: Format,
    *,
    fractions: bool,
    swept: bool,
    compressed: bool,
) -> list[str]:
  """One row's cells, in `_results_columns` order."""
  number = functools.partial(_mean_or_none, line, fmt)
  status = f"{line['n_ok']}/{line['n_total']}" if line["status"] == "ok" else line["status"]
  if line["selection_note"]:
    status += f" ({line['selection_note']})"
  return [
      fmt.esc(line["init"]),
      fmt.esc(line["strategy"]),
      *([f"{line['train_fraction']:g}"] if fractions else []),
      *([fmt.esc(line["selected_hparams"]) or fmt.none] if swept else []),
      *scores.values(),
      *deltas,
      number("trainable_fraction", percent),
      *([number("model_bytes", lambda b: f"{b / 2 ** 20:.2f}")] if compressed else []),
      number("train_flops", _scientific),
      number("peak_memory_bytes", lambda b: f"{b / 2 ** 20:.1f}"),
      number("wall_time_sec", lambda s: f"{s:.0f}"),
      fmt.esc(status),
  ]


def _mean_or_none(line: dict, fmt: Format, key: str, render: Callable[[float], str]) -> str:
  """A row's mean of `key`, rendered; `fmt.none` where no seed finished or the key is absent."""
  return render(line[f"{key}.mean"]) if line["n_ok"] > 0 and f"{key}.mean" in line else fmt.none


def sweep_table(
    lines: Sequence[dict], scale: float, fmt: Format
) -> tuple[list[str], list[list[str]], list[bool]]:
  """Every configuration of one task's swept groups: validation mean ± std over the seeds
  selection read."""
  fractions = len({line["train_fraction"] for line in lines}) > 1
  header = [
      "init",
      "strategy",
      *(["data fraction"] if fractions else []),
      "configuration",
      "validation",
      "seeds",
      "status",
      "chosen",
  ]
  numeric = [False, False, *([True] if fractions else []), False, True, False, False, False]
  cells = []
  for line in lines:
    key = f"{line['metric']}.mean"
    value = (
        f"{line[key] * scale:.1f}{fmt.pm}{line[line['metric'] + '.std'] * scale:.1f}"
        if key in line
        else fmt.none
    )
    cells.append(
        [
            fmt.esc(line["init"]),
            fmt.esc(line["strategy"]),
            *([f"{line['train_fraction']:g}"] if fractions else []),
            fmt.esc(line["hparams"]),
            fmt.bold(value) if line["selected"] == "selected" else value,
            fmt.esc(line["seeds"]),
            fmt.esc(line["status"]),
            fmt.esc(line["selected"]),
        ]
    )
  return [fmt.esc(h) for h in header], cells, numeric


def _p_value(p: float | None, floor: float, fmt: Format) -> str:
  """'0.013', or '< 0.002' where no bootstrap resample reversed the difference."""
  if p is None or math.isnan(p):
    return fmt.none
  return fmt.esc(f"< {floor:g}") if p < floor else f"{p:.2g}"


def comparisons_table(
    verdicts: dict, task: str, scale: float, fmt: Format
) -> tuple[list[str], list[list[str]], list[bool]]:
  header = ["a", "b", "data fraction", "mean difference", "Welch p", "bootstrap p", "verdict"]
  numeric = [False, False, True, True, True, True, False]
  cells = []
  for (name, fraction, a, b), pair in verdicts.items():
    if name != task:
      continue
    p = {
        t: _p_value(pair["p"].get(t), pair.get("p_floor", 0.0) if t != "welch" else 0.0, fmt)
        for t in comparisons.TESTS
    }
    diff = pair["mean_diff"]
    cells.append(
        [
            fmt.esc(a),
            fmt.esc(b),
            f"{fraction:g}",
            f"{diff * scale:+.1f}" if diff is not None else fmt.none,
            p["welch"],
            p["paired_bootstrap"],
            fmt.esc(pair["verdict"]),
        ]
    )
  return [fmt.esc(h) for h in header], cells, numeric


def _caption(task: str, lines: Sequence[dict]) -> str:
  found = headline(lines)
  if found is None:
    return f"{task}: no finished run"
  scale = "×100" if found[3] == 100 else "0-100"
  per = " per data fraction" if len({line["train_fraction"] for line in lines}) > 1 else ""
  return (
      f"{task} ({next(ln['task_type'] for ln in lines if ln['task_type'])}): {found[0]} "
      f"({scale}), mean ± 95% CI over finished seeds; best {found[2]}{per} in bold"
  )


def _md_table(table: tuple[list[str], list[list[str]], list[bool]]) -> list[str]:
  header, cells, numeric = table
  return [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
      *("| " + " | ".join(row) + " |" for row in cells),
  ]


def _tex_table(
    table: tuple[list[str], list[list[str]], list[bool]], caption: str, label: str
) -> list[str]:
  header, cells, numeric = table
  caption = TEX.esc(caption).replace("±", r"$\pm$").replace("×", r"$\times$")
  return [
      "",
      r"\begin{table}[t]",
      r"\centering",
      rf"\caption{{{caption}}}",
      rf"\label{{tab:{slug(label)}}}",
      r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
      r"\toprule",
      " & ".join(header) + r" \\",
      r"\midrule",
      *(" & ".join(row) + r" \\" for row in cells),
      r"\bottomrule",
      r"\end{tabular}",
      r"\end{table}",
  ]


def _sections(summary: Sequence[dict], sweep: Sequence[dict], compared: Sequence[dict]):
  """Per task: (task, its summary lines, score scale, every pair's verdict, its sweep lines)."""
  verdicts = comparisons.verdicts(compared)
  sweeps = by_task(sweep)
  for task, lines in by_task(summary).items():
    found = headline(lines)
    scale = found[3] if found else 1.0
    yield task, lines, scale, verdicts, sweeps.get(task, [])


def legend(lines: Sequence[dict]) -> str:
  """LEGEND, with COMPRESSED_LEGEND and ADAPTED_LEGEND where the task's table has such rows."""
  parts = [LEGEND]
  if any(COMPRESSED in line["strategy"] for line in lines):
    parts.append(COMPRESSED_LEGEND)
  if any(ADAPTED in line["init"] for line in lines):
    parts.append(ADAPTED_LEGEND)
  if any(MULTITASK in line["init"] for line in lines):
    parts.append(MULTITASK_LEGEND)
  return " ".join(parts)


def markdown(
    summary: Sequence[dict],
    sweep: Sequence[dict],
    compared: Sequence[dict],
    warnings: Sequence[str] = (),
) -> str:
  out = ["# Results", "", *(f"> **Warning:** {w}" for w in warnings), *([""] if warnings else [])]
  for task, lines, scale, verdicts, sweep_of_task in _sections(summary, sweep, compared):
    out += [
        f"## {task}",
        "",
        _caption(task, lines) + ".",
        "",
        legend(lines),
        "",
        *_md_table(results_table(lines, verdicts, MD)),
        "",
    ]
    if any(name == task for name, *_ in verdicts):
      out += [
          f"### {task}: comparisons",
          "",
          "Mean differences ×100 where the table is; "
          "p-values are two-sided and unadjusted (comparisons.csv also has "
          "Benjamini-Hochberg adjusted ones).",
          "",
          *_md_table(comparisons_table(verdicts, task, scale, MD)),
          "",
      ]
    if sweep_of_task:
      out += [
          f"### {task}: hyperparameter sweep",
          "",
          "Validation score of every "
          "configuration (mean ± std over the seeds selection read); tables report the "
          "selected one.",
          "",
          *_md_table(sweep_table(sweep_of_task, scale, MD)),
          "",
      ]
  return "\n".join(out)


def latex(summary: Sequence[dict], sweep: Sequence[dict], compared: Sequence[dict]) -> str:
  out = [r"% Written by lmreuse/study/tables.py; needs \usepackage{booktabs}."]
  for task, lines, scale, verdicts, sweep_of_task in _sections(summary, sweep, compared):
    out += _tex_table(
        results_table(lines, verdicts, TEX), f"{_caption(task, lines)}. {legend(lines)}", task
    )
    if any(name == task for name, *_ in verdicts):
      out += _tex_table(
          comparisons_table(verdicts, task, scale, TEX),
          f"{task}: comparisons (two-sided, unadjusted p-values).",
          f"{task}-comparisons",
      )
    if sweep_of_task:
      out += _tex_table(
          sweep_table(sweep_of_task, scale, TEX),
          f"{task}: validation score of every swept configuration (mean ± std).",
          f"{task}-sweep",
      )
  return "\n".join(out) + "\n"


def slug(text: str) -> str:
  return re.sub(r"[^\w.+-]", "_", text)


def _csv(path: str, lines: Sequence[dict], head: Sequence[str], tail: Sequence[str] = ()) -> None:
  middle = dict.fromkeys(k for line in lines for k in line if k not in head and k not in tail)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*head, *middle, *tail], restval="")
    writer.writeheader()
    writer.writerows(lines)


def write(
    workdir: str,
    summary: Sequence[dict],
    sweep: Sequence[dict],
    compared: Sequence[dict],
    warnings: Sequence[str] = (),
) -> dict[str, str]:
  """W/results.{csv,md,tex}, W/sweep.csv and W/comparisons.csv."""
  paths = {
      name.rsplit(".", 1)[1]: os.path.join(workdir, name) for name in workdir_lib.RESULTS_TABLES
  }
  paths["sweep"] = os.path.join(workdir, workdir_lib.SWEEP_TABLE)
  paths["comparisons"] = os.path.join(workdir, workdir_lib.COMPARISONS_TABLE)
  _csv(paths["csv"], summary, _HEAD, ("errors",))
  _csv(
      paths["sweep"],
      sweep,
      (*GROUP, "hparams", "metric", "seeds", "status", "eligible", "selected"),
  )
  _csv(
      paths["comparisons"],
      compared,
      (
          "task",
          "train_fraction",
          "kind",
          "a",
          "b",
          "metric",
          "test",
          "mean_a",
          "mean_b",
          "mean_diff",
          "p_value",
          "p_adjusted",
          "significant",
          "n_a",
          "n_b",
      ),
      ("note",),
  )
  with open(paths["md"], "w") as f:
    f.write(markdown(summary, sweep, compared, warnings))
  with open(paths["tex"], "w") as f:
    f.write(latex(summary, sweep, compared))
  return paths
