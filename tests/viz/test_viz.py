"""Attention probabilities are the ones the layer used; the figures get written."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import finetune
from lmreuse.models.config import TransformerConfig
from lmreuse.models.layers import Attention, attention_mask
from lmreuse.viz import attention, representations

B, T, D = 2, 8, 32
REAL = 5  # row 1 has REAL tokens, then padding


def tiny(**overrides) -> TransformerConfig:
  base = dict(
      vocab_size=97, d_model=D, num_heads=4, d_ff=64, num_layers=1, max_len=T, dropout_rate=0.0
  )
  return TransformerConfig(**{**base, **overrides})


def inputs(cfg: TransformerConfig) -> tuple[jax.Array, dict]:
  x_BxTxD = jax.random.normal(jax.random.key(0), (B, T, D))
  segments_BxT = jnp.ones((B, T), jnp.int32).at[1, REAL:].set(0)
  positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
  bias_BxNxTxT = jax.random.normal(jax.random.key(1), (B, cfg.num_heads, T, T))
  kwargs = dict(
      mask=attention_mask(segments_BxT, segments_BxT, True, positions_BxT, positions_BxT),
      bias_BxNxTxS=bias_BxNxTxT,
  )
  return x_BxTxD, kwargs


def output_from_probs(params: dict, x_BxTxD: jax.Array, probs_BxNxTxS: jax.Array) -> jax.Array:
  """The layer's output rebuilt from the probabilities and its value/output projections."""
  v_BxSxKxH = jnp.einsum("bsd,dkh->bskh", x_BxTxD, params["value"]["kernel"])
  v_BxSxKxH = v_BxSxKxH + params["value"]["bias"]
  if "prefix_value" in params:
    prefix_BxPxKxH = jnp.broadcast_to(params["prefix_value"], (B,) + params["prefix_value"].shape)
    v_BxSxKxH = jnp.concatenate([prefix_BxPxKxH, v_BxSxKxH], axis=1)
  groups = probs_BxNxTxS.shape[1] // v_BxSxKxH.shape[2]
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS, jnp.repeat(v_BxSxKxH, groups, axis=2))
  return jnp.einsum("btnh,nhd->btd", out_BxTxNxH, params["out"]["kernel"]) + params["out"]["bias"]


@pytest.mark.parametrize(
    "overrides", [dict(num_kv_heads=2), dict(prefix_length=3)], ids=["gqa", "prefix"]
)
def test_sown_probabilities_are_the_ones_attention_used(overrides):
  cfg = tiny(**overrides)
  layer = Attention(cfg, causal=True)
  x_BxTxD, kwargs = inputs(cfg)
  variables = nn.meta.unbox(layer.init(jax.random.key(2), x_BxTxD, **kwargs))
  out_BxTxD, state = layer.apply(variables, x_BxTxD, **kwargs, mutable=["intermediates"])
  (probs_BxNxTxS,) = state["intermediates"]["attention_probs"]
  p = cfg.prefix_length
  assert probs_BxNxTxS.shape == (B, cfg.num_heads, T, p + T)
  np.testing.assert_allclose(probs_BxNxTxS.sum(-1), 1.0, atol=1e-5)
  tokens_BxNxTxT = np.asarray(probs_BxNxTxS[..., p:])
  assert np.all(np.triu(tokens_BxNxTxT[0], k=1) == 0)  # causal
  assert np.all(tokens_BxNxTxT[1, :, :REAL, REAL:] == 0)  # padding keys, seen from real queries
  np.testing.assert_allclose(
      output_from_probs(variables["params"], x_BxTxD, probs_BxNxTxS), out_BxTxD, atol=1e-5
  )


def test_a_plain_call_computes_no_probabilities():
  cfg = tiny()
  layer = Attention(cfg, causal=True)
  x_BxTxD, kwargs = inputs(cfg)
  variables = layer.init(jax.random.key(2), x_BxTxD, **kwargs)
  plain = jax.make_jaxpr(lambda v: layer.apply(v, x_BxTxD, **kwargs))(variables)
  sown = jax.make_jaxpr(lambda v: layer.apply(v, x_BxTxD, **kwargs, mutable=["intermediates"]))(
      variables
  )
  assert str(plain).count("exp") < str(sown).count("exp")
  out_BxTxD, _ = layer.apply(variables, x_BxTxD, **kwargs, mutable=["intermediates"])
  np.testing.assert_array_equal(layer.apply(variables, x_BxTxD, **kwargs), out_BxTxD)


@pytest.fixture(scope="module")
def setup(finetune_config, tmp_path_factory):
  return finetune.build(finetune_config("bert"), str(tmp_path_factory.mktemp("viz")))


def mean_silhouette(features_NxD: np.ndarray, labels_N: np.ndarray) -> float:
  """Rousseeuw's silhouette, Euclidean in the full feature space: per point s = (b - a) /
  max(a, b), a = mean distance to the rest of its label, b = the least mean distance to another
  label's points; 0 for a point alone in its label."""
  x_NxD = features_NxD.astype(np.float64)
  distances_NxN = np.sqrt(np.square(x_NxD[:, None] - x_NxD[None]).sum(-1))
  scores = []
  for i, label in enumerate(labels_N):
    same_N = labels_N == label
    if same_N.sum() == 1:
      scores.append(0.0)
      continue
    a = distances_NxN[i, same_N].sum() / (same_N.sum() - 1)
    b = min(distances_NxN[i, labels_N == other].mean() for other in set(labels_N) - {label})
    scores.append((b - a) / max(a, b))
  return float(np.mean(scores))


def test_representation_plots_and_silhouettes(setup, tmp_path):
  eval_set = setup.eval_sets["validation"]
  params = setup.state.params
  moved = jax.tree.map(lambda x: 1.5 * x, params)  # stands in for fine-tuned parameters
  paths, silhouette = representations.write_representation_plots(
      str(tmp_path),
      setup.module,
      params,
      moved,
      eval_set,
      representations.feature_labels(eval_set),
      seed=0,
  )
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["pca_after.png", "pca_before.png", "tsne_after.png", "tsne_before.png"]
  assert all(os.path.getsize(p) > 0 for p in paths)
  labels = np.asarray([str(x) for x in representations.feature_labels(eval_set)])
  assert 2 <= len(set(labels)) < len(labels)
  expected = {
      stage: mean_silhouette(representations.pooled_features(setup.module, p, eval_set), labels)
      for stage, p in (("before", params), ("after", moved))
  }
  assert silhouette == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_silhouettes_of_features_built_to_separate(setup, tmp_path):
  """Each of two features repeated: a point's distance to its own copies is 0 and to the other
  feature's copies some d > 0, whatever the parameters make of them. Labelled by feature, every
  point has a = 0 and b = d, so s = (b - a) / max(a, b) = 1. Labelled across the copies
  (x y x y on f0 f0 f1 f1), every point has a = d (its one same-label point is the other
  feature) and b = (0 + d) / 2, so s = (d/2 - d) / d = -1/2."""
  eval_set = setup.eval_sets["validation"]
  params = setup.state.params
  moved = jax.tree.map(lambda x: 1.5 * x, params)
  for index, labels, expected in (
      ([0, 0, 0, 1, 1, 1], list("xxxyyy"), 1.0),
      ([0, 0, 1, 1], list("xyxy"), -0.5),
  ):
    built = dataclasses.replace(
        eval_set, features=[eval_set.features[i] for i in index], example_index=np.asarray(index)
    )
    _, silhouette = representations.write_representation_plots(
        str(tmp_path), setup.module, params, moved, built, labels, seed=0
    )
    assert silhouette == pytest.approx({"before": expected, "after": expected}, abs=1e-5)


def test_attention_maps_of_the_task_model(setup, tmp_path):
  row = setup.eval_sets["validation"].features[0].arrays
  batch_1 = {k: np.asarray(v)[None] for k, v in row.items()}
  maps = attention.attention_maps(setup.module, setup.state.params, batch_1)
  cfg, length = setup.model_cfg, row["inputs"].shape[0]
  assert list(maps) == [f"backbone/stack/layers_{i}/self_attention" for i in range(cfg.num_layers)]
  real = int(row["segment_ids"].sum())
  for probs_NxTxS in maps.values():
    assert probs_NxTxS.shape == (cfg.num_heads, length, length)
    np.testing.assert_allclose(probs_NxTxS.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs_NxTxS[:, :real, real:] == 0)
  tokens = [setup.tokenizer.id_to_piece(int(i)) for i in row["inputs"][:real]]
  path = attention.plot_attention(maps, tokens, str(tmp_path / "attention.png"))
  assert os.path.getsize(path) > 0


def test_projections_colour_by_label_only_where_there_are_labels():
  points_Nx2 = np.random.default_rng(0).normal(size=(12, 2))
  labelled = representations.projection_figure(points_Nx2, list("aaaaabbbbcdd"), "t", max_labels=2)
  legend = [text.get_text() for text in labelled.axes[0].get_legend().get_texts()]
  assert legend == ["a", "b", "other"]
  unlabelled = representations.projection_figure(points_Nx2, None, "t")
  assert unlabelled.axes[0].get_legend() is None and len(unlabelled.axes[0].collections) == 1


def test_qa_features_have_no_labels(setup, tmp_path):
  """QA examples carry answers, not labels: one colour and no silhouette, not a class '0'."""
  eval_set = setup.eval_sets["validation"]
  questions = [
      {"id": str(i), "question": "q", "context": "c"} for i in range(len(eval_set.examples))
  ]
  qa = dataclasses.replace(eval_set, examples=questions)
  assert representations.feature_labels(qa) is None
  params = setup.state.params
  paths, silhouette = representations.write_representation_plots(
      str(tmp_path), setup.module, params, params, qa, None, seed=0
  )
  assert len(paths) == 4 and silhouette == {}
