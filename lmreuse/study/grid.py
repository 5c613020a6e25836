"""A study's grid: which child runs exist, what each one's config is, which to run now.

Cells are ordinary workdirs under W/runs/<name>/. Names are readable and stable (task, init,
strategy, data fraction, swept hyperparameters, seed), so a re-run finds its earlier cells, a
sweep can address them by glob, and a results table can link back to a run.

Hyperparameter sweeps: `study.sweep` maps fine-tuning config keys to candidate tuples (empty =
not swept) and `study.strategy_sweeps[strategy]` replaces some of them for one strategy;
`study.init_lr_scale` ("NAME=FACTOR") shifts one init's learning rates (a 22M-parameter model
trains best at a tenth of a tiny one's rates). The candidates are crossed, and every
configuration is a cell per seed. Which configuration a
table reports is chosen on validation (lmreuse/study/selection.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import os
from typing import Any

import ml_collections

from lmreuse import pretrained, strategies, workdir as workdir_lib
from lmreuse.study.results import ADAPTED, NO_COMPRESSION, compressed, split_compressed

SCRATCH = "scratch"
SELECTIONS = ("all", "first_seed")
# Keys the grid itself sets per cell: a sweep over them would fight the grid's own axes.
_GRID_KEYS = (
    "seed",
    "init_from",
    "from_scratch",
    "adapt.steps",
    "strategy.name",
    "task.name",
    "task.train_fraction",
    "experiment",
    "overwrite",
)


@dataclasses.dataclass(frozen=True)
class Cell:
  index: int
  name: str
  kind: str  # pretrain | finetune | compress
  workdir: str  # relative to the study workdir
  depends_on: str | None  # the cell whose workdir it reads: pretraining, or the fine-tuned cell
  group: dict  # what the tables group by (seeds are averaged)
  seed: int = 0
  hparams: dict = dataclasses.field(default_factory=dict)  # swept config keys → this cell's


@dataclasses.dataclass(frozen=True)
class Init:
  """One way a fine-tuning cell starts: a preset the study pretrains, an existing checkpoint,
  the random-weights twin (same architecture and tokenizer) of one of those, or one of those
  with its pretraining continued on the task's text first (config.adapt)."""

  name: str
  preset: str | None  # the pretraining preset whose cell it reads
  checkpoint: str | None  # init_from of an existing model ("hf:DIR" or a workdir)
  twin_of: str | None = None  # for a from-scratch init: the pretrained init it mirrors
  adapt_steps: int = 0  # config.adapt.steps of its cells
  adapted_from: str | None = None  # for an adapted init: the init it continues

  @property
  def model(self) -> str:
    """The init whose weights (or architecture, for a twin) it starts from."""
    return self.twin_of or self.adapted_from or self.name


def _slug(text: str) -> str:
  return text.replace("/", "_").replace(",", "+")


def checkpoints(study: Any) -> dict[str, str]:
  """`study.checkpoints` entries "NAME=hf:DIR" or "NAME=WORKDIR" as {NAME: init_from}: existing
  models (Hugging Face or earlier runs) fine-tuned beside the study's own pretraining."""
  out: dict[str, str] = {}
  for entry in study.checkpoints:
    name, sep, path = entry.partition("=")
    if not (sep and name and path) or "." in name or "/" in name:
      raise ValueError(
          f"config.study.checkpoints entry {entry!r}: write NAME=hf:DIR or "
          "NAME=WORKDIR, NAME without '.' or '/' (it names the cells)"
      )
    if name in out or name in study.pretrain or name.endswith(SCRATCH):
      raise ValueError(
          f"config.study.checkpoints: the name {name!r} is taken (pretraining "
          f"presets {tuple(study.pretrain)}, scratch inits, other checkpoints)"
      )
    directory = path.removeprefix(pretrained.HF_PREFIX)
    if not os.path.isdir(directory):  # before any cell runs, not in each
      raise FileNotFoundError(
          f"config.study.checkpoints entry {entry!r}: {directory} is not a " "directory"
      )
    out[name] = path
  return out


def inits(study: Any) -> list[Init]:
  """The pretraining presets, the existing checkpoints, then (with `from_scratch`) the
  from-scratch twin of each: "scratch" when the grid holds one model, else "<name>-scratch"."""
  models = [Init(p, p, None) for p in study.pretrain]
  models += [Init(name, None, path) for name, path in checkpoints(study).items()]
  steps_of_adapted = adapt_steps(study, models)
  adapted = [
      dataclasses.replace(
          model, name=f"{model.name}{ADAPTED}{steps}", adapt_steps=steps, adapted_from=model.name
      )
      for model in models
      for steps in steps_of_adapted
  ]
  twins = []
  if study.from_scratch:
    for model in models:
      name = SCRATCH if len(models) == 1 else f"{model.name}-{SCRATCH}"
      twins.append(dataclasses.replace(model, name=name, twin_of=model.name))
  return models + adapted + twins


def adapt_steps(study: Any, models: list[Init]) -> tuple[int, ...]:
  """`study.adapt_steps` without 0 (the models themselves): each is an adapted init per model,
  whose cells continue its pretraining on the task's text for that many steps first."""
  entries = tuple(study.get("adapt_steps", ()))
  for steps in entries:
    if not isinstance(steps, int) or steps < 0 or entries.count(steps) > 1:
      raise ValueError(
          f"config.study.adapt_steps={entries}: give distinct step counts >= 0, e.g. (0, 500)"
      )
  steps = tuple(s for s in entries if s)
  imported = [m.name for m in models if (m.checkpoint or "").startswith(pretrained.HF_PREFIX)]
  if steps and imported:
    raise ValueError(
        f"config.study.adapt_steps={entries}: the imported checkpoints {imported} have no "
        "pretraining objective to continue (pretrain from them with configs/pretrain.py and "
        "list that workdir instead)"
    )
  return steps


def _flat(section: Any) -> dict[str, Any]:
  flat = {}
  for key, value in section.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      flat[key] = value
  return flat


def snap(rates: tuple[float, ...], factor: float) -> tuple[float, ...]:
  """`rates` × `factor`, each snapped to the nearest rung of the 1-3-10 ladder (in log space)
  that learning rates are swept on, so cell names stay readable."""
  out = []
  for rate in rates:
    target = math.log10(rate * factor)
    rungs = [
        m * 10.0**e for e in range(math.floor(target) - 1, math.floor(target) + 2) for m in (1, 3)
    ]
    out.append(float(f"{min(rungs, key=lambda r: abs(math.log10(r) - target)):.1g}"))
  return tuple(out)


def lr_scales(study: Any) -> dict[str, float]:
  """`study.init_lr_scale` entries "NAME=FACTOR" as {init name: factor}, for every init: a
  from-scratch twin takes its model's factor (same architecture and size) unless named
  itself, and so does an adapted init; inits not named keep 1."""
  names = {init.name: init for init in inits(study)}
  given: dict[str, float] = {}
  for entry in study.get("init_lr_scale", ()):
    name, sep, factor = entry.partition("=")
    where = f"config.study.init_lr_scale entry {entry!r}"
    if not sep or name not in names:
      raise ValueError(f"{where}: write NAME=FACTOR with NAME one of the inits {sorted(names)}")
    try:
      given[name] = float(factor)
    except ValueError:
      raise ValueError(f"{where}: {factor!r} is not a number") from None
    if not given[name] > 0:
      raise ValueError(f"{where}: the factor must be positive")
  return {name: given.get(name, given.get(init.model, 1.0)) for name, init in names.items()}


def sweep_of(study: Any, strategy: str, init: str | None = None) -> dict[str, tuple]:
  """The swept keys of one strategy's cells, dotted → candidates: `study.sweep`, with the
  non-empty entries of `study.strategy_sweeps[strategy]` replacing the same keys, and the
  learning rates of `init` scaled by its `study.init_lr_scale` factor."""
  space = {k: tuple(v) for k, v in _flat(study.sweep).items() if v}
  if strategy in study.strategy_sweeps:
    space.update({k: tuple(v) for k, v in _flat(study.strategy_sweeps[strategy]).items() if v})
  factor = lr_scales(study)[init] if init is not None else 1.0
  if factor != 1.0 and "learning_rate" in space:
    space["learning_rate"] = snap(space["learning_rate"], factor)
  return dict(sorted(space.items()))


def configurations(space: dict[str, tuple]) -> list[dict[str, Any]]:
  """Every combination of the candidates, in the order they are listed ({} when not swept)."""
  return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def _format(value: Any) -> str:
  return f"{value:g}" if isinstance(value, float) else _slug(str(value))


def name_part(hparams: dict[str, Any]) -> str:
  """'learning_rate=0.003+rank=4' in a cell name: leaf names (the full key where two leaves
  share a name)."""
  leaves = [key.rsplit(".", 1)[-1] for key in hparams]
  return "+".join(
      f"{leaf if leaves.count(leaf) == 1 else key}={_format(value)}"
      for leaf, (key, value) in zip(leaves, hparams.items())
  )


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, leaf = key.split(".")
  target = config
  for parent in parents:
    target = target[parent]
  if leaf not in target:
    raise KeyError(key)
  target[leaf] = value


def compressions(study: Any) -> tuple[str, ...]:
  """`study.compress`'s post-training methods (configs/compress.py presets), without 'none' (the
  float cells, which every compressed cell starts from)."""
  return tuple(m for m in study.get("compress", ()) if m != NO_COMPRESSION)


def check_compress(config: ml_collections.ConfigDict) -> None:
  """Every `study.compress` entry is a configs/compress.py preset, listed once, and none
  quantizes the activations of a seq2seq task (its generation decodes in float)."""
  from configs import compress, finetune
  from lmreuse.data.sources import wordnet_tasks
  from lmreuse.tasks import mixture

  entries = tuple(config.study.get("compress", ()))
  known = (NO_COMPRESSION, *compress.PRESETS)
  for method in entries:
    if method not in known or entries.count(method) > 1:
      why = "is listed twice" if method in known else f"is not one of {known}"
      raise ValueError(f"config.study.compress entry {method!r} {why}")
  child = finetune.get_config()
  child.update(config.finetune.to_dict())
  for task in config.study.tasks:
    if compressions(config.study) and mixture.is_mixture(task):
      raise ValueError(
          f"config.study.compress: task {task!r} is a multi-task mixture, which compression "
          "(configs/compress.py) does not take; list the mixture in a study without compress"
      )
    task_type = wordnet_tasks.TASK_TYPE_OF.get(task, child.task.type)
    for method in compressions(config.study):
      if task_type == "seq2seq" and compress.PRESETS[method]["activations"]:
        raise ValueError(
            f"config.study.compress entry {method!r} quantizes activations, which seq2seq task "
            f"{task!r} cannot use (its generation decodes in float): use int8w or int4w"
        )


def check_sweeps(config: ml_collections.ConfigDict) -> None:
  """Every swept key exists in the fine-tuning config and every candidate fits its type, before
  any cell runs; the error names the config key at fault."""
  from configs import finetune

  study = config.study
  if study.selection not in SELECTIONS:
    raise ValueError(f"config.study.selection={study.selection!r}: choose one of {SELECTIONS}")
  entries = [("config.study.sweep", study.sweep)]
  for name, entry in study.strategy_sweeps.items():
    try:
      strategies.own_keys(name)
    except ValueError as e:
      raise ValueError(f"config.study.strategy_sweeps.{name}: {e}") from e
    entries.append((f"config.study.strategy_sweeps.{name}", entry))
  child = finetune.get_config()  # each candidate overwrites the last; the types stay
  child.update(config.finetune.to_dict())
  for prefix, entry in entries:
    for key, candidates in _flat(entry).items():
      where = f"{prefix}.{key}"
      if key in _GRID_KEYS:
        raise ValueError(
            f"{where}: the study sets {key} itself (seeds, inits, strategies and "
            "tasks are the grid's own axes)"
        )
      if not isinstance(candidates, (tuple, list)):
        raise ValueError(f"{where}={candidates!r}: give a tuple of candidates, e.g. (1e-3,)")
      if len(set(map(repr, candidates))) != len(candidates):
        raise ValueError(f"{where}={tuple(candidates)}: a candidate is listed twice")
      for value in candidates:
        try:
          _set(child, key, value)
        except KeyError:
          raise ValueError(
              f"{where}: {key} is not a fine-tuning config key " "(configs/finetune.py)"
          ) from None
        except (TypeError, ValueError) as e:
          raise ValueError(f"{where}: candidate {value!r} does not fit {key}: {e}") from None
  for init in inits(study):  # a factor that merges two learning rates would run one twice
    for strategy in study.strategies:
      rates = sweep_of(study, strategy, init.name).get("learning_rate", ())
      if len(set(rates)) != len(rates):
        raise ValueError(
            f"config.study.init_lr_scale: {init.name}'s factor maps {strategy}'s learning "
            f"rates onto {rates}, a rate twice; give a factor of the 1-3-10 ladder (0.1, 0.3, 3)"
        )


def expand(study: Any) -> list[Cell]:
  """Pretraining cells first (fine-tuning cells depend on them), then the fine-tuning grid. A
  group's seeds run in order and each seed's configurations together, so under
  `selection='first_seed'` the first seed's sweep finishes before the later seeds need it."""
  cells: list[Cell] = []

  def add(name, kind, depends_on, group, seed=0, hparams=None):
    cells.append(
        Cell(
            len(cells),
            name,
            kind,
            f"{workdir_lib.RUNS}/{name}",
            depends_on,
            group,
            seed,
            dict(hparams or {}),
        )
    )

  for preset in study.pretrain:
    add(f"pretrain-{preset}", "pretrain", None, {"objective": preset})
  fraction_in_names = len(study.train_fractions) > 1
  for task in study.tasks:
    for init in inits(study):
      pretraining = f"pretrain-{init.preset}" if init.preset else None
      for strategy in study.strategies:
        swept = configurations(sweep_of(study, strategy, init.name))
        labels = [strategy] + [compressed(strategy, m) for m in compressions(study)]
        for fraction in study.train_fractions:
          fraction_part = [f"data{fraction:g}"] if fraction_in_names else []
          for seed in study.seeds:
            # Each seed's float cells, then the same cells compressed: a first-seed sweep of
            # both is done before a later seed's cell has to know which configuration won.
            for label in labels:
              for hparams in swept:
                name = [_slug(task), init.name, _slug(label), *fraction_part]
                name += [name_part(hparams)] if hparams else []
                float_cell = ".".join(name[:2] + [_slug(strategy)] + name[3:] + [f"seed{seed}"])
                add(
                    ".".join(name + [f"seed{seed}"]),
                    "finetune" if label == strategy else "compress",
                    pretraining if label == strategy else float_cell,
                    {
                        "task": task,
                        "init": init.name,
                        "strategy": label,
                        "train_fraction": float(fraction),
                    },
                    seed,
                    hparams,
                )
  return cells


def select(cells: list[Cell], only: str) -> list[Cell]:
  """All cells, or those `only` names: an index or a glob over names."""
  if not only:
    return cells
  if only.isdigit():
    if int(only) >= len(cells):
      raise ValueError(f"config.study.only={only}: the grid has cells 0..{len(cells) - 1}")
    return [cells[int(only)]]
  chosen = [c for c in cells if fnmatch.fnmatch(c.name, only)]
  if not chosen:
    raise ValueError(
        f"config.study.only={only!r} matches no cell; names look like "
        f"{[c.name for c in cells[:3]]}"
    )
  return chosen


def child_config(
    cell: Cell, config: ml_collections.ConfigDict, study_dir: str
) -> ml_collections.ConfigDict:
  """The cell's own config: the recipe's defaults, the study's overrides, the cell's values."""
  from configs import compress, finetune, pretrain

  if cell.kind == "compress":
    child = compress.get_config(split_compressed(cell.group["strategy"])[1])
    child.init_from = os.path.join(study_dir, workdir_lib.RUNS, cell.depends_on)
    return child
  if cell.kind == "pretrain":
    child = pretrain.get_config(f"{cell.group['objective']},size={config.study.size}")
    child.update(config.pretrain.to_dict())
    return child
  init = next(i for i in inits(config.study) if i.name == cell.group["init"])
  child = finetune.get_config()
  child.update(config.finetune.to_dict())
  child.init_from = (
      os.path.join(study_dir, workdir_lib.RUNS, cell.depends_on)
      if cell.depends_on
      else init.checkpoint
  )
  child.from_scratch = init.twin_of is not None
  child.adapt.steps = init.adapt_steps
  child.task.name = cell.group["task"]
  child.task.train_fraction = cell.group["train_fraction"]
  child.strategy.name = cell.group["strategy"]
  child.seed = cell.seed
  for key, value in cell.hparams.items():
    _set(child, key, value)
  return child


def status(study_dir: str, cell: Cell) -> str:
  """finished (results.json) | failed (error.txt) | pending."""
  workdir = os.path.join(study_dir, cell.workdir)
  if os.path.exists(os.path.join(workdir, workdir_lib.RESULTS)):
    return "finished"
  return "failed" if os.path.exists(os.path.join(workdir, workdir_lib.ERROR)) else "pending"


def write_manifest(study_dir: str, config: ml_collections.ConfigDict, cells: list[Cell]) -> str:
  """W/study.json: the cells, which scratch init mirrors which model, and how configurations
  are selected; the aggregation reads only this and the cells' own workdirs."""
  study = config.study
  path = os.path.join(study_dir, workdir_lib.STUDY)
  workdir_lib.write_json(
      path,
      {
          "name": study.name,
          "selection": study.selection,
          "seeds": list(study.seeds),
          "bootstrap_resamples": study.bootstrap_resamples,
          "twins": {i.name: i.twin_of for i in inits(study) if i.twin_of},
          "adapted": {i.name: i.adapted_from for i in inits(study) if i.adapted_from},
          "cells": [dataclasses.asdict(c) for c in cells],
      },
  )
  return path
