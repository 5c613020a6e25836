"""Post-training quantization of a fine-tuned run (lmreuse/compression/quantize.py), evaluated
on the run's own validation and test splits beside its float reference.

The fine-tuned run is rebuilt from its config.json (its task, strategy and model) and its best
checkpoint; every check runs before the workdir is touched.
"""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import ml_collections
from absl import logging

from experiments import finetune
from lmreuse import workdir as workdir_lib
from lmreuse.compression import quantize
from lmreuse.tasks.evaluation import Evaluator
from lmreuse.train.trainer import Trainer


def evaluate(evaluator: Evaluator, params, setup: finetune.Setup) -> tuple[dict, list]:
  """Every evaluation set's metrics (config.task.extra_eval's included), prefixed by its name;
  the predictions of the test split (else validation)."""
  metrics, predictions = {}, {}
  for name, eval_set in setup.eval_sets.items():
    scores, predictions[name] = evaluator(params, eval_set)
    metrics.update({f"{name}/{k}": v for k, v in scores.items()})
  return metrics, predictions["test" if "test" in predictions else "validation"]


def quantized_model(
    config: ml_collections.ConfigDict, ft_config: ml_collections.ConfigDict, setup: finetune.Setup
) -> tuple[nn.Module, Trainer]:
  """(module, trainer) that evaluate the quantized weights: the run's own, or with int8
  activations the float task module under qwix's interception (a QAT run's setup.module is
  already quantized at its own types)."""
  if not config.quantize.activations:
    return setup.module, setup.trainer
  module = quantize.quantized_module(
      setup.task.model(), config.quantize.weights, config.quantize.activations
  )
  example = setup.task.features(setup.data.splits["train"][0], None)[0].arrays
  program = finetune.make_program(setup.task, module, example)
  mesh, rules = setup.trainer.mesh, setup.trainer.rules
  return module, finetune.make_trainer(ft_config, setup.plan, program, mesh, rules)


def write_predictions(workdir: str, setup: finetune.Setup, predictions: list) -> None:
  """predictions.jsonl of the test split (else validation), as a fine-tuning run writes it."""
  split = "test" if "test" in setup.eval_sets else "validation"
  examples = setup.eval_sets[split].examples
  workdir_lib.write_jsonl(
      os.path.join(workdir, workdir_lib.PREDICTIONS),
      [setup.task.record(examples[i], p) for i, p in enumerate(predictions)],
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start_time = time.time()
  quantize.validate(config.quantize.weights, config.quantize.activations)
  ft_config, ft_results = finetune.finished_run(
      config.init_from, "config.init_from", single_task=True
  )
  if config.quantize.activations:
    quantize.refuse_generation(
        ft_results["task"]["type"],
        "config.quantize.activations",
        "quantize the weights only (configs/compress.py:int8w or int4w)",
    )
  setup = finetune.build(ft_config, config.init_from)
  step, params = finetune.best_params(config.init_from, setup)
  quantized, model_bytes = quantize.quantize_weights(
      setup.trainer.to_host(params), config.quantize.weights
  )
  module, trainer = quantized_model(config, ft_config, setup)
  workdir_lib.prepare(workdir, config)  # the first write: every check above has passed
  batch_size = ft_config.batch_size
  reference, _ = evaluate(
      Evaluator(setup.trainer, setup.task, setup.module, batch_size), params, setup
  )
  quantized = jax.device_put(quantized, trainer.state_shardings.params)
  metrics, predictions = evaluate(
      Evaluator(trainer, setup.task, module, batch_size), quantized, setup
  )
  if jax.process_index() == 0:
    write_predictions(workdir, setup, predictions)
  logging.info(
      "%s weights, %s activations: %s (float: %s); %d of %d bytes",
      config.quantize.weights,
      config.quantize.activations or "float",
      metrics,
      reference,
      model_bytes["quantized"],
      model_bytes["float"],
  )
  return workdir_lib.write_results(
      workdir,
      config,
      metrics,
      start_time=start_time,
      model_bytes=model_bytes["quantized"],
      reference={"metrics": reference, "model_bytes": model_bytes["float"]},
      **_record(config, ft_results, step),
  )


def _record(config: ml_collections.ConfigDict, ft_results: dict, step: int) -> dict:
  """What results.json says of the quantization and of the fine-tuned run it started from."""
  return dict(
      quantization={
          "weights": config.quantize.weights,
          "activations": config.quantize.activations or "float",
          "method": "qwix absmax, per output channel (per row of a table); weights held "
          "dequantized; int8 activations dynamic per token, multiplied in int8 by qwix",
      },
      finetuned={
          "workdir": os.path.abspath(config.init_from),
          "best_step": int(step),
          "steps": ft_results.get("steps"),
      },
      # What training the evaluated model cost: the fine-tuned run's (a study's tables read it).
      compute=ft_results.get("compute", {}),
      strategy=ft_results.get("strategy"),
      task=ft_results.get("task"),
      parameters=ft_results.get("parameters"),
  )
