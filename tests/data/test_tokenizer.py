"""Tests of the SentencePiece tokenizer: fixed special ids, determinism, round trips, pickling."""

import itertools
import pickle

import numpy as np
import pytest
import sentencepiece as spm

from lmreuse.data import tokenizer as tokenizer_lib
from lmreuse.data.corpus import wordnet

VOCAB_SIZE = 800


def corpus_texts(n_synsets: int = 3000) -> list[str]:
  records = itertools.islice(wordnet.read_records("train"), n_synsets)
  return [s for r in records for s in wordnet.synset_segments(r)]


@pytest.fixture(scope="module")
def texts():
  return corpus_texts()


@pytest.fixture(scope="module")
def model_path(texts, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("spm") / "wordnet.model")
  tokenizer_lib.train_tokenizer(texts, path, vocab_size=VOCAB_SIZE)
  return path


@pytest.fixture(scope="module")
def tok(model_path):
  return tokenizer_lib.load_tokenizer(model_path)


def test_special_ids(tok):
  assert tok.vocab_size == VOCAB_SIZE
  ids = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eos_id)
  assert ids == (0, 1, 2, 3, 4, 5)
  assert tok.sentinel_ids == tuple(range(6, 106))
  np.testing.assert_array_equal(tok.special_ids, np.arange(106))
  pieces = [tok.id_to_piece(i) for i in (0, 1, 2, 3, 4, 5, 6, 105)]
  assert pieces == [
      "[PAD]",
      "[UNK]",
      "[CLS]",
      "[SEP]",
      "[MASK]",
      "[EOS]",
      "<extra_id_0>",
      "<extra_id_99>",
  ]


def test_raw_text_never_yields_specials(tok):
  ids = tok.encode("[CLS] a [MASK] b [SEP] <extra_id_0> [PAD] [EOS]")
  assert not set(ids) & set(tok.special_ids.tolist())


def test_training_is_byte_deterministic(texts, model_path, tmp_path):
  again = str(tmp_path / "again.model")
  tokenizer_lib.train_tokenizer(texts, again, vocab_size=VOCAB_SIZE)
  assert open(again, "rb").read() == open(model_path, "rb").read()
  leftovers = [p.name for p in tmp_path.iterdir() if p.name != "again.model"]
  assert not leftovers, "temp files left behind"


def test_round_trip(tok, texts):
  for text in texts[:200] + ["Unseen: 日本語, naïve café — 42%"]:
    assert tok.decode(tok.encode(text)) == text
  batch = texts[:5]
  assert tok.encode_batch(batch) == [tok.encode(t) for t in batch]


def test_decode_drops_specials_keeps_sentinels(tok):
  ids = [
      tok.cls_id,
      *tok.encode("the cat"),
      tok.sentinel_ids[0],
      *tok.encode("the mat"),
      tok.sep_id,
      tok.mask_id,
      tok.eos_id,
      tok.pad_id,
      tok.pad_id,
  ]
  assert tok.decode(ids) == "the cat<extra_id_0> the mat"
  assert tok.decode(np.array([tok.sentinel_ids[1]])) == "<extra_id_1>"
  after_sentinel = [tok.sentinel_ids[0], tok.sep_id, *tok.encode("dog")]
  assert tok.decode(after_sentinel) == "<extra_id_0> dog"


def test_pickle(tok):
  restored = pickle.loads(pickle.dumps(tok))
  assert restored.model_path == tok.model_path
  assert restored.encode("a dog barked") == tok.encode("a dog barked")
  assert restored.sentinel_ids == tok.sentinel_ids


def test_get_or_train_reuses_file(model_path, tok):
  def fail():
    raise AssertionError("texts_fn must not be called when the model exists")

  reused = tokenizer_lib.get_or_train(model_path, fail, vocab_size=VOCAB_SIZE)
  assert reused.encode("a dog barked") == tok.encode("a dog barked")


def test_get_or_train_trains_small_bpe(tmp_path):
  path = str(tmp_path / "sub" / "bpe.model")
  bpe = tokenizer_lib.get_or_train(
      path,
      lambda: corpus_texts(500),
      vocab_size=400,
      model_type="bpe",
      num_sentinels=3,
      max_sentences=600,
  )
  assert bpe.sentinel_ids == (6, 7, 8) and bpe.vocab_size == 400
  assert tokenizer_lib.load_tokenizer(path).encode("dogs") == bpe.encode("dogs")


def test_load_rejects_foreign_model(tmp_path, texts):
  prefix = str(tmp_path / "plain")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts[:2000]), model_prefix=prefix, vocab_size=300, minloglevel=2
  )  # Default ids: unk=0, bos=1, eos=2.
  with pytest.raises(ValueError, match=r"plain\.model: special \[PAD\]"):
    tokenizer_lib.load_tokenizer(prefix + ".model")
