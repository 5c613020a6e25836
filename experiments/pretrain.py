"""Pretraining: tokenizer → corpus pipeline → sharded model → trainer loop → results.json."""

from __future__ import annotations

import functools
import itertools
import os
import time
from typing import TYPE_CHECKING

import ml_collections
from absl import logging

from lmreuse import objectives, pretrained as pretrained_lib, workdir as workdir_lib
from lmreuse.data import pipeline, tokenizer as tokenizer_lib
from lmreuse.data.corpus import text_file, wordnet
from lmreuse.models.config import TransformerConfig
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import compute as compute_lib, optim, restore
from lmreuse.train.checkpoint import Checkpointer, abstract_like
from lmreuse.train.trainer import (
    LoopConfig,
    Trainer,
    check_batch,
    prng_impl,
    run_loop,
    validate_loop,
)
from lmreuse.train.writers import MetricWriter

if TYPE_CHECKING:
  from jax.sharding import Mesh

  from lmreuse.data.hf_tokenizer import HFTokenizer


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check that needs no compilation, so bad configs fail in seconds."""
  validate_loop(
      config,
      (
          "total_steps",
          "batch_size",
          "grad_accum_steps",
          "log_every",
          "eval_steps",
          "checkpoint_every",
          "keep_checkpoints",
      ),
  )
  if config.data.corpus != "wordnet":
    text_file.check_path(config.data.corpus)
  objective = objectives.get(config.objective.name)
  if config.model.architecture != objective.architecture:
    raise ValueError(
        f"config.objective.name={config.objective.name!r} trains a {objective.architecture}, "
        f"but config.model.architecture={config.model.architecture!r}"
    )
  objectives.check_flags(config.objective)
  objective.check(config)
  for key, value in objective.model.items():
    if config.model.get(key, False) != value:
      raise ValueError(
          f"config.objective.name={config.objective.name!r} trains a model with "
          f"config.model.{key}={value!r}, but it is {config.model.get(key, False)!r}"
      )
  if config.data.seq_len > config.model.max_len:
    raise ValueError(
        f"config.data.seq_len={config.data.seq_len} exceeds "
        f"config.model.max_len={config.model.max_len}"
    )
  TransformerConfig.from_config(config.model, config.tokenizer.vocab_size).validate()
  optim.validate(config.optimizer)


def continued(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with config.init_from's model and tokenizer when it continues a pretraining
  (domain-adaptive pretraining): the weights go on training as they are, so the architecture
  and vocabulary are init_from's, as a fine-tuning run's are. Unchanged without init_from."""
  init_from = config.get("init_from", "")  # absent from configs saved before it existed
  if not init_from:
    return config
  if init_from.startswith(pretrained_lib.HF_PREFIX):
    raise ValueError(
        f"config.init_from={init_from!r}: continued pretraining starts from an lmreuse "
        "pretraining workdir (import the checkpoint with configs/hf.py first)"
    )
  source, saved = pretrained_lib.saved_config(init_from)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = ml_collections.ConfigDict(saved["model"])
  config.tokenizer = ml_collections.ConfigDict(saved["tokenizer"])
  config.tokenizer.path = workdir_lib.saved_tokenizer(source, saved)
  return config


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  with prng_impl(config):
    return _pretrain(continued(config), workdir)


def _continue_from(init_from: str, trainer: Trainer, state):
  """`state` with init_from's weights, which must fill every parameter of the model."""
  params, report = restore.merge_params(
      trainer.to_host(state.params), restore.load_params(init_from)
  )
  if report["new"] or report["dropped"]:
    raise ValueError(
        f"config.init_from={init_from!r} does not hold this model's parameters: missing "
        f"{report['new'][:5]}, extra {report['dropped'][:5]}"
    )
  return trainer.state_with_params(state, params)


def make_trainer(
    config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh, rules: sharding_lib.Rules
) -> tuple[TransformerConfig, Trainer]:
  """config's model, objective and optimizer as a Trainer on `mesh`, which checks that every
  parameter divides over it; and the model's config."""
  model_cfg = TransformerConfig.from_config(config.model, vocab_size)
  objective = objectives.get(config.objective.name)
  program = objective.program(model_cfg, config.objective, config.data)
  optimizer = optim.make_optimizer(config.optimizer, config.total_steps)
  skip = config.nonfinite == "skip"
  return model_cfg, Trainer(program, optimizer, mesh, rules, skip_nonfinite=skip)


def _dataset(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer | HFTokenizer,
    trainer: Trainer,
    split: str,
    train: bool,
):
  """The objective's batches of `split`: this process's rows of each global batch, from the
  bundled corpus or a local text file (whose validation split may hold fewer documents than a
  batch, so it cycles)."""
  local_corpus = config.data.corpus != "wordnet"
  if local_corpus:
    source = text_file.data_source(config.data.corpus, split)
  else:
    source = wordnet.data_source("documents", split, config.data.tfds_dir or None)
  return pipeline.make_pretrain_dataset(
      config.objective,
      config.data,
      source,
      tokenizer,
      batch_size=config.batch_size,
      seed=config.seed,
      train=train,
      rows=trainer.host_rows(config.batch_size, config.grad_accum_steps if train else 1),
      cycle_eval=local_corpus,
  )


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start_time = time.time()
  validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  check_batch(config, mesh, rules)

  # The tokenizer (a new one is trained in a temporary directory) and the trainer, which checks
  # that every parameter divides over the mesh, before the workdir is written to.
  local_corpus = config.data.corpus != "wordnet"
  tokenizer = tokenizer_lib.from_config(
      config.tokenizer,
      workdir,
      reuse_trained=not workdir_lib.discards_run(workdir, config),
      corpus=functools.partial(text_file.segments, config.data.corpus) if local_corpus else None,
  )
  model_cfg, trainer = make_trainer(config, tokenizer.vocab_size, mesh, rules)
  logging.info("model: %s, %s parameters", model_cfg, f"{trainer.param_count():,}")
  workdir_lib.prepare(workdir, config)
  tokenizer_lib.save_trained(tokenizer, config.tokenizer, workdir)

  train_iter = iter(_dataset(config, tokenizer, trainer, "train", train=True))
  eval_ds = _dataset(config, tokenizer, trainer, "validation", train=False)
  eval_batches = lambda: itertools.islice(iter(eval_ds), config.eval_steps)

  checkpointer = Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS), max_to_keep=config.keep_checkpoints
  )
  state = trainer.init_state(config.seed)
  extra = {}
  if config.get("init_from"):
    state = _continue_from(config.init_from, trainer, state)
    # The continued model's validation metrics before any step: what the continuation changed.
    extra["metrics_before"] = trainer.evaluate(state.params, eval_batches())
  latest, restored = checkpointer.restore_latest(abstract_like(state), train_iter)
  if latest is not None:
    state = restored
  writer = MetricWriter(workdir, resume_step=latest or 0)
  loop = LoopConfig.from_config(config)
  try:
    evaluate = lambda params: trainer.evaluate(params, eval_batches())
    state, eval_metrics = run_loop(trainer, state, train_iter, evaluate, loop, checkpointer, writer)
  finally:
    checkpointer.close()
    writer.close()
  compute = compute_lib.summary(
      trainer, state, lambda: [(next(train_iter), 1.0)], config.grad_accum_steps
  )
  return workdir_lib.write_results(
      workdir,
      config,
      eval_metrics,
      start_time=start_time,
      steps=int(state.step),
      parameters=trainer.param_count(),
      tokenizer=tokenizer.model_path,
      compute=compute,
      **extra,
  )
