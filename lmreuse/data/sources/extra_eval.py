r"""Further evaluation sets beside a task's own splits (config.task.extra_eval).

Out-of-distribution data a fine-tuned model is scored on with its best checkpoint, each under a
name of its own in results.json and the study tables, so that a study can set the in- against
the out-of-distribution score per strategy. An entry is `NAME=FILE` (a CSV, TSV, JSONL or
Parquet file read with the task's column mapping and type) or `NAME=DATASET:SPLIT` (a split of a
named dataset, bundled or TFDS catalog, of the same task type; `heldout` for the synsets a
bundled WordNet task's config.task.heldout_lexnames set aside):

  --config.task.name=wordnet_relation --config.task.heldout_lexnames='^verb\.'
  --config.task.extra_eval='("verbs=wordnet_relation:heldout", "mine=pairs.jsonl")'

Every set must fit the task: the same task type, and labels (or tags) among the training set's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from lmreuse.data import sources
from lmreuse.data.sources import base, local
from lmreuse.tasks import types

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
KEY = "config.task.extra_eval"
HELDOUT = "heldout"  # DATASET:heldout, what config.task.heldout_lexnames sets aside


def parse(entries: Iterable[str]) -> dict[str, str]:
  """{name: source} of the entries, in order; a malformed, reserved or repeated name raises."""
  out: dict[str, str] = {}
  for entry in entries:
    name, sep, source = str(entry).partition("=")
    if not sep or not source or not _NAME.fullmatch(name):
      raise ValueError(
          f"{KEY} entry {entry!r}: expected NAME=FILE or NAME=DATASET:SPLIT, NAME a letter then "
          "letters, digits, '_' or '-'"
      )
    if name in base.SPLITS:
      raise ValueError(f"{KEY} entry {entry!r}: {name!r} is one of the task's own splits")
    if name in out:
      raise ValueError(f"{KEY} entry {entry!r}: the name {name!r} is given twice")
    out[name] = source
  return out


def _check_labels(located: Iterable[tuple[str, dict]], task_type: str, labels: list | None) -> None:
  """Every (place, example)'s labels or tags among the training set's, as local files' are."""
  kind = types.get(task_type).label_kind
  if kind in local.LABEL_VALUES and labels is not None:
    local.check_known(located, *local.LABEL_VALUES[kind], set(labels))


def _from_file(task: Any, name: str, path: str, data: base.TaskData) -> tuple[list[dict], str]:
  mapping = local.columns(task, data.task_type)
  typed, rows = local.read_file(path, data.task_type, mapping, f"{KEY} {name}")
  examples = [example for _, example in rows]
  if not typed and data.labels and all(isinstance(label, int) for label in data.labels):
    local.integer_labels(examples)  # as the task's own CSV files were read
  _check_labels(((f"{path}:{line}", e) for line, e in rows), data.task_type, data.labels)
  return examples, path


def _from_dataset(
    task: Any, name: str, source: str, data: base.TaskData, seed: int
) -> tuple[Sequence[dict], str]:
  dataset, sep, split = source.rpartition(":")
  if not sep or not dataset or dataset == sources.LOCAL:
    raise ValueError(
        f"{KEY} {name}={source!r}: neither a data file ({', '.join(local.EXTENSIONS)}) nor "
        "DATASET:SPLIT"
    )
  other_task = ml_collections.ConfigDict(task.to_dict())
  other_task.update(name=dataset, type="")
  try:
    other = sources.load(other_task, seed)
  except ValueError as e:
    raise ValueError(f"{KEY} {name}={source!r}: {e}") from e
  if other.task_type != data.task_type:
    raise ValueError(
        f"{KEY} {name}={source!r}: {dataset} is a {other.task_type} dataset, the task a "
        f"{data.task_type} one"
    )
  if split == HELDOUT:
    if other.heldout is None:
      raise ValueError(
          f"{KEY} {name}={source!r}: {dataset} holds nothing out; set "
          "config.task.heldout_lexnames (bundled WordNet tasks)"
      )
    examples, origin = other.heldout, other.heldout_origin
  elif split in other.splits:
    examples, origin = other.splits[split], other.origin.get(split, source)
  else:
    raise ValueError(
        f"{KEY} {name}={source!r}: {dataset} has splits {sorted(other.splits)} (and "
        f"{HELDOUT!r} with config.task.heldout_lexnames)"
    )
  located = ((f"{origin}: example {i}", e) for i, e in enumerate(examples))
  _check_labels(located, data.task_type, data.labels)
  return examples, origin


def load(task: Any, data: base.TaskData, seed: int) -> dict[str, tuple[Sequence[dict], str]]:
  """{name: (examples, origin)} of every config.task.extra_eval entry, capped at
  task.max_eval_examples like the task's own evaluation splits."""
  sets = {}
  for name, source in parse(getattr(task, "extra_eval", ())).items():  # () in older configs
    if local.is_data_file(source):
      examples, origin = _from_file(task, name, source, data)
    else:
      examples, origin = _from_dataset(task, name, source, data, seed)
    sets[name] = (sources.capped(examples, task.max_eval_examples), origin)
  return sets
