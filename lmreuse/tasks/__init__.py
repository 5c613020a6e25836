"""Downstream task types by name: one file each, one registry line each."""

from __future__ import annotations

from lmreuse.tasks.base import Context, TaskType


def _registry() -> dict[str, type[TaskType]]:
  from lmreuse.tasks import classification, extractive_qa, regression, seq2seq, tagging

  modules = (classification, regression, tagging, extractive_qa, seq2seq)
  return {m.TASK_TYPE.name: m.TASK_TYPE for m in modules}


def get(name: str) -> type[TaskType]:
  registry = _registry()
  if name not in registry:
    raise ValueError(f"config.task.type={name!r} is unknown; choose one of {sorted(registry)}")
  return registry[name]


def build(name: str, ctx: Context) -> TaskType:
  return get(name)(ctx)
