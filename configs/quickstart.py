"""The quickstart: the whole pipeline on 2 CPU cores in under 15 minutes.

  python run.py --config=configs/quickstart.py --workdir=workdirs/quickstart

Trains a SentencePiece tokenizer, pretrains a tiny BERT (MLM + NSP) on the bundled WordNet
corpus, fine-tunes wordnet_supersense (gloss → 45 lexicographer classes) from that checkpoint
and from scratch under full fine-tuning, a frozen backbone and LoRA with 3 seeds each, then writes
results.md / results.csv / results.tex and plots/ into the workdir.
"""

import ml_collections

from configs import study


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = study.get_config("tiny")
  config.study.name = "quickstart"
  return config
