"""Runs a study's grid cell by cell, then aggregates it (lmreuse/study/aggregate.py).

Finished cells are skipped and unfinished ones resume from their checkpoints, so an
interrupted study continues where it stopped. A failing cell writes error.txt with its
traceback and the study goes on: the tables show it as failed rather than dropping it. Under
`selection='first_seed'` a later seed's cell runs only for its group's selected configuration;
the others are skipped (they write nothing).

Each cell runs holding its workdir's lock (lmreuse/lock.py), so one cell never has two writers.
Many workers on a shared filesystem can run one study together (`config.study.worker`):
  ''     this process runs every selected cell in order; a cell another process is running
         stops it with an error naming that process.
  claim  each worker walks the cells in grid order and runs the first one that is ready and
         whose lock it can take; a cell whose worker died (its lock released by the kernel) is
         taken over and resumes from its checkpoints. Workers poll until every cell is
         finished, failed, skipped or blocked, so a late or dying worker's share is never lost.
  I/N    static partition: this worker runs the selected cells at positions I, I+N, I+2N, ...
         (with `only` unset: the cells with index % N == I), and stops when they are done; as
         with '', a cell of its share that another process is running stops it.
Workers wait (every `poll_seconds`) for what a cell needs: its pretraining cell, and under
first-seed selection its group's first-seed sweep. In worker mode a failed cell stays failed
(no other worker retries it); a sequential run (worker='') retries failed cells. A cell whose
pretraining failed is reported as blocked. The tables are written by the worker that finds
every selected cell settled, under the study workdir's lock; a worker that finds that lock held
leaves the report to its holder.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
import traceback

import jax
import ml_collections
from absl import logging

from lmreuse import lock, workdir as workdir_lib
from lmreuse.study import grid, launch, results, selection

# run.py locks a run's workdir; a study's is shared by its workers, which lock each cell they
# run and the study workdir only while writing the report.
SHARED_WORKDIR = True
# config.study keys that say which cells this process runs and how, not what the study is:
# every worker of one study records the same config.json whatever they are.
_PER_PROCESS_KEYS = {
    "only": "",
    "print_launch": False,
    "worker": "",
    "poll_seconds": 10.0,
    "report": True,
    "keep_checkpoints": True,
}
_STATES = ("finished", "failed", "skipped", "blocked", "waiting", "ready")
_SETTLED = ("finished", "failed", "skipped", "blocked")
_WAIT, _DONE, _ERROR = -1, -2, -3  # besides a cell index, what a worker's next step can be


def _needed(
    cell: grid.Cell, cells: list[grid.Cell], config: ml_collections.ConfigDict, study_dir: str
) -> tuple[bool | None, list[str]]:
  """(False for a later seed of a configuration its group did not select, None while its
  group's first-seed sweep is unfinished; the sweep cells still to finish)."""
  first_seed = launch.first_seed(config)
  if cell.kind not in results.SCORED or first_seed is None or cell.seed == first_seed:
    return True, []
  # A float cell also runs where a compressed group of it selected its configuration.
  groups = [cell.group]
  if cell.kind == "finetune":
    groups += [
        {**cell.group, "strategy": results.compressed(cell.group["strategy"], method)}
        for method in grid.compressions(config.study)
    ]
  members = [dataclasses.asdict(c) for c in cells if c.kind in results.SCORED]
  answers, pending = [], []
  for group in groups:
    rows = results.collect(study_dir, [c for c in members if c["group"] == group])
    # One choice per row group: a multi-task cell's rows are its tasks', each its own group,
    # and the cell runs where any of them selected its configuration.
    for key, choice in selection.choose_all(rows, "first_seed", first_seed).items():
      same = next(
          r
          for r in rows
          if r["hparams"] == cell.hparams
          and r["seed"] == cell.seed
          and tuple(r[k] for k in results.GROUP) == key
      )
      answers.append(selection.needed(choice, same, first_seed))
      pending += [r["name"] for c in choice.candidates for r in c.rows if r["status"] == "missing"]
  if any(answers):
    return True, []
  return (None, pending) if None in answers else (False, [])


def _state(
    cell: grid.Cell,
    cells: list[grid.Cell],
    config: ml_collections.ConfigDict,
    study_dir: str,
    retry_failed: bool,
) -> tuple[str, list[str]]:
  """(one of _STATES, the cells it waits for): blocked when its pretraining cell failed;
  failed counts as ready to retry where `retry_failed`."""
  status = grid.status(study_dir, cell)
  if status == "finished" or (status == "failed" and not retry_failed):
    return status, []
  # Whether it is needed first: a skipped cell waits for nothing (a compressed loser's later
  # seed, whose float cell is skipped too).
  needed, pending = _needed(cell, cells, config, study_dir)
  if needed is False:
    return "skipped", []
  if cell.depends_on:
    dependency = grid.status(study_dir, next(c for c in cells if c.name == cell.depends_on))
    if dependency != "finished":
      return ("blocked" if dependency == "failed" else "waiting"), [cell.depends_on]
  if needed is None:
    return "waiting", pending
  return "ready", []


def _agreed_state(
    cell: grid.Cell,
    cells: list[grid.Cell],
    config: ml_collections.ConfigDict,
    study_dir: str,
    retry_failed: bool,
) -> tuple[str, list[str]]:
  """_state as process 0 sees it, on every process: all processes of a cell's run take the
  same branch."""
  if jax.process_count() == 1:
    return _state(cell, cells, config, study_dir, retry_failed)
  state, waits = (
      _state(cell, cells, config, study_dir, retry_failed)
      if jax.process_index() == 0
      else ("ready", [])
  )
  return _STATES[lock.from_process_0(_STATES.index(state))], waits


def _cannot_run(
    cell: grid.Cell,
    state: str,
    waits: list[str],
    cells: list[grid.Cell],
    config: ml_collections.ConfigDict,
) -> RuntimeError:
  if state == "blocked":
    return RuntimeError(
        f"cell {cell.name} needs {cell.depends_on}, which failed (see its "
        f"{workdir_lib.ERROR}); re-run the study to retry it"
    )
  if not waits:  # on a process other than 0, which does not look itself
    return RuntimeError(f"cell {cell.name} cannot run yet; process 0's log says why")
  if cell.depends_on in waits:
    dependency = next(c for c in cells if c.name == cell.depends_on)
    return RuntimeError(
        f"cell {cell.name} needs {cell.depends_on} to finish first (run "
        f"--config.study.only={dependency.index})"
    )
  return RuntimeError(
      f"cell {cell.name} waits for its group's seed{launch.first_seed(config)} "
      f"sweep to finish (selection='first_seed'); still to run: {waits}"
  )


def run_cell(
    cell: grid.Cell,
    config: ml_collections.ConfigDict,
    study_dir: str,
    cells: list[grid.Cell] | None = None,
) -> str:
  """finished | failed | skipped (a first-seed loser's later seed). Runs the cell holding its
  workdir's lock (lock.LockHeld if another process is running it); a failed cell is retried;
  a cell that cannot run yet raises, naming what it needs."""
  cells = cells if cells is not None else grid.expand(config.study)
  workdir = os.path.join(study_dir, cell.workdir)
  state, waits = _agreed_state(cell, cells, config, study_dir, retry_failed=True)
  if state == "ready":
    with lock.hold(workdir):
      # Again, now that nobody else can be running it: another worker may have finished it.
      state, waits = _agreed_state(cell, cells, config, study_dir, retry_failed=True)
      if state == "ready":
        return _run_locked(cell, config, study_dir, workdir)
  if state in ("blocked", "waiting"):
    raise _cannot_run(cell, state, waits, cells, config)
  if state == "skipped":
    logging.info(
        "cell %d %s: skipped, its group selected another configuration", cell.index, cell.name
    )
  return state


def _run_locked(
    cell: grid.Cell, config: ml_collections.ConfigDict, study_dir: str, workdir: str
) -> str:
  from experiments import compress, finetune, pretrain

  error_path = os.path.join(workdir, workdir_lib.ERROR)
  if os.path.exists(error_path) and jax.process_index() == 0:
    os.remove(error_path)  # a retry: the cell gets a clean slate
  child = grid.child_config(cell, config, study_dir)
  child.lock()
  logging.info("cell %d %s: running in %s", cell.index, cell.name, workdir)
  try:
    {"pretrain": pretrain, "finetune": finetune, "compress": compress}[cell.kind].run(
        child, workdir
    )
  except Exception:
    if jax.process_index() == 0:
      with open(error_path, "w") as f:
        f.write(traceback.format_exc())
    logging.error("cell %s failed; see %s", cell.name, error_path)
    return "failed"
  # Its results, predictions and best/ (what tables, reuse and export read) stay; the
  # resumable state of a finished cell is only disk (a MiniLM cell's is 170 MB).
  drop = cell.kind == "finetune" and not config.study.get("keep_checkpoints", True)
  if drop and jax.process_index() == 0:
    shutil.rmtree(os.path.join(workdir, workdir_lib.CHECKPOINTS), ignore_errors=True)
  return "finished"


def parse_worker(worker: str) -> str | tuple[int, int] | None:
  """config.study.worker: None (sequential), 'claim', or (I, N)."""
  if not worker:
    return None
  if worker == "claim":
    return worker
  index, sep, count = worker.partition("/")
  if sep and index.isdigit() and count.isdigit() and int(index) < int(count):
    return int(index), int(count)
  raise ValueError(
      f"config.study.worker={worker!r}: write '' (this process runs every cell), "
      "'claim' (take cells as they become ready), or I/N with 0 <= I < N (this "
      "worker's static share, e.g. 0/4)"
  )


def _next(
    mine: list[grid.Cell],
    claim: bool,
    config: ml_collections.ConfigDict,
    study_dir: str,
    cells: list[grid.Cell],
    chosen: set[str],
    settled: dict[str, str],
) -> tuple[int, int]:
  """(what this worker does next: a cell's index, _WAIT or _DONE; how many cells it waits
  for). On process 0 only; a claimed cell is returned with its lock held."""
  waiting = 0
  for cell in mine:
    if cell.name in settled:
      continue
    state, waits = _state(cell, cells, config, study_dir, retry_failed=False)
    if state == "waiting" and not set(waits) <= chosen:
      raise _cannot_run(cell, state, waits, cells, config)  # nobody will run what it waits for
    if state == "ready" and claim:
      cell_dir = os.path.join(study_dir, cell.workdir)
      if not lock.try_acquire(cell_dir):
        state = "waiting"  # running elsewhere; taken over if that worker dies
      else:
        state, waits = _state(cell, cells, config, study_dir, retry_failed=False)
        if state != "ready":
          lock.release(cell_dir)  # finished or failed meanwhile by another worker
    if state == "ready":
      return cell.index, waiting
    if state in _SETTLED:
      settled[cell.name] = state
    else:
      waiting += 1
  return (_WAIT if waiting else _DONE), waiting


def _work(
    worker: str | tuple[int, int],
    config: ml_collections.ConfigDict,
    study_dir: str,
    cells: list[grid.Cell],
    chosen: list[grid.Cell],
) -> dict[str, str]:
  """Runs this worker's cells of `chosen` (module docstring); their final states."""
  claim = worker == "claim"
  mine = chosen if claim else chosen[worker[0] :: worker[1]]
  names = {c.name for c in chosen}
  settled: dict[str, str] = {}
  waited = None
  while True:
    step = waiting = 0
    if jax.process_index() == 0:
      try:
        step, waiting = _next(mine, claim, config, study_dir, cells, names, settled)
      except BaseException:
        lock.from_process_0(_ERROR)
        raise
    step = lock.from_process_0(step)
    if step == _ERROR:
      raise RuntimeError("process 0 stopped the study; its log says why")
    if step == _DONE:
      break
    if step == _WAIT:
      if waiting != waited and jax.process_index() == 0:
        logging.info(
            "study %s worker %s: waiting for %d cells (running elsewhere or needing "
            "others first); polling every %g s",
            config.study.name,
            config.study.worker,
            waiting,
            config.study.poll_seconds,
        )
        waited = waiting
      time.sleep(config.study.poll_seconds)
      continue
    waited = None
    cell = cells[step]
    logging.info(
        "study %s worker %s: cell %d %s",
        config.study.name,
        config.study.worker,
        cell.index,
        cell.name,
    )
    try:
      settled[cell.name] = run_cell(cell, config, study_dir, cells)
    finally:
      if claim and jax.process_index() == 0:
        lock.release(os.path.join(study_dir, cell.workdir))
  return {
      c.name: settled.get(c.name) or _state(c, cells, config, study_dir, False)[0] for c in mine
  }


def _report(
    config: ml_collections.ConfigDict,
    workdir: str,
    cells: list[grid.Cell],
    worker: str | tuple[int, int] | None,
) -> dict | None:
  """The tables, holding the study workdir's lock. In worker mode only once every cell is
  settled (the worker that settles the last one writes them); a held lock means its holder is
  writing them, or a report run by hand is, which is then re-run. In a multi-process run,
  process 0 writes them and returns them; the others return None."""
  from lmreuse.study import aggregate

  took = False
  settled = lambda: all(_state(c, cells, config, workdir, False)[0] in _SETTLED for c in cells)
  if jax.process_index() == 0 and (worker is None or settled()):
    try:
      lock.acquire(workdir)
      took = True
    except lock.LockHeld as e:  # in worker mode, usually another worker writing them
      (logging.info if worker else logging.warning)(
          "study %s: tables not written here: %s", config.study.name, e
      )
  if not lock.from_process_0(took) or jax.process_index() != 0:
    return None
  try:
    return aggregate.report(workdir)
  finally:
    if took:
      lock.release(workdir)


def _use_compilation_cache(workdir: str) -> None:
  """Cells with the same shapes and hyperparameters (seeds, inits) compile the same programs;
  the persistent cache compiles each once per study. An existing cache setting is kept, and
  run.py's --jax_cache_dir='' (the cache switched off) too."""
  if jax.config.jax_compilation_cache_dir is None and jax.config.jax_enable_compilation_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, workdir_lib.JAX_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start = time.time()
  worker = parse_worker(config.study.worker)
  grid.check_sweeps(config)
  grid.check_compress(config)
  cells = grid.expand(config.study)
  chosen = grid.select(cells, config.study.only)
  if config.study.print_launch:
    print("\n".join(launch.launch_lines(config, workdir, chosen)))
    for path in launch.write_launch_scripts(config, workdir, cells):
      print(f"# wrote {path}")
    return {"cells": len(chosen)}
  # Every worker writes the same config.json and study.json, each atomically: concurrent
  # starts need no lock. Within one multi-process run, process 0 writes them.
  recorded = copy.deepcopy(config)
  recorded.study.update(_PER_PROCESS_KEYS)
  workdir_lib.prepare(workdir, recorded)
  if jax.process_index() == 0:
    grid.write_manifest(workdir, config, cells)
  _use_compilation_cache(workdir)
  if worker is None:
    outcome = {}
    for number, cell in enumerate(chosen, 1):
      logging.info("study %s: cell %d/%d", config.study.name, number, len(chosen))
      outcome[cell.name] = run_cell(cell, config, workdir, cells)
  else:
    outcome = _work(worker, config, workdir, cells, chosen)
  failed = sorted(name for name, s in outcome.items() if s == "failed")
  skipped = sum(s == "skipped" for s in outcome.values())
  blocked = sorted(name for name, s in outcome.items() if s == "blocked")
  logging.info(
      "study %s: %d cells finished, %d skipped, %d failed %s, %d blocked in %.0f s",
      config.study.name,
      sum(s == "finished" for s in outcome.values()),
      skipped,
      len(failed),
      failed,
      len(blocked),
      time.time() - start,
  )
  result = {"cells": outcome, "failed": failed}
  if config.study.report and not config.study.only:
    report = _report(config, workdir, cells, worker)
    if report is not None:
      result["report"] = report
  return result
