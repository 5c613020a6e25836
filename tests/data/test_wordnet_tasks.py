"""The bundled WordNet tasks: built once per process, and a held-out lexicographer-file group."""

import types

import pytest

from lmreuse.data import sources
from lmreuse.data.corpus import wordnet
from lmreuse.data.sources import wordnet_tasks


def glossed(split: str, pattern: str) -> int:
  return sum(
      1 for r in wordnet.read_records(split) if r["gloss"] and r["lexname"].startswith(pattern)
  )


def test_a_task_is_built_once_and_cannot_be_changed_by_a_caller():
  first, again = wordnet_tasks.load("wordnet_supersense"), wordnet_tasks.load("wordnet_supersense")
  assert first.splits is not again.splits and first.labels is not again.labels
  assert all(first.splits[s] is again.splits[s] for s in first.splits)  # the cached tuples
  assert all(isinstance(v, tuple) for v in first.splits.values()) and first.heldout is None


def test_held_out_lexnames_leave_every_split_and_form_the_heldout_set():
  full = wordnet_tasks.load("wordnet_supersense")
  data = wordnet_tasks.load("wordnet_supersense", r"^verb\.")
  for split, examples in data.splits.items():
    assert not any(e["label"].startswith("verb.") for e in examples), split
    assert len(full.splits[split]) - len(examples) == glossed(split, "verb."), split
  assert not any(label.startswith("verb.") for label in data.labels)
  assert len(data.heldout) == glossed("test", "verb.") > 100
  assert all(e["label"].startswith("verb.") for e in data.heldout)
  assert "lexnames matching '^verb\\\\.'" in data.heldout_origin
  relation = wordnet_tasks.load("wordnet_relation", r"^verb\.")
  assert relation.heldout and relation.labels == list(wordnet_tasks.RELATIONS)


def test_held_out_lexnames_errors_name_the_key():
  with pytest.raises(ValueError, match=r"config.task.heldout_lexnames='\(' is not a regex"):
    wordnet_tasks.load("wordnet_supersense", "(")
  with pytest.raises(ValueError, match=r"holds out every synset of wordnet_definition's train"):
    wordnet_tasks.load("wordnet_definition", ".")
  local = types.SimpleNamespace(name="local", type="classification", heldout_lexnames="^verb")
  with pytest.raises(ValueError, match=r"needs a bundled WordNet task .* not 'local'"):
    sources.load(local, seed=0)
