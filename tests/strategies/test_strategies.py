"""Fine-tuning strategies: which parameters train, at which rate, from which step; the
guarantees behind fair comparisons (frozen means bitwise frozen, optimizer state only for what
trains); parameter-efficient checkpoints; and clear errors when a strategy does not fit."""

import dataclasses
import json
import re

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from experiments import finetune
from lmreuse import strategies, workdir as workdir_lib
from lmreuse.strategies import base, lora as lora_strategy
from lmreuse.train import restore
from lmreuse.train.trainer import split_microbatches

STRATEGY_KEYS = {
    "full": {},
    "frozen": {},
    "linear_probe": {},
    "top_k": {"strategy.k": 1},
    "modules": {"strategy.patterns": "attention/"},
    "gradual_unfreeze": {"strategy.unfreeze_every": 1},
    "llrd": {"strategy.decay": 0.5},
    "lp_ft": {"strategy.probe_steps": 1},
    "bitfit": {},
    "adapters": {"strategy.adapter_size": 8},
    "lora": {"strategy.rank": 4, "strategy.targets": "all_linear"},
    "ia3": {},
    "prompt_tuning": {"strategy.prompt_length": 4},
    "prefix_tuning": {"strategy.prefix_length": 4},
}
# Strategies that cannot serve a task, and why (checked in test_misfits_fail_before_training).
SEQ2SEQ_MISFITS = {"frozen", "linear_probe", "bitfit", "lp_ft"}
# Factors with no gradient in these tests' single effective update (one step; or two where the
# warmup's first learning rate is 0): whatever they feed is multiplied by a zero-initialised
# partner, so nothing depends on them until that partner has moved. LoRA's A, whose product
# with B=0 is zero; an adapter's `down` projection (kernel and bias), whose output reaches the
# residual only through `up`, whose kernel starts at zero. Their partners (lora_b, up/kernel,
# up/bias) do get gradients, and are checked like every other parameter.
ZERO_GRADIENT_AT_INIT = re.compile(r"(/lora_a|_adapter/down/(kernel|bias))$")


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def first_batch(setup, batch_size):
  batch = setup.first_train_batch(batch_size)
  return setup.trainer.device_batch(split_microbatches(batch, 1), 1)


def train_steps(setup, batch_size, steps, by_phase=False):
  """`by_phase`: each step runs its phase's compiled step, as the training loop does."""
  batch = first_batch(setup, batch_size)
  trainer, state = setup.trainer, setup.state
  before = flat(state.params)
  for step in range(steps):
    state, metrics = trainer.train_step(state, batch, step if by_phase else None)
  assert np.isfinite(float(metrics["train/loss"]))
  after = flat(state.params)
  # The logged parameter norm is that of what trains: a frozen backbone's would never move.
  trained = [np.asarray(v, np.float64) for p, v in after.items() if setup.plan.trainable(p)]
  np.testing.assert_allclose(
      float(metrics["train/param_norm"]), np.sqrt(sum(np.sum(v * v) for v in trained)), rtol=1e-5
  )
  return before, after, state


def check_only_trainables_change(setup, before, after, state, steps):
  """Frozen and not-yet-started parameters stay bitwise; every started trainable one has a
  gradient and moves, save the factors that ZERO_GRADIENT_AT_INIT names."""
  plan = setup.plan
  trainable = [p for p in before if plan.trainable(p)]
  # Not trainable, or not started yet (gradual unfreezing, LP-FT): bitwise unchanged.
  frozen = [p for p in before if not plan.trainable(p) or plan.start_step(p) >= steps]
  for path in frozen:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)  # bitwise
  # Adam's moments exist for trainable parameters only.
  mu = next(
      s
      for s in jax.tree.leaves(
          state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
      )
      if isinstance(s, optax.ScaleByAdamState)
  ).mu
  mu = {p: v for p, v in flat(mu).items() if not isinstance(v, optax.MaskedNode)}
  assert sorted(mu) == sorted(trainable)
  assert setup.trainer.trainable_count() == sum(before[p].size for p in trainable)
  # Adam's first moment is nonzero exactly where some step's gradient was: a stop-gradient
  # shows there even on a matrix that weight decay alone moves.
  started = [p for p in trainable if plan.start_step(p) < steps]
  assert started
  for path in started:
    if ZERO_GRADIENT_AT_INIT.search(path):
      assert not np.any(mu[path]), path  # the update beside them still starts at zero
    else:
      assert np.any(mu[path]), f"{path}: no gradient"
      assert not np.array_equal(after[path], before[path]), f"{path}: did not move"


def test_the_tests_cover_every_registered_strategy():
  assert sorted(STRATEGY_KEYS) == strategies.names()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRATEGY_KEYS))
def test_each_strategy_trains_an_encoder_task(name, finetune_config, tmp_path):
  config = finetune_config(
      "bert", **{"strategy.name": name, **STRATEGY_KEYS[name], "task.pooling": "mean"}
  )
  setup = finetune.build(config, str(tmp_path))
  before, after, state = train_steps(setup, config.batch_size, steps=2)
  check_only_trainables_change(setup, before, after, state, steps=2)
  added = [p for p in before if base.is_strategy_param(p)]
  assert bool(added) == (name in ("adapters", "lora", "ia3", "prompt_tuning", "prefix_tuning"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(STRATEGY_KEYS) - SEQ2SEQ_MISFITS))
def test_each_strategy_trains_a_seq2seq_task(name, finetune_config, tmp_path):
  # One layer per stack and one step: compile time dominates, and is all these tests pay for.
  config = finetune_config(
      "t5",
      **{
          "strategy.name": name,
          **STRATEGY_KEYS[name],
          "task.name": "wordnet_definition",
          "model.num_layers": 1,
          "optimizer.warmup_steps": 0,
      },
  )
  setup = finetune.build(config, str(tmp_path))
  before, after, state = train_steps(setup, config.batch_size, steps=1)
  check_only_trainables_change(setup, before, after, state, steps=1)


def test_layer_depths_and_rates_follow_the_stack(finetune_config, tmp_path):
  setup = finetune.build(
      finetune_config(
          "bert", **{"strategy.name": "llrd,top_k", "strategy.decay": 0.5, "strategy.k": 1}
      ),
      str(tmp_path),
  )
  plan, cfg = setup.plan, setup.model_cfg
  assert base.depth("backbone/stack/token_embed/embedding", cfg) == 0
  assert base.depth("backbone/stack/norm/scale", cfg) == 0  # BERT's embedding LayerNorm
  assert base.depth("backbone/stack/layers_1/mlp/wi/kernel", cfg) == 2
  assert base.depth("classifier/dense/kernel", cfg) == 3
  assert plan.lr_scale("classifier/dense/kernel") == 1.0
  assert plan.lr_scale("backbone/stack/layers_1/mlp/wi/kernel") == 0.5
  assert plan.lr_scale("backbone/stack/token_embed/embedding") == 0.125
  assert plan.trainable("backbone/stack/layers_1/mlp/wi/kernel")  # top_k=1 + the head
  assert not plan.trainable("backbone/stack/layers_0/mlp/wi/kernel")


def test_gradual_unfreezing_lp_ft_and_slanted_triangular_lr(finetune_config, tmp_path):
  config = finetune_config(
      "bert", **{"strategy.name": "gradual_unfreeze", "strategy.unfreeze_every": 10}
  )
  plan = finetune.build(config, str(tmp_path)).plan
  assert [
      plan.start_step(p)
      for p in (
          "classifier/dense/kernel",
          "backbone/stack/layers_1/mlp/wi/kernel",
          "backbone/stack/layers_0/mlp/wi/kernel",
          "backbone/stack/token_embed/embedding",
      )
  ] == [0, 10, 20, 30]
  opt = plan.optimizer(config.optimizer)
  assert opt.schedule == config.optimizer.schedule  # unchanged unless asked for
  config = finetune_config(
      "bert",
      **{
          "strategy.name": "gradual_unfreeze",
          "total_steps": 50,
          "strategy.slanted_triangular": True,
      },
  )
  setup = finetune.build(config, str(tmp_path))
  opt = setup.plan.optimizer(config.optimizer)
  assert (opt.warmup_steps, opt.end_lr_factor, opt.schedule) == (5, 1 / 32, "linear")
  # The learning rate the trainer steps with: up over cut_frac * 50 = 5 steps, then down over
  # the other 45 to peak / 32; at step 20, a third of the way down: 1 - (1/3)(31/32) = 65/96.
  peak = config.optimizer.learning_rate
  assert [float(setup.trainer.schedule(step)) for step in (0, 2, 5, 20, 50)] == pytest.approx(
      [0.0, 0.4 * peak, peak, 65 / 96 * peak, peak / 32], rel=1e-5
  )
  config = finetune_config("bert", **{"strategy.name": "lp_ft", "strategy.probe_steps": 3})
  plan = finetune.build(config, str(tmp_path)).plan
  assert plan.start_step("classifier/dense/kernel") == 0
  assert plan.start_step("backbone/stack/layers_0/mlp/wi/kernel") == 3


def test_each_phase_differentiates_only_what_has_started(finetune_config, tmp_path):
  """LP-FT's probe phase computes the head's gradient alone, and stepping phase by phase trains
  as differentiating everything does while the gates hold unstarted parameters still."""
  config = finetune_config(
      "bert", **{"strategy.name": "lp_ft", "strategy.probe_steps": 2, "dropout_rate": 0.0}
  )
  runs = []
  for by_phase in (True, False):
    setup = finetune.build(config, str(tmp_path))
    assert setup.trainer.phases == (0, 2)
    runs.append(train_steps(setup, 8, 3, by_phase=by_phase)[1])
  for path, value in runs[0].items():
    np.testing.assert_allclose(value, runs[1][path], rtol=1e-5, atol=1e-7, err_msg=path)
  trainer, state = setup.trainer, setup.state
  batch = first_batch(setup, 8)

  def flops(step):
    return trainer.lower_train_step(state, batch, step).compile().cost_analysis()["flops"]

  assert flops(0) < 0.6 * flops(None)  # forward + the head's backward


def test_lora_merge_and_unmerge_compute_the_same_function(finetune_config, tmp_path):
  config = finetune_config(
      "bert", **{"strategy.name": "lora", "strategy.rank": 4, "strategy.targets": "all_linear"}
  )
  setup = finetune.build(config, str(tmp_path))
  params = flat(setup.state.params)
  rng = np.random.default_rng(0)
  factors = {
      p: rng.normal(size=v.shape).astype(v.dtype) * 0.1
      for p, v in params.items()
      if p.endswith(("/lora_a", "/lora_b"))
  }
  params.update(factors)
  params = traverse_util.unflatten_dict(params, sep="/")
  batch = {
      k: np.stack([f.arrays[k] for f in setup.eval_sets["test"].features[:4]])
      for k in setup.eval_sets["test"].features[0].arrays
  }
  with_lora = setup.module.apply({"params": params}, batch)
  merged = lora_strategy.merge(params, config.strategy.alpha)
  assert not any("lora" in p for p in flat(merged))
  plain_cfg = dataclasses.replace(setup.model_cfg, lora_rank=0)
  plain = type(setup.task)(dataclasses.replace(setup.task.ctx, model_cfg=plain_cfg)).model()
  np.testing.assert_allclose(plain.apply({"params": merged}, batch), with_lora, atol=1e-5)
  factors_tree = traverse_util.unflatten_dict(factors, sep="/")
  restored = lora_strategy.unmerge(merged, factors_tree, config.strategy.alpha)
  assert sorted(flat(restored)) == sorted(flat(params))  # the factors back, nothing else
  for path, value in flat(restored).items():
    np.testing.assert_allclose(value, flat(params)[path], atol=1e-6)


def test_misfits_fail_before_training(finetune_config, tmp_path):
  cases = [
      (
          "bert",
          {"strategy.name": "lora", "strategy.targets": "nothing_like_this"},
          "config.strategy.targets='nothing_like_this' matches no projection",
      ),
      ("bert", {"strategy.name": "top_k", "strategy.k": 5}, r"config.strategy.k=5 must be in"),
      (
          "gpt",
          {"strategy.name": "prompt_tuning", "task.name": "wordnet_definition"},
          "use prefix_tuning",
      ),
      (
          "t5",
          {"strategy.name": "bitfit", "task.name": "wordnet_definition"},
          "needs a backbone with biases",
      ),
      (
          "t5",
          {"strategy.name": "frozen", "task.name": "wordnet_definition"},
          "leaves nothing to train",
      ),
      ("t5", {"strategy.name": "lp_ft", "task.name": "wordnet_definition"}, "no task head"),
      ("bert", {"strategy.name": "lora,nope"}, "unknown strategy"),
  ]
  for preset, overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      finetune.build(finetune_config(preset, **overrides), str(tmp_path))


def test_combined_lora_and_trainable_norms(finetune_config, tmp_path):
  config = finetune_config(
      "bert", **{"strategy.name": "lora,modules", "strategy.patterns": "_norm/"}
  )
  plan = finetune.build(config, str(tmp_path)).plan
  assert plan.trainable("backbone/stack/layers_0/mlp_norm/scale")
  assert plan.trainable("backbone/stack/layers_0/self_attention/query_lora/lora_a")
  assert not plan.trainable("backbone/stack/layers_0/self_attention/query/kernel")


def test_combined_adapters_and_llrd(finetune_config, tmp_path):
  """Adapters choose what trains, LLRD how fast: a layer's adapter learns at its depth's rate."""
  config = finetune_config(
      "bert",
      **{"strategy.name": "adapters,llrd", "strategy.decay": 0.5, "strategy.adapter_size": 8},
  )
  setup = finetune.build(config, str(tmp_path))
  plan, params = setup.plan, flat(setup.state.params)
  adapter = "backbone/stack/layers_{}/mlp_adapter/down/kernel"
  assert adapter.format(1) in params and plan.trainable(adapter.format(0))
  assert not plan.trainable("backbone/stack/layers_0/mlp/wi/kernel")
  assert plan.lr_scale(adapter.format(0)) == 0.25 and plan.lr_scale(adapter.format(1)) == 0.5
  assert plan.lr_scale("classifier/dense/kernel") == 1.0


PEFT = ("adapters", "bitfit", "ia3", "lora", "prefix_tuning", "prompt_tuning")


@pytest.mark.slow
@pytest.mark.parametrize("name", PEFT)
def test_a_saved_peft_run_reloads_onto_its_base_with_identical_metrics(
    name, bert_pretrained, finetune_config, tmp_path
):
  """trainable/ holds exactly the trainable parameters; a 0-step run that overlays them on the
  base evaluates as the trained run did, and saves them back unchanged."""
  base_dir, _ = bert_pretrained
  keys = {
      "strategy.name": name,
      **STRATEGY_KEYS[name],
      "init_from": base_dir,
      "task.pooling": "mean",
      "total_steps": 2,
      "checkpoint_every": 2,
  }
  config = finetune_config("bert", **keys)
  setup = finetune.build(config, str(tmp_path / "build"))
  trainable = sorted(p for p in flat(setup.state.params) if setup.plan.trainable(p))
  trained = finetune.run(config, str(tmp_path / "trained"))
  fraction = trained["parameters"]["trainable_fraction"]
  assert 0 < fraction < 0.2 and trained["strategy"] == name
  saved = flat(restore.load_tree(str(tmp_path / "trained" / workdir_lib.TRAINABLE)))
  assert sorted(saved) == trainable
  assert sum(v.size for v in saved.values()) == trained["parameters"]["trainable"]
  report = json.loads((tmp_path / "trained" / workdir_lib.INIT_REPORT).read_text())
  assert bool(report["strategy"]) == (name != "bitfit")  # BitFit adds no parameter
  reloaded = finetune.run(
      finetune_config(
          "bert", **{**keys, "total_steps": 0}, init_trainable_from=str(tmp_path / "trained")
      ),
      str(tmp_path / "reloaded"),
  )
  test = {k: v for k, v in trained["metrics"].items() if k.startswith("test/")}
  assert test and test == {k: v for k, v in reloaded["metrics"].items() if k.startswith("test/")}
  resaved = flat(restore.load_tree(str(tmp_path / "reloaded" / workdir_lib.TRAINABLE)))
  assert sorted(resaved) == trainable
  for path in trainable:
    np.testing.assert_array_equal(resaved[path], saved[path], err_msg=path)  # bitwise
