"""End-to-end fine-tuning through experiments.finetune: reuse, every task type, early stopping,
resume, and bad input that must leave the workdir alone."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from experiments import finetune
from lmreuse.train import restore
from lmreuse.train.writers import read_metrics


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_finetuning_a_pretrained_bert_loads_the_encoder_bitwise(bert_pretrained, finetune_config,
                                                               tmp_path):
  pretrained_dir, _ = bert_pretrained
  config = finetune_config(init_from=pretrained_dir, **{"viz.enabled": True})
  setup = finetune.build(config, str(tmp_path))
  pretrained = traverse_util.flatten_dict(restore.load_params(pretrained_dir), sep="/")
  fresh = traverse_util.flatten_dict(jax.device_get(setup.state.params), sep="/")
  assert setup.report["new"] == ["classifier/dense/bias", "classifier/dense/kernel"]
  assert set(setup.report["loaded"]) == {p for p in fresh if not p.startswith("classifier/")}
  assert any(p.startswith("pooler/") for p in setup.report["loaded"])  # NSP's pooler is reused
  assert {p.split("/")[0] for p in setup.report["dropped"]} == {"mlm_head", "nsp_head"}
  for path in setup.report["loaded"]:
    np.testing.assert_array_equal(fresh[path], pretrained[path])
  assert not os.listdir(tmp_path)  # building writes nothing

  results = finetune.run(config, str(tmp_path))
  report = json.loads((tmp_path / "init_report.json").read_text())
  assert report["counts"]["new"] == 2 and report["new"] == setup.report["new"]
  metrics = results["metrics"]
  for split in ("validation", "test"):
    assert {f"{split}/accuracy", f"{split}/macro_f1", f"{split}/mcc", f"{split}/loss"} <= set(
        metrics)
  assert results["parameters"]["trainable"] == results["parameters"]["total"] > 0
  assert results["steps"] == 4 and results["best_step"] == 4
  labels = json.loads((tmp_path / "labels.json").read_text())["labels"]
  assert len(labels) == 45 and "noun.animal" in labels
  predictions = read_jsonl(tmp_path / "predictions.jsonl")
  assert len(predictions) == 16
  assert all(p["prediction"] in labels and p["text"] for p in predictions)
  accuracy = np.mean([p["prediction"] == p["label"] for p in predictions])
  assert accuracy == pytest.approx(metrics["test/accuracy"])
  plots = {os.path.basename(p) for p in results["viz"]["plots"]}
  assert plots == {"pca_before.png", "pca_after.png", "tsne_before.png", "tsne_after.png",
                   "attention.png"}
  assert all((tmp_path / "plots" / name).stat().st_size > 0 for name in plots)
  assert set(results["viz"]["silhouette"]) == {"before", "after"}


def write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def regression_files(tmp_path):
  rows = ["text\tpair\tscore"]
  words = ["dog", "cat", "tree", "river", "stone", "bird", "house", "cloud"]
  for i in range(40):
    a, b = words[i % 8], words[(i * 3) % 8]
    rows.append(f"a {a} near the {b}\tthe {b}\t{(i % 5) / 4:.2f}")
  return {"task.name": "local", "task.type": "regression",
          "task.train_path": write_lines(tmp_path / "train.tsv", rows[:33]),
          "task.test_path": write_lines(tmp_path / "test.tsv", rows[:1] + rows[33:]),
          "task.text_pair_column": "pair", "task.label_column": "score"}


def tagging_files(tmp_path):
  sentences = ["the Dog saw a Cat", "Rivers run to the Sea", "a Bird in the Tree sang"] * 8
  rows = [json.dumps({"tokens": s.split(), "tags": ["B-NAME" if w[0].isupper() else "O"
                                                     for w in s.split()]}) for s in sentences]
  return {"task.name": "local", "task.type": "tagging",
          "task.train_path": write_lines(tmp_path / "train.jsonl", rows[:20]),
          "task.validation_path": write_lines(tmp_path / "dev.jsonl", rows[20:]),
          "task.test_path": write_lines(tmp_path / "test.jsonl", rows[20:])}


CASES = {
    "regression": ("bert", regression_files, "pearson"),
    "tagging": ("bert", tagging_files, "f1"),
    "extractive_qa": ("bert", lambda _: {"task.name": "wordnet_headword_qa",
                                         "task.max_query_len": 12, "task.doc_stride": 8},
                      "exact_match"),
    "pair_classification_on_a_decoder": ("gpt", lambda _: {"task.name": "wordnet_relation"},
                                         "accuracy"),
    "seq2seq_encoder_decoder": ("t5", lambda _: {"task.name": "wordnet_definition",
                                                "task.beam_size": 2}, "bleu"),
    "seq2seq_decoder": ("gpt", lambda _: {"task.name": "wordnet_definition"}, "rougeL"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_task_type_trains_and_reports_its_metrics(case, finetune_config, tmp_path):
  preset, overrides, metric = CASES[case]
  config = finetune_config(preset, **overrides(tmp_path))
  results = finetune.run(config, str(tmp_path / "run"))
  metrics = results["metrics"]
  assert {f"validation/{metric}", f"test/{metric}"} <= set(metrics)
  assert np.isfinite(metrics["validation/loss"]) and np.isfinite(metrics["test/loss"])
  records = read_metrics(str(tmp_path / "run"))
  assert np.isfinite(records[-1]["train/loss"])
  predictions = read_jsonl(tmp_path / "run" / "predictions.jsonl")
  assert predictions and all("prediction" in p for p in predictions)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint_and_a_rerun_does_not_train_on(
    finetune_config, tmp_path):
  # The loss falls, so under mode=max the first evaluation stays the best one.
  config = finetune_config(total_steps=50, eval_every=1, checkpoint_every=50,
                       **{"early_stopping.metric": "loss", "early_stopping.mode": "max",
                          "early_stopping.patience": 2, "learning_rate": 3e-3})
  results = finetune.run(config, str(tmp_path))
  assert results["stopped_early"] and results["steps"] == 3 and results["best_step"] == 1
  history = json.loads((tmp_path / "early_stopping.json").read_text())["history"]
  losses = [value for _, value in history]
  assert losses[0] == max(losses) == results["metrics"]["validation/loss"]
  assert os.listdir(tmp_path / "best") == ["1"]

  again = finetune.run(config, str(tmp_path))
  assert again["steps"] == 3 and again["metrics"] == results["metrics"]
  assert read_metrics(str(tmp_path))[-1]["step"] == 3


def test_bad_input_fails_naming_the_file_and_line_and_keeps_the_workdir(finetune_config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  (workdir / "results.json").write_text('{"metrics": {"test/accuracy": 0.9}}')
  train = write_lines(tmp_path / "train.csv", ["sentence,label", "a dog,animal"])
  config = finetune_config(overwrite=True, **{"task.name": "local", "task.type": "classification",
                                          "task.train_path": train})
  with pytest.raises(ValueError, match=r"train\.csv:1: .*'text'"):
    finetune.run(config, str(workdir))
  assert (workdir / "results.json").read_text() == '{"metrics": {"test/accuracy": 0.9}}'
  assert sorted(os.listdir(workdir)) == ["config.json", "results.json"]


def test_config_errors_name_the_key(finetune_config, tmp_path):
  with pytest.raises(ValueError, match="config.label_smoothing"):
    finetune.run(finetune_config(label_smoothing=1.5), str(tmp_path))
  with pytest.raises(ValueError, match="config.task.name='nope'"):
    finetune.run(finetune_config(**{"task.name": "nope"}), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config.init_from"):
    finetune.run(finetune_config(init_from=str(tmp_path / "missing")), str(tmp_path))
  with pytest.raises(ValueError, match="seq2seq.* cannot run on the encoder architecture"):
    finetune.run(finetune_config(**{"task.name": "wordnet_definition"}), str(tmp_path))
