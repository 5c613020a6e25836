"""A reuse study: pretraining objective × fine-tuning strategy × task × seed (× data fraction).

  python run.py --config=configs/study.py:tiny --workdir=workdirs/study
  # one cell per host (pretraining cells first; print every launch line with print_launch):
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.print_launch=True
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.only=3
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.only='*lora*'
  # tables and plots of whatever has finished:
  python run.py --config=configs/report.py --workdir=W

Every cell is an ordinary pretrain/finetune workdir under W/runs/<name>/; re-running the same
command skips finished cells and resumes unfinished ones. `pretrain` and `finetune` hold
overrides merged into each child's own config (configs/pretrain.py, configs/finetune.py).
"""

import ml_collections

from configs import common

PRESETS = {
    # name: (pretraining presets, tasks, strategies, seeds, data fractions)
    "tiny": (("bert",), ("wordnet_supersense",), ("full", "frozen", "lora"), (0, 1, 2), (1.0,)),
    "objectives": (("bert", "gpt", "t5"), ("wordnet_definition",), ("full", "lora"), (0, 1, 2),
                   (1.0,)),
    "low_resource": (("bert",), ("wordnet_supersense",), ("full", "lora", "adapters"),
                     (0, 1, 2), (0.01, 0.1, 1.0)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, {"preset": "tiny", "size": "tiny"})
  if args["preset"] not in PRESETS:
    raise ValueError(f"configs/study.py:{arg}: choose one of {sorted(PRESETS)}")
  pretrain, tasks, strategies, seeds, fractions = PRESETS[args["preset"]]

  config = ml_collections.ConfigDict()
  config.experiment = "study"
  config.overwrite = False
  config.study = ml_collections.ConfigDict(dict(
      name=args["preset"],
      size=args["size"],             # model size of every pretraining preset
      pretrain=pretrain,             # presets to pretrain: bert | gpt | t5
      from_scratch=True,             # also fine-tune each architecture from random weights
      checkpoints=(),                # existing models too: "minilm=hf:DIR", "mine=WORKDIR"
      tasks=tasks,
      strategies=strategies,         # names or combinations ("lora,llrd") from lmreuse.strategies
      seeds=seeds,
      train_fractions=fractions,     # fractions of the training set (low-resource curves)
      only="",                       # run one cell: its index or a glob over cell names
      print_launch=False,            # print one launch line per cell, run nothing
      report=True,                   # aggregate tables and plots when the grid is done
  ))
  # Overrides merged into every pretraining child (configs/pretrain.py keys).
  config.pretrain = ml_collections.ConfigDict(dict(total_steps=300, batch_size=32))
  # Overrides merged into every fine-tuning child (configs/finetune.py keys).
  config.finetune = ml_collections.ConfigDict(dict(
      total_steps=300, batch_size=32, learning_rate=3e-3, eval_every=100, max_len=48,
      task=dict(pooling="mean", max_eval_examples=1000),
  ))
  return config
