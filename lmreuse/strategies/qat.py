"""Quantization-aware fine-tuning (Jacob et al. 2018): the task model's projections compute on
the `qat_weights` grid (int8 or int4, per output channel) with `qat_activations` (int8, or ''
for float) quantized per token, in training and in evaluation; gradients pass straight through
the rounding to float master weights (qwix's QtProvider, lmreuse/compression/quantize.py).

It changes how the model computes, not what trains, so it combines with any strategy: `qat`
alone fine-tunes everything, `qat,lora` trains LoRA factors under quantization. The metrics of
the run are the quantized model's. results.json's `qat` entry gives the bytes of the selected
weights stored at `qat_weights`; configs/compress.py stores them so (and quantizes the embedding
tables, which a gather reads and QAT leaves float) and re-evaluates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from lmreuse.compression import quantize
from lmreuse.strategies import base


class QAT(base.Strategy):
  name = "qat"
  defaults = {"qat_weights": "int8", "qat_activations": "int8"}

  def module(self, module: nn.Module) -> nn.Module:
    """Checks its keys first: the module is built before the parameters `check` sees."""
    quantize.validate(
        self.cfg.qat_weights,
        self.cfg.qat_activations,
        ("config.strategy.qat_weights", "config.strategy.qat_activations"),
    )
    quantize.refuse_generation(
        self.ctx.task_type,
        "config.strategy.name='qat'",
        "fine-tune in float, then quantize the weights (configs/compress.py:int8w or int4w)",
    )
    return quantize.quantized_module(module, self.cfg.qat_weights, self.cfg.qat_activations)

  def report(self, params: Any, to_host: Callable[[Any], Any]) -> dict:
    _, sizes = quantize.quantize_weights(to_host(params), self.cfg.qat_weights)
    return {
        "qat": {
            "weights": self.cfg.qat_weights,
            "activations": self.cfg.qat_activations or "float",
            "model_bytes": sizes["quantized"],
            "float_bytes": sizes["float"],
        }
    }


STRATEGY = QAT
