"""Reusing a pretraining checkpoint: exact loading by path, and a report of what was not."""

import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from lmreuse import objectives
from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.models.config import TransformerConfig
from lmreuse.train import restore


def test_backbone_loads_bitwise_and_heads_are_reported(bert_pretrained, tokenizer_path):
  workdir, config = bert_pretrained
  pretrained = restore.load_params(workdir)
  # A different model on the same backbone: MLM only, no NSP pooler/classifier.
  config = config.copy_and_resolve_references()
  config.objective.nsp = False
  vocab = tokenizer_lib.load_tokenizer(tokenizer_path).vocab_size
  program = objectives.get("mlm").program(
      TransformerConfig.from_config(config.model, vocab), config.objective, config.data
  )
  fresh = jax.device_get(nn.meta.unbox(program.init_params(jax.random.PRNGKey(7))))
  merged, report = restore.merge_params(fresh, pretrained)

  flat_old = traverse_util.flatten_dict(pretrained, sep="/")
  flat_new = traverse_util.flatten_dict(merged, sep="/")
  assert report["loaded"] and all(
      p.startswith(("backbone/", "mlm_head/")) for p in report["loaded"]
  )
  for path in report["loaded"]:
    np.testing.assert_array_equal(flat_new[path], flat_old[path])  # bitwise
  assert report["new"] == []
  assert report["dropped"] and all(
      p.startswith(("pooler/", "nsp_head/")) for p in report["dropped"]
  )
  # A step directory works as well as a workdir.
  step_dir = f"{workdir}/checkpoints/2"
  assert traverse_util.flatten_dict(restore.load_params(step_dir), sep="/").keys() == (
      flat_old.keys()
  )


def test_shape_mismatch_lists_the_paths(bert_pretrained):
  workdir, _ = bert_pretrained
  pretrained = restore.load_params(workdir)
  wrong = jax.tree.map(lambda x: np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), pretrained)
  with pytest.raises(ValueError, match=r"backbone/stack/token_embed/embedding: checkpoint"):
    restore.merge_params(wrong, pretrained)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="init_from="):
    restore.load_params(str(tmp_path))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_step(
    bert_pretrained, tmp_path, caplog
):
  from tests.train.test_checkpoint import truncate_arrays

  workdir, _ = bert_pretrained
  shutil.copytree(os.path.join(workdir, "checkpoints", "2"), tmp_path / "checkpoints" / "2")
  shutil.copytree(tmp_path / "checkpoints" / "2", tmp_path / "checkpoints" / "5")
  truncate_arrays(str(tmp_path / "checkpoints" / "5"))
  loaded = traverse_util.flatten_dict(restore.load_params(str(tmp_path)), sep="/")
  expected = traverse_util.flatten_dict(restore.load_params(workdir), sep="/")
  assert loaded.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(loaded[path], value)
  assert "checkpoints/5/state does not restore" in caplog.text
  truncate_arrays(str(tmp_path / "checkpoints" / "2"))
  with pytest.raises(RuntimeError, match=r"no checkpoint restores; tried .*/5/state: .*/2/state"):
    restore.load_params(str(tmp_path))
