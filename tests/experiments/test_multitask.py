"""Multi-task fine-tuning: mixing rates by hand, a mixture's batches and parameters as its members'
single-task runs have them, and a real run that reports every task and resumes bitwise."""

import collections
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from experiments import adapt, finetune, multitask
from lmreuse import workdir as workdir_lib
from lmreuse.tasks import mixture, types as task_types
from lmreuse.train import compute, preemption
from lmreuse.train.early_stopping import EarlyStopping
from tests.experiments.test_preemption import counted_steps, without_timing  # noqa: F401

PAIR = "wordnet_supersense+wordnet_relation"


def test_rates_by_hand():
  sizes = {"a": 100, "b": 400}
  assert mixture.rates(sizes, "proportional") == pytest.approx({"a": 0.2, "b": 0.8})
  assert mixture.rates(sizes, "equal") == pytest.approx({"a": 0.5, "b": 0.5})
  # T = 2: in proportion to the square roots, 10 : 20
  assert mixture.rates(sizes, "temperature", 2.0) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
  with pytest.raises(ValueError, match=r"config\.task\.mixing='uniform'"):
    mixture.rates(sizes, "uniform")


def test_one_members_metric_selects_in_its_own_direction():
  headlines = {"a": ("accuracy", "max"), "b": ("f1", "max")}
  assert mixture.selection("", "", headlines) == (mixture.MEAN, "max")
  assert mixture.selection("b/loss", "", headlines) == ("b/loss", "min")
  assert mixture.selection("b/f1", "", headlines) == ("b/f1", "max")
  assert mixture.selection("b/loss", "max", headlines) == ("b/loss", "max")  # as configured


@pytest.mark.parametrize(
    "name, match",
    [
        ("wordnet_supersense+", "non-empty"),
        ("wordnet_supersense+wordnet_supersense", "repeated: \\['wordnet_supersense'\\]"),
        ("backbone+wordnet_supersense", "not 'backbone'"),
        ("glue/sst2+glue__sst2", "repeated"),  # the same parameter key
    ],
)
def test_bad_mixture_names_are_refused(name, match):
  with pytest.raises(ValueError, match=match):
    mixture.members(name)


def test_member_configs_override_the_mixtures_task_keys(finetune_config):
  config = finetune_config(**{"task.name": "wordnet_supersense+mine"})
  config.task.members = {"mine": {"type": "classification", "train_path": "t.csv"}}
  mine = mixture.member_task(config.task, "mine")
  assert (mine.name, mine.type, mine.train_path) == ("mine", "classification", "t.csv")
  assert mine.max_train_examples == config.task.max_train_examples  # inherited
  assert "members" not in mine and "mixing" not in mine
  assert mixture.member_task(config.task, "wordnet_supersense").train_path == ""

  config.task.members = {"mine": {"train_file": "t.csv"}}
  with pytest.raises(ValueError, match=r"config.task.members.mine: \['train_file'\]"):
    mixture.member_task(config.task, "mine")
  config.task.members = {"other": {"type": "classification"}}
  with pytest.raises(ValueError, match=r"config.task.members has \['other'\]"):
    mixture.validate(config.task)


def test_combined_parameters_and_views_with_slashed_names():
  trees = {
      "glue/sst2": {"backbone": {"encoder": {"k": 1}}, "classifier": {"kernel": 2}},
      "squad": {"backbone": {"encoder": {"k": 1}, "decoder": {"k": 3}}, "head": {"kernel": 4}},
  }
  combined = mixture.combine(trees)
  assert combined == {
      "backbone": {"encoder": {"k": 1}, "decoder": {"k": 3}},
      "glue__sst2": {"classifier": {"kernel": 2}},
      "squad": {"head": {"kernel": 4}},
  }
  assert mixture.view(combined, "glue/sst2") == {
      "backbone": combined["backbone"],
      "classifier": {"kernel": 2},
  }
  # A seq2seq member has no head (its LM head is the backbone's): no subtree of its own.
  headless = mixture.combine({**trees, "definition": {"backbone": {"encoder": {"k": 1}}}})
  assert set(headless) == set(combined)
  assert mixture.view(headless, "definition") == {"backbone": combined["backbone"]}
  batch = mixture.prefixed("glue/sst2", {"inputs": 1, "weight": 2})
  assert batch == {"glue__sst2/inputs": 1, "glue__sst2/weight": 2}
  assert mixture.split(batch) == ("glue__sst2", {"inputs": 1, "weight": 2})
  with pytest.raises(ValueError, match="one member's features"):
    mixture.split({**batch, "squad/inputs": 3})


def test_the_mixed_batches_follow_the_rates_and_resume(finetune_config, tmp_path):
  """Shares from the training set sizes (48 : 16), one member's batch at a time, shaped as its
  single-task run's, and a saved stream position restored replays the same batches."""
  config = finetune_config(**{"task.name": PAIR, "task.max_train_examples": 48})
  config.task.members = {"wordnet_relation": {"max_train_examples": 16}}
  setup = finetune.build(config, str(tmp_path))
  assert setup.shares == pytest.approx({"wordnet_supersense": 0.75, "wordnet_relation": 0.25})
  stream = setup.train_batches(config)
  batches = [next(stream) for _ in range(40)]
  counts = collections.Counter(mixture.split(b)[0] for b in batches)
  assert counts == {"wordnet_supersense": 30, "wordnet_relation": 10}
  single = finetune.build(finetune_config(), str(tmp_path / "single")).first_train_batch(8)
  _, own = mixture.split(next(b for b in batches if "wordnet_supersense/inputs" in b))
  assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in single.items()}

  state = stream.get_state()
  ahead = [next(stream) for _ in range(5)]
  stream.set_state(state)
  again = [next(stream) for _ in range(5)]
  for a, b in zip(ahead, again):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_member_trains_and_evaluates_its_single_task_model(finetune_config, tmp_path):
  """The mixture's loss on a member's batch is that member's single-task loss on its view of
  the shared parameters (one backbone: the same values at init as a single-task run's)."""
  config = finetune_config(**{"task.name": PAIR})
  setup = finetune.build(config, str(tmp_path / "mix"))
  single = finetune.build(finetune_config(), str(tmp_path / "single"))
  params = setup.trainer.to_host(setup.state.params)
  assert set(params) == {"backbone", "wordnet_supersense", "wordnet_relation"}
  one = setup.trainer.to_host(single.state.params)
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")
  for path, value in flat(one["backbone"]).items():
    np.testing.assert_array_equal(flat(params["backbone"])[path], value, err_msg=path)

  batch = single.first_train_batch(8)
  view = mixture.view(params, "wordnet_supersense")
  expected, _ = single.trainer.program.loss_fn(view, batch, jax.random.PRNGKey(0), False)
  loss, pairs = setup.trainer.program.loss_fn(
      params, mixture.prefixed("wordnet_supersense", batch), jax.random.PRNGKey(0), False
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert set(pairs) and all(k.startswith("wordnet_supersense/") for k in pairs)
  scores = setup.validation_scores(setup.state.params)
  assert scores["mean"] == pytest.approx(  # in points
      100 * (scores["wordnet_supersense/accuracy"] + scores["wordnet_relation/accuracy"]) / 2
  )


def test_per_task_selection_keeps_each_members_best_and_stops_when_all_have(tmp_path):
  """Each member's record keeps its own best step's parameters; the run stops once every
  member's patience has run out, and a resumed selection forgets the evaluations after the
  step it resumes from."""
  rule = lambda member: EarlyStopping(f"{member}/accuracy", "max", patience=1)
  setup = types.SimpleNamespace(
      validation_scores=None,
      trainer=types.SimpleNamespace(timers=compute.Timers()),
      stopper=EarlyStopping(mixture.MEAN, "max", patience=0),
      plan=types.SimpleNamespace(first_selectable_step=lambda: 0),
      member_rules={"a": rule("a"), "b": rule("b")},
  )
  state = lambda step: types.SimpleNamespace(params={"w": jnp.full((2,), float(step))})
  scores = lambda a, b: {
      "validation/a/accuracy": a,
      "validation/b/accuracy": b,
      "validation/mean": 50 * (a + b),
  }
  selection = multitask.PerTaskSelection(str(tmp_path), setup, resume_step=0)
  assert not selection.after_eval(1, state(1), scores(0.5, 0.5))
  assert not selection.after_eval(2, state(2), scores(0.4, 0.6))  # a's patience is out, b's not
  assert selection.after_eval(3, state(3), scores(0.3, 0.5))  # both out: the run stops
  assert selection.stopper.stopped_at == 3
  assert {m: r["selected_step"] for m, r in selection.member_steps(0).items()} == {"a": 1, "b": 2}
  selection.close()
  for member, step in (("a", 1), ("b", 2)):
    directory = multitask.member_dir(str(tmp_path), member)
    restored_step, params = finetune.restore_selected(directory, {"w": jnp.zeros(2)})
    assert restored_step == step and np.all(np.asarray(params["w"]) == step)

  resumed = multitask.PerTaskSelection(str(tmp_path), setup, resume_step=1)
  assert resumed.members["b"].stopper.history == [(1, 0.5)]
  assert not resumed.stopper.stopped_at
  assert not resumed.after_eval(2, state(2), scores(0.4, 0.6))
  resumed.close()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"task.selection": "best"}, "config.task.selection='best'"),
        ({"viz.enabled": True}, "config.viz.enabled"),
        ({"distill.teacher": "/nowhere"}, "config.distill.teacher"),
        ({"task.mixing": "uniform"}, "config.task.mixing='uniform'"),
        ({"early_stopping.metric": "relation/f1"}, "config.early_stopping.metric='relation/f1'"),
    ],
)
def test_bad_mixture_configs_are_refused_before_writing(
    finetune_config, tmp_path, overrides, match
):
  config = finetune_config(**{"task.name": PAIR, **overrides})
  with pytest.raises(ValueError, match=match):
    finetune.run(config, str(tmp_path / "W"))
  assert not (tmp_path / "W").exists()


@pytest.mark.slow
def test_a_multitask_run_reports_every_task_and_resumes_bitwise(
    finetune_config, bert_pretrained, tmp_path, counted_steps  # noqa: F811
):
  """Classification + extractive QA (their own batch keys, so their own compiled steps) from a
  pretrained BERT, each scored at its own best step (config.task.selection=per_task): every
  task's metrics and predictions, the shared backbone loaded, and a run preempted mid-way
  resumes to the uninterrupted run's outputs bit for bit."""
  name = "wordnet_supersense+wordnet_headword_qa"
  overrides = {"task.name": name, "task.mixing": "equal", "task.selection": "per_task"}
  config = finetune_config(
      init_from=bert_pretrained[0],
      total_steps=6,
      eval_every=2,
      log_every=1,
      checkpoint_every=100,
      **overrides,
  )
  steps, signal_after = counted_steps
  straight = finetune.run(config, str(tmp_path / "straight"))
  workdir = tmp_path / "preempted"
  steps.clear()
  signal_after[0] = 2
  with pytest.raises(preemption.Preempted, match="stopped after step 3"):
    finetune.run(config, str(workdir))
  signal_after[0] = None
  steps.clear()
  resumed = finetune.run(config, str(workdir))
  assert steps == [3, 4, 5]
  assert without_timing(workdir) == without_timing(tmp_path / "straight")
  assert (resumed["metrics"], resumed["best_step"]) == (straight["metrics"], straight["best_step"])
  for member in ("wordnet_supersense", "wordnet_headword_qa"):
    for directory in (tmp_path / "straight", workdir):
      assert (directory / workdir_lib.TASKS / member / workdir_lib.BEST).is_dir()

  # Each member at its own best validation step of its headline metric: the step, and the
  # scores a run selecting by that member's metric alone gets (the same training).
  rows = [r for r in without_timing(tmp_path / "straight") if "validation/mean" in r]
  for member, headline in (("wordnet_supersense", "accuracy"), ("wordnet_headword_qa", "f1")):
    values = [r[f"validation/{member}/{headline}"] for r in rows]
    best_row = rows[values.index(max(values))]
    record = straight["task"]["members"][member]
    assert record["selected_step"] == best_row["step"]
    assert record["selection"] == {"metric": f"validation/{member}/{headline}", "mode": "max"}
  config.task.selection = "joint"
  config.early_stopping.metric = "wordnet_headword_qa/f1"
  alone = finetune.run(config, str(tmp_path / "by_qa"))
  qa_record = straight["task"]["members"]["wordnet_headword_qa"]
  assert alone["best_step"] == qa_record["selected_step"]
  for key, value in alone["metrics"].items():
    if "/wordnet_headword_qa/" in key:
      assert straight["metrics"][key] == value, key

  metrics = straight["metrics"]
  for member, headline in (("wordnet_supersense", "accuracy"), ("wordnet_headword_qa", "f1")):
    assert 0.0 <= metrics[f"test/{member}/{headline}"] <= 100.0
    assert f"validation/{member}/loss" in metrics
    predictions = tmp_path / "straight" / workdir_lib.TASKS / member / workdir_lib.PREDICTIONS
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == straight["task"]["members"][member]["examples"]["test"]
  assert metrics["validation/mean"] == pytest.approx(
      (
          100 * metrics["validation/wordnet_supersense/accuracy"]  # a fraction, in points
          + metrics["validation/wordnet_headword_qa/f1"]  # SQuAD F1: points already
      )
      / 2
  )
  assert metrics["test/mean"] == pytest.approx(
      (100 * metrics["test/wordnet_supersense/accuracy"] + metrics["test/wordnet_headword_qa/f1"])
      / 2
  )
  assert straight["task"]["members"]["wordnet_headword_qa"]["share"] == 0.5
  rows = without_timing(tmp_path / "straight")
  trained = [
      {k.split("/")[1] for k in r if k.startswith("train/") and k.count("/") == 2} for r in rows
  ]
  assert {"wordnet_supersense", "wordnet_headword_qa"} == set().union(*trained)
  assert all(len(t) == 1 for t in trained if t)  # one task per step (log_every=1)
  report = json.loads((tmp_path / "straight" / workdir_lib.INIT_REPORT).read_text())
  assert report["loaded"] and all(p.startswith("backbone/") for p in report["loaded"])
  assert {p.split("/")[0] for p in report["new"]} == {"wordnet_supersense", "wordnet_headword_qa"}
  labels = json.loads((tmp_path / "straight" / workdir_lib.LABELS).read_text())["labels"]
  assert list(labels) == ["wordnet_supersense"]
  assert straight["compute"]["train_flops"] > 0


def test_single_task_readers_refuse_a_multitask_run(tmp_path):
  """Compression and distillation read one task's model: a mixture's workdir is refused."""
  (tmp_path / workdir_lib.CONFIG).write_text(
      json.dumps({"experiment": "finetune", "task": {"name": PAIR}})
  )
  (tmp_path / workdir_lib.RESULTS).write_text("{}")
  assert finetune.finished_run(str(tmp_path), "config.init_from")[0].task.name == PAIR
  with pytest.raises(ValueError, match=r"config\.init_from=.* is a multi-task run"):
    finetune.finished_run(str(tmp_path), "config.init_from", single_task=True)


def test_continued_pretraining_reads_every_tasks_inputs(
    finetune_config, bert_pretrained, tmp_path, monkeypatch
):
  """config.adapt's task corpus holds each member's training inputs, in member order (the
  pretraining phase itself is experiments/adapt.py's, tested there)."""
  config = finetune_config(init_from=bert_pretrained[0], **{"task.name": PAIR, "adapt.steps": 2})
  setup = finetune.build(config, str(tmp_path))
  finished = {"steps": 2, "metrics_before": {"eval/loss": 2.0}, "metrics": {"eval/loss": 1.0}}
  monkeypatch.setattr(adapt.pretrain, "run", lambda phase, directory: finished)
  record = adapt.run(config, str(tmp_path), setup.task_data())
  lines = (tmp_path / workdir_lib.ADAPT_CORPUS).read_text().splitlines()
  expected = [
      task_types.TASK_TYPES[data.task_type].input_text(example)
      for data in setup.task_data()
      for example in data.splits["train"]
  ]
  assert [json.loads(line)["segments"] for line in lines] == expected
  assert len(expected) == 2 * config.task.max_train_examples
  assert (record["loss_before"], record["loss_after"]) == (2.0, 1.0)


def test_strategies_answer_for_every_members_head(finetune_config, tmp_path):
  """A linear probe trains each member's classifier and nothing else; LoRA's factors in the
  shared backbone train with every head."""
  config = finetune_config(**{"task.name": PAIR, "strategy.name": "linear_probe"})
  setup = finetune.build(config, str(tmp_path / "probe"))
  flat = traverse_util.flatten_dict(setup.trainer.trainable_mask, sep="/")
  assert {"/".join(p.split("/")[:2]) for p, trains in flat.items() if trains} == {
      "wordnet_supersense/classifier",
      "wordnet_relation/classifier",
  }
  config = finetune_config(**{"task.name": PAIR, "strategy.name": "lora"})
  setup = finetune.build(config, str(tmp_path / "lora"))
  flat = traverse_util.flatten_dict(setup.trainer.trainable_mask, sep="/")
  trained = {p for p, trains in flat.items() if trains}
  assert any("lora" in p and p.startswith("backbone/") for p in trained)
  assert {p.split("/")[0] for p in trained} == {
      "backbone",
      "wordnet_supersense",
      "wordnet_relation",
  }
  assert not any(p.startswith("backbone/") and "lora" not in p for p in trained)


def test_an_encoder_decoder_mixes_classification_with_generation(finetune_config, tmp_path):
  """T5: the classifier reads the encoder, the seq2seq member the decoder too (and has no head
  of its own); each member's loss on its batch is finite and its own."""
  config = finetune_config("t5", **{"task.name": "wordnet_supersense+wordnet_definition"})
  setup = finetune.build(config, str(tmp_path))
  params = setup.trainer.to_host(setup.state.params)
  assert set(params) == {"backbone", "wordnet_supersense"}
  assert {"encoder", "decoder"} <= set(params["backbone"])
  batches = {}
  stream = setup.train_batches(config)
  while len(batches) < 2:
    batch = next(stream)
    batches.setdefault(mixture.split(batch)[0], batch)
  for member, batch in batches.items():
    loss, pairs = setup.trainer.program.loss_fn(params, batch, jax.random.PRNGKey(0), False)
    assert np.isfinite(loss) and all(k.startswith(f"{member}/") for k in pairs)
