"""orbax CheckpointManager for the train state and the grain iterator, saved together."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

try:
  from orbax.checkpoint._src import asyncio_utils
except ImportError:  # another orbax layout: see drained_event_loops
  asyncio_utils = None


UNRESTORABLE = "unrestorable"  # in a checkpoint directory: steps a resume had to skip


class Checkpointer:
  """Async saves of (train state, data iterator), keeping the latest `max_to_keep`."""

  def __init__(self, directory: str, *, max_to_keep: int):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is none.

    A step that fails (truncated files, a half-copied directory) is logged and the one before
    it tried. Once one restores, the failed newer steps are moved, not deleted, to
    `UNRESTORABLE/` in the checkpoint directory: left in place, orbax would count them as the
    latest steps and refuse to save the run's new checkpoints at or before them. When none
    restores, the error lists every step and why, and nothing is moved. `data_iterator` is
    left as it was by every failed step and restored in place by the one that succeeds.

    With several processes, each first reads its own data position (no collective), and all
    agree on the outcome before orbax's collective restore of the arrays, and again after it:
    a process that failed alone would otherwise leave the others waiting in orbax's barriers
    for a step it has given up.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      position = data_iterator.get_state() if data_iterator is not None else None
      state, error = None, _agreed(_attempt(self._restore_data, step, data_iterator)[1])
      if error is None:
        state, error = _attempt(self._restore_arrays, step, abstract_state)
        error = _agreed(error)
      if error is None:
        self._set_aside([s for s in steps if s > step])
        logging.info("resumed from %s step %d", self.directory, step)
        return step, state
      if data_iterator is not None:
        data_iterator.set_state(position)
      failures.append(f"step {step}: {error}")
      logging.warning(
          "checkpoint step %d in %s does not restore (%s); %s",
          step,
          self.directory / str(step),
          error,
          "trying the previous one" if step != steps[-1] else "no other step left",
      )
    if failures:
      raise RuntimeError(
          f"no checkpoint in {self.directory} restores (move them away to start "
          "the run over); tried " + "; ".join(failures)
      )
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory / UNRESTORABLE
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / str(step)
        suffix = 1
        while target.exists():  # the same step failed before: keep both
          suffix += 1
          target = aside / f"{step}-{suffix}"
        (self.directory / str(step)).rename(target)
        logging.warning("moved unrestorable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("lmreuse_checkpoint_set_aside")
    self.manager.reload()

  def discard_after(self, step: int) -> None:
    """Deletes the steps after `step`. A run resumed at `step` computes them again and saves
    them anew, which orbax refuses while they exist (e.g. the best checkpoint of a run that
    died, or fell back, before its next regular checkpoint)."""
    for later in self.manager.all_steps():
      if later > step:
        logging.info("%s: removing step %d, past the resumed step %d", self.directory, later, step)
        self.manager.delete(later)

  def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """Restores the state onto the shardings in `abstract_state`; the iterator in place.

    On failure the iterator is put back to where it was.
    """
    position = data_iterator.get_state() if data_iterator is not None else None
    try:
      self._restore_data(step, data_iterator)
      return self._restore_arrays(step, abstract_state)
    except BaseException:
      if data_iterator is not None:
        data_iterator.set_state(position)
      raise

  def _restore_data(self, step: int, data_iterator: Any) -> None:
    """Sets `data_iterator` (if any) to the position saved at `step`: no collective."""
    if data_iterator is not None:
      data_iterator.set_state(self._read_data_state(step))

  def _read_data_state(self, step: int) -> Any:
    """The data position saved at `step`: this process's file, as grain's own restore reads it,
    or any process's when another process count saved it.

    grain keeps one file per process ("process_I-of-N.json"). lmreuse's pipelines count global
    batches, so every process of every process count holds the same state: any file serves.
    """
    data_dir = self.directory / str(step) / "data"
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not own.exists():
      saved = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.exists() else []
      if not saved:
        raise FileNotFoundError(f"{data_dir}: no saved data position ({own.name} expected)")
      logging.info(
          "%s was saved by another process count (%s); every process resumes the data "
          "from its position, the same for all",
          data_dir,
          saved[0].name,
      )
      own = saved[0]
    return json.loads(own.read_text())

  def _restore_arrays(self, step: int, abstract_state: Any) -> Any:
    """orbax's restore of the train state: a collective, every process takes part."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    with drained_event_loops():
      return self.manager.restore(step, args=args)["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _attempt(fn: Any, *args: Any) -> tuple[Any, str | None]:
  """(fn(*args), None), or (None, the error described) when it raises."""
  try:
    return fn(*args), None
  except Exception as e:  # pylint: disable=broad-exception-caught
    return None, describe_error(e)


def _agreed(error: str | None) -> str | None:
  """This process's error; with several processes, an error too when any other process had
  one, so that every process takes the same branch."""
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.int32(error is not None))
    if error is None and failed.any():
      return "another process could not restore it"
  return error


def describe_error(error: BaseException) -> str:
  """The innermost cause on one line: orbax wraps a TensorStore error (which names the file and
  the byte range) in a generic "Encountered error while reading array index"."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:500]}{'...' if len(text) > 500 else ''}"


def _run_sync_draining(coro: Any) -> Any:
  """orbax's `_run_sync_via_new_loop`, but the loop is closed only once all its tasks are done.

  orbax reads every array of a checkpoint as a task under one `asyncio.gather`; when one read
  fails, gather raises at once and orbax closes the loop with the other reads still in flight.
  Each of those then calls back into the closed loop from a TensorStore thread ("Event loop is
  closed"), and at exit each abandoned coroutine prints another traceback: a few hundred
  tracebacks for one bad file. The other reads are awaited, not cancelled: a cancelled task
  stops waiting, but its TensorStore read still calls back when it completes. Reads that failed
  beside the first have their errors marked as seen: the first one is raised, and asyncio would
  log each other as "Task exception was never retrieved". Written here because orbax offers no
  hook for it.
  """
  loop = asyncio.new_event_loop()
  tasks = []

  def recording_factory(loop, task_coro, **kwargs):
    task = asyncio.Task(task_coro, loop=loop, **kwargs)
    tasks.append(task)
    return task

  loop.set_task_factory(recording_factory)
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  finally:
    try:
      pending = [task for task in tasks if not task.done()]
      if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      for task in tasks:
        if not task.cancelled():
          task.exception()
    finally:
      asyncio.set_event_loop(None)
      loop.close()


@contextlib.contextmanager
def drained_event_loops() -> Iterator[None]:
  """Runs orbax's synchronous calls through `_run_sync_draining` for the duration."""
  # A private orbax function: where another orbax version lacks it, restores run unpatched
  # (a failing one may then print the flood again; nothing else changes).
  original = getattr(asyncio_utils, "_run_sync_via_new_loop", None)
  if original is None:
    yield
    return
  asyncio_utils._run_sync_via_new_loop = _run_sync_draining  # pylint: disable=protected-access
  try:
    yield
  finally:
    asyncio_utils._run_sync_via_new_loop = original  # pylint: disable=protected-access


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `tree`, the target layout for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
