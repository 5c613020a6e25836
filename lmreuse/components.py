"""Shared components every experiment builds from its config: tokenizer, model config, checks."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lmreuse import workdir as workdir_lib
from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.data.corpus import wordnet
from lmreuse.models.config import TransformerConfig
from lmreuse.parallel import sharding as sharding_lib


def model_config(model: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
  """The config's model section as a TransformerConfig; the tokenizer fixes the vocabulary."""
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(model.keys()) - fields)
  if unknown:
    raise ValueError(f"config.model has unknown keys {unknown}; known: {sorted(fields)}")
  return TransformerConfig(**{**model.to_dict(), "vocab_size": vocab_size})


def tokenizer(
    tok: ml_collections.ConfigDict, workdir: str, *, reuse_trained: bool = True
) -> tokenizer_lib.Tokenizer:
  """Loads `tok.path`, else the SentencePiece model this workdir's run trained (unless
  `reuse_trained` is False: an overwrite discards it), else trains one on the pretraining split.

  A newly trained model is not written yet (it is trained in a temporary directory): the run
  writes it with `save_tokenizer` once it may write to the workdir, so that a run refused by a
  later check leaves the workdir as it was, and an overwrite never reads the old run's model.
  """
  if tok.path:
    if not os.path.exists(tok.path):
      raise FileNotFoundError(f"config.tokenizer.path={tok.path!r} does not exist")
    return tokenizer_lib.load_tokenizer(tok.path)
  path = workdir_lib.trained_tokenizer_path(workdir)
  if reuse_trained and os.path.exists(path):
    return tokenizer_lib.load_tokenizer(path)
  proto = b""
  if jax.process_index() == 0:  # one model for every process: they must tokenize alike
    with tempfile.TemporaryDirectory() as staging:
      proto = tokenizer_lib.train_tokenizer(
          wordnet.segments("train"),
          os.path.join(staging, "spm.model"),
          vocab_size=tok.vocab_size,
          model_type=tok.model_type,
          num_sentinels=tok.num_sentinels,
          max_sentences=tok.max_sentences,
      ).model_proto
  if jax.process_count() > 1:
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(proto))))
    data = np.frombuffer(proto, np.uint8) if proto else np.zeros(size, np.uint8)
    proto = np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()
  return tokenizer_lib.Tokenizer(proto, model_path=path)


def save_tokenizer(
    trained: tokenizer_lib.Tokenizer, tok: ml_collections.ConfigDict, workdir: str
) -> None:
  """Writes a model `tokenizer` trained for this workdir (process 0; nothing for a given path)."""
  path = workdir_lib.trained_tokenizer_path(workdir)
  if not tok.path and jax.process_index() == 0 and not os.path.exists(path):
    workdir_lib.write_atomically(path, trained.model_proto)


def validate_loop(config: ml_collections.ConfigDict, positive_keys: tuple[str, ...]) -> None:
  """The training-loop keys every experiment shares: positive counts, eval cadence, batching."""
  for key in positive_keys:
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive")
  if config.eval_every < 0:
    raise ValueError(f"config.eval_every={config.eval_every} must be >= 0 (0 = only at the end)")
  if config.nonfinite not in ("abort", "skip"):
    raise ValueError(f"config.nonfinite={config.nonfinite!r} must be 'abort' or 'skip'")
  if config.max_nonfinite_skips <= 0:
    raise ValueError(f"config.max_nonfinite_skips={config.max_nonfinite_skips} must be positive")
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(
        f"config.batch_size={config.batch_size} is not divisible by "
        f"config.grad_accum_steps={config.grad_accum_steps}"
    )


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh, rules) -> None:
  """The per-step micro-batch must split evenly over the mesh's batch axes."""
  divisor = sharding_lib.batch_divisor(mesh, rules)
  micro = config.batch_size // config.grad_accum_steps
  if micro % divisor:
    raise ValueError(
        f"config.batch_size={config.batch_size} / config.grad_accum_steps="
        f"{config.grad_accum_steps} = {micro} examples per micro-batch, which does not divide "
        f"over the {divisor} batch shards of mesh {dict(mesh.shape)}"
    )
