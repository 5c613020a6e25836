"""What a pretraining objective provides to the trainer, and the metric plumbing it shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmreuse.models.config import TransformerConfig
from lmreuse.train.trainer import MetricPairs, Program


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective trains one architecture; `program` builds its model and loss from configs."""

  name: str
  architecture: str
  program: Callable[
      [TransformerConfig, ml_collections.ConfigDict, ml_collections.ConfigDict], Program
  ]


def as_pairs(metrics: dict[str, jax.Array], prefix: str) -> MetricPairs:
  """Token-weighted means → (sum, count) pairs that add up exactly across batches."""
  tokens = metrics[f"{prefix}_tokens"]
  return {
      f"{prefix}_loss": (metrics[f"{prefix}_loss"] * tokens, tokens),
      f"{prefix}_accuracy": (metrics[f"{prefix}_accuracy"] * tokens, tokens),
  }


def example_pairs(metrics: dict[str, jax.Array], prefix: str, batch_size: int) -> MetricPairs:
  """Per-example means (e.g. NSP) → pairs weighted by the number of examples."""
  n = jnp.asarray(batch_size, jnp.float32)
  return {
      f"{prefix}_loss": (metrics[f"{prefix}_loss"] * n, n),
      f"{prefix}_accuracy": (metrics[f"{prefix}_accuracy"] * n, n),
  }


def init_params_fn(model: nn.Module, example: dict[str, jax.Array]) -> Callable:
  return lambda rng: model.init(init_rngs(rng), example)["params"]


def token_loss_program(
    model: nn.Module,
    example: dict[str, jax.Array],
    *,
    loss: Callable,
    targets: str,
    weights: str,
    prefix: str,
    tokens_per_example: int,
) -> Program:
  """A Program for models that return vocabulary logits scored against batch[targets]."""

  def loss_fn(params, batch, rng, train):
    logits = model.apply(
        {"params": params}, batch, deterministic=not train, rngs=apply_rngs(rng, train)
    )
    total, metrics = loss(logits, batch[targets], batch[weights])
    return total, as_pairs(metrics, prefix)

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
