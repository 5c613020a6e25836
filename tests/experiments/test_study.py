"""A tiny study end to end: grid expansion, shared pretraining, interruption and resume,
one-cell runs, and aggregated mean/std that match the child runs' results.json."""

import json
import os

import numpy as np
import pytest

from configs import study as study_config
from experiments import finetune, study
from lmreuse.study import grid


@pytest.fixture
def tiny_study(tokenizer_path, tfds_dir):
  config = study_config.get_config("tiny")
  config.study.strategies = ("full", "lora")
  config.study.seeds = (0, 1)
  config.study.from_scratch = False
  config.pretrain.update(dict(
      total_steps=2, batch_size=8, eval_steps=1, checkpoint_every=2, log_every=1,
      tokenizer=dict(path=tokenizer_path, vocab_size=1024, num_sentinels=32),
      data=dict(seq_len=32, tfds_dir=tfds_dir), model=dict(max_len=32)))
  config.finetune.update(dict(
      total_steps=2, batch_size=8, eval_every=0, checkpoint_every=2, log_every=1, max_len=24,
      optimizer=dict(warmup_steps=1), strategy=dict(rank=4),
      task=dict(max_train_examples=32, max_eval_examples=16)))
  return config


def test_grid_names_dependencies_and_selection(tiny_study):
  tiny_study.study.from_scratch = True
  cells = grid.expand(tiny_study.study)
  assert [c.name for c in cells[:3]] == ["pretrain-bert", "wordnet_supersense.bert.full.seed0",
                                         "wordnet_supersense.bert.full.seed1"]
  assert len(cells) == 1 + 2 * 2 * 2  # pretraining + (pretrained, scratch) × 2 × 2 seeds
  assert {c.depends_on for c in cells[1:]} == {"pretrain-bert"}
  assert [c.index for c in grid.select(cells, "*scratch.lora*")] == [7, 8]
  assert grid.select(cells, "3") == [cells[3]]
  with pytest.raises(ValueError, match="matches no cell"):
    grid.select(cells, "*nothing*")
  scratch = grid.child_config(cells[-1], tiny_study, "/s")
  assert scratch.from_scratch and scratch.init_from == "/s/runs/pretrain-bert"
  assert scratch.seed == 1 and scratch.strategy.name == "lora"
  assert scratch.optimizer.learning_rate == tiny_study.finetune.learning_rate


def test_existing_checkpoints_join_the_grid_without_pretraining_cells(tiny_study, tmp_path):
  tiny_study.study.checkpoints = (f"minilm=hf:{tmp_path}", f"mine={tmp_path}")
  cells = grid.expand(tiny_study.study)
  minilm = [c for c in cells if ".minilm." in c.name]
  assert [c.name for c in minilm] == [f"wordnet_supersense.minilm.{s}.seed{i}"
                                      for s in ("full", "lora") for i in (0, 1)]
  assert {c.depends_on for c in minilm} == {None} and len(cells) == 1 + 3 * 2 * 2
  child = grid.child_config(minilm[0], tiny_study, "/s")
  assert child.init_from == f"hf:{tmp_path}" and not child.from_scratch
  assert grid.child_config(cells[-1], tiny_study, "/s").init_from == str(tmp_path)
  for bad, message in (("minilm", "write NAME=hf:DIR"), ("a.b=hf:/x", "without '.'"),
                       ("bert=hf:/x", "is taken"), ("x=hf:/nowhere", "/nowhere is not a dir")):
    tiny_study.study.checkpoints = (bad,)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      grid.expand(tiny_study.study)


class Interrupted(BaseException):
  """Like a Ctrl-C or a preempted host: not a cell failure, so the study stops."""


@pytest.mark.slow
def test_a_study_survives_interruption_and_aggregates_its_seeds(tiny_study, tmp_path,
                                                                monkeypatch):
  original, calls = finetune.run, []

  def interrupt_the_third(config, workdir):
    calls.append(os.path.basename(workdir))
    if len(calls) == 3:
      raise Interrupted()
    return original(config, workdir)

  monkeypatch.setattr(finetune, "run", interrupt_the_third)
  with pytest.raises(Interrupted):
    study.run(tiny_study, str(tmp_path))
  monkeypatch.setattr(finetune, "run", original)
  cells = json.loads((tmp_path / "study.json").read_text())["cells"]
  assert [grid.status(str(tmp_path), grid.Cell(**c)) for c in cells] == [
      "finished", "finished", "finished", "pending", "pending"]

  result = study.run(tiny_study, str(tmp_path))  # resumes: only the last two cells run
  assert not result["failed"]
  for name in ("results.md", "results.csv", "results.tex"):
    assert (tmp_path / name).stat().st_size > 0
  for cell in cells[1:]:
    assert (tmp_path / cell["workdir"] / "results.json").exists()

  def child(name):
    return json.loads((tmp_path / "runs" / name / "results.json").read_text())

  for strategy in ("full", "lora"):
    accuracies = [child(f"wordnet_supersense.bert.{strategy}.seed{s}")["metrics"]["test/accuracy"]
                  for s in (0, 1)]
    row = next(r for r in result["report"]["summary"] if r["strategy"] == strategy)
    assert row["test/accuracy.mean"] == pytest.approx(np.mean(accuracies))
    assert row["test/accuracy.std"] == pytest.approx(np.std(accuracies, ddof=1))
