"""Downstream datasets by `config.task.name`: bundled WordNet tasks, TFDS catalog names, or
`local` files; all return a TaskData in the canonical schema of lmreuse/data/sources/base.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmreuse.data.sources.base import TaskData, View
from lmreuse.tasks import types

LOCAL = "local"


def names() -> tuple[str, ...]:
  from lmreuse.data.sources import catalog, wordnet_tasks

  return (*wordnet_tasks.NAMES, *catalog.NAMES, LOCAL)


def load(task: Any, seed: int) -> TaskData:
  """The dataset `task.name` names, checked against `task.type` when that is set."""
  from lmreuse.data.sources import catalog, local, wordnet_tasks

  # Configs saved before a key existed (a teacher's, a run compress reads) lack it.
  heldout_lexnames = getattr(task, "heldout_lexnames", "")
  if heldout_lexnames and task.name not in wordnet_tasks.NAMES:
    raise ValueError(
        f"config.task.heldout_lexnames={heldout_lexnames!r} needs a bundled WordNet task "
        f"({', '.join(wordnet_tasks.NAMES)}), not {task.name!r}"
    )
  if task.name == LOCAL:
    if not task.type:
      raise ValueError(
          f"config.task.name='local' needs config.task.type (one of {', '.join(types.TASK_TYPES)})"
      )
    data = local.load(task, seed)
  elif task.name in wordnet_tasks.NAMES:
    data = wordnet_tasks.load(task.name, heldout_lexnames)
  elif task.name in catalog.NAMES:
    data = catalog.load(
        task.name,
        data_dir=task.tfds_dir or None,
        seed=seed,
        validation_fraction=task.validation_fraction,
    )
  else:
    raise ValueError(f"config.task.name={task.name!r} is unknown; choose one of {names()}")
  if task.type and task.type != data.task_type:
    raise ValueError(
        f"config.task.type={task.type!r}, but {task.name} is a {data.task_type} "
        "dataset; leave config.task.type empty for named datasets"
    )
  return data


def subsample(
    data: TaskData,
    *,
    train_fraction: float,
    max_train_examples: int,
    max_eval_examples: int,
    seed: int,
) -> TaskData:
  """A seeded fraction of train (low-resource studies) and capped eval splits (smoke runs)."""
  if not 0.0 < train_fraction <= 1.0:
    raise ValueError(f"config.task.train_fraction={train_fraction} must be in (0, 1]")
  splits = dict(data.splits)
  train = splits["train"]
  keep = len(train)
  if train_fraction < 1.0:
    keep = max(1, round(train_fraction * keep))
  if max_train_examples:
    keep = min(keep, max_train_examples)
  if keep < len(train):
    order = np.sort(np.random.default_rng(seed).permutation(len(train))[:keep])
    splits["train"] = View(train, order)
  for name in ("validation", "test"):
    if name in splits:
      splits[name] = capped(splits[name], max_eval_examples)
  return dataclasses.replace(data, splits=splits)


def capped(examples: Sequence[dict], max_examples: int) -> Sequence[dict]:
  """At most `max_examples` of an evaluation set (0: all), drawn with a fixed seed, not the
  run's: every run of a comparison scores the same examples."""
  if not max_examples or len(examples) <= max_examples:
    return examples
  order = np.random.default_rng(0).permutation(len(examples))[:max_examples]
  return View(examples, np.sort(order))
