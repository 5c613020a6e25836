"""Tiny Hugging Face tokenizer directories, laid out exactly as transformers' save_pretrained
writes them, trained on the bundled corpus: tests need real HF files and cannot download any.

    path = hf_fixtures.gpt2_tokenizer_dir(str(tmp_path / "gpt2"))
    transformers.GPT2Tokenizer.from_pretrained(path)  # or lmreuse's hf_tokenizer.load(path)
"""

import io
import itertools
import os

import sentencepiece as spm
import tokenizers
import transformers

from lmreuse.data.corpus import wordnet

N_SEGMENTS = 2000  # Enough text for a few hundred pieces, trained in well under a second.
GPT2_EOS = "<|endoftext|>"


def _texts() -> list[str]:
  return list(itertools.islice(wordnet.segments("train"), N_SEGMENTS))


def gpt2_tokenizer_dir(path: str, vocab_size: int = 400) -> str:
  """GPT-2's layout (tokenizer.json, vocab.json, merges.txt, configs): byte-level BPE whose only
  special token, <|endoftext|>, is bos, eos and unk, and which has no pad token."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      _texts(), vocab_size=vocab_size, special_tokens=[GPT2_EOS], show_progress=False
  )
  os.makedirs(path, exist_ok=True)
  vocab, merges = bpe.save_model(path)  # save_pretrained rewrites both, with the rest.
  tok = transformers.GPT2TokenizerFast(
      vocab_file=vocab,
      merges_file=merges,
      bos_token=GPT2_EOS,
      eos_token=GPT2_EOS,
      unk_token=GPT2_EOS,
  )
  tok.save_pretrained(path)
  return path


def t5_tokenizer_dir(path: str, vocab_size: int = 300, extra_ids: int = 10) -> str:
  """T5's layout (spiece.model, added_tokens.json, configs): a unigram SentencePiece model with
  T5's ids (pad 0, eos 1, unk 2, no bos) and `extra_ids` sentinels appended by T5Tokenizer."""
  model = io.BytesIO()
  spm.set_random_generator_seed(0)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_texts()),
      model_writer=model,
      model_type="unigram",
      vocab_size=vocab_size,
      pad_id=0,
      pad_piece="<pad>",
      eos_id=1,
      eos_piece="</s>",
      unk_id=2,
      unk_piece="<unk>",
      bos_id=-1,
      num_threads=1,
      shuffle_input_sentence=False,
      input_sentence_size=0,
      minloglevel=2,
  )
  os.makedirs(path, exist_ok=True)
  spiece = os.path.join(path, "spiece.model")
  with open(spiece, "wb") as f:
    f.write(model.getvalue())
  tok = transformers.T5Tokenizer(vocab_file=spiece, extra_ids=extra_ids, legacy=False)
  tok.save_pretrained(path)
  return path
