"""Multi-task mixtures: several downstream tasks fine-tune one shared backbone, each through its
own head, their batches mixed at set rates (T5's mixtures, Raffel et al. 2020; MT-DNN, Liu et
al. 2019).

`config.task.name` joins the member tasks with "+" ("wordnet_supersense+wordnet_relation"). Each
member is configured as a single-task run would be: config.task's keys, overridden by its own
sub-config `config.task.members.<name>` (a local file's paths, type and columns).

Parameters are {"backbone": shared, key(member): that member's head}. A member's model reads
`view(params, member)`, which is exactly a single-task model's tree, so pretrained checkpoints
load by path and strategies, which answer by path, treat every member's head as a head.

Each step trains one member on one of its batches, whose keys carry the member's `key`
("wordnet_relation/inputs"): jit specialises on the keys, so each member gets its own compiled
step, and the mixture's loss picks the member's loss while tracing. Members' batches follow
`rates`, interleaved deterministically by grain's `mix` (T5 draws each batch at random: the same
rates, here without sampling noise in how many steps each member gets).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np
from flax import traverse_util

from lmreuse.train.early_stopping import default_mode
from lmreuse.train.trainer import Program

SEPARATOR = "+"
BACKBONE = "backbone"
MIXINGS = ("proportional", "equal", "temperature")
SELECTIONS = ("joint", "per_task")
# config.task's, not a member's
MIXTURE_KEYS = ("members", "mixing", "mixing_temperature", "selection")
# The summary metric over members that selects the best step by default: the mean of their
# headline metrics (lmreuse/tasks/types.py) in points.
MEAN = "mean"


def is_mixture(task_name: str) -> bool:
  return SEPARATOR in task_name


def key(member: str) -> str:
  """A member's key in the parameter tree and in batches: its name without "/" ("glue/sst2"),
  which parameter paths use as their separator."""
  return member.replace("/", "__")


def members(task_name: str) -> list[str]:
  """The member task names of `task_name`, in order."""
  names = [n.strip() for n in task_name.split(SEPARATOR)]
  keys = [key(n) for n in names]
  duplicates = sorted({n for n, k in zip(names, keys) if keys.count(k) > 1})
  if not all(names) or duplicates or BACKBONE in names or MEAN in names:
    raise ValueError(
        f"config.task.name={task_name!r}: a multi-task name joins distinct, non-empty task "
        f"names with {SEPARATOR!r} (not {BACKBONE!r} or {MEAN!r})"
        + (f"; repeated: {duplicates}" if duplicates else "")
    )
  return names


def member_task(task: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """config.task for member `name`: the mixture's keys, then config.task.members.<name>'s."""
  overrides = dict((task.get("members") or {}).get(name) or {})
  member = ml_collections.ConfigDict(
      {k: v for k, v in task.to_dict().items() if k not in MIXTURE_KEYS}
  )
  unknown = sorted(set(overrides) - set(member))
  if unknown:
    raise ValueError(
        f"config.task.members.{name}: {unknown} are not config.task keys; they are "
        f"{sorted(member)}"
    )
  member.update(overrides)
  member.name = name
  return member


def config_defaults() -> dict[str, Any]:
  """config.task's mixture keys (lmreuse/tasks/mixture.py)."""
  return {
      # Per-member overrides of config.task's keys, by member name (a config file sets them:
      # members = {"mine": {"type": "classification", "train_path": ...}}).
      "members": ml_collections.ConfigDict(),
      # How often each member trains: in proportion to its training examples, equally, or in
      # proportion to examples^(1/mixing_temperature) (T5's temperature-scaled mixing).
      "mixing": "proportional",
      "mixing_temperature": 2.0,
      # Which step each member is scored at: "joint", the one step config.early_stopping.metric
      # selects (the members' mean by default); or "per_task", each member at its own best
      # validation step of its headline metric, kept in W/tasks/<member>/best/ (the run's
      # model is still the joint selection's; the run stops early once every member's patience
      # has run out).
      "selection": "joint",
  }


def validate(task: ml_collections.ConfigDict) -> None:
  names = members(task.name)
  mixing = task.get("mixing", "proportional")
  if mixing not in MIXINGS:
    raise ValueError(f"config.task.mixing={mixing!r} must be one of {MIXINGS}")
  if mixing == "temperature" and not task.mixing_temperature > 0:
    raise ValueError(f"config.task.mixing_temperature={task.mixing_temperature} must be positive")
  selection = task.get("selection", SELECTIONS[0])
  if selection not in SELECTIONS:
    raise ValueError(f"config.task.selection={selection!r} must be one of {SELECTIONS}")
  stray = sorted(set(task.get("members") or {}) - set(names))
  if stray:
    raise ValueError(
        f"config.task.members has {stray}, which config.task.name={task.name!r} does not name"
    )


def rates(sizes: Mapping[str, int], mixing: str, temperature: float = 1.0) -> dict[str, float]:
  """Each member's share of the training steps, from its number of training examples."""
  if mixing not in MIXINGS:
    raise ValueError(f"config.task.mixing={mixing!r} must be one of {MIXINGS}")
  exponent = {"proportional": 1.0, "equal": 0.0, "temperature": 1.0 / temperature}[mixing]
  weights = {name: float(n) ** exponent for name, n in sizes.items()}
  total = sum(weights.values())
  return {name: w / total for name, w in weights.items()}


def view(params: Mapping[str, Any], member: str) -> dict[str, Any]:
  """Member `member`'s parameters as its single-task model has them."""
  return {BACKBONE: params[BACKBONE], **params.get(key(member), {})}


def combine(trees: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The mixture's parameters from each member's single-task tree: one backbone (their union:
  a T5 classifier reads the encoder only, a seq2seq member the decoder too), each head under
  its member's key; a member without a head (seq2seq: its LM head is the backbone's) has none."""
  backbone: dict[str, Any] = {}
  for tree in trees.values():
    for path, leaf in traverse_util.flatten_dict(tree[BACKBONE]).items():
      backbone.setdefault(path, leaf)
  combined = {BACKBONE: traverse_util.unflatten_dict(backbone)}
  for name, tree in trees.items():
    head = {k: v for k, v in tree.items() if k != BACKBONE}
    if head:  # an empty subtree would have no leaves for masks and shardings to follow
      combined[key(name)] = head
  return combined


def prefixed(member: str, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f"{key(member)}/{k}": v for k, v in batch.items()}


def split(batch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(member key, its batch) of a mixture batch."""
  keys = {k.split("/", 1)[0] for k in batch}
  if len(keys) != 1:
    raise ValueError(f"a mixture batch holds one member's features, not {sorted(keys)}")
  return keys.pop(), {k.split("/", 1)[1]: v for k, v in batch.items()}


def program(programs: Mapping[str, Program], shares: Mapping[str, float]) -> Program:
  """The mixture's Program from its members' single-task ones; a step's loss is its member's,
  and its metric pairs carry the member's name. Tokens per example are the members' mean at
  their `shares` of the steps."""

  def init_params(rng):
    return combine({name: p.init_params(rng) for name, p in programs.items()})

  by_key = {key(name): (name, p) for name, p in programs.items()}

  def loss_fn(params, batch, rng, train):
    member_key, own = split(batch)
    name, member = by_key[member_key]
    loss, pairs = member.loss_fn(view(params, name), own, rng, train)
    return loss, {f"{name}/{k}": v for k, v in pairs.items()}

  tokens = sum(shares[name] * p.tokens_per_example for name, p in programs.items())
  return Program(init_params=init_params, loss_fn=loss_fn, tokens_per_example=round(tokens))


def mixed(datasets: Mapping[str, grain.IterDataset], shares: Mapping[str, float]):
  """One endless, checkpointable stream of the members' batches at `shares`, keys prefixed."""
  named = {name: ds.map(functools.partial(prefixed, name)) for name, ds in datasets.items()}
  return grain.IterDataset.mix(named, dict(shares))


def selection(metric: str, mode: str, headlines: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
  """(metric, mode) that select a mixture's best step from config.early_stopping's ('' =
  defaults) and each member's (headline metric, mode): by default `MEAN`, the members'
  headline metrics averaged; or one member's metric ("wordnet_relation/f1"), by default
  maximised unless it is a loss."""
  metric = metric or MEAN
  if metric != MEAN and not any(metric.startswith(f"{name}/") for name in headlines):
    raise ValueError(
        f"config.early_stopping.metric={metric!r}: a multi-task run selects by {MEAN!r} or by "
        f"one member's metric, '<member>/<metric>' with a member of {sorted(headlines)}"
    )
  if metric == MEAN and not mode:
    modes = {m for _, m in headlines.values()}
    if len(modes) > 1:
      raise ValueError(
          f"the members' headline metrics {dict(headlines)} disagree on whether higher is "
          "better: set config.early_stopping.metric (e.g. one member's) or .mode"
      )
    mode = modes.pop()
  return metric, mode or default_mode(metric.rsplit("/", 1)[1])


def scores(
    member_scores: Mapping[str, Mapping[str, float]], headlines: Mapping[str, tuple[str, float]]
) -> dict[str, float]:
  """Every member's metrics under its name, and `MEAN` of their headline metrics, each
  (metric, points) in points: ×100 for a fraction, as the study tables show them (accuracy next
  to SQuAD F1 and BLEU, which are 0-100 already; GLUE's average is taken the same way)."""
  out = {f"{name}/{k}": v for name, s in member_scores.items() for k, v in s.items()}
  out[MEAN] = mean_points({n: member_scores[n] for n in headlines}, headlines)
  return out


def mean_points(
    member_scores: Mapping[str, Mapping[str, float]], headlines: Mapping[str, tuple[str, float]]
) -> float:
  """The members' headline metrics in points, averaged."""
  return float(np.mean([member_scores[n][h] * points for n, (h, points) in headlines.items()]))
