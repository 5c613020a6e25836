"""Fine-tune a pretrained (or freshly initialised) model on one downstream task.

  # from a pretraining workdir (model + tokenizer + weights come from it):
  python run.py --config=configs/finetune.py --workdir=/tmp/ft_supersense \
      --config.init_from=/tmp/bert_tiny --config.task.name=wordnet_supersense
  # the same architecture and tokenizer, random weights (the from-scratch baseline):
  python run.py --config=configs/finetune.py --workdir=/tmp/ft_scratch \
      --config.init_from=/tmp/bert_tiny --config.from_scratch=True
  # no pretraining workdir at all: model from the preset argument, tokenizer trained here:
  python run.py --config=configs/finetune.py:bert,size=tiny --workdir=/tmp/ft_fresh
  # continued pretraining on the task's own text first (task-adaptive), then fine-tuning:
  python run.py --config=configs/finetune.py --workdir=/tmp/ft_tapt \
      --config.init_from=/tmp/bert_tiny --config.adapt.steps=200
  # one backbone fine-tuned on several tasks at once, a head each (experiments/multitask.py):
  python run.py --config=configs/finetune.py --workdir=/tmp/ft_multi \
      --config.init_from=/tmp/bert_tiny --config.task.name=wordnet_supersense+wordnet_relation
  # your own files:
  python run.py --config=configs/finetune.py --workdir=/tmp/ft_local --config.init_from=W \
      --config.task.name=local --config.task.type=classification \
      --config.task.train_path=train.csv --config.task.test_path=test.csv

Task names: wordnet_supersense | wordnet_relation | wordnet_headword_qa | wordnet_definition
(bundled), glue/sst2 glue/mrpc glue/stsb glue/mnli super_glue/boolq imdb_reviews conll2003 squad
wmt14_translate/de-en cnn_dailymail (TFDS, prepared beforehand), local.
"""

import ml_collections

from configs import common
from lmreuse import strategies
from lmreuse.data.sources import local
from lmreuse.tasks import mixture, types as task_types


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, {"preset": "bert", "size": "tiny"})

  config = ml_collections.ConfigDict()
  config.experiment = "finetune"
  config.seed = 0
  # jax.random's implementation for the run's keys (init, dropout): threefry2x32 gives the same
  # run on any mesh and process count; rbg and unsafe_rbg draw faster, but their bits depend on
  # the sharding (lmreuse/train/trainer.py:prng_impl).
  config.prng_impl = "threefry2x32"
  config.overwrite = False
  config.init_from = ""  # pretraining workdir or checkpoint step dir; '' = from scratch
  config.from_scratch = False  # True: take init_from's architecture/tokenizer, not its weights
  config.init_trainable_from = ""  # a parameter-efficient run's workdir: its trained head and
  # strategy params go on top of init_from
  config.total_steps = 300
  config.batch_size = 32
  config.grad_accum_steps = 1
  config.learning_rate = 1e-4 if args["size"] != "tiny" else 1e-3
  config.log_every = 10
  config.eval_every = 100  # 0 = only at the end
  config.checkpoint_every = 100
  config.keep_checkpoints = 1  # latest checkpoints kept for resuming; the best is kept apart
  config.nonfinite = "abort"  # NaN/Inf loss: 'abort' (naming the step and last good checkpoint)
  # or 'skip' the update (counted in train/skipped_updates)
  config.max_nonfinite_skips = 10  # 'skip': this many skipped updates in a row abort the run
  # Input tokens (the source, for seq2seq); 0 = all the model embeds (init_from's model, else
  # config.model), less config.task.max_target_len where a decoder-only model writes the target
  # after the source in one row.
  config.max_len = 0
  config.dropout_rate = -1.0  # -1 = the pretrained model's own dropout rate
  config.label_smoothing = 0.0
  config.early_stopping = ml_collections.ConfigDict(
      dict(
          metric="",  # validation metric to select the best checkpoint by; '' = the task's headline
          mode="",  # max | min; '' = min for loss/mse, else max
          patience=0,  # evaluations without improvement before stopping; 0 = never stop early
      )
  )

  config.task = ml_collections.ConfigDict(
      dict(
          name="wordnet_supersense",
          type="",  # required for name=local; checked against named datasets
          tfds_dir="",  # where TFDS catalog datasets are prepared (array_record)
          train_fraction=1.0,  # seeded fraction of the training examples (low-resource runs)
          max_train_examples=0,  # 0 = all
          max_eval_examples=0,  # cap validation/test examples (smoke runs); 0 = all
          # Out-of-distribution sets, scored with the best checkpoint under their own names:
          # "NAME=FILE" or "NAME=DATASET:SPLIT" (lmreuse/data/sources/extra_eval.py).
          extra_eval=(),
          # Bundled WordNet tasks: a regex on lexicographer file names ("^verb\\."); matching
          # synsets leave every split, and NAME=<task>:heldout scores their test examples.
          heldout_lexnames="",
          **task_types.config_defaults(),  # keys single task types read: lmreuse/tasks/types.py
          **local.config_defaults(),  # name=local: files and their columns
          # name="a+b" fine-tunes one backbone on several tasks: members, mixing rates
          **mixture.config_defaults(),
      )
  )
  # How the pretrained model is reused: one of `strategies.names()` or a comma-separated
  # combination ("lora,llrd"); the other keys belong to individual strategies.
  config.strategy = strategies.config_defaults()
  # Continued pretraining before fine-tuning (experiments/adapt.py; Gururangan et al. 2020):
  # init_from's own objective goes on for `steps` on the task's training inputs
  # (corpus='task', task-adaptive) or on a .txt / .jsonl text file (domain-adaptive), in
  # W/adapt; fine-tuning then starts from the adapted weights. learning_rate 0 = init_from's
  # pretraining rate; batch_size 0 = config.batch_size.
  config.adapt = ml_collections.ConfigDict(
      dict(steps=0, corpus="task", learning_rate=0.0, batch_size=0)
  )
  # Knowledge distillation from a finished fine-tuning run on the same task, tokenizer and
  # labels (lmreuse/compression/distill.py): loss = (1 - alpha) label loss + alpha T² KL
  # + hidden_weight · MSE(projected student's final hidden states, the teacher's).
  config.distill = ml_collections.ConfigDict(
      dict(teacher="", alpha=0.5, temperature=2.0, hidden_weight=0.0)
  )
  # Representation analysis at the end of the run: PCA / t-SNE of the pooled validation
  # features before and after fine-tuning, and the attention maps of one validation example.
  config.viz = ml_collections.ConfigDict(dict(enabled=False, example=0))
  config.tokenizer = common.tokenizer_config(vocab_size=8000)  # only without init_from
  config.model = common.model_config(args["preset"], args["size"], max_len=128)  # likewise
  config.optimizer = common.optimizer_config(
      learning_rate=config.get_ref("learning_rate"), warmup_steps=30
  )
  config.optimizer.schedule = "linear"
  config.mesh = common.mesh_config()
  return config
