"""Hugging Face tokenizer directories behind the interface of lmreuse's own Tokenizer.

Fine-tuning a Hugging Face checkpoint needs its tokenizer, so this reads what `save_pretrained`
writes: tokenizer.json, else vocab.txt (BERT WordPiece), else vocab.json + merges.txt (GPT-2
byte-level BPE), else spiece.model (T5 SentencePiece, sentinels appended as transformers does).
As with lmreuse's Tokenizer, raw text never yields specials ("[MASK]" in a document gives
ordinary tokens); objectives and tasks add specials by id.

    tok = tokenizer.load_tokenizer("path/to/bert-base-uncased")  # Dispatches to load() here.
"""

import itertools
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from lmreuse.data import tokenizer as tokenizer_lib

BACKEND_FILES = (
    ("tokenizer.json",),
    ("vocab.txt",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
)
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # The later one wins.
SPECIALS = ("cls", "sep", "pad", "unk", "mask", "eos", "bos")


def is_hf_tokenizer_dir(path: str | os.PathLike) -> bool:
  return _backend_files(os.fspath(path)) is not None


def load(directory: str | os.PathLike) -> "HFTokenizer":
  return HFTokenizer(directory)


class HFTokenizer:
  """A Hugging Face tokenizer with the attributes and methods of tokenizer.Tokenizer; picklable."""

  def __init__(self, directory: str | os.PathLike):
    self.model_path = directory = os.fspath(directory)
    files = _backend_files(directory)
    if files is None:
      looked_for = ", ".join(" + ".join(f) for f in BACKEND_FILES)
      raise FileNotFoundError(f"{directory} has no Hugging Face tokenizer: looked for {looked_for}")
    self._files, config = files, _read_config(directory)
    self._sp = self._tok = None
    if files == ("spiece.model",):
      self._sp = spm.SentencePieceProcessor(model_file=os.path.join(directory, files[0]))
      size, extra_ids = self._sp.get_piece_size(), config.get("extra_ids", 100)
      self.vocab_size: int = size + extra_ids
      # T5Tokenizer appends sentinels after the SentencePiece pieces, <extra_id_0> last.
      sentinels = range(size + extra_ids - 1, size - 1, -1)
    else:
      self._tok = _tokenizers_backend(directory, files, config)
      self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
      sentinels = itertools.takewhile(
          lambda i: i is not None,
          (self._tok.token_to_id(tokenizer_lib.sentinel_piece(k)) for k in itertools.count()),
      )
    self.sentinel_ids: tuple[int, ...] = tuple(sentinels)
    self._sentinel_pieces = {
        i: tokenizer_lib.sentinel_piece(k) for k, i in enumerate(self.sentinel_ids)
    }
    found = {name: self._token_id(config.get(f"{name}_token")) for name in SPECIALS}
    for name, fallback in (
        ("eos", "sep"),
        ("sep", "eos"),
        ("bos", "eos"),
        ("cls", "bos"),
        ("pad", "eos"),
        ("unk", "eos"),
        ("mask", "unk"),
    ):
      if found[name] is None:
        found[name] = found[fallback]
    missing = [name for name, i in found.items() if i is None]
    if missing:
      raise ValueError(
          f"{directory}: no id for special tokens {missing} (nor a fallback) in "
          f"{' / '.join(CONFIG_FILES)}"
      )
    self.pad_id, self.unk_id, self.cls_id = found["pad"], found["unk"], found["cls"]
    self.sep_id, self.mask_id, self.eos_id = found["sep"], found["mask"], found["eos"]
    special = set(found.values()) | set(self.sentinel_ids)
    if self._tok is not None:
      special |= {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    self.special_ids: np.ndarray = np.array(sorted(special), np.int32)
    # A mask that fell back to unk (T5) is no mask: decoded unknown text still shows.
    mask = {self.mask_id} - {self.unk_id}
    self._dropped = {self.pad_id, self.cls_id, self.sep_id, self.eos_id, *mask}

  def _token_id(self, token: str | dict | None) -> int | None:
    """The id of a special token as the config files give it (a string or {"content": ...})."""
    token = token["content"] if isinstance(token, dict) else token
    if token is None:
      return None
    if self._tok is not None:
      return self._tok.token_to_id(token)
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no specials added."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if self._sp is not None:
      return self._sp.encode(list(texts), out_type=int)
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids plus each token's (start, end) character span in `text`, surrounding whitespace
    left out (a byte-level "Ġthe" spans "the"), so that QA answers slice out exactly."""
    if self._sp is not None:
      ids, offsets = tokenizer_lib.sp_encode_with_offsets(self._sp, text)
    else:
      encoding = self._tok.encode(text, add_special_tokens=False)
      ids, offsets = encoding.ids, encoding.offsets
    return ids, [_strip_span(text, start, end) for start, end in offsets]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: pad/cls/sep/eos/mask dropped, sentinels shown as <extra_id_k>."""
    ids = [int(i) for i in ids if int(i) not in self._dropped]
    if self._tok is not None:
      return self._tok.decode(ids, skip_special_tokens=False)
    return tokenizer_lib.sp_decode(self._sp, ids, self._sentinel_pieces)

  def id_to_piece(self, i: int) -> str:
    if self._tok is not None:
      return self._tok.id_to_token(int(i))
    return self._sentinel_pieces.get(int(i)) or self._sp.id_to_piece(int(i))

  def __getstate__(self) -> dict:
    return {"model_path": self.model_path}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["model_path"])

  def __repr__(self) -> str:
    return (
        f"HFTokenizer({self.model_path!r}, files={'+'.join(self._files)}, "
        f"vocab_size={self.vocab_size})"
    )


def _backend_files(directory: str) -> tuple[str, ...] | None:
  for files in BACKEND_FILES:
    if all(os.path.isfile(os.path.join(directory, f)) for f in files):
      return files
  return None


def _tokenizers_backend(
    directory: str, files: tuple[str, ...], config: dict
) -> tokenizers.Tokenizer:
  """A `tokenizers` pipeline equal to what transformers builds from the same files."""
  paths = [os.path.join(directory, f) for f in files]
  if files == ("tokenizer.json",):
    tok = tokenizers.Tokenizer.from_file(paths[0])
    tok.no_truncation()  # Saved tokenizers may carry a fixed length; the tasks cut rows.
    tok.no_padding()
  elif files == ("vocab.txt",):
    unk = config.get("unk_token", "[UNK]")
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordPiece.from_file(
            paths[0], unk_token=unk["content"] if isinstance(unk, dict) else unk
        )
    )
    tok.normalizer = tokenizers.normalizers.BertNormalizer(
        lowercase=config.get("do_lower_case", True),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tokenizers.decoders.WordPiece()
  else:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*paths))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
        add_prefix_space=config.get("add_prefix_space", False)
    )
    tok.decoder = tokenizers.decoders.ByteLevel()
  tok.encode_special_tokens = True
  return tok


def _read_config(directory: str) -> dict:
  config = {}
  for name in CONFIG_FILES:
    if os.path.isfile(os.path.join(directory, name)):
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        config.update(json.load(f))
  return config


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end
