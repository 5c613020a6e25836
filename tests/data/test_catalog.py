"""Tests for lmreuse/data/sources/catalog.py on small ArrayRecord files, without TensorFlow.

Why not `tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`: it does serve `tfds.data_source`
without TensorFlow, but (1) it builds each dataset's info from TFDS's builder code, and
super_glue's reads `tf.int32`, so boolq fails; (2) its random examples ignore how features
relate, giving CoNLL tokens and tags, and SQuAD answer texts and starts, different lengths;
(3) it returns str where real files give bytes, and mocks away splits and `data_dir`, so a wrong
TFDS split name or an unprepared dataset would go unnoticed.

Instead `prepared_dir` writes each catalog dataset in TFDS's real on-disk layout: a test-only
GeneratorBasedBuilder borrows the real builder's name, config, version and features (from TFDS's
code; `skip_registration` keeps it out of TFDS's registry) and yields a few hand-written
examples per split. `catalog.load` then reads them exactly as it reads `tfds build` output.
All ten datasets are prepared once per module, in well under a second.
"""

from __future__ import annotations

import importlib
import types
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.text import super_glue

from lmreuse.data.corpus import wordnet_tfds
from lmreuse.data.sources import base, catalog

# TFDS registers these builders only once their modules are imported (real_builder needs them).
for module in ("summarization.cnn_dailymail", "text.conll2003", "text.glue", "translate.wmt14"):
  importlib.import_module(f"tensorflow_datasets.{module}")

N_TRAIN, N_OTHER = 10, 3  # Examples per TFDS split: train, and every other split.

# Each dataset's TFDS splits (from TFDS's builder code), and the TFDS split our validation and
# test should come from. Spelled out here rather than read from the catalog, so a wrong mapping
# fails. GLUE and SuperGLUE test splits hold label -1, as the real ones do.
TFDS_SPLITS = {
    "glue/sst2": ("train", "validation", "test"),
    "glue/mrpc": ("train", "validation", "test"),
    "glue/stsb": ("train", "validation", "test"),
    "glue/mnli": (
        "train",
        "validation_matched",
        "validation_mismatched",
        "test_matched",
        "test_mismatched",
    ),
    "super_glue/boolq": ("train", "validation", "test"),
    "imdb_reviews": ("train", "test", "unsupervised"),
    "conll2003": ("train", "dev", "test"),
    "squad": ("train", "validation"),
    "wmt14_translate/de-en": ("train", "validation", "test"),
    "cnn_dailymail": ("train", "validation", "test"),
}
VALIDATION_AND_TEST_FROM = {
    "glue/sst2": ("train", "validation"),
    "glue/mrpc": ("train", "validation"),
    "glue/stsb": ("train", "validation"),
    "glue/mnli": ("train", "validation_matched"),
    "super_glue/boolq": ("train", "validation"),
    "imdb_reviews": ("train", "test"),
    "conll2003": ("dev", "test"),
    "squad": ("train", "validation"),
    "wmt14_translate/de-en": ("validation", "test"),
    "cnn_dailymail": ("validation", "test"),
}


def class_id(tag: str, i: int, num_classes: int) -> int:
  return -1 if tag.startswith("test") else i % num_classes


TFDS_EXAMPLES = {
    "glue/sst2": lambda tag, i: {
        "idx": i,
        "sentence": f"{tag} naïve",
        "label": class_id(tag, i, 2),
    },
    "glue/mrpc": lambda tag, i: {
        "idx": i,
        "sentence1": tag,
        "sentence2": "same",
        "label": class_id(tag, i, 2),
    },
    "glue/stsb": lambda tag, i: {
        "idx": i,
        "sentence1": tag,
        "sentence2": "b",
        "label": -1.0 if tag.startswith("test") else i / 2,
    },
    "glue/mnli": lambda tag, i: {
        "idx": i,
        "premise": tag,
        "hypothesis": "h",
        "label": class_id(tag, i, 3),
    },
    "super_glue/boolq": lambda tag, i: {
        "idx": i,
        "question": tag,
        "passage": "p",
        "label": class_id(tag, i, 2),
    },
    "imdb_reviews": lambda tag, i: {"text": tag, "label": i % 2},
    "conll2003": lambda tag, i: {
        "tokens": [tag, "visits", "Köln"],
        "ner": ["B-PER", "O", "B-LOC"],
        "pos": ["NNP", "VBZ", "NNP"],
        "chunks": ["B-NP", "B-VP", "B-NP"],
    },
    "squad": lambda tag, i: {
        "id": f"q{i}",
        "title": "t",
        "question": f"{tag} where?",
        "context": "It is in Köln.",
        "answers": {"text": ["Köln", "in Köln"], "answer_start": [9, 6]},
    },
    "wmt14_translate/de-en": lambda tag, i: {"de": f"{tag} Grüße", "en": f"{tag} greetings"},
    "cnn_dailymail": lambda tag, i: {
        "article": f"{tag} article",
        "highlights": "summary",
        "id": str(i),
        "publisher": "cnn",
    },
}


def real_builder(tfds_name: str) -> tfds.core.DatasetBuilder:
  """TFDS's own builder (code, not files): real features; fails if TFDS lacks the version."""
  # super_glue's _info reads tf.int32, the only TensorFlow it needs.
  with mock.patch.object(super_glue, "tf", types.SimpleNamespace(int32=np.int32)):
    builder = tfds.builder(tfds_name, data_dir="/nonexistent")
    _ = builder.info  # Built lazily: build it while tf is patched.
  return builder


def prepare(data_dir: str, name: str) -> None:
  """Writes `name` into data_dir as `tfds build --file_format=array_record` would."""
  task = catalog.get(name)
  real = real_builder(task.tfds_name)
  make_example = TFDS_EXAMPLES[name]

  class FakeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = real.version
    BUILDER_CONFIGS = [real.builder_config] if real.builder_config else []
    code_path = epath.Path(__file__)  # See wordnet_tfds.WordnetCorpus.code_path.

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(
          builder=self, features=real.info.features, disable_shuffling=True
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in TFDS_SPLITS[name]}

    def _generate_examples(self, split: str):
      for i in range(N_TRAIN if split == "train" else N_OTHER):
        yield i, make_example(f"{split}-{i}", i)

  FakeBuilder.name = real.name  # "glue", not "fake_builder": where TFDS looks for the files.
  config = real.builder_config.name if real.builder_config else None
  with wordnet_tfds.quiet_tfds():
    FakeBuilder(config=config, data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in catalog.NAMES:
    prepare(data_dir, name)
  return data_dir


def check_canonical(task_type: str, example: dict, labels: list | None) -> None:
  """Asserts `example` follows base.py's schema for `task_type`."""
  if task_type in ("classification", "regression"):
    assert set(example) in ({"text", "label"}, {"text", "text_pair", "label"})
    assert all(isinstance(example[key], str) for key in set(example) - {"label"})
    if task_type == "classification":
      assert example["label"] in labels
    else:
      assert type(example["label"]) is float
  elif task_type == "tagging":
    assert set(example) == {"tokens", "tags"}
    assert len(example["tokens"]) == len(example["tags"]) > 0
    assert all(isinstance(token, str) for token in example["tokens"])
    assert set(example["tags"]) <= set(labels)
  elif task_type == "extractive_qa":
    assert set(example) == {"id", "question", "context", "answers"}
    assert all(isinstance(example[key], str) for key in ("id", "question", "context"))
    assert example["answers"]
    for answer in example["answers"]:
      assert set(answer) == {"text", "start"} and type(answer["start"]) is int
      assert answer["text"] and isinstance(answer["text"], str)
      assert example["context"][answer["start"] :].startswith(answer["text"])
  else:
    assert task_type == "seq2seq"
    assert set(example) == {"source", "target"}
    assert isinstance(example["source"], str) and isinstance(example["target"], str)


def first_text(example: dict) -> str:
  """The field that TFDS_EXAMPLES starts with its split tag."""
  for key in ("text", "question", "source"):
    if key in example:
      return example[key]
  return example["tokens"][0]


@pytest.mark.parametrize("name", catalog.NAMES)
def test_load_gives_canonical_examples_from_the_mapped_splits(prepared_dir, name):
  task = catalog.get(name)
  data = catalog.load(name, data_dir=prepared_dir, seed=0, validation_fraction=0.2)
  assert data.task_type == task.task_type and set(data.splits) == set(base.SPLITS)
  assert data.labels == (list(task.labels) if task.labels else None)
  tfds_splits = dict(zip(base.SPLITS, ("train", *VALIDATION_AND_TEST_FROM[name])))
  for split, examples in data.splits.items():
    tfds_split = tfds_splits[split]
    assert data.origin[split].startswith(f"{task.tfds_name} {tfds_split}")
    assert isinstance(examples, base.View) and len(examples) > 0
    for example in examples:
      check_canonical(task.task_type, example, data.labels)
      assert first_text(example).startswith(f"{tfds_split}-")


@pytest.mark.parametrize("name", [name for name in catalog.NAMES if catalog.get(name).labels])
def test_labels_are_the_tfds_class_label_names_in_id_order(name):
  features = real_builder(catalog.get(name).tfds_name).info.features
  label = features["ner"].feature if name == "conll2003" else features["label"]
  assert list(catalog.get(name).labels) == label.names


def test_validation_is_a_seeded_fraction_of_tfds_train(prepared_dir):
  def texts(seed, split, **kwargs):
    data = catalog.load(
        "glue/sst2", data_dir=prepared_dir, seed=seed, validation_fraction=0.2, **kwargs
    )
    return [example["text"] for example in data.splits[split]]

  train, validation = texts(0, "train"), texts(0, "validation")
  assert len(validation) == 2 and len(train) == N_TRAIN - 2
  assert sorted(train + validation) == sorted(f"train-{i} naïve" for i in range(N_TRAIN))
  assert texts(0, "validation") == validation and texts(1, "validation") != validation
  assert texts(0, "validation", max_examples=1) == validation[:1]
  assert texts(0, "train", max_examples=1) == train[:1]
  assert texts(0, "test", max_examples=1) == ["validation-0 naïve"]


def test_load_explains_how_to_prepare_a_missing_dataset(tmp_path):
  with pytest.raises(
      FileNotFoundError,
      match=(
          "not prepared.*nothing is downloaded.*\n  tfds build super_glue/boolq:1.0.2 "
          f"--file_format=array_record --data_dir={tmp_path}$"
      ),
  ):
    catalog.load("super_glue/boolq", data_dir=str(tmp_path), seed=0, validation_fraction=0.1)


def test_get_rejects_an_unknown_name_listing_the_known_ones():
  with pytest.raises(ValueError, match=r"'glue/cola' is not in the catalog.*'glue/sst2'"):
    catalog.get("glue/cola")


# (name, example as data_source returns it: bytes text, numpy ints; canonical example)
CONVERSIONS = [
    (
        "glue/sst2",
        {"idx": 7, "sentence": b"na\xc3\xafve fun", "label": np.int64(1)},
        {"text": "naïve fun", "label": "positive"},
    ),
    (
        "glue/mrpc",
        {"idx": 0, "sentence1": b"a", "sentence2": b"b", "label": 0},
        {"text": "a", "text_pair": "b", "label": "not_equivalent"},
    ),
    (
        "glue/stsb",
        {"idx": 0, "sentence1": b"a", "sentence2": b"b", "label": np.float32(3.5)},
        {"text": "a", "text_pair": "b", "label": 3.5},
    ),
    (
        "glue/mnli",
        {"idx": 0, "premise": b"p", "hypothesis": b"h", "label": 2},
        {"text": "p", "text_pair": "h", "label": "contradiction"},
    ),
    (
        "super_glue/boolq",
        {"idx": 0, "question": b"q?", "passage": b"p", "label": 0},
        {"text": "q?", "text_pair": "p", "label": "False"},
    ),
    ("imdb_reviews", {"text": b"bad", "label": 0}, {"text": "bad", "label": "neg"}),
    (
        "conll2003",
        {
            "tokens": [b"EU", b"rejects", b"German"],
            "ner": [np.int64(3), 0, 7],
            "pos": [22, 42, 16],
            "chunks": [11, 21, 11],
        },
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
    ),
    (
        "squad",
        {
            "id": b"5733",
            "title": b"T",
            "question": b"Where?",
            "context": b"In Paris.",
            "answers": {
                "text": [b"Paris", b"In Paris"],
                "answer_start": [np.int32(3), np.int32(0)],
            },
        },
        {
            "id": "5733",
            "question": "Where?",
            "context": "In Paris.",
            "answers": [{"text": "Paris", "start": 3}, {"text": "In Paris", "start": 0}],
        },
    ),
    (
        "wmt14_translate/de-en",
        {"de": b"Gr\xc3\xbc\xc3\x9fe", "en": b"Greetings"},
        {"source": "Grüße", "target": "Greetings"},
    ),
    (
        "cnn_dailymail",
        {"article": b"Long text.", "highlights": b"Short.", "id": b"1", "publisher": b"cnn"},
        {"source": "Long text.", "target": "Short."},
    ),
]


def test_conversions_cover_the_catalog():
  assert sorted(name for name, _, _ in CONVERSIONS) == sorted(catalog.NAMES)


@pytest.mark.parametrize("name,tfds_example,expected", CONVERSIONS)
def test_convert(name, tfds_example, expected):
  converted = catalog.get(name).convert(tfds_example)
  assert converted == expected
  assert [type(value) for value in converted.values()] == [type(v) for v in expected.values()]
