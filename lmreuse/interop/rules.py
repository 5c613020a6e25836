"""Rule tables: how one Hugging Face model family's tensors and config map onto lmreuse's.

A `Rule` pairs HF tensor names with lmreuse parameter paths and converts exactly each way
(transpose, reshape, split, concatenate: no arithmetic), so export then import returns the same
bits. A `Family` (bert.py, gpt2.py, t5.py) translates configs and lists its rules; hf.py reads,
checks and writes checkpoints with them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from lmreuse.models.config import STRATEGY_MODULES, TransformerConfig

Arrays = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF tensors `hf` <-> lmreuse params `ours`, converted exactly by `to_ours` / `to_hf`.

  `group` names an optional part (a pooler, a pretraining head): it may be absent as a whole;
  present in part, its absent weights are missing.
  """

  hf: tuple[str, ...]
  ours: tuple[str, ...]
  to_ours: Callable[[Arrays], Arrays]
  to_hf: Callable[[Arrays], Arrays]
  group: str = ""


def same(hf: str, ours: str, group: str = "") -> Rule:
  return Rule((hf,), (ours,), list, list, group)


def linear(
    hf: str,
    ours: str,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    bias: bool = True,
    conv1d: bool = False,
    group: str = "",
) -> list[Rule]:
  """torch Linear ([out, in] weight) or GPT-2 Conv1D ([in, out]) <-> a kernel of shape
  in_shape + out_shape (attention kernels split heads out of the flat axis)."""
  fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)

  def to_ours(ws):
    w = ws[0] if conv1d else ws[0].T
    return [np.ascontiguousarray(w).reshape(in_shape + out_shape)]

  def to_hf(ks):
    w = ks[0].reshape(fan_in, fan_out)
    return [np.ascontiguousarray(w if conv1d else w.T)]

  rules = [Rule((f"{hf}.weight",), (f"{ours}/kernel",), to_ours, to_hf, group)]
  if bias:
    rules.append(
        Rule(
            (f"{hf}.bias",),
            (f"{ours}/bias",),
            lambda b: [b[0].reshape(out_shape)],
            lambda b: [b[0].reshape(fan_out)],
            group,
        )
    )
  return rules


def norm(hf: str, ours: str, *, bias: bool = True, group: str = "") -> list[Rule]:
  rules = [same(f"{hf}.weight", f"{ours}/norm/scale", group)]
  if bias:
    rules.append(same(f"{hf}.bias", f"{ours}/norm/bias", group))
  return rules


def fused_qkv(hf: str, ours: str, d: int, n: int, h: int) -> list[Rule]:
  """GPT-2's c_attn: one [D, 3·N·H] Conv1D <-> separate query/key/value kernels [D, N, H]."""
  names = tuple(f"{ours}/{p}" for p in ("query", "key", "value"))
  return [
      Rule(
          (f"{hf}.weight",),
          tuple(f"{p}/kernel" for p in names),
          lambda w: [np.ascontiguousarray(x).reshape(d, n, h) for x in np.split(w[0], 3, 1)],
          lambda ks: [np.concatenate([k.reshape(d, n * h) for k in ks], axis=1)],
      ),
      Rule(
          (f"{hf}.bias",),
          tuple(f"{p}/bias" for p in names),
          lambda b: [x.reshape(n, h) for x in np.split(b[0], 3)],
          lambda bs: [np.concatenate([b.reshape(n * h) for b in bs])],
      ),
  ]


def attention(
    hf: str, ours: str, names: tuple[str, str, str, str], cfg: TransformerConfig, bias: bool
) -> list[Rule]:
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  q, key, v, o = names
  return [
      *linear(f"{hf}.{q}", f"{ours}/query", (d,), (n, h), bias=bias),
      *linear(f"{hf}.{key}", f"{ours}/key", (d,), (k, h), bias=bias),
      *linear(f"{hf}.{v}", f"{ours}/value", (d,), (k, h), bias=bias),
      *linear(f"{hf}.{o}", f"{ours}/out", (n, h), (d,), bias=bias),
  ]


HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def activation(name: str, key: str) -> str:
  if name not in HF_ACTIVATIONS:
    raise ValueError(
        f"HF config {key}={name!r} is not supported; supported: " f"{sorted(HF_ACTIVATIONS)}"
    )
  return HF_ACTIVATIONS[name]


def expect(hf: dict, key: str, allowed: Iterable[Any], default: Any) -> None:
  value = hf.get(key, default)
  if value not in tuple(allowed):
    raise ValueError(
        f"HF config {key}={value!r} is not supported (lmreuse supports " f"{tuple(allowed)})"
    )


class Family:
  """One HF model type: `model_fields` / `hf_config` translate configs, `rules` maps tensors."""

  model_type: str
  prefixes: tuple[str, ...] = ()  # stripped from HF names: a task model's base-model prefix
  exported_activations: dict[str, str] = OUR_ACTIVATIONS  # lmreuse activation -> HF name
  free_head_dim = False  # whether heads * head_dim may differ from d_model (T5's d_kv)

  # TransformerConfig values this family's HF form cannot express otherwise.
  requirements: dict[str, Any] = {}
  # TransformerConfig field -> the HF config key that holds it unchanged, both ways.
  hf_names: dict[str, str] = {}
  # HF config key -> the value `transformers` assumes where a config omits it.
  hf_defaults: dict[str, Any] = {}

  def model_fields(self, hf: dict) -> dict:
    """TransformerConfig fields of an HF config: the required values and the renamed keys;
    a family adds what it must convert."""
    renamed = {
        ours: hf.get(key, self.hf_defaults[key]) if key in self.hf_defaults else hf[key]
        for ours, key in self.hf_names.items()
    }
    return {**self.requirements, **renamed}

  def hf_config(self, cfg: TransformerConfig, groups: set[str]) -> dict:
    """The HF config of `cfg`: its model type and the renamed fields; a family adds the rest."""
    del groups
    renamed = {key: getattr(cfg, ours) for ours, key in self.hf_names.items()}
    return {"model_type": self.model_type, **renamed}

  def rules(self, cfg: TransformerConfig) -> list[Rule]:
    raise NotImplementedError

  def ignored(self, cfg: TransformerConfig) -> tuple[str, ...]:
    """Regexes of names that are buffers or tied copies, not parameters."""
    raise NotImplementedError

  def export_name(self, name: str, groups: set[str]) -> str:
    """The name `transformers` expects in a checkpoint with these optional parts."""
    del groups
    return name

  def export_problems(self, cfg: TransformerConfig) -> list[str]:
    """What in `cfg` this family's HF form cannot express, one line per field."""
    problems = [
        f"{k}={getattr(cfg, k)!r} (HF {self.model_type} needs {v!r})"
        for k, v in self.requirements.items()
        if getattr(cfg, k) != v
    ]
    problems += [
        f"{k}={getattr(cfg, k)!r} (strategy modules have no HF form; merge LoRA first)"
        for k in STRATEGY_MODULES
        if getattr(cfg, k)
    ]
    if cfg.prefix_lm:
      problems.append(f"prefix_lm=True (HF {self.model_type} attends causally everywhere)")
    if cfg.kv_heads != cfg.num_heads:
      problems.append(
          f"num_kv_heads={cfg.num_kv_heads} (HF {self.model_type} has no "
          "grouped-query attention)"
      )
    if cfg.activation not in self.exported_activations:
      problems.append(
          f"activation={cfg.activation!r} (HF {self.model_type} has "
          f"{sorted(self.exported_activations)})"
      )
    if not self.free_head_dim and cfg.dim_per_head * cfg.num_heads != cfg.d_model:
      problems.append(f"head_dim={cfg.head_dim} (HF {self.model_type} needs d_model / num_heads)")
    return problems
