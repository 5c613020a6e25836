"""The task-type table (lmreuse/tasks/types.py): every row names a task type that exists, scores
its headline metric, and is readable without importing model code."""

import os
import subprocess
import sys

import pytest

from lmreuse import tasks
from lmreuse.tasks import types

# One scored case per task type: a new row must add one, so its headline metric is checked.
GOLD_AND_PREDICTIONS = {
    "classification": ([{"label": "a"}, {"label": "b"}], ["a", "b"]),
    "regression": ([{"label": 1.0}, {"label": 2.0}], [1.0, 2.0]),
    "tagging": ([{"tags": ["B-X", "O"]}], [["B-X", "O"]]),
    "extractive_qa": ([{"answers": [{"text": "a cat", "start": 0}]}], ["a cat"]),
    "seq2seq": ([{"target": "a small cat"}], ["a small cat"]),
}


@pytest.mark.parametrize("name", sorted(types.TASK_TYPES))
def test_each_row_is_its_task_type_and_scores_its_headline(name):
  spec = types.get(name)
  task_type = tasks.get(name)
  assert task_type.name == name and spec.module == task_type.__module__
  assert spec.label_kind in ("class", "number", "tags", None) and spec.mode in ("min", "max")
  examples, predictions = GOLD_AND_PREDICTIONS[name]
  assert spec.headline in task_type.score(examples, predictions)
  assert task_type.score(examples, predictions, metric=spec.headline)


def test_every_task_type_has_a_scored_case():
  assert set(GOLD_AND_PREDICTIONS) == set(types.TASK_TYPES)


def test_unknown_task_type_names_the_known_ones():
  with pytest.raises(ValueError, match=r"config\.task\.type='nope' is unknown.*'seq2seq'"):
    tasks.get("nope")


def test_config_defaults_are_fresh_copies():
  defaults = types.config_defaults()
  assert defaults["doc_stride"] == 64 and defaults["pooling"] == "auto"
  defaults["augment"]["token_dropout"] = 0.5
  assert types.config_defaults()["augment"]["token_dropout"] == 0.0
  assert set(types.column_defaults()) >= {"text_column", "tags_column", "answer_start_column"}


def test_data_sources_read_the_table_without_model_code():
  """The table sits below the models: loading local files must not pay for jax or flax."""
  code = (
      "import sys, lmreuse.data.sources, lmreuse.data.sources.local; "
      "print(sorted(m for m in ('jax', 'flax', 'lmreuse.tasks.base') if m in sys.modules))"
  )
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
  )
  assert out.stdout.strip() == "[]"
