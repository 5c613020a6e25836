"""Reuse: load a pretraining checkpoint's parameters into a (possibly different) new model.

Parameters are matched by path. What matches is loaded bit for bit; what only the new model
has (task heads, adapters) keeps its fresh init; what only the checkpoint has (pretraining
heads) is dropped. The report says which is which, as big_vision's `load` and t5x's
`RestoreCheckpointConfig` do; a shape mismatch is an error that lists every offending path.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from lmreuse import workdir as workdir_lib
from lmreuse.train import checkpoint


def checkpoint_state_dirs(init_from: str) -> list[str]:
  """`init_from` is a workdir (its checkpoints, newest first) or one step's checkpoint
  directory."""
  if os.path.isdir(os.path.join(init_from, "state")):
    return [os.path.join(init_from, "state")]
  checkpoints = os.path.join(init_from, workdir_lib.CHECKPOINTS)
  steps = (
      sorted((int(d) for d in os.listdir(checkpoints) if d.isdigit()), reverse=True)
      if os.path.isdir(checkpoints)
      else []
  )
  if not steps:
    raise FileNotFoundError(
        f"init_from={init_from!r} is neither a checkpoint step directory (with state/) nor a "
        f"workdir with checkpoints under {checkpoints}"
    )
  return [os.path.join(checkpoints, str(step), "state") for step in steps]


def load_params(init_from: str) -> dict:
  """The parameter tree of a checkpoint, as host numpy arrays.

  Only `params` is read (orbax partial restore): the optimizer state, twice the size of the
  parameters under Adam, never leaves the disk. From a workdir, a step that fails to read is
  named in a warning and the one before it is read instead, as a resume does.
  """
  failures = []
  for path in checkpoint_state_dirs(init_from):
    try:
      with checkpoint.drained_event_loops():
        return _read_params(os.path.abspath(path))
    except Exception as e:  # pylint: disable=broad-exception-caught
      error = checkpoint.describe_error(e)
      failures.append(f"{path}: {error}")
      logging.warning("init_from: %s does not restore (%s); trying the previous step", path, error)
  raise RuntimeError(
      f"init_from={init_from!r}: no checkpoint restores; tried " + "; ".join(failures)
  )


def _read_params(path: str) -> dict:
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  item = {"params": jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree["params"])}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
  )
  return restored["params"]


def merge_params(fresh: Any, pretrained: Any) -> tuple[dict, dict[str, list[str]]]:
  """Pretrained values where paths match, fresh ones elsewhere; plus the loaded/new/dropped
  report. Raises ValueError naming every path whose shapes disagree."""
  fresh_flat = traverse_util.flatten_dict(jax.device_get(fresh), sep="/")
  old_flat = traverse_util.flatten_dict(pretrained, sep="/")
  mismatched = [
      f"{path}: checkpoint {np.shape(old_flat[path])} vs model " f"{np.shape(value)}"
      for path, value in fresh_flat.items()
      if path in old_flat and np.shape(old_flat[path]) != np.shape(value)
  ]
  if mismatched:
    raise ValueError(
        "pretrained parameters do not fit the model (different architecture or "
        "size?):\n  " + "\n  ".join(mismatched)
    )
  merged = {path: old_flat.get(path, value) for path, value in fresh_flat.items()}
  report = {
      "loaded": sorted(p for p in fresh_flat if p in old_flat),
      "new": sorted(p for p in fresh_flat if p not in old_flat),
      "dropped": sorted(p for p in old_flat if p not in fresh_flat),
  }
  return traverse_util.unflatten_dict(merged, sep="/"), report


def write_report(path: str, report: dict[str, list[str]]) -> None:
  with open(path, "w") as f:
    json.dump({**report, "counts": {k: len(v) for k, v in report.items()}}, f, indent=2)
    f.write("\n")


def save_tree(directory: str, tree: Any) -> None:
  """Saves a parameter (sub)tree, e.g. the trainable part of a parameter-efficient run."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), jax.device_get(tree), force=True)
  checkpointer.wait_until_finished()  # it saves asynchronously; the process may exit next
  checkpointer.close()


def load_tree(directory: str) -> dict:
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"{directory} does not exist: only runs that train part of the model "
        "(parameter-efficient strategies) save their trainable parameters"
    )
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(directory))
  return jax.tree.map(np.asarray, restored)


def overlay(params: Any, tree: Any, key: str) -> dict:
  """`params` with every leaf of `tree` put in its place; paths and shapes must match."""
  flat = traverse_util.flatten_dict(params, sep="/")
  bad = [
      f"{p}: {np.shape(v)}"
      + (f" vs model {np.shape(flat[p])}" if p in flat else " (not in the model)")
      for p, v in traverse_util.flatten_dict(tree, sep="/").items()
      if p not in flat or np.shape(flat[p]) != np.shape(v)
  ]
  if bad:
    raise ValueError(f"{key}: saved parameters do not fit the model:\n  " + "\n  ".join(bad))
  flat.update(traverse_util.flatten_dict(tree, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")
