"""Knowledge distillation: the soft loss by hand, a distilled student closer to its teacher than
the same student trained on labels alone, and misfits refused before anything is written."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import finetune
from lmreuse import workdir as workdir_lib
from lmreuse.compression import distill
from lmreuse.train.writers import read_metrics
from tests import xla_flags
from tests.conftest import build_once, shared_dir
from tests.experiments.test_finetune import CASES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Stand:
  """A task type's distillation view: fixed soft targets (what soft_loss reads of a task)."""

  def __init__(self, kind):
    self.soft_target_kind = kind

  def soft_targets(self, outputs, batch):
    return [(outputs, batch["weight"])]


def test_soft_loss_equals_the_hand_computed_value():
  student = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [9.0, 0.0, 0.0]], np.float32)
  teacher = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 9.0, 0.0]], np.float32)
  weight = np.array([1.0, 2.0, 0.0], np.float32)  # the last row is padding
  t = 2.0

  def softmax(x):
    e = np.exp(x / t - np.max(x / t, -1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = softmax(teacher), softmax(student)
  kl = t**2 * np.sum(p * (np.log(p) - np.log(q)), -1)
  expected = np.sum(kl * weight) / weight.sum()
  batch = {"weight": jnp.asarray(weight)}
  got = distill.soft_loss(Stand("logits"), jnp.asarray(student), jnp.asarray(teacher), batch, t)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  squared = np.mean((student - teacher) ** 2, -1)
  got = distill.soft_loss(Stand("values"), jnp.asarray(student), jnp.asarray(teacher), batch, t)
  np.testing.assert_allclose(got, np.sum(squared * weight) / weight.sum(), rtol=1e-5)


def test_hidden_loss_equals_the_hand_computed_value():
  student = np.array([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]], np.float32)  # [B=1, L=3, S=2]
  projection = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], np.float32)  # [S=2, T=3]
  teacher = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]], np.float32)
  weights = np.array([[1.0, 1.0, 0.0]], np.float32)  # the last token is padding
  # Mapped: [1, 0, 2] and [0, 2, -2]; squared errors per token: (0+1+1)/3 and (0+4+4)/3.
  expected = (2 / 3 + 8 / 3) / 2
  got = distill.hidden_loss(*map(jnp.asarray, (student, teacher, projection, weights)))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


# The teacher fits its own 64 training examples (seed 1 draws them) with confident, input-dependent
# predictions the label-only student does not reproduce on its examples (seed 0's); 60 steps let
# the students fit what they are taught.
DATA = {"task.name": "wordnet_relation", "task.max_train_examples": 64}
DATA["task.max_eval_examples"] = 128
TEACHER = {"seed": 1, "total_steps": 120, "learning_rate": 3e-3}
STUDENT = {"seed": 0, "total_steps": 60, "learning_rate": 3e-3, "distill.alpha": 0.9}


@pytest.fixture(scope="session")
def teacher(finetune_config, tmp_path_factory, worker_id):
  """The teacher run, made by the first xdist worker to need it and read by the others."""
  directory = shared_dir(tmp_path_factory, worker_id, "distill_teacher")
  workdir = directory / "run"
  build_once(
      directory,
      workdir / workdir_lib.RESULTS,
      lambda: finetune.run(finetune_config("bert", **TEACHER, **DATA), str(workdir)),
  )
  return str(workdir)


def stacked(features) -> dict[str, np.ndarray]:
  return {k: np.stack([f.arrays[k] for f in features]) for k in features[0].arrays}


def probabilities(setup, params, batch) -> np.ndarray:
  logits = setup.module.apply({"params": jax.device_get(params)}, batch, deterministic=True)
  return np.asarray(jax.nn.softmax(logits, -1))


@pytest.mark.slow
def test_a_distilled_student_agrees_with_its_teacher_more_than_one_trained_on_labels(
    teacher, finetune_config, tmp_path
):
  teacher_setup = finetune.build(finetune.finished_run(teacher, "teacher")[0], teacher)
  teacher_params = finetune.best_params(teacher, teacher_setup)[1]
  gaps = {}
  for name, keys in (("labels", {}), ("distilled", {"distill.teacher": teacher})):
    config = finetune_config("bert", **STUDENT, **DATA, **keys)
    results = finetune.run(config, str(tmp_path / name))
    assert ("distillation" in results) == (name == "distilled")
    setup = finetune.build(config, str(tmp_path / name))
    params = finetune.best_params(str(tmp_path / name), setup)[1]
    train = setup.data.splits["train"]
    batches = {  # the student's own training inputs (the transfer set), and unseen ones
        "train": stacked([setup.task.features(train[i], None)[0] for i in range(len(train))]),
        "test": stacked(setup.eval_sets["test"].features),
    }
    for split, batch in batches.items():
      p_teacher = probabilities(teacher_setup, teacher_params, batch)
      p_student = probabilities(setup, params, batch)
      kl = np.mean(np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), -1))
      agrees = np.argmax(p_student, -1) == np.argmax(p_teacher, -1)
      gaps[name, split] = float(kl), agrees
  record = results["distillation"]
  assert record["teacher_outputs"] == "computed in the student's jitted train step"
  assert (record["alpha"], record["teacher_best_step"], record["hidden_weight"]) == (0.9, 120, 0.0)
  assert distill.PROJECTION not in params  # only hidden-state distillation adds it
  rows = [r for r in read_metrics(str(tmp_path / "distilled")) if "train/distill_loss" in r]
  assert rows and all(np.isfinite(r["train/label_loss"]) for r in rows)
  # KL to the teacher on the transfer set, and agreement with its argmax there and on unseen
  # inputs. Both students see the same examples, so agreement is compared pairwise (McNemar's
  # exact test: of the examples where exactly one student agrees, how many are the distilled's).
  (kl_labels, _), (kl_distilled, _) = gaps["labels", "train"], gaps["distilled", "train"]
  assert kl_distilled < 0.7 * kl_labels, gaps
  # Unseen inputs: more agreement too. (Not a lower KL: the distilled student is confident where
  # the teacher hesitates, which KL punishes more than the label student's near-prior outputs.)
  for split, alpha in (("train", 0.001), ("test", 0.05)):
    labels, distilled = gaps["labels", split][1], gaps["distilled", split][1]
    only_distilled, only_labels = int(np.sum(distilled & ~labels)), int(np.sum(labels & ~distilled))
    test = stats.binomtest(only_distilled, only_distilled + only_labels, 0.5, "greater")
    assert test.pvalue < alpha, (
        split,
        only_distilled,
        only_labels,
        distilled.mean(),
        labels.mean(),
    )


@pytest.mark.slow
def test_hidden_state_distillation_maps_a_narrower_student_onto_the_teachers_states(
    teacher, finetune_config, tmp_path
):
  narrow = {"model.d_model": 32, "model.d_ff": 128}
  keys = {"distill.teacher": teacher, "distill.hidden_weight": 1.0, **narrow}
  config = finetune_config("bert", **{**STUDENT, **DATA, **keys})
  results = finetune.run(config, str(tmp_path / "W"))
  assert results["distillation"]["hidden_weight"] == 1.0
  rows = [r for r in read_metrics(str(tmp_path / "W")) if "train/distill_hidden_loss" in r]
  hidden = [r["train/distill_hidden_loss"] for r in rows]
  assert len(hidden) >= 10 and np.mean(hidden[-5:]) < 0.75 * np.mean(hidden[:5]), hidden
  setup = finetune.build(config, str(tmp_path / "W"))
  params = finetune.best_params(str(tmp_path / "W"), setup)[1]
  assert params[distill.PROJECTION]["kernel"].shape == (32, 64)  # student width → teacher's
  config.distill.hidden_weight = -1.0
  with pytest.raises(ValueError, match=r"config\.distill\.hidden_weight=-1\.0 must be >= 0"):
    finetune.run(config, str(tmp_path / "other"))
  assert not (tmp_path / "other").exists()


def test_misfits_fail_before_writing(bert_pretrained, finetune_config, tmp_path):
  teacher = str(tmp_path / "teacher")  # its own, one step: the fixture's is a slow test's
  finetune.run(finetune_config("bert", **DATA, total_steps=1, checkpoint_every=1), teacher)
  workdir = tmp_path / "W"
  cases = [
      ({"distill.alpha": 1.5}, r"config.distill.alpha=1.5 must be in \[0, 1\]"),
      ({"distill.temperature": 0.0}, r"config.distill.temperature=0.0 must be positive"),
      ({"task.name": "wordnet_supersense"}, r"was fine-tuned on 'wordnet_relation'"),
      ({"max_len": 16}, "reads its inputs differently"),
  ]
  for keys, message in cases:
    config = finetune_config("bert", **{**DATA, "distill.teacher": teacher, **keys})
    with pytest.raises(ValueError, match=message):
      finetune.run(config, str(workdir))
  config = finetune_config("bert", **{"distill.teacher": bert_pretrained[0]})
  with pytest.raises(ValueError, match="is a 'pretrain' run, not a fine-tuning run"):
    finetune.run(config, str(workdir))
  config = finetune_config("bert", **{**DATA, "distill.teacher": teacher})
  misfit = divided_over_three_devices(config, workdir)
  assert "config.distill.teacher=" in misfit and "does not divide over mesh axes" in misfit
  untrained = str(tmp_path / "untrained")  # evaluated its initial model only: nothing selected
  finetune.run(finetune_config("bert", **DATA, total_steps=0), untrained)
  config = finetune_config("bert", **{**DATA, "distill.teacher": untrained})
  with pytest.raises(ValueError, match="selected no trained step"):
    finetune.run(config, str(workdir))
  assert not workdir.exists()


def divided_over_three_devices(config, workdir) -> str:
  """The error of building `config` with tensor=3 on 3 fake CPU devices (a subprocess: the
  device count is fixed when JAX starts), where no tiny dimension splits: the teacher, loaded
  before the student's model is checked, must be refused naming its key."""
  config.mesh.update(data=1, fsdp=1, tensor=3)
  script = (
      "import json, sys, ml_collections\n"
      "from experiments import finetune\n"
      "finetune.build(ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2])\n"
  )
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_host_devices(3), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", script, json.dumps(config.to_dict()), str(workdir)],
      cwd=ROOT,
      env=dict(env, PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  return proc.stderr[-3000:]


# The task types besides classification (the test above): their soft targets and weights.
@pytest.mark.parametrize(
    "case", ["extractive_qa", "regression", "seq2seq_encoder_decoder", "tagging"]
)
def test_every_task_type_matches_its_teachers_outputs_where_its_loss_has_weight(
    case, finetune_config, tmp_path
):
  preset, overrides, task_type, _ = CASES[case]
  config = finetune_config(preset, **overrides(tmp_path))
  setup = finetune.build(config, str(tmp_path / "W"))
  assert setup.data.task_type == task_type
  batch = {k: jnp.asarray(v) for k, v in setup.first_train_batch(4).items()}
  batch["weight"] = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding
  params = jax.device_get(setup.state.params)
  noise = jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(params)))
  other = jax.tree.unflatten(
      jax.tree.structure(params),
      [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(jax.tree.leaves(params), noise)],
  )
  apply = jax.jit(lambda p: setup.module.apply({"params": p}, batch, deterministic=True))
  teacher, student = apply(params), apply(other)
  # The hidden states hidden-state distillation reads: the input's, the encoder side of T5.
  _, states = distill.apply_with_hidden(setup.module, params, batch, deterministic=True)
  assert states.shape == (*batch["inputs"].shape, config.model.d_model)
  loss = lambda s, t: float(distill.soft_loss(setup.task, s, t, batch, 2.0))
  assert loss(teacher, teacher) == pytest.approx(0.0, abs=1e-5)
  assert loss(student, teacher) > 1e-3
  # The padding row's outputs play no part.
  padded = jax.tree.map(lambda s, t: s.at[3].set(t[3]), student, teacher)
  assert loss(padded, teacher) == pytest.approx(loss(student, teacher), rel=1e-5)
