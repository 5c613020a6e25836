"""Hugging Face checkpoints in and out: BERT-family encoders (BERT, MiniLM), GPT-2, T5 v1.0/v1.1.

Each family (bert.py, gpt2.py, t5.py; one registry line each below) is a table of exact
conversion rules (rules.py), so export then import gives back the same bits. Import checks the
table both ways before converting anything: a tensor the table does not know, or one it needs
that the checkpoint lacks, is an error listing every such name. The model is always lmreuse's
own (lmreuse/models/transformer.py).

    imported = hf.read("path/to/hf_dir")              # model fields, params, tokenizer dir
    hf.import_to_workdir("path/to/hf_dir", "W")       # init_from=W, or init_from=hf:path/to/hf_dir
    hf.export_workdir("W", "out_dir")                 # back to config.json + model.safetensors

Command line: `python run.py --config=configs/hf.py:import --config.source=HF_DIR --workdir=W`
and `python run.py --config=configs/hf.py:export --config.out_dir=OUT_DIR --workdir=W`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lmreuse import workdir as workdir_lib
from lmreuse.data import hf_tokenizer, tokenizer as tokenizer_lib
from lmreuse.interop import bert, gpt2, t5
from lmreuse.interop.rules import Family
from lmreuse.models.config import TransformerConfig
from lmreuse.tasks import encoding
from lmreuse.train import restore

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        bert.Bert(),
        gpt2.GPT2(),
        t5.T5(),
    )
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "added_tokens.json",
)


def family_of(hf_config: dict, where: str) -> Family:
  model_type = hf_config.get("model_type", "")
  if model_type not in FAMILIES:
    raise ValueError(
        f"{where}: model_type={model_type!r} is not supported; lmreuse converts "
        f"{sorted(FAMILIES)} (BERT-family encoders such as MiniLM use 'bert')"
    )
  return FAMILIES[model_type]


# --------------------------------------------------------------------------------------------
# Reading and writing checkpoint directories.


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors (sharded or not), else pytorch_model.bin (needs torch)."""
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  single = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(os.path.join(hf_dir, shard)).items()}
  if os.path.exists(single):
    return load_file(single)
  binary = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(binary):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          f"{binary}: reading PyTorch .bin checkpoints needs torch; install it or "
          "convert the checkpoint to safetensors"
      ) from e
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return {
        k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()
    }
  raise FileNotFoundError(
      f"{hf_dir}: no model.safetensors, model.safetensors.index.json or " "pytorch_model.bin"
  )


def _read_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no config.json (is this a Hugging Face model directory?)")
  with open(path) as f:
    return json.load(f)


def _strip_prefixes(tensors: dict[str, np.ndarray], family: Family) -> dict[str, np.ndarray]:
  out = {}
  for name, value in tensors.items():
    for prefix in family.prefixes:
      if name.startswith(prefix):
        name = name[len(prefix) :]
        break
    out[name] = value
  return out


def params_from_hf(
    tensors: dict[str, np.ndarray], family: Family, cfg: TransformerConfig, where: str
) -> dict:
  """The nested float32 param tree; raises listing every missing or unknown tensor name before
  converting any, and every tensor whose shape does not fit the config."""
  tensors = _strip_prefixes(tensors, family)
  rules = family.rules(cfg)
  known = {name for rule in rules for name in rule.hf}
  ignored = re.compile("|".join(f"(?:{p})" for p in family.ignored(cfg)))
  unknown = sorted(n for n in tensors if n not in known and not ignored.fullmatch(n))
  groups = {r.group for r in rules if r.group and any(n in tensors for n in r.hf)}
  missing = sorted(
      n for r in rules if not r.group or r.group in groups for n in r.hf if n not in tensors
  )
  problems = []
  if missing:
    problems.append(f"missing weights ({len(missing)}): {missing}")
  if unknown:
    problems.append(
        f"unknown weights ({len(unknown)}), not part of a {family.model_type} model "
        f"lmreuse can express: {unknown}"
    )
  if problems:
    raise ValueError(f"{where}: " + "; ".join(problems))
  flat, bad = {}, []
  expected = backbone_shapes(cfg)
  for rule in rules:
    if rule.group and rule.group not in groups:
      continue
    values = [tensors[n] for n in rule.hf]
    try:
      converted = rule.to_ours(values)
    except ValueError:  # a reshape the shapes do not allow
      converted = [None] * len(rule.ours)
    for path, value in zip(rule.ours, converted):
      want = expected.get(path)
      if value is None or (want is not None and value.shape != want):
        bad.append(
            f"{'+'.join(rule.hf)} {[v.shape for v in values]} -> {path} needs "
            f"{want or 'another shape'}"
        )
      else:
        flat[path] = np.asarray(value, np.float32)
  if bad:
    raise ValueError(f"{where}: weights whose shapes do not fit config.json: {bad}")
  return traverse_util.unflatten_dict(flat, sep="/")


def backbone_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
  """Shapes of every `backbone/...` parameter of the model `cfg` describes (no compute)."""
  ids = jax.ShapeDtypeStruct((1, 8), np.int32)
  args = (ids, ids) if cfg.architecture == "encoder_decoder" else (ids,)
  tree = jax.eval_shape(encoding.make_backbone(cfg).init, jax.random.PRNGKey(0), *args)
  return {
      f"backbone/{k}": v.shape
      for k, v in traverse_util.flatten_dict(nn.meta.unbox(tree["params"]), sep="/").items()
  }


def params_to_hf(
    params: dict, family: Family, cfg: TransformerConfig
) -> tuple[dict[str, np.ndarray], set[str]]:
  """HF tensors of the parameters the family's table covers; heads it has no HF form for
  (task classifiers) are left out. Returns the tensors and the optional groups written."""
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  rules = family.rules(cfg)
  groups = {r.group for r in rules if r.group and all(p in flat for p in r.ours)}
  missing = sorted(
      p for r in rules if not r.group or r.group in groups for p in r.ours if p not in flat
  )
  if missing:
    raise ValueError(f"parameters missing for a {family.model_type} export: {missing}")
  tensors = {}
  for rule in rules:
    if rule.group and rule.group not in groups:
      continue
    for name, value in zip(rule.hf, rule.to_hf([flat[p] for p in rule.ours])):
      tensors[family.export_name(name, groups)] = np.ascontiguousarray(value)
  return tensors, groups


@dataclasses.dataclass
class Imported:
  """An HF checkpoint in lmreuse terms: TransformerConfig fields and the param tree (`backbone`
  plus any pooler / pretraining heads). Its tokenizer files sit beside it in the directory."""

  family: str
  model: dict
  params: dict


def read_model(hf_dir: str) -> tuple[Family, dict]:
  """The family and TransformerConfig fields of an HF directory, from config.json alone (no
  weights read: a from-scratch run needs only the architecture)."""
  hf_dir = os.fspath(hf_dir)
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"{hf_dir!r} is not a directory")
  hf_config = _read_config(hf_dir)
  family = family_of(hf_config, os.path.join(hf_dir, "config.json"))
  model = family.model_fields(hf_config)
  TransformerConfig(**model).validate(prefix=f"{hf_dir}/config.json -> model")
  return family, model


def read(hf_dir: str) -> Imported:
  family, model = read_model(hf_dir)
  params = params_from_hf(read_tensors(hf_dir), family, TransformerConfig(**model), hf_dir)
  return Imported(family.model_type, model, params)


def _copy_tokenizer(src: str, dst: str) -> None:
  os.makedirs(dst, exist_ok=True)
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _check_new_dir(path: str) -> None:
  if os.path.exists(path) and os.listdir(path):
    raise FileExistsError(
        f"{path} exists and is not empty; choose a new directory (nothing "
        "already written is overwritten)"
    )


def import_to_workdir(hf_dir: str, workdir: str) -> str:
  """Writes a pretraining-workdir-style checkpoint (config.json, checkpoints/0/state with
  `params`, tokenizer/) that `init_from=workdir` and `export_workdir` read."""
  _check_new_dir(workdir)  # before reading what may be gigabytes of weights
  imported = read(hf_dir)
  _copy_tokenizer(hf_dir, workdir_lib.tokenizer_dir(workdir))
  state_dir = os.path.abspath(os.path.join(workdir, workdir_lib.CHECKPOINTS, "0", "state"))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(state_dir, {"params": imported.params})
  checkpointer.wait_until_finished()
  checkpointer.close()
  workdir_lib.write_json(
      os.path.join(workdir, workdir_lib.CONFIG),
      {
          "model": imported.model,
          "tokenizer": {"path": ""},
          "hf_source": {"path": os.path.abspath(hf_dir), "model_type": imported.family},
      },
  )
  return workdir


def export(
    params: dict,
    cfg: TransformerConfig,
    out_dir: str,
    tokenizer_dir: str | None = None,
    token_ids: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
  """Writes config.json + model.safetensors (+ the tokenizer files) loadable by `transformers`.

  `token_ids` (pad_token_id, eos_token_id, ...) go into config.json, where generation reads them.

  Raises, naming the fields, when the config uses something the HF family cannot express
  (RoPE in a BERT, strategy modules that were not merged away, ...).
  """
  family = next(f for f in FAMILIES.values() if f.requirements["architecture"] == cfg.architecture)
  problems = family.export_problems(cfg)
  if problems:
    raise ValueError(
        f"cannot export a {cfg.architecture} model as HF {family.model_type}: "
        + "; ".join(problems)
    )
  tensors, groups = params_to_hf(params, family, cfg)
  _check_new_dir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  workdir_lib.write_json(
      os.path.join(out_dir, "config.json"), {**family.hf_config(cfg, groups), **(token_ids or {})}
  )
  if tokenizer_dir:
    _copy_tokenizer(tokenizer_dir, out_dir)
  return tensors


def export_workdir(workdir: str, out_dir: str) -> None:
  """Exports the latest checkpoint of a pretraining (or imported) workdir."""
  with open(os.path.join(workdir, workdir_lib.CONFIG)) as f:
    saved = json.load(f)
  params = restore.load_params(workdir)
  embedding = next(
      v
      for k, v in traverse_util.flatten_dict(params, sep="/").items()
      if k.endswith("token_embed/embedding")
  )
  cfg = TransformerConfig(**{**saved["model"], "vocab_size": embedding.shape[0]})
  tok_path = workdir_lib.saved_tokenizer(workdir, saved)
  tok = tokenizer_lib.load_tokenizer(tok_path)
  token_ids = dict(pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
  if cfg.architecture == "encoder_decoder":
    token_ids["decoder_start_token_id"] = tok.pad_id  # as lmreuse's seq2seq task starts
  # An lmreuse SentencePiece tokenizer (a .model file) has no HF form: ids only.
  is_hf = hf_tokenizer.is_hf_tokenizer_dir(tok_path)
  export(params, cfg, out_dir, tok_path if is_hf else None, token_ids)
