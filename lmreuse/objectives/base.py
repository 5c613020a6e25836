"""What a pretraining objective provides to the trainer, and the metric plumbing it shares."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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
  program: Callable[[TransformerConfig, ml_collections.ConfigDict, ml_collections.ConfigDict],
                    Program]


def as_pairs(metrics: dict[str, jax.Array], prefix: str) -> MetricPairs:
  """Token-weighted means → (sum, count) pairs that add up exactly across batches."""
  tokens = metrics[f"{prefix}_tokens"]
  return {f"{prefix}_loss": (metrics[f"{prefix}_loss"] * tokens, tokens),
          f"{prefix}_accuracy": (metrics[f"{prefix}_accuracy"] * tokens, tokens)}


def example_pairs(metrics: dict[str, jax.Array], prefix: str, batch_size: int) -> MetricPairs:
  """Per-example means (e.g. NSP) → pairs weighted by the number of examples."""
  n = jnp.asarray(batch_size, jnp.float32)
  return {f"{prefix}_loss": (metrics[f"{prefix}_loss"] * n, n),
          f"{prefix}_accuracy": (metrics[f"{prefix}_accuracy"] * n, n)}


def init_rngs(rng: jax.Array) -> dict[str, jax.Array]:
  params_rng, dropout_rng = jax.random.split(rng)
  return {"params": params_rng, "dropout": dropout_rng}


def apply_rngs(rng: jax.Array, train: bool) -> dict[str, Any]:
  return {"dropout": rng} if train else {}
