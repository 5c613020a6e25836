"""The task-type table: everything about each task type that lives outside its model.

One row per task type, keyed by name: the file holding its `TaskType` (model, loss, metrics),
the canonical fields its examples carry (what every source in lmreuse/data/sources returns),
its label kind, the headline metric that early stopping and study selection follow, how study
tables show its scores, how a row of the user's own file becomes an example (config.task.name
'local'), and the config.task keys only it reads. A new task type is its file plus its row here.

This module imports no model code: data sources, metrics, configs and studies read it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmreuse.data import augment

if TYPE_CHECKING:
  from lmreuse.data.sources.local import Row


@dataclasses.dataclass(frozen=True)
class TaskTypeSpec:
  """One task type's row.

  `label_kind`: "class" (one class label per example: the label set comes from the training
  data), "number" (one real-valued label), "tags" (one tag per token: the tag set comes from the
  training data) or None (the gold answer is text).
  `fraction_scores`: its metrics are fractions (study tables show them ×100), not 0-100 already.
  `columns`: config.task keys naming the local file's columns, with default column names; ''
  leaves an optional column out. `read_row` turns one such row into a canonical example.
  `input_text` is an example's input text (never its label or target), as the segments of one
  document: what continued pretraining on the task's own text reads (config.adapt.corpus).
  """

  name: str
  module: str
  fields: str
  label_kind: str | None
  headline: str
  mode: str
  fraction_scores: bool
  columns: dict[str, str]
  read_row: Callable[[Row], dict]
  input_text: Callable[[dict], list[str]]
  config: dict[str, Any] = dataclasses.field(default_factory=dict)


def _fields_text(*fields: str) -> Callable[[dict], list[str]]:
  return lambda example: [example[f] for f in fields if example.get(f)]


def _texts(row: Row) -> dict:
  example = {"text": row.text("text_column")}
  if "text_pair_column" in row.columns:
    example["text_pair"] = row.text("text_pair_column")
  return example


def _classification(row: Row) -> dict:
  label = row.raw("label_column")
  if isinstance(label, str) and label.strip():
    return {**_texts(row), "label": label.strip()}
  if row.typed and isinstance(label, int) and not isinstance(label, bool):
    return {**_texts(row), "label": label}
  raise row.error(f"{row.what('label_column')} is not a label (text or integer): {label!r}")


def _regression(row: Row) -> dict:
  label = row.raw("label_column")
  try:
    value = float(label) if not isinstance(label, bool) else math.nan
  except (TypeError, ValueError):
    value = math.nan
  if not math.isfinite(value):
    raise row.error(f"{row.what('label_column')} is not a number: {label!r}")
  return {**_texts(row), "label": value}


def _tagging(row: Row) -> dict:
  tokens, tags = row.words("tokens_column"), row.words("tags_column")
  if not tokens:
    raise row.error(f"{row.what('tokens_column')} has no tokens")
  if len(tokens) != len(tags):
    raise row.error(f"{len(tokens)} tokens but {len(tags)} tags (one tag per token)")
  return {"tokens": tokens, "tags": tags}


def _answer(row: Row, context: str, text: Any, start: Any) -> dict:
  """One answer, at `start` (checked) or, without one, at the text's first occurrence."""
  text = row.check_text(text, "answer_column")
  if start is None:
    start = context.find(text)
    if start < 0:
      raise row.error(f"answer {text!r} does not occur in the context")
  else:
    start = row.integer(start, "answer_start_column")
    if start < 0 or context[start : start + len(text)] != text:
      raise row.error(
          f"answer {text!r} is not at answer_start={start} in the context, which "
          f"has {context[max(0, start):][:len(text)]!r} there"
      )
  return {"text": text, "start": start}


def _extractive_qa(row: Row) -> dict:
  question, context = row.text("question_column"), row.text("context_column")
  texts = row.raw("answer_column")
  texts = texts if row.typed and isinstance(texts, list) else [texts]
  starts = [None] * len(texts)
  if "answer_start_column" in row.columns:
    starts = row.raw("answer_start_column")
    starts = starts if isinstance(starts, list) else [starts]
  if not texts:
    raise row.error(f"{row.what('answer_column')} has no answers")
  if len(starts) != len(texts):
    raise row.error(f"{len(texts)} answers but {len(starts)} answer starts")
  answers = [_answer(row, context, text, start) for text, start in zip(texts, starts)]
  row_id = str(row.raw("id_column")) if "id_column" in row.columns else str(row.line)
  return {"id": row_id, "question": question, "context": context, "answers": answers}


def _seq2seq(row: Row) -> dict:
  return {"source": row.text("source_column"), "target": row.text("target_column")}


_TEXT_COLUMNS = {"text_column": "text", "text_pair_column": "", "label_column": "label"}
_POOLING = {"pooling": "auto"}  # auto | cls | mean | last

TASK_TYPES: dict[str, TaskTypeSpec] = {
    spec.name: spec
    for spec in (
        TaskTypeSpec(
            name="classification",
            module="lmreuse.tasks.classification",
            fields='{"text": str, "text_pair": str (pair tasks only), "label": str | int}',
            label_kind="class",
            headline="accuracy",
            mode="max",
            fraction_scores=True,
            columns=_TEXT_COLUMNS,
            read_row=_classification,
            input_text=_fields_text("text", "text_pair"),
            # positive_label: binary F1 for this label (e.g. MRPC's '1'); augment: training only.
            config={**_POOLING, "positive_label": "", "augment": augment.config_defaults()},
        ),
        TaskTypeSpec(
            name="regression",
            module="lmreuse.tasks.regression",
            fields='{"text": str, "text_pair": str (pair tasks only), "label": float}',
            label_kind="number",
            headline="pearson",
            mode="max",
            fraction_scores=True,
            columns=_TEXT_COLUMNS,
            read_row=_regression,
            input_text=_fields_text("text", "text_pair"),
            config=_POOLING,
        ),
        TaskTypeSpec(
            name="tagging",
            module="lmreuse.tasks.tagging",
            fields='{"tokens": list[str], "tags": list[str]} (one tag per token)',
            label_kind="tags",
            headline="f1",
            mode="max",
            fraction_scores=True,
            columns={"tokens_column": "tokens", "tags_column": "tags"},
            read_row=_tagging,
            input_text=lambda example: [" ".join(example["tokens"])],
        ),
        TaskTypeSpec(
            name="extractive_qa",
            module="lmreuse.tasks.extractive_qa",
            fields='{"id": str, "question": str, "context": str, '
            '"answers": list[{"text": str, "start": int}]} (start: char offset)',
            label_kind=None,
            headline="f1",
            mode="max",
            fraction_scores=False,  # SQuAD F1 is in percent already
            columns={
                "question_column": "question",
                "context_column": "context",
                "answer_column": "answer",
                "answer_start_column": "",
                "id_column": "",
            },
            read_row=_extractive_qa,
            input_text=_fields_text("question", "context"),
            # max_query_len: question tokens kept, 0 = a fraction of max_len (extractive_qa.py);
            # doc_stride: tokens between context windows; max_answer_len: in tokens.
            config={"max_query_len": 0, "doc_stride": 64, "n_best": 20, "max_answer_len": 30},
        ),
        TaskTypeSpec(
            name="seq2seq",
            module="lmreuse.tasks.seq2seq",
            fields='{"source": str, "target": str}',
            label_kind=None,
            headline="bleu",
            mode="max",
            fraction_scores=False,  # BLEU and ROUGE are 0-100
            columns={"source_column": "source", "target_column": "target"},
            read_row=_seq2seq,
            input_text=_fields_text("source"),
            # max_target_len: in tokens; beam_size 1 = greedy; length_penalty: GNMT's alpha.
            config={"max_target_len": 64, "beam_size": 1, "length_penalty": 0.6},
        ),
    )
}


def get(name: str) -> TaskTypeSpec:
  """The row of config.task.type `name`; an unknown name fails listing the known ones."""
  if name not in TASK_TYPES:
    raise ValueError(f"config.task.type={name!r} is unknown; choose one of {sorted(TASK_TYPES)}")
  return TASK_TYPES[name]


def _merged(parts: dict[str, dict]) -> dict:
  """The rows' keys in one dict; two rows giving one key different defaults is a table bug."""
  merged: dict = {}
  for name, part in parts.items():
    for key, value in part.items():
      if key in merged and merged[key] != value:
        raise ValueError(f"task type {name!r} gives config.task.{key} a second default {value!r}")
      merged[key] = value
  return merged


def column_defaults() -> dict[str, str]:
  """Every task type's column keys with their default column names (config.task)."""
  return _merged({name: spec.columns for name, spec in TASK_TYPES.items()})


def config_defaults() -> dict[str, Any]:
  """The config.task keys single task types read (not the columns), with defaults."""
  return copy.deepcopy(_merged({name: spec.config for name, spec in TASK_TYPES.items()}))
