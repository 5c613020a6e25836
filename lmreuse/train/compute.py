"""What a run cost: XLA's FLOP and memory accounts of its compiled steps, tokens, and time.

Steps are compiled ahead of time (`AheadOfTime`), so the `jax.stages.Compiled` that runs them
also carries XLA's cost and memory analyses: no second compile to read them, and compile time
is measured apart from the time of the steps. `summary` turns them into results.json's
"compute" section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from lmreuse.train.trainer import Trainer, TrainState

PARTS = ("compile", "train", "eval", "checkpoint")
# Leaf names of embedding tables, left out of the 6·N·D estimate's N: layers.Embed's `embedding`
# (token, learned-position and token-type tables) and T5's relative-position bias table.
EMBEDDING_TABLES = ("embedding", "rel_embedding")


@dataclasses.dataclass
class Timers:
  """Seconds this process spent in each part of a run (`PARTS`).

  Parts nest: time inside `timers("compile")` within `timers("train")` counts as compile only,
  so the parts never overlap and add up to at most the wall time. They cover the current process
  only: a resumed run records its own compile, train, eval and checkpoint time, not the earlier
  processes'.
  """

  clock: Callable[[], float] = time.perf_counter
  seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
  _open: list[tuple[str, float]] = dataclasses.field(default_factory=list, repr=False)

  def _charge_open_part(self) -> float:
    now = self.clock()
    if self._open:
      part, since = self._open[-1]
      self.seconds[part] += now - since
    return now

  @contextlib.contextmanager
  def __call__(self, part: str) -> Iterator[None]:
    if part not in self.seconds:
      raise ValueError(f"unknown timer part {part!r}; the parts are {PARTS}")
    self._open.append((part, self._charge_open_part()))  # pauses the enclosing part
    try:
      yield
    finally:
      now = self._charge_open_part()
      self._open.pop()
      if self._open:  # the enclosing part resumes
        self._open[-1] = (self._open[-1][0], now)


def signature(tree: Any) -> Hashable:
  """What a Compiled computation is specialised to: tree structure, shapes, dtypes, shardings."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves)


class AheadOfTime:
  """`lower(*args).compile()` once per signature of `key(*args)`, each compile timed as
  "compile"; calls then run the Compiled, whose analyses a lazily compiled jit would hide."""

  def __init__(
      self,
      lower: Callable[..., jax.stages.Lowered],
      timers: Timers,
      key: Callable[..., Any] = lambda *args: args,
  ):
    self._lower, self._timers, self._key = lower, timers, key
    self._compiled: dict[Hashable, jax.stages.Compiled] = {}

  def compiled(self, *args: Any) -> jax.stages.Compiled:
    key = signature(self._key(*args))
    if key not in self._compiled:
      with self._timers("compile"):
        self._compiled[key] = self._lower(*args).compile()
    return self._compiled[key]

  def __call__(self, *args: Any) -> Any:
    return self.compiled(*args)(*args)


def flops(stage: jax.stages.Compiled | jax.stages.Lowered) -> float:
  """XLA's FLOP count: of one device's program when compiled for a mesh (SPMD), of the whole
  computation when only lowered. jax returns a dict, older versions one dict per module."""
  analysis = stage.cost_analysis()
  if isinstance(analysis, dict):
    analysis = [analysis]
  return float(sum(a.get("flops", 0.0) for a in analysis or ()))


def memory_parts(compiled: jax.stages.Compiled) -> dict[str, int]:
  """XLA's memory account of one call on one device, in bytes (zeros if the backend has none)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {"arguments": 0, "outputs": 0, "donated": 0, "temp": 0}
  return {
      "arguments": stats.argument_size_in_bytes,
      "outputs": stats.output_size_in_bytes,
      "donated": stats.alias_size_in_bytes,
      "temp": stats.temp_size_in_bytes,
  }


def memory_bytes(compiled: jax.stages.Compiled) -> int:
  """What XLA allocates for one call on one device: donated inputs are reused as outputs, so
  arguments + outputs - donated (aliased) + temporaries. Not a measured process peak."""
  m = memory_parts(compiled)
  return m["arguments"] + m["outputs"] - m["donated"] + m["temp"]


@functools.cache
def loop_bodies_counted_once(platform: str) -> bool:
  """Whether XLA's cost analysis on `platform` counts a loop's body once instead of once per
  iteration (the CPU backend's does): probed on a two-iteration `lax.scan` of one matmul, the
  construct gradient accumulation uses."""
  x = jax.device_put(jnp.ones((64, 64), jnp.float32), jax.devices(platform)[0])
  one = flops(jax.jit(lambda x: x @ x).lower(x).compile())
  two = flops(
      jax.jit(lambda x: jax.lax.scan(lambda y, _: (y @ x, None), x, length=2)[0]).lower(x).compile()
  )
  return two < 1.5 * one


def non_embedding_param_count(params: Any) -> int:
  """N of the 6·N·D estimate: every parameter except embedding tables (`EMBEDDING_TABLES`), as
  Kaplan et al. count it. A table lookup does no multiply-adds; an untied output projection
  does and is counted, while a tied one's logit matmul is not."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(
      int(np.prod(x.shape))
      for path, x in leaves
      if getattr(path[-1], "key", None) not in EMBEDDING_TABLES
  )


def steps_per_phase(phases: Sequence[int], steps: int) -> dict[int, int]:
  """How many of the updates 0 .. steps-1 each phase runs (`Trainer.phase`): those from its
  start up to the next phase's."""
  ends = list(phases[1:]) + [steps]
  return {p: max(0, min(end, steps) - p) for p, end in zip(phases, ends)}


def summary(
    trainer: Trainer,
    state: TrainState,
    step_batches: Callable[[], Sequence[tuple[dict[str, np.ndarray], float]]],
    grad_accum_steps: int,
) -> dict:
  """The results.json "compute" section of a run whose final state is `state`.

  FLOPs and tokens count every update `state.step` says the run has, so a resumed run's equal an
  uninterrupted one's; a phase this process never ran (a run resumed past LP-FT's probe, or one
  that had already finished) is compiled here for its analyses, on `step_batches()`: host
  batches shaped like training's, each with the share of the steps shaped like it (one batch,
  share 1, but in a multi-task run, whose tasks' steps differ); only read if the run has taken
  a step. FLOPs are XLA's count for the
  whole mesh; `train_flops_6nd` is the classic estimate 6 · N (`non_embedding_param_count`) ·
  tokens, which ignores attention and that frozen parameters need no weight gradients. Times
  are this process's (`Timers`).
  """
  steps = int(state.step)
  counts = {p: n for p, n in steps_per_phase(trainer.phases, steps).items() if n}
  per_step, peak_memory, tokens = {}, 0, 0
  if counts:
    batches = [(trainer.train_batch(b, grad_accum_steps), share) for b, share in step_batches()]
    for phase in counts:
      per_step[phase] = 0.0
      for batch, share in batches:
        per_step[phase] += share * trainer.train_step_flops(state, batch, phase)
        compiled = trainer.compiled_train_step(state, batch, phase)
        peak_memory = max(peak_memory, memory_bytes(compiled))
    accum, micro = jax.tree.leaves(batches[0][0])[0].shape[:2]
    tokens = steps * accum * micro * trainer.program.tokens_per_example
  return {
      "train_flops": sum(per_step[p] * n for p, n in counts.items()),
      "train_flops_per_step": {str(p): f for p, f in per_step.items()},
      "train_flops_6nd": 6.0 * non_embedding_param_count(trainer.abstract_params) * tokens,
      "peak_memory_bytes": int(peak_memory),
      "tokens": int(tokens),
      "time_sec": dict(trainer.timers.seconds),
  }
