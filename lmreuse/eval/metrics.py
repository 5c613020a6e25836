"""Downstream-task metrics from host-side Python lists.

Thin wrappers over the libraries papers report with (scikit-learn, scipy, seqeval, sacrebleu,
rouge-score), so the numbers are comparable with published ones. Every function returns plain
floats keyed without a split prefix; the caller adds `eval/` or `test/`. The `*_per_example`
functions give, for the metrics that are means over examples, each example's value (their mean
is the corpus-level value), so a study can bootstrap over test examples without re-scoring.
The `*_statistics` functions do the same for corpus metrics computed from counts that add up
over examples (corpus BLEU, entity F1): each example's counts, and the function of their sum
that gives the metric.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from scipy import stats
from seqeval import metrics as seqeval_metrics
from seqeval.metrics import sequence_labeling
from sklearn import metrics as sk_metrics

# A metric's per-example counts [n_examples, k] and the function mapping their sum over examples
# (any leading axes, [..., k]) to the metric's value ([...]).
SufficientStatistics = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]

# GLUE task -> its official metrics; a task's score is their mean (GLUE paper, Wang et al. 2019).
GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def _check(fn: str, a: Sequence, a_name: str, b: Sequence, b_name: str) -> None:
  if len(a) == 0:
    raise ValueError(f"{fn}: no examples")
  if len(a) != len(b):
    raise ValueError(f"{fn}: {len(a)} {a_name} but {len(b)} {b_name}")


def classification(
    labels: Sequence, predictions: Sequence, positive_label: Any = None, *, only: str | None = None
) -> dict[str, float]:
  """Accuracy, macro/micro F1, MCC; given `positive_label`, also its binary F1 as `f1` (MRPC).
  `only` computes just that one: each is a full sklearn pass, and a bootstrap re-scores one
  metric on thousands of resamples."""
  _check("classification", labels, "labels", predictions, "predictions")
  labels, predictions = list(labels), list(predictions)
  scorers = {
      "accuracy": sk_metrics.accuracy_score,
      "macro_f1": functools.partial(sk_metrics.f1_score, average="macro", zero_division=0),
      "micro_f1": functools.partial(sk_metrics.f1_score, average="micro", zero_division=0),
      "mcc": sk_metrics.matthews_corrcoef,
  }
  if positive_label is not None:
    scorers["f1"] = functools.partial(
        sk_metrics.f1_score, pos_label=positive_label, zero_division=0
    )
  if only is not None:
    if only not in scorers:
      raise ValueError(
          f"classification: no metric {only!r} (binary 'f1' needs positive_label); "
          f"choose one of {sorted(scorers)}"
      )
    scorers = {only: scorers[only]}
  return {k: float(f(labels, predictions)) for k, f in scorers.items()}


def classification_per_example(labels: Sequence, predictions: Sequence) -> dict[str, np.ndarray]:
  """1.0 where the prediction is the label: accuracy is their mean (the other metrics are not)."""
  _check("classification", labels, "labels", predictions, "predictions")
  return {"accuracy": np.asarray([float(t == p) for t, p in zip(labels, predictions)])}


def regression(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson, Spearman and MSE (STS-B)."""
  _check("regression", targets, "targets", predictions, "predictions")
  targets, predictions = [float(t) for t in targets], [float(p) for p in predictions]
  result = {"mse": sk_metrics.mean_squared_error(targets, predictions)}
  # A correlation with a constant side is undefined (scipy warns and returns nan). A model that
  # predicts one value early in training has no correlation to speak of, and a nan would poison
  # max-based early stopping and averages, so report 0.0.
  constant = len(set(targets)) < 2 or len(set(predictions)) < 2
  result["pearson"] = 0.0 if constant else stats.pearsonr(targets, predictions).statistic
  result["spearman"] = 0.0 if constant else stats.spearmanr(targets, predictions).statistic
  return {k: float(v) for k, v in result.items()}


def regression_per_example(
    targets: Sequence[float], predictions: Sequence[float]
) -> dict[str, np.ndarray]:
  """Squared errors, whose mean is `mse` (Pearson and Spearman are not means over examples)."""
  _check("regression", targets, "targets", predictions, "predictions")
  errors = np.asarray([float(t) for t in targets]) - np.asarray([float(p) for p in predictions])
  return {"mse": np.square(errors)}


def _check_tagging(tags: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> None:
  _check("tagging", tags, "tag sequences", predictions, "predictions")
  for i, (t, p) in enumerate(zip(tags, predictions)):
    if len(t) != len(p):
      raise ValueError(f"tagging: sequence {i} has {len(t)} tags but {len(p)} predictions")


def tagging(
    tags: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, float]:
  """Entity-level (conlleval) F1/precision/recall over BIO tags, plus token accuracy."""
  _check_tagging(tags, predictions)
  tags, predictions = [list(t) for t in tags], [list(p) for p in predictions]
  # One entity pass for all three (f1_score, precision_score and recall_score would each redo it):
  # a bootstrap that cannot sum `tagging_statistics` re-scores every resample. seqeval itself,
  # not those counts, stays the reference: the counts hold only where seqeval's entities add up.
  precision, recall, f1, _ = sequence_labeling.precision_recall_fscore_support(
      tags, predictions, average="micro", zero_division=0
  )
  return {
      "f1": float(f1),
      "precision": float(precision),
      "recall": float(recall),
      "accuracy": float(seqeval_metrics.accuracy_score(tags, predictions)),
  }


def _sentence_entities(tags: list[str]) -> set[tuple[str, int, int]] | None:
  """seqeval's entities in one sentence, or None where they depend on the sentence's place.

  seqeval reads a corpus as its sentences joined by "O" tags, so every sentence but the first
  starts after an "O" and the first starts from seqeval's initial state. The two can differ
  only for tags outside the B/I/E/S/O scheme (UD's POS tag "X" opening a sentence); where they
  do, a resample's entities are not the sum of its sentences' entities.
  """
  at_start = set(sequence_labeling.get_entities(tags))
  after_o = {
      (kind, start - 1, end - 1)
      for kind, start, end in sequence_labeling.get_entities(["O", *tags])
  }
  return at_start if at_start == after_o else None


def entity_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
  """Micro precision/recall/F1 from summed [entities found, predicted, gold] counts [..., 3].

  The same float operations as seqeval's micro average (`v1._precision_recall_fscore_support`
  with zero_division=0: a ratio with a zero denominator is 0), so the values equal `tagging`'s.
  """
  found, predicted, gold = np.moveaxis(np.asarray(counts), -1, 0)
  precision = np.where(predicted == 0, 0.0, found / np.maximum(predicted, 1))
  recall = np.where(gold == 0, 0.0, found / np.maximum(gold, 1))
  denominator = precision + recall
  f1 = 2.0 * precision * recall / np.where(denominator == 0, 1.0, denominator)
  return {"f1": f1, "precision": precision, "recall": recall}


def _token_accuracy(counts: np.ndarray) -> np.ndarray:
  """Right tokens / tokens from summed [right, total] counts [..., 2] (seqeval's accuracy; nan
  for no tokens, where seqeval divides by zero)."""
  right, total = np.moveaxis(np.asarray(counts), -1, 0)
  return np.where(total == 0, np.nan, right / np.maximum(total, 1))


def _entity_metric(name: str) -> Callable[[np.ndarray], np.ndarray]:
  return lambda counts: entity_scores(counts)[name]


def tagging_statistics(
    tags: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, SufficientStatistics]:
  """`tagging`'s metrics as sums of per-sentence counts: token accuracy always, entity
  F1/precision/recall unless seqeval's entities depend on the sentence order (see
  `_sentence_entities`), in which case only re-scoring gives seqeval's numbers."""
  _check_tagging(tags, predictions)
  tokens = [
      (sum(t == p for t, p in zip(gold, predicted)), len(gold))
      for gold, predicted in zip(tags, predictions)
  ]
  result = {"accuracy": (np.asarray(tokens, np.int64), _token_accuracy)}
  entities = []
  for gold, predicted in zip(tags, predictions):
    gold_set, predicted_set = _sentence_entities(list(gold)), _sentence_entities(list(predicted))
    if gold_set is None or predicted_set is None:
      return result
    entities.append((len(gold_set & predicted_set), len(predicted_set), len(gold_set)))
  counts = np.asarray(entities, np.int64)
  for name in ("f1", "precision", "recall"):
    result[name] = (counts, _entity_metric(name))
  return result


# SQuAD v1.1 answer matching, as in the official evaluate-v1.1.py
# (https://rajpurkar.github.io/SQuAD-explorer/, "Evaluation Script v1.1").
_PUNCTUATION = frozenset(string.punctuation)


def _normalize_answer(s: str) -> str:
  """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _token_f1(prediction: str, gold: str) -> float:
  pred_tokens, gold_tokens = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
  num_same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_per_example(
    predictions: Sequence[str], answers: Sequence[Sequence[str]]
) -> dict[str, np.ndarray]:
  """Each example's exact match and token F1 in percent against its best gold answer."""
  _check("squad", predictions, "predictions", answers, "answer lists")
  exact, f1 = [], []
  for i, (prediction, golds) in enumerate(zip(predictions, answers)):
    if isinstance(golds, str) or len(golds) == 0:
      raise ValueError(
          f"squad: answers[{i}] must be a non-empty list of gold answers, " f"got {golds!r}"
      )
    exact.append(max(float(_normalize_answer(prediction) == _normalize_answer(g)) for g in golds))
    f1.append(max(_token_f1(prediction, g) for g in golds))
  return {"exact_match": 100.0 * np.asarray(exact), "f1": 100.0 * np.asarray(f1)}


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
  """SQuAD v1.1 exact match and token F1 in percent, best gold answer per example."""
  return {k: float(np.mean(v)) for k, v in squad_per_example(predictions, answers).items()}


# sacrebleu.corpus_bleu's defaults, spelled out: 13a tokenization, exponential smoothing, cased.
_BLEU = sacrebleu.BLEU(
    tokenize="13a", smooth_method="exp", lowercase=False, force=False, effective_order=False
)


def _bleu_from_counts(counts: np.ndarray) -> np.ndarray:
  """Corpus BLEU (0-100) from summed `bleu_statistics` counts [..., 10], by sacrebleu's own
  `_compute_score_from_stats` (one call per corpus: it is plain Python)."""
  counts = np.asarray(counts)
  flat = counts.reshape(-1, counts.shape[-1])
  scores = [_BLEU._compute_score_from_stats([int(c) for c in row]).score for row in flat]
  return np.asarray(scores, np.float64).reshape(counts.shape[:-1])


def bleu_statistics(
    predictions: Sequence[str], references: Sequence[str]
) -> dict[str, SufficientStatistics]:
  """Each sentence's BLEU counts (sacrebleu's `_extract_corpus_statistics`: hypothesis and
  reference length, then matched and total n-grams for n = 1..4); corpus BLEU is a function of
  their sum, which is how sacrebleu's own significance tests resample without re-tokenizing."""
  _check("bleu", predictions, "predictions", references, "references")
  predictions, references = list(predictions), [list(references)]
  _BLEU._check_corpus_score_args(predictions, references)
  counts = np.asarray(_BLEU._extract_corpus_statistics(predictions, references), np.int64)
  return {"bleu": (counts, _bleu_from_counts)}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (0-100), sacrebleu defaults (13a tokenization), one reference per example;
  `sacrebleu.corpus_bleu`'s value, from the counts a bootstrap resamples."""
  counts, to_bleu = bleu_statistics(predictions, references)["bleu"]
  return {"bleu": float(to_bleu(np.sum(counts, axis=0)))}


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str]
) -> dict[str, np.ndarray]:
  """Each example's ROUGE-1/2/L F-measure × 100, Porter-stemmed (as in most papers)."""
  _check("rouge", predictions, "predictions", references, "references")
  keys = ("rouge1", "rouge2", "rougeL")
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  scores = [
      scorer.score(target=reference, prediction=prediction)
      for prediction, reference in zip(predictions, references)
  ]
  return {k: 100.0 * np.asarray([s[k].fmeasure for s in scores]) for k in keys}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """ROUGE-1/2/L F-measure × 100, averaged over examples (see `rouge_per_example`)."""
  return {k: float(np.mean(v)) for k, v in rouge_per_example(predictions, references).items()}


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
  """GLUE score: mean over the given tasks of each task's mean official metric (same scale)."""
  if not results:
    raise ValueError("glue_average: no tasks")
  scores = []
  for name, metrics in results.items():
    task = name.removeprefix("glue/")
    if task not in GLUE_METRICS:
      raise ValueError(f"glue_average: {name!r} is not a GLUE task; known: {sorted(GLUE_METRICS)}")
    missing = [m for m in GLUE_METRICS[task] if m not in metrics]
    if missing:
      raise ValueError(
          f"glue_average: task {name!r} lacks metrics {missing} " f"(has {sorted(metrics)})"
      )
    scores.append(sum(float(metrics[m]) for m in GLUE_METRICS[task]) / len(GLUE_METRICS[task]))
  return sum(scores) / len(scores)
