"""Downstream-task metrics from host-side Python lists.

Thin wrappers over the libraries papers report with (scikit-learn, scipy, seqeval, sacrebleu,
rouge-score), so the numbers are comparable with published ones. Every function returns plain
floats keyed without a split prefix; the caller adds `eval/` or `test/`.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import sacrebleu
from rouge_score import rouge_scorer
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sk_metrics

# Task type -> (headline metric, mode) that early stopping and model selection follow.
HEADLINE: dict[str, tuple[str, str]] = {
    "classification": ("accuracy", "max"),
    "regression": ("pearson", "max"),
    "tagging": ("f1", "max"),
    "extractive_qa": ("f1", "max"),
    "seq2seq": ("bleu", "max"),
}

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


def classification(labels: Sequence, predictions: Sequence,
                   positive_label: Any = None) -> dict[str, float]:
  """Accuracy, macro/micro F1, MCC; given `positive_label`, also its binary F1 as `f1` (MRPC)."""
  _check("classification", labels, "labels", predictions, "predictions")
  labels, predictions = list(labels), list(predictions)
  result = {
      "accuracy": sk_metrics.accuracy_score(labels, predictions),
      "macro_f1": sk_metrics.f1_score(labels, predictions, average="macro", zero_division=0),
      "micro_f1": sk_metrics.f1_score(labels, predictions, average="micro", zero_division=0),
      "mcc": sk_metrics.matthews_corrcoef(labels, predictions),
  }
  if positive_label is not None:
    result["f1"] = sk_metrics.f1_score(labels, predictions, pos_label=positive_label,
                                       zero_division=0)
  return {k: float(v) for k, v in result.items()}


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


def tagging(tags: Sequence[Sequence[str]],
            predictions: Sequence[Sequence[str]]) -> dict[str, float]:
  """Entity-level (conlleval) F1/precision/recall over BIO tags, plus token accuracy."""
  _check("tagging", tags, "tag sequences", predictions, "predictions")
  for i, (t, p) in enumerate(zip(tags, predictions)):
    if len(t) != len(p):
      raise ValueError(f"tagging: sequence {i} has {len(t)} tags but {len(p)} predictions")
  tags, predictions = [list(t) for t in tags], [list(p) for p in predictions]
  return {
      "f1": float(seqeval_metrics.f1_score(tags, predictions, zero_division=0)),
      "precision": float(seqeval_metrics.precision_score(tags, predictions, zero_division=0)),
      "recall": float(seqeval_metrics.recall_score(tags, predictions, zero_division=0)),
      "accuracy": float(seqeval_metrics.accuracy_score(tags, predictions)),
  }


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


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
  """SQuAD v1.1 exact match and token F1 in percent, best gold answer per example."""
  _check("squad", predictions, "predictions", answers, "answer lists")
  exact, f1 = 0.0, 0.0
  for i, (prediction, golds) in enumerate(zip(predictions, answers)):
    if isinstance(golds, str) or len(golds) == 0:
      raise ValueError(f"squad: answers[{i}] must be a non-empty list of gold answers, "
                       f"got {golds!r}")
    exact += max(float(_normalize_answer(prediction) == _normalize_answer(g)) for g in golds)
    f1 += max(_token_f1(prediction, g) for g in golds)
  return {"exact_match": 100.0 * exact / len(predictions), "f1": 100.0 * f1 / len(predictions)}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (0-100), sacrebleu defaults (13a tokenization), one reference per example."""
  _check("bleu", predictions, "predictions", references, "references")
  return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """ROUGE-1/2/L F-measure × 100, averaged over examples, Porter-stemmed (as in most papers)."""
  _check("rouge", predictions, "predictions", references, "references")
  keys = ("rouge1", "rouge2", "rougeL")
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  totals = dict.fromkeys(keys, 0.0)
  for prediction, reference in zip(predictions, references):
    scores = scorer.score(target=reference, prediction=prediction)
    for k in keys:
      totals[k] += scores[k].fmeasure
  return {k: float(100.0 * v / len(predictions)) for k, v in totals.items()}


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
      raise ValueError(f"glue_average: task {name!r} lacks metrics {missing} "
                       f"(has {sorted(metrics)})")
    scores.append(sum(float(metrics[m]) for m in GLUE_METRICS[task]) / len(GLUE_METRICS[task]))
  return sum(scores) / len(scores)
