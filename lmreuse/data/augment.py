"""Word-level data augmentation for text classification (EDA, Wei & Zou 2019), training only.

Token dropout deletes words, random swap exchanges word pairs, synonym replacement swaps a word
for another lemma of a WordNet synset containing it (from the bundled corpus, so no download).
Each is a probability per word; all are 0 (off) by default. As in EDA, stop words keep their
form: "at" has WordNet synonyms (astatine), but swapping them in changes no meaning usefully.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lmreuse.data.corpus import wordnet

KEYS = ("token_dropout", "random_swap", "synonym_replacement")


def config_defaults() -> dict[str, float]:
  return dict.fromkeys(KEYS, 0.0)


@functools.lru_cache(maxsize=1)
def synonyms() -> dict[str, tuple[str, ...]]:
  """lower-cased single word → the other lemmas of every synset it belongs to."""
  table: dict[str, set[str]] = {}
  for record in wordnet.read_records():
    lemmas = [lemma.replace("_", " ") for lemma in record["lemmas"]]
    for lemma in lemmas:
      word = lemma.lower()
      if " " not in lemma and word not in ENGLISH_STOP_WORDS:
        table.setdefault(word, set()).update(o for o in lemmas if o.lower() != word)
  return {word: tuple(sorted(others)) for word, others in table.items() if others}


class Augmenter:
  """Applies the configured perturbations to one text with the caller's seeded generator."""

  def __init__(
      self, token_dropout: float = 0.0, random_swap: float = 0.0, synonym_replacement: float = 0.0
  ):
    for key, p in zip(KEYS, (token_dropout, random_swap, synonym_replacement)):
      if not 0.0 <= p < 1.0:
        raise ValueError(f"config.task.augment.{key}={p} must be in [0, 1)")
    self.token_dropout = token_dropout
    self.random_swap = random_swap
    self.synonym_replacement = synonym_replacement
    self.synonyms = synonyms() if synonym_replacement else {}

  def __call__(self, text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if self.synonym_replacement:
      words = [
          self._synonym(w, rng) if rng.random() < self.synonym_replacement else w for w in words
      ]
    if self.random_swap and len(words) > 1:
      for _ in range(rng.binomial(len(words), self.random_swap)):
        i, j = rng.choice(len(words), 2, replace=False)
        words[i], words[j] = words[j], words[i]
    if self.token_dropout and len(words) > 1:
      kept = [w for w in words if rng.random() >= self.token_dropout]
      words = kept or [words[rng.integers(len(words))]]  # never empty the text
    return " ".join(words)

  def _synonym(self, word: str, rng: np.random.Generator) -> str:
    options = self.synonyms.get(word.lower())
    return options[rng.integers(len(options))] if options else word


def from_config(cfg: Any) -> Augmenter | None:
  """None when every probability is 0, so unaugmented runs do no per-word work."""
  values = {key: float(cfg[key]) for key in KEYS}
  return Augmenter(**values) if any(values.values()) else None
