"""The workdir contract: config.json guards against mixing runs; results.json records one.

Re-running a config in its own workdir resumes it; a different config is refused (naming the
keys that differ) unless `config.overwrite=True`, which clears the previous run's outputs first.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from lmreuse import lock

# Every name a run writes in its workdir, spelled once: the experiments that write them, the
# readers (studies, reuse, reports) and overwrite all use these.
CONFIG = "config.json"  # the resolved config (guards against mixing runs)
CHECKPOINTS = "checkpoints"  # orbax: train state + data iterator, latest few steps
METRICS = "metrics.jsonl"  # one JSON object per log step
TENSORBOARD = "tensorboard"
RESULTS = "results.json"  # a finished run's record
TOKENIZER = "tokenizer"  # a SentencePiece model the run trained, or an HF import's files
BEST = "best"  # fine-tuning: the best checkpoint's parameters
TRAINABLE = "trainable"  # fine-tuning: the best trainable (head + strategy) parameters
SPARSE_MODEL = "sparse_model.safetensors"  # fine-tuning, pruned: the best model, stored sparse
EARLY_STOPPING = "early_stopping.json"
PREDICTIONS = "predictions.jsonl"
EXTRA_PREDICTIONS = "extra_eval"  # fine-tuning: <NAME>.jsonl per config.task.extra_eval set
# multi-task fine-tuning: <member key>/ holds that task's prediction files and, with
# config.task.selection="per_task", its own best/ and early_stopping.json
TASKS = "tasks"
ADAPT = "adapt"  # fine-tuning: config.adapt's continued pretraining, a pretraining workdir
ADAPT_CORPUS = "adapt_corpus.jsonl"  # fine-tuning: the task's training inputs it pretrains on
INIT_REPORT = "init_report.json"  # loaded / new / dropped parameter paths
LABELS = "labels.json"
PLOTS = "plots"
ERROR = "error.txt"  # a study cell that failed: its traceback
STUDY = "study.json"  # a study's manifest
RUNS = "runs"  # a study's cells, one workdir each
SWEEP_TABLE, COMPARISONS_TABLE = "sweep.csv", "comparisons.csv"
RESULTS_TABLES = ("results.csv", "results.md", "results.tex")
JAX_CACHE = "jax_cache"  # a study's compilation cache, shared by its cells
LAUNCH = "launch"  # a study's launch scripts (print_launch)

# Everything a run writes besides config.json (replaced) and the lock (held): what
# `config.overwrite=True` removes. An entry not listed here (a new output, or a user's file)
# makes an overwrite refuse, naming it, rather than survive into the new run or be deleted
# unseen.
RUN_OUTPUTS = (
    CHECKPOINTS,
    TENSORBOARD,
    METRICS,
    RESULTS,
    TOKENIZER,
    BEST,
    TRAINABLE,
    SPARSE_MODEL,
    EARLY_STOPPING,
    PREDICTIONS,
    EXTRA_PREDICTIONS,
    TASKS,
    ADAPT,
    ADAPT_CORPUS,
    INIT_REPORT,
    LABELS,
    PLOTS,
    ERROR,
    STUDY,
    RUNS,
    *RESULTS_TABLES,
    SWEEP_TABLE,
    COMPARISONS_TABLE,
    JAX_CACHE,
    LAUNCH,
)
_PARTIAL_WRITE = ".tmp-"  # write_atomically's temporary files, left by a crash
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "sentencepiece",
    "tensorflow-datasets",
    "numpy",
)


def tokenizer_dir(workdir: str) -> str:
  """A run's own tokenizer files: the SentencePiece model it trained, or an HF import's files."""
  return os.path.join(workdir, TOKENIZER)


def trained_tokenizer_path(workdir: str) -> str:
  """Where a run with config.tokenizer.path='' trains (and later finds) its SentencePiece model."""
  return os.path.join(tokenizer_dir(workdir), "spm.model")


def saved_tokenizer(workdir: str, saved: Mapping) -> str:
  """What `load_tokenizer` reads for a finished run, given its saved config.json: the configured
  path, else the model the run trained, else the HF tokenizer directory an import wrote."""
  if saved["tokenizer"]["path"]:
    return saved["tokenizer"]["path"]
  trained = trained_tokenizer_path(workdir)
  return trained if os.path.exists(trained) else tokenizer_dir(workdir)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON round-trip of the config, so tuples and lists compare equal to the saved file."""
  return json.loads(config.to_json())


# Top-level keys a resumed run may change: none alters the updates already made. total_steps
# may only grow (extending the run; see README "Extending a run" for the LR schedule).
RESUMABLE_KEYS = (
    "overwrite",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "nonfinite",
    "max_nonfinite_skips",
)


def _resumable(prefix: str, key: str, old: Any, new: Any) -> bool:
  if prefix != "config":
    return False
  if key == "total_steps":
    return isinstance(old, int) and isinstance(new, int) and new >= old
  return key in RESUMABLE_KEYS


def _diff(old: Mapping, new: Mapping, prefix: str = "config") -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}.{key}")
    elif a != b and not _resumable(prefix, key, a, b):
      out.append(f"{prefix}.{key}: {a!r} → {b!r}")
  return out


def _recorded(workdir: str) -> dict | None:
  """The config an earlier run recorded in `workdir`, or None when there is none."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def finished_results(workdir: str, config: ml_collections.ConfigDict) -> dict | None:
  """results.json of a run of `config` that finished in `workdir`, else None: what a caller
  reuses instead of resuming a run that has nothing left to do. The config results.json
  recorded must equal `config` key for key: an extended run (a larger total_steps) is not
  finished."""
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get("config") == config_to_dict(config) else None


def discards_run(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """True when `prepare` will remove an earlier run's outputs (overwrite of another config)."""
  old = _recorded(workdir) if config.overwrite else None
  return old is not None and bool(_diff(old, config_to_dict(config)))


def prepare(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Creates or checks `workdir`; returns True when an earlier run of this config is there."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG)
  new = config_to_dict(config)
  old = _recorded(workdir)
  if old is not None:
    differences = _diff(old, new)
    if not differences:
      if old != new and jax.process_index() == 0:  # an extended run records its new config
        write_json(path, new)
      return True
    if not config.overwrite:
      raise ValueError(
          f"{path} holds a different config ({'; '.join(differences[:8])}"
          f"{' ...' if len(differences) > 8 else ''}). Use another --workdir, or pass "
          "--config.overwrite=True to discard that run"
      )
    _remove_outputs(workdir)
  if jax.process_index() == 0:
    write_json(path, new)
  return False


def _remove_outputs(workdir: str) -> None:
  """Removes every output of the earlier run; refuses, removing nothing, if anything else is
  there (the workdir may be a directory the user keeps other files in)."""
  names = [n for n in os.listdir(workdir) if n not in (CONFIG, lock.LOCK_FILE)]
  unknown = sorted(n for n in names if n not in RUN_OUTPUTS and not n.startswith(_PARTIAL_WRITE))
  if unknown:
    raise ValueError(
        f"--config.overwrite=True: {workdir} also holds {unknown}, which no run writes; move "
        "them away or use another --workdir (overwrite removes only the outputs listed in "
        "lmreuse/workdir.py RUN_OUTPUTS)"
    )
  if jax.process_index() == 0:
    for name in names:
      target = os.path.join(workdir, name)
      if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
      else:
        os.remove(target)


def write_json(path: str, obj: Any) -> None:
  """Atomic write: a crash never leaves a half-written file behind."""
  write_atomically(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str, records: list[dict]) -> None:
  """One JSON object per line, written atomically like write_json."""
  write_atomically(path, "".join(json.dumps(r, default=str) + "\n" for r in records))


def write_atomically(path: str, data: str | bytes) -> None:
  """Readers (other hosts, other runs) see no file or the whole file, never a partial one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.path.basename(path)}-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users.
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def git_sha() -> str:
  try:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def package_versions() -> dict[str, str]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def write_results(
    workdir: str,
    config: ml_collections.ConfigDict,
    metrics: Mapping[str, Any],
    *,
    start_time: float,
    **extra: Any,
) -> dict:
  results = {
      "metrics": dict(metrics),
      **extra,
      "wall_time_sec": time.time() - start_time,
      "config": config_to_dict(config),
      "git_sha": git_sha(),
      "packages": package_versions(),
      "devices": {
          "count": jax.device_count(),
          "kind": jax.devices()[0].device_kind,
          "platform": jax.default_backend(),
          "processes": jax.process_count(),
      },
  }
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, RESULTS), results)
  return results
