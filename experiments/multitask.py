"""Multi-task fine-tuning: one shared backbone, a head per task, the tasks' batches mixed at set
rates (lmreuse/tasks/mixture.py); every task evaluated on its own splits, the best step
selected by the mean of their headline metrics (or by one task's metric), or, with
config.task.selection=per_task, each task scored at its own best step.

  python run.py --config=configs/finetune.py --workdir=/tmp/ft_multi \
      --config.init_from=/tmp/bert_tiny \
      --config.task.name=wordnet_supersense+wordnet_relation --config.task.mixing=equal

`finetune.build` hands a `+`-joined config.task.name here; the MixtureSetup answers what
finetune's loop and outputs ask of a setup, so checkpoints, resumption, preemption, strategies,
continued pretraining and results.json work as they do for one task. Metrics carry the member's
name ("test/wordnet_relation/f1"); each member's predictions are in W/tasks/<member>/.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from experiments import finetune
from lmreuse import pretrained as pretrained_lib, strategies, tasks, workdir as workdir_lib
from lmreuse.data import sources
from lmreuse.models.config import TransformerConfig
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.tasks import mixture, types as task_types
from lmreuse.tasks.evaluation import EvalSet, Evaluator
from lmreuse.train.checkpoint import abstract_like
from lmreuse.train.early_stopping import EarlyStopping
from lmreuse.train.trainer import Program, Trainer, TrainState, check_batch


@dataclasses.dataclass
class Member:
  """One task of the mixture, built as its single-task run would be."""

  name: str
  config: ml_collections.ConfigDict  # the run's config with this member's config.task
  data: sources.TaskData
  task: tasks.TaskType
  module: nn.Module
  program: Program  # its single-task program, on `mixture.view(params, name)`
  eval_sets: dict[str, EvalSet]
  headline: tuple[str, float]  # the type's headline metric and its points per unit (the mean's)
  evaluator: Evaluator | None = None  # once the mixture's trainer exists


@dataclasses.dataclass
class MixtureSetup:
  """What finetune.run asks of a setup, for a mixture of tasks."""

  members: dict[str, Member]
  shares: dict[str, float]  # each member's share of the training steps
  trainer: Trainer
  state: TrainState
  report: dict | None
  stopper: EarlyStopping
  tokenizer: Any
  model_cfg: TransformerConfig
  plan: strategies.Plan
  # config.task.selection="per_task": each member's rule for its own best step (else None).
  member_rules: dict[str, EarlyStopping] | None = None
  distillation: None = None

  def validation_scores(self, params: Any) -> dict[str, float]:
    member_scores = {
        name: m.evaluator(params, m.eval_sets["validation"])[0] for name, m in self.members.items()
    }
    return mixture.scores(member_scores, self._headlines())

  def selection(self, workdir: str, resume_step: int) -> finetune.Selection:
    if self.member_rules is None:
      return finetune.Selection(workdir, self, resume_step)
    return PerTaskSelection(workdir, self, resume_step)

  def _headlines(self) -> dict[str, tuple[str, float]]:
    return {name: m.headline for name, m in self.members.items()}

  def _batches(self, member: Member):
    return finetune.task_batches(member.config, member.data, member.task, self.trainer)

  def train_batches(self, config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
    del config  # each member's batches follow its own config (the run's, its task's keys)
    datasets = {name: self._batches(m) for name, m in self.members.items()}
    return iter(mixture.mixed(datasets, self.shares))

  def labels_record(self) -> dict | None:
    labels = {n: m.data.labels for n, m in self.members.items() if m.data.labels is not None}
    return {"labels": labels} if labels else None

  def task_data(self) -> list[sources.TaskData]:
    return [m.data for m in self.members.values()]

  def selected_metrics(self, workdir: str, trained: finetune.Trained) -> dict[str, float]:
    """Each member's validation metrics at its selected step (the joint one, or its own), its
    test and extra sets' metrics there under its name, and the members' mean of each split
    ("validation/mean", "test/mean"); its predictions in W/tasks/<member>/."""
    results = {}
    for name, m in self.members.items():
      directory = member_dir(workdir, name)
      step, params, validation = _selected(trained, name, directory)
      results.update({f"validation/{k}": v for k, v in validation.items()})
      scores = finetune.score_selected(directory, m.evaluator, m.task, m.eval_sets, params)
      for k, v in scores.items():
        split, metric = k.split("/", 1)
        results[f"{split}/{name}/{metric}"] = v
      logging.info("%s: selected step %d", name, step)
    for split in ("validation", "test"):
      if split == "validation" or all(split in m.eval_sets for m in self.members.values()):
        scores = {n: {h: results[f"{split}/{n}/{h}"]} for n, (h, _) in self._headlines().items()}
        results[f"{split}/{mixture.MEAN}"] = mixture.mean_points(scores, self._headlines())
    logging.info("best step %d: %s", trained.best_step, results)
    return results

  def task_record(self, config: ml_collections.ConfigDict, trained: finetune.Trained) -> dict:
    """results.json's "task": the mixture's name, mixing and selection, and each member's own
    record (with config.task.selection="per_task", its selected step and rule)."""
    per_task = {}
    if isinstance(trained.selection, PerTaskSelection):
      per_task = trained.selection.member_steps(trained.best_step)
    return {
        "name": config.task.name,
        "type": "multitask",
        "mixing": config.task.mixing,
        "mixing_temperature": config.task.mixing_temperature,
        "selection": {
            "metric": self.stopper.metric,
            "mode": self.stopper.mode,
            "per_task": config.task.selection == "per_task",
        },
        "members": {
            name: {
                **finetune.task_summary(m.data, m.eval_sets),
                "share": self.shares[name],
                **per_task.get(name, {}),
            }
            for name, m in self.members.items()
        },
    }

  def step_batches(self, train_iter: Iterator) -> list[tuple[dict[str, np.ndarray], float]]:
    """One batch of each member (from a fresh pipeline) and its share of the steps."""
    del train_iter  # the next batch is one member's only
    return [
        (mixture.prefixed(name, next(iter(self._batches(m)))), self.shares[name])
        for name, m in self.members.items()
    ]


class PerTaskSelection(finetune.Selection):
  """config.task.selection="per_task": besides the run's selected model (by
  config.early_stopping.metric, which then no longer stops the run), each member's own best
  step on its headline metric, its parameters and record in W/tasks/<member>/ as a single-task
  run keeps them in its workdir. The run stops early once every member has gone
  config.early_stopping.patience evaluations without improving."""

  def __init__(self, workdir: str, setup: MixtureSetup, resume_step: int):
    super().__init__(workdir, setup, resume_step)
    self.members = {
        name: finetune.BestRecord(member_dir(workdir, name), rule, resume_step, self.timers)
        for name, rule in setup.member_rules.items()
    }

  def after_eval(self, step: int, state: TrainState, scores: dict[str, float]) -> bool:
    if step < self.first_step:
      return False
    metrics = finetune.unprefixed(scores)
    # Every record sees the evaluation: no short-circuit.
    stops = [record.update(step, state.params, metrics) for record in self.members.values()]
    stop = all(stops)
    if stop:
      self.stopper.stopped_at = step  # the joint rule has no patience of its own
    self.record.update(step, state.params, metrics)
    return stop

  def member_steps(self, joint_step: int) -> dict[str, dict]:
    """Each member's selected step and the rule that chose it, for results.json (the joint
    step where no evaluation was kept)."""
    out = {}
    for name, record in self.members.items():
      best = record.stopper.best
      out[name] = {
          "selected_step": joint_step if best is None else best[0],
          "selection": {
              "metric": f"validation/{record.stopper.metric}",
              "mode": record.stopper.mode,
          },
      }
    return out

  def close(self) -> None:
    super().close()
    for record in self.members.values():
      record.checkpointer.close()


def member_dir(workdir: str, name: str) -> str:
  """W/tasks/<member key>/: the member's predictions and, selected per task, its best step."""
  return os.path.join(workdir, workdir_lib.TASKS, mixture.key(name))


def _selected(trained: finetune.Trained, name: str, directory: str) -> tuple[int, Any, dict]:
  """(step, parameters, validation metrics "<member>/<metric>") at which member `name` is
  scored: its own best step when selected per task and one was kept, else the joint one."""
  prefix = f"{name}/"
  if isinstance(trained.selection, PerTaskSelection):
    step, params = finetune.restore_selected(directory, abstract_like(trained.best_params))
    if step is not None:
      own = trained.selection.members[name].stopper.best_metrics
      return step, params, {k: v for k, v in own.items() if k.startswith(prefix)}
  joint = trained.selection.stopper.best_metrics
  return (
      trained.best_step,
      trained.best_params,
      {k: v for k, v in joint.items() if k.startswith(prefix)},
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """What a mixture refuses beyond a single-task run's checks."""
  finetune.validate(config)
  mixture.validate(config.task)
  if finetune.teacher_dir(config):
    raise ValueError(
        "config.distill.teacher: distillation is for single-task runs; config.task.name="
        f"{config.task.name!r} is a multi-task mixture"
    )
  if config.viz.enabled:
    raise ValueError(
        "config.viz.enabled: the representation plots are for single-task runs; "
        f"config.task.name={config.task.name!r} is a multi-task mixture"
    )


def member_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The run's config as member `name`'s single-task run would have it."""
  member = copy.deepcopy(config)
  member.task = mixture.member_task(config.task, name)
  return member


def _member(
    name: str,
    config: ml_collections.ConfigDict,
    data: sources.TaskData,
    plan: strategies.Plan,
    model_cfg: TransformerConfig,
    tokenizer: Any,
) -> Member:
  """Member `name`'s task, model and program, as its single-task run would build them (its
  evaluator comes once the mixture's trainer exists)."""
  task, module, example = finetune.task_and_module(config, data, plan, model_cfg, tokenizer)
  return Member(
      name=name,
      config=config,
      data=data,
      task=task,
      module=module,
      program=finetune.make_program(task, module, example),
      eval_sets=finetune.eval_sets_of(config, task, data),
      headline=headline_points(data.task_type),
  )


def build(config: ml_collections.ConfigDict, workdir: str) -> MixtureSetup:
  """Validates and builds a multi-task run; raises on any bad input without writing outputs."""
  validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  check_batch(config, mesh, rules)
  source = pretrained_lib.load(config.init_from) if config.init_from else None
  model_cfg, tokenizer = finetune.model_and_tokenizer(config, workdir, source)
  names = mixture.members(config.task.name)
  configs = {name: member_config(config, name) for name in names}
  datas = {name: finetune.load_data(c) for name, c in configs.items()}
  plans = {name: finetune.make_plan(config, model_cfg, d.task_type) for name, d in datas.items()}
  plan = plans[names[0]]  # answers per path, as every member's plan does
  model_cfg = plan.model(model_cfg)
  model_cfg.validate()
  members = {
      name: _member(name, configs[name], datas[name], plans[name], model_cfg, tokenizer)
      for name in names
  }
  shares = mixture.rates(
      {name: len(data.splits["train"]) for name, data in datas.items()},
      config.task.mixing,
      config.task.mixing_temperature,
  )
  program = mixture.program({n: m.program for n, m in members.items()}, shares)
  trainer = finetune.make_trainer(config, plan, program, mesh, rules)
  check_members(plans, trainer.abstract_params)
  for name, m in members.items():
    m.evaluator = Evaluator(
        trainer,
        m.task,
        m.module,
        config.batch_size,
        loss_fn=m.program.loss_fn,
        params_of=functools.partial(mixture.view, member=name),
    )
  metric, mode = mixture.selection(
      config.early_stopping.metric,
      config.early_stopping.mode,
      {n: (m.headline[0], task_types.get(m.data.task_type).mode) for n, m in members.items()},
  )
  state, report = finetune.initial_state(config, trainer, plan, source)
  patience = config.early_stopping.patience
  member_rules = None
  if config.task.selection == "per_task":
    member_rules = {
        name: EarlyStopping(
            f"{name}/{m.headline[0]}", task_types.get(m.data.task_type).mode, patience
        )
        for name, m in members.items()
    }
    patience = 0  # the members' patience stops the run (PerTaskSelection)
  return MixtureSetup(
      members=members,
      shares=shares,
      trainer=trainer,
      state=state,
      report=report,
      stopper=EarlyStopping(metric, mode, patience),
      tokenizer=tokenizer,
      model_cfg=model_cfg,
      plan=plan,
      member_rules=member_rules,
  )


def headline_points(task_type: str) -> tuple[str, float]:
  """The task type's headline metric and its points per unit (100 for a fraction)."""
  spec = task_types.get(task_type)
  return spec.headline, 100.0 if spec.fraction_scores else 1.0


def check_members(plans: dict[str, strategies.Plan], abstract_params: Any) -> None:
  """Each member's strategy checks on its own model's paths (the backbone and its head), with
  its own task type (prompt tuning refuses decoder-only seq2seq, LP-FT needs a head)."""
  paths = list(traverse_util.flatten_dict(abstract_params, sep="/"))
  backbone = [p for p in paths if p.startswith(f"{mixture.BACKBONE}/")]
  for name, plan in plans.items():
    prefix = f"{mixture.key(name)}/"
    plan.check(backbone + [p[len(prefix) :] for p in paths if p.startswith(prefix)])
