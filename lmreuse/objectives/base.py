"""What a pretraining objective provides: its batches (to the input pipeline), its model and loss
(to the trainer), and the Program plumbing the objectives share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.train.trainer import Program

if TYPE_CHECKING:
  import grain

Example = dict[str, np.ndarray]


class Documents(Protocol):
  """One split's tokenized documents in their global order, and the ways to batch them.

  lmreuse/data/pipeline.py implements it: an objective says how documents become examples and
  the pipeline owns reading, shuffling, global batching and each process's rows. Each way
  returns this process's rows of every global batch, as a checkpointable grain dataset.
  """

  tokenizer: Any

  def __len__(self) -> int:
    """The number of documents in the split."""

  def segments(self, index: int) -> list[list[int]]:
    """Document `index` as token ids, one list per segment (sentence)."""

  def tokens(self, index: int) -> list[int]:
    """Document `index` as one list of token ids."""

  def examples(self, make: Callable[[int, np.random.Generator], Example]) -> grain.IterDataset:
    """One example per document, `make(doc_index, rng)`; a process builds only its rows'."""

  def example_lists(
      self, make: Callable[[int, np.random.Generator], list[Example]]
  ) -> grain.IterDataset:
    """Any number of examples per document, `make(doc_index, rng)`, in stream order."""

  def packed(
      self,
      chunks: Callable[[int], list[np.ndarray]],
      *,
      length: int,
      pad_id: int,
      finish: Callable[[Example], Example],
  ) -> grain.IterDataset:
    """Token chunks per document, `chunks(doc_index)`, first-fit packed into rows of `length`.

    `finish` maps each batch of int32 `tokens`, `segment_ids` (1, 2, ... per chunk, 0 padding)
    and `positions` (from 0 in each chunk) to the objective's batch.
    """


DatasetFn = Callable[
    [Documents, ml_collections.ConfigDict, ml_collections.ConfigDict], "grain.IterDataset"
]


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective trains one architecture: `program` builds its model and loss and `dataset` its
  batches, both from (config.objective, config.data).

  `flags` are the boolean config.objective options only this objective can turn on (mlm: nsp);
  `lmreuse.objectives.check_flags` refuses them set for any other objective. `model` holds the
  config.model values the objective's model needs (prefix_lm: a prefix-LM decoder), checked
  with the architecture before anything is built, as `check(config)` checks the objective's own
  options against the whole pretraining config (electra: its generator's size).
  """

  name: str
  architecture: str
  program: Callable[
      [TransformerConfig, ml_collections.ConfigDict, ml_collections.ConfigDict], Program
  ]
  dataset: DatasetFn
  flags: tuple[str, ...] = ()
  model: dict[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[ml_collections.ConfigDict], None] = lambda config: None


def init_params_fn(model: nn.Module, example: dict[str, jax.Array]) -> Callable:
  return lambda rng: model.init(init_rngs(rng), example)["params"]


def token_loss_program(
    model: nn.Module,
    example: dict[str, jax.Array],
    *,
    loss: Callable,
    targets: str,
    weights: str,
    tokens_per_example: int,
) -> Program:
  """A Program for models that return vocabulary logits scored against batch[targets]."""

  def loss_fn(params, batch, rng, train):
    logits = model.apply(
        {"params": params}, batch, deterministic=not train, rngs=apply_rngs(rng, train)
    )
    return loss(logits, batch[targets], batch[weights])

  return Program(
      init_params=init_params_fn(model, example),
      loss_fn=loss_fn,
      tokens_per_example=tokens_per_example,
  )


def init_rngs(rng: jax.Array) -> dict[str, jax.Array]:
  params_rng, dropout_rng = jax.random.split(rng)
  return {"params": params_rng, "dropout": dropout_rng}


def apply_rngs(rng: jax.Array, train: bool) -> dict[str, Any]:
  return {"dropout": rng} if train else {}
