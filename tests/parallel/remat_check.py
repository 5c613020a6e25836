"""Compiles train steps on 8 fake CPU devices; prints, per case, XLA's involuntary full
rematerializations and whether the parameters the rules shard really are sharded, as JSON.

XLA's SPMD partitioner reports a resharding it can only do by replicating the whole tensor as
an "Involuntary full rematerialization" warning, logged from C++ to the process's stderr while
compiling; the compiled HLO keeps no mark of it. So each compile runs with file descriptor 2
redirected to a file, read back afterwards (and echoed to stderr), with the compilation cache
off: a cache hit would compile nothing and log nothing.

  python -m tests.parallel.remat_check CASE ...   # CASE: preset/mesh/kind, e.g.
      bert/data2_fsdp2_tensor2/pretrain, t5/fsdp8/lora (a fine-tuning strategy); --tokenizer=PATH
      is needed for fine-tuning cases. Run with XLA_FLAGS=--xla_force_host_platform_device_count=8
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from tests.parallel import steps

MARKER = "Involuntary full rematerialization"


@contextlib.contextmanager
def captured_fd2() -> Iterator[list[str]]:
  """Lines written to file descriptor 2 (C++ logging included) inside the block."""
  lines: list[str] = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield lines
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = tmp.read().decode(errors="replace")
      sys.stderr.write(text)
      lines.extend(text.splitlines())


def remat_messages(compile_fn) -> tuple[list[str], object]:
  """(the involuntary-rematerialization warnings logged by `compile_fn()`, its result)."""
  with captured_fd2() as lines:
    result = compile_fn()
  return [line for line in lines if MARKER in line], result


def control_case() -> int:
  """Warnings from a resharding XLA is known to rematerialize (the last axis tiled over "f" to
  the first over ("d", "f"), as the embedding lookup did): proves the warnings are seen, so that
  a count of zero elsewhere means none."""
  mesh = jax.make_mesh((2, 2, 2), ("d", "f", "t"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  x = jax.ShapeDtypeStruct(
      (8, 8, 8), np.float32, sharding=NamedSharding(mesh, PartitionSpec(None, None, "f"))
  )
  out = NamedSharding(mesh, PartitionSpec(("d", "f")))
  fn = jax.jit(lambda v: jax.lax.with_sharding_constraint(v * 2, out) + 1, out_shardings=out)
  return len(remat_messages(lambda: fn.lower(x).compile())[0])


def sharding_report(trainer, new_state) -> dict:
  """Per state leaf the rules shard over >1 device: does each device hold only its shard?"""
  expected = jax.tree.leaves(trainer.state_shardings)
  leaves = jax.tree_util.tree_leaves_with_path(new_state)
  sharded, wrong = 0, []
  for (path, leaf), sharding in zip(leaves, expected):
    spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
    parts = [
        math.prod(trainer.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
        if axes is not None
        else 1
        for axes in tuple(spec) + (None,) * (leaf.ndim - len(spec))
    ]
    if math.prod(parts) == 1:
      continue
    sharded += 1
    want = tuple(size // p for size, p in zip(leaf.shape, parts))
    held = leaf.addressable_shards[0].data.shape
    if held != want or any(h >= size for h, size, p in zip(held, leaf.shape, parts) if p > 1):
      wrong.append(f"{jax.tree_util.keystr(path)}: holds {held} of {leaf.shape}, wants {want}")
  return {"sharded_leaves": sharded, "not_sharded": wrong}


def run_case(case: str, tokenizer: str | None) -> dict:
  preset, mesh_name, kind = case.split("/")
  axes = steps.MESHES[mesh_name]
  if kind == "pretrain":
    trainer, state, batch = steps.pretrain_setup(preset, axes)
  else:
    if not tokenizer:
      raise SystemExit(f"case {case}: fine-tuning cases need --tokenizer=PATH")
    trainer, state, batch = steps.finetune_setup(preset, axes, kind, tokenizer)
  start = time.perf_counter()
  messages, compiled = remat_messages(lambda: trainer.lower_train_step(state, batch).compile())
  seconds = time.perf_counter() - start
  new_state, _ = compiled(state, batch)
  return {
      "remat": len(messages),
      "messages": [m.split("efficiently for HLO operation")[-1][:300] for m in messages[:4]],
      "compile_s": round(seconds, 1),
      **sharding_report(trainer, new_state),
  }


def main(argv: list[str]) -> None:
  jax.config.update("jax_enable_compilation_cache", False)
  assert jax.device_count() == 8, f"needs 8 devices, got {jax.device_count()}"
  tokenizer = next((a.split("=", 1)[1] for a in argv if a.startswith("--tokenizer=")), None)
  cases = [a for a in argv if not a.startswith("--")]
  report = {"control": control_case()}
  for case in cases:
    report[case] = run_case(case, tokenizer)
  sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
