"""Shared fixtures: one small tokenizer, one TFDS build and one pretrained BERT per test session."""

import fcntl
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

# Before jax is imported: it sets the session's XLA flags.
from tests import xla_flags  # noqa: F401

# isort: split
import jax
import pytest

from lmreuse import workdir as workdir_lib
from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.data.corpus import wordnet

# Tests compile the same tiny programs many times; the persistent cache compiles each once.
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "lmreuse-test-jax-cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def shared_dir(tmp_path_factory, worker_id: str, name: str) -> pathlib.Path:
  """A directory every pytest-xdist worker of this run shares (the run's base temp directory
  is one per worker under a common parent), so that one worker builds what all of them read."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent
  path = root / name
  path.mkdir(exist_ok=True)
  return path


def build_once(directory: pathlib.Path, done: pathlib.Path, build: Callable[[], Any]) -> None:
  """Runs `build` in the first worker to get here, under a file lock on `directory`; the others
  wait for it and then find `done`, which `build` makes last."""
  with open(directory / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      build()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, worker_id) -> str:
  """The corpus's TFDS build, made by the first worker to need it: wordnet.build_tfds locks the
  directory, and the others then find it prepared."""
  return str(shared_dir(tmp_path_factory, worker_id, "tfds"))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory, worker_id) -> str:
  """A 1k-piece SentencePiece model on part of the corpus: enough for tiny models, fast. The
  first worker trains it under a file lock; the others wait for it and read it."""
  directory = shared_dir(tmp_path_factory, worker_id, "tokenizer")
  path = directory / "spm.model"  # written atomically
  build_once(
      directory,
      path,
      lambda: tokenizer_lib.train_tokenizer(
          wordnet.segments("train"),
          str(path),
          vocab_size=1024,
          num_sentinels=32,
          max_sentences=30_000,
      ),
  )
  return str(path)


@pytest.fixture(scope="session")
def tiny_config(tokenizer_path, tfds_dir):
  """A pretraining config small enough for a test: tiny model, short rows, few steps."""

  def make(preset: str = "bert", **overrides):
    from configs import pretrain

    config = pretrain.get_config(f"{preset},size=tiny")
    config.tokenizer.path = tokenizer_path
    config.tokenizer.vocab_size = 1024
    config.tokenizer.num_sentinels = 32
    config.data.tfds_dir = tfds_dir
    config.data.seq_len = 32
    config.model.max_len = 32
    config.batch_size = 8
    config.total_steps = 6
    config.log_every = 1
    config.eval_every = 0  # evaluate at the end only
    config.eval_steps = 2
    config.checkpoint_every = 3
    return override(config, overrides)

  return make


def override(config, overrides: dict):
  """Sets dotted keys ("optimizer.learning_rate") as --config.KEY=VALUE flags would."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.fixture(scope="session")
def finetune_config(tokenizer_path):
  """A fine-tuning config for tests: tiny model, 32-token rows, 4 steps, small data subsets."""

  def make(preset: str = "bert", **overrides):
    from configs import finetune

    config = finetune.get_config(f"{preset},size=tiny")
    config.tokenizer.path = tokenizer_path
    config.tokenizer.vocab_size = 1024
    config.tokenizer.num_sentinels = 32
    config.model.max_len = 64
    config.max_len = 32
    config.batch_size = 8
    config.total_steps = 4
    config.log_every = 2
    config.eval_every = 0
    config.checkpoint_every = 4
    config.optimizer.warmup_steps = 1
    config.task.max_train_examples = 64
    config.task.max_eval_examples = 16
    config.task.max_target_len = 16
    return override(config, overrides)

  return make


@pytest.fixture(scope="session")
def bert_pretrained(tmp_path_factory, worker_id, tiny_config):
  """A briefly pretrained tiny BERT (MLM + NSP) workdir and its config, shared by reuse tests
  (which only read it) and made by the first worker to need it."""
  from experiments import pretrain

  config = tiny_config("bert", total_steps=2, checkpoint_every=2, eval_steps=1)
  directory = shared_dir(tmp_path_factory, worker_id, "bert_pretrained")
  workdir = directory / "run"
  build_once(directory, workdir / workdir_lib.RESULTS, lambda: pretrain.run(config, str(workdir)))
  return str(workdir), config
