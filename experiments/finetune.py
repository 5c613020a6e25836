"""Fine-tuning: a pretrained backbone + a task head, early stopping on a validation metric, test
metrics from the best checkpoint.

Everything that can fail on bad input (config, pretrained workdir, data files, labels, shapes
of the pretrained parameters) is checked before the workdir is touched, so a failing run never
overwrites an earlier one's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from experiments import adapt
from lmreuse import (
    pretrained as pretrained_lib,
    strategies,
    tasks,
    workdir as workdir_lib,
)
from lmreuse.compression import distill, sparse
from lmreuse.data import pipeline, sources, tokenizer as tokenizer_lib
from lmreuse.data.sources import extra_eval
from lmreuse.models.config import TransformerConfig
from lmreuse.models.layers import dense_init
from lmreuse.objectives.base import apply_rngs, init_rngs
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.tasks import mixture, types as task_types
from lmreuse.tasks.evaluation import EvalSet, Evaluator, featurize
from lmreuse.train import compute as compute_lib, optim, restore
from lmreuse.train.checkpoint import Checkpointer, abstract_like
from lmreuse.train.early_stopping import EarlyStopping, default_mode
from lmreuse.train.trainer import (
    LoopConfig,
    Program,
    Trainer,
    TrainState,
    check_batch,
    prng_impl,
    run_loop,
    validate_loop,
)
from lmreuse.train.writers import MetricWriter

if TYPE_CHECKING:
  from lmreuse.data.hf_tokenizer import HFTokenizer


def validate(config: ml_collections.ConfigDict) -> None:
  validate_loop(
      config,
      (
          "batch_size",
          "grad_accum_steps",
          "log_every",
          "checkpoint_every",
          "keep_checkpoints",
      ),
  )
  if config.max_len < 0:
    raise ValueError(f"config.max_len={config.max_len} must be >= 0 (0 = the model's max_len)")
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
        "config.from_scratch=True takes the architecture from config.init_from, which is empty"
    )
  if config.task.type:
    tasks.get(config.task.type)
  selection = config.task.get("selection", mixture.SELECTIONS[0])
  if selection != mixture.SELECTIONS[0] and not mixture.is_mixture(config.task.name):
    raise ValueError(
        f"config.task.selection={selection!r} is for multi-task runs; config.task.name="
        f"{config.task.name!r} is one task"
    )
  if teacher_dir(config):
    distill.validate(config.distill.alpha, config.distill.temperature, config.distill.hidden_weight)
  adapt.validate(config)


def teacher_dir(config: ml_collections.ConfigDict) -> str:
  """config.distill.teacher; '' also for configs written before distillation existed."""
  return (config.get("distill") or {}).get("teacher", "")


def model_and_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, source: pretrained_lib.Pretrained | None
) -> tuple[TransformerConfig, tokenizer_lib.Tokenizer | HFTokenizer]:
  """(TransformerConfig, Tokenizer): from what init_from points at, else from this config."""
  if source is not None:
    model, tokenizer = source.model, source.tokenizer
    vocab_size = model.get("vocab_size") or tokenizer.vocab_size  # HF models pad their vocab
  else:
    model = config.model
    tokenizer = tokenizer_lib.from_config(  # an overwrite must not reuse the old run's tokenizer
        config.tokenizer, workdir, reuse_trained=not workdir_lib.discards_run(workdir, config)
    )
    vocab_size = tokenizer.vocab_size
  model_cfg = TransformerConfig.from_config(model, vocab_size)
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
        f"config.max_len={config.max_len} exceeds the model's max_len={model_cfg.max_len}"
    )
  return model_cfg, tokenizer


def _some(paths: list[str], limit: int = 6) -> str:
  """A log-sized list: LoRA on a deep model adds hundreds of paths."""
  more = f", ... {len(paths) - limit} more" if len(paths) > limit else ""
  return ", ".join(paths[:limit]) + more


def make_program(
    task: tasks.TaskType,
    module: nn.Module,
    example: dict[str, np.ndarray],
    teacher: distill.Teacher | None = None,
) -> Program:
  """The task model's init and loss; `example` (one feature) fixes the input shapes. With a
  `teacher`, the training loss mixes in its outputs (its parameters are the step's constants)."""
  tokens = sum(v.size for k, v in example.items() if k in ("inputs", "decoder_inputs"))
  example = {k: np.asarray(v)[None] for k, v in example.items()}
  hidden = teacher is not None and teacher.hidden_weight > 0

  def init_params(rng):
    params = module.init(init_rngs(rng), example)["params"]
    if not hidden:
      return params
    shape = (module.cfg.d_model, teacher.width)  # the student's width to the teacher's
    init = dense_init(module.cfg, ("embed", "embed_out"))
    kernel = init(jax.random.fold_in(rng, 1), shape, module.cfg.params_dtype)
    return {**params, distill.PROJECTION: {"kernel": kernel}}

  def loss_fn(params, batch, rng, train, teacher_params=None):
    kwargs = dict(deterministic=not train, rngs=apply_rngs(rng, train))
    if teacher_params is None or not hidden:
      outputs, student_hidden = module.apply({"params": params}, batch, **kwargs), None
    else:
      outputs, states = distill.apply_with_hidden(module, params, batch, **kwargs)
      student_hidden = (states, params[distill.PROJECTION]["kernel"])
    loss, pairs = task.loss(outputs, batch)
    if teacher_params is None:
      return loss, pairs
    return teacher.mix(task, loss, pairs, outputs, teacher_params, batch, student_hidden)

  return Program(
      init_params=init_params,
      loss_fn=loss_fn,
      tokens_per_example=tokens,
      constants=teacher.params if teacher else None,
  )


def finished_run(
    workdir: str, key: str, single_task: bool = False
) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, results) of the finished fine-tuning run in `workdir`, which config `key` names;
  with `single_task`, one whose config.task.name is not a multi-task mixture."""
  paths = [os.path.join(workdir, name) for name in (workdir_lib.CONFIG, workdir_lib.RESULTS)]
  missing = [p for p in paths if not os.path.exists(p)]
  if not workdir or missing:
    raise FileNotFoundError(
        f"{key}={workdir!r} must be a finished fine-tuning workdir; missing {missing or paths}"
    )
  with open(paths[0]) as f, open(paths[1]) as g:
    config, results = ml_collections.ConfigDict(json.load(f)), json.load(g)
  if config.get("experiment") != "finetune":
    raise ValueError(
        f"{key}={workdir!r} is a {config.get('experiment')!r} run, not a fine-tuning run"
    )
  name = (config.get("task") or {}).get("name", "")
  if single_task and mixture.is_mixture(name):
    raise ValueError(
        f"{key}={workdir!r} is a multi-task run ({name!r}); this takes a "
        "single-task fine-tuning run"
    )
  return config, results


def best_params(workdir: str, setup: Setup) -> tuple[int, Any]:
  """The selected step's parameters of the finished run in `workdir`, which `setup` rebuilt
  (the initial ones of a run that trained no step)."""
  step, params = restore_selected(workdir, abstract_like(setup.state.params))
  return (0, setup.state.params) if step is None else (step, params)


def restore_selected(workdir: str, abstract: Any) -> tuple[int | None, Any]:
  """(step, parameters) of the finished run in `workdir`'s selected checkpoint, restored onto
  `abstract`'s shardings; (None, None) when it selected no trained step."""
  checkpointer = Checkpointer(os.path.join(workdir, workdir_lib.BEST), max_to_keep=1)
  try:
    step = checkpointer.latest_step()
    return (None, None) if step is None else (step, checkpointer.restore(step, abstract, None))
  finally:
    checkpointer.close()


def _check_same_task(
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    teacher_config: ml_collections.ConfigDict,
    teacher_results: dict,
) -> None:
  """Refuses a teacher fine-tuned on another task, or on the same task with other labels."""
  workdir = config.distill.teacher
  labels_path = os.path.join(workdir, workdir_lib.LABELS)
  labels = None
  if os.path.exists(labels_path):
    with open(labels_path) as f:
      labels = json.load(f)["labels"]
  theirs = (teacher_config.task.name, teacher_results["task"]["type"], labels)
  if theirs != (config.task.name, data.task_type, data.labels):
    raise ValueError(
        f"config.distill.teacher={workdir!r} was fine-tuned on {theirs[0]!r} ({theirs[1]}, "
        f"labels {labels}), not on this run's {config.task.name!r} ({data.task_type}, labels "
        f"{data.labels})"
    )


def load_teacher(
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    features: dict[str, np.ndarray],
    mesh: Mesh,
    rules: sharding_lib.Rules,
) -> tuple[distill.Teacher, dict]:
  """The teacher of config.distill, its model rebuilt from its workdir and its selected
  parameters restored onto this run's mesh; and its record for results.json. It must solve the
  same task with the same labels (from its results.json and labels.json, without loading its
  data) and read the student's batches as they are: `features` are the student's of training
  example 0, which the teacher's must equal (the same tokenizer and input layout). Only what its
  outputs need is built: no optimizer, trainer, initial state or evaluation sets."""
  workdir = config.distill.teacher
  key = "config.distill.teacher"
  teacher_config, teacher_results = finished_run(workdir, key, single_task=True)
  _check_same_task(config, data, teacher_config, teacher_results)
  source = pretrained_lib.load(teacher_config.init_from) if teacher_config.init_from else None
  model_cfg, tokenizer = model_and_tokenizer(teacher_config, workdir, source)
  plan, model_cfg = planned_model(teacher_config, model_cfg, data.task_type)
  teacher_task, module, theirs_features = task_and_module(
      teacher_config, data, plan, model_cfg, tokenizer
  )
  if features.keys() != theirs_features.keys() or any(
      np.shape(v) != np.shape(theirs_features[k]) or not np.array_equal(v, theirs_features[k])
      for k, v in features.items()
  ):
    raise ValueError(
        f"{key}={workdir!r} reads its inputs differently (tokenizer {tokenizer.model_path}, "
        f"max_len, input layout): the teacher must read the student's batches as they are"
    )
  step, params = selected_params(
      workdir, key, make_program(teacher_task, module, features), mesh, rules
  )
  teacher = distill.Teacher(
      module,
      params,
      config.distill.alpha,
      config.distill.temperature,
      config.distill.hidden_weight,
  )
  record = {
      "teacher": os.path.abspath(workdir),
      "teacher_best_step": int(step),
      "teacher_metrics": teacher_results.get("metrics", {}),
      "alpha": config.distill.alpha,
      "temperature": config.distill.temperature,
      "hidden_weight": config.distill.hidden_weight,
      "teacher_outputs": "computed in the student's jitted train step",
  }
  return teacher, record


def selected_params(
    workdir: str, key: str, program: Program, mesh: Mesh, rules: sharding_lib.Rules
) -> tuple[int, Any]:
  """(step, parameters) of the finished run in `workdir`'s selected checkpoint, restored onto
  `mesh` with the shardings `rules` give `program`'s parameters (checked to split first, so
  that a misfit names `key` instead of failing inside the restore)."""
  with sharding_lib.mesh_context(mesh, rules):
    boxed = jax.eval_shape(program.init_params, jax.random.PRNGKey(0))
  try:
    sharding_lib.check_divisible(boxed, mesh, rules)
  except ValueError as e:
    raise ValueError(f"{key}={workdir!r}: {e}") from e
  abstract = sharding_lib.placed_shapes(boxed, sharding_lib.logical_shardings(boxed, mesh, rules))
  step, params = restore_selected(workdir, abstract)
  if step is None:
    raise ValueError(
        f"{key}={workdir!r} selected no trained step (total_steps=0?): nothing to load"
    )
  return step, params


@dataclasses.dataclass
class Setup:
  """Everything built from the config before the workdir is written to."""

  data: sources.TaskData
  task: tasks.TaskType
  module: nn.Module
  trainer: Trainer
  state: TrainState  # initial, pretrained params swapped in when init_from is given
  report: dict | None  # loaded / new / dropped parameter paths
  eval_sets: dict[str, EvalSet]
  stopper: EarlyStopping
  tokenizer: tokenizer_lib.Tokenizer | HFTokenizer
  model_cfg: TransformerConfig
  plan: strategies.Plan
  evaluator: Evaluator
  distillation: dict | None = None  # load_teacher's record, for results.json

  def validation_scores(self, params: Any) -> dict[str, float]:
    """The validation metrics that select the best step (without prefix)."""
    return self.evaluator(params, self.eval_sets["validation"])[0]

  def selection(self, workdir: str, resume_step: int) -> Selection:
    """What picks the run's best step, resumed at `resume_step`."""
    return Selection(workdir, self, resume_step)

  def train_batches(self, config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
    """The shuffled training batches, this process's rows of each."""
    return iter(task_batches(config, self.data, self.task, self.trainer))

  def labels_record(self) -> dict | None:
    """labels.json's contents, where the task has a label set."""
    return None if self.data.labels is None else {"labels": self.data.labels}

  def task_data(self) -> list[sources.TaskData]:
    """The data of every task the run trains on (continued pretraining reads their inputs)."""
    return [self.data]

  def selected_metrics(self, workdir: str, trained: Trained) -> dict[str, float]:
    return best_metrics(workdir, self, trained)

  def task_record(self, config: ml_collections.ConfigDict, trained: Trained) -> dict:
    """results.json's "task": its name, type, examples per split and where they came from."""
    del trained  # one task: its selection is results.json's own
    return {"name": config.task.name, **task_summary(self.data, self.eval_sets)}

  def step_batches(self, train_iter: Iterator) -> list[tuple[dict[str, np.ndarray], float]]:
    """Host batches shaped like the training steps', each with its share of the steps (for
    compute_lib.summary)."""
    return [(next(train_iter), 1.0)]

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


def load_data(config: ml_collections.ConfigDict) -> sources.TaskData:
  """The task's splits, subsampled as config.task asks."""
  return sources.subsample(
      sources.load(config.task, config.seed),
      train_fraction=config.task.train_fraction,
      max_train_examples=config.task.max_train_examples,
      max_eval_examples=config.task.max_eval_examples,
      seed=config.seed,
  )


def input_len(
    config: ml_collections.ConfigDict, model_cfg: TransformerConfig, task_type: str
) -> int:
  """config.max_len, else all the model embeds, less the target's room where a decoder-only
  model writes it after the source in the same row (seq2seq)."""
  if config.max_len:
    return config.max_len  # model_and_tokenizer checked that the model embeds it
  if task_type == "seq2seq" and model_cfg.architecture == "decoder":
    room = model_cfg.max_len - config.task.max_target_len
    if room <= 0:
      raise ValueError(
          f"config.task.max_target_len={config.task.max_target_len} leaves no room for the "
          f"source in the model's max_len={model_cfg.max_len}"
      )
    return room
  return model_cfg.max_len


def build_task(
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    model_cfg: TransformerConfig,
    tokenizer: tokenizer_lib.Tokenizer | HFTokenizer,
) -> tasks.TaskType:
  return tasks.build(
      data.task_type,
      tasks.TaskContext(
          model_cfg=model_cfg,
          tokenizer=tokenizer,
          task=config.task,
          labels=data.labels,
          max_len=input_len(config, model_cfg, data.task_type),
          label_smoothing=config.label_smoothing,
          positive_label=data.positive_label,
      ),
  )


def task_and_module(
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    plan: strategies.Plan,
    model_cfg: TransformerConfig,
    tokenizer: tokenizer_lib.Tokenizer | HFTokenizer,
) -> tuple[tasks.TaskType, nn.Module, dict[str, np.ndarray]]:
  """The task, its model under `plan`, and training example 0's features: what a program is
  traced on, and what a distillation teacher must read alike."""
  task = build_task(config, data, model_cfg, tokenizer)
  module = plan.module(task.model())
  return task, module, task.features(data.splits["train"][0], None)[0].arrays


def early_stopping(config: ml_collections.ConfigDict, task_type: str) -> EarlyStopping:
  """The selection rule: config.early_stopping, else the task type's headline metric."""
  metric = config.early_stopping.metric or task_types.get(task_type).headline
  return EarlyStopping(
      metric, config.early_stopping.mode or default_mode(metric), config.early_stopping.patience
  )


def eval_sets_of(
    config: ml_collections.ConfigDict, task: tasks.TaskType, data: sources.TaskData
) -> dict[str, EvalSet]:
  """Validation, test where there is one, then config.task.extra_eval's sets by name."""
  eval_sets = {
      name: featurize(task, name, data.splits[name], data.origin.get(name, ""))
      for name in ("validation", "test")
      if name in data.splits
  }
  if "validation" not in eval_sets:
    raise ValueError(f"{config.task.name}: no validation split to select the best checkpoint")
  for name, (examples, origin) in extra_eval.load(config.task, data, config.seed).items():
    eval_sets[name] = featurize(task, name, examples, origin)
  return eval_sets


def make_plan(
    config: ml_collections.ConfigDict, model_cfg: TransformerConfig, task_type: str
) -> strategies.Plan:
  """config.strategy's combination, for `task_type` on `model_cfg` (before its changes)."""
  return strategies.Plan(
      config.strategy,
      strategies.StrategyContext(
          model_cfg=model_cfg, task_type=task_type, total_steps=config.total_steps
      ),
  )


def planned_model(
    config: ml_collections.ConfigDict, model_cfg: TransformerConfig, task_type: str
) -> tuple[strategies.Plan, TransformerConfig]:
  """config.strategy's plan and the model config with its changes (added modules), checked."""
  plan = make_plan(config, model_cfg, task_type)
  model_cfg = plan.model(model_cfg)
  model_cfg.validate()
  return plan, model_cfg


def make_trainer(
    config: ml_collections.ConfigDict,
    plan: strategies.Plan,
    program: Program,
    mesh: Mesh,
    rules: sharding_lib.Rules,
) -> Trainer:
  """The trainer of `program` under the strategy: what trains, at which rate, from which step."""
  abstract = nn.meta.unbox(jax.eval_shape(program.init_params, jax.random.PRNGKey(0)))
  plan.check(list(traverse_util.flatten_dict(abstract, sep="/")))
  opt = plan.optimizer(config.optimizer)
  optim.validate(opt)
  optimizer = optim.make_optimizer(opt, max(config.total_steps, 1))
  mask = plan.by_path(abstract, plan.trainable)
  return Trainer(
      program,
      optimizer.wrapped(lambda tx: plan.wrap_optimizer(tx, abstract, mask)),
      mesh,
      rules,
      trainable_mask=mask,
      start_steps=plan.by_path(abstract, plan.start_step),
      skip_nonfinite=config.nonfinite == "skip",
  )


def load_pretrained(
    config: ml_collections.ConfigDict, params: dict, source: pretrained_lib.Pretrained
) -> tuple[dict, dict]:
  """`params` with init_from's weights in, and the report of loaded / new / dropped paths."""
  params, report = restore.merge_params(params, source.load_params())
  if not report["loaded"]:
    raise ValueError(
        f"config.init_from={config.init_from!r}: no parameter path matches the "
        f"task model; checkpoint has e.g. {report['dropped'][:5]}"
    )
  report["strategy"] = [p for p in report["new"] if strategies.is_strategy_param(p)]
  return params, report


def initial_state(
    config: ml_collections.ConfigDict,
    trainer: Trainer,
    plan: strategies.Plan,
    source: pretrained_lib.Pretrained | None,
) -> tuple[TrainState, dict | None]:
  """The initial train state: random, then init_from's weights unless from_scratch, then the
  strategy's own init, then init_trainable_from's trained parameters; and the init report."""
  state = trainer.init_state(config.seed)
  params, report = trainer.to_host(state.params), None
  if config.init_from and not config.from_scratch:
    params, report = load_pretrained(config, params, source)
  params = plan.init_pretrained(params, config.seed)
  if config.init_trainable_from:  # after init_pretrained, which would overwrite a saved prompt
    params = restore.overlay(
        params,
        restore.load_tree(os.path.join(config.init_trainable_from, workdir_lib.TRAINABLE)),
        "config.init_trainable_from",
    )
  return trainer.state_with_params(state, params), report


def build(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Validates and builds the run; raises on any bad input without writing run outputs. A
  `+`-joined config.task.name builds a multi-task run (experiments/multitask.py)."""
  if mixture.is_mixture(config.task.name):
    from experiments import multitask  # which builds on this module

    return multitask.build(config, workdir)
  validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  check_batch(config, mesh, rules)
  source = pretrained_lib.load(config.init_from) if config.init_from else None
  model_cfg, tokenizer = model_and_tokenizer(config, workdir, source)
  data = load_data(config)
  plan, model_cfg = planned_model(config, model_cfg, data.task_type)
  task, module, example = task_and_module(config, data, plan, model_cfg, tokenizer)
  stopper = early_stopping(config, data.task_type)
  eval_sets = eval_sets_of(config, task, data)
  teacher, distillation = (
      load_teacher(config, data, example, mesh, rules) if teacher_dir(config) else (None, None)
  )
  program = make_program(task, module, example, teacher)
  trainer = make_trainer(config, plan, program, mesh, rules)
  state, report = initial_state(config, trainer, plan, source)
  return Setup(
      data=data,
      task=task,
      module=module,
      trainer=trainer,
      state=state,
      report=report,
      eval_sets=eval_sets,
      stopper=stopper,
      tokenizer=tokenizer,
      model_cfg=model_cfg,
      plan=plan,
      evaluator=Evaluator(trainer, task, module, config.batch_size),
      distillation=distillation,
  )


class BestRecord:
  """One selection rule's early-stopping record and its best step's parameters, in
  `directory`'s early_stopping.json and best/ (a run's workdir; a multi-task member's
  W/tasks/<key>/), rewound to the step a run resumes from (the steps run again save their
  best anew)."""

  def __init__(
      self, directory: str, rule: EarlyStopping, resume_step: int, timers: compute_lib.Timers
  ):
    self.checkpointer = Checkpointer(os.path.join(directory, workdir_lib.BEST), max_to_keep=1)
    self.checkpointer.discard_after(resume_step)
    self.path = os.path.join(directory, workdir_lib.EARLY_STOPPING)
    self.stopper = EarlyStopping.restore(
        self.path, rule.metric, rule.mode, rule.patience, resume_step
    )
    self.timers = timers

  def update(self, step: int, params: Any, metrics: dict[str, float]) -> bool:
    """Records one evaluation, saving `params` when it improves; True when the rule's patience
    has run out."""
    improved, stop = self.stopper.update(step, metrics)
    if improved:
      with self.timers("checkpoint"):
        self.checkpointer.save(step, params, None, force=True)
        self.checkpointer.wait()
    if jax.process_index() == 0:
      self.stopper.save(self.path)
    return stop


class Selection:
  """Picks the best step by validation score (the run's selected model): early stopping's
  record and the best step's parameters, kept beside the resumable checkpoints."""

  def __init__(self, workdir: str, setup: Setup, resume_step: int):
    self.scores = setup.validation_scores
    self.timers = setup.trainer.timers
    self.record = BestRecord(workdir, setup.stopper, resume_step, self.timers)
    self.first_step = setup.plan.first_selectable_step()

  @property
  def stopper(self) -> EarlyStopping:
    return self.record.stopper

  def evaluate(self, params: Any) -> dict[str, float]:
    """The training loop's evaluation."""
    return {f"validation/{k}": v for k, v in self.scores(params).items()}

  def after_eval(self, step: int, state: TrainState, scores: dict[str, float]) -> bool:
    """Saves an improved step's parameters; True when early stopping ends the run. Steps
    before the strategy's first selectable one (pruning's ramp) are neither kept nor counted."""
    if step < self.first_step:
      return False
    return self.record.update(step, state.params, unprefixed(scores))

  def best(self, state: TrainState) -> tuple[int, Any]:
    """(step, params) of the best evaluation; with none (total_steps=0), the initial model's."""
    step = self.record.checkpointer.latest_step()
    if step is not None:
      return step, self.record.checkpointer.restore(step, abstract_like(state.params), None)
    with self.timers("eval"):
      self.stopper.best_metrics = self.scores(state.params)
    return 0, state.params

  def close(self) -> None:
    self.record.checkpointer.close()


def unprefixed(scores: dict[str, float]) -> dict[str, float]:
  """{"validation/accuracy": v} → {"accuracy": v}: metrics as early stopping names them."""
  return {k.split("/", 1)[1]: v for k, v in scores.items()}


@dataclasses.dataclass
class Trained:
  """What training leaves for the outputs: the final state and the best step's parameters."""

  state: TrainState
  best_step: int
  best_params: Any
  selection: Selection
  train_iter: Iterator[dict[str, np.ndarray]]
  params_before: Any  # the initial params on the host, for the "before" plots (viz only)


def task_batches(
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    task: tasks.TaskType,
    trainer: Trainer,
) -> grain.IterDataset:
  """A task's endless shuffled training batches, this process's rows of each."""
  return pipeline.make_task_dataset(
      data.splits["train"],
      lambda ex, rng: [f.arrays for f in task.features(ex, rng)],
      batch_size=config.batch_size,
      seed=config.seed,
      rows=trainer.host_rows(config.batch_size, config.grad_accum_steps),
      random_features=task.random_features,
  )


def write_inputs(
    config: ml_collections.ConfigDict, workdir: str, setup: Setup, resumed: bool
) -> None:
  """init_report.json (for a run starting afresh from init_from) and labels.json."""
  labels = setup.labels_record()
  report, is_main = setup.report, jax.process_index() == 0
  if report is not None and not resumed:
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
  if is_main and labels is not None:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.LABELS), labels)


def train(config: ml_collections.ConfigDict, workdir: str, setup: Setup) -> Trained:
  """Trains from the latest checkpoint (or the start), selecting the best step on validation."""
  checkpointer = Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS), max_to_keep=config.keep_checkpoints
  )
  train_iter = setup.train_batches(config)
  latest, restored = checkpointer.restore_latest(abstract_like(setup.state), train_iter)
  state = setup.state if latest is None else restored
  write_inputs(config, workdir, setup, resumed=latest is not None)
  selection = setup.selection(workdir, latest or 0)
  # Fetched before training, which donates the initial state's buffers.
  params_before = setup.trainer.to_host(setup.state.params) if config.viz.enabled else None
  writer = MetricWriter(workdir, resume_step=latest or 0)
  try:
    if not selection.stopper.stopped_at:
      state, _ = run_loop(
          setup.trainer,
          state,
          train_iter,
          selection.evaluate,
          LoopConfig.from_config(config),
          checkpointer,
          writer,
          selection.after_eval,
      )
    best_step, best_params = selection.best(state)
  finally:
    checkpointer.close()
    selection.close()
    writer.close()
  return Trained(state, best_step, best_params, selection, train_iter, params_before)


def best_metrics(workdir: str, setup: Setup, trained: Trained) -> dict[str, float]:
  """The best step's validation, test and extra sets' metrics; predictions.jsonl for the test
  split (the validation split where there is no test split), extra_eval/<NAME>.jsonl for each
  config.task.extra_eval set."""
  results = {f"validation/{k}": v for k, v in trained.selection.stopper.best_metrics.items()}
  results.update(
      score_selected(workdir, setup.evaluator, setup.task, setup.eval_sets, trained.best_params)
  )
  logging.info("best step %d: %s", trained.best_step, results)
  return results


def score_selected(
    directory: str,
    evaluator: Evaluator,
    task: tasks.TaskType,
    eval_sets: dict[str, EvalSet],
    params: Any,
) -> dict[str, float]:
  """The selected parameters' test metrics (the validation split's predictions where there is no
  test split) and each extra set's, prefixed by the set's name; their predictions written in
  `directory` (predictions.jsonl, extra_eval/<NAME>.jsonl)."""
  results = {}
  split = "test" if "test" in eval_sets else "validation"
  outputs = {}
  for name in [split, *extra_eval_names(eval_sets)]:
    with evaluator.trainer.timers("eval"):
      scores, predictions = evaluator(params, eval_sets[name])
    if name != "validation":
      results.update({f"{name}/{k}": v for k, v in scores.items()})
    path = (
        os.path.join(directory, workdir_lib.PREDICTIONS)
        if name == split
        else os.path.join(directory, workdir_lib.EXTRA_PREDICTIONS, f"{name}.jsonl")
    )
    outputs[path] = (name, predictions)
  if jax.process_index() == 0:
    for path, (name, records) in outputs.items():
      examples = eval_sets[name].examples
      workdir_lib.write_jsonl(path, [task.record(examples[i], p) for i, p in enumerate(records)])
  return results


def extra_eval_names(eval_sets: dict[str, EvalSet]) -> list[str]:
  """config.task.extra_eval's set names, in their order."""
  return [name for name in eval_sets if name not in ("validation", "test")]


def task_summary(data: sources.TaskData, eval_sets: dict[str, EvalSet]) -> dict:
  """A task's type, examples per split and extra set, and where its splits came from."""
  return {
      "type": data.task_type,
      "examples": {k: len(v) for k, v in data.splits.items()},
      "extra_eval": {name: len(eval_sets[name].examples) for name in extra_eval_names(eval_sets)},
      "origin": data.origin,
  }


def write_reusables(
    config: ml_collections.ConfigDict, workdir: str, setup: Setup, trained: Trained
) -> dict:
  """The representation plots (config.viz); when only part of the model trains, that part
  alone in trainable/ (shareable without the backbone); when a strategy leaves parameters sparse
  (pruning), the whole model stored sparse; and the plots' record for results.json."""
  extra = {}
  trainer = setup.trainer
  partial = trainer.trainable_count() < trainer.param_count()
  paths = traverse_util.flatten_dict(trained.best_params, sep="/")
  pruned = any(setup.plan.sparse(p) for p in paths)
  # A collective: every process takes part, process 0 writes the plots, trainable/ and the
  # sparse model.
  needed = config.viz.enabled or partial or pruned
  host_best = trainer.to_host(trained.best_params) if needed else None
  if pruned and jax.process_index() == 0:
    sparse.save(os.path.join(workdir, workdir_lib.SPARSE_MODEL), host_best, setup.plan.sparse)
  if config.viz.enabled and jax.process_index() == 0:
    from lmreuse.viz import finetune_plots

    extra["viz"] = finetune_plots.write(
        workdir,
        setup.module,
        trained.params_before,
        host_best,
        setup.eval_sets["validation"],
        setup.tokenizer,
        example=config.viz.example,
        seed=config.seed,
        step=int(trained.best_step),
    )
  if partial:
    flat = traverse_util.flatten_dict(host_best, sep="/")
    restore.save_tree(
        os.path.join(workdir, workdir_lib.TRAINABLE),
        traverse_util.unflatten_dict(
            {p: v for p, v in flat.items() if setup.plan.trainable(p)}, sep="/"
        ),
    )
  return extra


def write_results(
    config: ml_collections.ConfigDict,
    workdir: str,
    setup: Setup,
    trained: Trained,
    metrics: dict[str, float],
    extra: dict,
    start_time: float,
) -> dict:
  """results.json: the metrics, what trained and for how long, the task, model and compute."""
  total, trainable = setup.trainer.param_count(), setup.trainer.trainable_count()
  logging.info(
      "strategy %s: %s of %s parameters train (%.3f%%)",
      setup.plan.name,
      f"{trainable:,}",
      f"{total:,}",
      100 * trainable / total,
  )
  return workdir_lib.write_results(
      workdir,
      config,
      metrics,
      start_time=start_time,
      steps=int(trained.state.step),
      best_step=int(trained.best_step),
      stopped_early=bool(trained.selection.stopper.stopped_at),
      selection={
          "metric": f"validation/{trained.selection.stopper.metric}",
          "mode": trained.selection.stopper.mode,
      },
      strategy=setup.plan.name,
      parameters={"total": total, "trainable": trainable, "trainable_fraction": trainable / total},
      task=setup.task_record(config, trained),
      model=dataclasses.asdict(setup.model_cfg),
      tokenizer=setup.tokenizer.model_path,
      compute=compute_lib.summary(
          setup.trainer,
          trained.state,
          lambda: setup.step_batches(trained.train_iter),
          config.grad_accum_steps,
      ),
      **extra,
  )


def stored_bytes(params: Any, report: dict, plan: strategies.Plan, to_host: Callable) -> int:
  """The bytes the selected model takes stored as the run holds it: every parameter at its dtype
  or, where the strategy leaves it sparse (pruning), in sparse.py's form, less what a strategy's
  report entry stores quantized (`float_bytes` → `model_bytes`: qat's whole model, a QLoRA
  base), so a study can set score against storage. `to_host` is a collective."""
  flat = traverse_util.flatten_dict(params, sep="/")
  flat.update(to_host({p: v for p, v in flat.items() if plan.sparse(p)}))
  total = sparse.stored_bytes(flat, plan.sparse)
  for entry in report.values():
    if isinstance(entry, dict) and {"model_bytes", "float_bytes"} <= entry.keys():
      total += entry["model_bytes"] - entry["float_bytes"]
  return int(total)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Builds (every check), then trains, evaluates the best step and writes the run's outputs."""
  with prng_impl(config):
    start_time = time.time()
    setup = build(config, workdir)
    workdir_lib.prepare(workdir, config)  # the first write: every check above has passed
    if not config.init_from:
      tokenizer_lib.save_trained(setup.tokenizer, config.tokenizer, workdir)
    adaptation = adapt.run(config, workdir, setup.task_data())
    if adaptation:  # fine-tuning starts from the adapted weights
      source = pretrained_lib.load(adaptation["init_from"])
      state, report = initial_state(config, setup.trainer, setup.plan, source)
      setup = dataclasses.replace(setup, state=state, report=report)
    trained = train(config, workdir, setup)
    metrics = setup.selected_metrics(workdir, trained)
    extra = write_reusables(config, workdir, setup, trained)
    if adaptation:
      extra["adapt"] = adaptation
    extra.update(setup.plan.report(trained.best_params, setup.trainer.to_host))
    extra["model_bytes"] = stored_bytes(
        trained.best_params, extra, setup.plan, setup.trainer.to_host
    )
    if setup.distillation:
      extra["distillation"] = setup.distillation
    return write_results(config, workdir, setup, trained, metrics, extra, start_time)
