"""Is one study row better than another? Seed intervals, Welch's test, a paired bootstrap.

Two kinds of noise separate two rows of a study: the seeds (training randomness) and the test
set (which examples happened to be drawn). `interval` and `welch` look at the first, from the
per-seed headline numbers in results.json. `compare_predictions` looks at both at once from
predictions.jsonl: it resamples test examples with replacement, the same resample for both rows
and every seed (the pairing: an example that is hard for one row is usually hard for the other,
and that shared difficulty cancels in the difference), and averages each row over its seeds.
`adjust` corrects a table's p-values for testing many comparisons at once.

Everything statistical is scipy.stats; the metrics are the task types' own (`TaskType.score`,
and for resamples their `per_example` values or `sufficient_statistics` counts, which give the
same numbers without re-scoring).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from lmreuse import tasks
from lmreuse.eval import metrics

if TYPE_CHECKING:
  from lmreuse.tasks.base import TaskType

N_RESAMPLES = 1000
# Differences closer to 0 than this are ties: the per-example mean and re-scoring sum the same
# numbers in different orders, and the paths must agree on which resamples tie.
_TIE = 1e-9
# Index arrays per bootstrap batch (resamples × examples): bounds memory on large test sets.
_BATCH_ELEMENTS = 4_000_000

Statistic = Callable[[np.ndarray], np.ndarray]
ROWS = ("a", "b")


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
  """{'mean', 'std' (ddof=1; 0.0 for one value), 'ci95' (half-width of the Student-t interval at
  `confidence`, named for the default; nan for fewer than 2 values), 'n'} over seeds."""
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1 or len(x) == 0:
    raise ValueError(f"interval: need a non-empty list of numbers, got {values!r}")
  mean, n = float(np.mean(x)), len(x)
  # Equal values (every seed stuck at the majority class) have no spread: np.std would report
  # rounding noise of their mean, and scipy's interval is nan for a zero scale.
  constant = bool(np.all(x == x[0]))
  std = 0.0 if constant else float(np.std(x, ddof=1))
  if n < 2:
    half_width = math.nan
  elif constant:
    half_width = 0.0
  else:
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(x))
    half_width = float((high - low) / 2)
  return {"mean": mean, "std": std, "ci95": half_width, "n": n}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """{'mean_diff': mean(a) - mean(b), 'p_value': two-sided Welch t-test; nan when a side has
  fewer than 2 values or both sides are constant (no variance to test against)}."""
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if len(a) == 0 or len(b) == 0:
    raise ValueError(f"welch: both sides need values, got {len(a)} and {len(b)}")
  mean_diff = float(np.mean(a) - np.mean(b))
  if len(a) < 2 or len(b) < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
    return {"mean_diff": mean_diff, "p_value": math.nan}
  with warnings.catch_warnings():
    # One constant side is exact (its variance is 0); scipy warns that equal values lose
    # precision in the variance, which does not matter next to the other side's.
    warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
    p_value = stats.ttest_ind(a, b, equal_var=False).pvalue
  return {"mean_diff": mean_diff, "p_value": float(p_value)}


def adjust(p_values: Sequence[float]) -> list[float]:
  """Benjamini-Hochberg adjusted p-values (false discovery rate) over the non-nan entries;
  nan entries (comparisons that could not be tested) stay nan and do not count as tests."""
  p = np.asarray(p_values, dtype=np.float64)
  adjusted = np.full(p.shape, math.nan)
  tested = ~np.isnan(p)
  if tested.any():
    adjusted[tested] = stats.false_discovery_control(p[tested], method="bh")
  return adjusted.tolist()


def paired_bootstrap(
    statistic: Statistic, n_examples: int, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
  """Percentile bootstrap of a difference Δ over resamples of `n_examples` test examples.

  `statistic` maps a [resamples, n_examples] array of example indices (one resample per row) to
  the [resamples] differences Δ* on those resamples; row 0..n-1 in order is the full test set.
  The resamples come from `scipy.stats.bootstrap` with `rng=seed`, and depend only on
  `n_examples`, `n_resamples` and `seed`: any two statistics see the same resamples.

  The p-value is the percentile-bootstrap one, p = min(1, 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0))): the
  smallest α at which the equal-tailed percentile interval excludes 0. It moves in steps of
  2/n_resamples, and 0 means no resample reversed (or tied) the difference.

  Returns {'mean_diff' (Δ on the full test set), 'p_value', 'ci95_low', 'ci95_high',
  'n_examples', 'n_resamples'}.
  """
  if n_examples < 2:
    raise ValueError(f"paired_bootstrap: need at least 2 test examples, got {n_examples}")
  indices = np.arange(n_examples)
  mean_diff = float(np.asarray(statistic(indices[None]))[0])
  with warnings.catch_warnings():
    # A statistic that is nan on some resample makes scipy warn; the p-value below is nan then.
    warnings.simplefilter("ignore", stats.DegenerateDataWarning)
    result = stats.bootstrap(
        (indices,),
        lambda idx, axis: statistic(idx),
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, _BATCH_ELEMENTS // n_examples),
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )
  deltas = np.asarray(result.bootstrap_distribution, dtype=np.float64)
  deltas = np.where(np.abs(deltas) < _TIE, 0.0, deltas)
  if np.isnan(deltas).any():
    p_value, low, high = math.nan, math.nan, math.nan
  else:
    # Identical rows: every Δ* is 0, both tails hold all of them, p = 1 and the interval is [0, 0].
    p_value = min(1.0, 2.0 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    low, high = result.confidence_interval.low, result.confidence_interval.high
  return {
      "mean_diff": mean_diff,
      "p_value": float(p_value),
      "ci95_low": float(low),
      "ci95_high": float(high),
      "n_examples": n_examples,
      "n_resamples": n_resamples,
  }


def same_examples(task_type: str, rows: dict[str, Sequence[Sequence[dict]]]) -> list[dict]:
  """The test examples every seed of every row predicted, after checking that their gold fields
  (`TaskType.gold_fields`) agree example by example; raises naming the first difference."""
  fields = tasks.get(task_type).gold_fields
  reference = None
  for row, seeds in rows.items():
    if not seeds:
      raise ValueError(f"row {row}: no seeds (lists of predictions.jsonl records)")
    for s, records in enumerate(seeds):
      where = f"row {row} seed {s}"
      for i, record in enumerate(records):
        missing = [f for f in (*fields, "prediction") if f not in record]
        if missing:
          raise ValueError(
              f"{where}: record {i} lacks {missing} ({task_type} records carry "
              f"{list(fields)} and 'prediction'); it has {sorted(record)}"
          )
      if reference is None:
        reference, reference_where = records, where
        continue
      if len(records) != len(reference):
        raise ValueError(
            f"{where} has {len(records)} test examples but {reference_where} has "
            f"{len(reference)}: rows must predict the same test set"
        )
      for i, (record, gold) in enumerate(zip(records, reference)):
        for f in fields:
          if record[f] != gold[f]:
            raise ValueError(
                f"{where}: example {i} has {f}={record[f]!r} but {reference_where} "
                f"has {f}={gold[f]!r}: rows must predict the same test examples "
                f"in the same order"
            )
  return list(reference)


def _seed_mean(scores: Sequence) -> Any:
  """The mean over seeds of floats or of arrays, added in seed order either way, so a resample's
  value is the same bit for bit whether its seeds were re-scored or summed from counts."""
  return sum(scores) / len(scores)


def _counts_statistic(counts: dict[str, list[metrics.SufficientStatistics]]) -> Statistic:
  """Δ* from each seed's per-example counts summed over the resample, then turned into scores.

  Summing the counts over a resample is a gather and a sum; it is done for all resamples of a
  batch and all seeds of both rows at once as (times each example is drawn) @ (counts), in
  integers, so the sums are exact and equal the re-scored resample's.
  """
  blocks = [
      (row, seed_counts.shape[1], to_score) for row in ROWS for seed_counts, to_score in counts[row]
  ]
  counts_NxC = np.concatenate(
      [seed_counts for row in ROWS for seed_counts, _ in counts[row]], axis=1
  )

  def statistic(idx_BxN: np.ndarray) -> np.ndarray:
    n_resamples, n_examples = idx_BxN.shape
    offsets_Bx1 = n_examples * np.arange(n_resamples)[:, None]
    drawn_BxN = np.bincount(
        (idx_BxN + offsets_Bx1).ravel(), minlength=n_resamples * n_examples
    ).reshape(n_resamples, n_examples)
    summed_BxC = drawn_BxN @ counts_NxC
    scores, column = {row: [] for row in ROWS}, 0
    for row, width, to_score in blocks:
      scores[row].append(to_score(summed_BxC[:, column : column + width]))
      column += width
    return _seed_mean(scores["a"]) - _seed_mean(scores["b"])

  return statistic


def compare_predictions(
    task_type: str,
    metric: str,
    a: Sequence[Sequence[dict]],
    b: Sequence[Sequence[dict]],
    *,
    positive_label: Any = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    rescore: bool = False,
) -> dict[str, float]:
  """Paired bootstrap of row a minus row b on `metric`, each row the mean over its seeds.

  `a` and `b` hold one list of predictions.jsonl records per seed, all over the same test
  examples in the same order. How a resample is scored depends on the metric:
  - in `TaskType.per_example` (accuracy, SQuAD EM/F1, MSE, ROUGE): the mean of per-example
    differences, a few numpy calls per batch of resamples;
  - in `TaskType.sufficient_statistics` (corpus BLEU, entity F1/precision/recall, token
    accuracy): each seed's per-example counts summed over the resample and turned into the
    metric, one matrix product per batch and one small call per resample and seed;
  - otherwise (macro F1, MCC, Pearson): re-scored with `TaskType.score` on every resample, for
    every seed of both rows, n_resamples × (seeds of a + seeds of b) metric calls.
  `rescore` forces the last path for any metric. All paths see the same resamples and give the
  same p-value; summed counts give each resample's re-scored value exactly, so the interval too.

  Returns `paired_bootstrap`'s dict plus 'mean_a' and 'mean_b' (the rows' seed-mean metric on
  the full test set; mean_diff = mean_a - mean_b) and 'n_seeds_a', 'n_seeds_b'.
  """
  task = tasks.get(task_type)
  examples = same_examples(task_type, {"a": a, "b": b})
  predictions = {
      row: [[r["prediction"] for r in records] for records in seeds]
      for row, seeds in (("a", a), ("b", b))
  }
  row_score = _row_scorer(task, examples, predictions, metric, positive_label)
  full = np.arange(len(examples))
  means = {row: row_score(row, full) for row in ROWS}  # also checks the metric's name
  statistic = _statistic(task, examples, predictions, metric, row_score, rescore=rescore)
  result = paired_bootstrap(statistic, len(examples), n_resamples=n_resamples, seed=seed)
  # The full-set difference from `score`, so it matches results.json on every path.
  result["mean_diff"] = means["a"] - means["b"]
  return {
      **result,
      "mean_a": means["a"],
      "mean_b": means["b"],
      "n_seeds_a": len(a),
      "n_seeds_b": len(b),
  }


def _row_scorer(
    task: type[TaskType],
    examples: Sequence[dict],
    predictions: dict[str, list[list]],
    metric: str,
    positive_label: Any,
) -> Callable[[str, np.ndarray], float]:
  """Scores a row on the examples at `idx` with `TaskType.score`: the reference every faster
  path must match."""

  def row_score(row: str, idx: np.ndarray) -> float:
    picked = [examples[i] for i in idx]
    return float(
        _seed_mean(
            [
                task.score(picked, [p[i] for i in idx], positive_label, metric=metric)[metric]
                for p in predictions[row]
            ]
        )
    )

  return row_score


def _statistic(
    task: type[TaskType],
    examples: Sequence[dict],
    predictions: dict[str, list[list]],
    metric: str,
    row_score: Callable[[str, np.ndarray], float],
    *,
    rescore: bool,
) -> Statistic:
  """Δ* over a batch of resamples by the cheapest exact path `metric` allows: per-example
  values, else summed counts, else re-scoring every resample."""
  # Which metrics have per-example values, from one example (the names, not the values).
  per_example = {} if rescore else task.per_example(examples[:1], predictions["a"][0][:1])
  # Counts come from the whole test set: whether they add up can depend on every example.
  counts = (
      {}
      if rescore or metric in per_example
      else {
          row: [task.sufficient_statistics(examples, p).get(metric) for p in predictions[row]]
          for row in ROWS
      }
  )
  if metric in per_example:
    seed_means = {
        row: np.mean([task.per_example(examples, p)[metric] for p in predictions[row]], axis=0)
        for row in ROWS
    }
    diff_N = seed_means["a"] - seed_means["b"]

    def statistic(idx_BxN: np.ndarray) -> np.ndarray:
      return np.mean(diff_N[idx_BxN], axis=-1)

    return statistic
  if counts and all(c is not None for seeds in counts.values() for c in seeds):
    return _counts_statistic(counts)

  def rescored(idx_BxN: np.ndarray) -> np.ndarray:
    return np.asarray([row_score("a", idx) - row_score("b", idx) for idx in idx_BxN])

  return rescored
