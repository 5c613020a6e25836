"""A study's grid: which child runs exist, what each one's config is, which to run now.

Cells are ordinary workdirs under W/runs/<name>/. Names are readable and stable (task, init,
strategy, data fraction, seed), so a re-run finds its earlier cells, a sweep can address them
by glob, and a results table can link back to a run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any

import ml_collections

from lmreuse import pretrained, workdir as workdir_lib

SCRATCH = "scratch"


@dataclasses.dataclass(frozen=True)
class Cell:
  index: int
  name: str
  kind: str                 # pretrain | finetune
  workdir: str              # relative to the study workdir
  depends_on: str | None    # the pretraining cell whose workdir a fine-tuning cell reads, if any
  group: dict               # what the tables group by (seeds are averaged)
  seed: int = 0


def _slug(text: str) -> str:
  return text.replace("/", "_").replace(",", "+")


def checkpoints(study: Any) -> dict[str, str]:
  """`study.checkpoints` entries "NAME=hf:DIR" or "NAME=WORKDIR" as {NAME: init_from}: existing
  models (Hugging Face or earlier runs) fine-tuned beside the study's own pretraining."""
  out: dict[str, str] = {}
  for entry in study.checkpoints:
    name, sep, path = entry.partition("=")
    if not (sep and name and path) or "." in name or "/" in name:
      raise ValueError(f"config.study.checkpoints entry {entry!r}: write NAME=hf:DIR or "
                       "NAME=WORKDIR, NAME without '.' or '/' (it names the cells)")
    if name in out or name in study.pretrain or name.endswith(SCRATCH):
      raise ValueError(f"config.study.checkpoints: the name {name!r} is taken (pretraining "
                       f"presets {tuple(study.pretrain)}, scratch inits, other checkpoints)")
    directory = path.removeprefix(pretrained.HF_PREFIX)
    if not os.path.isdir(directory):  # before any cell runs, not in each
      raise FileNotFoundError(f"config.study.checkpoints entry {entry!r}: {directory} is not a "
                              "directory")
    out[name] = path
  return out


def expand(study: Any) -> list[Cell]:
  """Pretraining cells first (fine-tuning cells depend on them), then the fine-tuning grid."""
  cells: list[Cell] = []

  def add(name, kind, depends_on, group, seed=0):
    cells.append(Cell(len(cells), name, kind, f"runs/{name}", depends_on, group, seed))

  for preset in study.pretrain:
    add(f"pretrain-{preset}", "pretrain", None, {"objective": preset})
  inits = [(p, p) for p in study.pretrain]  # (pretraining preset, init name)
  if study.from_scratch:
    inits += [(p, SCRATCH if len(study.pretrain) == 1 else f"{p}-{SCRATCH}")
              for p in study.pretrain]
  inits += [(None, name) for name in checkpoints(study)]
  many_fractions = len(study.train_fractions) > 1
  for task in study.tasks:
    for preset, init in inits:
      for strategy in study.strategies:
        for fraction in study.train_fractions:
          for seed in study.seeds:
            parts = [_slug(task), init, _slug(strategy)]
            parts += [f"data{fraction:g}"] if many_fractions else []
            add(".".join(parts + [f"seed{seed}"]), "finetune",
                f"pretrain-{preset}" if preset else None,
                {"task": task, "init": init, "strategy": strategy,
                 "train_fraction": float(fraction)}, seed)
  return cells


def select(cells: list[Cell], only: str) -> list[Cell]:
  """All cells, or those `only` names: an index or a glob over names."""
  if not only:
    return cells
  if only.isdigit():
    if int(only) >= len(cells):
      raise ValueError(f"config.study.only={only}: the grid has cells 0..{len(cells) - 1}")
    return [cells[int(only)]]
  chosen = [c for c in cells if fnmatch.fnmatch(c.name, only)]
  if not chosen:
    raise ValueError(f"config.study.only={only!r} matches no cell; names look like "
                     f"{[c.name for c in cells[:3]]}")
  return chosen


def child_config(cell: Cell, config: ml_collections.ConfigDict, study_dir: str
                 ) -> ml_collections.ConfigDict:
  """The cell's own config: the recipe's defaults, the study's overrides, the cell's values."""
  from configs import finetune, pretrain

  if cell.kind == "pretrain":
    child = pretrain.get_config(f"{cell.group['objective']},size={config.study.size}")
    child.update(config.pretrain.to_dict())
  else:
    child = finetune.get_config()
    child.update(config.finetune.to_dict())
    child.init_from = (os.path.join(study_dir, "runs", cell.depends_on) if cell.depends_on
                       else checkpoints(config.study)[cell.group["init"]])
    child.from_scratch = cell.group["init"].endswith(SCRATCH)
    child.task.name = cell.group["task"]
    child.task.train_fraction = cell.group["train_fraction"]
    child.strategy.name = cell.group["strategy"]
    child.seed = cell.seed
  return child


def status(study_dir: str, cell: Cell) -> str:
  """finished (results.json) | failed (error.txt) | pending."""
  workdir = os.path.join(study_dir, cell.workdir)
  if os.path.exists(os.path.join(workdir, "results.json")):
    return "finished"
  return "failed" if os.path.exists(os.path.join(workdir, "error.txt")) else "pending"


def write_manifest(study_dir: str, name: str, cells: list[Cell]) -> str:
  path = os.path.join(study_dir, "study.json")
  workdir_lib.write_json(path, {"name": name, "cells": [dataclasses.asdict(c) for c in cells]})
  return path
