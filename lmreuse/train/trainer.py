"""The one training loop: pure jitted steps over sharded state, evaluation, checkpoints, logs.

Experiments differ only in the `Program` they pass (how parameters are initialised and the loss);
the loop below is the same for pretraining and fine-tuning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmreuse.parallel import sharding as sharding_lib
from lmreuse.train import compute, optim, preemption
from lmreuse.train.checkpoint import Checkpointer
from lmreuse.train.writers import MetricWriter

Batch = dict[str, np.ndarray]
# metrics are (sum, count) pairs so that micro-batches, devices and eval batches combine exactly.
MetricPairs = dict[str, tuple[jax.Array, jax.Array]]
LossFn = Callable[[Any, Batch, jax.Array, bool], tuple[jax.Array, MetricPairs]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; the dropout key of step s is fold_in(rng, s)


@dataclasses.dataclass(frozen=True)
class Program:
  """What an experiment trains: `init_params(rng)` returns params boxed with logical axis names;
  `loss_fn(params, batch, rng, train)` returns (scalar loss, metric pairs).

  `constants` (device arrays placed on the mesh: a distillation teacher's parameters) enter the
  compiled train step as arguments, neither trained nor checkpointed, and reach the training
  loss as `loss_fn(params, batch, rng, True, constants)`; evaluation calls it without them.
  Arguments rather than closed-over values, which jit would embed in the program as literals.
  """

  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  tokens_per_example: int  # for throughput: sequence positions processed per example
  constants: Any = None

  def training_loss(self, constants: Any) -> LossFn:
    """The loss the train step differentiates, given the step's `constants` argument."""
    if constants is None:
      return self.loss_fn
    return lambda p, b, r, t: self.loss_fn(p, b, r, t, constants)


def _replicate_reshaped(tree: Any) -> Any:
  """Optimizer leaves shaped unlike their parameter (Adafactor's factored row/column
  statistics) cannot use its logical axes; they are small, so they are replicated."""

  def fit(x):
    if isinstance(x, nn.Partitioned) and len(x.names) != np.ndim(x.value):
      return x.replace(names=(None,) * np.ndim(x.value))
    return x

  return jax.tree.map(fit, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def select_trainable(params: Any, mask: Any) -> Any:
  """`params` with every frozen leaf replaced by an empty optax.MaskedNode.

  Gradients, optimizer state and updates then exist only for trainable parameters: frozen ones
  cost no weight-gradient compute and no optimizer memory, and cannot change.
  """
  if mask is None:
    return params
  return jax.tree.map(
      lambda p, m: p if m else optax.MaskedNode(),
      params,
      mask,
      is_leaf=lambda x: isinstance(x, nn.Partitioned),
  )


def merge_trainable(params: Any, trainable: Any) -> Any:
  """The full parameter tree: `trainable`'s leaves where it has them, `params`' elsewhere."""
  return jax.tree.map(lambda p, t: p if isinstance(t, optax.MaskedNode) else t, params, trainable)


def reduce_pairs(pairs: MetricPairs) -> dict[str, float]:
  return {k: float(s) / max(float(c), 1e-12) for k, (s, c) in pairs.items()}


PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def prng_impl(config: Any) -> contextlib.AbstractContextManager:
  """A context in which jax.random's keys (the state's init and dropout keys, and every trace
  that draws from them) use `config.prng_impl`; threefry2x32 for configs written before it.

  threefry2x32 is partitionable: the same key gives the same bits however the arrays are
  sharded, so runs agree across meshes and process counts (the multi-device tests rely on it).
  rbg and unsafe_rbg generate dropout masks with XLA's generator, which is cheaper per bit on
  some backends, but their bits depend on the sharding and backend, so such a run only
  reproduces itself on the same mesh (models/dropout.py says how threefry masks are drawn).
  The keys' shapes differ, so a run keeps its choice (workdir.RESUMABLE_KEYS does not list it).
  """
  name = config.get("prng_impl", PRNG_IMPLS[0])
  if name not in PRNG_IMPLS:
    raise ValueError(f"config.prng_impl={name!r} is not one of {PRNG_IMPLS}")
  return jax.default_prng_impl(name)


def _add(a: Any, b: Any) -> Any:
  return jax.tree.map(jnp.add, a, b)


def _value_and_grad(params: Any, loss_fn: LossFn) -> Callable:
  """(loss, pairs), grads of the training loss in a sub-tree of `params`, the rest held fixed."""
  return jax.value_and_grad(
      lambda t, b, r: loss_fn(merge_trainable(params, t), b, r, True), has_aux=True
  )


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    trainable_mask: Any = None,
    active_mask: Any = None,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update; batch leaves are [accum_steps, micro_batch, ...].

  Only parameters whose `trainable_mask` leaf is True (all when None) are updated; the rest pass
  through bitwise unchanged. Of those, only the `active_mask` ones (all when None) are
  differentiated: the others have not started training yet (gradual unfreezing, LP-FT), get
  zero gradients, and cost no backward compute below the lowest active layer.
  `train/nonfinite` is 1 when the loss or a gradient is NaN/Inf; with `skip_nonfinite` such an
  update is dropped whole (parameters and optimizer state stay as they were).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  trainable = select_trainable(state.params, trainable_mask)
  active = trainable if active_mask is None else select_trainable(state.params, active_mask)
  loss, pairs, grads = _mean_gradients(_value_and_grad(state.params, loss_fn), active, batch, rng)
  grads = _zeros_for_inactive(trainable, grads)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  trained = optax.apply_updates(trainable, updates)
  params = merge_trainable(state.params, trained)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep_old_if_bad = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_old_if_bad, params, state.params)
    opt_state = jax.tree.map(keep_old_if_bad, opt_state, state.opt_state)
  metrics = _step_metrics(pairs, loss, finite, grad_norm, updates, trained, schedule, state.step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _mean_gradients(
    grad_fn: Callable, active: Any, batch: Batch, rng: jax.Array
) -> tuple[jax.Array, MetricPairs, Any]:
  """Mean loss and gradients over the micro-batches (summed pairs): one scan, so the compiled
  step holds one micro-batch's activations however many are accumulated. One micro-batch needs
  no scan, nor the extra trace of the gradient that shapes the scan's carry."""
  accum = jax.tree.leaves(batch)[0].shape[0]
  if accum == 1:
    (loss, pairs), grads = grad_fn(active, _micro_batch(batch, 0), jax.random.fold_in(rng, 0))
    return loss, pairs, grads

  def micro_step(carry, xs):
    index, micro_batch = xs
    (loss, pairs), grads = grad_fn(active, micro_batch, jax.random.fold_in(rng, index))
    return _add(carry, (loss, pairs, grads)), None

  first = _micro_batch(batch, 0)
  zeros = jax.tree.map(
      jnp.zeros_like,
      jax.eval_shape(lambda: (lambda o, g: (o[0], o[1], g))(*grad_fn(active, first, rng))),
  )
  (loss, pairs, grads), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), batch))
  return loss / accum, pairs, jax.tree.map(lambda g: g / accum, grads)


def _micro_batch(batch: Batch, index: int) -> Batch:
  return jax.tree.map(lambda x: x[index], batch)


def _zeros_for_inactive(trainable: Any, grads: Any) -> Any:
  """Zero gradients for trainables not yet active, so the optimizer sees every trainable."""
  return jax.tree.map(
      lambda t, g: jnp.zeros_like(t)
      if isinstance(g, optax.MaskedNode) and not isinstance(t, optax.MaskedNode)
      else g,
      trainable,
      grads,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )


def _step_metrics(
    pairs: MetricPairs,
    loss: jax.Array,
    finite: jax.Array,
    grad_norm: jax.Array,
    updates: Any,
    trained: Any,
    schedule: optax.Schedule,
    step: jax.Array,
) -> dict[str, jax.Array]:
  """The step's scalars, computed on device so the host fetches them only when it logs."""
  metrics = {f"train/{k}": s / jnp.maximum(c, 1e-12) for k, (s, c) in pairs.items()}
  metrics.update(
      {
          "train/loss": loss,
          "train/nonfinite": 1 - finite.astype(jnp.int32),
          "train/grad_norm": grad_norm,
          "train/update_norm": optax.tree.norm(updates),
          # Of the trainable parameters: a frozen backbone's norm never moves, and reading it all
          # every step would cost parameter-efficient runs a pass over the whole model.
          "train/param_norm": optax.tree.norm(trained),
          "train/learning_rate": schedule(step),
      }
  )
  return metrics


def eval_step(params: Any, batch: Batch, *, loss_fn: LossFn) -> MetricPairs:
  loss, pairs = loss_fn(params, batch, jax.random.PRNGKey(0), False)
  return {**pairs, "loss": (loss, jnp.ones_like(loss))}


@dataclasses.dataclass
class Trainer:
  """Builds the sharded state and the compiled steps for one Program on one mesh.

  Steps are compiled ahead of time, on first use, with the time counted in `timers` as
  compile time; the Compiled objects stay, so their cost and memory analyses are free.
  """

  program: Program
  # Its peak learning rate enters the compiled train step as an argument (optim.Optimizer).
  optimizer: optim.Optimizer
  mesh: Mesh
  rules: tuple
  trainable_mask: Any = None  # bools shaped like the params (True = trains); None = all train
  # ints shaped like the params: the step each starts training at (None = all at 0). Each
  # distinct start opens a phase with its own compiled step that differentiates only what has
  # started; the optimizer's gates (lmreuse/strategies/gates.py) hold the rest still.
  start_steps: Any = None
  skip_nonfinite: bool = False  # drop NaN/Inf updates in the step (config.nonfinite='skip')
  # This process's compile, train, eval and checkpoint seconds (results.json "compute").
  timers: compute.Timers = dataclasses.field(default_factory=compute.Timers, init=False)

  def __post_init__(self):
    with sharding_lib.mesh_context(self.mesh, self.rules):
      abstract = jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0))
    sharding_lib.check_divisible(abstract.params, self.mesh, self.rules)
    # The optimizer state inherits the params' logical boxes, so one rule table shards both.
    self.state_shardings: TrainState = sharding_lib.logical_shardings(
        abstract, self.mesh, self.rules
    )
    self.abstract_params = nn.meta.unbox(abstract.params)
    # Shapes, dtypes and shardings of the state: enough to lower a step, with nothing allocated.
    self.abstract_state: TrainState = sharding_lib.placed_shapes(abstract, self.state_shardings)
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    peak = np.float32(self.optimizer.learning_rate)  # the train step's argument, on every device
    self._learning_rate = jax.make_array_from_callback((), self.replicated, lambda _: peak)
    mask = (
        self.trainable_mask
        if self.trainable_mask is not None
        else jax.tree.map(lambda _: True, self.abstract_params)
    )
    starts = (
        self.start_steps
        if self.start_steps is not None
        else jax.tree.map(lambda _: 0, self.abstract_params)
    )
    self._mask_and_starts = (mask, starts)
    self.phases: tuple[int, ...] = tuple(
        sorted({0} | {int(s) for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(starts)) if m})
    )
    # Per phase and batch keys: a multi-task run's tasks each feed their own keys (their own
    # compiled step).
    self._jitted_train_steps: dict[tuple, Callable] = {}
    # Per phase; keyed by the batch alone: the state's shardings are fixed by in_shardings.
    self._train_steps: dict[int, compute.AheadOfTime] = {}
    # Replicated outputs: every process reads the same totals (they span all processes).
    jitted_eval = jax.jit(
        lambda p, b: eval_step(p, b, loss_fn=self.program.loss_fn), out_shardings=self.replicated
    )
    self._eval_step = compute.AheadOfTime(jitted_eval.lower, self.timers)  # lowered in evaluate

  def _init_boxed(self, seed_key: jax.Array) -> TrainState:
    param_rng, dropout_rng = jax.random.split(seed_key)
    params = self.program.init_params(param_rng)
    opt_state = self.optimizer.transformation().init(select_trainable(params, self.trainable_mask))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=_replicate_reshaped(opt_state),
        rng=dropout_rng,
    )

  def param_count(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_params))

  def trainable_count(self) -> int:
    trainable = select_trainable(self.abstract_params, self.trainable_mask)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable))

  def init_state(self, seed: int) -> TrainState:
    init = lambda key: nn.meta.unbox(self._init_boxed(key))
    with sharding_lib.mesh_context(self.mesh, self.rules):
      return jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed))

  def state_with_params(self, state: TrainState, params: Any) -> TrainState:
    """Swaps in (e.g. pretrained) params and re-initialises the optimizer state for them."""
    params = jax.device_put(params, self.state_shardings.params)
    with sharding_lib.mesh_context(self.mesh, self.rules):
      tx = self.optimizer.transformation()
      init = lambda p: tx.init(select_trainable(p, self.trainable_mask))
      opt_state = jax.jit(init, out_shardings=self.state_shardings.opt_state)(params)
    return state.replace(params=params, opt_state=opt_state)

  def _batch_shardings(self, batch: Batch, leading_axes: int) -> dict[str, NamedSharding]:
    return {
        k: sharding_lib.batch_sharding(self.mesh, self.rules, v.ndim, leading_axes)
        for k, v in batch.items()
    }

  def device_batch(self, batch: Batch, leading_axes: int = 0) -> dict[str, jax.Array]:
    shardings = self._batch_shardings(batch, leading_axes)
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}

  def to_host(self, tree: Any) -> Any:
    """Numpy copies of a tree of mesh arrays, whole on every process; with several processes a
    collective (one replicating jit), so every process must call it."""
    if jax.process_count() == 1:
      return jax.device_get(tree)
    return jax.device_get(jax.jit(lambda t: t, out_shardings=self.replicated)(tree))

  def host_rows(self, batch_size: int, accum_steps: int = 1) -> list[int]:
    """The rows of each global batch of `batch_size` that this process feeds.

    They are the rows its devices hold once the batch is split into `accum_steps` micro-batches:
    make_array_from_process_local_data places a process's host data on the contiguous block of
    each micro-batch that its devices' shards span (processes whose devices shard the batch the
    same way, e.g. across the tensor axis, feed the same rows).
    """
    micro = batch_size // accum_steps
    sharding = sharding_lib.batch_sharding(self.mesh, self.rules, 2, 1)
    held = set()
    for index in sharding.addressable_devices_indices_map((accum_steps, micro)).values():
      held.update(range(*index[1].indices(micro)))
    start, stop = min(held), max(held) + 1
    if len(held) != stop - start:
      raise ValueError(
          f"process {jax.process_index()} holds batch rows {sorted(held)} of mesh "
          f"{dict(self.mesh.shape)}, not one contiguous block; order the mesh's "
          "devices by process (config.mesh)"
      )
    return [m * micro + row for m in range(accum_steps) for row in range(start, stop)]

  def train_batch(self, host_batch: Batch, accum_steps: int) -> dict[str, jax.Array]:
    """One step's host batch [B, ...] as the sharded [accum_steps, B / accum_steps, ...]."""
    return self.device_batch(split_microbatches(host_batch, accum_steps), 1)

  def phase(self, step: int | None) -> int:
    """The phase of the update at `step` (0-based): the latest start at or before it; the last
    (everything trainable differentiated) when the step is not given."""
    return self.phases[-1] if step is None else max(p for p in self.phases if p <= step)

  def active_mask(self, phase: int) -> Any:
    """Which parameters a step of `phase` differentiates: trainable and started by then."""
    mask, starts = self._mask_and_starts
    return jax.tree.map(lambda m, s: bool(m) and int(s) <= phase, mask, starts)

  def _active_mask_or_none(self, phase: int) -> Any:
    """None in the last phase, where every trainable parameter is differentiated."""
    return None if phase == self.phases[-1] else self.active_mask(phase)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array], step: int | None = None):
    """One update; pass the (0-based) `step` to run only its phase's gradients."""
    compiled = self.compiled_train_step(state, batch, step)
    return compiled(state, batch, self.program.constants, self._learning_rate)

  def compiled_train_step(
      self, state: TrainState, batch: dict[str, jax.Array], step: int | None = None
  ) -> jax.stages.Compiled:
    """The Compiled step `train_step` runs at `step` on batches like `batch`; compiled (and
    timed) the first time it is asked for."""
    phase = self.phase(step)
    if phase not in self._train_steps:
      self._train_steps[phase] = compute.AheadOfTime(
          lambda s, b: self.lower_train_step(s, b, phase), self.timers, key=lambda s, b: b
      )
    return self._train_steps[phase].compiled(state, batch)

  def lower_train_step(
      self, state: TrainState, batch: dict[str, jax.Array], step: int | None = None
  ) -> jax.stages.Lowered:
    """The step `train_step` runs at `step`, lowered for XLA's cost and memory analyses."""
    with sharding_lib.mesh_context(self.mesh, self.rules):
      jitted = self._jitted_train(self.phase(step), batch)
      return jitted.lower(state, batch, self.program.constants, self._learning_rate)

  def _jitted_train(self, phase: int, batch: dict[str, jax.Array]) -> Callable:
    key = (phase, tuple(sorted(batch)))
    if key not in self._jitted_train_steps:
      batch_shardings = {k: v.sharding for k, v in batch.items()}
      active = self._active_mask_or_none(phase)
      fn = lambda s, b, c, peak: train_step(
          s,
          b,
          loss_fn=self.program.training_loss(c),
          tx=self.optimizer.transformation(peak),
          schedule=self.optimizer.schedule(peak),
          trainable_mask=self.trainable_mask,
          active_mask=active,
          skip_nonfinite=self.skip_nonfinite,
      )
      constants = jax.tree.map(lambda x: x.sharding, self.program.constants)
      self._jitted_train_steps[key] = jax.jit(
          fn,
          in_shardings=(self.state_shardings, batch_shardings, constants, self.replicated),
          out_shardings=(self.state_shardings, self.replicated),
          donate_argnums=0,
      )
    return self._jitted_train_steps[key]

  def train_step_flops(
      self, state: TrainState, batch: dict[str, jax.Array], step: int | None = None
  ) -> float:
    """FLOPs of the update at `step` over the whole mesh: XLA's count of the compiled step (one
    device's SPMD program) × devices.

    Where XLA counts a loop's body once (`compute.loop_bodies_counted_once`), that count holds
    one of the step's micro-batches; the others are added from XLA's count of one micro-batch's
    gradient, lowered but not compiled (the whole mesh's computation before optimisation), so
    that no second compile is needed.
    """
    flops = compute.flops(self.compiled_train_step(state, batch, step)) * self.mesh.size
    accum_steps = jax.tree.leaves(batch)[0].shape[0]
    if accum_steps > 1 and compute.loop_bodies_counted_once(self.mesh.devices.flat[0].platform):
      flops += (accum_steps - 1) * self._micro_batch_flops(batch, self.phase(step))
    return flops

  def _micro_batch_flops(self, batch: dict[str, jax.Array], phase: int) -> float:
    """XLA's count of one micro-batch's forward and backward in `phase`, as `train_step` runs
    them in its accumulation loop."""
    active = self._active_mask_or_none(phase)
    mask = self.trainable_mask if active is None else active
    grads = lambda params, b, rng, c: _value_and_grad(params, self.program.training_loss(c))(
        select_trainable(params, mask), b, rng
    )
    micro_batch = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in batch.items()}
    with self.timers("compile"), sharding_lib.mesh_context(self.mesh, self.rules):
      lowered = jax.jit(grads).lower(
          self.abstract_params, micro_batch, jax.random.PRNGKey(0), self.program.constants
      )
    return compute.flops(lowered)

  def compiled_eval_step(self, params: Any, batch: dict[str, jax.Array]) -> jax.stages.Compiled:
    """The Compiled step `evaluate` runs on device batches like `batch` (`device_batch`)."""
    with sharding_lib.mesh_context(self.mesh, self.rules):
      return self._eval_step.compiled(params, batch)

  def evaluate(self, params: Any, batches: Iterable[Batch]) -> dict[str, float]:
    """Eval metrics over `batches`, each this process's rows (`host_rows`) of a global batch."""
    totals = None
    with sharding_lib.mesh_context(self.mesh, self.rules):
      for batch in batches:
        pairs = self._eval_step(params, self.device_batch(batch))
        totals = pairs if totals is None else _add(totals, pairs)
    if totals is None:
      raise ValueError(
          "evaluation got no batches: the validation split is smaller than one "
          "batch; lower config.batch_size or config.eval_steps"
      )
    return {f"eval/{k}": v for k, v in reduce_pairs(jax.device_get(totals)).items()}


def split_microbatches(batch: Batch, accum_steps: int) -> Batch:
  """[B, ...] → [accum_steps, B / accum_steps, ...] on the host."""
  return {
      k: v.reshape((accum_steps, v.shape[0] // accum_steps) + v.shape[1:]) for k, v in batch.items()
  }


@dataclasses.dataclass
class LoopConfig:
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  grad_accum_steps: int
  nonfinite: str  # NaN/Inf loss: "abort" the run, or "skip" the update
  max_nonfinite_skips: int  # "skip": this many skipped updates in a row abort the run

  @classmethod
  def from_config(cls, config: Any) -> LoopConfig:
    """The loop keys every experiment config shares (checked by validate_loop)."""
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


def validate_loop(config: Any, positive_keys: tuple[str, ...]) -> None:
  """The training-loop keys every experiment shares: positive counts, eval cadence, batching."""
  for key in positive_keys:
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive")
  if config.eval_every < 0:
    raise ValueError(f"config.eval_every={config.eval_every} must be >= 0 (0 = only at the end)")
  if config.nonfinite not in ("abort", "skip"):
    raise ValueError(f"config.nonfinite={config.nonfinite!r} must be 'abort' or 'skip'")
  if config.max_nonfinite_skips <= 0:
    raise ValueError(f"config.max_nonfinite_skips={config.max_nonfinite_skips} must be positive")
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(
        f"config.batch_size={config.batch_size} is not divisible by "
        f"config.grad_accum_steps={config.grad_accum_steps}"
    )


def check_batch(config: Any, mesh: Mesh, rules: sharding_lib.Rules) -> None:
  """The per-step micro-batch must split evenly over the mesh's batch axes."""
  divisor = sharding_lib.batch_divisor(mesh, rules)
  micro = config.batch_size // config.grad_accum_steps
  if micro % divisor:
    raise ValueError(
        f"config.batch_size={config.batch_size} / config.grad_accum_steps="
        f"{config.grad_accum_steps} = {micro} examples per micro-batch, which does not divide "
        f"over the {divisor} batch shards of mesh {dict(mesh.shape)}"
    )


class StepMetrics:
  """The host side of the steps' metrics: fetched at log, eval and checkpoint steps (so that
  no evaluation or checkpoint ever sees a NaN/Inf update), averaged into log rows, and checked
  against the non-finite policy."""

  def __init__(self, loop: LoopConfig, checkpointer: Checkpointer):
    self.loop, self.checkpointer = loop, checkpointer
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._window: list[dict[str, float]] = []  # fetched finite steps since the last row
    self._skipped = 0  # skipped updates since the last row
    self._in_a_row = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def fetch(self) -> None:
    """Brings the pending steps to the host; raises FloatingPointError per `loop.nonfinite`."""
    for step, metrics in jax.device_get(self._pending):
      if not metrics["train/nonfinite"]:  # set by the step for a NaN/Inf loss or gradient
        self._in_a_row = 0
        self._window.append(metrics)
        continue
      if self.loop.nonfinite == "abort":
        self._abort(
            f"train/loss is {metrics['train/loss']} (or a gradient is NaN/Inf) at step "
            f"{step} (config.nonfinite='abort')"
        )
      self._skipped += 1
      self._in_a_row += 1
      logging.warning(
          "step %d: non-finite loss or gradient, update skipped (%d in a row)", step, self._in_a_row
      )
      if self._in_a_row >= self.loop.max_nonfinite_skips:
        self._abort(
            f"{self._in_a_row} updates in a row up to step {step} had a NaN/Inf loss or "
            f"gradient (config.max_nonfinite_skips={self.loop.max_nonfinite_skips})"
        )
    self._pending = []

  def _abort(self, what: str) -> None:
    self.checkpointer.wait()
    latest = self.checkpointer.latest_step()
    last_good = (
        f"the last good checkpoint is step {latest} in {self.checkpointer.directory} "
        "(re-running resumes from it)"
        if latest is not None
        else "no checkpoint yet"
    )
    raise FloatingPointError(
        f"{what}; {last_good}. Lower config.optimizer.learning_rate, check the data, or set "
        "config.nonfinite='skip' (allowed on resume)"
    )

  def row(self) -> dict[str, float]:
    """Means of the finite steps since the last row (+ the skipped count under "skip"); a
    metric only some steps report (one task's of a multi-task run) averages over those."""
    self.fetch()
    keys = dict.fromkeys(k for m in self._window for k in m if k != "train/nonfinite")
    record = {k: float(np.mean([m[k] for m in self._window if k in m])) for k in keys}
    if self.loop.nonfinite == "skip":
      record["train/skipped_updates"] = float(self._skipped)
    self._window, self._skipped = [], 0
    return record


def run_loop(
    trainer: Trainer,
    state: TrainState,
    train_iter: Iterator[Batch],
    evaluate: Callable[[Any], dict[str, float]],
    loop: LoopConfig,
    checkpointer: Checkpointer,
    writer: MetricWriter,
    after_eval: Callable[[int, TrainState, dict[str, float]], bool] | None = None,
) -> tuple[TrainState, dict]:
  """Trains from `state.step` to `loop.total_steps`; returns the final state and eval metrics.

  `evaluate(params)` gives eval metrics; `after_eval(step, state, metrics)` (e.g. early
  stopping, best-checkpoint tracking) may return True to stop training after that step.
  SIGTERM/SIGINT (lmreuse/train/preemption.py) end the loop after the current step: its
  metrics are logged, its evaluation (if one is due) runs, a checkpoint of it is saved and
  waited for, and `Preempted` is raised.
  `trainer.timers` splits the loop's time: "train" is all of it (steps, their input, logging)
  but the compiles, evaluations and checkpoint saves and waits, each timed as its own part.
  """
  timers = trainer.timers
  start = int(state.step)
  eval_metrics: dict[str, float] = {}
  steps = StepMetrics(loop, checkpointer)
  clock = _Throughput(start, time.perf_counter())
  bar = _progress_bar(loop.total_steps, start)
  with timers("train"), preemption.Watcher() as watcher:
    for step in range(start + 1, loop.total_steps + 1):
      state, metrics, tokens_per_step = _train_once(trainer, state, train_iter, loop, step)
      steps.add(step, metrics)
      bar.update(1)

      final = step == loop.total_steps
      preempted = not final and watcher.requested(step)
      log = step % loop.log_every == 0 or final or preempted
      # A preempted eval step still evaluates: the resumed run starts after it, and early
      # stopping must see the same evaluations as an uninterrupted run.
      evaluating = final or (loop.eval_every and step % loop.eval_every == 0)
      checkpointing = step % loop.checkpoint_every == 0 or final or preempted
      record = _log_row(steps, clock, bar, step, tokens_per_step) if log else {}
      if not log and (evaluating or checkpointing):
        steps.fetch()  # an eval or checkpoint must not follow a NaN/Inf update unnoticed
      stop = False
      if evaluating:
        eval_metrics, stop = _evaluate(trainer, state, step, evaluate, after_eval, record)
        clock.restart()  # evaluation time is not training throughput
      if record:
        writer.write(step, record)
      if checkpointing or stop:
        jax.block_until_ready(state)
        with timers("checkpoint"):
          checkpointer.save(step, state, train_iter, force=True)
      if preempted:
        _stop_for_preemption(timers, checkpointer, writer, bar, step, watcher.reason)
      if stop:
        logging.info("stopping early at step %d", step)
        break
    bar.close()
  return state, _finish(timers, state, evaluate, checkpointer, writer, eval_metrics)


@dataclasses.dataclass
class _Throughput:
  """Steps and tokens per second of training alone, between log rows."""

  last_step: int
  last_time: float

  def rates(self, step: int, tokens_per_step: int) -> dict[str, float]:
    now = time.perf_counter()
    record = {
        "train/tokens_per_sec": tokens_per_step * (step - self.last_step) / (now - self.last_time),
        "train/steps_per_sec": (step - self.last_step) / (now - self.last_time),
    }
    self.last_time, self.last_step = now, step
    return record

  def restart(self) -> None:
    self.last_time = time.perf_counter()


def _progress_bar(total_steps: int, start: int) -> tqdm.tqdm:
  """One bar, on the first process only, so multi-host runs don't print one per host."""
  return tqdm.tqdm(
      total=total_steps,
      initial=start,
      desc="train",
      unit="step",
      dynamic_ncols=True,
      disable=jax.process_index() != 0,
  )


def _train_once(
    trainer: Trainer, state: TrainState, train_iter: Iterator[Batch], loop: LoopConfig, step: int
) -> tuple[TrainState, dict[str, jax.Array], int]:
  """Dispatches step `step`'s update (a phase's first compiles); also its tokens, for throughput."""
  host_batch = next(train_iter)
  tokens_per_step = trainer.program.tokens_per_example * len(next(iter(host_batch.values())))
  batch = trainer.train_batch(host_batch, loop.grad_accum_steps)
  state, metrics = trainer.train_step(state, batch, step - 1)
  return state, metrics, tokens_per_step


def _log_row(
    steps: StepMetrics, clock: _Throughput, bar: tqdm.tqdm, step: int, tokens_per_step: int
) -> dict[str, float]:
  """The log row of the steps since the last one; the loss goes to the bar, not to the log."""
  record = steps.row()
  record.update(clock.rates(step, tokens_per_step))
  if "train/loss" in record:
    bar.set_postfix(loss=f"{record['train/loss']:.4f}")
  return record


def _evaluate(
    trainer: Trainer,
    state: TrainState,
    step: int,
    evaluate: Callable[[Any], dict[str, float]],
    after_eval: Callable[[int, TrainState, dict[str, float]], bool] | None,
    record: dict[str, float],
) -> tuple[dict[str, float], bool]:
  """Eval metrics (added to `record`), timed apart from training; True if `after_eval` stops."""
  jax.block_until_ready(state)  # the steps dispatched so far are training time
  with trainer.timers("eval"):
    eval_metrics = evaluate(state.params)
    record.update(eval_metrics)
    stop = after_eval is not None and after_eval(step, state, eval_metrics)
  return eval_metrics, stop


def _stop_for_preemption(
    timers: compute.Timers,
    checkpointer: Checkpointer,
    writer: MetricWriter,
    bar: tqdm.tqdm,
    step: int,
    reason: str,
) -> None:
  """Raises `Preempted` once the step's checkpoint and logs are on disk, before a kill."""
  with timers("checkpoint"):
    checkpointer.wait()  # on disk before the process may be killed
  writer.flush()
  bar.close()
  raise preemption.Preempted(step, reason)


def _finish(
    timers: compute.Timers,
    state: TrainState,
    evaluate: Callable[[Any], dict[str, float]],
    checkpointer: Checkpointer,
    writer: MetricWriter,
    eval_metrics: dict[str, float],
) -> dict[str, float]:
  """Waits for the last checkpoint and returns the final eval metrics."""
  with timers("checkpoint"):
    checkpointer.wait()
  writer.flush()
  if not eval_metrics:  # nothing left to train: the run had already finished
    with timers("eval"):
      eval_metrics = evaluate(state.params)
  logging.info("final eval: %s", eval_metrics)
  return eval_metrics
