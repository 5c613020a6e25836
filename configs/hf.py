"""Hugging Face checkpoints in and out of lmreuse (lmreuse/interop/hf.py):

# HF directory -> lmreuse workdir (config.json, checkpoints/0/state, tokenizer/)
python run.py --config=configs/hf.py:import --config.source=PATH_TO_HF_DIR --workdir=W
# lmreuse workdir (pretraining or imported) -> HF directory transformers loads
python run.py --config=configs/hf.py:export --config.out_dir=OUT_DIR --workdir=W
"""

import ml_collections

DIRECTIONS = ("import", "export")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  direction = arg or "import"
  if direction not in DIRECTIONS:
    raise ValueError(f"configs/hf.py:{direction}: choose one of {DIRECTIONS}")
  return ml_collections.ConfigDict(
      dict(
          experiment="hf",
          direction=direction,
          source="",  # import: the Hugging Face model directory
          out_dir="",  # export: a new directory for config.json, model.safetensors, tokenizer files
      )
  )
