"""Fine-tuning strategies: which parameters train, at which rate, from which step; the
guarantees behind fair comparisons (frozen means bitwise frozen, optimizer state only for what
trains); parameter-efficient checkpoints; and clear errors when a strategy does not fit."""

import dataclasses
import json
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from experiments import finetune
from lmreuse import strategies, workdir as workdir_lib
from lmreuse.models.config import STRATEGY_MODULES, TransformerConfig
from lmreuse.models.transformer import EncoderDecoder
from lmreuse.strategies import (
    base,
    dora as dora_strategy,
    lora as lora_strategy,
    vera as vera_strategy,
)
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
    "dora": {"strategy.rank": 4, "strategy.targets": "all_linear"},
    "vera": {"strategy.vera_rank": 16, "strategy.targets": "all_linear"},
    "ia3": {},
    "prompt_tuning": {"strategy.prompt_length": 4},
    "prefix_tuning": {"strategy.prefix_length": 4},
    "prune": {"strategy.schedule": "oneshot"},
    "qat": {},
}
# Strategies that cannot serve T5 on a seq2seq task: MISFITS checks why.
SEQ2SEQ_MISFITS = {"frozen", "linear_probe", "bitfit", "lp_ft", "qat"}
# (preset, config overrides, the error) of strategies that do not fit the model or task.
MISFITS = [
    (
        "bert",
        {"strategy.name": "lora", "strategy.targets": "nothing_like_this"},
        "config.strategy.targets='nothing_like_this' matches no projection",
    ),
    ("bert", {"strategy.name": "top_k", "strategy.k": 5}, r"config.strategy.k=5 must be in"),
    (
        "bert",
        {"strategy.name": "vera", "strategy.targets": "nothing_like_this"},
        "config.strategy.targets='nothing_like_this' matches no projection",
    ),
    ("bert", {"strategy.name": "vera", "strategy.vera_rank": 0}, "vera_rank=0 must be positive"),
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
    (
        "t5",
        {"strategy.name": "linear_probe", "task.name": "wordnet_definition"},
        "leaves nothing to train",
    ),
    ("t5", {"strategy.name": "lp_ft", "task.name": "wordnet_definition"}, "no task head"),
    (
        "t5",
        {"strategy.name": "qat", "task.name": "wordnet_definition"},
        "generation decodes with its own float model",
    ),
    ("bert", {"strategy.name": "lora,nope"}, "unknown strategy"),
]
# Factors with no gradient in these tests' single effective update (one step; or two where the
# warmup's first learning rate is 0): whatever they feed is multiplied by a zero-initialised
# partner, so nothing depends on them until that partner has moved. LoRA's A, whose product
# with B=0 is zero; VeRA's d, whose product with b=0 is zero; an adapter's `down` projection
# (kernel and bias), whose output reaches the residual only through `up`, whose kernel starts at
# zero. Their partners (lora_b, up/kernel,
# up/bias, vera_b) do get gradients, and are checked like every other parameter.
ZERO_GRADIENT_AT_INIT = re.compile(r"(/lora_a|/vera_d|_adapter/down/(kernel|bias))$")


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def eval_batch(setup, size=4):
  features = setup.eval_sets["test"].features[:size]
  return {k: np.stack([f.arrays[k] for f in features]) for k in features[0].arrays}


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
  """A new strategy fails here until STRATEGY_KEYS names it, which trains it on an encoder task
  and on a seq2seq task, or checks that it refuses the latter (SEQ2SEQ_MISFITS)."""
  assert sorted(STRATEGY_KEYS) == strategies.names()
  seq2seq_misfits = {
      overrides["strategy.name"]
      for preset, overrides, _ in MISFITS
      if preset == "t5" and overrides.get("task.name") == "wordnet_definition"
  }
  assert seq2seq_misfits == SEQ2SEQ_MISFITS


def plan_for(model_cfg, total_steps=300, **keys):
  cfg = ml_collections.ConfigDict(strategies.config_defaults())
  cfg.update(keys)
  return strategies.Plan(cfg, strategies.StrategyContext(model_cfg, "classification", total_steps))


PHASE_PATHS = (
    "classifier/dense/kernel",
    "backbone/stack/layers_1/mlp/wi/kernel",
    "backbone/stack/layers_0/mlp/wi/kernel",
    "backbone/stack/token_embed/embedding",
)


def test_phase_lengths_follow_total_steps_unless_set():
  two_layers = TransformerConfig(num_layers=2)

  def starts(total_steps, **keys):
    plan = plan_for(two_layers, total_steps, **keys)
    plan.check(list(PHASE_PATHS))
    return [plan.start_step(p) for p in PHASE_PATHS]

  # Gradual unfreezing: the embeddings (the third join) have joined half-way through the run.
  assert starts(300, name="gradual_unfreeze") == [0, 50, 100, 150]
  assert starts(40, name="gradual_unfreeze") == [0, 6, 12, 18]
  assert starts(2, name="gradual_unfreeze") == [0, 1, 2, 3]  # at least a step apart
  assert starts(40, name="gradual_unfreeze", unfreeze_every=10) == [0, 10, 20, 30]
  # LP-FT probes for a third of the run.
  assert starts(300, name="lp_ft") == [0, 100, 100, 100]
  assert starts(30, name="lp_ft") == [0, 10, 10, 10]
  assert starts(2, name="lp_ft") == [0, 1, 1, 1]
  assert starts(30, name="lp_ft", probe_steps=3) == [0, 3, 3, 3]
  # Explicit values keep their errors; a run too short for two phases says so.
  with pytest.raises(ValueError, match=r"config.strategy.probe_steps=300 must lie in \(0, "):
    starts(300, name="lp_ft", probe_steps=300)
  with pytest.raises(ValueError, match=r"'lp_ft' needs config.total_steps >= 2.*got 1"):
    starts(1, name="lp_ft")
  with pytest.raises(ValueError, match=r"config.strategy.unfreeze_every=-1 must be >= 0"):
    starts(40, name="gradual_unfreeze", unfreeze_every=-1)


def test_layer_strategies_count_the_deepest_stack():
  """An encoder-decoder with a deeper decoder: depths, rates and k count its decoder layers."""
  cfg = TransformerConfig(architecture="encoder_decoder", num_layers=1, num_decoder_layers=3)
  assert cfg.stack_depth == 3 and base.top_depth(cfg) == 4
  plan = plan_for(cfg, name="gradual_unfreeze,llrd,top_k", unfreeze_every=10, decay=0.5, k=3)
  layer = "backbone/decoder/layers_{}/mlp/wi/kernel"
  assert [plan.start_step(layer.format(i)) for i in range(3)] == [30, 20, 10]
  assert [plan.lr_scale(layer.format(i)) for i in range(3)] == [0.125, 0.25, 0.5]
  assert plan.trainable("backbone/encoder/layers_0/mlp/wi/kernel")  # depth 1 > 3 - 3
  with pytest.raises(ValueError, match=r"config.strategy.k=4 must be in \[0, 3\]"):
    plan_for(cfg, name="top_k", k=4).check([layer.format(0)])


def test_linear_probe_is_frozen_with_a_narrower_head():
  """linear_probe runs Frozen's set-up: it reads train_modules, and names a bad regex."""
  plan = plan_for(TransformerConfig(), name="linear_probe", train_modules="_norm/")
  assert plan.trainable("classifier/dense/kernel")
  assert plan.trainable("backbone/stack/layers_0/mlp_norm/scale")
  assert not plan.trainable("pooler/dense/kernel")
  assert not plan.trainable("backbone/stack/layers_0/mlp/wi/kernel")
  with pytest.raises(ValueError, match=r"config.strategy.train_modules: '\(' is not a regex"):
    plan_for(TransformerConfig(), name="linear_probe", train_modules="(")


def test_strategy_modules_name_every_parameter_they_add():
  """models/config.STRATEGY_MODULES is the one list of what strategies insert (strategies train
  it, init reports list it, HF export refuses it): each field switched on adds parameters that
  its own pattern names, and a plain model has none of them."""
  switched_on = {"adapter_size": 4, "ia3": True, "prefix_length": 2, "prompt_length": 2}
  switched_on.update(lora_rank=2, vera_rank=4)
  assert set(switched_on) == set(STRATEGY_MODULES)
  plain = TransformerConfig(architecture="encoder_decoder", num_layers=1, vocab_size=64)
  ids = np.zeros((1, 8), np.int32)

  def paths(cfg):
    shapes = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), ids, ids)["params"]
    return set(flat(nn.unbox(shapes)))

  before = paths(plain)
  assert not any(base.is_strategy_param(p) for p in before)
  for field, value in switched_on.items():
    added = paths(dataclasses.replace(plain, **{field: value})) - before
    assert added, field
    assert all(re.search(STRATEGY_MODULES[field], p) for p in added), field
    assert all(base.is_strategy_param(p) for p in added), field
  dora = paths(dataclasses.replace(plain, lora_rank=2, dora=True)) - before
  assert {p.rsplit("/", 1)[1] for p in dora} == {"lora_a", "lora_b", "lora_magnitude"}
  assert all(re.search(STRATEGY_MODULES["lora_rank"], p) for p in dora)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRATEGY_KEYS))
def test_each_strategy_trains_an_encoder_task(name, finetune_config, tmp_path):
  # total_steps as in the reload test below, whose PEFT runs then find this step compiled.
  keys = {"strategy.name": name, **STRATEGY_KEYS[name], "task.pooling": "mean", "total_steps": 2}
  config = finetune_config("bert", **keys)
  setup = finetune.build(config, str(tmp_path))
  before, after, state = train_steps(setup, config.batch_size, steps=2)
  check_only_trainables_change(setup, before, after, state, steps=2)
  added = [p for p in before if base.is_strategy_param(p)]
  inserting = ("adapters", "lora", "dora", "vera", "ia3", "prompt_tuning", "prefix_tuning")
  assert bool(added) == (name in inserting)


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
  schedule = setup.trainer.optimizer.schedule()
  assert [float(schedule(step)) for step in (0, 2, 5, 20, 50)] == pytest.approx(
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


# name → (the factor leaves that merge folds in, merge(params, setup), unmerge(merged, factors,
# what merge returned besides the params, setup)).
MERGEABLE = {
    "lora": (
        ("/lora_a", "/lora_b"),
        lambda params, setup: (lora_strategy.merge(params, setup.model_cfg.lora_alpha), None),
        lambda merged, factors, _, setup: lora_strategy.unmerge(
            merged, factors, setup.model_cfg.lora_alpha
        ),
    ),
    "dora": (
        ("/lora_a", "/lora_b", "/lora_magnitude"),
        lambda params, setup: dora_strategy.merge(params, setup.model_cfg.lora_alpha),
        lambda merged, factors, norms, setup: dora_strategy.unmerge(
            merged, factors, norms, setup.model_cfg.lora_alpha
        ),
    ),
    "vera": (
        ("/vera_d", "/vera_b"),
        lambda params, setup: (vera_strategy.merge(params, setup.model_cfg), None),
        lambda merged, factors, _, setup: vera_strategy.unmerge(merged, factors, setup.model_cfg),
    ),
}


@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_merge_and_unmerge_compute_the_same_function(name, finetune_config, tmp_path):
  leaves, merge, unmerge = MERGEABLE[name]
  config = finetune_config("bert", **{"strategy.name": name, **STRATEGY_KEYS[name]})
  setup = finetune.build(config, str(tmp_path))
  params = flat(setup.state.params)
  rng = np.random.default_rng(0)
  factors = {
      p: (v + rng.normal(size=v.shape) * 0.1).astype(v.dtype)
      for p, v in params.items()
      if p.endswith(leaves)
  }
  params.update(factors)
  params = traverse_util.unflatten_dict(params, sep="/")
  batch = eval_batch(setup)
  with_factors = setup.module.apply({"params": params}, batch)
  merged, extra = merge(params, setup)
  assert not any(base.is_strategy_param(p) for p in flat(merged))
  plain_cfg = dataclasses.replace(setup.model_cfg, lora_rank=0, dora=False, vera_rank=0)
  plain = type(setup.task)(dataclasses.replace(setup.task.ctx, model_cfg=plain_cfg)).model()
  np.testing.assert_allclose(plain.apply({"params": merged}, batch), with_factors, atol=1e-5)
  restored = unmerge(merged, traverse_util.unflatten_dict(factors, sep="/"), extra, setup)
  assert sorted(flat(restored)) == sorted(flat(params))  # the factors back, nothing else
  for path, value in flat(restored).items():
    np.testing.assert_allclose(value, flat(params)[path], atol=1e-5, err_msg=path)


def test_dora_starts_at_the_loaded_kernels_norms(bert_pretrained, finetune_config, tmp_path):
  """DoRA's magnitudes are the column norms of the kernels it starts from (init_from's, not the
  random init's), so the DoRA model computes the loaded model's function at step 0."""
  config = finetune_config("bert", **{"strategy.name": "dora", "init_from": bert_pretrained[0]})
  setup = finetune.build(config, str(tmp_path))
  params = flat(setup.state.params)
  magnitudes = [p for p in params if p.endswith("/lora_magnitude")]
  assert magnitudes and all("attention/" in p for p in magnitudes)
  for path in magnitudes:
    kernel = np.asarray(params[path.replace("_lora/lora_magnitude", "/kernel")])
    norms = np.linalg.norm(kernel.reshape(kernel.shape[0], -1), axis=0)
    np.testing.assert_allclose(params[path], norms, rtol=1e-6, err_msg=path)
  batch = eval_batch(setup)
  plain_cfg = dataclasses.replace(setup.model_cfg, lora_rank=0, dora=False)
  plain = type(setup.task)(dataclasses.replace(setup.task.ctx, model_cfg=plain_cfg)).model()
  unchanged = {p: v for p, v in params.items() if not base.is_strategy_param(p)}
  np.testing.assert_allclose(
      setup.module.apply({"params": setup.state.params}, batch),
      plain.apply({"params": traverse_util.unflatten_dict(unchanged, sep="/")}, batch),
      atol=1e-5,
  )


def test_misfits_fail_before_training(finetune_config, tmp_path):
  for preset, overrides, message in MISFITS:
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


PEFT = ("adapters", "bitfit", "dora", "ia3", "lora", "prefix_tuning", "prompt_tuning", "vera")


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
