"""Tests of loading user CSV/TSV/JSONL/Parquet files into canonical examples (sources/local.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import types

import pytest

from experiments import finetune
from lmreuse.data.sources import local


def _task(task_type, **overrides):
  return types.SimpleNamespace(**{**local.config_defaults(), "type": task_type, **overrides})


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
  return str(path)


def _jsonl(tmp_path, name, records):
  return _write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def _parquet(tmp_path, name, records):
  import pyarrow as pa
  import pyarrow.parquet as pq

  path = str(tmp_path / name)
  pq.write_table(pa.Table.from_pylist(records), path)
  return path


def _raises(error, path, line, fact):
  """Asserts the message starts with `path:line:` and contains `fact`."""
  where = f"{path}:{line}: " if line else f"{path}"
  return pytest.raises(error, match="^" + re.escape(where) + ".*" + re.escape(fact))


def test_classification_csv_with_text_pair(tmp_path):
  train = _write(tmp_path, "train.csv", 'premise,hypothesis,y\n"A, b",c,pos\n"multi\nline",d,neg\n')
  valid = _write(tmp_path, "valid.CSV", "premise,hypothesis,y\ne,f, pos \n")
  test = _write(tmp_path, "test.csv", "premise,hypothesis,y\ng,h,neg\n")
  data = local.load(
      _task(
          "classification",
          train_path=train,
          validation_path=valid,
          test_path=test,
          text_column="premise",
          text_pair_column="hypothesis",
          label_column="y",
      ),
      seed=0,
  )
  assert data.task_type == "classification"
  assert data.splits["train"] == [
      {"text": "A, b", "text_pair": "c", "label": "pos"},
      {"text": "multi\nline", "text_pair": "d", "label": "neg"},
  ]
  assert data.splits["validation"] == [{"text": "e", "text_pair": "f", "label": "pos"}]
  assert data.splits["test"] == [{"text": "g", "text_pair": "h", "label": "neg"}]
  assert data.labels == ["neg", "pos"]
  assert data.origin == {"train": train, "validation": valid, "test": test}


def test_classification_csv_integer_labels_and_bom(tmp_path):
  train = _write(tmp_path, "train.csv", "\ufefftext,label\na,1\nb,0\nc,1\n")
  valid = _write(tmp_path, "valid.csv", "text,label\nd,0\n")
  data = local.load(_task("classification", train_path=train, validation_path=valid), seed=0)
  assert [e["label"] for e in data.splits["train"]] == [1, 0, 1]
  assert data.splits["validation"] == [{"text": "d", "label": 0}]
  assert data.labels == [0, 1]


def test_classification_jsonl_int_labels_split_off(tmp_path):
  train = _jsonl(tmp_path, "train.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(10)])
  data = local.load(_task("classification", train_path=train, validation_fraction=0.2), seed=7)
  assert set(data.splits) == {"train", "validation"}
  assert len(data.splits["train"]) == 8 and len(data.splits["validation"]) == 2
  assert data.labels == [0, 1, 2]
  assert all(isinstance(e["label"], int) for e in data.splits["train"])
  assert data.origin["validation"] == f"{train} (validation_fraction=0.2, seed=7)"


def test_validation_split_is_seeded(tmp_path):
  train = _jsonl(
      tmp_path, "train.json-lines", [{"source": f"s{i}", "target": "t"} for i in range(30)]
  )
  task = _task("seq2seq", train_path=train, validation_fraction=0.3)
  first, again, other = (local.load(task, seed) for seed in (1, 1, 2))
  assert first.splits == again.splits
  assert first.splits["validation"] != other.splits["validation"]
  assert len(first.splits["validation"]) == 9
  held = first.splits["train"] + first.splits["validation"]
  assert sorted(e["source"] for e in held) == sorted(f"s{i}" for i in range(30))


def test_regression_tsv(tmp_path):
  train = _write(tmp_path, "train.tsv", 'text\tscore\n"quoted"\t1.5\nplain, text\t-2\n')
  valid = _write(tmp_path, "valid.tsv", "text\tscore\nx\t3e-1\n")
  data = local.load(
      _task("regression", train_path=train, validation_path=valid, label_column="score"), seed=0
  )
  assert data.splits["train"] == [
      {"text": "quoted", "label": 1.5},
      {"text": "plain, text", "label": -2.0},
  ]
  assert data.splits["validation"] == [{"text": "x", "label": 0.3}]
  assert data.labels is None


def test_tagging_jsonl(tmp_path):
  train = _jsonl(
      tmp_path,
      "train.jsonl",
      [{"tokens": ["New", "York"], "tags": ["B", "I"]}, {"tokens": "is big", "tags": "O O"}],
  )
  valid = _write(tmp_path, "valid.jsonl", '\n{"tokens": ["x"], "tags": ["O"]}\n\n')
  data = local.load(_task("tagging", train_path=train, validation_path=valid), seed=0)
  assert data.splits["train"] == [
      {"tokens": ["New", "York"], "tags": ["B", "I"]},
      {"tokens": ["is", "big"], "tags": ["O", "O"]},
  ]
  assert data.splits["validation"] == [{"tokens": ["x"], "tags": ["O"]}]
  assert data.labels == ["B", "I", "O"]


def test_extractive_qa_csv_finds_answer_start(tmp_path):
  train = _write(
      tmp_path,
      "train.csv",
      "question,context,answer\n" "Where?,In Paris and Paris.,Paris\nWho?,Ann met Bob.,Bob\n",
  )
  valid = _write(tmp_path, "valid.csv", "question,context,answer\nWhat?,A cat.,cat\n")
  data = local.load(_task("extractive_qa", train_path=train, validation_path=valid), seed=0)
  assert data.splits["train"] == [
      {
          "id": "2",
          "question": "Where?",
          "context": "In Paris and Paris.",
          "answers": [{"text": "Paris", "start": 3}],
      },
      {
          "id": "3",
          "question": "Who?",
          "context": "Ann met Bob.",
          "answers": [{"text": "Bob", "start": 8}],
      },
  ]
  assert data.labels is None


def test_extractive_qa_jsonl_answer_lists_and_starts(tmp_path):
  train = _jsonl(
      tmp_path,
      "train.jsonl",
      [
          {"qid": "q1", "q": "Who?", "c": "Ann and Bob", "a": ["Ann", "Bob"], "s": [0, 8]},
          {"qid": 7, "q": "What?", "c": "a b a", "a": "a", "s": 4},
      ],
  )
  valid = _jsonl(tmp_path, "valid.jsonl", [{"qid": "v", "q": "Q", "c": "x y", "a": "y", "s": 2}])
  data = local.load(
      _task(
          "extractive_qa",
          train_path=train,
          validation_path=valid,
          id_column="qid",
          question_column="q",
          context_column="c",
          answer_column="a",
          answer_start_column="s",
      ),
      seed=0,
  )
  assert data.splits["train"][0]["answers"] == [
      {"text": "Ann", "start": 0},
      {"text": "Bob", "start": 8},
  ]
  assert data.splits["train"][1]["id"] == "7"
  assert data.splits["train"][1]["answers"] == [{"text": "a", "start": 4}]


def test_seq2seq_tsv(tmp_path):
  train = _write(tmp_path, "train.TSV", "src\ttgt\nhello world\tbonjour le monde\na\tb\n")
  test = _write(tmp_path, "test.tsv", "src\ttgt\nc\td\n")
  data = local.load(
      _task(
          "seq2seq",
          train_path=train,
          test_path=test,
          source_column="src",
          target_column="tgt",
          validation_fraction=0.5,
      ),
      seed=0,
  )
  assert len(data.splits["train"]) == 1 and len(data.splits["validation"]) == 1
  assert data.splits["test"] == [{"source": "c", "target": "d"}]
  assert list(data.splits) == ["train", "validation", "test"]
  assert data.origin["test"] == test


def test_parquet_values_keep_their_types(tmp_path):
  """Parquet columns are typed as JSON's values are: integer labels stay integers, token lists
  stay lists, and an answer start is an integer column; unmapped columns are not read."""
  rows = [{"text": f"t{i}", "pair": "p", "label": i % 2, "extra": [1.5]} for i in range(4)]
  train = _parquet(tmp_path, "train.parquet", rows)
  test = _parquet(tmp_path, "test.PARQUET", [{"text": "u", "pair": "q", "label": 1, "extra": []}])
  data = local.load(
      _task("classification", train_path=train, test_path=test, text_pair_column="pair"), seed=0
  )
  assert data.labels == [0, 1] and data.origin["test"] == test
  assert data.splits["test"] == [{"text": "u", "text_pair": "q", "label": 1}]
  assert sorted(e["text"] for e in data.splits["train"] + data.splits["validation"]) == [
      "t0",
      "t1",
      "t2",
      "t3",
  ]
  tagged = _parquet(tmp_path, "tags.parquet", [{"tokens": ["New", "York"], "tags": ["B", "I"]}])
  data = local.load(_task("tagging", train_path=tagged, validation_path=tagged), seed=0)
  assert data.splits["train"] == [{"tokens": ["New", "York"], "tags": ["B", "I"]}]
  qa = _parquet(
      tmp_path, "qa.parquet", [{"question": "Q?", "context": "a cat", "answer": "cat", "s": 2}]
  )
  data = local.load(
      _task("extractive_qa", train_path=qa, validation_path=qa, answer_start_column="s"), seed=0
  )
  assert data.splits["validation"][0]["answers"] == [{"text": "cat", "start": 2}]


def test_parquet_errors_name_the_file_and_row(tmp_path):
  train = _parquet(
      tmp_path, "train.parquet", [{"text": "a", "label": "x"}, {"text": None, "label": "y"}]
  )
  with _raises(ValueError, train, 2, "column 'text' (config.task.text_column) is empty"):
    local.load(_task("classification", train_path=train), seed=0)
  train = _parquet(
      tmp_path, "train.parquet", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
  )
  valid = _parquet(
      tmp_path, "valid.parquet", [{"text": "c", "label": "x"}, {"text": "d", "label": "z"}]
  )
  with _raises(ValueError, valid, 2, "label 'z' is not among the train labels ('x', 'y')"):
    local.load(_task("classification", train_path=train, validation_path=valid), seed=0)
  with _raises(ValueError, train, 0, "no column 'sentence' (config.task.text_column)"):
    local.load(_task("classification", train_path=train, text_column="sentence"), seed=0)
  fake = _write(tmp_path, "fake.parquet", "text,label\na,b\n")
  with _raises(ValueError, fake, 0, "not a readable Parquet file"):
    local.load(_task("classification", train_path=fake), seed=0)
  import pyarrow as pa
  import pyarrow.parquet as pq

  empty = str(tmp_path / "empty.parquet")
  pq.write_table(
      pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}), empty
  )
  with _raises(ValueError, empty, 0, "no rows"):
    local.load(_task("classification", train_path=empty), seed=0)


# Errors: each names `file:line` and the fact that is wrong.


def test_missing_csv_column_points_at_header(tmp_path):
  train = _write(tmp_path, "train.csv", "\n\nsentence,label\na,b\n")
  with _raises(
      ValueError,
      train,
      3,
      "no column 'text' (config.task.text_column); available " "columns: 'sentence', 'label'",
  ):
    local.load(_task("classification", train_path=train), seed=0)


def test_missing_jsonl_key_points_at_line(tmp_path):
  train = _write(tmp_path, "train.jsonl", '{"source": "a", "target": "b"}\n\n{"source": "c"}\n')
  with _raises(ValueError, train, 3, "no column 'target' (config.task.target_column)"):
    local.load(_task("seq2seq", train_path=train), seed=0)


@pytest.mark.parametrize(
    "task_type,header,row,column",
    [
        ("classification", "text,label", "  ,pos", "text"),
        ("classification", "text,pair,label", "a,,pos", "pair"),
        ("seq2seq", "source,target", " ,b", "source"),
        ("seq2seq", "source,target", "a, ", "target"),
        ("extractive_qa", "question,context,answer", ",ctx,c", "question"),
        ("extractive_qa", "question,context,answer", "q,,c", "context"),
    ],
)
def test_empty_text(tmp_path, task_type, header, row, column):
  train = _write(tmp_path, "train.csv", f"{header}\n{row}\n")
  task = _task(task_type, train_path=train, text_pair_column="pair" if "pair" in header else "")
  with _raises(ValueError, train, 2, f"column {column!r}"):
    local.load(task, seed=0)


def test_empty_text_after_multiline_field_names_row_start(tmp_path):
  train = _write(tmp_path, "train.csv", 'text,label\n"two\nlines",a\n"",b\n')
  with _raises(ValueError, train, 4, "column 'text' (config.task.text_column) is empty"):
    local.load(_task("classification", train_path=train), seed=0)


def test_unknown_label_in_validation(tmp_path):
  train = _write(tmp_path, "train.csv", "text,label\na,pos\nb,neg\n")
  valid = _write(tmp_path, "valid.csv", "text,label\nc,pos\nd,maybe\n")
  with _raises(
      ValueError, valid, 3, "label 'maybe' is not among the train labels " "('neg', 'pos')"
  ):
    local.load(_task("classification", train_path=train, validation_path=valid), seed=0)


def test_unknown_label_lists_at_most_twenty(tmp_path):
  train = _jsonl(tmp_path, "train.jsonl", [{"text": "t", "label": i} for i in range(25)])
  test = _jsonl(tmp_path, "test.jsonl", [{"text": "t", "label": 99}])
  with _raises(ValueError, test, 1, "label 99 is not among the train labels (0, 1, 2") as error:
    local.load(_task("classification", train_path=train, test_path=test), seed=0)
  assert "19, ... (25 in all))" in str(error.value) and "20," not in str(error.value)


def test_unknown_tag_in_test(tmp_path):
  train = _jsonl(tmp_path, "train.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "B-X"]}])
  valid = _jsonl(tmp_path, "valid.jsonl", [{"tokens": ["a"], "tags": ["O"]}])
  test = _jsonl(
      tmp_path, "test.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"tokens": "c d", "tags": "O B-Y"}]
  )
  with _raises(ValueError, test, 2, "tag 'B-Y' is not among the train tags ('B-X', 'O')"):
    local.load(_task("tagging", train_path=train, validation_path=valid, test_path=test), 0)


def test_token_tag_count_mismatch(tmp_path):
  train = _write(tmp_path, "train.csv", "tokens,tags\na b,O O\na b c,O O\n")
  with _raises(ValueError, train, 3, "3 tokens but 2 tags"):
    local.load(_task("tagging", train_path=train), seed=0)


@pytest.mark.parametrize("value", ["high", "nan", ""])
def test_regression_target_not_a_number(tmp_path, value):
  train = _write(tmp_path, "train.tsv", f"text\tlabel\na\t1\nb\t{value}\n")
  with _raises(
      ValueError,
      train,
      3,
      f"column 'label' (config.task.label_column) is not a " f"number: {value!r}",
  ):
    local.load(_task("regression", train_path=train), seed=0)


def test_answer_not_in_context(tmp_path):
  train = _write(tmp_path, "train.csv", "question,context,answer\nq,Ann met Bob.,Eve\n")
  with _raises(ValueError, train, 2, "answer 'Eve' does not occur in the context"):
    local.load(_task("extractive_qa", train_path=train), seed=0)


def test_answer_start_mismatch(tmp_path):
  train = _write(tmp_path, "train.csv", "question,context,answer,start\nq,Ann met Bob.,Bob,4\n")
  with _raises(
      ValueError,
      train,
      2,
      "answer 'Bob' is not at answer_start=4 in the context, " "which has 'met' there",
  ):
    local.load(_task("extractive_qa", train_path=train, answer_start_column="start"), seed=0)


@pytest.mark.parametrize(
    "line,fact", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object but list")]
)
def test_bad_jsonl_line(tmp_path, line, fact):
  train = _write(tmp_path, "train.jsonl", f'{{"source": "a", "target": "b"}}\n{line}\n')
  with _raises(ValueError, train, 2, fact):
    local.load(_task("seq2seq", train_path=train), seed=0)


@pytest.mark.parametrize("bom,offset", [(b"", 17), (b"\xef\xbb\xbf", 20)])
def test_not_utf8(tmp_path, bom, offset):
  train = _write(tmp_path, "train.csv", bom + "source,target\ncaf\u00e9,b\n".encode("latin-1"))
  with _raises(ValueError, train, 2, f"not UTF-8 text (byte offset {offset}:"):
    local.load(_task("seq2seq", train_path=train), seed=0)


@pytest.mark.parametrize(
    "name,text,fact",
    [
        ("train.csv", "", "empty file (no header row)"),
        ("train.tsv", "source\ttarget\n\n", "no data rows after the header"),
        ("train.jsonl", "\n  \n", "empty file (no JSON lines)"),
    ],
)
def test_empty_file(tmp_path, name, text, fact):
  train = _write(tmp_path, name, text)
  with _raises(ValueError, train, None, f": {fact}"):
    local.load(_task("seq2seq", train_path=train), seed=0)


def test_missing_file_names_config_key(tmp_path):
  train = _write(tmp_path, "train.csv", "source,target\na,b\n")
  missing = str(tmp_path / "nope.csv")
  with pytest.raises(
      FileNotFoundError,
      match=re.escape(f"config.task.validation_path=" f"{missing!r}: no such file"),
  ):
    local.load(_task("seq2seq", train_path=train, validation_path=missing), seed=0)


def test_unknown_extension(tmp_path):
  train = _write(tmp_path, "train.txt", "source,target\na,b\n")
  with pytest.raises(
      ValueError, match=re.escape(f"config.task.train_path={train!r}: unknown " "extension '.txt'")
  ):
    local.load(_task("seq2seq", train_path=train), seed=0)


def test_csv_row_with_wrong_field_count(tmp_path):
  train = _write(tmp_path, "train.csv", "source,target\na,b\nc,d,e\n")
  with _raises(ValueError, train, 3, "3 fields but the header has 2"):
    local.load(_task("seq2seq", train_path=train), seed=0)


@pytest.mark.parametrize("column,value", [("tokens", 5), ("tokens", ["a", 1]), ("tags", None)])
def test_tokens_or_tags_neither_text_nor_strings(tmp_path, column, value):
  row = {"tokens": ["a"], "tags": ["O"], column: value}
  train = _jsonl(tmp_path, "train.jsonl", [{"tokens": ["a"], "tags": ["O"]}, row])
  with _raises(
      ValueError,
      train,
      2,
      f"column {column!r} (config.task.{column}_column) is "
      f"neither whitespace-separated text nor a list of strings: {value!r}",
  ):
    local.load(_task("tagging", train_path=train), seed=0)


@pytest.mark.parametrize(
    "name,value",
    [("train.csv", " "), ("train.jsonl", 1.5), ("train.jsonl", True), ("train.jsonl", None)],
)
def test_label_neither_text_nor_integer(tmp_path, name, value):
  if name.endswith(".csv"):
    train = _write(tmp_path, name, f"text,label\na,pos\nb,{value}\n")
    line = 3
  else:
    train = _jsonl(tmp_path, name, [{"text": "a", "label": "pos"}, {"text": "b", "label": value}])
    line = 2
  with _raises(
      ValueError,
      train,
      line,
      "column 'label' (config.task.label_column) is not a " f"label (text or integer): {value!r}",
  ):
    local.load(_task("classification", train_path=train), seed=0)


@pytest.mark.parametrize(
    "name,text",
    [
        ("train.csv", "tokens,tags\na,O\n  , \n"),
        ("train.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": [], "tags": []}\n'),
    ],
)
def test_no_tokens(tmp_path, name, text):
  train = _write(tmp_path, name, text)
  with _raises(
      ValueError,
      train,
      3 if name.endswith(".csv") else 2,
      "column 'tokens' (config.task.tokens_column) has no tokens",
  ):
    local.load(_task("tagging", train_path=train), seed=0)


@pytest.mark.parametrize(
    "name,start",
    [("train.csv", "8.0"), ("train.csv", "eight"), ("train.jsonl", 8.0), ("train.jsonl", True)],
)
def test_answer_start_not_an_integer(tmp_path, name, start):
  if name.endswith(".csv"):
    train = _write(tmp_path, name, f"question,context,answer,start\nq,Ann met Bob.,Bob,{start}\n")
    line = 2
  else:
    train = _jsonl(
        tmp_path,
        name,
        [{"question": "q", "context": "Ann met Bob.", "answer": "Bob", "start": start}],
    )
    line = 1
  with _raises(
      ValueError,
      train,
      line,
      "column 'start' (config.task.answer_start_column) is " f"not an integer: {start!r}",
  ):
    local.load(_task("extractive_qa", train_path=train, answer_start_column="start"), seed=0)


@pytest.mark.parametrize(
    "answers,starts,fact",
    [
        (["Ann", "Bob"], [0], "2 answers but 1 answer starts"),
        ("Bob", [8, 8], "1 answers but 2 answer starts"),
        ([], [], "column 'answer' (config.task.answer_column) has no answers"),
    ],
)
def test_answer_and_start_counts_differ(tmp_path, answers, starts, fact):
  train = _jsonl(
      tmp_path,
      "train.jsonl",
      [
          {"question": "q", "context": "Ann met Bob.", "answer": "Bob", "start": 8},
          {"question": "q", "context": "Ann met Bob.", "answer": answers, "start": starts},
      ],
  )
  with _raises(ValueError, train, 2, fact):
    local.load(_task("extractive_qa", train_path=train, answer_start_column="start"), seed=0)


def test_labels_mixing_integers_and_strings_name_a_line(tmp_path):
  train = _write(
      tmp_path,
      "train.jsonl",
      '{"text": "a", "label": "pos"}\n\n'
      '{"text": "b", "label": "neg"}\n{"text": "c", "label": 1}\n',
  )
  with _raises(
      ValueError,
      train,
      4,
      "labels mix integers and strings: label 1 here, label " "'pos' on line 1",
  ):
    local.load(_task("classification", train_path=train), seed=0)


def test_csv_parser_error_names_the_line(tmp_path):
  limit = csv.field_size_limit()
  train = _write(tmp_path, "train.csv", f'source,target\na,b\n"{"x" * (limit + 1)}",c\n')
  with _raises(ValueError, train, 3, f"field larger than field limit ({limit})"):
    local.load(_task("seq2seq", train_path=train), seed=0)


def test_bad_inputs_fail_before_the_workdir_is_touched(finetune_config, tmp_path):
  """An overwriting run that its data refuses leaves the old run's files as they were, whichever
  check refuses it: a train row, the label set across files, or the CSV parser."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  old = {"config.json": "{}", "results.json": '{"metrics": {"test/accuracy": 0.9}}'}
  for name, text in old.items():
    (workdir / name).write_text(text)
  good = "text,label\na dog,animal\na cat,animal\nan oak,plant\n"
  field = "x" * (csv.field_size_limit() + 1)
  cases = [  # (train, validation, the file and line at fault, fact)
      (good + '" ",plant\n', None, "train", 5, "column 'text' (config.task.text_column) is empty"),
      (
          good,
          "text,label\na fir,plant\na rock,mineral\n",
          "validation",
          3,
          "label 'mineral' is not among the train labels",
      ),
      (good + f'"{field}",plant\n', None, "train", 5, "field larger than field limit"),
  ]
  for train, validation, at_fault, line, fact in cases:
    paths = {
        "train": _write(tmp_path, "train.csv", train),
        "validation": _write(tmp_path, "valid.csv", validation) if validation else "",
    }
    config = finetune_config(
        overwrite=True,
        **{
            "task.name": "local",
            "task.type": "classification",
            "task.train_path": paths["train"],
            "task.validation_path": paths["validation"],
        },
    )
    with _raises(ValueError, paths[at_fault], line, fact):
      finetune.run(config, str(workdir))
    assert sorted(os.listdir(workdir)) == sorted(old), fact
    assert all((workdir / name).read_text() == text for name, text in old.items()), fact
