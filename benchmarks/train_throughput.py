"""Training throughput of lmreuse's MLM step next to Hugging Face's FlaxBertForMaskedLM.

Both run in one process on the same batch, config (BERT-mini: 4 layers, 256 wide, 4 heads, FFN
1024, vocab 8192) and optimizer, in alternating timed rounds so that a noisy machine slows both
alike; we report the median round. MFU is against a peak measured in the same run (a jitted fp32
matmul), not a datasheet number, so it stays meaningful on shared CPUs.

  python benchmarks/train_throughput.py             # 5 rounds x 20 steps each
  python benchmarks/train_throughput.py --quick     # smoke run, seconds after compiling
  python benchmarks/train_throughput.py --profile   # + XLA cost analysis, forward/grad timings

Needs `transformers<5` (the last line with Flax models; see requirements-dev.txt). No torch.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from benchmarks.flops import flops_per_token, measure_peak
from configs import pretrain
from experiments import pretrain as pretrain_experiment
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import trainer as trainer_lib
from tests.parallel import synthetic

_STEPS = flags.DEFINE_integer("steps", 20, "Train steps per timed round (per model).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds, alternating between the two models.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per model after compiling.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Examples per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per example (<= 128, the max positions).")
_LR = flags.DEFINE_float("learning_rate", 1e-4, "AdamW learning rate, the same for both.")
_PEAK_N = flags.DEFINE_integer("peak_size", 2048, "Peak FLOPs/s: N x N @ N x N fp32 matmul.")
_PEAK_REPS = flags.DEFINE_integer("peak_reps", 10, "Matmuls timed for the peak (best is kept).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Smoke run: 2 rounds x 2 steps, 1 warm-up, 3 peak matmuls."
)
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Also print XLA cost analysis and forward / grad / step times for both."
)

VOCAB, D_MODEL, HEADS, D_FF, LAYERS, MAX_LEN, DROPOUT = 8192, 256, 4, 1024, 4, 128, 0.1

Batch = dict[str, np.ndarray]


def mlm_batch(batch_size: int, seq_len: int, seed: int = 0) -> Batch:
  """A well-formed MLM batch: two sentence halves, 3 padding positions, and exactly
  round(15%) of the real positions selected per row, as lmreuse's masking does."""
  batch = synthetic.batch("mlm", batch_size=batch_size, seq_len=seq_len, seed=seed, vocab=VOCAB)
  del batch["nsp_labels"]  # MLM only on both sides
  return batch


def matmul_params(params: Any, tied_table: str) -> int:
  """Sizes of every 'kernel' leaf plus the tied embedding table: N as read off a param tree."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']") or tied_table in name:
      total += int(np.prod(leaf.shape))
  return total


class Runner:
  """One model's compiled step and state, advanced `steps` at a time and timed as a whole."""

  def __init__(self, name: str, step: Callable[[Any], Any], state: Any):
    self.name, self._step, self.state = name, step, state
    self.seconds: list[float] = []
    self.last_loss = float("nan")

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    metrics = None
    for _ in range(steps):
      self.state, metrics = self._step(self.state)
    jax.block_until_ready((self.state, metrics))
    elapsed = time.perf_counter() - start
    self.last_loss = float(metrics["loss"])
    return elapsed


# ----------------------------------------------------------------------------- lmreuse


def build_ours(batch: Batch, lr: float, prng_impl: str = "threefry2x32"):
  """lmreuse's own Trainer on the `bert` pretrain recipe resized to BERT-mini, MLM only; its keys
  (init, dropout) from `prng_impl` (config.prng_impl)."""
  config = pretrain.get_config("bert,size=tiny")
  config.prng_impl = prng_impl
  config.model.update(
      d_model=D_MODEL,
      num_heads=HEADS,
      d_ff=D_FF,
      num_layers=LAYERS,
      max_len=MAX_LEN,
      dropout_rate=DROPOUT,
  )
  config.data.seq_len = batch["inputs"].shape[1]
  config.objective.nsp = False
  # A constant LR so both models take identical optimizer steps (clipping, decay mask included).
  config.optimizer.update(learning_rate=lr, warmup_steps=0, schedule="constant")
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  model_cfg, trainer = pretrain_experiment.make_trainer(config, VOCAB, mesh, rules)
  model_cfg.validate()
  with trainer_lib.prng_impl(config):
    state = trainer.init_state(config.seed)
  device_batch = trainer.device_batch(trainer_lib.split_microbatches(batch, 1), leading_axes=1)

  def step(s):
    with trainer_lib.prng_impl(config):  # the step is traced on its first call
      s, metrics = trainer.train_step(s, device_batch)
    return s, {"loss": metrics["train/loss"]}

  tx = trainer.optimizer.transformation()
  return model_cfg, trainer.program, tx, trainer, state, device_batch, step


# ----------------------------------------------------------------------------- Hugging Face


@flax.struct.dataclass
class HFState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def hf_loss_fn(model: Any) -> Callable:
  """Masked-token cross-entropy of FlaxBertForMaskedLM, as in HF's run_mlm_flax.py."""

  def loss_fn(params, batch, rng, train):
    logits = model(
        batch["inputs"],
        attention_mask=(batch["segment_ids"] != 0).astype(jnp.int32),
        token_type_ids=batch["token_types"],
        position_ids=batch["positions"],
        params=params,
        dropout_rng=rng if train else None,
        train=train,
    ).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["mlm_targets"])
    weights = batch["mlm_weights"]
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1e-8)

  return loss_fn


def build_hf(batch: Batch, tx: optax.GradientTransformation):
  """FlaxBertForMaskedLM with BERT's defaults (hidden and attention-probability dropout 0.1)."""
  from transformers import BertConfig, FlaxBertForMaskedLM
  from transformers.utils import logging as hf_logging

  hf_logging.set_verbosity_error()  # the v5 deprecation notice: this benchmark pins <5 anyway

  config = BertConfig(
      vocab_size=VOCAB,
      hidden_size=D_MODEL,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      intermediate_size=D_FF,
      max_position_embeddings=MAX_LEN,
      hidden_dropout_prob=DROPOUT,
      attention_probs_dropout_prob=DROPOUT,
  )
  model = FlaxBertForMaskedLM(config, seed=0)
  loss_fn = hf_loss_fn(model)
  state = HFState(
      step=jnp.zeros((), jnp.int32),
      params=model.params,
      opt_state=tx.init(model.params),
      rng=jax.random.PRNGKey(1),
  )
  device_batch = jax.device_put(batch)

  @jax.jit
  def init_copy(s):  # fresh buffers: the step donates its state
    return jax.tree.map(jnp.copy, s)

  def train_step(s: HFState, b: dict[str, jax.Array]):
    rng = jax.random.fold_in(s.rng, s.step)
    loss, grads = jax.value_and_grad(loss_fn)(s.params, b, rng, True)
    updates, opt_state = tx.update(grads, s.opt_state, s.params)
    params = optax.apply_updates(s.params, updates)
    return s.replace(step=s.step + 1, params=params, opt_state=opt_state), {"loss": loss}

  compiled = jax.jit(train_step, donate_argnums=0)
  step = lambda s: compiled(s, device_batch)
  return model, loss_fn, init_copy(state), device_batch, train_step, step


# ----------------------------------------------------------------------------- profile


def timed_cost(fn: Callable, *args, reps: int) -> tuple[float, float, float]:
  """Median seconds of one compiled call of `fn`, with XLA's own FLOPs and bytes accessed."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return (
      statistics.median(times),
      float(analysis.get("flops", 0.0)),
      float(analysis.get("bytes accessed", 0.0)),
  )


def profile(ours: tuple, hf: tuple, reps: int) -> None:
  """Where the time goes, and XLA's FLOPs/bytes for each part.

  eval_fwd has no dropout, so forward - eval_fwd is the cost of the dropout masks (threefry bits).
  """
  _, program, tx, trainer, state, device_batch, _ = ours
  _, hf_loss, hf_state, hf_batch, hf_train_step, _ = hf
  flat_batch = jax.tree.map(lambda x: x[0], device_batch)
  rng = jax.random.PRNGKey(2)
  ours_loss = lambda p, b, r: program.loss_fn(p, b, r, True)[0]
  ours_step = lambda s, b: trainer_lib.train_step(
      s, b, loss_fn=program.loss_fn, tx=tx, schedule=trainer.optimizer.schedule()
  )
  rows = {
      "ours": dict(
          eval_fwd=(
              lambda p, b, r: program.loss_fn(p, b, r, False)[0],
              state.params,
              flat_batch,
              rng,
          ),
          forward=(ours_loss, state.params, flat_batch, rng),
          grad=(jax.grad(ours_loss), state.params, flat_batch, rng),
          step=(ours_step, state, device_batch),
      ),
      "hf": dict(
          eval_fwd=(lambda p, b, r: hf_loss(p, b, r, False), hf_state.params, hf_batch, rng),
          forward=(lambda p, b, r: hf_loss(p, b, r, True), hf_state.params, hf_batch, rng),
          grad=(jax.grad(lambda p, b, r: hf_loss(p, b, r, True)), hf_state.params, hf_batch, rng),
          step=(hf_train_step, hf_state, hf_batch),
      ),
  }
  print(f"\nprofile (median of {reps} calls; GFLOP and GB are XLA cost_analysis per call)")
  print(f"  {'':5s} {'part':8s} {'ms':>8s} {'GFLOP':>8s} {'GB':>8s} {'GFLOP/s':>8s}")
  with sharding_lib.mesh_context(trainer.mesh, trainer.rules):
    for name, parts in rows.items():
      for part, (fn, *args) in parts.items():
        seconds, flops, nbytes = timed_cost(fn, *args, reps=reps)
        print(
            f"  {name:5s} {part:8s} {seconds * 1e3:8.1f} {flops / 1e9:8.2f} {nbytes / 1e9:8.2f}"
            f" {flops / seconds / 1e9:8.1f}"
        )


# ----------------------------------------------------------------------------- main


def versions() -> str:
  import jaxlib
  import transformers

  return (
      f"python {platform.python_version()}, jax {jax.__version__}, "
      f"jaxlib {jaxlib.__version__}, "
      f"flax {flax.__version__}, optax {optax.__version__}, "
      f"transformers {transformers.__version__}, numpy {np.__version__}; "
      f"backend {jax.default_backend()} x{jax.device_count()} "
      f"({jax.devices()[0].device_kind}), {os.cpu_count()} CPUs"
  )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  steps, rounds, warmup = _STEPS.value, _ROUNDS.value, _WARMUP.value
  peak_n, peak_reps = _PEAK_N.value, _PEAK_REPS.value
  if _QUICK.value:
    steps, rounds, warmup, peak_reps = 2, 2, 1, 3
  batch_size, seq_len = _BATCH.value, _SEQ.value
  if seq_len > MAX_LEN:
    raise app.UsageError(f"--seq_len={seq_len} exceeds the max positions {MAX_LEN}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  start_time = time.perf_counter()
  print(versions())

  batch = mlm_batch(batch_size, seq_len)
  ours = build_ours(batch, _LR.value)
  model_cfg, _, tx, _, ours_state, _, ours_step = ours
  hf = build_hf(batch, tx)
  _, _, hf_state, _, _, hf_step = hf
  fpt, n = flops_per_token(model_cfg, seq_len)
  n_ours = matmul_params(ours_state.params, "token_embed")
  n_hf = matmul_params(hf_state.params, "word_embeddings")
  print(
      f"config: {LAYERS} layers, d {D_MODEL}, {HEADS} heads, ffn {D_FF}, vocab {VOCAB}, "
      f"batch {batch_size} x seq {seq_len}, adamw lr {_LR.value}, dropout {DROPOUT}, fp32"
  )
  print(
      f"matmul params N: formula {n:,}, ours {n_ours:,}, hf {n_hf:,}; "
      f"FLOPs/token 6N + 12LdT = {fpt / 1e6:.2f} M"
  )

  # The profile's jitted copies must see the initial states, which the timed steps donate.
  profile_states = None
  if _PROFILE.value:
    profile_states = (jax.tree.map(jnp.copy, ours_state), jax.tree.map(jnp.copy, hf_state))

  # lmreuse again with RBG keys (config.prng_impl): what threefry's dropout masks cost.
  *_, rbg_state, _, rbg_step = build_ours(batch, _LR.value, "unsafe_rbg")
  runners = [
      Runner("lmreuse", ours_step, ours_state),
      Runner("hf", hf_step, hf_state),
      Runner("rbg", rbg_step, rbg_state),
  ]
  compile_start = time.perf_counter()
  for runner in runners:
    runner.run(1 + warmup)
  print(f"compile + {warmup} warm-up steps each: {time.perf_counter() - compile_start:.1f} s")

  peak = measure_peak(peak_n, peak_reps)
  for i in range(rounds):
    for runner in runners[:: 1 if i % 2 == 0 else -1]:
      runner.seconds.append(runner.run(steps))
  peak = max(peak, measure_peak(peak_n, peak_reps))

  tokens_per_step = batch_size * seq_len
  print(f"\npeak (fp32 {peak_n}^3 matmul, best of {2 * peak_reps}): {peak / 1e9:.1f} GFLOP/s")
  print(f"{rounds} rounds x {steps} steps, alternating; tokens/s median [min, max], MFU of median")
  rates = {}
  for runner in runners:
    per_round = [tokens_per_step * steps / s for s in runner.seconds]
    rates[runner.name] = statistics.median(per_round)
    print(
        f"  {runner.name:8s} {rates[runner.name]:9.0f} tokens/s  [{min(per_round):.0f}, "
        f"{max(per_round):.0f}]  {tokens_per_step / rates[runner.name] * 1e3:7.1f} ms/step  "
        f"MFU {rates[runner.name] * fpt / peak:6.1%}  loss {runner.last_loss:.3f}"
    )
  print(f"ratio ours/hf: {rates['lmreuse'] / rates['hf']:.3f}")
  print(f"ratio ours with unsafe_rbg keys / ours: {rates['rbg'] / rates['lmreuse']:.3f}")
  print(f"our MFU: {rates['lmreuse'] * fpt / peak:.1%} of {peak / 1e9:.1f} GFLOP/s")

  if profile_states is not None:
    ours = ours[:4] + (profile_states[0],) + ours[5:]
    hf = hf[:2] + (profile_states[1],) + hf[3:]
    profile(ours, hf, reps=max(3, steps // 2))
  print(f"\nwall time: {time.perf_counter() - start_time:.1f} s")


if __name__ == "__main__":
  app.run(main)
