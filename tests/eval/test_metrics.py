"""Downstream metrics against values worked out by hand on tiny inputs."""

import math
import warnings

import pytest

from lmreuse.eval import metrics


def assert_plain_floats(result):
  assert all(type(v) is float for v in result.values()), {k: type(v) for k, v in result.items()}


def test_classification_binary():
  # labels 0 1 1 0, predictions 0 1 0 0: 3 of 4 right.
  # class 0: TP=2 FP=1 FN=0 -> P=2/3 R=1   F1=4/5
  # class 1: TP=1 FP=0 FN=1 -> P=1   R=1/2 F1=2/3  -> macro F1 = (4/5 + 2/3) / 2 = 11/15
  # MCC with 1 positive: TP=1 TN=2 FP=0 FN=1 -> (1*2 - 0*1) / sqrt(1*2*2*3) = 1/sqrt(3)
  result = metrics.classification([0, 1, 1, 0], [0, 1, 0, 0], positive_label=1)
  assert result == pytest.approx(
      {"accuracy": 0.75, "macro_f1": 11 / 15, "micro_f1": 0.75, "mcc": 1 / math.sqrt(3),
       "f1": 2 / 3})
  assert_plain_floats(result)
  assert "f1" not in metrics.classification([0, 1, 1, 0], [0, 1, 0, 0])


def test_classification_string_labels():
  # a: TP=1 FP=1 FN=1 -> F1=1/2; b: F1=1; c: TP=0 -> F1=0; macro = 1/2.
  result = metrics.classification(["a", "b", "c", "a"], ["a", "b", "a", "c"])
  assert result["accuracy"] == 0.5
  assert result["macro_f1"] == pytest.approx(0.5)


def test_classification_no_gold_positive_gives_zero_f1():
  result = metrics.classification([0, 0], [0, 1], positive_label=1)
  assert result["f1"] == 0.0 and result["accuracy"] == 0.5


def test_regression():
  # x = 1 2 3 4 (dx = -1.5 -.5 .5 1.5), y = 2 5 4 9 (mean 5, dy = -3 0 -1 4):
  # sum dx*dy = 10, sum dx^2 = 5, sum dy^2 = 26 -> pearson = 10 / sqrt(130).
  # ranks of y = 1 3 2 4: sum d^2 = 2 -> spearman = 1 - 6*2 / (4*(16-1)) = 0.8.
  # errors 1 3 1 5 -> mse = 36/4 = 9.
  result = metrics.regression([1, 2, 3, 4], [2, 5, 4, 9])
  assert result == pytest.approx({"pearson": 10 / math.sqrt(130), "spearman": 0.8, "mse": 9.0})
  assert_plain_floats(result)


def test_regression_constant_predictions_give_zero_correlation():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    result = metrics.regression([1, 2, 3, 4], [3, 3, 3, 3])
  assert result == {"pearson": 0.0, "spearman": 0.0, "mse": 1.5}


def test_tagging():
  # Gold entities PER(0-1), LOC(3), ORG(1'); predicted PER(0-1), LOC(3-4): only PER matches.
  # precision 1/2, recall 1/3, F1 = 2 * (1/6) / (5/6) = 2/5; tokens right 5 of 7.
  tags = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "B-ORG"]]
  predictions = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "O"]]
  result = metrics.tagging(tags, predictions)
  assert result == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4,
                                  "accuracy": 5 / 7})
  assert_plain_floats(result)
  with pytest.raises(ValueError, match="sequence 1"):
    metrics.tagging(tags, [predictions[0], ["O"]])


def test_squad():
  # 1: "the eiffel tower!" normalizes to "eiffel tower" = first gold: EM 1, F1 1.
  # 2: "in paris france" vs "paris": 1 common token, P=1/3 R=1 -> F1 1/2.
  # 3: "apple" vs "banana" 0; vs "red apple" ("a" dropped): P=1 R=1/2 -> F1 2/3.
  # 4: "Theory" = "theory.": the article rule must not eat the "the" of "theory".
  result = metrics.squad(["The Eiffel Tower!", "in Paris, France", "an apple", "Theory"],
                         [["Eiffel tower", "the tower"], ["Paris"], ["banana", "a red apple"],
                          ["theory."]])
  assert result == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 1 / 2 + 2 / 3 + 1) / 4})
  assert_plain_floats(result)


@pytest.mark.parametrize("answers", [["Paris"], [[]]])  # a bare string, no gold answer
def test_squad_rejects_bad_answers(answers):
  with pytest.raises(ValueError, match=r"answers\[0\]"):
    metrics.squad(["Paris"], answers)


def test_bleu():
  assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == (
      pytest.approx(100.0))
  assert metrics.bleu(["a b c d e"], ["v w x y z"]) == {"bleu": 0.0}
  # Corpus BLEU needs 4-grams: a perfect 2-token match scores 0 with sacrebleu's defaults.
  assert metrics.bleu(["a b"], ["a b"]) == {"bleu": 0.0}


def test_rouge():
  # 1: "the cat sat on the mat" vs "the cat is on the mat": 5 of 6 unigrams, 3 of 5 bigrams
  #    (the-cat, on-the, the-mat), LCS "the cat on the mat" = 5 -> 5/6, 3/5, 5/6.
  # 2: "the cats" vs "the cat sat" (stemmed cats -> cat): unigrams P=1 R=2/3 F=4/5,
  #    bigrams P=1 R=1/2 F=2/3, LCS 2 -> F=4/5.
  result = metrics.rouge(["the cat sat on the mat", "the cats"],
                         ["the cat is on the mat", "the cat sat"])
  assert result == pytest.approx({"rouge1": 50 * (5 / 6 + 4 / 5), "rouge2": 50 * (3 / 5 + 2 / 3),
                                  "rougeL": 50 * (5 / 6 + 4 / 5)})
  assert_plain_floats(result)


def test_glue_average():
  # Task scores: cola 0.5, sst2 0.9, mrpc (0.8 + 0.9)/2 = 0.85, stsb (0.8 + 0.6)/2 = 0.7.
  results = {"glue/cola": {"mcc": 0.5}, "sst2": {"accuracy": 0.9, "loss": 0.3},
             "glue/mrpc": {"accuracy": 0.8, "f1": 0.9}, "stsb": {"pearson": 0.8, "spearman": 0.6}}
  assert metrics.glue_average(results) == pytest.approx((0.5 + 0.9 + 0.85 + 0.7) / 4)


@pytest.mark.parametrize("results, match", [
    ({"glue/mrpc": {"accuracy": 0.8}}, r"glue/mrpc.*f1"),
    ({"squad": {"f1": 80.0}}, "squad"),
    ({}, "no tasks"),
])
def test_glue_average_rejects(results, match):
  with pytest.raises(ValueError, match=match):
    metrics.glue_average(results)


@pytest.mark.parametrize("fn", [metrics.classification, metrics.regression, metrics.tagging,
                                metrics.squad, metrics.bleu, metrics.rouge])
def test_empty_and_mismatched_inputs(fn):
  with pytest.raises(ValueError, match="no examples"):
    fn([], [])
  with pytest.raises(ValueError, match="2 .* but 1"):
    fn([["O"], ["O"]] if fn is metrics.tagging else ["x", "y"],
       [["O"]] if fn in (metrics.tagging, metrics.squad) else ["x"])


def test_headline_metrics_are_returned():
  outputs = {
      "classification": metrics.classification([0, 1], [0, 1]),
      "regression": metrics.regression([1, 2], [1, 2]),
      "tagging": metrics.tagging([["B-X"]], [["B-X"]]),
      "extractive_qa": metrics.squad(["a"], [["a"]]),
      "seq2seq": metrics.bleu(["a"], ["a"]),
  }
  assert set(metrics.HEADLINE) == set(outputs)
  for task, (metric, mode) in metrics.HEADLINE.items():
    assert metric in outputs[task] and mode in ("min", "max")
