"""Re-scoring predictions.jsonl records without a model: `score` is `metrics`, `per_example`
averages to `score`, `sufficient_statistics` summed give `score`, and all survive the JSON
round trip."""

import json

import numpy as np
import pytest

from lmreuse import tasks, workdir
from lmreuse.data.tokenizer import load_tokenizer
from tests.tasks.test_task_types import context

TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]

# task type, TaskContext arguments, examples, predictions, metrics that have per-example values,
# values worked out by hand, and metrics that have sufficient statistics.
CASES = {
    "classification": (
        "classification",
        dict(labels=["a", "b", "c"]),
        [{"text": "x", "label": label} for label in "abcabca"],
        list("abbaccc"),
        {"accuracy"},
        {"accuracy": 4 / 7},
        set(),
    ),
    "classification_int_labels": (  # JSON keeps ints; the configured positive label is text
        "classification",
        dict(labels=[0, 1], positive_label="1"),
        [{"text": "x", "text_pair": "y", "label": label} for label in (0, 1, 1, 0, 1)],
        [0, 1, 0, 0, 0],
        {"accuracy"},
        {"accuracy": 3 / 5, "f1": 2 / 4},
        set(),
    ),  # class 1: TP=1 FP=0 FN=2
    "regression": (
        "regression",
        {},
        [{"text": "x", "label": label} for label in (0.5, 2.0, 3.25, 4.0)],
        [1.0, 1.5, 3.5, 5.0],
        {"mse"},
        {"mse": (0.25 + 0.25 + 0.0625 + 1) / 4},
        set(),
    ),
    "tagging": (
        "tagging",
        dict(labels=TAGS),
        [
            {
                "tokens": ["Ann", "met", "Bob", "in", "New", "York"],
                "tags": ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"],
            },
            {"tokens": ["Paris", "sleeps"], "tags": ["B-LOC", "O"]},
        ],
        [["B-PER", "O", "O", "O", "B-LOC", "I-LOC"], ["B-PER", "O"]],
        set(),
        # Entities: 2 of 3 predicted are right, 2 of 4 gold are found; tokens right 6 of 8.
        {"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "accuracy": 6 / 8},
        {"f1", "precision", "recall", "accuracy"},
    ),
    "extractive_qa": (
        "extractive_qa",
        dict(max_len=24, max_query_len=6),
        [
            {
                "id": "1",
                "question": "who?",
                "context": "the tall dog barked",
                "answers": [{"text": "the tall dog", "start": 0}, {"text": "dog", "start": 9}],
            },
            {
                "id": "2",
                "question": "what?",
                "context": "it barked loudly",
                "answers": [{"text": "barked", "start": 3}],
            },
        ],
        ["tall dog", "barked loudly"],
        {"exact_match", "f1"},
        # "tall dog" = "the tall dog" normalized; "barked loudly" vs "barked": P=1/2 R=1.
        {"exact_match": 50.0, "f1": (100 + 200 / 3) / 2},
        set(),
    ),
    "seq2seq": (
        "seq2seq",
        dict(architecture="decoder", max_len=8, max_target_len=6),
        [
            {"source": "dog", "target": "a domestic animal that barks"},
            {"source": "cat", "target": "a small domestic animal"},
        ],
        ["a domestic animal that barks", "a small animal"],
        {"rouge1", "rouge2", "rougeL"},
        # 2: unigrams P=3/3 R=3/4 -> F=6/7; bigrams "a small" of 3: P=1/2 R=1/3 -> F=2/5.
        {"rouge1": (100 + 600 / 7) / 2, "rouge2": (100 + 40) / 2},
        {"bleu"},
    ),
}


@pytest.fixture(scope="module")
def tok(tokenizer_path):
  return load_tokenizer(tokenizer_path)


def round_trip(task, examples, predictions, tmp_path):
  """predictions.jsonl as the fine-tuning run writes it, read back."""
  path = str(tmp_path / "predictions.jsonl")
  workdir.write_jsonl(path, [task.record(e, p) for e, p in zip(examples, predictions)])
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_on_records_equals_metrics(tok, tmp_path, case):
  task_type, ctx_args, examples, predictions, mean_metrics, by_hand, counted = CASES[case]
  task = tasks.build(task_type, context(tok, **ctx_args))
  expected = task.metrics(examples, predictions)
  records = round_trip(task, examples, predictions, tmp_path)
  from_records = [r["prediction"] for r in records]
  cls = tasks.get(task_type)
  positive = ctx_args.get("positive_label")
  assert cls.score(records, from_records, positive) == expected
  assert {k: expected[k] for k in by_hand} == pytest.approx(by_hand)
  for metric, value in expected.items():  # one metric at a time, as a bootstrap asks for it
    assert cls.score(records, from_records, positive, metric=metric) == {metric: value}
  with pytest.raises(ValueError, match="no_such_metric"):
    cls.score(records, from_records, positive, metric="no_such_metric")

  per_example = cls.per_example(records, from_records)
  assert set(per_example) == mean_metrics
  for metric, values in per_example.items():
    assert values.shape == (len(examples),)
    assert np.mean(values) == pytest.approx(expected[metric])

  statistics = cls.sufficient_statistics(records, from_records)
  assert set(statistics) == counted
  for metric, (counts, to_score) in statistics.items():
    assert counts.ndim == 2 and counts.shape[0] == len(examples)
    assert float(to_score(counts.sum(axis=0))) == expected[metric]  # exactly, not approximately


def test_binary_f1_needs_the_positive_label():
  _, _, examples, predictions, *_ = CASES["classification_int_labels"]
  cls = tasks.get("classification")
  assert "f1" not in cls.score(examples, predictions)
  with pytest.raises(ValueError, match="positive_label"):
    cls.score(examples, predictions, metric="f1")
  # Given as the label itself or as config text, it is the same class.
  assert cls.score(examples, predictions, 1) == cls.score(examples, predictions, "1")
  assert cls.score(examples, predictions, "1")["f1"] == pytest.approx(0.5)


def test_mixed_label_types_compare_as_text():
  # A NumPy label written with default=str comes back as "1"; the prediction stayed an int.
  examples = [{"text": "x", "label": "1"}, {"text": "x", "label": "0"}]
  cls = tasks.get("classification")
  assert cls.score(examples, [1, 1])["accuracy"] == 0.5
  assert cls.per_example(examples, [1, 1])["accuracy"].tolist() == [1.0, 0.0]


def test_per_example_values_by_hand():
  # Errors 0.5 -0.5 0.25 1.
  _, _, examples, predictions, *_ = CASES["regression"]
  squared = tasks.get("regression").per_example(examples, predictions)["mse"]
  assert squared.tolist() == pytest.approx([0.25, 0.25, 0.0625, 1.0])
  _, _, examples, predictions, *_ = CASES["extractive_qa"]
  qa = tasks.get("extractive_qa").per_example(examples, predictions)
  # 1: "tall dog" = normalized "the tall dog": EM 100, F1 100.
  # 2: "barked loudly" vs "barked": P=1/2 R=1 -> F1 2/3, EM 0.
  assert qa["exact_match"].tolist() == [100.0, 0.0]
  assert qa["f1"].tolist() == pytest.approx([100.0, 200 / 3])


def tagging_examples(n: int, rng: np.random.Generator) -> tuple[list[dict], list[list[str]]]:
  """Sentences of 0-14 words, some without entities, and predictions that miss, retype and
  split entities, or find none."""
  examples, predictions = [], []
  for _ in range(n):
    tags = ["O"] * int(rng.integers(0, 15))
    for i in range(len(tags)):
      if rng.random() < 0.2:
        kind = rng.choice(["PER", "LOC"])
        tags[i] = f"B-{kind}"
        if i + 1 < len(tags) and rng.random() < 0.5:
          tags[i + 1] = f"I-{kind}"
    guess = (
        ["O"] * len(tags)
        if rng.random() < 0.2
        else [t if rng.random() > 0.15 else str(rng.choice(TAGS)) for t in tags]
    )
    examples.append({"tokens": [f"w{i}" for i in range(len(tags))], "tags": tags})
    predictions.append(guess)
  return examples, predictions


def seq2seq_examples(n: int, rng: np.random.Generator) -> tuple[list[dict], list[str]]:
  """Definitions and generated glosses that are exact, empty, cut short or reordered."""
  targets = [
      "a domestic animal that barks",
      "a small domestic cat",
      "the act of running fast",
      "a large body of salt water",
      "to move through water by moving the limbs",
      "a building where books are kept",
      "Feeling or showing pleasure!",
      "a, b, and c.",
  ]
  examples, predictions = [], []
  for i in range(n):
    target = targets[i % len(targets)]
    words = target.split()
    examples.append({"source": f"word {i}", "target": target})
    predictions.append(
        [
            target,
            "",
            " ".join(words[: int(rng.integers(1, len(words)))]),
            " ".join(rng.permutation(words)),
        ][i % 4]
    )
  return examples, predictions


@pytest.mark.parametrize(
    "task_type, make", [("tagging", tagging_examples), ("seq2seq", seq2seq_examples)]
)
def test_sufficient_statistics_on_the_full_set_equal_score(task_type, make):
  examples, predictions = make(36, np.random.default_rng(0))
  cls = tasks.get(task_type)
  expected = cls.score(examples, predictions)
  statistics = cls.sufficient_statistics(examples, predictions)
  assert statistics
  for metric, (counts, to_score) in statistics.items():
    assert float(to_score(counts.sum(axis=0))) == expected[metric], metric
    # Leading axes are resamples: each row's value is that of its own sum.
    halves = np.stack([counts[:18].sum(axis=0), counts[18:].sum(axis=0)])
    assert to_score(halves).tolist() == [
        cls.score(examples[:18], predictions[:18])[metric],
        cls.score(examples[18:], predictions[18:])[metric],
    ]
