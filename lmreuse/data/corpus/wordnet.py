"""Reads the bundled WordNet corpus (wordnet.jsonl.gz) as synsets, text segments or documents.

The corpus is small (117,659 synsets, ~7M characters) and ships with the repository, so
pretraining runs need no download. `documents` turns synsets into pretraining documents
whose consecutive segments are related (adjacent synsets of one lexicographer file), which
next-sentence objectives rely on. `data_source` serves the same records through TFDS's
ArrayRecord format for grain's random access; see wordnet_tfds.py.

    from lmreuse.data.corpus import wordnet
    docs = list(wordnet.documents(wordnet.read_records("train")))
    source = wordnet.data_source("documents", "train")  # Builds once, then reuses.
"""

import contextlib
import fcntl
import gzip
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wordnet.jsonl.gz")
SPLITS = ("train", "validation", "test")
CONFIG_NAMES = ("synsets", "documents")
MAX_DOCUMENT_SYNSETS = 8  # Equals build.BLOCK_SIZE, so held-out blocks are whole documents.
MAX_SEGMENT_LEMMAS = 3
TFDS_DIR_ENV = "LMREUSE_TFDS_DIR"


def read_records(split: str | None = None, path: str = DEFAULT_PATH) -> Iterator[dict]:
  """Streams synset records in corpus order, optionally only those of one split."""
  if split is not None and split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS} (corpus {path})")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON line: {e}") from e
      if split is None or record["split"] == split:
        yield record


def synset_segments(record: dict) -> list[str]:
  """A synset as text: "<lemma1>, <lemma2>: <gloss>." then each example sentence."""
  head = ", ".join(record["lemmas"][:MAX_SEGMENT_LEMMAS])
  gloss = record["gloss"]
  if gloss and not gloss.endswith((".", "!", "?")):
    gloss += "."
  first = f"{head}: {gloss}" if gloss else f"{head}."
  return [first, *record["examples"]]


def segments(split: str | None = None, path: str = DEFAULT_PATH) -> Iterator[str]:
  """Every text segment of a split, in corpus order: what tokenizers are trained on."""
  for record in read_records(split, path):
    yield from synset_segments(record)


def documents(records: Iterable[dict], max_synsets: int = MAX_DOCUMENT_SYNSETS) -> Iterator[dict]:
  """Groups runs of <= max_synsets consecutive synsets (same lexname and split) into documents.

  Records must be in corpus order (as read_records yields them): neighbouring synsets of
  a lexicographer file are related, so a document's next segment is a meaningful
  continuation for NSP-style objectives.
  """
  for (lexname, _), run in itertools.groupby(records, key=lambda r: (r["lexname"], r["split"])):
    run = iter(run)
    while chunk := list(itertools.islice(run, max_synsets)):
      yield {
          "id": chunk[0]["id"],
          "lexname": lexname,
          "segments": [s for record in chunk for s in synset_segments(record)],
      }


def default_tfds_dir() -> str:
  """Where TFDS builds go: $LMREUSE_TFDS_DIR, else ~/.cache/lmreuse/tfds."""
  return os.environ.get(TFDS_DIR_ENV) or os.path.expanduser("~/.cache/lmreuse/tfds")


@contextlib.contextmanager
def _build_lock(data_dir: str) -> Iterator[None]:
  """Serializes builds across processes sharing data_dir (a later one reuses the result)."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".wordnet_corpus.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def build_tfds(
    data_dir: str | None = None, configs: Iterable[str] = CONFIG_NAMES, **builder_kwargs: Any
) -> str:
  """Prepares the TFDS builds (ArrayRecord) of `configs` unless present; returns data_dir.

  builder_kwargs (source_path, max_records) exist for tests; see wordnet_tfds.WordnetCorpus.
  """
  from lmreuse.data.corpus import wordnet_tfds  # Lazy: TFDS import is slow.

  data_dir = data_dir or default_tfds_dir()
  with _build_lock(data_dir):
    for config in configs:
      if config not in CONFIG_NAMES:
        raise ValueError(f"config {config!r} is not one of {CONFIG_NAMES}")
      with wordnet_tfds.quiet_tfds():
        builder = wordnet_tfds.WordnetCorpus(
            config=config, data_dir=data_dir, file_format="array_record", **builder_kwargs
        )
        if not builder.is_prepared():
          builder.download_and_prepare()
  return data_dir


def data_source(config_name: str, split: str, data_dir: str | None = None):
  """Random-access source (len(), [i] -> dict, text as bytes) of one config's split.

  Builds the TFDS dataset on first use; later calls and other processes reuse it.
  """
  import tensorflow_datasets as tfds

  from lmreuse.data.corpus import wordnet_tfds  # Registers the builder with TFDS.

  data_dir = build_tfds(data_dir, configs=[config_name])
  splits = wordnet_tfds.SPLITS_BY_CONFIG[config_name]
  if split not in splits:
    raise ValueError(f"split={split!r} not in wordnet_corpus/{config_name}: splits are {splits}")
  with wordnet_tfds.quiet_tfds():
    return tfds.data_source(
        f"wordnet_corpus/{config_name}", split=split, data_dir=data_dir, download=False
    )
