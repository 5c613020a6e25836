"""XLA compile time of the BERT pretraining train step as the model deepens: base and large,
next to the same widths at a few layers, to see whether compile time grows with depth enough
to hurt sweeps (the threshold that would justify `nn.scan` over layers: more than a minute for
bert-large on 2 cores).

Layers are a Python loop (models/transformer.py), so XLA sees every layer unrolled and its
compile time grows with depth; `nn.scan` would compile one layer's body. Each step is lowered
and compiled once on one device with the compilation cache off and without the test suite's
compile-time flags (a user's run); the state is abstract, so nothing of the model's size is
allocated. The ratio column divides by the first row's seconds, measured in the same process.

  python benchmarks/compile_depth.py                         # base and large, as published
  python benchmarks/compile_depth.py --sizes=tiny --layers=1   # smoke run
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from absl import app, flags

from configs import pretrain
from experiments import pretrain as experiment
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from tests.parallel import synthetic

_SIZES = flags.DEFINE_list("sizes", ["base", "large"], "BERT sizes (configs/common.py) to compile.")
_LAYERS = flags.DEFINE_list(
    "layers", ["2", "full"], "Depths per size: layer counts, and `full` for the size's own."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch of the compiled step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Tokens per row.")
_VOCAB = flags.DEFINE_integer("vocab", 30522, "Vocabulary size (BERT's WordPiece by default).")


def compile_seconds(size: str, layers: str) -> dict[str, Any]:
  """Lowers and compiles the bert `size` pretraining step at `layers` layers; its seconds."""
  config = pretrain.get_config(f"bert,size={size}")
  config.data.seq_len = config.model.max_len = _SEQ_LEN.value
  if layers != "full":
    config.model.num_layers = int(layers)
  config.batch_size = _BATCH_SIZE.value
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  _, trainer = experiment.make_trainer(config, _VOCAB.value, mesh, rules)
  batch = synthetic.batch(
      "mlm", batch_size=_BATCH_SIZE.value, seq_len=_SEQ_LEN.value, vocab=_VOCAB.value
  )
  batch = trainer.train_batch(batch, 1)
  start = time.perf_counter()
  lowered = trainer.lower_train_step(trainer.abstract_state, batch)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {
      "model": f"bert-{size}",
      "layers": config.model.num_layers,
      "parameters": trainer.param_count(),
      "lower": lowered_at - start,
      "compile": done - lowered_at,
  }


def main(argv: list[str]) -> None:
  del argv
  jax.config.update("jax_enable_compilation_cache", False)
  compile_seconds("tiny", "full")  # warm-up: the process's one-time costs stay out of the rows
  rows = [compile_seconds(size, layers) for size in _SIZES.value for layers in _LAYERS.value]
  base = rows[0]["lower"] + rows[0]["compile"]
  print(
      f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPUs; batch {_BATCH_SIZE.value} x {_SEQ_LEN.value}, "
      f"vocab {_VOCAB.value}\n"
  )
  print("| model | layers | parameters | lower (s) | compile (s) | total (s) | ratio |")
  print("|:---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    total = r["lower"] + r["compile"]
    print(
        f"| {r['model']} | {r['layers']} | {r['parameters']:,} | {r['lower']:.1f} | "
        f"{r['compile']:.1f} | {total:.1f} | {total / base:.2f} |"
    )


if __name__ == "__main__":
  app.run(main)
