"""Post-training quantization of a fine-tuned model, evaluated on its task's splits:

  python run.py --config=configs/compress.py:int8 --workdir=/tmp/ft_int8 \
      --config.init_from=/tmp/ft_supersense

Presets: int8 (int8 weights and activations), int8w (int8 weights only), int4w (int4 weights).
results.json holds the quantized `validation/...` and `test/...` metrics, the float reference's
(recomputed here, with the same code), and `model_bytes` of both.
"""

import ml_collections

PRESETS = {
    "int8": {"weights": "int8", "activations": "int8"},
    "int8w": {"weights": "int8", "activations": ""},
    "int4w": {"weights": "int4", "activations": ""},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "int8"
  if preset not in PRESETS:
    raise ValueError(f"configs/compress.py:{preset}: choose a preset from {sorted(PRESETS)}")
  config = ml_collections.ConfigDict()
  config.experiment = "compress"
  config.overwrite = False
  config.init_from = ""  # a finished fine-tuning workdir
  config.quantize = ml_collections.ConfigDict(PRESETS[preset])
  return config
