"""A process for test_checkpoint to kill -9 while an async save is in flight.

  python -m tests.train.async_save_target DIRECTORY

Saves step 1 (a small state and a grain iterator three elements in) and waits for it, then
starts the async save of a large step 2, prints SAVING and sleeps until killed.
"""

import sys
import time

import grain
import jax
import jax.numpy as jnp

from lmreuse.train.checkpoint import Checkpointer


def small_state() -> dict:
  return {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "step": jnp.int32(1)}


def data_iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def main(directory: str) -> None:
  checkpointer = Checkpointer(directory, max_to_keep=5)
  iterator = data_iterator()
  for _ in range(3):
    next(iterator)
  checkpointer.save(1, small_state(), iterator)
  checkpointer.wait()
  # ~200 MB of incompressible float32s: writing them takes far longer than the kill takes to
  # arrive, so step 2 is mid-write (in orbax's temporary directory) when the process dies.
  keys = jax.random.split(jax.random.key(0), 50)
  large = {f"a{i}": jax.random.normal(k, (1024, 1024)) for i, k in enumerate(keys)}
  jax.block_until_ready(large)
  next(iterator)
  checkpointer.save(2, large, iterator)
  print("SAVING", flush=True)
  time.sleep(600)


if __name__ == "__main__":
  main(sys.argv[1])
