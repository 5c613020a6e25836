"""What `init_from` points at: an lmreuse pretraining workdir, one of its checkpoint step
directories, or `hf:DIR`, a Hugging Face checkpoint directory converted on the fly.

Each gives the same three things: the saved model section, its tokenizer, and a loader for its
parameters (called only when the weights are wanted, so `from_scratch` never reads them).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_collections

from lmreuse import workdir as workdir_lib
from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.interop import hf
from lmreuse.train import restore

if TYPE_CHECKING:
  from lmreuse.data.hf_tokenizer import HFTokenizer

HF_PREFIX = "hf:"


@dataclasses.dataclass
class Pretrained:
  model: ml_collections.ConfigDict  # TransformerConfig fields; vocab_size where it is fixed
  tokenizer: tokenizer_lib.Tokenizer | HFTokenizer
  load_params: Callable[[], dict]


def workdir_of(init_from: str) -> str:
  """The pretraining workdir of `init_from` (a workdir or one of its checkpoint step dirs)."""
  if not os.path.isdir(init_from):
    raise FileNotFoundError(f"config.init_from={init_from!r} is not a directory")
  for candidate in (init_from, os.path.dirname(os.path.dirname(os.path.abspath(init_from)))):
    if os.path.exists(os.path.join(candidate, "config.json")):
      return candidate
  raise FileNotFoundError(
      f"config.init_from={init_from!r}: no config.json in it or two levels "
      "up; point it at a pretraining workdir or a checkpoint step directory"
  )


def saved_config(init_from: str) -> tuple[str, dict]:
  """(the pretraining workdir of `init_from`, the config.json it saved)."""
  source = workdir_of(init_from)
  with open(os.path.join(source, workdir_lib.CONFIG)) as f:
    return source, json.load(f)


def load(init_from: str) -> Pretrained:
  if init_from.startswith(HF_PREFIX):
    hf_dir = init_from.removeprefix(HF_PREFIX)
    _, model = hf.read_model(hf_dir)
    return Pretrained(
        ml_collections.ConfigDict(model),
        tokenizer_lib.load_tokenizer(hf_dir),
        lambda: hf.read(hf_dir).params,
    )
  source, saved = saved_config(init_from)
  return Pretrained(
      ml_collections.ConfigDict(saved["model"]),
      tokenizer_lib.load_tokenizer(workdir_lib.saved_tokenizer(source, saved)),
      lambda: restore.load_params(init_from),
  )
