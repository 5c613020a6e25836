"""Model FLOPs per token and a machine's attainable matmul peak: the two halves of MFU, shared by
benchmarks/train_throughput.py and benchmarks/mfu.py."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lmreuse.models.config import TransformerConfig


def flops_per_token(
    cfg: TransformerConfig, seq_len: int, head_transform: bool = True, predicted: float = 1.0
) -> tuple[float, int]:
  """PaLM (Chowdhery et al. 2022, app. B): 6N + 12·L·d·T; returns it and N.

  N counts the matmul weights each token goes through: attention and MLP kernels, then the MLM
  head's transform (`head_transform`: BERT's, not GPT's) and the tied output projection at the
  share of positions that are `predicted` (1: every position, as HF's MLM head computes; lmreuse
  gathers MLM's 15% first); embedding lookups are gathers, not matmuls.
  """
  d, h = cfg.d_model, cfg.dim_per_head
  attention = d * (cfg.num_heads + 2 * cfg.kv_heads) * h + cfg.num_heads * h * d
  mlp = (3 if cfg.activation in ("swiglu", "geglu") else 2) * d * cfg.d_ff
  head = (d * d if head_transform else 0) + cfg.vocab_size * d
  n = cfg.num_layers * (attention + mlp) + round(head * predicted)
  return 6 * n + 12 * cfg.num_layers * cfg.num_heads * h * seq_len, n


def measure_peak(n: int, reps: int, dtype: jnp.dtype = jnp.float32) -> float:
  """Best FLOPs/s of one jitted n×n matmul in `dtype`: the attainable peak of this machine now."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best
