"""End-to-end pretraining through experiments.pretrain.run: learning, outputs, errors (resume:
test_preemption.py)."""

import json
import os

import numpy as np
import pytest

from experiments import pretrain
from lmreuse.train import restore
from lmreuse.train.writers import read_metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,metric",
    [
        ("bert", "mlm_loss"),
        ("gpt", "clm_loss"),
        ("prefix_lm", "prefix_lm_loss"),
        ("t5", "span_loss"),
    ],
)
def test_pretraining_learns_and_writes_the_workdir(tiny_config, tmp_path, preset, metric):
  config = tiny_config(
      preset,
      total_steps=40,
      log_every=5,
      eval_every=20,
      checkpoint_every=20,
      **{"optimizer.warmup_steps": 5, "optimizer.learning_rate": 3e-3},
  )
  results = pretrain.run(config, str(tmp_path))
  records = read_metrics(str(tmp_path))
  losses = [r[f"train/{metric}"] for r in records if f"train/{metric}" in r]
  assert losses[-1] < losses[0] - 0.3, losses  # ~ln(1024) at start; noise is far smaller
  assert {"train/loss", "train/learning_rate", "train/tokens_per_sec"} <= set(records[0])
  assert [r["step"] for r in records if "eval/loss" in r] == [20, 40]
  assert set(os.listdir(tmp_path / "checkpoints")) >= {"40"}
  assert os.listdir(tmp_path / "tensorboard")
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["metrics"]["eval/loss"] == results["metrics"]["eval/loss"]
  assert saved["steps"] == 40 and saved["parameters"] > 0 and saved["devices"]["count"] >= 1
  assert {"git_sha", "packages", "wall_time_sec", "config"} <= set(saved)
  assert json.loads((tmp_path / "config.json").read_text())["objective"]["name"] == (
      config.objective.name
  )


def test_a_different_config_in_an_existing_workdir_is_refused(tiny_config, tmp_path):
  config = tiny_config("bert", total_steps=2, checkpoint_every=2)
  pretrain.run(config, str(tmp_path))
  before = (tmp_path / "metrics.jsonl").read_text()
  changed = tiny_config("bert", total_steps=2, checkpoint_every=2, **{"optimizer.b2": 0.98})
  with pytest.raises(ValueError, match=r"config\.optimizer\.b2: 0\.999 → 0\.98"):
    pretrain.run(changed, str(tmp_path))
  assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing lost or overwritten
  changed.overwrite = True
  pretrain.run(changed, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["b2"] == 0.98


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"model.num_heads": 3},
            r"config\.model\.d_model=64 is not divisible by config\.model\.num_heads=3",
        ),
        ({"mesh.data": 3}, r"config\.mesh"),
        ({"batch_size": 6, "grad_accum_steps": 4}, r"config\.batch_size=6 is not divisible"),
        ({"objective.name": "clm"}, r"config\.objective\.name='clm' trains a decoder"),
        ({"objective.name": "mlm_typo"}, r"config\.objective\.name='mlm_typo' is unknown"),
        ({"optimizer.schedule": "step"}, r"config\.optimizer\.schedule='step'"),
        ({"data.seq_len": 64}, r"config\.data\.seq_len=64 exceeds config\.model\.max_len=32"),
        ({"prng_impl": "philox"}, r"config\.prng_impl='philox' is not one of"),
    ],
)
def test_bad_configs_fail_before_anything_is_written(tiny_config, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    pretrain.run(tiny_config("bert", **overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_another_objectives_flag_fails_before_anything_is_written(tiny_config, tmp_path):
  with pytest.raises(
      ValueError, match=r"config\.objective\.nsp=True only applies to objective='mlm'"
  ):
    pretrain.run(tiny_config("gpt", **{"objective.nsp": True}), str(tmp_path / "w"))
  # A prefix LM's objective and its model's attention go together, both ways.
  for preset, objective, wants in (("gpt", "prefix_lm", True), ("prefix_lm", "clm", False)):
    config = tiny_config(preset, **{"objective.name": objective})
    with pytest.raises(ValueError, match=rf"config\.model\.prefix_lm={wants}, but it is"):
      pretrain.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_pretraining_draws_its_keys_from_config_prng_impl(tiny_config, tmp_path):
  config = tiny_config("bert", total_steps=2, checkpoint_every=2, prng_impl="unsafe_rbg")
  pretrain.run(config, str(tmp_path))
  saved = restore.load_tree(str(tmp_path / "checkpoints" / "2" / "state"))
  assert np.shape(saved["rng"]) == (4,)  # rbg keys are 4 words, threefry's 2
