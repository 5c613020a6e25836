"""What dropout masks cost in a full fine-tuning step: lmreuse's masks (`models/dropout.py`, four
16-bit lanes per threefry evaluation) next to nn.Dropout's (one evaluation per element, what
lmreuse drew before), next to unsafe_rbg keys (config.prng_impl) and next to no dropout.

Each row builds the same `full` fine-tuning run as benchmarks/strategies.py (its flags: --size,
--batch_size, --seq_len, --rounds, --steps, --warmup, --tokenizer, --quick) and steps on the same
batch. The nn.Dropout row is traced with `dropout.keep_mask` swapped for `jax.random.bernoulli`,
nn.Dropout's mask. Rows are stepped in turn, the order reversed every round, so a noisy machine
slows all alike; the table gives the median step and its ratio to the nn.Dropout row.

  python benchmarks/dropout.py --size=tiny --batch_size=32 --seq_len=48   # the quickstart's step
  python benchmarks/dropout.py --size=mini                                # BERT-mini, 16 x 128
  python benchmarks/dropout.py --quick                                    # smoke run, 2 rows
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from absl import app

from benchmarks import strategies as sb
from lmreuse.models import dropout
from lmreuse.train import trainer as trainer_lib

# (row, config.prng_impl, config.model.dropout_rate, nn.Dropout's masks)
ROWS = (
    ("nn.Dropout masks", "threefry2x32", 0.1, True),
    ("lmreuse masks", "threefry2x32", 0.1, False),
    ("unsafe_rbg keys", "unsafe_rbg", 0.1, False),
    ("no dropout", "threefry2x32", 0.0, False),
)


def runner(row: tuple, size: str, tokenizer: str, workdir: str) -> sb.Runner:
  """The row's runner, its step compiled (inside the row's key implementation and masks)."""
  name, impl, rate, flax_masks = row
  # pylint: disable=protected-access
  config = sb.make_config("full", size, sb._BATCH.value, sb._SEQ.value, tokenizer)
  config.update(dict(prng_impl=impl, model=dict(dropout_rate=rate)))
  with trainer_lib.prng_impl(config):
    row, _, _ = sb.build_runner(name, config, os.path.join(workdir, name))
    traced = []

    def bernoulli(key, keep_prob, shape):
      traced.append(shape)
      return jax.random.bernoulli(key, keep_prob, shape)

    with mock.patch.object(dropout, "keep_mask", bernoulli if flax_masks else dropout.keep_mask):
      row.step()  # traces and compiles
  if flax_masks and not traced:
    raise RuntimeError("the nn.Dropout row traced no mask: Dropout no longer calls keep_mask")
  return row


def main(argv: list[str]) -> None:
  size, rounds, steps, warmup = sb.run_settings(argv)
  print(sb.versions(), flush=True)
  # pylint: disable=protected-access
  tokenizer = sb.make_config("full", size, 1, 1, sb._TOKENIZER.value).tokenizer.path  # once
  with tempfile.TemporaryDirectory() as workdir:
    # --quick: the two kinds of threefry masks only (each row compiles its own step).
    rows = [runner(row, size, tokenizer, workdir) for row in ROWS[: 2 if sb._QUICK.value else None]]
  for row in rows:
    for _ in range(warmup):
      row.step()
  sb.time_in_turn(rows, rounds, steps)
  print(
      f"\nfull fine-tuning, bert-{size}, batch {sb._BATCH.value} x seq {sb._SEQ.value}, "
      f"{rounds} rounds x {steps} steps in turn; median step\n"
  )
  print("| masks | step ms | × nn.Dropout masks |\n|---|---:|---:|")
  base = statistics.median(rows[0].seconds)
  for row in rows:
    ms = statistics.median(row.seconds)
    print(f"| {row.name} | {ms * 1e3:.2f} | {ms / base:.3f} |")


if __name__ == "__main__":
  app.run(main)
