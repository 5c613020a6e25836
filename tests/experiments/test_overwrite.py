"""Re-running a fine-tuning workdir: past a checkpoint that does not restore, and with
--config.overwrite=True, where nothing of the earlier run survives into the new one and files
that no run writes are never removed. One test, so that the runs serve both."""

import glob
import json
import os
import time

import pytest

from experiments import finetune
from lmreuse import workdir as workdir_lib


@pytest.mark.slow
def test_a_rerun_falls_back_past_a_bad_checkpoint_and_overwrite_leaves_nothing(
    bert_pretrained, finetune_config, tmp_path
):
  pretrained_dir, _ = bert_pretrained
  workdir = str(tmp_path)
  config = finetune_config(
      init_from=pretrained_dir, checkpoint_every=2, keep_checkpoints=2, **{"strategy.name": "lora"}
  )
  results = finetune.run(config, workdir)
  # The final checkpoint truncated: the rerun resumes from step 2 and ends where the first run
  # did (the best checkpoint, saved at step 4 too, is saved again rather than refused).
  for path in glob.glob(f"{workdir}/checkpoints/4/state/**/d/*", recursive=True):
    os.truncate(path, 10)
  assert finetune.run(config, workdir)["metrics"] == results["metrics"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "unrestorable"]
  first = set(os.listdir(workdir))
  assert "trainable" in first  # what a parameter-efficient run leaves, and a later one loaded
  # Every output is one overwrite knows about (a new, unlisted output fails here).
  assert first - {"config.json"} <= set(workdir_lib.RUN_OUTPUTS), first

  second = finetune_config(init_from=pretrained_dir, seed=1, overwrite=True)
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"also holds \['notes\.txt'\], which no run writes"):
    finetune.run(second, workdir)
  assert set(os.listdir(workdir)) == first | {"notes.txt"}  # refused before removing anything
  os.remove(tmp_path / "notes.txt")
  (tmp_path / ".tmp-results.json-x1y2").write_text("{")  # a crashed atomic write

  start = time.time_ns()
  finetune.run(second, workdir)
  assert "trainable" not in os.listdir(workdir)
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      assert os.stat(path).st_mtime_ns >= start, f"{path} survived the overwrite"
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["config"]["seed"] == 1 and saved["config"]["strategy"]["name"] != "lora"


@pytest.mark.slow
def test_a_run_that_trains_its_tokenizer_writes_it_only_once_it_may_write(
    finetune_config, tmp_path
):
  """A from-scratch fine-tuning run trains its own SentencePiece model: a run refused by a
  later check writes none, and an overwrite trains a new one instead of reusing (then
  deleting) the old run's."""

  def config(vocab_size, **overrides):
    return finetune_config(
        total_steps=1,
        checkpoint_every=1,
        **{
            "tokenizer.path": "",
            "tokenizer.vocab_size": vocab_size,
            "tokenizer.max_sentences": 2000,
            **overrides,
        },
    )

  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"config.max_len=1000 exceeds"):  # after the tokenizer
    finetune.run(config(512, max_len=1000), str(workdir))
  assert not (workdir / "tokenizer").exists()
  finetune.run(config(512), str(workdir))
  spm = workdir / "tokenizer" / "spm.model"
  first = spm.read_bytes()
  results = finetune.run(config(544, overwrite=True), str(workdir))
  assert spm.exists() and spm.read_bytes() != first
  assert results["tokenizer"] == str(spm) and results["model"]["vocab_size"] == 544
