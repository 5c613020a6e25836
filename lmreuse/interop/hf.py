"""Hugging Face checkpoints in and out: BERT-family encoders (BERT, MiniLM), GPT-2, T5 v1.0/v1.1.

Each family is a table of `Rule`s pairing Hugging Face tensor names with lmreuse parameter paths,
with an exact conversion each way (transpose, reshape, split, concatenate: no arithmetic), so
export then import gives back the same bits. Import checks the table both ways before converting
anything: a tensor the table does not know, or one it needs that the checkpoint lacks, is an
error listing every such name. Families differ only in their tables and config translation;
the model is always lmreuse's own (lmreuse/models/transformer.py).

    imported = hf.read("path/to/hf_dir")              # model fields, params, tokenizer dir
    hf.import_to_workdir("path/to/hf_dir", "W")       # init_from=W, or init_from=hf:path/to/hf_dir
    hf.export_workdir("W", "out_dir")                 # back to config.json + model.safetensors

Command line: `python run.py --config=configs/hf.py:import --config.source=HF_DIR --workdir=W`
and `python run.py --config=configs/hf.py:export --config.out_dir=OUT_DIR --workdir=W`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lmreuse import workdir as workdir_lib
from lmreuse.data import hf_tokenizer, tokenizer as tokenizer_lib
from lmreuse.models.config import TransformerConfig
from lmreuse.tasks import encoding
from lmreuse.train import restore

Arrays = list[np.ndarray]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
# Only these are models; a strategy's inserted modules (adapters, LoRA, ...) have no HF form.
PEFT_FIELDS = ("adapter_size", "ia3", "prefix_length", "prompt_length", "lora_rank")


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


def _same(hf: str, ours: str, group: str = "") -> Rule:
  return Rule((hf,), (ours,), list, list, group)


def _linear(hf: str, ours: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
            bias: bool = True, conv1d: bool = False, group: str = "") -> list[Rule]:
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
    rules.append(Rule((f"{hf}.bias",), (f"{ours}/bias",), lambda b: [b[0].reshape(out_shape)],
                      lambda b: [b[0].reshape(fan_out)], group))
  return rules


def _norm(hf: str, ours: str, *, bias: bool = True, group: str = "") -> list[Rule]:
  rules = [_same(f"{hf}.weight", f"{ours}/norm/scale", group)]
  if bias:
    rules.append(_same(f"{hf}.bias", f"{ours}/norm/bias", group))
  return rules


def _fused_qkv(hf: str, ours: str, d: int, n: int, h: int) -> list[Rule]:
  """GPT-2's c_attn: one [D, 3·N·H] Conv1D <-> separate query/key/value kernels [D, N, H]."""
  names = tuple(f"{ours}/{p}" for p in ("query", "key", "value"))
  return [
      Rule((f"{hf}.weight",), tuple(f"{p}/kernel" for p in names),
           lambda w: [np.ascontiguousarray(x).reshape(d, n, h) for x in np.split(w[0], 3, 1)],
           lambda ks: [np.concatenate([k.reshape(d, n * h) for k in ks], axis=1)]),
      Rule((f"{hf}.bias",), tuple(f"{p}/bias" for p in names),
           lambda b: [x.reshape(n, h) for x in np.split(b[0], 3)],
           lambda bs: [np.concatenate([b.reshape(n * h) for b in bs])]),
  ]


def _attention(hf: str, ours: str, names: tuple[str, str, str, str], cfg: TransformerConfig,
               bias: bool) -> list[Rule]:
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  q, key, v, o = names
  return [*_linear(f"{hf}.{q}", f"{ours}/query", (d,), (n, h), bias=bias),
          *_linear(f"{hf}.{key}", f"{ours}/key", (d,), (k, h), bias=bias),
          *_linear(f"{hf}.{v}", f"{ours}/value", (d,), (k, h), bias=bias),
          *_linear(f"{hf}.{o}", f"{ours}/out", (n, h), (d,), bias=bias)]


# --------------------------------------------------------------------------------------------
# Families: config translation both ways, and the rule table for a config.


class Family:
  """One HF model type: `model_fields` / `hf_config` translate configs, `rules` maps tensors."""

  model_type: str
  prefixes: tuple[str, ...] = ()  # stripped from HF names: a task model's base-model prefix

  def model_fields(self, hf: dict) -> dict:
    raise NotImplementedError

  def hf_config(self, cfg: TransformerConfig, groups: set[str]) -> dict:
    raise NotImplementedError

  def requirements(self) -> dict:
    """TransformerConfig values this family's HF form cannot express otherwise."""
    raise NotImplementedError

  def rules(self, cfg: TransformerConfig) -> list[Rule]:
    raise NotImplementedError

  def ignored(self, cfg: TransformerConfig) -> tuple[str, ...]:
    """Regexes of names that are buffers or tied copies, not parameters."""
    raise NotImplementedError

  def export_name(self, name: str, groups: set[str]) -> str:
    """The name `transformers` expects in a checkpoint with these optional parts."""
    del groups
    return name


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu"}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _activation(name: str, key: str) -> str:
  if name not in HF_ACTIVATIONS:
    raise ValueError(f"HF config {key}={name!r} is not supported; supported: "
                     f"{sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[name]


def _expect(hf: dict, key: str, allowed: Iterable[Any], default: Any) -> None:
  value = hf.get(key, default)
  if value not in tuple(allowed):
    raise ValueError(f"HF config {key}={value!r} is not supported (lmreuse supports "
                     f"{tuple(allowed)})")


class Bert(Family):
  model_type = "bert"
  prefixes = ("bert.",)

  def ignored(self, cfg):
    return (r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)")

  def export_name(self, name, groups):
    # With pretraining heads (BertForPreTraining) the encoder sits under `bert.`.
    heads = groups & {"mlm", "nsp"}
    return f"bert.{name}" if heads and not name.startswith("cls.") else name

  def model_fields(self, hf):
    _expect(hf, "position_embedding_type", ("absolute",), "absolute")
    _expect(hf, "is_decoder", (False,), False)
    return dict(
        architecture="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], max_len=hf["max_position_embeddings"],
        dropout_rate=hf.get("hidden_dropout_prob", 0.1), position="learned", norm="layernorm",
        norm_placement="post", norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act"), use_bias=True,
        num_token_types=hf.get("type_vocab_size", 2), tie_embeddings=True,
        scale_attention=True, init_std=hf.get("initializer_range", 0.02))

  def requirements(self):
    return dict(architecture="encoder", position="learned", norm="layernorm",
                norm_placement="post", use_bias=True, tie_embeddings=True, scale_attention=True)

  def hf_config(self, cfg, groups):
    heads = ("BertForPreTraining" if {"mlm", "nsp"} <= groups else
             "BertForMaskedLM" if "mlm" in groups else "BertModel")
    return dict(
        architectures=[heads], model_type="bert", vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.d_ff, num_hidden_layers=cfg.num_layers,
        max_position_embeddings=cfg.max_len, hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps,
        hidden_act=OUR_ACTIVATIONS[cfg.activation], type_vocab_size=cfg.num_token_types,
        initializer_range=cfg.init_std, position_embedding_type="absolute", pad_token_id=0)

  def rules(self, cfg):
    d, s = cfg.d_model, "backbone/stack"
    rules = [_same("embeddings.word_embeddings.weight", f"{s}/token_embed/embedding"),
             _same("embeddings.position_embeddings.weight", f"{s}/position_embed/embedding"),
             _same("embeddings.token_type_embeddings.weight", f"{s}/token_type_embed/embedding"),
             *_norm("embeddings.LayerNorm", f"{s}/norm")]
    for i in range(cfg.num_layers):
      hf, ours = f"encoder.layer.{i}", f"{s}/layers_{i}"
      rules += [
          *_attention(f"{hf}.attention", f"{ours}/self_attention",
                      ("self.query", "self.key", "self.value", "output.dense"), cfg, bias=True),
          *_norm(f"{hf}.attention.output.LayerNorm", f"{ours}/self_attention_norm"),
          *_linear(f"{hf}.intermediate.dense", f"{ours}/mlp/wi", (d,), (cfg.d_ff,)),
          *_linear(f"{hf}.output.dense", f"{ours}/mlp/wo", (cfg.d_ff,), (d,)),
          *_norm(f"{hf}.output.LayerNorm", f"{ours}/mlp_norm")]
    rules += _linear("pooler.dense", "pooler/dense", (d,), (d,), group="pooler")
    rules += [*_linear("cls.predictions.transform.dense", "mlm_head/transform", (d,), (d,),
                       group="mlm"),
              *_norm("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm",
                     group="mlm"),
              _same("cls.predictions.bias", "mlm_head/bias", group="mlm")]
    rules += _linear("cls.seq_relationship", "nsp_head/dense", (d,), (2,), group="nsp")
    return rules


class GPT2(Family):
  model_type = "gpt2"
  prefixes = ("transformer.",)

  def ignored(self, cfg):
    return (r"lm_head\.weight", r"h\.\d+\.attn\.(bias|masked_bias)")

  def model_fields(self, hf):
    _expect(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    _expect(hf, "add_cross_attention", (False,), False)
    _expect(hf, "scale_attn_weights", (True,), True)
    d = hf["n_embd"]
    return dict(
        architecture="decoder", vocab_size=hf["vocab_size"], d_model=d, num_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, num_layers=hf["n_layer"], max_len=hf["n_positions"],
        dropout_rate=hf.get("resid_pdrop", 0.1), position="learned", norm="layernorm",
        norm_placement="pre", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_activation(hf.get("activation_function", "gelu_new"),
                               "activation_function"),
        use_bias=True, num_token_types=0, tie_embeddings=True, scale_attention=True,
        init_std=hf.get("initializer_range", 0.02))

  def requirements(self):
    return dict(architecture="decoder", position="learned", norm="layernorm",
                norm_placement="pre", use_bias=True, tie_embeddings=True, scale_attention=True,
                num_token_types=0)

  def hf_config(self, cfg, groups):
    return dict(
        architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model, n_head=cfg.num_heads, n_inner=cfg.d_ff, n_layer=cfg.num_layers,
        n_positions=cfg.max_len, resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate,
        attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
        activation_function=OUR_ACTIVATIONS[cfg.activation], initializer_range=cfg.init_std,
        tie_word_embeddings=True)

  def rules(self, cfg):
    d, n, h, s = cfg.d_model, cfg.num_heads, cfg.dim_per_head, "backbone/stack"
    rules = [_same("wte.weight", f"{s}/token_embed/embedding"),
             _same("wpe.weight", f"{s}/position_embed/embedding"), *_norm("ln_f", f"{s}/norm")]
    for i in range(cfg.num_layers):
      hf, ours = f"h.{i}", f"{s}/layers_{i}"
      rules += [
          *_norm(f"{hf}.ln_1", f"{ours}/self_attention_norm"),
          *_fused_qkv(f"{hf}.attn.c_attn", f"{ours}/self_attention", d, n, h),
          *_linear(f"{hf}.attn.c_proj", f"{ours}/self_attention/out", (n, h), (d,),
                   conv1d=True),
          *_norm(f"{hf}.ln_2", f"{ours}/mlp_norm"),
          *_linear(f"{hf}.mlp.c_fc", f"{ours}/mlp/wi", (d,), (cfg.d_ff,), conv1d=True),
          *_linear(f"{hf}.mlp.c_proj", f"{ours}/mlp/wo", (cfg.d_ff,), (d,), conv1d=True)]
    return rules


T5_FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu",
                   "gelu": "gelu"}


class T5(Family):
  """T5 v1.0 (ReLU, tied embeddings with the d^-0.5 rescale) and v1.1 (gated GELU, untied)."""

  model_type = "t5"

  def ignored(self, cfg):
    tied = (r"lm_head\.weight",) if cfg.tie_embeddings else ()
    return (r"(encoder|decoder)\.embed_tokens\.weight",) + tied

  def model_fields(self, hf):
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in T5_FEED_FORWARD:
      raise ValueError(f"HF config feed_forward_proj={proj!r} is not supported; supported: "
                       f"{sorted(T5_FEED_FORWARD)}")
    return dict(
        architecture="encoder_decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"],
        num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        max_len=hf.get("n_positions", 512), dropout_rate=hf.get("dropout_rate", 0.1),
        mlp_hidden_dropout=True, position="relative_bias",
        relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
        norm_placement="pre", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=T5_FEED_FORWARD[proj], use_bias=False, num_token_types=0,
        tie_embeddings=hf.get("tie_word_embeddings", True), scale_attention=False)

  def requirements(self):
    return dict(architecture="encoder_decoder", position="relative_bias", norm="rmsnorm",
                norm_placement="pre", use_bias=False, scale_attention=False, num_token_types=0)

  def hf_config(self, cfg, groups):
    proj = {v: k for k, v in T5_FEED_FORWARD.items()}[cfg.activation]
    return dict(
        architectures=["T5ForConditionalGeneration"], model_type="t5",
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.dim_per_head, d_ff=cfg.d_ff,
        num_heads=cfg.num_heads, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.decoder_layers, n_positions=cfg.max_len,
        dropout_rate=cfg.dropout_rate, relative_attention_num_buckets=cfg.relative_num_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=proj,
        tie_word_embeddings=cfg.tie_embeddings, is_encoder_decoder=True, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)

  def rules(self, cfg):
    d, f = cfg.d_model, cfg.d_ff
    names = ("q", "k", "v", "o")
    rules = [_same("shared.weight", "backbone/token_embed/embedding")]
    if not cfg.tie_embeddings:
      rules += _linear("lm_head", "backbone/lm_head", (d,), (cfg.vocab_size,), bias=False)
    for side, depth in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
      stack = f"backbone/{side}"
      rules += [
          _same(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                f"{stack}/relative_bias/rel_embedding"),
          *_norm(f"{side}.final_layer_norm", f"{stack}/norm", bias=False)]
      for i in range(depth):
        hf, ours = f"{side}.block.{i}.layer", f"{stack}/layers_{i}"
        sublayers = [("SelfAttention", "self_attention")]
        if side == "decoder":
          sublayers.append(("EncDecAttention", "cross_attention"))
        for j, (hf_name, our_name) in enumerate(sublayers):
          rules += [*_attention(f"{hf}.{j}.{hf_name}", f"{ours}/{our_name}", names, cfg,
                                bias=False),
                    *_norm(f"{hf}.{j}.layer_norm", f"{ours}/{our_name}_norm", bias=False)]
        mlp = f"{hf}.{len(sublayers)}"
        wi = ("wi_0", "wi_1") if cfg.activation in ("geglu", "swiglu") else ("wi",)
        for name in wi:
          rules += _linear(f"{mlp}.DenseReluDense.{name}", f"{ours}/mlp/{name}", (d,), (f,),
                           bias=False)
        rules += [*_linear(f"{mlp}.DenseReluDense.wo", f"{ours}/mlp/wo", (f,), (d,), bias=False),
                  *_norm(f"{mlp}.layer_norm", f"{ours}/mlp_norm", bias=False)]
    return rules


FAMILIES: dict[str, Family] = {f.model_type: f for f in (Bert(), GPT2(), T5())}


def family_of(hf_config: dict, where: str) -> Family:
  model_type = hf_config.get("model_type", "")
  if model_type not in FAMILIES:
    raise ValueError(f"{where}: model_type={model_type!r} is not supported; lmreuse converts "
                     f"{sorted(FAMILIES)} (BERT-family encoders such as MiniLM use 'bert')")
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
      raise ImportError(f"{binary}: reading PyTorch .bin checkpoints needs torch; install it or "
                        "convert the checkpoint to safetensors") from e
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items()}
  raise FileNotFoundError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or "
                          "pytorch_model.bin")


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
        name = name[len(prefix):]
        break
    out[name] = value
  return out


def params_from_hf(tensors: dict[str, np.ndarray], family: Family, cfg: TransformerConfig,
                   where: str) -> dict:
  """The nested float32 param tree; raises listing every missing or unknown tensor name before
  converting any, and every tensor whose shape does not fit the config."""
  tensors = _strip_prefixes(tensors, family)
  rules = family.rules(cfg)
  known = {name for rule in rules for name in rule.hf}
  ignored = re.compile("|".join(f"(?:{p})" for p in family.ignored(cfg)))
  unknown = sorted(n for n in tensors if n not in known and not ignored.fullmatch(n))
  groups = {r.group for r in rules if r.group and any(n in tensors for n in r.hf)}
  missing = sorted(n for r in rules if not r.group or r.group in groups
                   for n in r.hf if n not in tensors)
  problems = []
  if missing:
    problems.append(f"missing weights ({len(missing)}): {missing}")
  if unknown:
    problems.append(f"unknown weights ({len(unknown)}), not part of a {family.model_type} model "
                    f"lmreuse can express: {unknown}")
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
        bad.append(f"{'+'.join(rule.hf)} {[v.shape for v in values]} -> {path} needs "
                   f"{want or 'another shape'}")
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
  return {f"backbone/{k}": v.shape for k, v in traverse_util.flatten_dict(
      nn.meta.unbox(tree["params"]), sep="/").items()}


def params_to_hf(params: dict, family: Family, cfg: TransformerConfig
                 ) -> tuple[dict[str, np.ndarray], set[str]]:
  """HF tensors of the parameters the family's table covers; heads it has no HF form for
  (task classifiers) are left out. Returns the tensors and the optional groups written."""
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  rules = family.rules(cfg)
  groups = {r.group for r in rules if r.group and all(p in flat for p in r.ours)}
  missing = sorted(p for r in rules if not r.group or r.group in groups
                   for p in r.ours if p not in flat)
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
  """An HF checkpoint in lmreuse terms: TransformerConfig fields, the param tree (`backbone`
  plus any pooler / pretraining heads), and the directory holding its tokenizer files."""

  family: str
  model: dict
  params: dict
  tokenizer_dir: str


def read(hf_dir: str) -> Imported:
  hf_dir = os.fspath(hf_dir)
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"{hf_dir!r} is not a directory")
  hf_config = _read_config(hf_dir)
  family = family_of(hf_config, os.path.join(hf_dir, "config.json"))
  model = family.model_fields(hf_config)
  cfg = TransformerConfig(**model)
  cfg.validate(prefix=f"{hf_dir}/config.json -> model")
  params = params_from_hf(read_tensors(hf_dir), family, cfg, hf_dir)
  return Imported(family.model_type, model, params, hf_dir)


def _copy_tokenizer(src: str, dst: str) -> None:
  os.makedirs(dst, exist_ok=True)
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _check_new_dir(path: str) -> None:
  if os.path.exists(path) and os.listdir(path):
    raise FileExistsError(f"{path} exists and is not empty; choose a new directory (nothing "
                          "already written is overwritten)")


def import_to_workdir(hf_dir: str, workdir: str) -> str:
  """Writes a pretraining-workdir-style checkpoint (config.json, checkpoints/0/state with
  `params`, tokenizer/) that `init_from=workdir` and `export_workdir` read."""
  imported = read(hf_dir)
  _check_new_dir(workdir)
  _copy_tokenizer(imported.tokenizer_dir, os.path.join(workdir, "tokenizer"))
  state_dir = os.path.abspath(os.path.join(workdir, "checkpoints", "0", "state"))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(state_dir, {"params": imported.params})
  checkpointer.wait_until_finished()
  checkpointer.close()
  workdir_lib.write_json(os.path.join(workdir, "config.json"), {
      "model": imported.model, "tokenizer": {"path": ""},
      "hf_source": {"path": os.path.abspath(hf_dir), "model_type": imported.family}})
  return workdir


def export(params: dict, cfg: TransformerConfig, out_dir: str, tokenizer_dir: str | None = None,
           token_ids: dict[str, int] | None = None) -> dict[str, np.ndarray]:
  """Writes config.json + model.safetensors (+ the tokenizer files) loadable by `transformers`.

  `token_ids` (pad_token_id, eos_token_id, ...) go into config.json, where generation reads them.

  Raises, naming the fields, when the config uses something the HF family cannot express
  (RoPE in a BERT, strategy modules that were not merged away, ...).
  """
  family = next((f for f in FAMILIES.values()
                 if f.requirements()["architecture"] == cfg.architecture), None)
  problems = [f"{k}={getattr(cfg, k)!r} (HF {family.model_type} needs {v!r})"
              for k, v in family.requirements().items() if getattr(cfg, k) != v]
  problems += [f"{k}={getattr(cfg, k)!r} (strategy modules have no HF form; merge LoRA first)"
               for k in PEFT_FIELDS if getattr(cfg, k)]
  if cfg.kv_heads != cfg.num_heads:
    problems.append(f"num_kv_heads={cfg.num_kv_heads} (HF {family.model_type} has no grouped-query "
                    "attention)")
  if cfg.activation not in (T5_FEED_FORWARD.values() if family is FAMILIES["t5"]
                            else OUR_ACTIVATIONS):
    problems.append(f"activation={cfg.activation!r}")
  if cfg.dim_per_head * cfg.num_heads != cfg.d_model and family is not FAMILIES["t5"]:
    problems.append(f"head_dim={cfg.head_dim} (HF {family.model_type} needs d_model / num_heads)")
  if problems:
    raise ValueError(f"cannot export a {cfg.architecture} model as HF {family.model_type}: "
                     + "; ".join(problems))
  tensors, groups = params_to_hf(params, family, cfg)
  _check_new_dir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump({**family.hf_config(cfg, groups), **(token_ids or {})}, f, indent=2)
    f.write("\n")
  if tokenizer_dir:
    _copy_tokenizer(tokenizer_dir, out_dir)
  return tensors


def export_workdir(workdir: str, out_dir: str) -> None:
  """Exports the latest checkpoint of a pretraining (or imported) workdir."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  params = restore.load_params(workdir)
  embedding = next(v for k, v in traverse_util.flatten_dict(params, sep="/").items()
                   if k.endswith("token_embed/embedding"))
  cfg = TransformerConfig(**{**saved["model"], "vocab_size": embedding.shape[0]})
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  tok_path = saved["tokenizer"]["path"] or os.path.join(tokenizer_dir, "spm.model")
  is_hf = hf_tokenizer.is_hf_tokenizer_dir(tokenizer_dir)
  tok = tokenizer_lib.load_tokenizer(tokenizer_dir if is_hf else tok_path)
  token_ids = dict(pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
  if cfg.architecture == "encoder_decoder":
    token_ids["decoder_start_token_id"] = tok.pad_id  # as lmreuse's seq2seq task starts
  # An lmreuse SentencePiece tokenizer (tokenizer/spm.model) has no HF form: ids only.
  export(params, cfg, out_dir, tokenizer_dir if is_hf else None, token_ids)

