"""Bytes each device moves through collectives in one compiled BERT train step, per mesh, next to
what FSDP and tensor parallelism should move.

The compiled step on 8 fake CPU devices is XLA's real SPMD program for that mesh, so its
collectives are the ones a pod slice of the same shape would run; their sizes predict pod-scale
communication without a pod. Bytes are counted per device as ring algorithms move them: an
all-gather or all-to-all of n shards receives (n-1)/n of its result, a reduce-scatter sends
(n-1)/n of its input, an all-reduce twice that of its buffer, a collective-permute its buffer.

Expected, per parameter of S bytes split t ways over `tensor` and f ways over `fsdp` (batch over
data x fsdp, d = data): FSDP all-gathers it before the forward and again for the backward,
2 (S/t)(f-1)/f, and reduce-scatters its gradient, (S/t)(f-1)/f; the gradient is then all-reduced
over the remaining batch shards, 2 (S/(t f))(n-1)/n over the n = d (or d f when f does not split
it) devices holding copies. Tensor parallelism (Megatron) all-reduces [batch shard, length, d_model]
activations twice per layer forward and twice backward, once after the vocabulary-parallel
embedding lookup, and the MLM head's input gradient [batch shard, predictions, d_model] once.

  python benchmarks/collectives.py           # bert-base, batch 16 x 128, 5 meshes; minutes
  python benchmarks/collectives.py --quick   # tiny model, batch 16 x 32: a smoke run
"""

from __future__ import annotations

import math
import os
import re
import sys
import time

# Only the partitioned HLO is read, so LLVM's optimisations of the CPU code are skipped.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import ml_collections
import numpy as np
from absl import app, flags

from configs import pretrain
from lmreuse import objectives
from lmreuse.models.config import TransformerConfig
from lmreuse.objectives import mlm
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import optim
from lmreuse.train.trainer import Trainer

MESHES = {
    "data8": dict(data=8, fsdp=1, tensor=1),
    "fsdp8": dict(data=1, fsdp=8, tensor=1),
    "data4_fsdp2": dict(data=4, fsdp=2, tensor=1),
    "data4_tensor2": dict(data=4, fsdp=1, tensor=2),
    "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
}
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
VOCAB = 30522  # BERT's WordPiece vocabulary
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}

_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: the tiny model at 32 tokens.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch (examples per step).")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per example.")
_MESHES = flags.DEFINE_list("meshes", list(MESHES), f"Meshes to compile, of {list(MESHES)}.")

# `%name = TYPE op(`, TYPE one shape or a tuple of them. XLA:CPU runs collectives synchronously;
# the asynchronous -start/-done pairs of other backends are refused rather than miscounted.
_OP = re.compile(r"=\s*(?P<type>\([^()]*\)|\S+)\s+(?P<op>" + "|".join(KINDS) + r")\(")
_ASYNC = re.compile(r"\s(" + "|".join(KINDS) + r")-start\(")
_SHAPE = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")


def shape_bytes(type_text: str) -> int:
  return sum(
      DTYPE_BYTES[m["dtype"]] * math.prod(int(d) for d in m["dims"].split(",") if d)
      for m in _SHAPE.finditer(type_text)
      if m["dtype"] in DTYPE_BYTES
  )


def group_size(line: str, num_devices: int) -> int:
  """Devices per replica group, in any of XLA's spellings: `{{0,1},{2,3}}` lists them,
  `[4,2]<=[8]` is 4 groups of 2, `mesh['a'=4,'b'=2] {'b'}` groups over the named axes."""
  named = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if named:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", named[1])}
    return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", named[2]))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if iota:
    return int(iota[2])
  listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if listed:
    return len(listed[1].split(","))
  return 2 if "source_target_pairs=" in line else num_devices


def measured_bytes(hlo_text: str, num_devices: int) -> dict[str, float]:
  """Per-device bytes moved by each kind of collective in a compiled (per-device) HLO module."""
  moved = dict.fromkeys(KINDS, 0.0)
  for line in hlo_text.splitlines():
    line = _COMMENT.sub("", line)
    if _ASYNC.search(line):
      raise ValueError(f"asynchronous collective, not counted: {line.strip()[:200]}")
    match = _OP.search(line)
    if not match:
      continue
    kind, size = match["op"], shape_bytes(match["type"])
    n = group_size(line, num_devices)
    share = (n - 1) / n
    moved[kind] += {
        "all-gather": size * share,
        "reduce-scatter": size * (n - 1),
        "all-reduce": 2 * size * share,
        "all-to-all": size * share,
        "collective-permute": size,
    }[kind]
  return moved


def config(quick: bool, seq_len: int) -> ml_collections.ConfigDict:
  cfg = pretrain.get_config(f"bert,size={'tiny' if quick else 'base'}")
  cfg.data.seq_len = seq_len
  cfg.model.max_len = max(cfg.model.max_len, seq_len)
  cfg.model.dropout_rate = 0.0  # dropout moves no bytes; its masks only cost compile time
  return cfg


def build(cfg: ml_collections.ConfigDict, mesh_axes: dict, vocab: int) -> Trainer:
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(mesh_axes))
  rules = sharding_lib.rules_from_config(cfg.mesh.rules)
  model_cfg = TransformerConfig.from_config(cfg.model, vocab)
  program = objectives.get(cfg.objective.name).program(model_cfg, cfg.objective, cfg.data)
  return Trainer(program, optim.make_optimizer(cfg.optimizer, cfg.total_steps), mesh, rules)


def compiled_hlo(trainer: Trainer, batch_size: int, seq_len: int) -> str:
  """The optimised per-device HLO of the train step (compiled, never run)."""
  state = trainer.init_state(0)
  rows = np.zeros((batch_size, seq_len), np.int32)
  batch = dict(inputs=rows, token_types=rows, segment_ids=rows + 1, positions=rows)
  batch.update(mlm_targets=rows, mlm_weights=rows.astype(np.float32), nsp_labels=rows[:, 0])
  return trainer.lower_train_step(state, trainer.train_batch(batch, 1)).compile().as_text()


def _split(spec_axes, mesh: jax.sharding.Mesh, axis: str) -> int:
  """How many ways a leaf is split over one mesh axis."""
  named = [a for axes in spec_axes if axes for a in (axes if isinstance(axes, tuple) else (axes,))]
  return mesh.shape[axis] if axis in named else 1


def expected_bytes(trainer: Trainer, cfg, batch_size: int, seq_len: int) -> dict[str, float]:
  """Per-device bytes FSDP, data and tensor parallelism should move (the module docstring)."""
  mesh = trainer.mesh
  d, f, t = (mesh.shape[a] for a in ("data", "fsdp", "tensor"))
  expected = dict.fromkeys(KINDS, 0.0)
  shardings = jax.tree.leaves(trainer.state_shardings.params)
  for leaf, sharding in zip(jax.tree.leaves(trainer.abstract_params), shardings):
    size = leaf.size * leaf.dtype.itemsize / _split(sharding.spec, mesh, "tensor")
    copies = d  # devices holding the same gradient shard after FSDP's reduce-scatter
    if _split(sharding.spec, mesh, "fsdp") > 1:
      expected["all-gather"] += 2 * size * (f - 1) / f
      expected["reduce-scatter"] += size * (f - 1) / f
      size /= f
    else:
      copies *= f
    expected["all-reduce"] += 2 * size * (copies - 1) / copies
  if t > 1:
    rows = batch_size // (d * f)
    activation = 4 * rows * seq_len * cfg.model.d_model
    predictions = 4 * rows * mlm.max_predictions(seq_len, cfg.objective.mask_prob)
    layers = 4 * cfg.model.num_layers + 1  # + the vocabulary-parallel embedding lookup
    share = 2 * (t - 1) / t
    expected["all-reduce"] += share * (layers * activation + predictions * cfg.model.d_model)
  return expected


def row(name: str, measured: dict, expected: dict) -> str:
  mb = lambda x: f"{x / 2**20:.1f}"
  total_m, total_e = sum(measured.values()), sum(expected.values())
  ratio = f"{total_m / total_e:.2f}" if total_e else "—"
  cells = [f"{mb(measured[k])} / {mb(expected[k])}" for k in KINDS]
  return f"| {name} | " + " | ".join(cells) + f" | {mb(total_m)} / {mb(total_e)} | {ratio} |"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(_MESHES.value) - set(MESHES))
  if unknown:
    raise app.UsageError(f"--meshes: unknown {unknown}; choose from {list(MESHES)}")
  seq_len = 32 if _QUICK.value else _SEQ.value
  cfg = config(_QUICK.value, seq_len)
  vocab = 1024 if _QUICK.value else VOCAB
  print(
      f"bert-{'tiny' if _QUICK.value else 'base'} MLM+NSP train step, batch {_BATCH.value} x "
      f"{seq_len}, vocab {vocab}, fp32, {jax.device_count()} {jax.devices()[0].platform} devices"
  )
  print("\nMB per device per step, measured / expected\n")
  print("| mesh | " + " | ".join(KINDS) + " | total | × expected |")
  print("|---|" + "---:|" * (len(KINDS) + 2))
  for name in _MESHES.value:
    start = time.perf_counter()
    trainer = build(cfg, MESHES[name], vocab)
    hlo = compiled_hlo(trainer, _BATCH.value, seq_len)
    measured = measured_bytes(hlo, trainer.mesh.size)
    expected = expected_bytes(trainer, cfg, _BATCH.value, seq_len)
    print(row(name, measured, expected), flush=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
