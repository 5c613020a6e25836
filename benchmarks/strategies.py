"""Train-step time and compiled memory of each fine-tuning strategy on one model and batch.

Parameter-efficient strategies promise cheaper steps: frozen weights need no weight gradients
and no optimizer state. How much of that survives depends on the model and the machine (the
backward pass through the activations remains for every strategy whose trainable parameters
sit below the top layer), so we measure it: every strategy is built by `experiments.finetune`
on the same config, model size and batch and stepped in turn in one process (rounds alternate
the order), so a noisy machine slows all alike; each is reported as a ratio against `full` from
the same run.

Memory is XLA's own account of the compiled step: arguments + outputs - donated (aliased)
buffers + temporaries, i.e. what XLA allocates for one step, not a measured process peak.

  python benchmarks/strategies.py                  # BERT-mini, 3 rounds x 5 steps each
  python benchmarks/strategies.py --quick          # smoke run: tiny model, 1 round x 2 steps
  python benchmarks/strategies.py --size=small --batch_size=8 --strategies=full,lora,bitfit
"""

from __future__ import annotations

import ast
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from configs import common, finetune as finetune_config
from experiments import finetune
from lmreuse import strategies
from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.data.corpus import wordnet
from lmreuse.train import compute, trainer as trainer_lib

# NAME or NAME:KEY=VALUE:...: the sizes the papers use for BERT-sized models; LoRA both at its
# default (query and value, as Hu et al.) and on every projection (the most expensive target
# set). unfreeze_every=1 has every layer training after warm-up.
DEFAULT_STRATEGIES = (
    "full,frozen,top_k:k=1,bitfit,lora,lora:targets=all_linear,dora,vera,"
    "adapters:adapter_size=64,ia3,prefix_tuning:prefix_length=16,"
    "prompt_tuning:prompt_length=16,llrd:decay=0.9,"
    "gradual_unfreeze:unfreeze_every=1"
)
TOKENIZER_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "lmreuse", "bench_tokenizer")
TOKENIZER_SENTENCES = 50_000  # enough for an 8k vocabulary; trains in about a minute

_SIZE = flags.DEFINE_enum("size", "mini", sorted(common.SIZES), "Model size preset.")
_PRESET = flags.DEFINE_enum("preset", "bert", ["bert"], "Architecture preset (an encoder task).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Examples per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per example (config.max_len, model.max_len).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds, alternating the order of strategies.")
_STEPS = flags.DEFINE_integer(
    "steps", 5, "Timed train steps per strategy and round; each step runs every strategy in turn."
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per strategy after compiling.")
_STRATEGIES = flags.DEFINE_list(
    "strategies",
    DEFAULT_STRATEGIES.split(","),
    "Strategies to compare, each NAME or NAME:KEY=VALUE:... (config.strategy keys); ratios are "
    "against 'full' if listed.",
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", f"SentencePiece model; default: one trained once into {TOKENIZER_CACHE}."
)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: tiny model, 1 round x 2 steps, 1 warm-up.")


def cached_tokenizer(tok: ml_collections.ConfigDict) -> str:
  """The path of an 8k-piece WordNet tokenizer, trained on the first run only; the file name
  carries the settings, so changing them trains a new one instead of reusing a stale one."""
  path = os.path.join(
      TOKENIZER_CACHE,
      f"wordnet_{tok.model_type}_{tok.vocab_size}_"
      f"{tok.num_sentinels}_{TOKENIZER_SENTENCES}.model",
  )
  if not os.path.exists(path):
    print(f"training the benchmark tokenizer into {path} (once)", flush=True)
  tokenizer_lib.get_or_train(
      path,
      lambda: wordnet.segments("train"),
      vocab_size=tok.vocab_size,
      model_type=tok.model_type,
      num_sentinels=tok.num_sentinels,
      max_sentences=TOKENIZER_SENTENCES,
  )
  return path


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """'lora:rank=4:targets=all_linear' -> ('lora', {'rank': 4, 'targets': 'all_linear'})."""
  name, *pairs = spec.strip().split(":")
  keys = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--strategies entry {spec!r}: {pair!r} is not KEY=VALUE")
    try:
      keys[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      keys[key] = value  # a bare string, e.g. a regex
  return name, keys


def make_config(
    spec: str, size: str, batch_size: int, seq_len: int, tokenizer: str
) -> ml_collections.ConfigDict:
  name, keys = parse_spec(spec)
  config = finetune_config.get_config(f"{_PRESET.value},size={size}")
  config.task.name = "wordnet_supersense"
  config.task.max_train_examples = batch_size
  config.task.max_eval_examples = 8
  config.batch_size = batch_size
  config.max_len = seq_len
  config.model.max_len = seq_len
  config.strategy.name = name
  unknown = sorted(set(keys) - set(config.strategy))
  if unknown:
    raise app.UsageError(
        f"--strategies entry {spec!r}: config.strategy has no key {unknown}; "
        f"it has {sorted(config.strategy)}"
    )
  config.strategy.update(keys)
  config.tokenizer.path = tokenizer or cached_tokenizer(config.tokenizer)
  return config


@dataclasses.dataclass
class Runner:
  """One strategy's trainer and state, stepped on the shared batch."""

  name: str
  trainer: trainer_lib.Trainer
  state: Any
  batch: dict[str, jax.Array]
  seconds: list[float] = dataclasses.field(default_factory=list)
  memory: dict[str, int] = dataclasses.field(default_factory=dict)
  memory_bytes: int = 0

  def step(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def measure_memory(self) -> None:
    """XLA's memory account of the step `train_step` runs (compiled by the first step)."""
    compiled = self.trainer.compiled_train_step(self.state, self.batch)
    self.memory, self.memory_bytes = compute.memory_parts(compiled), compute.memory_bytes(compiled)

  @property
  def trainable_fraction(self) -> float:
    return self.trainer.trainable_count() / self.trainer.param_count()


def build_runner(name: str, config: ml_collections.ConfigDict, workdir: str, batch=None):
  """`name`'s Runner for the fine-tuning run `config`, stepped on `batch` (its own first
  training batch when None); also returns its setup."""
  setup = finetune.build(config, workdir)
  if batch is None:
    batch = setup.first_train_batch(config.batch_size)
  device_batch = setup.trainer.device_batch(trainer_lib.split_microbatches(batch, 1), 1)
  return Runner(name, setup.trainer, setup.state, device_batch), setup, batch


def time_in_turn(runners: list[Runner], rounds: int, steps: int) -> None:
  """Steps the runners one step each in turn, the order reversed every round: a burst of load
  from another process then hits every runner alike instead of whichever block it meets."""
  for r in range(rounds):
    for _ in range(steps):
      for runner in runners[:: 1 if r % 2 == 0 else -1]:
        runner.seconds.append(runner.step())


def versions() -> str:
  import flax
  import jaxlib

  return (
      f"python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}"
      f", flax {flax.__version__}, numpy {np.__version__}; backend {jax.default_backend()} "
      f"x{jax.device_count()} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPUs"
  )


def run_settings(argv: list[str]) -> tuple[str, int, int, int]:
  """(size, rounds, steps, warmup) from the flags (--quick: a smoke run); quiet logs. Shared
  with the other benchmarks that take this script's flags."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _QUICK.value:
    return "tiny", 1, 2, 1
  return _SIZE.value, _ROUNDS.value, _STEPS.value, _WARMUP.value


def main(argv: list[str]) -> None:
  size, rounds, steps, warmup = run_settings(argv)
  names = [n.strip() for n in _STRATEGIES.value if n.strip()]
  unknown = sorted({parse_spec(n)[0] for n in names} - set(strategies.names()))
  if unknown or not names or rounds < 1 or steps < 1 or warmup < 0:
    raise app.UsageError(
        f"need known --strategies (unknown: {unknown}; choose from "
        f"{strategies.names()}), --rounds >= 1, --steps >= 1, --warmup >= 0"
    )
  start_time = time.perf_counter()
  print(versions(), flush=True)
  # Every entry's config first, so that a bad one fails before anything is built.
  tokenizer = _TOKENIZER.value
  configs = []
  for name in names:
    configs.append(make_config(name, size, _BATCH.value, _SEQ.value, tokenizer))
    tokenizer = configs[-1].tokenizer.path

  runners: list[Runner] = []
  batch = model_cfg = None
  with tempfile.TemporaryDirectory() as workdir:
    for name, config in zip(names, configs):
      # Every strategy steps on the first one's examples.
      runner, setup, batch = build_runner(name, config, workdir, batch)
      model_cfg = model_cfg or setup.model_cfg
      runners.append(runner)

  for runner in runners:
    compile_start = time.perf_counter()
    runner.step()
    compile_seconds = time.perf_counter() - compile_start
    runner.measure_memory()
    for _ in range(warmup):
      runner.step()
    print(f"  {runner.name:28s} compile + first step {compile_seconds:5.1f} s", flush=True)

  time_in_turn(runners, rounds, steps)

  base = next((r for r in runners if r.name == "full"), runners[0])
  base_ms, base_mb = statistics.median(base.seconds) * 1e3, base.memory_bytes / 2**20
  print(
      f"\n{rounds} rounds x {steps} steps, strategies in turn; median step; memory = XLA "
      f"arguments + outputs - donated + temp\n"
  )
  print(f"| strategy | trainable % | step ms | × {base.name} | memory MB | × {base.name} |")
  print("|---|---:|---:|---:|---:|---:|")
  for runner in runners:
    ms, mb = statistics.median(runner.seconds) * 1e3, runner.memory_bytes / 2**20
    print(
        f"| {runner.name} | {100 * runner.trainable_fraction:.2f} | {ms:.1f} | "
        f"{ms / base_ms:.2f} | {mb:.1f} | {mb / base_mb:.2f} |"
    )
  print(
      f"\nmodel: {_PRESET.value}-{size}, {base.trainer.param_count():,} parameters "
      f"({base.name}), {model_cfg.num_layers} layers, d_model {model_cfg.d_model}, "
      f"seq len {_SEQ.value}, batch {_BATCH.value}"
  )
  print("\nmemory parts, MB: arguments / outputs / donated / temp")
  for runner in runners:
    parts = " / ".join(f"{v / 2 ** 20:.1f}" for v in runner.memory.values())
    print(f"  {runner.name:28s} {parts}")
  print(f"\nwall time: {time.perf_counter() - start_time:.1f} s")


if __name__ == "__main__":
  app.run(main)
