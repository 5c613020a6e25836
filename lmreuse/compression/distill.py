"""Knowledge distillation (Hinton et al. 2015): a student fine-tuned on a mix of its labels and a
fine-tuned teacher's outputs.

The loss is (1 − alpha) · label loss + alpha · T² · KL(teacher_T ‖ student_T), where x_T is the
softmax of logits / T (the T² keeps the soft term's gradients on the scale of the label loss as T
grows), over what the task type names in `soft_targets`: a classifier's logits, every tagged
token's, every target token's of seq2seq, a span's start and end; regression matches the
teacher's scores by squared error. Padding weighs 0, as in the label loss.

`hidden_weight` (β) adds TinyBERT's hidden-state loss (Jiao et al. 2020) on the last layer:
β · the mean squared error between the student's final hidden states of the input, mapped to the
teacher's width by a learned projection, and the teacher's, over the real tokens (the encoder
side of an encoder-decoder, the whole row of a decoder). The projection, `PROJECTION`/kernel, is
a student parameter outside the backbone, so every strategy trains it as it trains a head; only
this loss reads it.

The teacher's outputs are computed in the same jitted step as the student's, from the same
batch, with its parameters passed in as the step's constants (lmreuse/train/trainer.py). They
are not cached once because training features are not fixed per example: augmentation draws
new ones every epoch, and a cache would need an index into the shuffled, sharded stream. The
teacher runs forward only, without gradients, and its FLOPs count in the run's compute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmreuse.tasks.base import TaskType
from lmreuse.train import losses
from lmreuse.train.losses import MetricPairs

PROJECTION = "distill_projection"


def validate(alpha: float, temperature: float, hidden_weight: float) -> None:
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"config.distill.alpha={alpha} must be in [0, 1]")
  if temperature <= 0:
    raise ValueError(f"config.distill.temperature={temperature} must be positive")
  if hidden_weight < 0:
    raise ValueError(f"config.distill.hidden_weight={hidden_weight} must be >= 0")


def _is_backbone_call(module: nn.Module, method_name: str) -> bool:
  return module.name == "backbone" and method_name == "__call__"


def apply_with_hidden(
    module: nn.Module, params: Any, batch: dict[str, jax.Array], **kwargs: Any
) -> tuple[Any, jax.Array]:
  """A task model's outputs and its backbone's final hidden states of the input [B, L, D],
  captured at the backbone's return: an encoder returns them, a decoder and an encoder-decoder
  return (logits, hidden states of the row / of the encoder)."""
  outputs, state = module.apply(
      {"params": params},
      batch,
      capture_intermediates=_is_backbone_call,
      mutable=["intermediates"],
      **kwargs,
  )
  (returned,) = state["intermediates"]["backbone"]["__call__"]
  return outputs, returned[1] if isinstance(returned, tuple) else returned


def hidden_loss(
    student_BxLxS: jax.Array,
    teacher_BxLxT: jax.Array,
    projection_SxT: jax.Array,
    weights_BxL: jax.Array,
) -> jax.Array:
  """Mean over the weighted tokens of mean_d (student · projection − teacher)², in fp32."""
  mapped_BxLxT = jnp.einsum(
      "bls,st->blt", student_BxLxS.astype(jnp.float32), projection_SxT.astype(jnp.float32)
  )
  per_token_BxL = jnp.mean(jnp.square(mapped_BxLxT - teacher_BxLxT.astype(jnp.float32)), -1)
  return losses.weighted_loss(per_token_BxL, weights_BxL.astype(jnp.float32))[0]


def soft_loss(
    task: TaskType, student: Any, teacher: Any, batch: dict[str, jax.Array], temperature: float
) -> jax.Array:
  """The mean over `task.soft_targets` of each one's weighted mean divergence."""
  terms = []
  pairs = zip(task.soft_targets(student, batch), task.soft_targets(teacher, batch))
  for (student_x, weights), (teacher_x, _) in pairs:
    student_x, teacher_x = student_x.astype(jnp.float32), teacher_x.astype(jnp.float32)
    if task.soft_target_kind == "values":
      per_row = jnp.mean(jnp.square(student_x - teacher_x), axis=-1)
    else:
      log_student = jax.nn.log_softmax(student_x / temperature, axis=-1)
      log_teacher = jax.nn.log_softmax(teacher_x / temperature, axis=-1)
      p_teacher = jnp.exp(log_teacher)
      # 0 · log 0 = 0 where the teacher puts no mass (masked span positions).
      kl = jnp.where(p_teacher > 0, p_teacher * (log_teacher - log_student), 0.0)
      per_row = temperature**2 * jnp.sum(kl, axis=-1)
    terms.append(losses.weighted_loss(per_row, weights.astype(jnp.float32))[0])
  return sum(terms) / len(terms)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A fine-tuned model whose outputs (and, with hidden_weight > 0, final hidden states) a
  student learns from."""

  module: nn.Module
  params: Any  # on the student's mesh: the train step's constants
  alpha: float
  temperature: float
  hidden_weight: float = 0.0

  @property
  def width(self) -> int:
    return self.module.cfg.d_model

  def mix(
      self,
      task: TaskType,
      label_loss: jax.Array,
      pairs: MetricPairs,
      student: Any,
      params: Any,
      batch: dict[str, jax.Array],
      student_hidden: tuple[jax.Array, jax.Array] | None = None,
  ) -> tuple[jax.Array, MetricPairs]:
    """The distillation loss and the label loss's pairs, plus `label_loss` and `distill_loss`
    (and `distill_hidden_loss`); `params` are the teacher's, as the train step receives them,
    and `student_hidden` the student's (hidden states, projection) when hidden_weight > 0."""
    if student_hidden is None:
      teacher = self.module.apply({"params": params}, batch, deterministic=True)
    else:
      teacher, teacher_hidden = apply_with_hidden(self.module, params, batch, deterministic=True)
    teacher = jax.lax.stop_gradient(teacher)
    soft = soft_loss(task, student, teacher, batch, self.temperature)
    one = jnp.ones((), jnp.float32)
    total = (1 - self.alpha) * label_loss + self.alpha * soft
    pairs = {**pairs, "label_loss": (label_loss, one), "distill_loss": (soft, one)}
    if student_hidden is not None:
      states, projection = student_hidden
      real = batch["segment_ids"] > 0
      hidden = hidden_loss(states, jax.lax.stop_gradient(teacher_hidden), projection, real)
      total = total + self.hidden_weight * hidden
      pairs["distill_hidden_loss"] = (hidden, one)
    return total, pairs
