"""Task types on the host side: input layouts, label alignment, span decoding, augmentation."""

import numpy as np
import pytest

from configs import finetune as finetune_config
from lmreuse.data import augment
from lmreuse.data.tokenizer import load_tokenizer
from lmreuse.models.config import TransformerConfig
from lmreuse.tasks import build, encoding
from lmreuse.tasks.base import TaskContext
from lmreuse.tasks.extractive_qa import windows


@pytest.fixture(scope="module")
def tok(tokenizer_path):
  return load_tokenizer(tokenizer_path)


def context(tok, architecture="encoder", labels=None, max_len=32, prefix_lm=False, **task):
  config = finetune_config.get_config().task
  config.update(task)
  cfg = TransformerConfig(
      architecture=architecture, vocab_size=tok.vocab_size, max_len=64, prefix_lm=prefix_lm
  )
  return TaskContext(model_cfg=cfg, tokenizer=tok, task=config, labels=labels, max_len=max_len)


def test_pair_layouts_per_architecture(tok):
  a, b = [10, 11, 12], [20, 21]
  enc = encoding.encode_pair(tok, "encoder", a, b, 8)
  assert enc["inputs"].tolist() == [tok.cls_id, 10, 11, 12, tok.sep_id, 20, 21, tok.sep_id]
  assert enc["token_types"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  dec = encoding.encode_pair(tok, "decoder", a, b, 8)
  assert dec["inputs"].tolist() == [10, 11, 12, tok.sep_id, 20, 21, tok.eos_id, 0]
  assert dec["segment_ids"].tolist() == [1] * 7 + [0]
  # Longest-first truncation: the longer text loses its tail first.
  assert encoding.truncate_pair([1, 2, 3, 4], [5, 6], 4) == ([1, 2], [5, 6])


def test_pooling_last_takes_the_last_real_token():
  hidden = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)
  segments = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  assert encoding.pool(hidden, segments, "last")[:, 0].tolist() == [1.0, 7.0]
  assert encoding.pool(hidden, segments, "mean")[:, 0].tolist() == [0.5, 5.5]
  with pytest.raises(ValueError, match=r"config.task.pooling='cls'"):
    encoding.resolve_pooling("cls", "decoder")


def test_tagging_labels_the_first_subword_and_pads_cut_words_with_o(tok):
  task = build("tagging", context(tok, labels=["B-X", "I-X", "O"], max_len=16))
  words = ["unbelievably", "a", "Dog", "barked", "at", "the", "moon", "tonight"]
  tags = ["O", "O", "B-X", "O", "O", "O", "B-X", "I-X"]
  (feature,) = task.features({"tokens": words, "tags": tags}, None)
  first = feature.meta
  pieces = [len(p) for p in tok.encode_batch(words)]
  assert first[0] == 1 and first[1] == 1 + pieces[0]  # after [CLS], then after word 0's pieces
  assert feature.arrays["label_weights"].sum() == len(first) < len(words)  # the row is full
  assert feature.arrays["labels"][first].tolist() == [task.tag_ids[t] for t in tags[: len(first)]]
  outputs = {"tag_ids": feature.arrays["labels"][None]}
  (prediction,) = task.postprocess([{"tokens": words, "tags": tags}], np.zeros(1), [first], outputs)
  assert prediction == tags[: len(first)] + ["O"] * (len(words) - len(first))


def test_windows_cover_the_context():
  assert windows(10, 4, 3) == [0, 3, 6]
  assert windows(4, 4, 2) == [0]


def test_qa_windows_target_the_answer_and_decoding_returns_its_exact_text(tok):
  task = build("extractive_qa", context(tok, max_len=24, max_query_len=6, doc_stride=4))
  sentence = "they are presently attempting to gain a foothold in the Russian market today"
  start = sentence.index("foothold")
  example = {
      "id": "x",
      "question": "an initial accomplishment",
      "context": sentence,
      "answers": [{"text": "foothold", "start": start}],
  }
  features = task.features(example, None)
  assert len(features) > 1  # the context needs several windows
  inside = [i for i, f in enumerate(features) if f.arrays["start"] > 0]
  assert inside
  for f in (features[i] for i in inside):
    s, e = int(f.arrays["start"]), int(f.arrays["end"])
    assert sentence[f.meta[s][0] : f.meta[e][1]].strip() == "foothold"
  # Logits that point at the answer in one window and at padding elsewhere decode to it.
  outputs = {
      "start_logits": np.full((len(features), 24), -5.0),
      "end_logits": np.full((len(features), 24), -5.0),
  }
  best = inside[0]
  outputs["start_logits"][best, features[best].arrays["start"]] = 5.0
  outputs["end_logits"][best, features[best].arrays["end"]] = 5.0
  (answer,) = task.postprocess(
      [example], np.zeros(len(features), int), [f.meta for f in features], outputs
  )
  assert answer == "foothold"


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_seq2seq_trains_only_on_the_target(tok, architecture):
  task = build("seq2seq", context(tok, architecture, max_len=8, max_target_len=6))
  (feature,) = task.features({"source": "dog", "target": "a domestic animal"}, None)
  arrays = feature.arrays
  target = tok.encode("a domestic animal")[:5] + [tok.eos_id]
  scored = arrays["targets"][arrays["target_weights"] > 0].tolist()
  assert scored == target
  if architecture == "encoder_decoder":
    assert arrays["decoder_inputs"][: len(target)].tolist() == [tok.pad_id] + target[:-1]
  else:  # the prompt is left-padded for generation and ends with [SEP]
    assert arrays["prompt"][-1] == tok.sep_id and arrays["prompt_segment_ids"][0] == 0
    assert "prefix" not in arrays


def test_a_prefix_lms_seq2seq_row_has_its_source_as_prefix(tok):
  """Bidirectional over the source, causal from [SEP] on: as generation fills the cache with
  the source and then feeds [SEP]."""
  task = build("seq2seq", context(tok, "decoder", max_len=8, max_target_len=6, prefix_lm=True))
  (feature,) = task.features({"source": "big dog", "target": "a domestic animal"}, None)
  arrays, source = feature.arrays, tok.encode("big dog")
  assert arrays["prefix"].tolist() == [1] * len(source) + [0] * (14 - len(source))
  assert arrays["inputs"][len(source)] == tok.sep_id


def test_augmentation_is_seeded_and_uses_wordnet_synonyms():
  text = "the big dog barked at a small cat"
  aug = augment.Augmenter(synonym_replacement=0.9)
  one, two = (aug(text, np.random.default_rng(3)) for _ in range(2))
  assert one == two != text
  for word in text.split():  # one word at a time: a synonym may be several words
    new = aug(word, np.random.default_rng(0))
    assert new == word or new in augment.synonyms()[word]
  assert "at" not in augment.synonyms() and "dog" in augment.synonyms()
  dropped = augment.Augmenter(token_dropout=0.5)(text, np.random.default_rng(0)).split()
  assert 0 < len(dropped) < len(text.split()) and set(dropped) <= set(text.split())
  swapped = augment.Augmenter(random_swap=0.5)(text, np.random.default_rng(0)).split()
  assert sorted(swapped) == sorted(text.split()) and swapped != text.split()
  assert augment.from_config(augment.config_defaults()) is None
