"""Converts a Hugging Face checkpoint into an lmreuse workdir, or a workdir back (configs/hf.py).

Fine-tuning can also read an HF directory directly: `--config.init_from=hf:DIR`.
"""

from __future__ import annotations

import ml_collections
from absl import logging

from lmreuse.interop import hf


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Returns the directory written: `workdir` on import, `config.out_dir` on export."""
  if config.direction == "import":
    if not config.source:
      raise ValueError("config.source is empty: set it to the Hugging Face model directory")
    written = hf.import_to_workdir(config.source, workdir)
  else:
    if not config.out_dir:
      raise ValueError("config.out_dir is empty: set it to a new directory for the HF export")
    hf.export_workdir(workdir, config.out_dir)
    written = config.out_dir
  logging.info("hf %s: wrote %s", config.direction, written)
  return written
