"""Shared components every experiment builds from its config: tokenizer, model config, checks."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
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


def tokenizer(tok: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
  """Loads `tok.path`, or trains SentencePiece on the pretraining split into the workdir."""
  path = tok.path or workdir_lib.trained_tokenizer_path(workdir)
  if tok.path and not os.path.exists(path):
    raise FileNotFoundError(f"config.tokenizer.path={path!r} does not exist")

  return tokenizer_lib.get_or_train(
      path, lambda: wordnet.segments("train"), vocab_size=tok.vocab_size, model_type=tok.model_type,
      num_sentinels=tok.num_sentinels, max_sentences=tok.max_sentences)


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
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                     f"config.grad_accum_steps={config.grad_accum_steps}")


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh, rules) -> None:
  """The per-step micro-batch must split evenly over the mesh's batch axes."""
  divisor = sharding_lib.batch_divisor(mesh, rules)
  micro = config.batch_size // config.grad_accum_steps
  if micro % divisor:
    raise ValueError(
        f"config.batch_size={config.batch_size} / config.grad_accum_steps="
        f"{config.grad_accum_steps} = {micro} examples per micro-batch, which does not divide "
        f"over the {divisor} batch shards of mesh {dict(mesh.shape)}")
