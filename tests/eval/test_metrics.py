"""Downstream metrics against values worked out by hand on tiny inputs."""

import math
import warnings

import numpy as np
import pytest
import sacrebleu

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
      {
          "accuracy": 0.75,
          "macro_f1": 11 / 15,
          "micro_f1": 0.75,
          "mcc": 1 / math.sqrt(3),
          "f1": 2 / 3,
      }
  )
  assert_plain_floats(result)
  assert "f1" not in metrics.classification([0, 1, 1, 0], [0, 1, 0, 0])


def test_classification_multiclass_mcc():
  # labels 0 0 1 1 2 2, predictions 0 1 1 1 2 0: c = 4 right of s = 6.
  # Multi-class MCC (Gorodkin 2004) from the confusion matrix: true counts t = (2, 2, 2),
  # predicted counts p = (2, 3, 1):
  #   (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2) (s^2 - sum t_k^2))
  #   = (24 - (4 + 6 + 2)) / sqrt((36 - 14) (36 - 12)) = 12 / sqrt(528) = 3 / sqrt(33).
  # F1 per class: 0: TP=1 FP=1 FN=1 -> 1/2; 1: TP=2 FP=1 FN=0 -> 4/5; 2: TP=1 FP=0 FN=1 -> 2/3.
  result = metrics.classification([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
  assert result == pytest.approx(
      {
          "accuracy": 4 / 6,
          "macro_f1": (1 / 2 + 4 / 5 + 2 / 3) / 3,
          "micro_f1": 4 / 6,
          "mcc": 3 / math.sqrt(33),
      }
  )


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


def test_regression_spearman_with_ties():
  # Ties take the mean of the ranks they span, and Spearman is Pearson on those ranks:
  # x = 1 2 2 3 4 -> ranks 1 2.5 2.5 4 5; y = 1 3 2 2 5 -> ranks 1 4 2.5 2.5 5 (both mean 3).
  # rank deviations dx = -2 -.5 -.5 1 2, dy = -2 1 -.5 -.5 2: sum dx*dy = 4 - .5 + .25 - .5 + 4
  # = 7.25, sum dx^2 = sum dy^2 = 9.5 -> spearman = 7.25 / 9.5 = 29/38 (the no-ties formula
  # 1 - 6 sum d^2 / (n (n^2 - 1)) would give 1 - 27/120 = 0.775).
  # Pearson on the values: x mean 2.4, y mean 2.6, sum dx*dy = 5.8, sum dx^2 = 5.2,
  # sum dy^2 = 9.2. Errors 0 -1 0 1 -1 -> mse 3/5.
  result = metrics.regression([1, 2, 2, 3, 4], [1, 3, 2, 2, 5])
  assert result == pytest.approx(
      {"spearman": 29 / 38, "pearson": 5.8 / math.sqrt(5.2 * 9.2), "mse": 0.6}
  )


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
  assert result == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "accuracy": 5 / 7})
  assert_plain_floats(result)
  with pytest.raises(ValueError, match="sequence 1"):
    metrics.tagging(tags, [predictions[0], ["O"]])


def test_squad():
  # 1: "the eiffel tower!" normalizes to "eiffel tower" = first gold: EM 1, F1 1.
  # 2: "in paris france" vs "paris": 1 common token, P=1/3 R=1 -> F1 1/2.
  # 3: "apple" vs "banana" 0; vs "red apple" ("a" dropped): P=1 R=1/2 -> F1 2/3.
  # 4: "Theory" = "theory.": the article rule must not eat the "the" of "theory".
  result = metrics.squad(
      ["The Eiffel Tower!", "in Paris, France", "an apple", "Theory"],
      [["Eiffel tower", "the tower"], ["Paris"], ["banana", "a red apple"], ["theory."]],
  )
  assert result == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 1 / 2 + 2 / 3 + 1) / 4})
  assert_plain_floats(result)


@pytest.mark.parametrize("answers", [["Paris"], [[]]])  # a bare string, no gold answer
def test_squad_rejects_bad_answers(answers):
  with pytest.raises(ValueError, match=r"answers\[0\]"):
    metrics.squad(["Paris"], answers)


def test_bleu():
  assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == (
      pytest.approx(100.0)
  )
  assert metrics.bleu(["a b c d e"], ["v w x y z"]) == {"bleu": 0.0}
  # Corpus BLEU needs 4-grams: a perfect 2-token match scores 0 with sacrebleu's defaults.
  assert metrics.bleu(["a b"], ["a b"]) == {"bleu": 0.0}


def test_bleu_partial_overlap_with_brevity_penalty():
  # sacrebleu's defaults: 13a tokenization splits "now!" into "now !"; no n-gram order has zero
  # matches here, so the exponential smoothing never applies.
  # 1: "the cat sat on a mat" (6 tokens) vs "the cat sat on the mat today" (7):
  #    1-grams: the cat sat on mat match, "a" does not        -> 5 of 6
  #    2-grams: the-cat cat-sat sat-on; not on-a, a-mat       -> 3 of 5
  #    3-grams: the-cat-sat cat-sat-on; not sat-on-a, on-a-mat -> 2 of 4
  #    4-grams: the-cat-sat-on only                           -> 1 of 3
  # 2: "Go home now!" = its reference, 4 tokens each:         -> 4/4, 3/3, 2/2, 1/1
  # Corpus counts add up: precisions 9/10, 6/8, 4/6, 2/4, whose product is 9/40; the hypotheses
  # have 10 tokens against 11, so BP = exp(1 - 11/10).
  corpus = 100 * math.exp(1 - 11 / 10) * (9 / 40) ** (1 / 4)
  assert metrics.bleu(
      ["the cat sat on a mat", "Go home now!"], ["the cat sat on the mat today", "Go home now!"]
  ) == pytest.approx({"bleu": corpus}, rel=1e-9)
  # The first sentence alone: (5/6 * 3/5 * 2/4 * 1/3) = 1/12, BP = exp(1 - 7/6).
  assert metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat today"]) == (
      pytest.approx({"bleu": 100 * math.exp(1 - 7 / 6) * (1 / 12) ** (1 / 4)}, rel=1e-9)
  )


def test_rouge():
  # 1: "the cat sat on the mat" vs "the cat is on the mat": 5 of 6 unigrams, 3 of 5 bigrams
  #    (the-cat, on-the, the-mat), LCS "the cat on the mat" = 5 -> 5/6, 3/5, 5/6.
  # 2: "the cats" vs "the cat sat" (stemmed cats -> cat): unigrams P=1 R=2/3 F=4/5,
  #    bigrams P=1 R=1/2 F=2/3, LCS 2 -> F=4/5.
  result = metrics.rouge(
      ["the cat sat on the mat", "the cats"], ["the cat is on the mat", "the cat sat"]
  )
  assert result == pytest.approx(
      {
          "rouge1": 50 * (5 / 6 + 4 / 5),
          "rouge2": 50 * (3 / 5 + 2 / 3),
          "rougeL": 50 * (5 / 6 + 4 / 5),
      }
  )
  assert_plain_floats(result)


def test_glue_average():
  # Task scores: cola 0.5, sst2 0.9, mrpc (0.8 + 0.9)/2 = 0.85, stsb (0.8 + 0.6)/2 = 0.7.
  results = {
      "glue/cola": {"mcc": 0.5},
      "sst2": {"accuracy": 0.9, "loss": 0.3},
      "glue/mrpc": {"accuracy": 0.8, "f1": 0.9},
      "stsb": {"pearson": 0.8, "spearman": 0.6},
  }
  assert metrics.glue_average(results) == pytest.approx((0.5 + 0.9 + 0.85 + 0.7) / 4)


@pytest.mark.parametrize(
    "results, match",
    [
        ({"glue/mrpc": {"accuracy": 0.8}}, r"glue/mrpc.*f1"),
        ({"squad": {"f1": 80.0}}, "squad"),
        ({}, "no tasks"),
    ],
)
def test_glue_average_rejects(results, match):
  with pytest.raises(ValueError, match=match):
    metrics.glue_average(results)


@pytest.mark.parametrize(
    "fn",
    [
        metrics.classification,
        metrics.regression,
        metrics.tagging,
        metrics.squad,
        metrics.bleu,
        metrics.rouge,
        metrics.classification_per_example,
        metrics.regression_per_example,
        metrics.squad_per_example,
        metrics.rouge_per_example,
        metrics.tagging_statistics,
        metrics.bleu_statistics,
    ],
)
def test_empty_and_mismatched_inputs(fn):
  tagging = fn in (metrics.tagging, metrics.tagging_statistics)
  with pytest.raises(ValueError, match="no examples"):
    fn([], [])
  with pytest.raises(ValueError, match=r"2 .* but 1"):
    fn(
        [["O"], ["O"]] if tagging else ["x", "y"],
        [["O"]] if tagging or fn in (metrics.squad, metrics.squad_per_example) else ["x"],
    )


def test_per_example_values():
  # The examples of test_classification_binary, test_regression, test_squad and test_rouge.
  assert metrics.classification_per_example([0, 1, 1, 0], [0, 1, 0, 0])["accuracy"].tolist() == [
      1.0,
      1.0,
      0.0,
      1.0,
  ]
  assert metrics.regression_per_example([1, 2, 3, 4], [2, 5, 4, 9])["mse"].tolist() == [
      1.0,
      9.0,
      1.0,
      25.0,
  ]
  squad = metrics.squad_per_example(
      ["The Eiffel Tower!", "in Paris, France", "an apple", "Theory"],
      [["Eiffel tower", "the tower"], ["Paris"], ["banana", "a red apple"], ["theory."]],
  )
  assert squad["exact_match"].tolist() == [100.0, 0.0, 0.0, 100.0]
  assert squad["f1"].tolist() == pytest.approx([100.0, 50.0, 200 / 3, 100.0])
  rouge = metrics.rouge_per_example(
      ["the cat sat on the mat", "the cats"], ["the cat is on the mat", "the cat sat"]
  )
  assert rouge["rouge1"].tolist() == pytest.approx([500 / 6, 80.0])
  assert rouge["rouge2"].tolist() == pytest.approx([60.0, 200 / 3])


# Sufficient statistics: a resample's value from summed per-example counts must be the library's
# value on that resample, bit for bit, or a study's fast bootstrap would not be the re-scored one.

REFERENCES = [
    "The cat sat on the mat.",
    "A domestic animal that barks.",
    "It rained all day in Paris.",
    "She sold the old car to her neighbour for 500 euros.",
    "Go!",
    "",
    "The committee, after long debate, approved the budget on Tuesday.",
    "a small rodent with a long tail",
    "Why did the chicken cross the road?",
    "Prices rose 3.5% in March, the fastest rise since 2008.",
]


def hypotheses(rng: np.random.Generator) -> list[tuple[str, str]]:
  """(hypothesis, reference) pairs: exact, empty, shortened, lower-cased, with words swapped."""
  pairs = []
  for reference in REFERENCES:
    words = reference.split()
    kept = " ".join(w for w in words if rng.random() > 0.3)
    swapped = " ".join(rng.permutation(words)) if words else "something else entirely"
    for hypothesis in (reference, "", kept, reference.lower(), swapped):
      pairs.append((hypothesis, reference))
  return pairs


def test_bleu_is_sacrebleu_corpus_bleu_on_every_resample():
  rng = np.random.default_rng(0)
  predictions, references = map(list, zip(*hypotheses(rng)))
  assert metrics.bleu(predictions, references)["bleu"] == (
      sacrebleu.corpus_bleu(predictions, [references]).score
  )
  counts, to_bleu = metrics.bleu_statistics(predictions, references)["bleu"]
  assert counts.shape == (len(predictions), 10) and counts.dtype == np.int64
  idx_RxN = rng.integers(0, len(predictions), (20, len(predictions)))
  expected = [
      sacrebleu.corpus_bleu([predictions[i] for i in idx], [[references[i] for i in idx]]).score
      for idx in idx_RxN
  ]
  assert to_bleu(counts[idx_RxN].sum(axis=1)).tolist() == expected
  assert len(set(expected)) > 10  # the resamples differ, so the test can fail
  # One sentence's counts score as sacrebleu scores that sentence alone.
  assert float(to_bleu(counts[0])) == sacrebleu.corpus_bleu(predictions[:1], [references[:1]]).score


ENTITY_TYPES = ("PER", "LOC", "ORG")


def tag_sentences(rng: np.random.Generator, n: int) -> tuple[list[list[str]], list[list[str]]]:
  """BIO gold tags (some sentences empty or without entities) and predictions that drop,
  retype, extend and split entities, start them with I-, or predict no entity at all."""
  gold, predicted = [], []
  for _ in range(n):
    tags = ["O"] * int(rng.integers(0, 12))
    for i in range(len(tags)):
      if rng.random() < 0.2:
        kind = rng.choice(ENTITY_TYPES)
        tags[i] = f"B-{kind}"
        for j in range(i + 1, min(len(tags), i + int(rng.integers(1, 4)))):
          tags[j] = f"I-{kind}"
    guess = list(tags)
    if rng.random() < 0.15:
      guess = ["O"] * len(tags)
    for i in range(len(guess)):
      r = rng.random()
      if r < 0.08:
        guess[i] = "O"
      elif r < 0.14:
        guess[i] = f"I-{rng.choice(ENTITY_TYPES)}"
      elif r < 0.18:
        guess[i] = f"B-{rng.choice(ENTITY_TYPES)}"
    gold.append(tags)
    predicted.append(guess)
  return gold, predicted


def test_tagging_statistics_are_seqeval_on_every_resample():
  rng = np.random.default_rng(1)
  gold, predicted = tag_sentences(rng, 40)
  assert [] in gold and any(t and set(t) == {"O"} for t in gold)
  statistics = metrics.tagging_statistics(gold, predicted)
  assert set(statistics) == {"f1", "precision", "recall", "accuracy"}
  expected = metrics.tagging(gold, predicted)
  for name, (counts, to_score) in statistics.items():
    assert counts.shape[0] == len(gold)
    assert float(to_score(counts.sum(axis=0))) == expected[name]
  for idx in rng.integers(0, len(gold), (30, len(gold))):
    resample = metrics.tagging([gold[i] for i in idx], [predicted[i] for i in idx])
    for name, (counts, to_score) in statistics.items():
      assert float(to_score(counts[idx].sum(axis=0))) == resample[name], name


def test_entity_scores_divide_by_zero_as_seqeval():
  # [found, predicted, gold]: no predictions, no gold entities, neither, none found.
  scores = metrics.entity_scores(np.array([[0, 0, 3], [0, 2, 0], [0, 0, 0], [0, 2, 3]]))
  for name in ("f1", "precision", "recall"):
    assert scores[name].tolist() == [0.0] * 4
  predictions = [[["O", "O"]], [["B-PER", "O"]], [["O", "O"]], [["O", "B-LOC"]]]
  golds = [[["B-PER", "I-PER"]], [["O", "O"]], [["O", "O"]], [["B-PER", "O"]]]
  for gold, prediction in zip(golds, predictions):
    assert {k: v for k, v in metrics.tagging(gold, prediction).items() if k != "accuracy"} == {
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
    }


def test_order_dependent_entities_are_left_to_rescoring():
  # seqeval joins sentences with "O": a sentence that opens with the non-BIO tag "X" reads
  # differently first and later, so a resample's entity F1 depends on its order, not on counts.
  gold = [["X", "B-PER"], ["X", "B-PER"]]
  predicted = [["X", "I-PER"], ["X", "X"]]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # seqeval: "X seems not to be NE tag"
    assert (
        metrics.tagging(gold, predicted)["f1"] != metrics.tagging(gold[::-1], predicted[::-1])["f1"]
    )
    statistics = metrics.tagging_statistics(gold, predicted)
    assert set(statistics) == {"accuracy"}
    counts, to_accuracy = statistics["accuracy"]
    assert float(to_accuracy(counts.sum(axis=0))) == metrics.tagging(gold, predicted)["accuracy"]


def test_tagging_statistics_hold_for_any_tags_they_accept():
  # Random corpora over BIO/BIOES tags and over non-scheme tags (POS-like "NN", "X", "."):
  # wherever entity counts are offered, they give seqeval's value on a resample in any order.
  rng = np.random.default_rng(2)
  alphabets = [
      ["O", "B-PER", "I-PER", "E-PER", "S-LOC", "B-LOC", "I-LOC", "B", "I"],
      ["O", "B-PER", "I-PER", "X", "NN", "IN", ".", "S-X", "I-", "E"],
  ]
  offered = 0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    for trial in range(300):
      alphabet = alphabets[trial % 2]
      n = int(rng.integers(1, 6))
      gold = [
          [alphabet[i] for i in rng.integers(0, len(alphabet), rng.integers(1, 6))]
          for _ in range(n)
      ]
      predicted = [[alphabet[i] for i in rng.integers(0, len(alphabet), len(t))] for t in gold]
      statistics = metrics.tagging_statistics(gold, predicted)
      offered += "f1" in statistics
      for idx in rng.integers(0, n, (3, n)):
        resample = metrics.tagging([gold[i] for i in idx], [predicted[i] for i in idx])
        for name, (counts, to_score) in statistics.items():
          assert float(to_score(counts[idx].sum(axis=0))) == resample[name], (
              name,
              gold,
              predicted,
              idx,
          )
  assert 150 < offered < 300  # every BIO corpus, and some but not all of the others
