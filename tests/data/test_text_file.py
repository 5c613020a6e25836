"""Local pretraining corpora (lmreuse/data/corpus/text_file.py): layouts, splits, errors."""

import json

import pytest

from lmreuse.data.corpus import text_file


def test_a_txt_file_is_one_sentence_per_line_and_blank_lines_between_documents(tmp_path):
  path = tmp_path / "c.txt"
  path.write_text("a b.\n  c d.  \n\n\n\ne f.\n\ng\nh\n\ni\n")
  assert text_file.read_documents(str(path)) == (("a b.", "c d."), ("e f.",), ("g", "h"), ("i",))


def test_a_jsonl_file_holds_text_or_segments_per_line(tmp_path):
  path = tmp_path / "c.jsonl"
  records = [{"text": "one"}, {"segments": ["two", " ", "three"]}, {"text": ""}, {"text": "4"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n" + '{"text": "5"}\n')
  assert text_file.read_documents(str(path)) == (("one",), ("two", "three"), ("4",), ("5",))
  assert text_file.write_documents(str(tmp_path / "w.jsonl"), [["x", "y"], [], ["z"]]) == 2
  assert (tmp_path / "w.jsonl").read_text().splitlines() == [
      '{"segments": ["x", "y"]}',
      '{"segments": ["z"]}',
  ]


def test_the_validation_split_is_seeded_disjoint_and_at_least_two_documents(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(100)))
  validation = text_file.data_source(str(path), "validation")
  train = text_file.data_source(str(path), "train")
  assert len(validation) == 5 and len(train) == 95
  texts = lambda split: {d["segments"][0] for d in split}
  assert not texts(validation) & texts(train) and texts(validation) | texts(train) == {
      f"doc {i}" for i in range(100)
  }
  assert validation == text_file.data_source(str(path), "validation")  # the same every run
  assert list(text_file.segments(str(path))) == [d["segments"][0] for d in train]
  small = tmp_path / "small.jsonl"
  small.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4)))
  assert len(text_file.data_source(str(small), "validation")) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "a"}\nnot json\n', r"c\.jsonl:2: not a JSON line"),
        ('{"text": "a"}\n{"segments": [1]}\n', r'c\.jsonl:2: a document is \{"text": str\}'),
        ('{"body": "a"}\n', r"c\.jsonl:1: a document is"),
        ('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n', r"c\.jsonl: 3 document\(s\)"),
    ],
)
def test_a_bad_file_names_its_line(tmp_path, content, message):
  path = tmp_path / "c.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    text_file.read_documents(str(path))


def test_an_unknown_layout_or_a_missing_file_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.corpus='x.csv' is neither 'wordnet'"):
    text_file.check_path("x.csv")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text_file.read_documents(str(tmp_path / "missing.txt"))
