"""Continued pretraining before fine-tuning (config.adapt, experiments/adapt.py)."""

import json
import os

import numpy as np
import pytest
from flax import traverse_util

from experiments import finetune, pretrain
from lmreuse import workdir as workdir_lib
from lmreuse.data.corpus import text_file
from lmreuse.train import restore


def flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def lines(path) -> list[str]:
  with open(path) as f:
    return f.read().splitlines()


@pytest.mark.slow
def test_task_adaptive_pretraining_moves_the_backbone_fine_tuning_starts_from(
    bert_pretrained, finetune_config, tmp_path
):
  """W/adapt continues init_from's MLM + NSP on the task's training inputs; fine-tuning then
  evaluates exactly as a run from W/adapt itself does; a rerun reuses the finished phase."""
  base_dir, _ = bert_pretrained
  keys = {"init_from": base_dir, "total_steps": 0, "adapt.steps": 2}
  config = finetune_config("bert", **keys)
  results = finetune.run(config, str(tmp_path / "ft"))

  record = results["adapt"]
  adapt_dir = str(tmp_path / "ft" / workdir_lib.ADAPT)
  assert record["init_from"] == adapt_dir and record["steps"] == 2 and record["corpus"] == "task"
  assert set(record["validation_before"]) == set(record["validation_after"]) >= {"eval/loss"}
  assert record["loss_before"] == record["validation_before"]["eval/loss"]
  assert np.isfinite(record["loss_after"]) and record["loss_after"] != record["loss_before"]
  # The corpus: one document per training example, its input text and never its label.
  train = finetune.load_data(config).splits["train"]
  corpus = [json.loads(line)["segments"] for line in lines(tmp_path / "ft" / "adapt_corpus.jsonl")]
  assert corpus == [[e["text"]] for e in train]
  assert sum(record["documents"].values()) == len(train)
  # The phase is a pretraining run of init_from's own config, continued from its weights.
  adapt_config = json.loads((tmp_path / "ft" / "adapt" / workdir_lib.CONFIG).read_text())
  base_config = json.loads((tmp_path / base_dir / workdir_lib.CONFIG).read_text())
  assert adapt_config["objective"] == base_config["objective"]
  assert adapt_config["model"] == base_config["model"] and adapt_config["init_from"] == base_dir
  before, after = flat(restore.load_params(base_dir)), flat(restore.load_params(adapt_dir))
  assert sorted(before) == sorted(after)
  moved = [p for p in before if not np.array_equal(before[p], after[p])]
  assert any("layers_0" in p for p in moved), "the backbone did not move"

  # Fine-tuning started from the adapted weights: a run from W/adapt itself scores the same.
  direct = finetune.run(
      finetune_config("bert", **{**keys, "adapt.steps": 0, "init_from": adapt_dir}),
      str(tmp_path / "direct"),
  )
  test = lambda r: {k: v for k, v in r["metrics"].items() if k.startswith("test/")}
  assert test(results) and test(results) == test(direct)
  report = json.loads((tmp_path / "ft" / workdir_lib.INIT_REPORT).read_text())
  assert report["new"] and all("head" in p or "classifier" in p for p in report["new"]), report

  # A rerun finds the phase finished and reuses it, and its corpus, as they are.
  written = [
      tmp_path / "ft" / "adapt" / workdir_lib.RESULTS,
      tmp_path / "ft" / "adapt_corpus.jsonl",
  ]
  finished = [path.stat().st_mtime_ns for path in written]
  again = finetune.run(config, str(tmp_path / "ft"))
  assert again["adapt"] == record
  assert [path.stat().st_mtime_ns for path in written] == finished


def test_bad_adaptations_fail_before_writing(bert_pretrained, finetune_config, tmp_path):
  base_dir, _ = bert_pretrained
  workdir = tmp_path / "ft"
  cases = {
      "needs init_from set and from_scratch=False": {"from_scratch": True},
      "nowhere.txt' does not exist": {"adapt.corpus": str(tmp_path / "nowhere.txt")},
      "neither 'wordnet' nor a text corpus file": {"adapt.corpus": str(tmp_path / "a.csv")},
      "config.adapt.batch_size=-1 must be >= 0": {"adapt.batch_size": -1},
  }
  for message, keys in cases.items():
    config = finetune_config("bert", init_from=base_dir, **{"adapt.steps": 2, **keys})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      finetune.run(config, str(workdir))
  # init_from a fine-tuning run: there is no pretraining objective to continue.
  finetune.run(finetune_config("bert", init_from=base_dir, total_steps=0), str(tmp_path / "done"))
  config = finetune_config("bert", init_from=str(tmp_path / "done"), **{"adapt.steps": 2})
  with pytest.raises(ValueError, match="is a 'finetune' run"):
    finetune.run(config, str(workdir))
  assert not workdir.exists()


def test_continued_pretraining_takes_init_froms_model_and_tokenizer(bert_pretrained, tiny_config):
  base_dir, base_config = bert_pretrained
  config = pretrain.continued(tiny_config("bert", init_from=base_dir, **{"model.num_layers": 5}))
  saved = json.loads(open(f"{base_dir}/{workdir_lib.CONFIG}").read())
  assert config.model.to_dict() == saved["model"] and config.model.num_layers == 2
  assert config.tokenizer.path == base_config.tokenizer.path
  with pytest.raises(ValueError, match="starts from an lmreuse pretraining workdir"):
    pretrain.continued(tiny_config("bert", init_from="hf:/somewhere"))


@pytest.mark.slow
def test_pretraining_on_a_text_file_trains_its_tokenizer_on_it(tiny_config, tmp_path):
  """config.data.corpus=PATH: documents from the file, a tokenizer trained on its training
  split, a validation split smaller than a batch evaluated all the same."""
  from lmreuse.data.corpus import wordnet

  text = list(wordnet.segments("train"))[:4000]
  path = tmp_path / "domain.txt"
  path.write_text("".join(f"{s}\n" + ("\n" if i % 4 == 3 else "") for i, s in enumerate(text)))
  config = tiny_config("gpt", total_steps=2, eval_steps=3, **{"data.corpus": str(path)})
  config.tokenizer.path = ""
  config.tokenizer.vocab_size = 512
  results = pretrain.run(config, str(tmp_path / "run"))
  assert np.isfinite(results["metrics"]["eval/loss"]) and "metrics_before" not in results
  assert os.path.exists(workdir_lib.trained_tokenizer_path(str(tmp_path / "run")))
  assert len(text_file.data_source(str(path), "validation")) == round(0.05 * len(text) / 4)
