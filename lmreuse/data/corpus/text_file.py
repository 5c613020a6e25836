"""A pretraining corpus from the user's own text file (`config.data.corpus=PATH`): what
continued pretraining on domain or task text reads (config.adapt of a fine-tuning run).

Two layouts, by extension:
  .txt    BERT's pretraining-data layout: one sentence (segment) per line, a blank line between
          documents.
  .jsonl  one document per line: {"text": str} (one segment) or {"segments": [str, ...]}.

A seeded `VALIDATION_FRACTION` of the documents (at least two) is the validation split, the
rest train; the seed is fixed, so every run on a file holds out the same documents. Problems
raise one ValueError naming `file:line`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator

from lmreuse import workdir as workdir_lib
from lmreuse.data.sources import base

EXTENSIONS = (".txt", ".jsonl")
VALIDATION_FRACTION = 0.05
_SPLIT_SEED = 0
SPLITS = ("train", "validation")
MIN_SPLIT_DOCUMENTS = 2  # next-sentence prediction draws its random segment from another one


def check_path(path: str, key: str = "config.data.corpus") -> None:
  """Refuses a corpus path that is not an existing file of a known layout."""
  if os.path.splitext(path)[1].lower() not in EXTENSIONS:
    raise ValueError(
        f"{key}={path!r} is neither 'wordnet' nor a text corpus file ({', '.join(EXTENSIONS)})"
    )
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{key}={path!r} does not exist")


def _txt_documents(path: str) -> Iterator[list[str]]:
  with open(path, encoding="utf-8") as f:
    document: list[str] = []
    for line in f:
      line = line.strip()
      if line:
        document.append(line)
      elif document:
        yield document
        document = []
    if document:
      yield document


def _jsonl_documents(path: str) -> Iterator[list[str]]:
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON line: {e}") from e
      segments = record.get("segments") if isinstance(record, dict) else None
      if segments is None and isinstance(record, dict):
        segments = [record["text"]] if "text" in record else None
      if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
        raise ValueError(
            f'{where}: a document is {{"text": str}} or {{"segments": [str, ...]}}, got '
            f"{line.strip()[:80]!r}"
        )
      segments = [s.strip() for s in segments if s.strip()]
      if segments:
        yield segments


def read_documents(path: str) -> tuple[tuple[str, ...], ...]:
  """Every non-empty document of the file, as its segments, in file order."""
  check_path(path)
  return _read(path, os.stat(path).st_mtime_ns)


@functools.cache  # read once per process and file version: a split is asked for many times
def _read(path: str, mtime_ns: int) -> tuple[tuple[str, ...], ...]:
  del mtime_ns  # only the cache key
  read = _jsonl_documents if path.lower().endswith(".jsonl") else _txt_documents
  documents = tuple(tuple(d) for d in read(path))
  if len(documents) < 2 * MIN_SPLIT_DOCUMENTS:
    raise ValueError(
        f"{path}: {len(documents)} document(s); a corpus needs at least "
        f"{2 * MIN_SPLIT_DOCUMENTS} ({MIN_SPLIT_DOCUMENTS} each for training and validation)"
    )
  return documents


def data_source(path: str, split: str) -> list[dict]:
  """One split's documents as records {"segments": [...]}: the pretraining pipeline's source."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: a text corpus has the splits {SPLITS}")
  train, validation = base.split_off(
      read_documents(path), VALIDATION_FRACTION, _SPLIT_SEED, minimum=MIN_SPLIT_DOCUMENTS
  )
  return [{"segments": list(d)} for d in (train if split == "train" else validation)]


def segments(path: str) -> Iterator[str]:
  """Every segment of the training split: what a tokenizer for this corpus is trained on."""
  for record in data_source(path, "train"):
    yield from record["segments"]


def write_documents(path: str, documents: Iterable[list[str]]) -> int:
  """Writes documents as a .jsonl corpus (atomically: a crash leaves no partial file); returns
  how many were written."""
  lines = [json.dumps({"segments": d}, ensure_ascii=False) for d in documents if d]
  workdir_lib.write_atomically(path, "".join(line + "\n" for line in lines))
  return len(lines)
