"""Runs a study's grid cell by cell, then aggregates it (lmreuse/study/aggregate.py).

Finished cells are skipped and unfinished ones resume from their checkpoints, so an
interrupted study continues where it stopped. A failing cell writes error.txt with its
traceback and the study goes on: the tables show it as failed rather than dropping it. Under
`selection='first_seed'` a later seed's cell runs only for its group's selected configuration;
the others are skipped (they write nothing).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
import traceback

import jax
import ml_collections
from absl import logging

from lmreuse import workdir as workdir_lib
from lmreuse.study import grid, results, selection

ERROR_FILE = "error.txt"
CACHE_DIR = "jax_cache"  # in the study workdir: cells of one study compile the same programs


def launch_lines(config: ml_collections.ConfigDict, workdir: str, cells: list[grid.Cell]
                 ) -> list[str]:
  """One command per cell for a cluster sweep; pretraining cells must finish before the rest,
  and under first-seed selection a group's first-seed cells before its later seeds."""
  base = [sys.executable, "run.py", *[a for a in sys.argv[1:]
                                      if not a.startswith(("--config.study.only",
                                                           "--config.study.print_launch"))]]
  if not any(a.startswith("--workdir") for a in base):
    base.append(f"--workdir={workdir}")
  first_seed = _first_seed(config)
  lines = []
  for cell in cells:
    after = f"  # after {cell.depends_on}" if cell.depends_on else "  # first"
    if first_seed is not None and cell.hparams and cell.seed != first_seed:
      after = (f"  # after the seed{first_seed} cells of its group; exits at once unless "
               "its configuration is selected")
    lines.append(shlex.join(base + [f"--config.study.only={cell.index}"]) + after)
  return lines


def _first_seed(config: ml_collections.ConfigDict) -> int | None:
  return config.study.seeds[0] if config.study.selection == "first_seed" else None


def _needed(cell: grid.Cell, cells: list[grid.Cell], config: ml_collections.ConfigDict,
            study_dir: str) -> bool:
  """False for a later seed of a configuration its group did not select (first-seed mode)."""
  first_seed = _first_seed(config)
  if cell.kind != "finetune" or first_seed is None or cell.seed == first_seed:
    return True
  group = [dataclasses.asdict(c) for c in cells if c.kind == "finetune" and c.group == cell.group]
  rows = results.collect(study_dir, group)
  (choice,) = selection.choose_all(rows, "first_seed", first_seed).values()
  needed = selection.needed(choice, next(r for r in rows if r["name"] == cell.name), first_seed)
  if needed is None:
    pending = [r["name"] for c in choice.candidates for r in c.rows if r["status"] == "missing"]
    raise RuntimeError(f"cell {cell.name} waits for its group's seed{first_seed} sweep to "
                       f"finish (selection='first_seed'); still to run: {pending}")
  return needed


def run_cell(cell: grid.Cell, config: ml_collections.ConfigDict, study_dir: str,
             cells: list[grid.Cell] | None = None) -> str:
  """finished | failed | skipped (a first-seed loser's later seed)."""
  from experiments import finetune, pretrain

  cells = cells if cells is not None else grid.expand(config.study)
  workdir = os.path.join(study_dir, cell.workdir)
  if grid.status(study_dir, cell) == "finished":
    return "finished"
  if cell.depends_on:
    dependency = next(c for c in cells if c.name == cell.depends_on)
    if grid.status(study_dir, dependency) != "finished":
      raise RuntimeError(f"cell {cell.name} needs {cell.depends_on} to finish first (run "
                         f"--config.study.only={dependency.index})")
  if not _needed(cell, cells, config, study_dir):
    logging.info("cell %d %s: skipped, its group selected another configuration", cell.index,
                 cell.name)
    return "skipped"
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


def _use_compilation_cache(workdir: str) -> None:
  """Cells with the same shapes and hyperparameters (seeds, inits) compile the same programs;
  the persistent cache compiles each once per study. An existing cache setting is kept."""
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start = time.time()
  grid.check_sweeps(config)
  cells = grid.expand(config.study)
  chosen = grid.select(cells, config.study.only)
  if config.study.print_launch:
    print("\n".join(launch_lines(config, workdir, chosen)))
    return {"cells": len(chosen)}
  workdir_lib.prepare(workdir, config)
  grid.write_manifest(workdir, config, cells)
  _use_compilation_cache(workdir)
  outcome = {}
  for number, cell in enumerate(chosen, 1):
    logging.info("study %s: cell %d/%d", config.study.name, number, len(chosen))
    outcome[cell.name] = run_cell(cell, config, workdir, cells)
  failed = sorted(name for name, s in outcome.items() if s == "failed")
  skipped = sum(s == "skipped" for s in outcome.values())
  logging.info("study %s: %d cells finished, %d skipped, %d failed %s in %.0f s",
               config.study.name, len(outcome) - len(failed) - skipped, skipped, len(failed),
               failed, time.time() - start)
  result = {"cells": outcome, "failed": failed}
  if config.study.report and not config.study.only:
    from lmreuse.study import aggregate
    result["report"] = aggregate.report(workdir)
  return result
