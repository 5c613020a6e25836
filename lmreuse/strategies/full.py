"""Global fine-tuning: every parameter trains; the baseline the other strategies are read
against."""

from lmreuse.strategies import base


class Full(base.Strategy):
  name = "full"


STRATEGY = Full
