"""Best-checkpoint selection and patience, including what a resumed run remembers."""

import pytest

from lmreuse.train.early_stopping import EarlyStopping, default_mode


def test_patience_counts_evaluations_since_the_best():
  stopper = EarlyStopping("accuracy", "max", patience=2)
  assert stopper.update(10, {"accuracy": 0.5}) == (True, False)
  assert stopper.update(20, {"accuracy": 0.7}) == (True, False)
  assert stopper.update(30, {"accuracy": 0.7}) == (False, False)  # a tie is no improvement
  assert stopper.update(40, {"accuracy": 0.6}) == (False, True)
  assert stopper.best == (20, 0.7) and stopper.stopped_at == 40
  assert default_mode("loss") == "min" and default_mode("bleu") == "max"


def test_restore_drops_evaluations_after_the_resumed_step(tmp_path):
  path = str(tmp_path / "early_stopping.json")
  stopper = EarlyStopping("loss", "min", patience=1)
  for step, loss in [(1, 3.0), (2, 2.0), (3, 2.5)]:
    stopper.update(step, {"loss": loss})
  stopper.save(path)
  assert stopper.stopped_at == 3
  resumed = EarlyStopping.restore(path, "loss", "min", 1, resume_step=2)
  assert resumed.history == [(1, 3.0), (2, 2.0)] and resumed.stopped_at == 0
  assert EarlyStopping.restore(path, "loss", "min", 1, resume_step=3).stopped_at == 3


def test_unknown_metric_and_bad_mode_are_named():
  with pytest.raises(ValueError, match=r"config.early_stopping.mode='up'"):
    EarlyStopping("loss", "up", 0)
  with pytest.raises(ValueError, match=r"config.early_stopping.metric='f1'"):
    EarlyStopping("f1", "max", 0).update(1, {"accuracy": 1.0})
