"""Fine-tuning: a pretrained backbone + a task head, early stopping on a validation metric, test
metrics from the best checkpoint.

Everything that can fail on bad input (config, pretrained workdir, data files, labels, shapes
of the pretrained parameters) is checked before the workdir is touched, so a failing run never
overwrites an earlier one's outputs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from lmreuse import (
    components,
    pretrained as pretrained_lib,
    strategies,
    tasks,
    workdir as workdir_lib,
)
from lmreuse.data import pipeline, sources
from lmreuse.eval import metrics as metrics_lib
from lmreuse.objectives.base import apply_rngs, init_rngs
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.tasks.evaluation import EvalSet, Evaluator, featurize
from lmreuse.train import compute as compute_lib, optim, restore
from lmreuse.train.checkpoint import Checkpointer, abstract_like
from lmreuse.train.early_stopping import EarlyStopping, default_mode
from lmreuse.train.trainer import LoopConfig, Program, Trainer, run_loop
from lmreuse.train.writers import MetricWriter


def validate(config: ml_collections.ConfigDict) -> None:
  components.validate_loop(
      config,
      (
          "batch_size",
          "grad_accum_steps",
          "log_every",
          "checkpoint_every",
          "keep_checkpoints",
          "max_len",
      ),
  )
  if config.total_steps < 0:
    raise ValueError(
        f"config.total_steps={config.total_steps} must be >= 0 (0 = evaluate "
        "the initial model only)"
    )
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ValueError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1)")
  if config.dropout_rate != -1.0 and not 0.0 <= config.dropout_rate < 1.0:
    raise ValueError(f"config.dropout_rate={config.dropout_rate} must be in [0, 1) or -1")
  if config.from_scratch and not config.init_from:
    raise ValueError(
        "config.from_scratch=True takes the architecture from config.init_from, " "which is empty"
    )
  if config.task.type:
    tasks.get(config.task.type)


def model_and_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, source: pretrained_lib.Pretrained | None
):
  """(TransformerConfig, Tokenizer): from what init_from points at, else from this config."""
  if source is not None:
    model, tokenizer = source.model, source.tokenizer
    vocab_size = model.get("vocab_size") or tokenizer.vocab_size  # HF models pad their vocab
  else:
    model = config.model
    tokenizer = components.tokenizer(  # an overwrite must not reuse the old run's tokenizer
        config.tokenizer, workdir, reuse_trained=not workdir_lib.discards_run(workdir, config)
    )
    vocab_size = tokenizer.vocab_size
  model_cfg = components.model_config(model, vocab_size)
  if tokenizer.vocab_size > model_cfg.vocab_size:  # out-of-range ids would be clamped silently
    raise ValueError(
        f"config.init_from={config.init_from!r}: the tokenizer "
        f"{tokenizer.model_path} has {tokenizer.vocab_size} ids but the model's "
        f"embedding only {model_cfg.vocab_size} rows"
    )
  if config.dropout_rate != -1.0:
    model_cfg = dataclasses.replace(model_cfg, dropout_rate=config.dropout_rate)
  model_cfg.validate()
  if config.max_len > model_cfg.max_len:
    raise ValueError(
        f"config.max_len={config.max_len} exceeds the model's max_len=" f"{model_cfg.max_len}"
    )
  return model_cfg, tokenizer


def _some(paths: list[str], limit: int = 6) -> str:
  """A log-sized list: LoRA on a deep model adds hundreds of paths."""
  more = f", ... {len(paths) - limit} more" if len(paths) > limit else ""
  return ", ".join(paths[:limit]) + more


def make_program(
    task: tasks.TaskType, module, example: dict[str, np.ndarray], tokens_per_example: int
) -> Program:
  example = {k: np.asarray(v)[None] for k, v in example.items()}

  def loss_fn(params, batch, rng, train):
    outputs = module.apply(
        {"params": params}, batch, deterministic=not train, rngs=apply_rngs(rng, train)
    )
    return task.loss(outputs, batch)

  return Program(
      init_params=lambda rng: module.init(init_rngs(rng), example)["params"],
      loss_fn=loss_fn,
      tokens_per_example=tokens_per_example,
  )


@dataclasses.dataclass
class Setup:
  """Everything built from the config before the workdir is written to."""

  data: Any
  task: tasks.TaskType
  module: Any
  trainer: Trainer
  state: Any  # initial train state, pretrained params swapped in when init_from is given
  report: dict | None  # loaded / new / dropped parameter paths
  eval_sets: dict[str, EvalSet]
  stopper: EarlyStopping
  tokenizer: Any
  model_cfg: Any
  plan: strategies.Plan

  def first_train_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """The first `batch_size` training features, stacked, unshuffled: one fixed step's batch
    for measuring or checking a step (benchmarks, tests), not for training."""
    features = [
        f.arrays
        for e in list(self.data.splits["train"])[:batch_size]
        for f in self.task.features(e, None)
    ][:batch_size]
    if len(features) < batch_size:
      raise ValueError(f"only {len(features)} training features for a batch of {batch_size}")
    return {k: np.stack([f[k] for f in features]) for k in features[0]}


def build(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Validates and builds the run; raises on any bad input without writing run outputs."""
  validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  components.check_batch(config, mesh, rules)
  source = pretrained_lib.load(config.init_from) if config.init_from else None
  model_cfg, tokenizer = model_and_tokenizer(config, workdir, source)

  data = sources.subsample(
      sources.load(config.task, config.seed),
      train_fraction=config.task.train_fraction,
      max_train_examples=config.task.max_train_examples,
      max_eval_examples=config.task.max_eval_examples,
      seed=config.seed,
  )
  plan = strategies.Plan(
      config.strategy,
      strategies.Context(
          model_cfg=model_cfg, task_type=data.task_type, total_steps=config.total_steps
      ),
  )
  model_cfg = plan.model(model_cfg)
  model_cfg.validate()
  task = tasks.build(
      data.task_type,
      tasks.Context(
          model_cfg=model_cfg,
          tokenizer=tokenizer,
          task=config.task,
          labels=data.labels,
          max_len=config.max_len,
          label_smoothing=config.label_smoothing,
          positive_label=data.positive_label,
      ),
  )
  metric = config.early_stopping.metric or metrics_lib.HEADLINE[data.task_type][0]
  stopper = EarlyStopping(
      metric, config.early_stopping.mode or default_mode(metric), config.early_stopping.patience
  )
  eval_sets = {
      name: featurize(task, name, data.splits[name], data.origin.get(name, ""))
      for name in ("validation", "test")
      if name in data.splits
  }
  if "validation" not in eval_sets:
    raise ValueError(f"{config.task.name}: no validation split to select the best checkpoint")
  module = task.model()
  example = task.features(data.splits["train"][0], None)[0].arrays
  tokens = sum(v.size for k, v in example.items() if k in ("inputs", "decoder_inputs"))
  program = make_program(task, module, example, tokens)
  abstract = nn.meta.unbox(jax.eval_shape(program.init_params, jax.random.PRNGKey(0)))
  paths = list(traverse_util.flatten_dict(abstract, sep="/"))
  plan.check(paths)
  opt = plan.optimizer(config.optimizer)
  optim.validate(opt)
  tx, schedule = optim.make_optimizer(opt, max(config.total_steps, 1))
  mask = plan.by_path(abstract, plan.trainable)
  tx = plan.wrap_optimizer(tx, abstract, mask)
  trainer = Trainer(
      program,
      tx,
      schedule,
      mesh,
      rules,
      trainable_mask=mask,
      start_steps=plan.by_path(abstract, plan.start_step),
      skip_nonfinite=config.nonfinite == "skip",
  )
  state = trainer.init_state(config.seed)
  params, report = trainer.to_host(state.params), None
  if config.init_from and not config.from_scratch:
    params, report = restore.merge_params(params, source.load_params())
    if not report["loaded"]:
      raise ValueError(
          f"config.init_from={config.init_from!r}: no parameter path matches the "
          f"task model; checkpoint has e.g. {report['dropped'][:5]}"
      )
    report["strategy"] = [p for p in report["new"] if strategies.is_strategy_param(p)]
  params = plan.init_pretrained(params, config.seed)
  if config.init_trainable_from:  # after init_pretrained, which would overwrite a saved prompt
    params = restore.overlay(
        params,
        restore.load_tree(os.path.join(config.init_trainable_from, workdir_lib.TRAINABLE)),
        "config.init_trainable_from",
    )
  state = trainer.state_with_params(state, params)
  return Setup(
      data, task, module, trainer, state, report, eval_sets, stopper, tokenizer, model_cfg, plan
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start_time = time.time()
  setup = build(config, workdir)
  data, task, trainer, state, report = (
      setup.data,
      setup.task,
      setup.trainer,
      setup.state,
      setup.report,
  )
  eval_sets, stopper = setup.eval_sets, setup.stopper
  workdir_lib.prepare(workdir, config)  # the first write: every check above has passed
  if not config.init_from:
    components.save_tokenizer(setup.tokenizer, config.tokenizer, workdir)
  is_main = jax.process_index() == 0
  checkpointer = Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS), max_to_keep=config.keep_checkpoints
  )
  best_checkpointer = Checkpointer(os.path.join(workdir, workdir_lib.BEST), max_to_keep=1)
  best_json = os.path.join(workdir, workdir_lib.EARLY_STOPPING)
  train_iter = iter(
      pipeline.make_task_dataset(
          data.splits["train"],
          lambda ex, rng: [f.arrays for f in task.features(ex, rng)],
          batch_size=config.batch_size,
          seed=config.seed,
          rows=trainer.host_rows(config.batch_size, config.grad_accum_steps),
          random_features=task.random_features,
      )
  )
  latest, restored = checkpointer.restore_latest(abstract_like(state), train_iter)
  if latest is not None:
    state = restored
  elif report is not None:
    logging.info(
        "init_from %s: %d parameter arrays loaded, %d new (%s), %d dropped (%s); "
        "all paths in init_report.json",
        config.init_from,
        len(report["loaded"]),
        len(report["new"]),
        _some(report["new"]),
        len(report["dropped"]),
        _some(report["dropped"]),
    )
    if is_main:
      restore.write_report(os.path.join(workdir, workdir_lib.INIT_REPORT), report)
  if is_main and data.labels is not None:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.LABELS), {"labels": data.labels})
  best_checkpointer.discard_after(latest or 0)  # the steps run again save their best anew
  stopper = EarlyStopping.restore(
      best_json, stopper.metric, stopper.mode, stopper.patience, latest or 0
  )
  evaluator = Evaluator(trainer, task, setup.module, config.batch_size)
  timers = trainer.timers
  # The representation "before" fine-tuning: the initial (pretrained) params, on the host.
  params_before = trainer.to_host(setup.state.params) if config.viz.enabled else None

  def validation_scores(params):
    return evaluator(params, eval_sets["validation"])[0]

  def evaluate(params):
    return {f"validation/{k}": v for k, v in validation_scores(params).items()}

  def after_eval(step, state, scores):
    improved, stop = stopper.update(step, {k.split("/", 1)[1]: v for k, v in scores.items()})
    if improved:
      with timers("checkpoint"):
        best_checkpointer.save(step, state.params, None, force=True)
        best_checkpointer.wait()
    if is_main:
      stopper.save(best_json)
    return stop

  writer = MetricWriter(workdir, resume_step=latest or 0)
  loop = LoopConfig.from_config(config)
  try:
    if not stopper.stopped_at:
      state, _ = run_loop(
          trainer, state, train_iter, evaluate, loop, checkpointer, writer, after_eval
      )
    best_step = best_checkpointer.latest_step()
    if best_step is None:  # total_steps=0: evaluate the initial (e.g. loaded) model only
      best_step, best_params = 0, state.params
      with timers("eval"):
        stopper.best_metrics = validation_scores(state.params)
    else:
      best_params = best_checkpointer.restore(best_step, abstract_like(state.params), None)
  finally:
    checkpointer.close()
    best_checkpointer.close()
    writer.close()

  results = {f"validation/{k}": v for k, v in stopper.best_metrics.items()}
  predictions_split = "test" if "test" in eval_sets else "validation"
  with timers("eval"):
    scores, predictions = evaluator(best_params, eval_sets[predictions_split])
  if predictions_split == "test":
    results.update({f"test/{k}": v for k, v in scores.items()})
  if is_main:
    examples = eval_sets[predictions_split].examples
    workdir_lib.write_jsonl(
        os.path.join(workdir, workdir_lib.PREDICTIONS),
        [task.record(examples[i], p) for i, p in enumerate(predictions)],
    )
  logging.info("best step %d: %s", best_step, results)
  extra = {}
  total, trainable = trainer.param_count(), trainer.trainable_count()
  # A collective: every process takes part, process 0 writes the plots and trainable/.
  host_best = trainer.to_host(best_params) if config.viz.enabled or trainable < total else None
  if config.viz.enabled and is_main:
    from lmreuse.viz import finetune_plots

    extra["viz"] = finetune_plots.write(
        workdir,
        setup.module,
        params_before,
        host_best,
        eval_sets["validation"],
        setup.tokenizer,
        example=config.viz.example,
        seed=config.seed,
        step=int(best_step),
    )
  if trainable < total:  # parameter-efficient: the trained part alone is shareable
    flat = traverse_util.flatten_dict(host_best, sep="/")
    restore.save_tree(
        os.path.join(workdir, workdir_lib.TRAINABLE),
        traverse_util.unflatten_dict(
            {p: v for p, v in flat.items() if setup.plan.trainable(p)}, sep="/"
        ),
    )
  logging.info(
      "strategy %s: %s of %s parameters train (%.3f%%)",
      setup.plan.name,
      f"{trainable:,}",
      f"{total:,}",
      100 * trainable / total,
  )
  compute = compute_lib.summary(trainer, state, lambda: next(train_iter), config.grad_accum_steps)
  return workdir_lib.write_results(
      workdir,
      config,
      results,
      start_time=start_time,
      steps=int(state.step),
      best_step=int(best_step),
      stopped_early=bool(stopper.stopped_at),
      selection={"metric": f"validation/{stopper.metric}", "mode": stopper.mode},
      strategy=setup.plan.name,
      parameters={"total": total, "trainable": trainable, "trainable_fraction": trainable / total},
      task={
          "name": config.task.name,
          "type": data.task_type,
          "examples": {k: len(v) for k, v in data.splits.items()},
          "origin": data.origin,
      },
      model=dataclasses.asdict(setup.model_cfg),
      tokenizer=setup.tokenizer.model_path,
      compute=compute,
      **extra,
  )
