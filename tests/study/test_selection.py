"""Per-group hyperparameter selection on hand-made rows: the best mean validation score wins,
test scores never decide, failed candidates are ineligible, pending ones make the choice
provisional, ties are shown, first-seed mode reads one seed and then asks only the winner."""

import pytest

from lmreuse.study import selection


def row(lr, seed, validation, test=0.5, status="ok"):
  finished = status == "ok"
  return {
      "task": "t",
      "init": "bert",
      "strategy": "full",
      "train_fraction": 1.0,
      "seed": seed,
      "name": f"t.bert.full.learning_rate={lr}.seed{seed}",
      "hparams": {"learning_rate": lr},
      "status": status,
      "task_type": "classification" if finished else None,
      "metrics": {"validation/accuracy": validation, "test/accuracy": test} if finished else {},
  }


def choose(rows, first_seed=None):
  (choice,) = selection.choose_all(
      rows, "first_seed" if first_seed is not None else "all", first_seed
  ).values()
  return choice


def test_best_mean_validation_wins_and_test_never_decides():
  rows = [
      row(1e-3, 0, 0.30, test=0.90),
      row(1e-3, 1, 0.32, test=0.90),
      row(3e-3, 0, 0.40, test=0.10),
      row(3e-3, 1, 0.34, test=0.10),
      row(1e-2, 0, 0.20),
      row(1e-2, 1, 0.50),
  ]  # mean 0.35 but lower than 0.37
  choice = choose(rows)
  assert choice.selected.hparams == {"learning_rate": 3e-3}
  assert choice.selected.score["mean"] == pytest.approx(0.37)
  assert choice.complete and not choice.ties
  assert [r["seed"] for r in selection.reported(choice, rows)] == [0, 1]
  assert all(r["hparams"] == {"learning_rate": 3e-3} for r in selection.reported(choice, rows))
  assert choice.note() == ""  # 3e-3 is inside its range


def test_failed_cells_make_a_candidate_ineligible_and_pending_ones_provisional():
  rows = [
      row(1e-3, 0, 0.30),
      row(1e-3, 1, 0.30),
      row(3e-3, 0, 0.90),
      row(3e-3, 1, None, status="failed"),
      row(1e-2, 0, 0.10),
      row(1e-2, 1, None, status="missing"),
  ]
  choice = choose(rows)
  assert choice.selected.hparams == {"learning_rate": 1e-3}
  assert not choice.candidates[1].eligible
  assert not choice.complete
  assert choice.note() == (
      "provisional: 1 configuration still to run; learning_rate at the " "edge of its range"
  )

  dead = [row(1e-3, 0, None, status="failed"), row(3e-3, 0, None, status="failed")]
  choice = choose(dead)
  assert choice.selected is None and "no configuration finished" in choice.note()
  assert len(selection.reported(choice, dead)) == 2  # failures stay visible


def test_ties_are_broken_by_sweep_order_and_named():
  rows = [row(1e-3, 0, 0.122), row(3e-3, 0, 0.122), row(1e-2, 0, 0.122)]
  choice = choose(rows)
  assert choice.selected.hparams == {"learning_rate": 1e-3}
  assert [c.hparams["learning_rate"] for c in choice.ties] == [3e-3, 1e-2]
  assert "tied with learning_rate=0.003, learning_rate=0.01" in choice.note()


def test_first_seed_mode_reads_the_first_seed_and_then_needs_only_the_winner():
  rows = [
      row(1e-3, 0, 0.30),
      row(3e-3, 0, 0.40),
      row(1e-3, 1, None, status="missing"),
      row(3e-3, 1, None, status="missing"),
  ]
  choice = choose(rows, first_seed=0)
  assert choice.selected.hparams == {"learning_rate": 3e-3}
  assert [len(c.rows) for c in choice.candidates] == [1, 1]  # seed 1 does not vote
  assert choice.complete  # the first seed's sweep is done
  assert [selection.needed(choice, r, 0) for r in rows] == [True, True, False, True]

  unfinished = [
      row(1e-3, 0, 0.30),
      row(3e-3, 0, None, status="missing"),
      row(1e-3, 1, None, status="missing"),
  ]
  assert selection.needed(choose(unfinished, first_seed=0), unfinished[2], 0) is None


def test_selection_reads_each_task_types_headline_metric():
  rows = [
      dict(row(lr, 0, 0.0), task_type="regression", metrics={"validation/pearson": value})
      for lr, value in ((1e-3, 0.2), (3e-3, 0.8))
  ]
  assert choose(rows).selected.hparams == {"learning_rate": 3e-3}  # pearson: higher is better
  assert selection.describe({"learning_rate": 3e-3, "strategy.rank": 4}) == (
      "learning_rate=0.003, strategy.rank=4"
  )
