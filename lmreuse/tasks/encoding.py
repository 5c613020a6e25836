"""Text → fixed-length model inputs, and backbone hidden states, for every architecture.

Encoders (BERT) read `[CLS] a [SEP] b [SEP]` with sentence A/B token types, as in pretraining.
Decoders (GPT) read `a [SEP] b [EOS]` and pool the last real token, the only one that has seen
the whole input (a prefix LM reads all of it as its bidirectional prefix). Encoder-decoders (T5)
read `a [SEP] b [EOS]` in the encoder and mean-pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.data.tokenizer import Tokenizer
from lmreuse.models.config import TransformerConfig
from lmreuse.models.heads import Pooler
from lmreuse.models.transformer import Decoder, Encoder, EncoderDecoder

POOLINGS = ("auto", "cls", "mean", "last")
DEFAULT_POOLING = {"encoder": "cls", "decoder": "last", "encoder_decoder": "mean"}


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Longest-first truncation from the end, as BERT's `_truncate_seq_pair`."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    (a if len(a) >= len(b) else b).pop()
  return a, b


def pad_row(
    ids: Sequence[int], max_len: int, token_types: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
  """inputs / segment_ids (1 = real, 0 = padding) / positions / token_types, padded."""
  n = len(ids)
  if n > max_len:
    raise ValueError(f"row of {n} tokens exceeds max_len={max_len}")
  row = {
      "inputs": np.zeros(max_len, np.int32),
      "segment_ids": np.zeros(max_len, np.int32),
      "positions": np.zeros(max_len, np.int32),
      "token_types": np.zeros(max_len, np.int32),
  }
  row["inputs"][:n] = ids
  row["segment_ids"][:n] = 1
  row["positions"][:n] = np.arange(n)
  if token_types is not None:
    row["token_types"][:n] = token_types
  return row


def encode_pair(
    tok: Tokenizer, architecture: str, a: list[int], b: list[int] | None, max_len: int
) -> dict[str, np.ndarray]:
  """One (pair of) tokenized text(s) as a padded row in the architecture's input format."""
  b = b or []
  has_pair = bool(b)
  if architecture == "encoder":
    a, b = truncate_pair(a, b, max_len - (3 if has_pair else 2))
    ids = [tok.cls_id, *a, tok.sep_id] + ([*b, tok.sep_id] if has_pair else [])
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1 if has_pair else 0)
    return pad_row(ids, max_len, types)
  a, b = truncate_pair(a, b, max_len - (2 if has_pair else 1))
  ids = [*a] + ([tok.sep_id, *b] if has_pair else []) + [tok.eos_id]
  return pad_row(ids, max_len)


def make_backbone(cfg: TransformerConfig) -> nn.Module:
  return {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}[
      cfg.architecture
  ](cfg)


def hidden_states(
    backbone: nn.Module, cfg: TransformerConfig, batch: dict[str, jax.Array], deterministic: bool
) -> jax.Array:
  """[B, L, D] final hidden states of the input row (the encoder side of an encoder-decoder)."""
  kwargs = dict(
      segment_ids_BxL=batch["segment_ids"],
      positions_BxL=batch["positions"],
      deterministic=deterministic,
  )
  if cfg.architecture == "encoder":
    return backbone(batch["inputs"], token_types_BxL=batch["token_types"], **kwargs)
  if cfg.architecture == "decoder":  # a prefix LM reads the whole input bidirectionally
    prefix = batch["segment_ids"] > 0 if cfg.prefix_lm else None
    return backbone(batch["inputs"], prefix_BxL=prefix, **kwargs)[1]  # XLA drops the logits
  return backbone.encode(
      batch["inputs"],
      segment_ids_BxS=batch["segment_ids"],
      positions_BxS=batch["positions"],
      deterministic=deterministic,
  )


def resolve_pooling(pooling: str, architecture: str) -> str:
  if pooling not in POOLINGS:
    raise ValueError(f"config.task.pooling={pooling!r} is not one of {POOLINGS}")
  pooling = DEFAULT_POOLING[architecture] if pooling == "auto" else pooling
  if pooling == "cls" and architecture != "encoder":
    raise ValueError(
        f"config.task.pooling='cls' needs an encoder ([CLS] first); a "
        f"{architecture} sees the whole input only at its last token: use 'last' "
        "or 'mean'"
    )
  return pooling


def pool(
    hidden_BxLxD: jax.Array, segment_ids_BxL: jax.Array, pooling: str, pooler: Pooler | None = None
) -> jax.Array:
  """[B, L, D] → [B, D]: BERT's [CLS] pooler (a top-level `pooler` module, so NSP pretraining's
  pooler loads into it), a padding-aware mean, or the last real token."""
  if pooling == "cls":
    return pooler(hidden_BxLxD)
  real_BxL = (segment_ids_BxL > 0).astype(hidden_BxLxD.dtype)
  if pooling == "mean":
    total_BxD = jnp.einsum("bld,bl->bd", hidden_BxLxD, real_BxL)
    return total_BxD / jnp.maximum(real_BxL.sum(axis=1, keepdims=True), 1.0)
  last_B = jnp.maximum(real_BxL.sum(axis=1).astype(jnp.int32) - 1, 0)
  return jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
