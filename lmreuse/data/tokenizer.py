"""SentencePiece tokenizer with fixed special ids shared by every objective.

Ids 0..5 are [PAD] [UNK] [CLS] [SEP] [MASK] [EOS]; T5 sentinels <extra_id_0>.. follow at 6..
Every special except [UNK] is a SentencePiece control symbol, so raw text can never produce
one (typing "[MASK]" in a document gives ordinary pieces). Objectives add specials by id.

    tok = get_or_train("workdirs/spm/wordnet_8k.model", texts_fn, vocab_size=8000)
    ids = tok.encode("a dog barked")
"""

import io
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
import sentencepiece as spm
from jax.experimental import multihost_utils

from lmreuse import workdir as workdir_lib
from lmreuse.data.corpus import wordnet

if TYPE_CHECKING:
  from lmreuse.data.hf_tokenizer import HFTokenizer

PAD, UNK, CLS, SEP, MASK, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]"
FIXED_SPECIALS = (PAD, UNK, CLS, SEP, MASK, EOS)  # Piece i has id i.
TRAINING_SEED = 0


def sentinel_piece(i: int) -> str:
  return f"<extra_id_{i}>"


def sp_encode_with_offsets(
    sp: spm.SentencePieceProcessor, text: str
) -> tuple[list[int], list[tuple[int, int]]]:
  """Ids of `text` plus each piece's (start, end) span in characters of `text`, as slicing needs
  (SentencePiece itself reports UTF-8 byte offsets)."""
  proto = sp.encode(text, return_type="proto")
  char_of_byte = np.zeros(len(text.encode("utf-8")) + 1, np.int64)
  position = 0
  for i, ch in enumerate(text):
    width = len(ch.encode("utf-8"))
    char_of_byte[position : position + width] = i
    position += width
  char_of_byte[position] = len(text)
  ids = [piece.id for piece in proto.pieces]
  offsets = [
      (int(char_of_byte[piece.begin]), int(char_of_byte[piece.end])) for piece in proto.pieces
  ]
  return ids, offsets


def sp_decode(sp: spm.SentencePieceProcessor, ids: list[int], sentinels: dict[int, str]) -> str:
  """SentencePiece's decode with sentinel ids shown as their pieces (span corruption targets
  read "<extra_id_0> a dog <extra_id_1>"); control symbols decode to ""."""
  out = []
  for is_sentinel, run in itertools.groupby(ids, key=sentinels.__contains__):
    run = list(run)
    if is_sentinel:
      out.extend(sentinels[i] for i in run)
      continue
    text = sp.decode(run)
    # SentencePiece drops the leading space of its output; restore it after a sentinel.
    first_text_id = next((i for i in run if not sp.is_control(i)), None)
    if out and text and sp.id_to_piece(first_text_id).startswith("\u2581"):
      text = " " + text
    out.append(text)
  return "".join(out)


class Tokenizer:
  """A loaded SentencePiece model plus the ids of its special pieces; picklable."""

  def __init__(self, model_proto: bytes, model_path: str = ""):
    self.model_path = model_path
    self.model_proto = model_proto  # the serialized model, as written to model_path
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    where = model_path or "<in-memory model>"
    for expected_id, piece in enumerate(FIXED_SPECIALS):
      got = self._sp.id_to_piece(expected_id)
      if got != piece:
        raise ValueError(f"{where}: special {piece} must have id {expected_id}, which is {got!r}")
    first = len(FIXED_SPECIALS)
    n = 0
    size = self._sp.get_piece_size()
    while first + n < size and self._sp.id_to_piece(first + n) == sentinel_piece(n):
      n += 1
    self.vocab_size: int = size
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id, self.eos_id = range(first)
    self.sentinel_ids: tuple[int, ...] = tuple(range(first, first + n))
    self.special_ids: np.ndarray = np.arange(first + n, dtype=np.int32)
    not_control = [
        int(i) for i in self.special_ids if i != self.unk_id and not self._sp.is_control(int(i))
    ]
    if not_control:
      raise ValueError(f"{where}: specials {not_control} are not control symbols")

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no specials added."""
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids plus each token's (start, end) character span in `text` (extractive QA maps
    predicted token spans back to exact answer text through these)."""
    return sp_encode_with_offsets(self._sp, text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: pad/[CLS]/[SEP]/[MASK]/[EOS] dropped, sentinels shown as <extra_id_k>."""
    return sp_decode(
        self._sp, [int(i) for i in ids], {i: self._sp.id_to_piece(i) for i in self.sentinel_ids}
    )

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def __getstate__(self) -> dict:
    return {"model_proto": self.model_proto, "model_path": self.model_path}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["model_proto"], state["model_path"])

  def __repr__(self) -> str:
    return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(model_path: str) -> "Tokenizer | HFTokenizer":
  """Loads a .model file written by train_tokenizer (special ids are checked), or a Hugging Face
  tokenizer directory (same interface), so every caller can fine-tune Hugging Face checkpoints."""
  if os.path.isdir(model_path):
    from lmreuse.data import hf_tokenizer  # Imported here: hf_tokenizer imports this module.

    return hf_tokenizer.load(model_path)
  if not os.path.exists(model_path):
    raise FileNotFoundError(f"tokenizer model {model_path} does not exist")
  with open(model_path, "rb") as f:
    return Tokenizer(f.read(), model_path)


def train_tokenizer(
    texts: Iterable[str],
    model_path: str,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    num_sentinels: int = 100,
    max_sentences: int | None = None,
) -> Tokenizer:
  """Trains deterministically (same texts -> byte-identical file) and writes model_path atomically.

  `max_sentences` keeps the first texts only (no sampling, for determinism).
  """
  texts = (t for t in texts if t.strip())
  if max_sentences is not None:
    texts = itertools.islice(texts, max_sentences)
  model = io.BytesIO()
  spm.set_random_generator_seed(TRAINING_SEED)
  # Training from an iterator into memory keeps temp paths out of the model's TrainerSpec.
  spm.SentencePieceTrainer.train(
      sentence_iterator=texts,
      model_writer=model,
      model_type=model_type,
      vocab_size=vocab_size,
      pad_id=0,
      pad_piece=PAD,
      unk_id=1,
      unk_piece=UNK,
      bos_id=-1,
      eos_id=-1,
      control_symbols=[CLS, SEP, MASK, EOS] + [sentinel_piece(i) for i in range(num_sentinels)],
      byte_fallback=True,
      num_threads=1,
      shuffle_input_sentence=False,
      input_sentence_size=0,
      max_sentence_length=16384,
      minloglevel=2,
  )
  tokenizer = Tokenizer(model.getvalue(), model_path)
  if len(tokenizer.sentinel_ids) != num_sentinels:
    raise ValueError(
        f"{model_path}: trained {len(tokenizer.sentinel_ids)} sentinels, "
        f"num_sentinels={num_sentinels}"
    )
  workdir_lib.write_atomically(model_path, model.getvalue())
  return tokenizer


def get_or_train(
    model_path: str, texts_fn: Callable[[], Iterable[str]], **train_kwargs
) -> Tokenizer:
  """Loads model_path if it exists, else trains it on texts_fn() (called only then)."""
  if os.path.exists(model_path):
    return load_tokenizer(model_path)
  return train_tokenizer(texts_fn(), model_path, **train_kwargs)


def from_config(
    tok: ml_collections.ConfigDict,
    workdir: str,
    *,
    reuse_trained: bool = True,
    corpus: Callable[[], Iterable[str]] | None = None,
) -> "Tokenizer | HFTokenizer":
  """Loads `tok.path` (config.tokenizer), else the SentencePiece model this workdir's run
  trained (unless `reuse_trained` is False: an overwrite discards it), else trains one on the
  pretraining split: `corpus()`'s segments, by default the bundled corpus's training split.

  A newly trained model is not written yet (it is trained in a temporary directory): the run
  writes it with `save_trained` once it may write to the workdir, so that a run refused by a
  later check leaves the workdir as it was, and an overwrite never reads the old run's model.
  """
  if tok.path:
    if not os.path.exists(tok.path):
      raise FileNotFoundError(f"config.tokenizer.path={tok.path!r} does not exist")
    return load_tokenizer(tok.path)
  path = workdir_lib.trained_tokenizer_path(workdir)
  if reuse_trained and os.path.exists(path):
    return load_tokenizer(path)
  proto = b""
  if jax.process_index() == 0:  # one model for every process: they must tokenize alike
    with tempfile.TemporaryDirectory() as staging:
      proto = train_tokenizer(
          corpus() if corpus else wordnet.segments("train"),
          os.path.join(staging, "spm.model"),
          vocab_size=tok.vocab_size,
          model_type=tok.model_type,
          num_sentinels=tok.num_sentinels,
          max_sentences=tok.max_sentences,
      ).model_proto
  if jax.process_count() > 1:
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(proto))))
    data = np.frombuffer(proto, np.uint8) if proto else np.zeros(size, np.uint8)
    proto = np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()
  return Tokenizer(proto, model_path=path)


def save_trained(
    trained: "Tokenizer | HFTokenizer", tok: ml_collections.ConfigDict, workdir: str
) -> None:
  """Writes the model `from_config` trained for this workdir (process 0; nothing when
  `tok.path` names one)."""
  path = workdir_lib.trained_tokenizer_path(workdir)
  if not tok.path and jax.process_index() == 0 and not os.path.exists(path):
    workdir_lib.write_atomically(path, trained.model_proto)
