"""Quantization with qwix: weights stored at low precision and activations quantized on the fly
after training (configs/compress.py), and the same quantized computation trained through (qat).

Weights: every parameter of two or more dimensions (projection kernels, embedding tables, LoRA
factors) is quantized with `qwix.quantize`, symmetric absmax with one scale per output channel (per
row of an embedding table). The model then runs on the dequantized values, which are exactly what an
int8/int4 kernel would multiply; `model_bytes` counts the quantized values and their scales. Vectors
(biases, norm scales) stay in float32, as in every PTQ recipe.

Activations (`activations=int8`, `quantized_module`): qwix's QtProvider intercepts the model's
`dot_general`s (its projections; attention's einsums are left in float) and quantizes their
activation operand dynamically, per token, so no calibration set is needed. QtProvider quantizes
nothing unless it also quantizes the weight operand, so it does, at the weights' own type and
channels: their values are already on that grid, and stay there.

Weight-only forms hold the dequantized values, so their matmuls run in float (the scores of
int8/int4 weights, not their speed). With int8 activations, qwix multiplies the int8 values of both
operands with an integer accumulator (XLA's own int8 dot, on CPU too), re-quantizing the held
weights each call; benchmarks/quantized_inference.py measures both against float.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import qwix
from flax import traverse_util

from lmreuse.models import layers

QTYPES = {"int8": (jnp.int8, 8), "int4": (jnp.int4, 4)}
ACTIVATIONS = ("", "int8")


def validate(
    weights: str,
    activations: str,
    keys: tuple[str, str] = ("config.quantize.weights", "config.quantize.activations"),
) -> None:
  """`keys` name the two config entries an error points at (PTQ's, QAT's or QLoRA's)."""
  if weights not in QTYPES:
    raise ValueError(f"{keys[0]}={weights!r} is not one of {sorted(QTYPES)}")
  if activations not in ACTIVATIONS:
    raise ValueError(f"{keys[1]}={activations!r} is not one of {ACTIVATIONS} ('' = float)")


def channel_axes(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The axes that get their own scale: a table's rows, a kernel's outputs."""
  if path.endswith("embedding") or not path.endswith(("kernel", "lora_a", "lora_b")):
    return tuple(range(len(shape) - 1))
  num_in = layers.kernel_input_axes(path, shape)
  return tuple(range(num_in, len(shape)))


def quantize_weights(params: Any, weights: str) -> tuple[dict, dict[str, int]]:
  """(params with every ≥2-D leaf replaced by its dequantized low-precision value, bytes)."""
  qtype, bits = QTYPES[weights]
  flat = traverse_util.flatten_dict(params, sep="/")
  out, stored, reference = {}, 0, 0
  for path, value in flat.items():
    value = jnp.asarray(value)
    reference += value.size * value.dtype.itemsize
    if value.ndim < 2:
      out[path], stored = value, stored + value.size * value.dtype.itemsize
      continue
    if not jnp.issubdtype(value.dtype, jnp.floating):
      raise ValueError(f"config.quantize: {path} is {value.dtype}, not a float parameter")
    quantized = qwix.quantize(value, qtype, channelwise_axes=channel_axes(path, value.shape))
    out[path] = qwix.dequantize(quantized).astype(value.dtype)
    stored += (
        math.ceil(value.size * bits / 8) + quantized.scale.size * quantized.scale.dtype.itemsize
    )
  return traverse_util.unflatten_dict(out, sep="/"), {"quantized": stored, "float": reference}


def quantized_module(module: nn.Module, weights: str, activations: str) -> nn.Module:
  """`module` whose projections (`dot_general`s; attention's einsums stay float) compute on the
  `weights` grid, per output channel, and with `activations` ('' = float) quantized per token.

  qwix's QtProvider quantizes in the forward pass and differentiates straight through the
  rounding (its custom VJP), so the same module serves quantization-aware training (the qat
  strategy, on float master weights) and PTQ's int8 activations. Only `__call__` is intercepted:
  seq2seq generation builds its own decoder (lmreuse/models/decoding.py), so `refuse_generation`
  turns it away."""
  rule = qwix.QtRule(
      module_path=".*",
      op_names=("dot_general",),
      weight_qtype=QTYPES[weights][0],
      act_qtype=QTYPES[activations][0] if activations else None,
  )
  return qwix.quantize_model(module, qwix.QtProvider([rule]))


def refuse_generation(task_type: str, key: str, remedy: str) -> None:
  """`quantized_module` reaches the task model's forward pass, not seq2seq's generation."""
  if task_type == "seq2seq":
    raise ValueError(
        f"{key}: quantized computation covers the task model's forward pass, but seq2seq "
        f"generation decodes with its own float model; {remedy}"
    )
