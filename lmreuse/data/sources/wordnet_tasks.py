r"""Downstream tasks with real labels from the bundled WordNet 3.0 corpus (no download).

Splits follow the corpus's held-out synset blocks, which pretraining never sees (see
lmreuse/data/corpus/build.py), so validation/test text is unseen by a pretrained model.

  wordnet_supersense   classification  gloss → its lexicographer file (45 classes, noun.animal…)
  wordnet_relation     classification  (headwords of A, a gloss) → same_synset if it is A's gloss,
                                       hypernym if it is a hypernym's, unrelated otherwise
  wordnet_headword_qa  extractive_qa   question = gloss, context = an example sentence,
                                       answer = the headword's occurrence in that sentence
  wordnet_definition   seq2seq         headword → gloss (definition modelling)

Examples are a pure function of the corpus (the relation task's choices use a fixed seed), so
every run and every seed sees the same dataset.

`heldout_lexnames` (config.task.heldout_lexnames, a regex searched in each synset's
lexicographer file name, e.g. `^verb\.`) takes the matching synsets out of every split; their
test-split examples become the `heldout` set, which config.task.extra_eval can score as
out-of-distribution data (`NAME=wordnet_relation:heldout`).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from lmreuse.data.corpus import wordnet
from lmreuse.data.sources.base import SPLITS, TaskData
from lmreuse.tasks import types

TASK_TYPE_OF = {
    "wordnet_supersense": "classification",
    "wordnet_relation": "classification",
    "wordnet_headword_qa": "extractive_qa",
    "wordnet_definition": "seq2seq",
}
NAMES = tuple(TASK_TYPE_OF)
RELATIONS = ("hypernym", "same_synset", "unrelated")
_DATASET_SEED = 20250101


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict, ...]:
  return tuple(wordnet.read_records())


@functools.lru_cache(maxsize=1)
def _glossed_records() -> tuple[dict, ...]:
  return tuple(r for r in _records() if r["gloss"])


def _headwords(record: dict) -> str:
  return ", ".join(lemma.replace("_", " ") for lemma in record["lemmas"])


def _supersense(records: list[dict], by_id: dict) -> list[dict]:
  return [{"text": r["gloss"], "label": r["lexname"]} for r in records if r["gloss"]]


def _relation(records: list[dict], by_id: dict) -> list[dict]:
  rng = np.random.default_rng(_DATASET_SEED)
  everyone = _glossed_records()
  out = []
  for r in records:
    hypernyms = [by_id[h] for h in r["hypernyms"] if h in by_id and by_id[h]["gloss"]]
    if not r["gloss"] or not hypernyms:
      continue
    label = RELATIONS[int(rng.integers(len(RELATIONS)))]
    if label == "same_synset":
      other = r
    elif label == "hypernym":
      other = hypernyms[int(rng.integers(len(hypernyms)))]
    else:
      other = everyone[int(rng.integers(len(everyone)))]
      while other["lexname"] == r["lexname"]:
        other = everyone[int(rng.integers(len(everyone)))]
    out.append({"text": _headwords(r), "text_pair": other["gloss"], "label": label})
  return out


def _is_word(ch: str) -> bool:
  return ch.isalnum() or ch == "_"  # what `re`'s \w matches in a str pattern


def _first_headword(sentence: str, lemmas: list[str]) -> tuple[int, int] | None:
  """(start, end) of what `re.search(r"\b(lemma|…)\b", sentence, re.IGNORECASE)` finds, the
  lemmas tried in order at the leftmost position, without compiling a pattern per synset (that
  took most of this task's load time)."""
  folded = sentence.lower()
  boundary = lambda i: (i > 0 and _is_word(sentence[i - 1])) != (
      i < len(sentence) and _is_word(sentence[i])
  )
  best = None
  for lemma in lemmas:
    start = folded.find(lemma)
    while start != -1 and (best is None or start < best[0]):
      end = start + len(lemma)
      if boundary(start) and boundary(end):
        best = (start, end)
        break
      start = folded.find(lemma, start + 1)
  return best


def _headword_qa(records: list[dict], by_id: dict) -> list[dict]:
  out = []
  for r in records:
    if not r["gloss"]:
      continue
    lemmas = sorted({lemma.replace("_", " ") for lemma in r["lemmas"]}, key=len, reverse=True)
    lemmas = [lemma.lower() for lemma in lemmas]
    for sentence in r["examples"]:
      span = _first_headword(sentence, lemmas)
      if span:
        out.append(
            {
                "id": r["id"],
                "question": r["gloss"],
                "context": sentence,
                "answers": [{"text": sentence[span[0] : span[1]], "start": span[0]}],
            }
        )
        break
  return out


def _definition(records: list[dict], by_id: dict) -> list[dict]:
  return [
      {"source": r["lemmas"][0].replace("_", " "), "target": r["gloss"]}
      for r in records
      if r["gloss"]
  ]


_BUILDERS = {
    "wordnet_supersense": _supersense,
    "wordnet_relation": _relation,
    "wordnet_headword_qa": _headword_qa,
    "wordnet_definition": _definition,
}


@functools.cache
def _examples(
    name: str, heldout_lexnames: str = ""
) -> tuple[dict[str, tuple[dict, ...]], tuple | None, tuple[dict, ...]]:
  """(each split's examples, the sorted label set or None, the held-out synsets' test examples),
  built once per process: they are a pure function of the corpus, and a study or a test session
  builds the same task many times. Tuples, so that no caller can change what the next one gets."""
  held = re.compile(heldout_lexnames).search if heldout_lexnames else lambda lexname: False
  by_id = {r["id"]: r for r in _records()}
  by_split = {split: [] for split in SPLITS}
  heldout = []
  for r in _records():
    if held(r["lexname"]):
      if r["split"] == "test":
        heldout.append(r)
    else:
      by_split[r["split"]].append(r)
  splits = {split: tuple(_BUILDERS[name](by_split[split], by_id)) for split in SPLITS}
  labels = None
  if types.get(TASK_TYPE_OF[name]).label_kind == "class":
    labels = tuple(sorted({e["label"] for e in splits["train"]}))
  return splits, labels, tuple(_BUILDERS[name](heldout, by_id))


def load(name: str, heldout_lexnames: str = "") -> TaskData:
  if name not in TASK_TYPE_OF:
    raise ValueError(
        f"config.task.name={name!r} is not a bundled WordNet task; choose one of " f"{NAMES}"
    )
  if heldout_lexnames:
    try:
      re.compile(heldout_lexnames)
    except re.error as e:
      raise ValueError(
          f"config.task.heldout_lexnames={heldout_lexnames!r} is not a regex: {e}"
      ) from e
  splits, labels, heldout = _examples(name, heldout_lexnames)
  for split, examples in splits.items():
    if not examples:
      raise ValueError(
          f"config.task.heldout_lexnames={heldout_lexnames!r} holds out every synset of "
          f"{name}'s {split} split"
      )
  where = f" without lexnames matching {heldout_lexnames!r}" if heldout_lexnames else ""
  origin = {split: f"{wordnet.DEFAULT_PATH} ({name}, {split} synsets{where})" for split in SPLITS}
  return TaskData(
      task_type=TASK_TYPE_OF[name],
      splits=dict(splits),
      labels=None if labels is None else list(labels),
      origin=origin,
      heldout=heldout if heldout_lexnames else None,
      heldout_origin=(
          f"{wordnet.DEFAULT_PATH} ({name}, test synsets with lexnames matching "
          f"{heldout_lexnames!r})"
          if heldout_lexnames
          else ""
      ),
  )
