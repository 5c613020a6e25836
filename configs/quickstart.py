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
  # ~4 minutes of pretraining on 2 cores: short rows (WordNet documents are short anyway).
  config.pretrain.update(dict(
      total_steps=2000, batch_size=64, eval_every=1000, checkpoint_every=1000,
      data=dict(seq_len=64), model=dict(max_len=64),
      optimizer=dict(learning_rate=3e-3, warmup_steps=200)))
  # 18 fine-tuning runs of 15-25 s: 4,000 training glosses (the low-resource regime in which
  # reuse matters), 600 steps, 1,000 validation and test glosses. The [CLS] pooler is the one
  # NSP pretrained (NSP negatives come from other lexicographer files, so it encodes topic);
  # with mean pooling the from-scratch model caught up with this briefly pretrained one.
  config.finetune.update(dict(
      total_steps=600, batch_size=32, learning_rate=1e-3, eval_every=200, max_len=48,
      task=dict(pooling="cls", max_train_examples=4000, max_eval_examples=1000)))
  return config
