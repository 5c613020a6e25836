"""TFDS builder `wordnet_corpus` over the repository's wordnet.jsonl.gz (no downloads).

Configs: `synsets` (one example per synset; train/validation/test) and `documents`
(wordnet.documents; train/validation). Built as ArrayRecord so grain can read it with
random access and without TensorFlow. Prefer wordnet.data_source, which builds once:

    WordnetCorpus(config="documents", data_dir=d, file_format="array_record").download_and_prepare()
    tfds.data_source("wordnet_corpus/documents", data_dir=d)

VERSION pins the data: DATA_SHA256 must equal the sha256 of wordnet.jsonl.gz, else
construction fails. When the corpus is regenerated, bump VERSION (so cached builds are
rebuilt in a new directory instead of silently reused) and update DATA_SHA256.
"""

import contextlib
import functools
import hashlib
import itertools
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from lmreuse.data.corpus import wordnet

DATA_SHA256 = "80a65fdbe89251014617b70ad510eabed71bc7833ac263141f6ffa3065911662"
SPLITS_BY_CONFIG = {
    "synsets": ("train", "validation", "test"),
    "documents": ("train", "validation"),  # Test synsets stay unseen by pretraining.
}


@functools.cache
def file_sha256(path: str) -> str:
  """Hex sha256 of a file (cached: the builder checks the corpus on every construction)."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Hides TFDS's progress bars and INFO/WARNING logs (restored afterwards)."""
  was_active = tqdm_utils._active  # pylint: disable=protected-access
  verbosity = absl_logging.get_verbosity()
  tfds.disable_progress_bar()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    tfds.display_progress_bar(was_active)
    absl_logging.set_verbosity(verbosity)


def _features(config_name: str) -> tfds.features.FeaturesDict:
  text_list = tfds.features.Sequence(tfds.features.Text())
  if config_name == "documents":
    return tfds.features.FeaturesDict(
        {"id": tfds.features.Text(), "lexname": tfds.features.Text(), "segments": text_list}
    )
  return tfds.features.FeaturesDict(
      {
          "id": tfds.features.Text(),
          "pos": tfds.features.Text(),
          "lexname": tfds.features.Text(),
          "lemmas": text_list,
          "gloss": tfds.features.Text(),
          "examples": text_list,
          "hypernyms": text_list,
          "split": tfds.features.Text(),
      }
  )


class WordnetCorpus(tfds.core.GeneratorBasedBuilder):
  """WordNet 3.0 synsets and synset-run documents from lmreuse/data/corpus/wordnet.jsonl.gz."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "WordNet 3.0, split rule of lmreuse.data.corpus.build."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="synsets", description="One example per synset."),
      tfds.core.BuilderConfig(name="documents", description="Runs of <= 8 related synsets."),
  ]

  # TFDS 4.9.10 derives code_path via `importlib_resources`, which it does not install on
  # Python >= 3.9 (ModuleNotFoundError in download_and_prepare); this file is the answer.
  code_path = epath.Path(__file__)

  def __init__(
      self, *, source_path: str = wordnet.DEFAULT_PATH, max_records: int | None = None, **kwargs
  ):
    """source_path/max_records override the corpus (tests only: VERSION no longer pins it)."""
    if source_path == wordnet.DEFAULT_PATH and max_records is None:
      sha = file_sha256(source_path)
      if sha != DATA_SHA256:
        raise ValueError(
            f"{source_path} has sha256 {sha}, but wordnet_tfds.DATA_SHA256 is {DATA_SHA256}: "
            f"the corpus changed, so bump WordnetCorpus.VERSION and set DATA_SHA256"
        )
    self._source_path, self._max_records = source_path, max_records
    super().__init__(**kwargs)
    self._original_state.update(source_path=source_path, max_records=max_records)

  def _info(self) -> tfds.core.DatasetInfo:
    # Not self.dataset_info_from_configs: it looks for metadata files beside this module.
    return tfds.core.DatasetInfo(
        builder=self,
        features=_features(self.builder_config.name),
        disable_shuffling=True,
        homepage="https://wordnet.princeton.edu/",
        description="WordNet 3.0 (Princeton University), see LICENSE.WordNet.",
    )

  # TFDS prints these banners (with "Unknown size") to stdout; a log line is enough.
  def _log_download_bytes(self) -> None:
    absl_logging.info("Preparing %s into %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    absl_logging.info("Prepared %s in %s", self.name, self.data_dir)

  def _split_generators(self, dl_manager):
    del dl_manager  # The corpus ships with the repository.
    return {
        split: self._generate_examples(split)
        for split in SPLITS_BY_CONFIG[self.builder_config.name]
    }

  def _generate_examples(self, split: str):
    records = wordnet.read_records(split, path=self._source_path)
    if self._max_records is not None:
      records = itertools.islice(records, self._max_records)
    if self.builder_config.name == "documents":
      records = wordnet.documents(records)
    # Integer keys in corpus order: with disable_shuffling, TFDS keeps that order.
    yield from enumerate(records)
