"""Pretraining objectives by name: one file each, one registry line each."""

from __future__ import annotations

from lmreuse.objectives.base import Objective


def _registry() -> dict[str, Objective]:
  from lmreuse.objectives import clm, mlm, span_corruption

  return {o.name: o for o in (mlm.OBJECTIVE, clm.OBJECTIVE, span_corruption.OBJECTIVE)}


def get(name: str) -> Objective:
  registry = _registry()
  if name not in registry:
    raise ValueError(f"config.objective.name={name!r} is unknown; choose one of {sorted(registry)}")
  return registry[name]
