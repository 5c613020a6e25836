"""One architecture's train steps on every 8-device mesh of `steps.MESHES` and on 1 device;
prints a JSON report.

Per case: XLA's involuntary full rematerializations while compiling the train step and the eval
step, whether every state leaf the rules shard is really split over the devices, and
(pretraining) how far the trainer's own step outputs (loss, grad_norm, updated params, optimizer
state) are from the 1-device step's, with 2 micro-batches of gradient accumulation and no
warm-up, so that the update moves the parameters. Each step is compiled once and serves every
check; fine-tuning steps (built as a run builds them) are checked for rematerialization and
sharding only. Two controls show the checks can fail: a resharding XLA is known to
rematerialize, and a state held whole on every device.

Launched by test_sharded_equivalence.py in a subprocess with 8 fake CPU devices, because the
device count is fixed when JAX starts:

  python -m tests.parallel.sharded_check --preset=bert --tokenizer=SPM_MODEL
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from tests.parallel import remat_check, steps

# One fine-tuning step per mesh and architecture, full fine-tuning or the PEFT modules
# ("lora,adapters,prefix_tuning" puts all three in one model) in turn, so that each
# architecture meets both on meshes with tensor and with FSDP sharding.
PEFT = "lora,adapters,prefix_tuning"
FINETUNE_CASES = {
    "bert": {
        "data2_fsdp2_tensor2": PEFT,
        "data4_fsdp2": "full",
        "fsdp8": PEFT,
        "data4_tensor2": "full",
        "data8": PEFT,
    },
    "gpt": {
        "data2_fsdp2_tensor2": "full",
        "data4_fsdp2": PEFT,
        "fsdp8": PEFT,
        "data4_tensor2": PEFT,
        "data8": "full",
    },
    "t5": {
        "data2_fsdp2_tensor2": PEFT,
        "data4_fsdp2": PEFT,
        "fsdp8": "full",
        "data4_tensor2": "full",
        "data8": PEFT,
    },
}
# Pretraining presets that share an architecture's modules but not its step (ELECTRA's generator
# and sampling, the prefix LM's mask), with their config overrides: checked in that
# architecture's process, on the mesh that splits every rule only, as compile time dominates.
# The tiny ELECTRA's generator would have one head, which tensor=2 cannot split: 4 heads and a
# half-width generator give it 2, still narrower than the discriminator.
SAME_ARCHITECTURE = {
    "bert": {"electra": {"model.num_heads": 4, "objective.generator_size": 0.5}},
    "gpt": {"prefix_lm": {}},
    "t5": {},
}
LAYERS = 1  # compile time dominates; one layer holds every kind of sharded weight
CONTROL_MESH = "data2_fsdp2_tensor2"  # sharding_control's: every rule splits something there
ACCUM_STEPS = 2
# No warm-up, so that the compared step moves the parameters. Adam's first update is
# lr·g/(|g| + eps): with the default eps (1e-6), float32 rounding in a near-zero gradient is
# amplified up to lr/eps-fold in the update, so the updated params would compare rounding noise
# that depends on the CPU. An eps of 1e-3 keeps the update a well-conditioned function of the
# gradient, which the check compares tightly, while a wrong gradient still moves it by about lr.
OPTIMIZER = {"warmup_steps": 0, "eps": 1e-3}


def step(setup: steps.Setup) -> tuple[dict[str, np.ndarray], float, dict[str, list[str]], dict]:
  """(the step's outputs on the host, the largest change of a parameter, the rematerialization
  warnings of the train and the eval step, the sharding report)."""
  trainer, state, batch = setup
  initial = steps.flat(state.params, "params")  # before the step: the state is donated
  whole = {k: np.asarray(v).reshape((-1, *v.shape[2:])) for k, v in batch.items()}
  eval_batch = trainer.device_batch(whole)  # the micro-batches as one, as evaluate feeds them
  messages = {
      "train": remat_check.remat_messages(lambda: trainer.compiled_train_step(state, batch))[0],
      "eval": remat_check.remat_messages(
          lambda: trainer.compiled_eval_step(state.params, eval_batch)
      )[0],
  }
  new_state, metrics = trainer.train_step(state, batch)
  sharding = remat_check.sharding_report(trainer, new_state)
  outputs = {"loss": np.asarray(metrics["train/loss"])}
  outputs["grad_norm"] = np.asarray(metrics["train/grad_norm"])
  outputs.update(steps.flat(new_state.params, "params"))
  outputs.update(steps.flat(new_state.opt_state, "opt_state"))
  moved = max(float(np.abs(outputs[k] - v).max()) for k, v in initial.items())
  return outputs, moved, messages, sharding


def group(key: str) -> str:
  """Leaves compared against one scale: loss, grad_norm, params, and each optimizer statistic
  (Adam's second moment is orders of magnitude smaller than its first)."""
  return key.split("['", 1)[0]


def relative_errors(reference: dict, other: dict, moved: float) -> dict[str, float]:
  """Worst |a - b| per group, relative to each leaf's scale floored at 1e-3 x the group's largest
  (key biases have an analytically zero gradient, softmax being shift invariant, so their leaves
  hold rounding noise only); for the updated params, relative to the largest update, since a
  weight's update, not its size, is what the step computes: a wrong gradient moves it by about
  lr, rounding by far less (OPTIMIZER's eps says why)."""
  largest: dict[str, float] = {}
  for key, value in reference.items():
    largest[group(key)] = max(largest.get(group(key), 0.0), float(np.abs(value).max()))
  worst: dict[str, float] = {}
  for key, value in reference.items():
    scale = max(float(np.abs(value).max()), 1e-3 * largest[group(key)], 1e-30)
    if group(key) == "params":
      scale = max(moved, 1e-30)  # a step that moved nothing fails the test apart
    error = float(np.abs(value - other[key]).max()) / scale
    worst[group(key)] = max(worst.get(group(key), 0.0), error)
  return worst


def case_report(messages: dict[str, list[str]], sharding: dict) -> dict:
  """Per compiled step (train, eval): its count of rematerializations and their first ops."""
  report = {}
  for name, found in messages.items():
    report[f"{name}_remat"] = len(found)
    report[f"{name}_remat_ops"] = [
        m.split("efficiently for HLO operation")[-1][:300] for m in found[:3]
    ]
  return {**report, **sharding}


def pretrain_cases(
    preset: str,
    devices: list,
    meshes: tuple[str, ...] = tuple(steps.MESHES),
    overrides: dict | None = None,
) -> dict:
  """The pretraining step on 1 device, then on each of `meshes` from the same initial state."""
  setup = lambda axes, devs, initial=None: steps.pretrain_setup(
      preset,
      axes,
      devs,
      num_layers=LAYERS,
      accum_steps=ACCUM_STEPS,
      optimizer=OPTIMIZER,
      initial=initial,
      overrides=overrides,
  )
  trainer, state, batch = setup({}, devices[:1])
  initial = jax.device_get(state)
  reference, moved, _, _ = step((trainer, state, batch))
  report = {f"{preset}/reference": {"moved": moved}}
  for name in meshes:
    outputs, _, messages, sharding = step(setup(steps.MESHES[name], devices, initial))
    report[f"{preset}/{name}/pretrain"] = {
        **case_report(messages, sharding),
        "errors": relative_errors(reference, outputs, moved),
    }
  return report


def sharding_control(preset: str, devices: list) -> int:
  """Leaves the sharding check flags in a state held whole on every device, the rules ignored:
  proves the check can fail, so that none flagged elsewhere means every leaf is split."""
  trainer, state, _ = steps.pretrain_setup(
      preset, steps.MESHES[CONTROL_MESH], devices, num_layers=LAYERS
  )
  whole = jax.device_put(state, NamedSharding(trainer.mesh, PartitionSpec()))
  return len(remat_check.sharding_report(trainer, whole)["not_sharded"])


def main(argv: list[str]) -> None:
  jax.config.update("jax_enable_compilation_cache", False)  # a cache hit would log nothing
  devices = jax.devices()
  assert len(devices) == 8, f"needs 8 devices, got {len(devices)}"
  args = dict(a.removeprefix("--").split("=", 1) for a in argv)
  preset = args["preset"]
  report = {
      "control": remat_check.control_case(),
      "sharding_control": sharding_control(preset, devices),
  }
  report.update(pretrain_cases(preset, devices))
  for other, overrides in SAME_ARCHITECTURE[preset].items():
    report.update(pretrain_cases(other, devices, (CONTROL_MESH,), overrides))
  for name, strategy in FINETUNE_CASES[preset].items():
    ft = steps.finetune_setup(preset, steps.MESHES[name], strategy, args["tokenizer"], LAYERS)
    _, _, messages, sharding = step(ft)
    report[f"{preset}/{name}/{strategy}"] = case_report(messages, sharding)
  sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
