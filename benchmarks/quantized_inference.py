"""Inference time per batch and storage of a quantized model against its float self.

One fine-tuning model (built by `experiments.finetune`, as benchmarks/strategies.py builds
its runs, with its flags) is evaluated on one batch in four forms, in turn in one process: float
weights; int8 and int4 weights (qwix quantize → dequantize, lmreuse/compression/quantize.py);
int8 weights and activations (qwix's QtProvider around the projections). Each is a ratio
against float from the same run. Storage is `model_bytes` (values + scales); memory is XLA's
account of the compiled forward step.

On CPU, qwix emulates low precision in float32: the weights are dequantized before the matmul
and activation quantization adds work, so no speedup is expected here; a TPU or GPU runs int8
matmuls natively. The script measures what this backend does; it does not predict that.

  python benchmarks/quantized_inference.py            # BERT-mini, 3 rounds x 5 batches each
  python benchmarks/quantized_inference.py --quick    # smoke run: tiny model, 1 round x 2 batches
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from absl import app, flags

from benchmarks import strategies as strategies_benchmark
from experiments import finetune
from lmreuse.compression import quantize
from lmreuse.train import compute, trainer as trainer_lib

FLAGS = flags.FLAGS
FORMS = {"float": ("", ""), "int8w": ("int8", ""), "int4w": ("int4", ""), "int8": ("int8", "int8")}


@dataclasses.dataclass
class Form:
  name: str
  forward: Callable
  params: object
  model_bytes: int
  memory_bytes: int = 0
  seconds: list[float] = dataclasses.field(default_factory=list)

  def run(self, batch) -> float:
    start = time.perf_counter()
    jax.block_until_ready(self.forward(self.params, batch))
    return time.perf_counter() - start


def build_forms(setup: finetune.Setup, batch) -> list[Form]:
  float_params = setup.trainer.to_host(setup.state.params)
  forms = []
  for name, (weights, activations) in FORMS.items():
    params, sizes = (
        (float_params, None) if not weights else quantize.quantize_weights(float_params, weights)
    )
    module = (
        quantize.quantized_module(setup.module, weights, activations)
        if activations
        else setup.module
    )
    forward = jax.jit(lambda p, b, m=module: m.apply({"params": p}, b, deterministic=True))
    float_bytes = sum(x.nbytes for x in jax.tree.leaves(float_params))
    form = Form(name, forward, params, sizes["quantized"] if sizes else float_bytes)
    compiled = forward.lower(params, batch).compile()
    form.memory_bytes = compute.memory_bytes(compiled)
    forms.append(form)
  return forms


def main(argv: list[str]) -> None:
  size, rounds, steps, warmup = strategies_benchmark.run_settings(argv)
  start_time = time.perf_counter()
  print(strategies_benchmark.versions(), flush=True)
  config = strategies_benchmark.make_config(
      "full", size, FLAGS.batch_size, FLAGS.seq_len, FLAGS.tokenizer
  )
  with tempfile.TemporaryDirectory() as workdir:
    setup = finetune.build(config, workdir)
  host_batch = setup.first_train_batch(FLAGS.batch_size)
  batch = setup.trainer.device_batch(trainer_lib.split_microbatches(host_batch, 1), 1)
  batch = jax.tree.map(lambda x: x[0], batch)  # one micro-batch: [batch, ...]
  forms = build_forms(setup, batch)
  for form in forms:
    for _ in range(warmup + 1):  # the first call also compiles
      form.run(batch)
  for r in range(rounds):  # in turn, alternating the order: noise hits every form alike
    for _ in range(steps):
      for form in forms[:: 1 if r % 2 == 0 else -1]:
        form.seconds.append(form.run(batch))

  base = forms[0]
  base_ms = statistics.median(base.seconds) * 1e3
  print(f"\n{rounds} rounds x {steps} batches, forms in turn; median forward time\n")
  print("| form | forward ms | × float | model MB | × float | XLA memory MB | × float |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for form in forms:
    ms = statistics.median(form.seconds) * 1e3
    print(
        f"| {form.name} | {ms:.1f} | {ms / base_ms:.2f} | {form.model_bytes / 2**20:.2f} | "
        f"{form.model_bytes / base.model_bytes:.2f} | {form.memory_bytes / 2**20:.1f} | "
        f"{form.memory_bytes / base.memory_bytes:.2f} |"
    )
  print(
      f"\nmodel: bert-{size}, {setup.trainer.param_count():,} parameters, seq len "
      f"{FLAGS.seq_len}, batch {FLAGS.batch_size}; backend {jax.default_backend()}"
  )
  print(f"\nwall time: {time.perf_counter() - start_time:.1f} s")


if __name__ == "__main__":
  app.run(main)
