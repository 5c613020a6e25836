import itertools

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmreuse import objectives
from lmreuse.data import pipeline
from lmreuse.objectives import span_corruption

WORDS = [f"w{i}" for i in range(300)]
SEQ_LEN, BATCH = 32, 8


class FakeTokenizer:
  """Whitespace tokenizer over WORDS with the real tokenizer's special-id layout."""

  pad_id, unk_id, cls_id, sep_id, mask_id, eos_id = 0, 1, 2, 3, 4, 5
  sentinel_ids = tuple(range(6, 106))
  special_ids = np.arange(106)
  vocab_size = 106 + len(WORDS)
  _ids = {w: 106 + i for i, w in enumerate(WORDS)}

  def encode(self, text):
    return [self._ids.get(w, self.unk_id) for w in text.split()]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def make_docs(num_docs=120, seed=0, max_segments=5, max_words=9):
  rng = np.random.default_rng(seed)
  docs = []
  for d in range(num_docs):
    segments = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(2, max_words))))
        for _ in range(int(rng.integers(1, max_segments)))
    ]
    if d % 3 == 0:  # TFDS sources give bytes
      segments = [s.encode("utf-8") for s in segments]
    docs.append({"segments": segments})
  return docs


TOK = FakeTokenizer()
DOCS = make_docs()


def _doc_tokens(doc):
  return TOK.encode(" ".join(s.decode() if isinstance(s, bytes) else s for s in doc["segments"]))


def _ds(objective, *, docs=DOCS, train=True, seed=0, batch_size=BATCH, rows=None, **kw):
  """make_pretrain_dataset with configs/pretrain.py's config.objective defaults, except `kw`."""
  target_len = kw.pop("target_len", 0)
  objective_cfg = ml_collections.ConfigDict(
      dict(
          name=objective, nsp=False, mask_prob=0.15, noise_density=0.15, mean_noise_span_length=3.0
      )
  )
  objective_cfg.update(kw)
  data = ml_collections.ConfigDict(dict(seq_len=SEQ_LEN, target_len=target_len))
  return pipeline.make_pretrain_dataset(
      objective_cfg, data, docs, TOK, batch_size=batch_size, seed=seed, train=train, rows=rows
  )


def _take(ds_or_it, n):
  it = iter(ds_or_it)
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


CASES = [
    ("mlm", {}),
    ("mlm", {"nsp": True}),
    ("electra", {}),
    ("clm", {}),
    ("prefix_lm", {}),
    ("span_corruption", {}),
]


def test_every_registered_objective_is_a_case():
  assert sorted({name for name, _ in CASES}) == objectives.names()


def test_prefix_lm_batches_hold_one_document_per_row_and_its_prefix():
  batches = _take(_ds("prefix_lm"), 10)
  assert set(batches[0]) == {"inputs", "targets", "weights", "segment_ids", "positions", "prefix"}
  for b in batches:
    n_B, p_B = b["segment_ids"].sum(1), b["prefix"].sum(1)
    assert ((p_B >= 1) & (p_B < n_B)).all()
    assert (b["weights"].sum(1) == n_B - p_B).all()  # every token after the prefix, once
    assert not (b["prefix"] & (b["segment_ids"] == 0)).any()


def test_a_cycled_eval_split_gives_any_number_of_batches():
  """`cycle_eval` (a small text corpus's validation split): eval passes over its documents
  again and again, where one pass gives one batch fewer than asked."""
  docs = DOCS[: BATCH * 2]
  once = list(_ds("mlm", docs=docs, train=False))
  assert len(once) == 2
  objective = ml_collections.ConfigDict(dict(name="mlm", nsp=False, mask_prob=0.15))
  data = ml_collections.ConfigDict(dict(seq_len=SEQ_LEN, target_len=0))
  cycled = pipeline.make_pretrain_dataset(
      objective, data, docs, TOK, batch_size=BATCH, seed=0, train=False, cycle_eval=True
  )
  batches = _take(cycled, 5)
  np.testing.assert_array_equal(batches[0]["segment_ids"], batches[2]["segment_ids"])


def test_mlm_batch_layout_and_statistics():
  batches = _take(_ds("mlm"), 20)
  b = batches[0]
  assert set(b) == {
      "inputs",
      "token_types",
      "segment_ids",
      "positions",
      "mlm_targets",
      "mlm_weights",
  }
  for k, v in b.items():
    assert v.shape == (BATCH, SEQ_LEN)
    assert v.dtype == (np.float32 if k == "mlm_weights" else np.int32), k
  targets = np.concatenate([x["mlm_targets"] for x in batches])
  weights = np.concatenate([x["mlm_weights"] for x in batches])
  segment_ids = np.concatenate([x["segment_ids"] for x in batches])
  assert np.all(targets[:, 0] == TOK.cls_id)
  assert not np.any(weights[np.isin(targets, TOK.special_ids)])
  assert np.all(targets[segment_ids == 0] == TOK.pad_id)
  maskable = (targets >= 106).sum()
  assert abs(weights.sum() / maskable - 0.15) < 0.03
  assert np.all(np.concatenate([x["token_types"] for x in batches]) == 0)


def test_electra_rows_mask_85_percent_of_the_selected_tokens_and_keep_the_rest():
  """ELECTRA's masking: 15% selected, of which ~85% become [MASK] and the rest stay; never a
  random token (the generator supplies the replacements), never NSP pairs."""
  batches = _take(_ds("electra"), 30)
  assert "nsp_labels" not in batches[0]
  inputs, targets, weights = (
      np.concatenate([b[k] for b in batches]) for k in ("inputs", "mlm_targets", "mlm_weights")
  )
  selected = weights > 0
  assert abs(selected.sum() / (targets >= 106).sum() - 0.15) < 0.03
  masked = inputs[selected] == TOK.mask_id
  assert abs(masked.mean() - 0.85) < 0.04
  np.testing.assert_array_equal(inputs[selected][~masked], targets[selected][~masked])
  np.testing.assert_array_equal(inputs[~selected], targets[~selected])
  assert np.all(np.concatenate([b["token_types"] for b in batches]) == 0)


def test_mlm_nsp_labels_and_token_types():
  batches = _take(_ds("mlm", nsp=True), 40)
  labels = np.concatenate([x["nsp_labels"] for x in batches])
  assert labels.shape == (40 * BATCH,) and labels.dtype == np.int32
  assert abs(labels.mean() - 0.5) < 0.08
  b = batches[0]
  for row in range(BATCH):
    real = b["segment_ids"][row] == 1
    types = b["token_types"][row][real]
    assert types[0] == 0 and types[-1] == 1 and np.all(np.diff(types) >= 0)
    assert np.sum(b["mlm_targets"][row] == TOK.sep_id) == 2


def test_clm_packing_boundaries_and_positions():
  long_doc = {"segments": [" ".join(WORDS[:80])]}  # 80 tokens + EOS > 2 rows of 32
  batches = _take(_ds("clm", docs=[long_doc] + DOCS, train=False), 6)
  b = batches[0]
  assert set(b) == {"inputs", "targets", "weights", "segment_ids", "positions"}
  assert all(v.shape == (BATCH, SEQ_LEN) for v in b.values())
  assert b["weights"].dtype == np.float32
  docs_as_tokens = {tuple(_doc_tokens(d) + [TOK.eos_id]) for d in DOCS}
  found = 0
  for x in batches:
    for tokens, targets, weights, seg, pos in zip(
        x["inputs"], x["targets"], x["weights"], x["segment_ids"], x["positions"]
    ):
      for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
        np.testing.assert_array_equal(pos[idx], np.arange(idx.size))  # restart at 0
        assert np.all(weights[idx[:-1]] == 1) and weights[idx[-1]] == 0
        np.testing.assert_array_equal(targets[idx[:-1]], tokens[idx[1:]])
        found += tuple(tokens[idx]) in docs_as_tokens
      assert np.all(weights[seg == 0] == 0) and np.all(tokens[seg == 0] == TOK.pad_id)
  assert found > 20
  # The long document was cut into seq_len chunks: rows that are one 32-token segment.
  chunks = [
      row
      for x in batches
      for row, seg in zip(x["inputs"], x["segment_ids"])
      if np.all(seg == 1) and row[0] == 106
  ]
  assert chunks, "expected the long document's first chunk as a full row"


def test_span_corruption_batch_reconstructs_documents():
  tokens_length, target_len = span_corruption.random_spans_helper(SEQ_LEN)
  batches = _take(_ds("span_corruption", train=False), 5)
  b = batches[0]
  assert b["encoder_inputs"].shape == (BATCH, SEQ_LEN)
  assert b["decoder_targets"].shape == (BATCH, target_len)
  assert b["decoder_weights"].dtype == np.float32
  originals = {tuple(_doc_tokens(d)[:tokens_length]) for d in DOCS}
  sentinels = set(TOK.sentinel_ids)
  for x in batches:
    for row in range(BATCH):
      n = x["encoder_segment_ids"][row].sum()
      m = x["decoder_segment_ids"][row].sum()
      inputs, targets = x["encoder_inputs"][row][:n], x["decoder_targets"][row][:m]
      assert inputs[-1] == TOK.eos_id and targets[-1] == TOK.eos_id
      np.testing.assert_array_equal(x["decoder_inputs"][row][1:m], targets[:-1])
      assert x["decoder_inputs"][row][0] == TOK.pad_id
      np.testing.assert_array_equal(x["decoder_weights"][row], x["decoder_segment_ids"][row])
      np.testing.assert_array_equal(x["encoder_positions"][row][:n], np.arange(n))
      pieces, out = {}, []
      for t in targets[:-1]:
        if t in sentinels:
          key = t
          pieces[key] = []
        else:
          pieces[key].append(t)
      for t in inputs[:-1]:
        out.extend(pieces[t] if t in sentinels else [t])
      assert tuple(out) in originals


def test_explicit_target_len_and_errors():
  b = _take(_ds("span_corruption", target_len=20), 1)[0]
  assert b["decoder_targets"].shape == (BATCH, 20)
  with pytest.raises(ValueError, match="target_len"):
    _ds("span_corruption", target_len=3)
  with pytest.raises(ValueError, match="objective"):
    _ds("word2vec")
  with pytest.raises(ValueError, match=r"objective\.nsp=True only applies to objective='mlm'"):
    _ds("clm", nsp=True)
  with pytest.raises(ValueError, match="rows"):
    _ds("mlm", rows=[BATCH])


@pytest.mark.parametrize("objective,kw", CASES)
def test_deterministic_and_seed_dependent(objective, kw):
  _assert_same(_take(_ds(objective, **kw), 3), _take(_ds(objective, **kw), 3))
  a, b = _take(_ds(objective, **kw), 1)[0], _take(_ds(objective, seed=1, **kw), 1)[0]
  assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective,kw", CASES)
def test_eval_is_one_fixed_pass_and_train_repeats(objective, kw):
  ds = _ds(objective, train=False, **kw)
  first, second = list(ds), list(ds)
  assert 0 < len(first) <= len(DOCS) * 2 // BATCH
  _assert_same(first, second)
  assert len(_take(_ds(objective, **kw), 3 * len(first))) == 3 * len(first)


@pytest.mark.parametrize("objective,kw", CASES)
def test_iterator_state_restores_exactly(objective, kw):
  ds = _ds(objective, **kw)
  it = iter(ds)
  _take(it, 17)  # past one epoch (120 docs / 8) for mlm, mid packing round for clm
  state = it.get_state()
  expected = _take(it, 4)
  restored = iter(ds)
  restored.set_state(state)
  _assert_same(_take(restored, 4), expected)


def test_orbax_checkpoint_round_trip(tmp_path):
  ds = _ds("mlm", nsp=True)
  it = iter(ds)
  _take(it, 5)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    manager.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"step": np.array(5, np.int32)}),
            data=grain.checkpoint.CheckpointSave(it),
        ),
    )
    manager.wait_until_finished()
  expected = _take(it, 3)

  fresh = iter(ds)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"step": np.array(0, np.int32)}),
            data=grain.checkpoint.CheckpointRestore(fresh),
        ),
    )
  assert restored["data"] is fresh and int(restored["state"]["step"]) == 5
  _assert_same(_take(fresh, 3), expected)


class _Recording:
  """A source that records which documents were read."""

  def __init__(self, docs):
    self.docs, self.read = docs, set()

  def __len__(self):
    return len(self.docs)

  def __getitem__(self, index):
    self.read.add(int(index))
    return self.docs[index]


def test_mlm_processes_read_disjoint_documents_covering_the_source():
  def rows(process):
    source = _Recording(DOCS)
    ds = _ds(
        "mlm",
        docs=source,
        train=False,
        batch_size=6,
        mask_prob=0.0,
        rows=[2 * process, 2 * process + 1],
    )
    out = [tuple(t[s == 1][1:-1]) for b in ds for t, s in zip(b["mlm_targets"], b["segment_ids"])]
    return out, source.read

  shards = [rows(i) for i in range(3)]
  assert [len(out) for out, _ in shards] == [40, 40, 40]
  assert sorted(itertools.chain(*(out for out, _ in shards))) == sorted(
      tuple(_doc_tokens(d)) for d in DOCS
  )
  reads = [read for _, read in shards]
  assert all(len(r) == 40 for r in reads) and len(set().union(*reads)) == 120


@pytest.mark.parametrize("objective,kw", CASES)
def test_global_batches_do_not_depend_on_the_process_count(objective, kw):
  """Two processes' rows of each batch, side by side, are the one-process batch; so is their
  iterator state, which restores in either process count."""
  whole = iter(_ds(objective, **kw))
  halves = [
      iter(_ds(objective, rows=range(p * BATCH // 2, (p + 1) * BATCH // 2), **kw)) for p in range(2)
  ]
  for _ in range(3):
    parts = [next(h) for h in halves]
    _assert_same([{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}], [next(whole)])
  assert halves[0].get_state() == halves[1].get_state() == whole.get_state()
  resumed = iter(_ds(objective, rows=range(BATCH // 2), **kw))
  resumed.set_state(whole.get_state())
  _assert_same(_take(resumed, 1), [{k: v[: BATCH // 2] for k, v in next(whole).items()}])


@pytest.mark.parametrize("random_features", [True, False])
def test_task_processes_take_disjoint_rows_of_the_one_process_batches(random_features):
  """A fine-tuning batch split over 2 processes: each keeps its own rows, side by side they are
  the 1-process batch (augmentation draws included), and an epoch's rows cover every feature
  once. Examples give 1 or 2 features each, as windowed QA does."""

  def features(example, rng):
    noise = np.int32(rng.integers(1000)) if rng is not None else np.int32(0)
    return [
        {"example": np.int32(example["id"]), "window": np.int32(w), "noise": noise}
        for w in range(1 + example["id"] % 2)
    ]

  examples = [{"id": i} for i in range(30)]  # 45 features

  def batches(rows, count):
    ds = pipeline.make_task_dataset(
        examples, features, batch_size=6, seed=3, rows=rows, random_features=random_features
    )
    return list(itertools.islice(iter(ds), count))

  whole = batches(None, 15)  # two epochs of 45 features
  halves = [batches(range(3), 15), batches(range(3, 6), 15)]
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key], err_msg=key
      )
  first_epoch = [
      (int(e), int(w))
      for b in itertools.chain(*(h[:7] for h in halves))
      for e, w in zip(b["example"], b["window"])
  ]
  assert len(first_epoch) == 42 and len(set(first_epoch)) == 42  # 7 batches, no feature twice
  assert {(e, w) for e in range(30) for w in range(1 + e % 2)} >= set(first_epoch)
