"""Choosing each group's hyperparameters on validation, so no table number peeks at test.

A group (task, init, strategy, data fraction) holds one candidate per swept configuration.
The selected candidate has the best mean validation headline metric over the seeds selection
reads: every seed (`selection='all'`) or the study's first (`'first_seed'`, whose winner then
runs the other seeds). Test scores are reported for the selected candidate's cells only.

Rules a reader can check in sweep.csv: a candidate with a failed cell is not eligible (a
diverged learning rate must not win on its surviving seeds); candidates still running make the
choice provisional; equal means are ties, broken by sweep order, and listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from lmreuse.study import statistics
from lmreuse.study.results import by_group
from lmreuse.tasks import types as task_types


@dataclasses.dataclass
class Candidate:
  hparams: dict[str, Any]
  rows: list[dict]  # this configuration's cells that selection reads
  score: dict[str, float] | None  # statistics.interval of the validation metric; None if none ran

  @property
  def counts(self) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in self.rows) for s in ("ok", "failed", "missing")}

  @property
  def eligible(self) -> bool:
    counts = self.counts
    return counts["ok"] > 0 and counts["failed"] == 0


@dataclasses.dataclass
class Choice:
  key: tuple  # the GROUP values
  metric: str | None  # "validation/<headline>"; None while no cell of the task ran
  mode: str  # max | min
  candidates: list[Candidate]
  selected: Candidate | None
  ties: list[Candidate]  # other eligible candidates with the selected one's mean

  @property
  def swept(self) -> bool:
    return len(self.candidates) > 1

  @property
  def complete(self) -> bool:
    """Every candidate's selection cells have finished or failed."""
    return all(c.counts["missing"] == 0 for c in self.candidates)

  def note(self) -> str:
    """What a reader must know about this choice: '' when it is final and unique."""
    if not self.swept:
      return ""
    parts = []
    if self.selected is None:
      parts.append("no configuration finished without failures")
    if not self.complete:
      pending = sum(c.counts["missing"] > 0 for c in self.candidates)
      parts.append(f"provisional: {pending} configuration{'s' * (pending > 1)} still to run")
    if self.ties:
      parts.append("tied with " + ", ".join(describe(c.hparams) for c in self.ties))
    edges = at_edge(self)
    if edges:
      parts.append(f"{', '.join(edges)} at the edge of its range")
    return "; ".join(parts)


def describe(hparams: dict[str, Any]) -> str:
  """'learning_rate=0.003, strategy.rank=4' (the selected_hparams column); '' when not swept."""
  return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())


def at_edge(choice: Choice) -> list[str]:
  """Swept numeric keys (3+ candidates) whose selected value is the smallest or largest: the
  best value may lie outside the range, which a reviewer would ask to widen."""
  if choice.selected is None:
    return []
  out = []
  for key, value in choice.selected.hparams.items():
    values = sorted({c.hparams[key] for c in choice.candidates})
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and len(values) >= 3 and value in (values[0], values[-1]):
      out.append(key)
  return out


def _candidates(
    rows: Sequence[dict], seeds: set[int] | None, metric: str | None
) -> list[Candidate]:
  by_config: dict[str, list[dict]] = {}
  for row in rows:
    by_config.setdefault(repr(sorted(row["hparams"].items())), []).append(row)
  candidates = []
  for members in by_config.values():
    chosen = [r for r in members if seeds is None or r["seed"] in seeds]
    values = [
        float(r["metrics"][metric])
        for r in chosen
        if r["status"] == "ok" and metric and metric in r["metrics"]
    ]
    candidates.append(
        Candidate(
            dict(members[0]["hparams"]), chosen, statistics.interval(values) if values else None
        )
    )
  return candidates


def choose(
    key: tuple, rows: Sequence[dict], task_type: str | None, first_seed: int | None = None
) -> Choice:
  """The choice for one group's rows; `first_seed` set: selection reads that seed only."""
  spec = None if task_type is None else task_types.get(task_type)
  metric, mode = (None, "max") if spec is None else (spec.headline, spec.mode)
  metric = metric and f"validation/{metric}"
  multiple = len({repr(sorted(r["hparams"].items())) for r in rows}) > 1
  seeds = {first_seed} if first_seed is not None and multiple else None
  candidates = _candidates(rows, seeds, metric)
  eligible = [c for c in candidates if c.eligible and c.score is not None]
  if not eligible:
    return Choice(key, metric, mode, candidates, None, [])
  pick = max if mode == "max" else min
  best = pick(c.score["mean"] for c in eligible)
  winners = [c for c in eligible if c.score["mean"] == best]  # sweep order breaks ties
  return Choice(key, metric, mode, candidates, winners[0], winners[1:])


def choose_all(
    rows: Sequence[dict], selection: str = "all", first_seed: int | None = None
) -> dict[tuple, Choice]:
  """A Choice per group, in study order; `selection` is the manifest's mode."""
  groups = by_group(rows)
  task_types = {row["task"]: row["task_type"] for row in rows if row["status"] == "ok"}
  seed = first_seed if selection == "first_seed" else None
  return {
      key: choose(key, members, task_types.get(key[0]), seed) for key, members in groups.items()
  }


def reported(choice: Choice, rows: Sequence[dict]) -> list[dict]:
  """The group's rows the tables report: every seed of the selected configuration; all rows
  when nothing was selected (so failures and gaps still show)."""
  if choice.selected is None:
    return list(rows) if not choice.swept else [r for c in choice.candidates for r in c.rows]
  return [r for r in rows if r["hparams"] == choice.selected.hparams]


def needed(choice: Choice, row: dict, first_seed: int | None) -> bool | None:
  """Whether a cell has to run under first-seed selection: True for the sweep's own cells and
  the winner's other seeds, False for the losers' other seeds, None while the sweep is
  unfinished (the winner is not known yet)."""
  if first_seed is None or not choice.swept or row["seed"] == first_seed:
    return True
  if not choice.complete:
    return None
  return choice.selected is not None and row["hparams"] == choice.selected.hparams
