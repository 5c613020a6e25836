"""Pretrain a BERT (MLM + NSP), ELECTRA (replaced-token detection on BERT's encoder), GPT
(causal LM), prefix LM (a GPT decoder, bidirectional over a random prefix) or T5 (span
corruption) on the bundled corpus.

  python run.py --config=configs/pretrain.py:bert,size=tiny --workdir=/tmp/bert_tiny
  python run.py --config=configs/pretrain.py:electra --workdir=/tmp/electra_tiny
  python run.py --config=configs/pretrain.py:gpt --workdir=/tmp/gpt --config.total_steps=200
  python run.py --config=configs/pretrain.py:t5,size=mini --workdir=/tmp/t5 \
      --config.mesh.data=4 --config.mesh.tensor=2

`size=tiny` (2 layers, 64 wide) shows a falling loss within ~2 minutes on 2 CPU cores; `base` is
BERT-base and wants an accelerator. Re-running the same command in the same workdir resumes.

Continued (domain-adaptive) pretraining of a finished run on your own text:
  python run.py --config=configs/pretrain.py:bert --workdir=/tmp/bert_dapt \
      --config.init_from=/tmp/bert_tiny --config.data.corpus=my_domain.txt \
      --config.total_steps=200 --config.optimizer.learning_rate=1e-4
"""

import ml_collections

from configs import common

OBJECTIVE_OF = {
    "bert": "mlm",
    "electra": "electra",
    "gpt": "clm",
    "prefix_lm": "prefix_lm",
    "t5": "span_corruption",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, {"preset": "bert", "size": "tiny"})
  preset = args["preset"]
  if preset not in OBJECTIVE_OF:
    raise ValueError(f"configs/pretrain.py:{arg}: preset must be one of {sorted(OBJECTIVE_OF)}")
  tiny = args["size"] == "tiny"

  config = ml_collections.ConfigDict()
  config.experiment = "pretrain"
  config.seed = 0
  # jax.random's implementation for the run's keys (init, dropout): threefry2x32 gives the same
  # run on any mesh and process count; rbg and unsafe_rbg draw faster, but their bits depend on
  # the sharding (lmreuse/train/trainer.py:prng_impl).
  config.prng_impl = "threefry2x32"
  config.overwrite = False  # True: discard an existing workdir's run instead of resuming
  # A pretraining workdir (or checkpoint step dir) to continue from, e.g. on domain text with
  # data.corpus=PATH; its model and tokenizer replace config.model and config.tokenizer.
  config.init_from = ""
  config.total_steps = 300 if tiny else 10_000
  config.batch_size = 32  # global batch (examples per optimizer step)
  config.grad_accum_steps = 1  # micro-batches per step; batch_size must divide by it
  config.log_every = 10
  config.eval_every = 100  # 0 = only at the end
  config.eval_steps = 10  # validation batches per evaluation
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  config.nonfinite = "abort"  # NaN/Inf loss: 'abort' (naming the step and last good checkpoint)
  # or 'skip' the update (counted in train/skipped_updates)
  config.max_nonfinite_skips = 10  # 'skip': this many skipped updates in a row abort the run

  config.data = ml_collections.ConfigDict(
      dict(
          # 'wordnet' (the bundled WordNet 3.0 corpus) or your own .txt / .jsonl file
          # (lmreuse/data/corpus/text_file.py: its layouts and validation split)
          corpus="wordnet",
          seq_len=128,  # encoder/decoder input length
          target_len=0,  # span corruption decoder length; 0 = derived from seq_len
          tfds_dir="",  # '' = $LMREUSE_TFDS_DIR or ~/.cache/lmreuse/tfds
      )
  )
  config.tokenizer = common.tokenizer_config(vocab_size=8000)
  config.model = common.model_config(preset, args["size"], max_len=config.data.seq_len)
  config.objective = ml_collections.ConfigDict(
      dict(
          name=OBJECTIVE_OF[preset],
          nsp=preset == "bert",  # mlm only: next-sentence prediction on segment pairs
          mask_prob=0.15,  # mlm: fraction of tokens selected (80/10/10); electra (85/0/15)
          generator_size=0.25,  # electra: the generator's width as a fraction of the model's
          rtd_weight=50.0,  # electra: the discriminator loss's weight (Clark et al.'s lambda)
          noise_density=0.15,  # span_corruption
          mean_noise_span_length=3.0,  # span_corruption
      )
  )
  config.optimizer = common.optimizer_config(
      learning_rate=1e-3 if tiny else 1e-4, warmup_steps=30 if tiny else 1000
  )
  config.mesh = common.mesh_config()
  return config
