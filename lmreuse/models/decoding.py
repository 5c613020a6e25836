"""Greedy and beam-search generation on the KV cache, for decoder-only and encoder-decoder models.

Both search loops run one token per step under `lax.while_loop` and stop once every sequence is
finished. Beams are flattened into the batch ([B*K]) so the model and its cache never see a beam
axis; the cache is reordered by a gather on that axis. The beam search follows Flax's
examples/wmt/decode.py, as T5X does: log-prob scores, the top 2K candidates per step so that K can
finish at once, and finished hypotheses ranked with the GNMT length penalty ((5 + len) / 6)^alpha.
Functions are pure and jittable with the config and the keyword ints static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder, EncoderDecoder

Array = jax.Array
PAD_ID = 0
NEG_INF = -1.0e7  # minus infinity that stays finite under the sums of the search
# (ids_Nx1 fed at cache slot `index`, index, cache) -> (next-token logits_NxV, cache)
StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]


def generate_encoder_decoder(
    cfg: TransformerConfig,
    params: Any,
    enc_ids_BxS: Array,
    enc_segment_ids_BxS: Array,
    *,
    max_len: int,
    beam_size: int = 1,
    eos_id: int = 5,
    start_id: int = 0,
    length_penalty: float = 0.6,
) -> Array:
  """[B, max_len] int32 outputs of an `EncoderDecoder(cfg)`: EOS included, pad after it.

  The decoder starts from `start_id` at position 0, as in teacher-forced training.
  """
  _check_lengths(max_len, beam_size)
  if max_len > cfg.max_len and cfg.position in ("learned", "sinusoidal"):
    raise ValueError(f"max_len={max_len} exceeds the position table (cfg.max_len={cfg.max_len})")
  model = EncoderDecoder(cfg, decode=True)
  b = enc_ids_BxS.shape[0]
  n = b * beam_size
  encoded_BxSxD = model.apply(
      {"params": params}, enc_ids_BxS, segment_ids_BxS=enc_segment_ids_BxS, method="encode"
  )
  encoded_NxSxD = jnp.repeat(encoded_BxSxD, beam_size, axis=0)
  enc_segment_ids_NxS = jnp.repeat(enc_segment_ids_BxS, beam_size, axis=0)

  def decode(variables, ids_NxT, positions_NxT):
    return model.apply(
        variables,
        encoded_NxSxD,
        enc_segment_ids_NxS,
        ids_NxT,
        dec_segment_ids_BxT=jnp.ones_like(ids_NxT),
        dec_positions_BxT=positions_NxT,
        method="decode_logits",
        mutable=["cache"],
    )

  # One slot per fed token: the start token and every output but the last.
  dummy_NxL = jnp.zeros((n, max_len), jnp.int32)
  cache = decode({"params": params}, dummy_NxL, dummy_NxL)[1]["cache"]

  def step(ids_Nx1, index, cache):
    logits_Nx1xV, mutated = decode(
        {"params": params, "cache": cache}, ids_Nx1, jnp.full((n, 1), index, jnp.int32)
    )
    return logits_Nx1xV[:, 0], mutated["cache"]

  first_ids_B = jnp.full((b,), start_id, jnp.int32)
  return _search(
      step,
      first_ids_B,
      cache,
      length=max_len,
      beam_size=beam_size,
      eos_id=eos_id,
      length_penalty=length_penalty,
  )


def generate_decoder(
    cfg: TransformerConfig,
    params: Any,
    prompt_ids_BxP: Array,
    prompt_segment_ids_BxP: Array,
    *,
    max_new_tokens: int,
    beam_size: int = 1,
    eos_id: int = 5,
    length_penalty: float = 0.6,
) -> Array:
  """[B, max_new_tokens] int32 continuations of LEFT-padded prompts (segment id 0 on pads).

  Positions count from each prompt's first real token, so a padded prompt continues exactly as
  it would alone. All the prompt but its last token fills the cache in one call; the search loop
  then feeds that last (always real) token first, like the encoder-decoder's start token.
  """
  _check_lengths(max_new_tokens, beam_size)
  b, p = prompt_ids_BxP.shape
  if p + max_new_tokens > cfg.max_len:
    raise ValueError(
        f"prompt length {p} + max_new_tokens={max_new_tokens} exceeds " f"cfg.max_len={cfg.max_len}"
    )
  model = Decoder(cfg, decode=True)
  num_pads_B = p - jnp.sum(prompt_segment_ids_BxP > 0, axis=1)
  positions_BxP = jnp.maximum(jnp.arange(p)[None, :] - num_pads_B[:, None], 0).astype(jnp.int32)

  dummy_BxL = jnp.zeros((b, p - 1 + max_new_tokens), jnp.int32)
  cache = model.apply({"params": params}, dummy_BxL, mutable=["cache"])[1]["cache"]
  if p > 1:
    cache = model.apply(
        {"params": params, "cache": cache},
        prompt_ids_BxP[:, :-1],
        segment_ids_BxL=prompt_segment_ids_BxP[:, :-1],
        positions_BxL=positions_BxP[:, :-1],
        # A prefix LM reads the prompt but its last token bidirectionally, as it was trained.
        prefix_BxL=prompt_segment_ids_BxP[:, :-1] > 0 if cfg.prefix_lm else None,
        mutable=["cache"],
    )[1]["cache"]
  cache = jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0), cache)
  first_position_N = jnp.repeat(positions_BxP[:, -1], beam_size)

  def step(ids_Nx1, index, cache):
    positions_Nx1 = (first_position_N + index)[:, None]
    (logits_Nx1xV, _), mutated = model.apply(
        {"params": params, "cache": cache}, ids_Nx1, positions_BxL=positions_Nx1, mutable=["cache"]
    )
    return logits_Nx1xV[:, 0], mutated["cache"]

  return _search(
      step,
      prompt_ids_BxP[:, -1].astype(jnp.int32),
      cache,
      length=max_new_tokens,
      beam_size=beam_size,
      eos_id=eos_id,
      length_penalty=length_penalty,
  )


def _check_lengths(length: int, beam_size: int) -> None:
  if length < 1:
    raise ValueError(f"the output length must be positive, got {length}")
  if beam_size < 1:
    raise ValueError(f"beam_size must be positive, got {beam_size}")


def _search(
    step: StepFn,
    first_ids_B: Array,
    cache: Any,
    *,
    length: int,
    beam_size: int,
    eos_id: int,
    length_penalty: float,
) -> Array:
  """beam_size=1 is greedy search: a one-beam search would also keep earlier EOS candidates."""
  if beam_size == 1:
    return greedy_search(step, first_ids_B, cache, length=length, eos_id=eos_id)
  return beam_search(
      step,
      first_ids_B,
      cache,
      length=length,
      beam_size=beam_size,
      eos_id=eos_id,
      alpha=length_penalty,
  )


def greedy_search(
    step: StepFn, first_ids_B: Array, cache: Any, *, length: int, eos_id: int
) -> Array:
  """[B, length] argmax tokens after `first_ids_B`, pad after EOS."""
  b = first_ids_B.shape[0]
  seqs_BxL1 = jnp.zeros((b, length + 1), jnp.int32).at[:, 0].set(first_ids_B)

  def cond(state):
    index, _, done_B, _ = state
    return (index < length) & ~jnp.all(done_B)

  def body(state):
    index, seqs_BxL1, done_B, cache = state
    ids_Bx1 = jax.lax.dynamic_slice_in_dim(seqs_BxL1, index, 1, axis=1)
    logits_BxV, cache = step(ids_Bx1, index, cache)
    next_B = jnp.where(done_B, PAD_ID, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))
    seqs_BxL1 = jax.lax.dynamic_update_slice_in_dim(seqs_BxL1, next_B[:, None], index + 1, axis=1)
    return index + 1, seqs_BxL1, done_B | (next_B == eos_id), cache

  init = (jnp.array(0, jnp.int32), seqs_BxL1, jnp.zeros((b,), jnp.bool_), cache)
  return jax.lax.while_loop(cond, body, init)[1][:, 1:]


class BeamState(NamedTuple):
  """The beam search loop's carry; sequences hold the first fed token at index 0."""

  index: Array  # cache slot of the token fed next
  live_logprobs_BxK: Array  # sorted, best first
  live_seqs_BxKxL1: Array
  finished_scores_BxK: Array  # length-penalised; sorted, best first
  finished_seqs_BxKxL1: Array
  finished_flags_BxK: Array  # False on slots that hold no finished hypothesis yet
  cache: Any  # rows are the [B*K] flattened beams


def beam_search(
    step: StepFn,
    first_ids_B: Array,
    cache: Any,
    *,
    length: int,
    beam_size: int,
    eos_id: int,
    alpha: float,
) -> Array:
  """[B, length] best finished hypothesis, pad after EOS; `cache` rows are [B*K] beams.

  Hypotheses that reach `length` without EOS count as finished there (truncated), so the search
  always returns a scored, finished hypothesis.
  """

  def body(s: BeamState) -> BeamState:
    c = _expand(step, s, length=length, eos_id=eos_id)
    live_logprobs_BxK, live_seqs_BxKxL1, rows_N = _next_live(c, beam_size)
    scores_BxK, seqs_BxKxL1, flags_BxK = _next_finished(s, c, _length_penalty(s.index + 1, alpha))
    return BeamState(
        index=s.index + 1,
        live_logprobs_BxK=live_logprobs_BxK,
        live_seqs_BxKxL1=live_seqs_BxKxL1,
        finished_scores_BxK=scores_BxK,
        finished_seqs_BxKxL1=seqs_BxKxL1,
        finished_flags_BxK=flags_BxK,
        cache=jax.tree.map(lambda x: x if x.ndim == 0 else x[rows_N], c.cache),
    )

  return jax.lax.while_loop(
      lambda s: _searching(s, length=length, alpha=alpha),
      body,
      _initial_state(first_ids_B, cache, length=length, beam_size=beam_size),
  ).finished_seqs_BxKxL1[:, 0, 1:]


class _Candidates(NamedTuple):
  """One step's 2K best extensions of the live beams of each row."""

  logprobs_Bx2K: Array
  parents_Bx2K: Array  # the live beam each extends
  seqs_Bx2KxL1: Array
  ends_Bx2K: Array  # EOS, or the last position: finished here
  cache: Any  # after the step, still in the parents' [B*K] order


def _length_penalty(num_tokens: Array | int, alpha: float) -> Array:
  """GNMT's ((5 + len) / 6)^alpha."""
  return ((5.0 + num_tokens) / 6.0) ** alpha


def _take(x_BxKx: Array, index_BxM: Array) -> Array:
  """[B, K, ...] -> [B, M, ...]: each row's entries at its own indices."""
  return x_BxKx[jnp.arange(x_BxKx.shape[0])[:, None], index_BxM]


def _initial_state(first_ids_B: Array, cache: Any, *, length: int, beam_size: int) -> BeamState:
  b, k = first_ids_B.shape[0], beam_size
  seqs_BxKxL1 = jnp.zeros((b, k, length + 1), jnp.int32).at[:, :, 0].set(first_ids_B[:, None])
  # Identical beams at the start: only the first may expand, or it would fill the beam K times.
  live_logprobs_BxK = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  return BeamState(
      index=jnp.array(0, jnp.int32),
      live_logprobs_BxK=live_logprobs_BxK,
      live_seqs_BxKxL1=seqs_BxKxL1,
      finished_scores_BxK=jnp.full((b, k), NEG_INF, jnp.float32),
      finished_seqs_BxKxL1=seqs_BxKxL1,
      finished_flags_BxK=jnp.zeros((b, k), jnp.bool_),
      cache=cache,
  )


def _searching(s: BeamState, *, length: int, alpha: float) -> Array:
  """False once every row has K finished hypotheses that no live beam can beat."""
  # Log-probs only fall, so a live beam can at best keep its score at the longest length.
  best_live_B = s.live_logprobs_BxK[:, 0] / _length_penalty(length, alpha)
  settled_B = jnp.all(s.finished_flags_BxK, axis=1) & (
      jnp.min(s.finished_scores_BxK, axis=1) > best_live_B
  )
  return (s.index < length) & ~jnp.all(settled_B)


def _expand(step: StepFn, s: BeamState, *, length: int, eos_id: int) -> _Candidates:
  """Runs the model one token on every live beam; the 2K best (beam, token) extensions."""
  b, k = s.live_logprobs_BxK.shape
  ids_Nx1 = jax.lax.dynamic_slice_in_dim(s.live_seqs_BxKxL1, s.index, 1, axis=2)
  logits_NxV, cache = step(ids_Nx1.reshape(b * k, 1), s.index, s.cache)
  log_probs_BxKxV = (
      jax.nn.log_softmax(logits_NxV.astype(jnp.float32)).reshape(b, k, -1)
      + s.live_logprobs_BxK[:, :, None]
  )
  v = log_probs_BxKxV.shape[-1]
  # 2K candidates: even if K of them end here, K others carry on.
  logprobs_Bx2K, flat_Bx2K = jax.lax.top_k(log_probs_BxKxV.reshape(b, k * v), 2 * k)
  parents_Bx2K = flat_Bx2K // v
  tokens_Bx2K = (flat_Bx2K % v).astype(jnp.int32)
  seqs_Bx2KxL1 = jax.lax.dynamic_update_slice_in_dim(
      _take(s.live_seqs_BxKxL1, parents_Bx2K), tokens_Bx2K[:, :, None], s.index + 1, axis=2
  )
  ends_Bx2K = (tokens_Bx2K == eos_id) | (s.index + 1 == length)
  return _Candidates(logprobs_Bx2K, parents_Bx2K, seqs_Bx2KxL1, ends_Bx2K, cache)


def _next_live(c: _Candidates, beam_size: int) -> tuple[Array, Array, Array]:
  """The K best candidates that did not end: log-probs, sequences, and their cache rows [B*K]."""
  live_logprobs_BxK, keep_BxK = jax.lax.top_k(
      jnp.where(c.ends_Bx2K, NEG_INF, c.logprobs_Bx2K), beam_size
  )
  b = keep_BxK.shape[0]
  rows_N = (jnp.arange(b)[:, None] * beam_size + _take(c.parents_Bx2K, keep_BxK)).reshape(-1)
  return live_logprobs_BxK, _take(c.seqs_Bx2KxL1, keep_BxK), rows_N


def _next_finished(s: BeamState, c: _Candidates, penalty: Array) -> tuple[Array, Array, Array]:
  """The K best of the finished hypotheses and the candidates that end here (length-penalised):
  scores, sequences, flags."""
  k = s.finished_scores_BxK.shape[1]
  cand_scores_Bx2K = jnp.where(c.ends_Bx2K, c.logprobs_Bx2K / penalty, NEG_INF)
  finished_scores_BxK, best_BxK = jax.lax.top_k(
      jnp.concatenate([s.finished_scores_BxK, cand_scores_Bx2K], axis=1), k
  )
  seqs_BxKxL1 = _take(jnp.concatenate([s.finished_seqs_BxKxL1, c.seqs_Bx2KxL1], axis=1), best_BxK)
  flags_BxK = _take(jnp.concatenate([s.finished_flags_BxK, c.ends_Bx2K], axis=1), best_BxK)
  return finished_scores_BxK, seqs_BxKxL1, flags_BxK
