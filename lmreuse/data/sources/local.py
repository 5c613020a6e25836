"""Loads the user's own CSV, TSV, JSONL or Parquet files as the canonical examples of one task
type.

A column mapping in config.task (see `config_defaults`) names which column holds which field,
so a new data set needs no code. Every problem raises one ValueError pointing at `file:line`
(for Parquet, `file:row`, counting rows from 1): a silently skipped or coerced row would change
results without anyone noticing.

    data = local.load(config.task, seed=config.seed)  # TaskData, as the other sources return.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from lmreuse.data.sources import base
from lmreuse.tasks import types

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL = (".jsonl", ".json-lines")
_PARQUET = ".parquet"
EXTENSIONS = (*_DELIMITERS, *_JSONL, _PARQUET)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_LISTED = 20


def config_defaults() -> dict:
  """The config.task keys `load` reads besides `type`, with defaults, for the finetune config."""
  return dict(
      train_path="",
      validation_path="",
      test_path="",
      validation_fraction=0.1,
      **types.column_defaults(),
  )


@dataclasses.dataclass
class Row:
  """One row of a file with its line, so that every check can name `file:line`; the task types'
  `read_row` (lmreuse/tasks/types.py) read their fields through it. `typed`: the values carry
  their own types (JSON, Parquet: integers, lists), where CSV and TSV hold text only."""

  path: str
  line: int
  values: dict
  columns: dict[str, str]  # Config key ("text_column") -> column name.
  typed: bool

  def error(self, message: str) -> ValueError:
    return ValueError(f"{self.path}:{self.line}: {message}")

  def what(self, key: str) -> str:
    return f"column {self.columns[key]!r} (config.task.{key})"

  def raw(self, key: str) -> Any:
    return self.values[self.columns[key]]

  def text(self, key: str) -> str:
    return self.check_text(self.raw(key), key)

  def check_text(self, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
      raise self.error(f"{self.what(key)} is empty or not text: {value!r}")
    return value

  def integer(self, value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
      return int(value)
    raise self.error(f"{self.what(key)} is not an integer: {value!r}")

  def words(self, key: str) -> list[str]:
    value = self.raw(key)
    if isinstance(value, str):
      return value.split()
    if self.typed and isinstance(value, list) and all(isinstance(w, str) for w in value):
      return value
    raise self.error(
        f"{self.what(key)} is neither whitespace-separated text nor a list of "
        f"strings: {value!r}"
    )


def _check_columns(columns: dict[str, str], available: Any, where: str) -> None:
  for key, column in columns.items():
    if column not in available:
      raise ValueError(
          f"{where}: no column {column!r} (config.task.{key}); available columns: "
          f"{', '.join(map(repr, available))}"
      )


def _decode(path: str) -> str:
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    offset = e.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
    line = data[:offset].count(b"\n") + 1
    raise ValueError(
        f"{path}:{line}: not UTF-8 text (byte offset {offset}: {e.reason}); "
        "save the file as UTF-8"
    ) from e


def _read_csv(
    path: str, text: str, delimiter: str, columns: dict[str, str]
) -> list[tuple[int, dict]]:
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  rows = []
  try:
    header = next((fields for fields in reader if fields), None)
    if header is None:
      raise ValueError(f"{path}: empty file (no header row)")
    _check_columns(columns, header, f"{path}:{reader.line_num}")
    start = reader.line_num + 1  # A quoted field may span lines: report the row's first.
    for fields in reader:
      if fields and len(fields) != len(header):
        raise ValueError(f"{path}:{start}: {len(fields)} fields but the header has {len(header)}")
      if fields:
        rows.append((start, dict(zip(header, fields))))
      start = reader.line_num + 1
  except csv.Error as e:
    raise ValueError(f"{path}:{reader.line_num}: {e}") from e
  if not rows:
    raise ValueError(f"{path}: no data rows after the header")
  return rows


def _read_jsonl(path: str, text: str, columns: dict[str, str]) -> list[tuple[int, dict]]:
  rows = []
  for line, content in enumerate(text.split("\n"), 1):  # Not splitlines: JSON allows U+2028.
    if not content.strip():
      continue
    try:
      values = json.loads(content)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line}: not valid JSON ({e})") from e
    if not isinstance(values, dict):
      raise ValueError(f"{path}:{line}: not a JSON object but {type(values).__name__}")
    _check_columns(columns, values, f"{path}:{line}")
    rows.append((line, values))
  if not rows:
    raise ValueError(f"{path}: empty file (no JSON lines)")
  return rows


def _read_parquet(path: str, columns: dict[str, str]) -> list[tuple[int, dict]]:
  """The rows of a Parquet file (pyarrow), numbered from 1, with only the mapped columns."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
  _check_columns(columns, table.column_names, path)
  rows = table.select(sorted(set(columns.values()))).to_pylist()
  if not rows:
    raise ValueError(f"{path}: no rows")
  return list(enumerate(rows, 1))


def is_data_file(path: str) -> bool:
  """Whether `path` names a file this module reads (by its extension)."""
  return os.path.splitext(path)[1].lower() in EXTENSIONS


def columns(task: Any, task_type: str) -> dict[str, str]:
  """The column mapping config.task sets for a task type: config key -> column name."""
  return {key: getattr(task, key) for key in types.get(task_type).columns if getattr(task, key)}


def read_file(
    path: str, task_type: str, mapping: dict[str, str], what: str
) -> tuple[bool, list[tuple[int, dict]]]:
  """(whether its values are typed, [(line, example)]) of one file; `what` is the config key
  that names it, for the errors about the file as a whole."""
  extension = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}={path!r}: no such file")
  if extension not in EXTENSIONS:
    raise ValueError(
        f"{what}={path!r}: unknown extension {extension!r}; expected one of "
        f"{', '.join(EXTENSIONS)}"
    )
  typed = extension not in _DELIMITERS
  if extension == _PARQUET:
    rows = _read_parquet(path, mapping)
  elif extension in _JSONL:
    rows = _read_jsonl(path, _decode(path), mapping)
  else:
    rows = _read_csv(path, _decode(path), _DELIMITERS[extension], mapping)
  convert = types.get(task_type).read_row
  return typed, [(line, convert(Row(path, line, values, mapping, typed))) for line, values in rows]


def _load_file(
    task: Any, key: str, mapping: dict[str, str]
) -> tuple[str, bool, list[tuple[int, dict]]]:
  """(path, whether its values are typed, [(line, example)]) of the file config.task.<key>
  names."""
  path = getattr(task, key)
  typed, rows = read_file(path, task.type, mapping, f"config.task.{key}")
  return path, typed, rows


def _listing(values: list) -> str:
  more = f", ... ({len(values)} in all)" if len(values) > _MAX_LISTED else ""
  return ", ".join(map(repr, values[:_MAX_LISTED])) + more


def _label_set(files: dict, values_of: Callable[[dict], list], what: str) -> list:
  """The train file's sorted label (or tag) set, which validation and test must stay within."""
  path, _, train = files["train"]
  known, first = set(), {}  # first: each value type's first (line, value) in the train file.
  for line, example in train:
    for value in values_of(example):
      known.add(value)
      first.setdefault(type(value), (line, value))
  if len(first) > 1:
    (first_line, first_value), (line, value) = sorted(first.values(), key=lambda lv: lv[0])
    raise ValueError(
        f"{path}:{line}: {what}s mix integers and strings: {what} {value!r} here, "
        f"{what} {first_value!r} on line {first_line}"
    )
  for split_path, _, examples in (files[s] for s in ("validation", "test") if s in files):
    located = ((f"{split_path}:{line}", example) for line, example in examples)
    check_known(located, values_of, what, known)
  return sorted(known)


# Per label kind of a task type: the values an example holds, and what an error calls one.
LABEL_VALUES: dict[str, tuple[Callable[[dict], list], str]] = {
    "class": (lambda example: [example["label"]], "label"),
    "tags": (lambda example: example["tags"], "tag"),
}


def check_known(
    located: Iterable[tuple[str, dict]], values_of: Callable[[dict], list], what: str, known: set
) -> None:
  """Raises at the first value outside the train set's `known` ones; `located` pairs each
  example with the place (`file:line`) its error names."""
  for where, example in located:
    for value in values_of(example):
      if value not in known:
        raise ValueError(
            f"{where}: {what} {value!r} is not among the train {what}s "
            f"({_listing(sorted(known))})"
        )


def _integer_labels(files: dict) -> None:
  """Turns CSV/TSV labels into ints where every train label is integer-looking, as in JSON."""
  _, typed, train = files["train"]
  if typed or not all(_INTEGER.fullmatch(example["label"]) for _, example in train):
    return
  for _, split_typed, examples in files.values():
    if not split_typed:
      integer_labels([example for _, example in examples])


def integer_labels(examples: list[dict]) -> None:
  """Makes each integer-looking text label of a CSV/TSV file's examples an int, in place."""
  for example in examples:
    if isinstance(example["label"], str) and _INTEGER.fullmatch(example["label"]):
      example["label"] = int(example["label"])


def load(task: Any, seed: int) -> base.TaskData:
  """Reads config.task's train/validation/test files; a missing validation file is split off."""
  spec = types.get(task.type)
  mapping = columns(task, task.type)
  files = {
      split: _load_file(task, f"{split}_path", mapping)
      for split in base.SPLITS
      if split == "train" or getattr(task, f"{split}_path")
  }
  labels = None
  if spec.label_kind == "class":
    _integer_labels(files)
  if spec.label_kind in LABEL_VALUES:
    labels = _label_set(files, *LABEL_VALUES[spec.label_kind])
  splits = {split: [example for _, example in rows] for split, (_, _, rows) in files.items()}
  origin = {split: path for split, (path, _, _) in files.items()}
  if "validation" not in splits:
    fraction = task.validation_fraction
    splits["train"], splits["validation"] = base.split_off(splits["train"], fraction, seed)
    origin["validation"] = f"{task.train_path} (validation_fraction={fraction}, seed={seed})"
  splits = {split: splits[split] for split in base.SPLITS if split in splits}
  return base.TaskData(spec.name, splits, labels, {split: origin[split] for split in splits})
