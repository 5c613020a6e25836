"""Houlsby adapters (Houlsby et al. 2019): bottleneck MLPs after every attention and FFN
sublayer, identity at init; the backbone is frozen, the adapters and the head train."""

from lmreuse.strategies import base


class Adapters(base.InsertedModules):
  name = "adapters"
  learning_rate_scale = 3.0
  size_key = "adapter_size"
  defaults = {"adapter_size": 64}


STRATEGY = Adapters
