"""Pretraining objectives by name: one file each, one registry line each."""

from __future__ import annotations

import ml_collections

from lmreuse.objectives.base import Objective


def _registry() -> dict[str, Objective]:
  from lmreuse.objectives import clm, electra, mlm, prefix_lm, span_corruption

  return {
      o.name: o
      for o in (
          mlm.OBJECTIVE,
          electra.OBJECTIVE,
          clm.OBJECTIVE,
          prefix_lm.OBJECTIVE,
          span_corruption.OBJECTIVE,
      )
  }


def names() -> list[str]:
  return sorted(_registry())


def get(name: str) -> Objective:
  registry = _registry()
  if name not in registry:
    raise ValueError(f"config.objective.name={name!r} is unknown; choose one of {names()}")
  return registry[name]


def check_flags(config: ml_collections.ConfigDict) -> None:
  """Refuses a flag of another objective (e.g. nsp) set on `config.objective`'s."""
  flags = get(config.name).flags
  for other in _registry().values():
    for flag in set(other.flags) - set(flags):
      if getattr(config, flag, False):
        raise ValueError(
            f"config.objective.{flag}=True only applies to objective={other.name!r},"
            f" not {config.name!r}"
        )


def from_config(config: ml_collections.ConfigDict) -> Objective:
  """The objective `config.objective` names, once its flags are checked."""
  check_flags(config)
  return get(config.name)
