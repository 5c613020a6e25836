"""One writer per workdir: the process that writes W holds an flock on W/.lock.

The kernel drops an flock when its holder exits, however it exits (kill -9 included), so a
dead run's lock needs no pid guessing; Linux NFS clients map flock onto POSIX locks, which the
server arbitrates between hosts. The file also records who holds it (host, pid, start time,
command): a refused run names the holder, and content left behind by a holder that died
without releasing says whose lock is being taken over.

Release truncates the file rather than unlinking it: a process that opened the old inode just
before an unlink could lock it while a third process creates and locks a new file, and both
would think they hold W. The one exception is a run refused before its first write (e.g. by
its config checks): the directory it created holds nothing but .lock, and both are removed.
That is safe because every acquisition checks, once locked, that its file is still the one at
W/.lock, and otherwise starts again.

Within one process the lock is reentrant (the study runner holds a cell's lock while the cell
runs), counted per real path. In a multi-process run only process 0 locks (the others do not
write); it tells the others whether it got the lock, so that all of them stop together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"


class LockHeld(RuntimeError):
  """Another live process holds the workdir."""


@dataclasses.dataclass
class _Held:
  fd: int
  depth: int
  created_dir: bool  # this acquisition made the workdir: release may remove it if still empty


_HELD: dict[str, _Held] = {}  # real workdir path → this process's lock on it


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def _describe(content: str) -> str:
  try:
    holder = json.loads(content)
    return (
        f"host {holder['host']} pid {holder['pid']} started {holder['start_time']} "
        f"({holder['command']})"
    )
  except (ValueError, KeyError, TypeError):
    return f"an unknown holder (lock file content {content[:200]!r})"


def _read(fd: int) -> str:
  return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()


def _open_locked(workdir: str, path: str) -> int:
  """An fd on `path` holding its flock, or LockHeld naming the holder."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      content = _read(fd)
      os.close(fd)
      raise LockHeld(
          f"{workdir} is in use by {_describe(content)}: one run writes a workdir "
          f"at a time ({path}). Wait for it to finish, stop it, or use another "
          "--workdir"
      ) from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(
            e.errno,
            f"cannot lock {path}: its filesystem does not support flock "
            f"({e.strerror}); use a local disk, NFS, or Lustre mounted with "
            "-o flock",
        ) from e
      raise
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)  # we locked a file its releaser just removed: lock the new one


def acquire(workdir: str) -> None:
  """Takes `workdir`'s lock for this process (again, if it holds it already); LockHeld if
  another process holds it. Only call it on process 0 of a multi-process run."""
  key = os.path.realpath(workdir)
  if key in _HELD:
    _HELD[key].depth += 1
    return
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = lock_path(workdir)
  fd = _open_locked(workdir, path)
  stale = _read(fd)
  if stale:
    logging.warning(
        "%s: taking over the stale lock of %s, which ended without releasing it",
        workdir,
        _describe(stale),
    )
  me = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "command": shlex.join(sys.argv),
  }
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
  os.fsync(fd)  # other hosts read it to name the holder
  _HELD[key] = _Held(fd, 1, created)


def try_acquire(workdir: str) -> bool:
  """acquire, or False where another process holds the lock."""
  try:
    acquire(workdir)
  except LockHeld:
    return False
  return True


def release(workdir: str) -> None:
  """Undoes one acquire; the last one empties the lock file and drops the flock."""
  key = os.path.realpath(workdir)
  held = _HELD[key]
  held.depth -= 1
  if held.depth:
    return
  del _HELD[key]
  try:
    path = lock_path(workdir)
    if held.created_dir and os.path.isdir(workdir) and os.listdir(workdir) == [LOCK_FILE]:
      os.unlink(path)  # still locked: a waiting opener sees the inode change and retries
      os.rmdir(workdir)
    else:
      os.ftruncate(held.fd, 0)
  finally:
    os.close(held.fd)


def from_process_0(value: int) -> int:
  """Process 0's `value` on every process: what process 0 decided from the lock (or from a
  shared filesystem that may show hosts different things for a moment) all of them follow."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s lock for the block; every process of a run enters it together."""
  error = None
  if jax.process_index() == 0:
    try:
      acquire(workdir)
    except Exception as e:
      error = e
  if not from_process_0(error is None):
    raise error or LockHeld(f"process 0 could not lock {workdir}; its log says why")
  try:
    yield
  finally:
    if jax.process_index() == 0:
      release(workdir)
