"""Aggregates a study workdir into results.csv/.md/.tex and plots/ (lmreuse/study/aggregate.py)."""

from __future__ import annotations

import ml_collections
from absl import logging

from lmreuse.study import aggregate


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  del config  # the study's own study.json says what to aggregate
  result = aggregate.report(workdir)
  logging.info("wrote %s and %s", ", ".join(result["tables"].values()), ", ".join(result["plots"]))
  return result
