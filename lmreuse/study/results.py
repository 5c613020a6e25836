"""What a study's cells hold: one row per fine-tuning cell, read from its workdir.

A row's status is what the workdir shows (results.json: ok, error.txt: failed, neither:
missing), so tables, selection and comparisons all see the same picture of the grid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from lmreuse import workdir as workdir_lib
from lmreuse.tasks import mixture

GROUP = ("task", "init", "strategy", "train_fraction")
SCORED = ("finetune", "compress")  # the cell kinds with a row: pretraining cells have none
# A compressed group's strategy: "lora@int8" is lora's fine-tuned cells quantized after training
# by configs/compress.py's int8 preset. The float strategy stays a group of its own.
COMPRESSED = "@"
ADAPTED = "+adapt"  # an adapted init's name: "<model>+adapt<steps>" (config.study.adapt_steps)
# A multi-task cell (a study task "a+b") gives one row per member task, its init marked
# "<init>+multitask", so each task's table sets it beside that task's single-task rows.
MULTITASK = "+multitask"
NO_COMPRESSION = "none"


def compressed(strategy: str, method: str) -> str:
  """The group strategy of `strategy`'s cells compressed by `method`: the inverse of
  split_compressed."""
  return f"{strategy}{COMPRESSED}{method}"


def split_compressed(strategy: str) -> tuple[str, str]:
  """A group's strategy as (fine-tuning strategy, compression or NO_COMPRESSION)."""
  base, _, method = strategy.partition(COMPRESSED)
  return base, method or NO_COMPRESSION


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def manifest(workdir: str) -> dict:
  path = os.path.join(workdir, workdir_lib.STUDY)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a study workdir")
  return read_json(path)


def error_line(text: str) -> str:
  """The final exception's first line: error.txt is a traceback, whose first line says nothing."""
  lines = text.strip().splitlines()
  frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
  tail = lines[frames[-1] + 1 :] if frames else lines
  return next((line for line in tail if line and not line[0].isspace()), "")


def row(workdir: str, cell: dict) -> dict:
  """A fine-tuning cell's row: its group, hyperparameters, status and, when finished, results."""
  run_dir = os.path.join(workdir, cell["workdir"])
  out = {
      **{k: cell["group"][k] for k in GROUP},
      "seed": cell["seed"],
      "name": cell["name"],
      "hparams": dict(cell.get("hparams", {})),
      "workdir": run_dir,
      "status": "missing",
      "task_type": None,
      "member_types": {},  # a multi-task cell's member tasks' types, by member name
      "metrics": {},
      "parameters": {},
      "compute": {},
      "wall_time_sec": None,
      "steps": None,
      "best_step": None,
      "model_bytes": None,  # the selected model's storage (lmreuse/compression/)
      "error": None,
      "predictions": os.path.join(run_dir, workdir_lib.PREDICTIONS),
  }
  if os.path.exists(os.path.join(run_dir, workdir_lib.RESULTS)):
    results = read_json(os.path.join(run_dir, workdir_lib.RESULTS))
    # A compressed cell's results.json has no training of its own: its fine-tuned cell's
    # steps and compute, its own wall time.
    trained = results.get("finetuned", results)
    out.update(
        status="ok",
        task_type=results["task"]["type"],
        member_types={n: m["type"] for n, m in results["task"].get("members", {}).items()},
        metrics=results["metrics"],
        parameters=results["parameters"],
        compute=results.get("compute", {}),
        wall_time_sec=results["wall_time_sec"],
        steps=trained.get("steps"),
        best_step=trained.get("best_step"),
        model_bytes=results.get("model_bytes"),
    )
  elif os.path.exists(os.path.join(run_dir, workdir_lib.ERROR)):
    with open(os.path.join(run_dir, workdir_lib.ERROR)) as f:
      out.update(status="failed", error=error_line(f.read()))
  return out


def member_rows(cell_row: dict) -> list[dict]:
  """A multi-task cell's row as one row per member task: the member's metrics without its
  name, its predictions, the mixture's parameters and compute (the members share them)."""
  members = mixture.members(cell_row["task"])
  out = []
  for name in members:
    metrics = {}
    for key, value in cell_row["metrics"].items():
      split, _, rest = key.partition("/")
      if rest.startswith(f"{name}/"):
        metrics[f"{split}/{rest[len(name) + 1 :]}"] = value
    out.append(
        {
            **cell_row,
            "task": name,
            "init": cell_row["init"] + MULTITASK,
            "task_type": cell_row["member_types"].get(name),
            "member_types": {},
            "metrics": metrics,
            "predictions": os.path.join(
                cell_row["workdir"], workdir_lib.TASKS, mixture.key(name), workdir_lib.PREDICTIONS
            ),
        }
    )
  return out


def collect(workdir: str, cells: Sequence[dict] | None = None) -> list[dict]:
  """Rows of the fine-tuning and compressed cells in `cells` (all the manifest's when None), in
  grid order; a multi-task cell's members in order."""
  if cells is None:
    cells = manifest(workdir)["cells"]
  rows = []
  for cell in cells:
    if cell["kind"] in SCORED:
      found = row(workdir, cell)
      rows.extend(member_rows(found) if mixture.is_mixture(found["task"]) else [found])
  return rows


def by_group(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
  """Rows keyed by their GROUP values (seeds and swept configurations together), study order."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in GROUP), []).append(row)
  return groups


def predictions(row: dict) -> list[dict]:
  """The row's predictions.jsonl: one record per evaluated example, gold fields included."""
  with open(row["predictions"]) as f:
    return [json.loads(line) for line in f if line.strip()]
