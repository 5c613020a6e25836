"""Model FLOPs utilisation of lmreuse's pretraining steps, and cuDNN flash attention against XLA's.

Written for the first GPU check (benchmarks/device_check.sh), on one H100 or H200:
- MFU in bf16 (fp32 parameters) of BERT-base MLM + NSP at seq 512 and of GPT-2-small (our
  `gpt,size=base`) causal LM at seq 1024: model FLOPs per token, 6N + 12·L·d·T
  (benchmarks/flops.py; BERT's output projection counted at the 15% of positions it predicts),
  × the tokens per second of the timed steps, over the chip's dense bf16 peak
  (`DATASHEET_PEAKS`);
- `jax.nn.dot_product_attention` with implementation='cudnn' against 'xla', forward + backward
  of a causal bf16 attention at GPT-2-small's shape: the time of each and the largest difference
  of their outputs and gradients.

  python benchmarks/mfu.py                  # the sizes above: wants an accelerator
  python benchmarks/mfu.py --quick          # tiny models at seq 32 in fp32, any machine

A chip not in `DATASHEET_PEAKS` (a CPU) is measured instead: its best FLOPs/s on a jitted matmul
in the step's dtype, and the table says which peak it used. cuDNN runs only on NVIDIA GPUs; on
other machines its row says so.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks.flops import flops_per_token, measure_peak
from configs import pretrain
from experiments import pretrain as pretrain_experiment
from lmreuse.objectives.mlm import max_predictions
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train.trainer import Trainer
from tests.parallel import synthetic

_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: tiny models at seq 32 in fp32, 2 steps.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per model.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Examples per step (all devices).")
_VOCAB = flags.DEFINE_integer("vocab", 32768, "Vocabulary size of both models (--quick: 1024).")

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (FLOP/s), by a substring of
# jax's device_kind; the first match wins (the PCIe H100 before the SXM one).
DATASHEET_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12))
# (preset, size, seq_len) of each timed model; --quick swaps in the tiny size at seq 32.
MODELS = (("bert", "base", 512), ("gpt", "base", 1024))


def peak(dtype: jnp.dtype) -> tuple[float, str]:
  """The chip's dense peak in `dtype` and where it comes from."""
  kind = jax.devices()[0].device_kind
  for name, flops in DATASHEET_PEAKS:
    if name in kind and dtype == jnp.bfloat16:
      return flops * jax.device_count(), f"datasheet, {kind} x{jax.device_count()}"
  return measure_peak(1024, 5, dtype), f"measured: a {np.dtype(dtype).name} 1024^3 matmul"


def build(preset: str, size: str, seq_len: int, batch_size: int, dtype: str, vocab: int):
  """The pretraining config and trainer of `preset` on every device (data parallel), its model,
  state and batch."""
  config = pretrain.get_config(f"{preset},size={size}")
  config.data.seq_len = config.model.max_len = seq_len
  config.model.dtype = dtype
  config.mesh.data = -1
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  model_cfg, trainer = pretrain_experiment.make_trainer(config, vocab, mesh, rules)
  batch = synthetic.batch(
      config.objective.name, batch_size=batch_size, seq_len=seq_len, vocab=vocab
  )
  return config, model_cfg, trainer, trainer.init_state(0), trainer.train_batch(batch, 1)


def time_steps(trainer: Trainer, state, batch, steps: int) -> tuple[float, float]:
  """(compile + first step seconds, seconds per step of the next `steps`)."""
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batch, 0)
  jax.block_until_ready(metrics["train/loss"])
  first = time.perf_counter() - start
  start = time.perf_counter()
  for step in range(1, steps + 1):
    state, metrics = trainer.train_step(state, batch, step)
  jax.block_until_ready(metrics["train/loss"])
  return first, (time.perf_counter() - start) / steps


def mfu_rows(quick: bool, steps: int, batch_size: int) -> list[str]:
  dtype = "float32" if quick else "bfloat16"
  chip_peak, source = peak(jnp.dtype(dtype))
  rows = []
  for preset, size, seq_len in MODELS:
    size, seq_len = ("tiny", 32) if quick else (size, seq_len)
    vocab = 1024 if quick else _VOCAB.value
    config, cfg, trainer, state, batch = build(preset, size, seq_len, batch_size, dtype, vocab)
    first, per_step = time_steps(trainer, state, batch, steps)
    tokens_per_sec = batch_size * seq_len / per_step
    # BERT's MLM head runs at the selected positions only (objectives/mlm.py gathers them).
    mlm = preset == "bert"
    predicted = max_predictions(seq_len, config.objective.mask_prob) / seq_len if mlm else 1.0
    fpt, n = flops_per_token(cfg, seq_len, head_transform=mlm, predicted=predicted)
    achieved = tokens_per_sec * fpt
    rows.append(
        f"| {preset},size={size} | {seq_len} | {batch_size} | {dtype} | {n / 1e6:.1f} M "
        f"| {first:.1f} | {per_step * 1e3:.1f} | {tokens_per_sec:,.0f} "
        f"| {achieved / 1e12:.3f} | {chip_peak / 1e12:.3f} ({source}) "
        f"| {achieved / chip_peak:.1%} |"
    )
  return rows


def attention_rows(quick: bool) -> list[str]:
  """Causal self-attention forward + backward, cuDNN against XLA, at GPT-2-small's shape."""
  batch, length, heads, head_dim = (2, 32, 2, 16) if quick else (8, 1024, 12, 64)
  dtype = jnp.float32 if quick else jnp.bfloat16
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), dtype) for key in keys)

  def step(implementation):
    def loss(q, k, v):
      out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
      return jnp.sum(out.astype(jnp.float32) ** 2), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

  timed = {}  # implementation -> (seconds per call, (output, *gradients)) or why not
  for implementation in ("xla", "cudnn"):
    try:
      fn = step(implementation)
      jax.block_until_ready(fn(q, k, v))
    except Exception as e:  # pylint: disable=broad-exception-caught
      timed[implementation] = f"not available here ({type(e).__name__})"
      continue
    start, reps = time.perf_counter(), 3 if quick else 20
    for _ in range(reps):
      (_, out), grads = fn(q, k, v)
    jax.block_until_ready(grads)
    timed[implementation] = ((time.perf_counter() - start) / reps, (out, *grads))
  xla_seconds, xla_values = timed["xla"]
  rows = [f"| xla | {xla_seconds * 1e3:.2f} | 1.00 | — |"]
  if isinstance(timed["cudnn"], str):
    return [*rows, f"| cudnn | {timed['cudnn']} | | |"]
  seconds, values = timed["cudnn"]
  difference = max(
      float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
      for a, b in zip(values, xla_values)
  )
  return [
      *rows,
      f"| cudnn | {seconds * 1e3:.2f} | {seconds / xla_seconds:.2f} | {difference:.2e} |",
  ]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  quick, steps = _QUICK.value, 2 if _QUICK.value else _STEPS.value
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(
      "\n| model | seq | batch | dtype | N | compile + step 1 (s) | ms/step | tokens/s "
      "| achieved TFLOP/s | peak TFLOP/s | MFU |"
  )
  print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|")
  for row in mfu_rows(quick, steps, _BATCH.value):
    print(row)
  print("\n| attention | ms (fwd + bwd) | vs xla | max difference |")
  print("|---|---:|---:|---:|")
  for row in attention_rows(quick):
    print(row)


if __name__ == "__main__":
  app.run(main)
