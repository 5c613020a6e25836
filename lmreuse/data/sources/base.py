"""What every downstream data source returns: examples in one canonical schema per task type.

Sources (bundled WordNet tasks, the TFDS catalog, local files) differ only in where examples
come from; each task type's fields are in its row of lmreuse/tasks/types.py (`fields`), and
task types (lmreuse/tasks/) read only those.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TaskData:
  """Examples per split ("train", "validation", "test"), random access (len, [i]).

  `labels` is the label set (classification) or tag set (tagging), sorted or in the dataset's
  own class order, else None.
  `origin` names where each split came from (a file, a TFDS split) for messages and results.
  `positive_label` is the class whose binary F1 a benchmark reports (MRPC), if any.
  `heldout`: examples a source set aside from every split (a bundled WordNet task's
  config.task.heldout_lexnames), for out-of-distribution evaluation; None where there are none.
  """

  task_type: str
  splits: dict[str, Sequence[dict]]
  labels: list | None = None
  origin: dict[str, str] = dataclasses.field(default_factory=dict)
  positive_label: Any = None
  heldout: Sequence[dict] | None = None
  heldout_origin: str = ""


class View(collections.abc.Sequence):
  """Some records of a random-access source, in order, converted on access when `convert` is
  given: subsets and TFDS splits stay lazy instead of being copied into memory."""

  def __init__(
      self, items: Sequence, indices: Sequence[int], convert: Callable[[Any], dict] | None = None
  ):
    self._items, self._indices, self._convert = items, indices, convert

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    item = self._items[int(self._indices[i])]
    return self._convert(item) if self._convert else item


def split_off(
    examples: Sequence, fraction: float, seed: int, minimum: int = 1
) -> tuple[list, list]:
  """A seeded (rest, held_out) split taking round(fraction × n) examples, at least `minimum`."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"validation_fraction={fraction} must be in (0, 1)")
  order = np.random.default_rng(seed).permutation(len(examples))
  n_held = max(minimum, round(fraction * len(examples)))
  if n_held >= len(examples):
    raise ValueError(
        f"validation_fraction={fraction} of {len(examples)} examples leaves no " "training examples"
    )
  held = set(order[:n_held].tolist())
  rest = [examples[i] for i in range(len(examples)) if i not in held]
  return rest, [examples[i] for i in sorted(held)]
