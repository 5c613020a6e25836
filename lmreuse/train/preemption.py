"""Preemption: SIGTERM (what a preempted cloud VM gets) or SIGINT ends a run at a step boundary.

The loop asks `Watcher.requested(step)` after every step. On one process a signal handler sets
a flag; on several, JAX's preemption service (started by `jax.distributed.initialize`, which
owns SIGTERM there) agrees on one step at which every process stops, through orbax's
`reached_preemption`, so that all of them save the same step. The loop then saves a checkpoint
at that step, waits for it, flushes the logs and raises `Preempted`; `run.py` exits with
`EXIT_STATUS`, and re-running the same command resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging
from orbax.checkpoint import multihost

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Schedulers can
# requeue on it; a crash exits 1 and a finished run 0.
EXIT_STATUS = 75


class Preempted(BaseException):
  """Raised after the preemption checkpoint is safely on disk.

  A BaseException, like KeyboardInterrupt: handlers that record a failure and go on (the
  study's cell runner) must not swallow it, since the run did not fail and will resume.
  """

  def __init__(self, step: int, reason: str):
    super().__init__(
        f"{reason}: stopped after step {step} with a checkpoint at that step; "
        "re-run the same command to resume"
    )
    self.step = step


class Watcher:
  """Context manager that turns SIGTERM/SIGINT into a request to stop after the current step.

  A second SIGINT interrupts at once (the usual Ctrl-C twice). With several processes no
  handler is installed: a signal delivered to one process only would stop it alone and leave
  the others waiting in a collective, so SIGTERM is left to JAX's preemption service and
  SIGINT keeps its default.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.reason: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> Watcher:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if self.reason is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.reason = f"received {name}"
    logging.warning(
        "%s: stopping after the current step with a checkpoint (Ctrl-C again to "
        "abort without one)",
        name,
    )

  def requested(self, step: int) -> bool:
    """True once the run should stop after `step` (every process gets the same answer)."""
    if self.reason is not None:
      return True
    if (
        jax.process_count() > 1
        and step not in _SERVICE_STOPS
        and multihost.reached_preemption(step)
    ):
      _SERVICE_STOPS.add(step)
      self.reason = "preemption notice (JAX preemption service)"
      return True
    return False


# Steps at which the preemption service already stopped a run in this process. The service
# answers True for its sync step for the rest of the process's life, so a later run in the
# same process (a driver or notebook that resumes in-process) would stop there again; every
# process records the same steps, so all of them skip them alike.
_SERVICE_STOPS: set[int] = set()
