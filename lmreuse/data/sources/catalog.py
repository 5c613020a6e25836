"""TFDS catalog datasets as canonical examples (see base.py), read without TensorFlow.

`CATALOG` maps each TFDS name to its task type, a converter from the TFDS example to the
canonical one, its splits and its label names. `load` reads ArrayRecord files that must already
be in `data_dir` through `tfds.data_source` (random access, no TensorFlow) and converts each
example when it is accessed. Nothing is downloaded at run time: prepare a dataset once, on a
machine with internet and TensorFlow, then copy DIR over:

    tfds build glue/sst2:2.0.0 --file_format=array_record --data_dir=DIR

Splits: GLUE and SuperGLUE hide their test labels (all -1), so our `test` is TFDS's
`validation` (MNLI: `validation_matched`), and our `validation` is a seeded
`validation_fraction` of TFDS's `train` (base.split_off's rule). Datasets without a labelled
validation split (imdb_reviews, squad) get their `validation` the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

from etils import epath

from lmreuse.data.sources import base


@dataclasses.dataclass(frozen=True)
class CatalogTask:
  """How to read one TFDS dataset and turn its examples into canonical ones.

  `tfds_name` pins config and version so that TFDS reads the prepared dataset_info.json rather
  than running the builder's code (super_glue's needs TensorFlow), and results stay comparable.
  `splits` maps our split names to TFDS's; without "validation", it is held out of "train".
  `labels` are the ClassLabel names in id order (classification) or the tag names (tagging);
  `positive_label` is the class whose binary F1 the benchmark reports (MRPC).
  """

  task_type: str
  tfds_name: str
  convert: Callable[[dict], dict]
  splits: dict[str, str]
  labels: tuple[str, ...] | None = None
  positive_label: str | None = None


def _text(value: bytes) -> str:
  """data_source returns text features as UTF-8 bytes."""
  return value.decode("utf-8")


def _classification(
    example: dict, *, text: str, labels: Sequence[str], pair: str | None = None
) -> dict:
  converted = {"text": _text(example[text])}
  if pair is not None:
    converted["text_pair"] = _text(example[pair])
  converted["label"] = labels[int(example["label"])]
  return converted


def _regression(example: dict, *, text: str, pair: str) -> dict:
  return {
      "text": _text(example[text]),
      "text_pair": _text(example[pair]),
      "label": float(example["label"]),
  }


def _tagging(example: dict, *, tags: str, names: Sequence[str]) -> dict:
  return {
      "tokens": [_text(token) for token in example["tokens"]],
      "tags": [names[int(tag)] for tag in example[tags]],
  }


def _extractive_qa(example: dict) -> dict:
  answers = example["answers"]
  return {
      "id": _text(example["id"]),
      "question": _text(example["question"]),
      "context": _text(example["context"]),
      "answers": [
          {"text": _text(text), "start": int(start)}
          for text, start in zip(answers["text"], answers["answer_start"], strict=True)
      ],
  }


def _seq2seq(example: dict, *, source: str, target: str) -> dict:
  return {"source": _text(example[source]), "target": _text(example[target])}


_GLUE_SPLITS = {"train": "train", "test": "validation"}
_ALL_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
_SST2 = ("negative", "positive")
_MRPC = ("not_equivalent", "equivalent")
_MNLI = ("entailment", "neutral", "contradiction")
_BOOLQ = ("False", "True")
_IMDB = ("neg", "pos")
_CONLL_NER = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

# Versions are those tensorflow-datasets 4.9.10 builds (tests/data/test_catalog.py checks).
CATALOG: dict[str, CatalogTask] = {
    "glue/sst2": CatalogTask(
        "classification",
        "glue/sst2:2.0.0",
        functools.partial(_classification, text="sentence", labels=_SST2),
        splits=_GLUE_SPLITS,
        labels=_SST2,
    ),
    "glue/mrpc": CatalogTask(
        "classification",
        "glue/mrpc:2.0.0",
        functools.partial(_classification, text="sentence1", pair="sentence2", labels=_MRPC),
        splits=_GLUE_SPLITS,
        labels=_MRPC,
        positive_label="equivalent",
    ),
    "glue/stsb": CatalogTask(
        "regression",
        "glue/stsb:2.0.0",
        functools.partial(_regression, text="sentence1", pair="sentence2"),
        splits=_GLUE_SPLITS,
    ),
    "glue/mnli": CatalogTask(
        "classification",
        "glue/mnli:2.0.0",
        functools.partial(_classification, text="premise", pair="hypothesis", labels=_MNLI),
        splits={"train": "train", "test": "validation_matched"},
        labels=_MNLI,
    ),
    "super_glue/boolq": CatalogTask(
        "classification",
        "super_glue/boolq:1.0.2",
        functools.partial(_classification, text="question", pair="passage", labels=_BOOLQ),
        splits=_GLUE_SPLITS,
        labels=_BOOLQ,
    ),
    "imdb_reviews": CatalogTask(
        "classification",
        "imdb_reviews/plain_text:1.0.0",
        functools.partial(_classification, text="text", labels=_IMDB),
        splits={"train": "train", "test": "test"},
        labels=_IMDB,
    ),
    "conll2003": CatalogTask(
        "tagging",
        "conll2003/conll2003:1.0.0",
        functools.partial(_tagging, tags="ner", names=_CONLL_NER),
        splits={"train": "train", "validation": "dev", "test": "test"},
        labels=_CONLL_NER,
    ),
    "squad": CatalogTask(
        "extractive_qa",
        "squad/v1.1:3.0.0",
        _extractive_qa,
        splits={"train": "train", "test": "validation"},
    ),
    "wmt14_translate/de-en": CatalogTask(
        "seq2seq",
        "wmt14_translate/de-en:1.0.0",
        functools.partial(_seq2seq, source="de", target="en"),
        splits=_ALL_SPLITS,
    ),
    "cnn_dailymail": CatalogTask(
        "seq2seq",
        "cnn_dailymail:3.4.0",
        functools.partial(_seq2seq, source="article", target="highlights"),
        splits=_ALL_SPLITS,
    ),
}
NAMES: tuple[str, ...] = tuple(CATALOG)


def get(name: str) -> CatalogTask:
  """The catalog entry for a TFDS name such as "glue/sst2"."""
  if name not in CATALOG:
    raise ValueError(f"TFDS dataset {name!r} is not in the catalog: known names are {NAMES}")
  return CATALOG[name]


def load(
    name: str, *, data_dir: str | None, seed: int, validation_fraction: float, max_examples: int = 0
) -> base.TaskData:
  """The catalog dataset `name` from ArrayRecord files prepared in `data_dir` (None: TFDS's).

  `validation_fraction` of TFDS's train becomes our validation (held out with `seed`) where
  the entry maps no validation split. `max_examples` > 0 keeps the first that many examples
  of each split, for smoke runs; validation is held out of the whole train split first.
  """
  import tensorflow_datasets as tfds  # Lazy: TFDS import is slow.

  from lmreuse.data.corpus import wordnet_tfds

  task = get(name)
  data_dir = data_dir or tfds.core.constants.get_default_data_dir()
  info_path = epath.Path(data_dir) / task.tfds_name.replace(":", "/") / "dataset_info.json"
  if not info_path.exists():
    raise FileNotFoundError(
        f"TFDS dataset {task.tfds_name} is not prepared in {data_dir} (no {info_path}), and "
        f"nothing is downloaded at run time. Prepare it first on a machine with internet:\n"
        f"  tfds build {task.tfds_name} --file_format=array_record --data_dir={data_dir}"
    )

  sources, indices, origin = {}, {}, {}
  for split, tfds_split in task.splits.items():
    with wordnet_tfds.quiet_tfds():
      sources[split] = tfds.data_source(
          task.tfds_name, split=tfds_split, data_dir=data_dir, download=False
      )
    indices[split] = range(len(sources[split]))
    origin[split] = f"{task.tfds_name} {tfds_split}"
  if "validation" not in sources:
    sources["validation"] = sources["train"]
    indices["train"], indices["validation"] = base.split_off(
        indices["train"], validation_fraction, seed
    )
    origin["train"] += " less validation"
    origin["validation"] = (
        f"{task.tfds_name} train, {validation_fraction:g} held out with " f"seed {seed}"
    )
  if max_examples > 0:
    indices = {split: split_indices[:max_examples] for split, split_indices in indices.items()}
  return base.TaskData(
      task.task_type,
      {split: base.View(sources[split], indices[split], task.convert) for split in base.SPLITS},
      labels=list(task.labels) if task.labels else None,
      origin=origin,
      positive_label=task.positive_label,
  )
