"""Post-training quantization of a fine-tuned run: scores within a stated bound of the float
model, storage at most 0.3× (int8) of float's, activations really quantized, clear misfits;
and QLoRA-style fine-tuning on a quantized frozen base."""

import json
import os

import numpy as np
import pytest
from flax import traverse_util

from configs import compress as compress_config
from experiments import compress, finetune
from lmreuse.train import restore

# Test accuracy may move by at most this much under int8 (128 test glosses: 2 predictions).
INT8_ACCURACY_BOUND = 2 / 128


@pytest.fixture(scope="module")
def finetuned(bert_pretrained, finetune_config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finetuned")
  config = finetune_config(
      "bert",
      init_from=bert_pretrained[0],
      total_steps=20,
      learning_rate=3e-3,
      **{"task.max_train_examples": 256, "task.max_eval_examples": 128},
  )
  return str(workdir), finetune.run(config, str(workdir))


def quantize(finetuned_dir, preset, workdir):
  config = compress_config.get_config(preset)
  config.init_from = finetuned_dir
  return compress.run(config, str(workdir))


@pytest.mark.slow
def test_int8_stays_close_to_float_in_under_a_third_of_its_bytes(finetuned, tmp_path):
  finetuned_dir, ft_results = finetuned
  results = {p: quantize(finetuned_dir, p, tmp_path / p) for p in ("int8", "int8w", "int4w")}
  int8 = results["int8"]
  # The float reference is the fine-tuned run's own evaluation, recomputed by the same code.
  for key in ("test/accuracy", "validation/accuracy", "test/loss"):
    assert int8["reference"]["metrics"][key] == pytest.approx(ft_results["metrics"][key], 1e-6)
  assert abs(int8["metrics"]["test/accuracy"] - ft_results["metrics"]["test/accuracy"]) <= (
      INT8_ACCURACY_BOUND
  )
  # Quantization is not a no-op, and int8 activations change the numbers beyond int8 weights.
  losses = {p: r["metrics"]["test/loss"] for p, r in results.items()}
  assert len({*losses.values(), ft_results["metrics"]["test/loss"]}) == 4, losses
  sizes = {p: r["model_bytes"] for p, r in results.items()}
  float_bytes = int8["reference"]["model_bytes"]
  assert sizes["int8"] == sizes["int8w"] <= 0.3 * float_bytes
  assert sizes["int4w"] < 0.6 * sizes["int8"]
  saved = json.loads((tmp_path / "int8" / "results.json").read_text())
  assert saved["quantization"]["activations"] == "int8"
  assert len(open(tmp_path / "int8" / "predictions.jsonl").readlines()) == 128


def test_misfits_fail_before_writing(bert_pretrained, tmp_path):
  for change, message in (
      (dict(weights="int3"), r"config.quantize.weights='int3' is not one of"),
      (dict(activations="fp8"), r"config.quantize.activations='fp8' is not one of"),
  ):
    config = compress_config.get_config("int8")
    config.init_from = bert_pretrained[0]  # the types are checked first
    config.quantize.update(change)
    with pytest.raises(ValueError, match=message):
      compress.run(config, str(tmp_path / "W"))
  config = compress_config.get_config("int8")
  config.init_from = bert_pretrained[0]
  with pytest.raises(ValueError, match="is a 'pretrain' run, not a fine-tuning run"):
    compress.run(config, str(tmp_path / "W"))
  config.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="must be a finished fine-tuning workdir"):
    compress.run(config, str(tmp_path / "W"))
  with pytest.raises(ValueError, match="choose a preset from"):
    compress_config.get_config("int2")
  # Generation decodes with its own float model: int8 activations would not reach it. Refused
  # from the run's records alone, before the run is rebuilt.
  seq2seq = tmp_path / "seq2seq"
  seq2seq.mkdir()
  (seq2seq / "config.json").write_text(json.dumps({"experiment": "finetune"}))
  (seq2seq / "results.json").write_text(json.dumps({"task": {"type": "seq2seq"}}))
  config.init_from = str(seq2seq)
  with pytest.raises(ValueError, match="quantize the weights only"):
    compress.run(config, str(tmp_path / "W"))
  assert not os.path.exists(tmp_path / "W")


@pytest.mark.slow
def test_qlora_trains_float_factors_on_a_quantized_frozen_base(
    bert_pretrained, finetune_config, tmp_path
):
  config = finetune_config(
      "bert",
      init_from=bert_pretrained[0],
      total_steps=2,
      **{"strategy.name": "lora", "strategy.quantize_base": "int4"},
  )
  setup = finetune.build(config, str(tmp_path / "built"))
  loaded = flat(restore.load_params(bert_pretrained[0]))
  params = flat(setup.trainer.to_host(setup.state.params))
  kernel = "backbone/stack/layers_0/self_attention/query/kernel"
  assert not np.array_equal(params[kernel], loaded[kernel])  # quantized ...
  # ... onto int4's grid: each output channel takes at most 16 values (64 before)
  columns = params[kernel].reshape(params[kernel].shape[0], -1).T
  assert max(len(np.unique(c)) for c in columns) <= 16
  assert min(len(np.unique(c)) for c in loaded[kernel].reshape(columns.shape[::-1]).T) == 64
  norm = "backbone/stack/layers_0/mlp_norm/norm/scale"
  assert np.array_equal(params[norm], loaded[norm])  # vectors stay float, as loaded
  results = finetune.run(config, str(tmp_path / "run"))
  base = results["quantized_base"]
  assert base["weights"] == "int4" and base["model_bytes"] <= 0.2 * base["float_bytes"]
  float_total = sum(v.nbytes for v in params.values())  # the quantized base, the rest float
  assert results["model_bytes"] == float_total - base["float_bytes"] + base["model_bytes"]
  config.strategy.quantize_base = "int3"
  with pytest.raises(ValueError, match=r"config\.strategy\.quantize_base='int3' is not one of"):
    finetune.build(config, str(tmp_path / "bad"))


def flat(tree):
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(tree, sep="/").items()}
