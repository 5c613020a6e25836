"""One writer per workdir: a second run.py on a live workdir is refused naming the holder; a
dead holder's lock (SIGKILL) is taken over with a warning; the lock is reentrant."""

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from lmreuse import lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_by_someone(workdir) -> bool:
  """Whether a lock is held, probed as another process would: flock conflicts between open
  file descriptions, even two of one process."""
  fd = os.open(os.path.join(workdir, lock.LOCK_FILE), os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)


def test_a_second_run_is_refused_and_a_killed_runs_lock_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "w")
  run = [
      sys.executable,
      "run.py",
      "--config=configs/pretrain.py:bert,size=tiny",
      f"--workdir={workdir}",
      f"--config.data.tfds_dir={tmp_path}/tfds",
      "--config.total_steps=100000",
  ]
  first = subprocess.Popen(run, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    path = os.path.join(workdir, lock.LOCK_FILE)
    deadline = time.time() + 120
    while not (os.path.exists(path) and open(path).read().strip()):
      assert first.poll() is None and time.time() < deadline, "the first run never locked"
      time.sleep(0.1)
    holder = json.loads(open(path).read())
    assert holder["pid"] == first.pid and "run.py" in holder["command"]

    started = time.time()
    second = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and first.poll() is None  # refused; the first goes on
    assert f"{workdir} is in use by host" in second.stderr
    assert f"pid {first.pid} started {holder['start_time']}" in second.stderr
    assert time.time() - started < 60  # at once: no waiting, no training
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()

  with caplog.at_level(logging.WARNING):
    with lock.hold(workdir):
      assert held_by_someone(workdir)
      with lock.hold(workdir):  # reentrant: the study holds a cell while the cell runs
        pass
      assert held_by_someone(workdir)
      assert json.loads(open(path).read())["pid"] == os.getpid()
  assert f"taking over the stale lock of host {holder['host']} pid {first.pid}" in caplog.text
  assert not held_by_someone(workdir) and open(path).read() == ""  # released, not unlinked


def test_a_refused_run_leaves_no_workdir_behind(tmp_path):
  workdir = str(tmp_path / "new")
  with pytest.raises(ValueError):
    with lock.hold(workdir):
      raise ValueError("a config check failing before the run's first write")
  assert not os.path.exists(workdir)
  os.makedirs(workdir)
  with lock.hold(workdir):
    pass
  assert os.listdir(workdir) == [lock.LOCK_FILE]  # a directory it did not create is kept
