"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every self-attention layer,
visible to every query; works with the KV cache, so it serves generation on every architecture."""

from lmreuse.strategies import base


class PrefixTuning(base.InsertedModules):
  name = "prefix_tuning"
  learning_rate_scale = 10.0
  size_key = "prefix_length"
  defaults = {"prefix_length": 16}


STRATEGY = PrefixTuning
