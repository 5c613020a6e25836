"""Tests of the WordNet corpus: parser, bundled file, documents and the TFDS build."""

import collections
import gzip
import hashlib
import itertools
import os

import pytest

from lmreuse.data.corpus import build, wordnet

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
NOUN_LINES = [
    # Hypernym '@', instance hypernym '@i', other pointers, gloss with two examples.
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 004 @ 02083346 n 0000 "
    "@i 01317541 n 0000 #m 02083863 n 0000 ~ 01322604 n 0000 | a member of the genus Canis; "
    'occurs in many breeds; "the dog barked all night"; "a dog\'s life"  \n',
    "00001740 03 n 01 entity 0 000 | that which is perceived or known  \n",
]
VERB_LINE = (
    "00001740 29 v 02 breathe 0 take_a_breath 0 001 @ 00002325 v 0000 02 + 02 00 + 08 00 "
    '| draw air into, and expel out of, the lungs; "I can breathe better"  \n'
)
ADJ_LINE = (
    "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 "
    '| existing in abundance: "whiskey galore"  \n'
)
ADV_LINE = "00001740 02 r 01 a_cappella 0 000 | without musical accompaniment  \n"


@pytest.fixture
def wordnet_dir(tmp_path):
  files = {"noun": NOUN_LINES, "verb": [VERB_LINE], "adj": [ADJ_LINE], "adv": [ADV_LINE]}
  for pos, lines in files.items():
    (tmp_path / f"data.{pos}").write_text(HEADER + "".join(lines))
  return str(tmp_path)


@pytest.fixture(scope="module")
def records():
  return list(wordnet.read_records())


def test_parse_data_files_exact_fields(wordnet_dir):
  parsed = list(build.iter_wordnet(wordnet_dir))
  assert [r["id"] for r in parsed] == [
      "n00001740",
      "n02084071",
      "v00001740",
      "s00014358",
      "r00001740",
  ]
  dog = {k: v for k, v in parsed[1].items() if k != "split"}
  assert dog == {
      "id": "n02084071",
      "pos": "n",
      "lexname": "noun.animal",
      "lemmas": ["dog", "domestic dog", "Canis familiaris"],
      "gloss": "a member of the genus Canis; occurs in many breeds",
      "examples": ["the dog barked all night", "a dog's life"],
      "hypernyms": ["n02083346", "n01317541"],
  }
  assert parsed[0]["examples"] == [] and parsed[0]["hypernyms"] == []
  verb = parsed[2]
  assert (verb["lexname"], verb["lemmas"], verb["hypernyms"]) == (
      "verb.body",
      ["breathe", "take a breath"],
      ["v00002325"],
  )
  assert verb["examples"] == ["I can breathe better"]
  adj = parsed[3]
  assert (adj["pos"], adj["lemmas"], adj["gloss"], adj["examples"]) == (
      "s",
      ["abounding", "galore"],
      "existing in abundance",
      ["whiskey galore"],
  )
  assert parsed[4]["lexname"] == "adv.all"


def test_build_is_byte_deterministic(wordnet_dir, tmp_path):
  out_a, out_b = str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.gz")
  build.main([f"--wordnet_dir={wordnet_dir}", f"--output={out_a}"])
  build.main([f"--wordnet_dir={wordnet_dir}", f"--output={out_b}"])
  assert open(out_a, "rb").read() == open(out_b, "rb").read()
  assert [r["id"] for r in wordnet.read_records(path=out_a)][:2] == ["n00001740", "n02084071"]


def test_malformed_line_names_file(tmp_path):
  path = tmp_path / "data.noun"
  path.write_text("00001740 03 n 02 entity 0 000 | too few words\n")
  with pytest.raises(ValueError, match=r"data.noun"):
    build.parse_data_file(str(path))


def test_bundled_corpus_shape(records):
  assert len(records) == 117_659
  assert len({r["id"] for r in records}) == len(records)
  assert {r["lexname"] for r in records} == set(build.LEXNAMES)
  counts = collections.Counter(r["split"] for r in records)
  assert set(counts) == set(wordnet.SPLITS)
  for split in ("validation", "test"):
    assert 0.04 < counts[split] / len(records) < 0.06, counts
  dog = next(r for r in records if r["id"] == "n02084071")
  assert dog["lemmas"][:2] == ["dog", "domestic dog"]
  assert dog["examples"] == ["the dog barked all night"]


def test_held_out_split_is_stable(records):
  split_by_id = {r["id"]: r["split"] for r in records}
  # Pinned: changing the salt, block size or hash silently reshuffles every evaluation.
  assert split_by_id["n02084071"] == "train"
  assert split_by_id["n00036299"] == "validation"
  assert split_by_id["n00056087"] == "test"
  assert build.split_of("n00036299") == "validation"
  # Held-out blocks are whole: the split changes only at block starts.
  assert split_by_id["n00036580"] == "validation"


def test_read_records_filters_split(records):
  validation = list(wordnet.read_records("validation"))
  assert validation == [r for r in records if r["split"] == "validation"]
  with pytest.raises(ValueError, match="split='dev'"):
    next(wordnet.read_records("dev"))


@pytest.mark.skipif(
    not os.path.exists("/usr/share/wordnet/data.noun"), reason="needs Debian's wordnet-base"
)
def test_bundled_corpus_matches_regeneration(tmp_path):
  out = str(tmp_path / "wordnet.jsonl.gz")
  build.main([f"--output={out}"])
  with open(out, "rb") as fresh, open(wordnet.DEFAULT_PATH, "rb") as bundled:
    assert fresh.read() == bundled.read(), "stale corpus: rerun python -m lmreuse.data.corpus.build"


def test_data_hash_pins_tfds_version():
  from lmreuse.data.corpus import wordnet_tfds

  with open(wordnet.DEFAULT_PATH, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == wordnet_tfds.DATA_SHA256


def test_synset_segments():
  record = {"lemmas": ["a", "b", "c", "d"], "gloss": "first letters", "examples": ["a then b"]}
  assert wordnet.synset_segments(record) == ["a, b, c: first letters.", "a then b"]
  assert wordnet.synset_segments({**record, "gloss": "why?"})[0] == "a, b, c: why?"


def test_documents_group_runs():
  def rec(i, lexname, split):
    return {
        "id": f"n{i:08d}",
        "lexname": lexname,
        "split": split,
        "lemmas": [str(i)],
        "gloss": "g",
        "examples": [],
    }

  layout = (
      [("noun.act", "train")] * 10 + [("noun.act", "test")] * 2 + [("noun.animal", "train")] * 3
  )
  docs = list(wordnet.documents([rec(i, *key) for i, key in enumerate(layout)]))
  assert [(d["id"], d["lexname"], len(d["segments"])) for d in docs] == [
      ("n00000000", "noun.act", 8),
      ("n00000008", "noun.act", 2),
      ("n00000010", "noun.act", 2),
      ("n00000012", "noun.animal", 3),
  ]


def test_documents_of_bundled_corpus(records):
  for split in ("train", "validation"):
    split_records = [r for r in records if r["split"] == split]
    docs = list(wordnet.documents(split_records))
    n_segments = sum(len(wordnet.synset_segments(r)) for r in split_records)
    assert sum(len(d["segments"]) for d in docs) == n_segments
    # Re-derive each document's synsets from where the next document starts.
    index = {r["id"]: i for i, r in enumerate(split_records)}
    starts = [index[d["id"]] for d in docs]
    for doc, start, end in zip(docs, starts, starts[1:] + [len(split_records)]):
      members = split_records[start:end]
      assert 1 <= len(members) <= wordnet.MAX_DOCUMENT_SYNSETS
      assert {r["lexname"] for r in members} == {doc["lexname"]}
      assert doc["segments"] == [s for r in members for s in wordnet.synset_segments(r)]


def test_tfds_round_trip(tmp_path):
  data_dir = str(tmp_path / "tfds")
  max_records = 400
  wordnet.build_tfds(data_dir, max_records=max_records)
  docs = wordnet.data_source("documents", "validation", data_dir)
  validation = itertools.islice(wordnet.read_records("validation"), max_records)
  expected = list(wordnet.documents(validation))
  assert len(docs) == len(expected)
  assert docs[3]["id"].decode() == expected[3]["id"]
  assert [s.decode() for s in docs[3]["segments"]] == expected[3]["segments"]
  synsets = wordnet.data_source("synsets", "test", data_dir)
  first = next(wordnet.read_records("test"))
  assert len(synsets) == max_records
  assert synsets[0]["id"].decode() == first["id"]
  assert [h.decode() for h in synsets[0]["hypernyms"]] == first["hypernyms"]
  wordnet.build_tfds(data_dir, max_records=max_records)  # Already prepared: reused, no error.
  with pytest.raises(ValueError, match="split='test'"):
    wordnet.data_source("documents", "test", data_dir)


def test_gzip_header_is_deterministic():
  with open(wordnet.DEFAULT_PATH, "rb") as f:
    header = f.read(10)
  assert header[4:8] == b"\0\0\0\0"  # mtime=0
  assert gzip.decompress(open(wordnet.DEFAULT_PATH, "rb").read()).count(b"\n") == 117_659
