"""Downstream task types by name: one file each, registered by its row in types.py.

Importing the package loads no model code, so data sources can read the task-type table
(lmreuse/tasks/types.py); `get` imports a task type's file when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lmreuse.tasks import types

if TYPE_CHECKING:
  from lmreuse.tasks.base import TaskContext, TaskType


def get(name: str) -> type[TaskType]:
  spec = types.get(name)
  task_type = importlib.import_module(spec.module).TASK_TYPE
  if task_type.name != name:
    raise ValueError(f"{spec.module}.TASK_TYPE is {task_type.name!r}, but its row says {name!r}")
  return task_type


def build(name: str, ctx: TaskContext) -> TaskType:
  return get(name)(ctx)


def __getattr__(name: str) -> Any:
  """`tasks.TaskType` and `tasks.TaskContext` without importing the models with the package."""
  if name in ("TaskType", "TaskContext"):
    from lmreuse.tasks import base

    return getattr(base, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
