"""Trainers of the tiny presets on a named mesh, for the checks that run on 8 fake CPU devices.

Pretraining steps train on synthetic batches (no tokenizer or corpus); fine-tuning steps are
built by `experiments.finetune.build`, as a run builds them, on a bundled WordNet task.
"""

from __future__ import annotations

import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import finetune as finetune_config, pretrain
from experiments import finetune, pretrain as pretrain_experiment
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train.trainer import Trainer, TrainState
from tests.parallel import synthetic

# Every mesh a user is likely to pick on 8 devices: all three axes at once, FSDP with and
# without data parallelism, tensor parallelism beside data parallelism, pure data parallelism.
MESHES = {
    "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
    "data4_fsdp2": dict(data=4, fsdp=2),
    "fsdp8": dict(fsdp=8),
    "data4_tensor2": dict(data=4, tensor=2),
    "data8": dict(data=8),
}
# A bundled task each architecture fine-tunes on: classification, and seq2seq for T5.
FINETUNE_TASKS = {
    "bert": "wordnet_supersense",
    "gpt": "wordnet_supersense",
    "t5": "wordnet_definition",
}
BATCH_SIZE = 16  # divides over every mesh's batch shards, micro-batches of 8 included
SEQ_LEN = 32


def mesh_config(mesh_axes: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**dict(data=1, fsdp=1, tensor=1), **mesh_axes})


Setup = tuple[Trainer, TrainState, dict[str, jax.Array]]


def pretrain_setup(
    preset: str,
    mesh_axes: dict,
    devices: list | None = None,
    *,
    num_layers: int = 2,
    accum_steps: int = 1,
    optimizer: dict | None = None,
    initial: TrainState | None = None,
    overrides: dict | None = None,
) -> Setup:
  """The pretraining trainer of `preset` (tiny) on the mesh, its state and a device batch.

  `optimizer` overrides keys of `config.optimizer`, `overrides` dotted keys of the config.
  `initial` (host arrays) is placed on the mesh instead of initialising the state there, which
  would compile an initialisation per mesh.
  """
  config = pretrain.get_config(f"{preset},size=tiny")
  config.data.seq_len = SEQ_LEN
  config.model.num_layers = num_layers
  config.optimizer.update(optimizer or {})
  config.update_from_flattened_dict(overrides or {})
  mesh = mesh_lib.make_mesh(mesh_config(mesh_axes), devices)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  _, trainer = pretrain_experiment.make_trainer(config, synthetic.VOCAB, mesh, rules)
  if initial is None:
    state = trainer.init_state(seed=0)
  else:
    state = jax.device_put(initial, trainer.state_shardings)
  batch = synthetic.batch(config.objective.name, batch_size=BATCH_SIZE, seq_len=SEQ_LEN)
  return trainer, state, trainer.train_batch(batch, accum_steps)


def finetune_setup(
    preset: str, mesh_axes: dict, strategy: str, tokenizer_path: str, num_layers: int = 2
) -> Setup:
  """The fine-tuning trainer of `preset` (tiny, from scratch) under `strategy` on the mesh."""
  config = finetune_config.get_config(f"{preset},size=tiny")
  config.model.num_layers = num_layers
  config.tokenizer.path = tokenizer_path
  config.tokenizer.vocab_size = 1024
  config.tokenizer.num_sentinels = 32
  config.model.max_len = 2 * SEQ_LEN
  config.max_len = SEQ_LEN
  config.batch_size = BATCH_SIZE
  config.task.name = FINETUNE_TASKS[preset]
  config.task.max_train_examples = 2 * BATCH_SIZE
  config.task.max_eval_examples = 8
  config.task.max_target_len = SEQ_LEN // 2
  config.strategy.name = strategy
  config.mesh.update(mesh_config(mesh_axes))
  with tempfile.TemporaryDirectory() as workdir:
    setup = finetune.build(config, workdir)
  batch = setup.first_train_batch(BATCH_SIZE)
  return setup.trainer, setup.state, setup.trainer.train_batch(batch, 1)


def flat(tree: Any, prefix: str) -> dict[str, np.ndarray]:
  """Host copies of a tree's leaves keyed by `prefix` + their path."""
  return {
      prefix + jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }
