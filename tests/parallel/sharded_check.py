"""Runs one train step of each architecture on 1 device and on 8-device meshes; prints JSON.

Launched by test_sharded_equivalence.py in a subprocess with 8 fake CPU devices, because the
device count is fixed when JAX starts.
"""

import json
import sys

import jax
import ml_collections
import numpy as np

from configs import pretrain
from lmreuse import components, objectives
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import optim
from lmreuse.train.trainer import Trainer, split_microbatches
from tests.parallel import synthetic

# data×fsdp×tensor at once: each axis shards something, so one mesh exercises all three.
MESHES = {"data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}


def one_step(preset: str, mesh_axes: dict, devices) -> dict[str, np.ndarray]:
  config = pretrain.get_config(f"{preset},size=tiny")
  config.data.seq_len = 32
  config.model.num_layers = 1  # compile time dominates; one layer exercises every sharded weight
  mesh_cfg = ml_collections.ConfigDict({**dict(data=1, fsdp=1, tensor=1), **mesh_axes})
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  model_cfg = components.model_config(config.model, synthetic.VOCAB)
  program = objectives.get(config.objective.name).program(model_cfg, config.objective, config.data)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  trainer = Trainer(program, tx, schedule, mesh, rules)
  state = trainer.init_state(seed=0)
  batch = synthetic.batch(config.objective.name, batch_size=16, seq_len=config.data.seq_len)
  device_batch = trainer.device_batch(split_microbatches(batch, 2), leading_axes=1)
  with sharding_lib.mesh_context(mesh, rules):
    grads = jax.jit(
        jax.grad(
            lambda p: program.loss_fn(
                p, jax.tree.map(lambda x: x[0], device_batch), jax.random.PRNGKey(3), True
            )[0]
        )
    )(state.params)
  new_state, metrics = trainer.train_step(state, device_batch)
  flat = {"loss": np.asarray(metrics["train/loss"])}
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    flat["grad" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  for path, leaf in jax.tree_util.tree_leaves_with_path(new_state.params):
    flat["param" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return flat


def worst_relative_error(reference: dict, other: dict) -> float:
  """Max |a - b| per leaf, relative to the leaf's scale; key biases have an analytically zero
  gradient (softmax is shift invariant), so scales are floored at 1e-3 × the largest leaf."""
  floor = 1e-3 * max(np.abs(v).max() for k, v in reference.items() if k.startswith("grad"))
  return max(
      float(np.abs(reference[k] - other[k]).max() / max(np.abs(reference[k]).max(), floor))
      for k in reference
  )


def main() -> None:
  devices = jax.devices()
  assert len(devices) == 8, f"needs 8 devices, got {len(devices)}"
  report = {}
  for preset in ("bert", "gpt", "t5"):
    reference = one_step(preset, {}, devices[:1])
    for name, axes in MESHES.items():
      other = one_step(preset, axes, devices)
      report[f"{preset}/{name}"] = worst_relative_error(reference, other)
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
