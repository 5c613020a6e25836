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
    bert_pretrained, finetune_config, tmp_path):
  pretrained_dir, _ = bert_pretrained
  workdir = str(tmp_path)
  config = finetune_config(init_from=pretrained_dir, checkpoint_every=2, keep_checkpoints=2,
                           **{"strategy.name": "lora"})
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
