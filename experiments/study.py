"""Runs a study's grid cell by cell, then aggregates it (lmreuse/study/aggregate.py).

Finished cells are skipped and unfinished ones resume from their checkpoints, so an
interrupted study continues where it stopped. A failing cell writes error.txt with its
traceback and the study goes on: the tables show it as failed rather than dropping it.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import traceback

import ml_collections
from absl import logging

from lmreuse import workdir as workdir_lib
from lmreuse.study import grid

ERROR_FILE = "error.txt"


def launch_lines(config: ml_collections.ConfigDict, workdir: str, cells: list[grid.Cell]
                 ) -> list[str]:
  """One command per cell for a cluster sweep; pretraining cells must finish before the rest."""
  base = [sys.executable, "run.py", *[a for a in sys.argv[1:]
                                      if not a.startswith(("--config.study.only",
                                                           "--config.study.print_launch"))]]
  if not any(a.startswith("--workdir") for a in base):
    base.append(f"--workdir={workdir}")
  lines = []
  for cell in cells:
    after = f"  # after {cell.depends_on}" if cell.depends_on else "  # first"
    lines.append(shlex.join(base + [f"--config.study.only={cell.index}"]) + after)
  return lines


def run_cell(cell: grid.Cell, config: ml_collections.ConfigDict, study_dir: str) -> str:
  from experiments import finetune, pretrain

  workdir = os.path.join(study_dir, cell.workdir)
  if grid.status(study_dir, cell) == "finished":
    return "finished"
  if cell.depends_on:
    dependency = next(c for c in grid.expand(config.study) if c.name == cell.depends_on)
    if grid.status(study_dir, dependency) != "finished":
      raise RuntimeError(f"cell {cell.name} needs {cell.depends_on} to finish first (run "
                         f"--config.study.only={dependency.index})")
  os.makedirs(workdir, exist_ok=True)
  error_path = os.path.join(workdir, ERROR_FILE)
  if os.path.exists(error_path):
    os.remove(error_path)  # a retry: the cell gets a clean slate
  child = grid.child_config(cell, config, study_dir)
  child.lock()
  logging.info("cell %d %s: running in %s", cell.index, cell.name, workdir)
  try:
    (pretrain if cell.kind == "pretrain" else finetune).run(child, workdir)
  except Exception:  # noqa: BLE001 — the study records the failure and goes on
    with open(error_path, "w") as f:
      f.write(traceback.format_exc())
    logging.error("cell %s failed; see %s", cell.name, error_path)
    return "failed"
  return "finished"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start = time.time()
  cells = grid.expand(config.study)
  chosen = grid.select(cells, config.study.only)
  if config.study.print_launch:
    print("\n".join(launch_lines(config, workdir, chosen)))
    return {"cells": len(chosen)}
  workdir_lib.prepare(workdir, config)
  grid.write_manifest(workdir, config.study.name, cells)
  outcome = {}
  for number, cell in enumerate(chosen, 1):
    logging.info("study %s: cell %d/%d", config.study.name, number, len(chosen))
    outcome[cell.name] = run_cell(cell, config, workdir)
  failed = sorted(name for name, s in outcome.items() if s == "failed")
  logging.info("study %s: %d cells finished, %d failed %s in %.0f s", config.study.name,
               len(outcome) - len(failed), len(failed), failed, time.time() - start)
  result = {"cells": outcome, "failed": failed}
  if config.study.report and not config.study.only:
    from lmreuse.study import aggregate
    result["report"] = aggregate.report(workdir)
  return result
