"""Seed intervals, Welch's test, multiple-comparison adjustment and the paired bootstrap."""

import math
import time
import warnings

import numpy as np
import pytest
from scipy import stats

from lmreuse import tasks
from lmreuse.study import statistics

LABELS = ("noun.animal", "noun.plant", "verb.motion")


def gold(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [LABELS[i] for i in rng.integers(0, len(LABELS), n)]


def wrong(label: str) -> str:
  return LABELS[(LABELS.index(label) + 1) % len(LABELS)]


def records(labels: list[str], right: np.ndarray) -> list[dict]:
  """One seed's predictions.jsonl: right where `right` holds, a wrong label elsewhere."""
  return [
      {"text": f"gloss {i}", "label": label, "prediction": label if ok else wrong(label)}
      for i, (label, ok) in enumerate(zip(labels, right))
  ]


def test_interval_matches_scipy_t_interval():
  values = [0.71, 0.74, 0.69, 0.755]
  result = statistics.interval(values)
  low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
  assert result["mean"] == pytest.approx(np.mean(values))
  assert result["std"] == pytest.approx(np.std(values, ddof=1))
  assert result["ci95"] == pytest.approx((high - low) / 2)
  assert result["n"] == 4
  assert statistics.interval(values, confidence=0.5)["ci95"] < result["ci95"]


def test_interval_of_one_or_equal_values():
  one = statistics.interval([0.7])
  assert one["mean"] == 0.7 and one["std"] == 0.0 and math.isnan(one["ci95"]) and one["n"] == 1
  assert statistics.interval([0.7, 0.7, 0.7])["ci95"] == 0.0
  with pytest.raises(ValueError, match="non-empty"):
    statistics.interval([])


def test_welch_matches_scipy():
  a, b = [0.71, 0.74, 0.69, 0.75], [0.66, 0.70, 0.64]
  result = statistics.welch(a, b)
  assert result["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))
  assert result["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
  # One constant side (a model at the majority class on every seed) still has the other's
  # variance to test against, and it is no reason for a warning.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = stats.ttest_ind([0.7, 0.7], b, equal_var=False).pvalue
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert statistics.welch([0.7, 0.7], b)["p_value"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "a, b", [([0.7], [0.6, 0.65]), ([0.7, 0.8], [0.6]), ([0.7, 0.7], [0.6, 0.6])]
)
def test_welch_is_nan_without_two_values_or_any_variance(a, b):
  result = statistics.welch(a, b)
  assert math.isnan(result["p_value"])
  assert result["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))


def test_adjust_is_benjamini_hochberg_over_the_tested_entries():
  p = [0.01, math.nan, 0.04, 0.03, 0.5]
  adjusted = statistics.adjust(p)
  expected = stats.false_discovery_control([0.01, 0.04, 0.03, 0.5], method="bh")
  assert math.isnan(adjusted[1])
  assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx(expected.tolist())
  assert all(math.isnan(x) for x in statistics.adjust([math.nan, math.nan]))
  assert statistics.adjust([]) == []


def test_identical_rows_give_p_one_and_no_difference():
  labels = gold(300)
  rng = np.random.default_rng(1)
  row = [records(labels, rng.random(300) < 0.6) for _ in range(3)]
  result = statistics.compare_predictions("classification", "accuracy", row, row)
  assert result["mean_diff"] == 0.0 and result["p_value"] == 1.0
  assert result["ci95_low"] == result["ci95_high"] == 0.0
  assert result["n_examples"] == 300 and result["n_resamples"] == statistics.N_RESAMPLES


def test_a_much_better_row_is_significant():
  labels = gold(500)
  rng = np.random.default_rng(2)
  a = [records(labels, rng.random(500) < 0.8) for _ in range(3)]
  b = [records(labels, rng.random(500) < 0.2) for _ in range(2)]
  result = statistics.compare_predictions("classification", "accuracy", a, b)
  assert result["mean_diff"] == pytest.approx(result["mean_a"] - result["mean_b"])
  assert result["mean_diff"] > 0.5
  assert result["p_value"] < 1e-3
  assert 0 < result["ci95_low"] < result["mean_diff"] < result["ci95_high"]
  assert result["n_seeds_a"] == 3 and result["n_seeds_b"] == 2


def test_a_handful_of_different_examples_is_not_significant():
  labels = gold(1000)
  right = np.random.default_rng(3).random(1000) < 0.6
  better = right.copy()
  changed = np.flatnonzero(~right)[:3]  # a is right on 3 more examples and wrong on 2 others
  better[changed] = True
  better[np.flatnonzero(right)[:2]] = False
  result = statistics.compare_predictions(
      "classification", "accuracy", [records(labels, better)], [records(labels, right)]
  )
  assert result["mean_diff"] == pytest.approx(0.001)
  assert result["p_value"] > 0.5
  assert result["ci95_low"] < 0 < result["ci95_high"]


def test_the_bootstrap_is_reproducible():
  labels = gold(300)
  rng = np.random.default_rng(4)
  a = [records(labels, rng.random(300) < 0.62) for _ in range(2)]
  b = [records(labels, rng.random(300) < 0.55) for _ in range(2)]
  first = statistics.compare_predictions("classification", "accuracy", a, b, seed=7)
  assert statistics.compare_predictions("classification", "accuracy", a, b, seed=7) == first
  other = statistics.compare_predictions("classification", "accuracy", a, b, seed=8)
  assert (other["ci95_low"], other["ci95_high"]) != (first["ci95_low"], first["ci95_high"])


def test_per_example_and_rescoring_paths_agree(monkeypatch):
  # Close rows with three seeds each: many resamples tie, in float noise that differs between
  # a mean of per-example differences and a difference of accuracies.
  labels = gold(200)
  rng = np.random.default_rng(0)
  a = [records(labels, rng.random(200) < 0.6) for _ in range(3)]
  b = [records(labels, rng.random(200) < 0.59) for _ in range(3)]
  cls = tasks.get("classification")
  calls = []
  score = cls.score.__func__
  monkeypatch.setattr(
      cls,
      "score",
      classmethod(lambda c, *args, **kwargs: calls.append(1) or score(c, *args, **kwargs)),
  )
  averaged = statistics.compare_predictions("classification", "accuracy", a, b, n_resamples=300)
  assert len(calls) == 6  # each seed on the full test set: the resamples need no score
  rescored = statistics.compare_predictions(
      "classification", "accuracy", a, b, n_resamples=300, rescore=True
  )
  assert len(calls) > 6 * 300
  assert rescored["p_value"] == averaged["p_value"]
  assert rescored["mean_diff"] == averaged["mean_diff"]
  assert rescored["ci95_low"] == pytest.approx(averaged["ci95_low"], abs=1e-12)
  assert rescored["ci95_high"] == pytest.approx(averaged["ci95_high"], abs=1e-12)


def test_pairing_finds_a_difference_an_unpaired_test_misses():
  # a repeats b's answers and is right on 30 more of 1000 examples: never worse on any
  # example. Between examples the variance is large (about half are right), so a test that
  # ignores the pairing sees a 3-point gap within noise; the paired bootstrap does not.
  labels = gold(1000)
  right_b = np.random.default_rng(6).random(1000) < 0.5
  right_a = right_b.copy()
  right_a[np.flatnonzero(~right_b)[:30]] = True
  unpaired = statistics.welch(right_a.astype(float), right_b.astype(float))
  assert unpaired["p_value"] > 0.1
  paired = statistics.compare_predictions(
      "classification", "accuracy", [records(labels, right_a)], [records(labels, right_b)]
  )
  assert paired["mean_diff"] == pytest.approx(0.03)
  assert paired["p_value"] < 0.01 and paired["ci95_low"] > 0


def tagging_records(gold_tags: list[list[str]], right: np.ndarray) -> list[dict]:
  """Right tag sequences where `right` holds; elsewhere every entity is missed."""
  return [
      {"tokens": ["w"] * len(tags), "tags": tags, "prediction": tags if ok else ["O"] * len(tags)}
      for tags, ok in zip(gold_tags, right)
  ]


def test_entity_f1_on_json_records():
  rng = np.random.default_rng(7)
  gold_tags = [
      ["B-PER", "I-PER", "O", "B-LOC"] if rng.random() < 0.5 else ["O", "B-LOC", "O"]
      for _ in range(60)
  ]
  a = [tagging_records(gold_tags, rng.random(60) < 0.9) for _ in range(2)]
  b = [tagging_records(gold_tags, rng.random(60) < 0.3) for _ in range(2)]
  result = statistics.compare_predictions("tagging", "f1", a, b, n_resamples=200)
  f1 = tasks.get("tagging").score
  mean_a = np.mean([f1(seed, [r["prediction"] for r in seed])["f1"] for seed in a])
  assert result["mean_a"] == pytest.approx(mean_a)
  assert result["p_value"] < 0.01 and result["ci95_low"] > 0
  same = statistics.compare_predictions("tagging", "f1", a, a, n_resamples=50)
  assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0


ENTITY_TYPES = ("PER", "LOC", "ORG")


def tagged_sentences(n: int, rng: np.random.Generator) -> list[list[str]]:
  """BIO tags of 0-14 words; some sentences have no entity."""
  sentences = []
  for _ in range(n):
    tags = ["O"] * int(rng.integers(0, 15))
    for i in range(len(tags)):
      if rng.random() < 0.15:
        kind = rng.choice(ENTITY_TYPES)
        tags[i] = f"B-{kind}"
        for j in range(i + 1, min(len(tags), i + int(rng.integers(1, 4)))):
          tags[j] = f"I-{kind}"
    sentences.append(tags)
  return sentences


def noisy_tagging(gold_tags: list[list[str]], noise: float, rng: np.random.Generator) -> list[dict]:
  """One seed's records: tags dropped to O, retyped or started with I- at rate `noise`."""
  out = []
  for tags in gold_tags:
    guess = list(tags)
    for i in range(len(guess)):
      r = rng.random() / noise
      if r < 0.5:
        guess[i] = "O"
      elif r < 1:
        guess[i] = f"{rng.choice(['B', 'I'])}-{rng.choice(ENTITY_TYPES)}"
    out.append({"tokens": ["w"] * len(tags), "tags": tags, "prediction": guess})
  return out


GLOSSES = (
    "a domestic animal that barks",
    "a small domestic cat",
    "the act of running fast",
    "a large body of salt water",
    "to move through water by moving the limbs",
    "a building where books are kept for reading",
    "feeling or showing pleasure",
)


def noisy_seq2seq(targets: list[str], noise: float, rng: np.random.Generator) -> list[dict]:
  """One seed's records: each target word kept with probability 1 - noise; a few empty."""
  out = []
  for i, target in enumerate(targets):
    words = [w for w in target.split() if rng.random() > noise]
    out.append(
        {
            "source": f"word {i}",
            "target": target,
            "prediction": "" if rng.random() < 0.05 else " ".join(words),
        }
    )
  return out


def count_scores(monkeypatch, task_type: str) -> list:
  """Appends to the returned list on every `score` call of the task type."""
  cls = tasks.get(task_type)
  calls = []
  score = cls.score.__func__
  monkeypatch.setattr(
      cls,
      "score",
      classmethod(lambda c, *args, **kwargs: calls.append(1) or score(c, *args, **kwargs)),
  )
  return calls


def close_rows(task_type: str, n: int, seed: int) -> tuple[list, list]:
  """Two rows (3 and 2 seeds) of similar quality on n test examples, so resamples go both ways."""
  rng = np.random.default_rng(seed)
  if task_type == "tagging":
    gold_tags = tagged_sentences(n, rng)
    return (
        [noisy_tagging(gold_tags, 0.2, rng) for _ in range(3)],
        [noisy_tagging(gold_tags, 0.22, rng) for _ in range(2)],
    )
  targets = [GLOSSES[i] for i in rng.integers(0, len(GLOSSES), n)]
  return (
      [noisy_seq2seq(targets, 0.3, rng) for _ in range(3)],
      [noisy_seq2seq(targets, 0.32, rng) for _ in range(2)],
  )


@pytest.mark.parametrize(
    "task_type, metric",
    [
        ("tagging", "f1"),
        ("tagging", "precision"),
        ("tagging", "recall"),
        ("tagging", "accuracy"),
        ("seq2seq", "bleu"),
    ],
)
def test_counts_and_rescoring_paths_agree(monkeypatch, task_type, metric):
  a, b = close_rows(task_type, 40, seed=0)
  calls = count_scores(monkeypatch, task_type)
  summed = statistics.compare_predictions(task_type, metric, a, b, n_resamples=50, seed=3)
  assert len(calls) == 5  # each seed on the full test set: the resamples need no score
  rescored = statistics.compare_predictions(
      task_type, metric, a, b, n_resamples=50, seed=3, rescore=True
  )
  # Each seed on the full set for the means and for paired_bootstrap's Δ, then per resample.
  assert len(calls) == 5 + 5 * (2 + 50)
  assert summed == rescored  # p-value and interval included, exactly
  assert 0 < rescored["p_value"] < 1  # resamples fall on both sides: the test can fail
  assert rescored["ci95_low"] < rescored["ci95_high"]


def test_order_dependent_entities_are_rescored(monkeypatch):
  # The non-BIO tag "X" opening a sentence before an entity makes seqeval's entities depend on
  # the sentence order: entity F1 falls back to re-scoring; token accuracy still sums counts.
  rng = np.random.default_rng(1)
  gold_tags = tagged_sentences(30, rng)
  gold_tags[:3] = [["X", "B-PER", *tags] for tags in gold_tags[:3]]
  a = [noisy_tagging(gold_tags, 0.2, rng) for _ in range(3)]
  b = [noisy_tagging(gold_tags, 0.22, rng) for _ in range(2)]
  calls = count_scores(monkeypatch, "tagging")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # seqeval: "X seems not to be NE tag"
    statistics.compare_predictions("tagging", "accuracy", a, b, n_resamples=20)
    assert len(calls) == 5
    statistics.compare_predictions("tagging", "f1", a, b, n_resamples=20)
  assert len(calls) == 5 + 5 * (2 + 20)


@pytest.mark.parametrize("task_type, metric", [("tagging", "f1"), ("seq2seq", "bleu")])
def test_time_of_a_study_sized_comparison(task_type, metric):
  """Reports (run with -s) one comparison at 1000 examples × 3 seeds per row × 1000 resamples;
  re-scoring every resample takes minutes here, summing counts should take seconds."""
  rng = np.random.default_rng(4)
  if task_type == "tagging":
    gold_tags = tagged_sentences(1000, rng)
    a, b = ([noisy_tagging(gold_tags, noise, rng) for _ in range(3)] for noise in (0.1, 0.11))
  else:
    targets = [GLOSSES[i] for i in rng.integers(0, len(GLOSSES), 1000)]
    a, b = ([noisy_seq2seq(targets, noise, rng) for _ in range(3)] for noise in (0.3, 0.31))
  start = time.perf_counter()
  result = statistics.compare_predictions(task_type, metric, a, b, n_resamples=1000)
  seconds = time.perf_counter() - start
  print(
      f"\ncompare_predictions({task_type!r}, {metric!r}), 1000 examples x 3 seeds x 1000 "
      f"resamples: {seconds:.2f} s (p={result['p_value']:.3f})"
  )
  assert result["n_resamples"] == 1000 and not math.isnan(result["p_value"])


def test_rows_over_different_test_examples_are_refused():
  labels = gold(20)
  right = np.ones(20, bool)
  a = [records(labels, right), records(labels, right)]
  changed = records(labels, right)
  changed[3]["label"] = wrong(changed[3]["label"])
  with pytest.raises(ValueError, match=r"row b seed 1: example 3 has label=.* row a seed 0"):
    statistics.compare_predictions(
        "classification", "accuracy", a, [records(labels, right), changed]
    )
  with pytest.raises(ValueError, match="row b seed 0 has 19 test examples but row a seed 0 has 20"):
    statistics.compare_predictions("classification", "accuracy", a, [records(labels, right)[:19]])
  with pytest.raises(ValueError, match=r"lacks \['label'\]"):
    statistics.compare_predictions(
        "classification", "accuracy", a, [[{"text": "x", "prediction": "y"}] * 20]
    )
  with pytest.raises(ValueError, match="row b: no seeds"):
    statistics.compare_predictions("classification", "accuracy", a, [])
  with pytest.raises(ValueError, match="'bleu'"):
    statistics.compare_predictions("classification", "bleu", a, a)
