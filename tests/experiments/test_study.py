"""A tiny study end to end: grid expansion, shared pretraining, interruption and resume,
one-cell runs, and aggregated mean/std that match the child runs' results.json."""

import copy
import csv
import json
import os

import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import study as study_config
from experiments import finetune, study
from lmreuse import workdir as workdir_lib
from lmreuse.study import grid, launch

# The fine-tuning cells of test studies: 2 steps on 32 examples.
TINY_CELLS = dict(
    total_steps=2,
    batch_size=8,
    eval_every=0,
    checkpoint_every=2,
    log_every=1,
    max_len=24,
    optimizer=dict(warmup_steps=1),
    task=dict(max_train_examples=32, max_eval_examples=16),
)


def without_sweeps(config):
  """One shared learning rate for every strategy: the grid without its hyperparameter axis."""
  config.study.sweep.learning_rate = ()
  for entry in config.study.strategy_sweeps.values():
    entry.learning_rate = ()
  return config


@pytest.fixture
def tiny_study(tokenizer_path, tfds_dir):
  config = without_sweeps(study_config.get_config("tiny"))
  config.study.strategies = ("full", "lora")
  config.study.seeds = (0, 1)
  config.study.from_scratch = False
  config.pretrain.update(
      dict(
          total_steps=2,
          batch_size=8,
          eval_steps=1,
          checkpoint_every=2,
          log_every=1,
          tokenizer=dict(path=tokenizer_path, vocab_size=1024, num_sentinels=32),
          data=dict(seq_len=32, tfds_dir=tfds_dir),
          model=dict(max_len=32),
      )
  )
  config.finetune.update(dict(copy.deepcopy(TINY_CELLS), strategy=dict(rank=4)))
  return config


def test_grid_names_dependencies_and_selection(tiny_study):
  tiny_study.study.from_scratch = True
  cells = grid.expand(tiny_study.study)
  assert [c.name for c in cells[:3]] == [
      "pretrain-bert",
      "wordnet_supersense.bert.full.seed0",
      "wordnet_supersense.bert.full.seed1",
  ]
  assert len(cells) == 1 + 2 * 2 * 2  # pretraining + (pretrained, scratch) × 2 × 2 seeds
  assert {c.depends_on for c in cells[1:]} == {"pretrain-bert"}
  assert [c.index for c in grid.select(cells, "*scratch.lora*")] == [7, 8]
  assert grid.select(cells, "3") == [cells[3]]
  with pytest.raises(ValueError, match="matches no cell"):
    grid.select(cells, "*nothing*")
  scratch = grid.child_config(cells[-1], tiny_study, "/s")
  assert scratch.from_scratch and scratch.init_from == "/s/runs/pretrain-bert"
  assert scratch.seed == 1 and scratch.strategy.name == "lora"
  assert scratch.optimizer.learning_rate == tiny_study.finetune.learning_rate


def test_existing_checkpoints_join_the_grid_without_pretraining_cells(tiny_study, tmp_path):
  tiny_study.study.checkpoints = (f"minilm=hf:{tmp_path}", f"mine={tmp_path}")
  cells = grid.expand(tiny_study.study)
  minilm = [c for c in cells if ".minilm." in c.name]
  assert [c.name for c in minilm] == [
      f"wordnet_supersense.minilm.{s}.seed{i}" for s in ("full", "lora") for i in (0, 1)
  ]
  assert {c.depends_on for c in minilm} == {None} and len(cells) == 1 + 3 * 2 * 2
  child = grid.child_config(minilm[0], tiny_study, "/s")
  assert child.init_from == f"hf:{tmp_path}" and not child.from_scratch
  assert grid.child_config(cells[-1], tiny_study, "/s").init_from == str(tmp_path)
  for bad, message in (
      ("minilm", "write NAME=hf:DIR"),
      ("a.b=hf:/x", "without '.'"),
      ("bert=hf:/x", "is taken"),
      ("x=hf:/nowhere", "/nowhere is not a dir"),
  ):
    tiny_study.study.checkpoints = (bad,)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      grid.expand(tiny_study.study)


def test_sweeps_cross_per_strategy_candidates_into_named_cells(tiny_study):
  tiny_study.study.sweep.learning_rate = (1e-3, 3e-3)
  tiny_study.study.strategy_sweeps.lora.learning_rate = (1e-2,)
  tiny_study.study.strategy_sweeps.lora.strategy.rank = (2, 4)
  grid.check_sweeps(tiny_study)
  assert grid.sweep_of(tiny_study.study, "full") == {"learning_rate": (1e-3, 3e-3)}
  assert grid.sweep_of(tiny_study.study, "lora") == {
      "learning_rate": (1e-2,),
      "strategy.rank": (2, 4),
  }
  cells = grid.expand(tiny_study.study)
  names = [c.name for c in cells]
  assert names[1:5] == [
      "wordnet_supersense.bert.full.learning_rate=0.001.seed0",
      "wordnet_supersense.bert.full.learning_rate=0.003.seed0",
      "wordnet_supersense.bert.full.learning_rate=0.001.seed1",
      "wordnet_supersense.bert.full.learning_rate=0.003.seed1",
  ]
  assert names[5] == "wordnet_supersense.bert.lora.learning_rate=0.01+rank=2.seed0"
  assert len(cells) == 1 + 2 * 2 + 2 * 2
  assert len(grid.select(cells, "*.lora.*rank=4.*")) == 2
  child = grid.child_config(cells[5], tiny_study, "/s")
  assert (child.learning_rate, child.optimizer.learning_rate) == (1e-2, 1e-2)
  assert (child.strategy.rank, child.strategy.name, child.seed) == (2, "lora", 0)
  assert cells[5].hparams == {"learning_rate": 1e-2, "strategy.rank": 2}

  tiny_study.study.selection = "first_seed"
  lines = launch.launch_lines(tiny_study, "/s", cells)
  assert lines[1].endswith("# after pretrain-bert")
  assert "exits at once unless its configuration is selected" in lines[3]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("sweep.learning_rate", (1e-3, 1e-3), "listed twice"),
        ("sweep.batch_size", (8, 2.5), "does not fit batch_size"),
        ("strategy_sweeps.lora.strategy.rank", ("four",), "does not fit strategy.rank"),
        ("selection", "best", "choose one of"),
    ],
)
def test_bad_sweeps_fail_before_any_cell_naming_the_key(tiny_study, key, value, message):
  *parents, leaf = key.split(".")
  target = tiny_study.study
  for parent in parents:
    target = target[parent]
  target[leaf] = value
  with pytest.raises(ValueError, match=message) as error:
    grid.check_sweeps(tiny_study)
  assert "selection" in key or f"config.study.{key}" in str(error.value)


def test_sweeps_refuse_grid_axes_and_unknown_keys(tiny_study):
  tiny_study.study.sweep.seed = (0, 1)
  with pytest.raises(ValueError, match=r"config.study.sweep.seed: the study sets seed itself"):
    grid.check_sweeps(tiny_study)
  del tiny_study.study.sweep["seed"]
  tiny_study.study.sweep.optimizer.momentum = (0.9,)
  with pytest.raises(ValueError, match=r"optimizer.momentum is not a fine-tuning config key"):
    grid.check_sweeps(tiny_study)
  del tiny_study.study.sweep.optimizer["momentum"]
  tiny_study.study.sweep.task = ml_collections.ConfigDict(dict(pooling="cls"))
  with pytest.raises(ValueError, match=r"sweep.task.pooling='cls': give a tuple"):
    grid.check_sweeps(tiny_study)
  tiny_study.study.sweep.task = ml_collections.ConfigDict(dict(pooling=("cls", "mean")))
  grid.check_sweeps(tiny_study)
  assert grid.sweep_of(tiny_study.study, "full") == {"task.pooling": ("cls", "mean")}
  tiny_study.study.strategy_sweeps["lorra"] = tiny_study.study.strategy_sweeps.lora
  with pytest.raises(ValueError, match=r"strategy_sweeps.lorra: .*unknown strategy"):
    grid.check_sweeps(tiny_study)


def test_presets_sweep_each_strategy_around_its_own_learning_rate():
  config = study_config.get_config("tiny")
  grid.check_sweeps(config)
  assert grid.sweep_of(config.study, "full") == {"learning_rate": (1e-3, 3e-3, 1e-2)}
  assert grid.sweep_of(config.study, "lora") == {"learning_rate": (3e-3, 1e-2, 3e-2)}
  assert grid.sweep_of(config.study, "prompt_tuning") == {"learning_rate": (1e-2, 3e-2, 1e-1)}
  base = study_config.get_config("tiny,size=base")
  assert grid.sweep_of(base.study, "full") == {"learning_rate": (3e-5, 1e-4, 3e-4)}
  assert grid.sweep_of(base.study, "lora,llrd") == {"learning_rate": (3e-5, 1e-4, 3e-4)}


def test_checkpoints_get_from_scratch_twins(tiny_study, tmp_path):
  tiny_study.study.from_scratch = True
  tiny_study.study.checkpoints = (f"minilm=hf:{tmp_path}",)
  inits = grid.inits(tiny_study.study)
  assert [(i.name, i.twin_of) for i in inits] == [
      ("bert", None),
      ("minilm", None),
      ("bert-scratch", "bert"),
      ("minilm-scratch", "minilm"),
  ]
  twin = next(c for c in grid.expand(tiny_study.study) if ".minilm-scratch." in c.name)
  child = grid.child_config(twin, tiny_study, "/s")
  assert child.from_scratch and child.init_from == f"hf:{tmp_path}"
  assert twin.depends_on is None


def test_init_lr_scale_shifts_one_models_rates_and_its_twins(tiny_study, tmp_path):
  tiny_study.study.from_scratch = True
  tiny_study.study.checkpoints = (f"minilm=hf:{tmp_path}",)
  tiny_study.study.sweep.learning_rate = (1e-3, 3e-3)
  tiny_study.study.init_lr_scale = ("minilm=0.1",)
  grid.check_sweeps(tiny_study)
  assert grid.lr_scales(tiny_study.study) == {
      "bert": 1.0,
      "minilm": 0.1,
      "bert-scratch": 1.0,
      "minilm-scratch": 0.1,
  }
  assert grid.sweep_of(tiny_study.study, "full", "minilm") == {"learning_rate": (1e-4, 3e-4)}
  names = [c.name for c in grid.expand(tiny_study.study)]
  assert "wordnet_supersense.minilm-scratch.full.learning_rate=0.0003.seed1" in names
  assert "wordnet_supersense.bert.full.learning_rate=0.003.seed1" in names
  cell = next(c for c in grid.expand(tiny_study.study) if ".minilm.full." in c.name)
  assert grid.child_config(cell, tiny_study, "/s").optimizer.learning_rate == 1e-4
  tiny_study.study.init_lr_scale = ("minilm=0.1", "minilm-scratch=3")
  assert grid.sweep_of(tiny_study.study, "full", "minilm-scratch") == {
      "learning_rate": (3e-3, 1e-2)
  }
  for bad, message in (
      ("gpt=0.1", "one of the inits"),
      ("minilm=fast", "is not a number"),
      ("minilm=-1", "must be positive"),
      ("minilm=0.1", "a rate twice"),  # 1e-4 and 1.5e-4 snap to one rung
  ):
    tiny_study.study.sweep.learning_rate = (1e-3, 1.5e-3) if "twice" in message else (1e-3,)
    tiny_study.study.init_lr_scale = (bad,)
    with pytest.raises(ValueError, match=message) as error:
      grid.check_sweeps(tiny_study)
    assert "config.study.init_lr_scale" in str(error.value)


class Interrupted(BaseException):
  """Like a Ctrl-C or a preempted host: not a cell failure, so the study stops."""


@pytest.mark.slow
def test_a_study_survives_interruption_and_aggregates_its_seeds(tiny_study, tmp_path, monkeypatch):
  original, calls = finetune.run, []

  def interrupt_the_third(config, workdir):
    calls.append(os.path.basename(workdir))
    if len(calls) == 3:
      raise Interrupted()
    return original(config, workdir)

  monkeypatch.setattr(finetune, "run", interrupt_the_third)
  with pytest.raises(Interrupted):
    study.run(tiny_study, str(tmp_path))
  monkeypatch.setattr(finetune, "run", original)
  cells = json.loads((tmp_path / "study.json").read_text())["cells"]
  assert [grid.status(str(tmp_path), grid.Cell(**c)) for c in cells] == [
      "finished",
      "finished",
      "finished",
      "pending",
      "pending",
  ]

  tiny_study.study.keep_checkpoints = False
  result = study.run(tiny_study, str(tmp_path))  # resumes: only the last two cells run
  assert not result["failed"]
  for cell in cells[1:]:  # cells finished before the flag keep their resumable checkpoints
    kept = (tmp_path / cell["workdir"] / workdir_lib.CHECKPOINTS).exists()
    assert kept == (cell["index"] < 3) and (tmp_path / cell["workdir"] / workdir_lib.BEST).exists()
  assert (tmp_path / "runs" / "pretrain-bert" / workdir_lib.CHECKPOINTS).exists()
  for name in ("results.md", "results.csv", "results.tex"):
    assert (tmp_path / name).stat().st_size > 0
  for cell in cells[1:]:
    assert (tmp_path / cell["workdir"] / "results.json").exists()

  def child(name):
    return json.loads((tmp_path / "runs" / name / "results.json").read_text())

  for strategy in ("full", "lora"):
    accuracies = [
        child(f"wordnet_supersense.bert.{strategy}.seed{s}")["metrics"]["test/accuracy"]
        for s in (0, 1)
    ]
    row = next(r for r in result["report"]["summary"] if r["strategy"] == strategy)
    assert row["test/accuracy.mean"] == pytest.approx(np.mean(accuracies))
    assert row["test/accuracy.std"] == pytest.approx(np.std(accuracies, ddof=1))


@pytest.mark.slow
def test_a_swept_study_selects_on_validation_and_reports_failures(
    tiny_study, tmp_path, monkeypatch
):
  """First-seed selection over learning rate × steps: the winner is the best-validation
  configuration of the children's own results.json files, only its cells give test scores,
  the losers' later seeds never run, a failing configuration is listed and ineligible, and
  train FLOPs grow with the steps."""
  tiny_study.study.strategies = ("full",)
  tiny_study.study.selection = "first_seed"
  tiny_study.study.sweep.learning_rate = (1e-3, 1e-2)
  tiny_study.study.sweep.total_steps = (2, 4)
  original = finetune.run

  def diverge(config, workdir):
    if config.learning_rate == 1e-2 and config.total_steps == 4:
      raise FloatingPointError("train/loss is nan at step 3")
    return original(config, workdir)

  monkeypatch.setattr(finetune, "run", diverge)
  result = study.run(tiny_study, str(tmp_path))
  names = result["cells"]
  first = [n for n in names if n.endswith("seed0") and n != "pretrain-bert"]
  assert len(first) == 4 and sum(o == "skipped" for o in names.values()) == 3  # of 4 seed1s
  assert result["failed"] == [
      "wordnet_supersense.bert.full.learning_rate=0.01+total_steps=4" ".seed0"
  ]

  def child(name):
    path = tmp_path / "runs" / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None

  seed0 = {n: child(n) for n in first}
  finished = {n: r["metrics"]["validation/accuracy"] for n, r in seed0.items() if r}
  best = max(finished, key=finished.get)  # sweep order breaks ties, as selection does
  winner = best.removesuffix(".seed0")
  summary = result["report"]["summary"][0]
  assert winner.endswith(summary["selected_hparams"].replace(", ", "+"))
  assert child(f"{winner}.seed1") is not None  # the winner's later seed ran
  losers = [n.removesuffix(".seed0") for n in first if not n.startswith(winner)]
  assert all(child(f"{loser}.seed1") is None for loser in losers)

  tests = [child(f"{winner}.seed{s}")["metrics"]["test/accuracy"] for s in (0, 1)]
  assert summary["test/accuracy.mean"] == pytest.approx(np.mean(tests))
  if np.std(tests) > 0:
    low, high = stats.t.interval(0.95, 1, loc=np.mean(tests), scale=stats.sem(tests))
    assert summary["test/accuracy.ci95"] == pytest.approx((high - low) / 2)
  assert summary["n"] == 2 and summary["train_flops.mean"] > 0

  flops = {n: r["compute"]["train_flops"] for n, r in seed0.items() if r}
  short, long = (
      flops[f"wordnet_supersense.bert.full.learning_rate=0.001+total_steps={t}.seed0"]
      for t in (2, 4)
  )
  assert long == pytest.approx(2 * short)

  with open(tmp_path / "sweep.csv") as f:
    sweep = list(csv.DictReader(f))
  assert len(sweep) == 4 and sum(r["selected"] == "selected" for r in sweep) == 1
  diverged = next(r for r in sweep if r["hparams"] == "learning_rate=0.01, total_steps=4")
  assert diverged["status"] == "failed" and diverged["eligible"] == "False"
  assert (
      "FloatingPointError"
      in (
          tmp_path
          / "runs"
          / ("wordnet_supersense.bert.full.learning_rate=0.01+total_steps=4.seed0")
          / "error.txt"
      ).read_text()
  )

  rerun = study.run(tiny_study, str(tmp_path))  # resumes: nothing left to train
  assert rerun["cells"] == names


def test_every_preset_expands_with_valid_sweeps():
  from configs import quickstart

  for name in study_config.PRESETS:
    config = study_config.get_config(name)
    grid.check_sweeps(config)
    grid.check_compress(config)
    assert all(grid.sweep_of(config.study, s)["learning_rate"] for s in config.study.strategies)
    assert grid.expand(config.study)
  compression = grid.expand(study_config.get_config("compression").study)
  groups = {c.group["strategy"] for c in compression if c.kind != "pretrain"}
  assert groups == {f"{s}{m}" for s in ("full", "qat", "lora") for m in ("", "@int8", "@int4w")}
  assert all("quantize_base=int8" in c.name for c in compression if "lora" in c.name)
  quick = quickstart.get_config()
  grid.check_sweeps(quick)
  assert quick.study.selection == "first_seed" and len(quick.study.seeds) >= 5

  multitask = grid.expand(study_config.get_config("multitask").study)
  assert {c.group["task"] for c in multitask if c.kind == "finetune"} == {
      "wordnet_supersense",
      "wordnet_relation",
      "wordnet_supersense+wordnet_relation",
  }

  reuse = study_config.get_config("reuse")
  assert len(reuse.study.strategies) >= 10 and len(reuse.study.tasks) >= 2
  assert [i.name for i in grid.inits(reuse.study)] == [
      "bert",
      "minilm",
      "bert-scratch",
      "minilm-scratch",
  ]
  assert reuse.study.checkpoints[0].startswith("minilm=hf:") and len(reuse.study.seeds) == 3
  assert grid.sweep_of(reuse.study, "full", "minilm-scratch") == {
      "learning_rate": (1e-4, 3e-4, 1e-3)
  }
  assert grid.sweep_of(reuse.study, "full", "bert") == {"learning_rate": (1e-3, 3e-3, 1e-2)}
  assert os.path.exists(os.path.join(reuse.study.checkpoints[0].split(":", 1)[1], "config.json"))


# Compression as a study axis: each fine-tuned cell quantized after training is a group of
# its own ("full@int8w"), selected on its own validation scores, compared with its float self
# and set against its stored bytes in the tables and plots.
@pytest.mark.parametrize(
    "entries, task, message",
    [
        (("none", "int3"), "wordnet_supersense", r"entry 'int3' is not one of \('none', 'int8'"),
        (("int8w", "int8w"), "wordnet_supersense", "entry 'int8w' is listed twice"),
        (("int8",), "wordnet_definition", "quantizes activations, which seq2seq task"),
        (("int8w",), "wordnet_supersense+wordnet_relation", "is a multi-task mixture"),
    ],
)
def test_bad_compression_entries_fail_before_any_cell(tiny_study, tmp_path, entries, task, message):
  tiny_study.study.compress = entries
  tiny_study.study.tasks = (task,)
  with pytest.raises(ValueError, match=message):
    study.run(tiny_study, str(tmp_path / "W"))
  assert not (tmp_path / "W").exists()


def test_compressed_cells_follow_their_float_cells_per_seed(tiny_study):
  tiny_study.study.strategies = ("full",)
  tiny_study.study.compress = ("none", "int8w")
  tiny_study.study.sweep.learning_rate = (1e-3, 1e-2)
  cells = grid.expand(tiny_study.study)
  assert [(c.kind, c.name, c.depends_on) for c in cells[1:5]] == [
      ("finetune", "wordnet_supersense.bert.full.learning_rate=0.001.seed0", "pretrain-bert"),
      ("finetune", "wordnet_supersense.bert.full.learning_rate=0.01.seed0", "pretrain-bert"),
      (
          "compress",
          "wordnet_supersense.bert.full@int8w.learning_rate=0.001.seed0",
          "wordnet_supersense.bert.full.learning_rate=0.001.seed0",
      ),
      (
          "compress",
          "wordnet_supersense.bert.full@int8w.learning_rate=0.01.seed0",
          "wordnet_supersense.bert.full.learning_rate=0.01.seed0",
      ),
  ]
  assert cells[3].group["strategy"] == "full@int8w" and cells[3].hparams == cells[1].hparams
  child = grid.child_config(cells[3], tiny_study, "/S")
  assert child.experiment == "compress" and child.quantize.weights == "int8"
  assert child.init_from == "/S/runs/wordnet_supersense.bert.full.learning_rate=0.001.seed0"


@pytest.mark.slow
def test_a_compressed_study_selects_compares_and_plots_by_bytes(tiny_study, tmp_path):
  tiny_study.study.strategies = ("full",)
  tiny_study.study.compress = ("none", "int8w")
  tiny_study.study.selection = "first_seed"
  tiny_study.study.sweep.learning_rate = (1e-3, 1e-2)
  result = study.run(tiny_study, str(tmp_path))
  outcome = result["cells"]
  assert not result["failed"]
  assert sum(s == "skipped" for s in outcome.values()) in (1, 2)  # losers' later seeds

  def child(name):
    path = tmp_path / "runs" / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None

  summary = {line["strategy"]: line for line in result["report"]["summary"]}
  assert set(summary) == {"full", "full@int8w"}
  quantized = summary["full@int8w"]
  assert quantized["n"] == 2 and quantized["configurations"] == 2
  winner = "learning_rate=" + quantized["selected_hparams"].removeprefix("learning_rate=")
  for seed in (0, 1):  # the compressed winner's later seed ran, and so did its float cell
    float_cell = child(f"wordnet_supersense.bert.full.{winner}.seed{seed}")
    compressed = child(f"wordnet_supersense.bert.full@int8w.{winner}.seed{seed}")
    assert compressed["compute"] == float_cell["compute"]
    assert compressed["model_bytes"] < 0.3 * float_cell["model_bytes"]
    assert compressed["reference"]["model_bytes"] == float_cell["model_bytes"]
  assert quantized["model_bytes.mean"] < 0.3 * summary["full"]["model_bytes.mean"]

  pairs = [(r["a"], r["b"], r["kind"]) for r in result["report"]["comparisons"]]
  assert ("bert/full@int8w", "bert/full", "compressed vs float") in pairs
  assert not any(kind == "strategy vs full" and "@" in a for a, _, kind in pairs)
  table = (tmp_path / "results.md").read_text()
  assert "model (MB)" in table and "Δ vs float" in table and "full@int8w" in table
  assert (tmp_path / "plots" / "score_vs_bytes_wordnet_supersense.png").stat().st_size > 0
  assert study.run(tiny_study, str(tmp_path))["cells"] == outcome  # a re-run trains nothing


def test_adapt_steps_add_an_adapted_init_per_model(tiny_study, tmp_path):
  tiny_study.study.from_scratch = True
  tiny_study.study.adapt_steps = (0, 5)
  tiny_study.study.init_lr_scale = ("bert=3",)
  inits = grid.inits(tiny_study.study)
  assert [(i.name, i.adapt_steps, i.adapted_from) for i in inits] == [
      ("bert", 0, None),
      ("bert+adapt5", 5, "bert"),
      ("scratch", 0, None),
  ]
  assert grid.lr_scales(tiny_study.study)["bert+adapt5"] == 3.0  # follows its model
  cells = grid.expand(tiny_study.study)
  adapted = [c for c in cells if ".bert+adapt5." in c.name]
  assert len(adapted) == 2 * 2 and {c.depends_on for c in adapted} == {"pretrain-bert"}
  child = grid.child_config(adapted[0], tiny_study, "/s")
  assert child.adapt.steps == 5 and child.init_from == "/s/runs/pretrain-bert"
  assert not child.from_scratch
  assert grid.child_config(cells[1], tiny_study, "/s").adapt.steps == 0
  for steps, message in (((5, 5), "distinct step counts"), ((-1,), "distinct step counts")):
    tiny_study.study.adapt_steps = steps
    with pytest.raises(ValueError, match=message):
      grid.inits(tiny_study.study)
  tiny_study.study.adapt_steps = (5,)
  tiny_study.study.checkpoints = (f"minilm=hf:{tmp_path}",)
  with pytest.raises(ValueError, match=r"imported checkpoints \['minilm'\]"):
    grid.inits(tiny_study.study)


@pytest.mark.slow
def test_an_adapted_study_compares_each_adapted_init_with_its_model(tiny_study, tmp_path):
  tiny_study.study.strategies = ("full",)
  tiny_study.study.adapt_steps = (0, 2)
  result = study.run(tiny_study, str(tmp_path))
  assert not result["failed"]
  cell = tmp_path / "runs" / "wordnet_supersense.bert+adapt2.full.seed0"
  assert json.loads((cell / workdir_lib.RESULTS).read_text())["adapt"]["steps"] == 2
  assert (cell / workdir_lib.ADAPT / workdir_lib.RESULTS).exists()
  pairs = [r for r in result["report"]["comparisons"] if r["kind"] == "adapted vs not"]
  assert {(r["a"], r["b"]) for r in pairs} == {("bert+adapt2/full", "bert/full")}
  table = (tmp_path / "results.md").read_text()
  assert "Δ vs not adapted" in table and "bert+adapt2" in table
  assert "continues <model>'s pretraining objective" in table


@pytest.mark.slow
def test_a_multitask_study_sets_each_task_beside_its_single_task_run(tiny_study, tmp_path):
  """A study task "a+b" gives each member a row of its own table, marked +multitask, with its
  own metrics and predictions, compared with the member's single-task row; under a first-seed
  sweep a mixture's later seeds run where either task selected the rate."""
  tiny_study.study.strategies = ("full",)
  tiny_study.study.seeds = (0, 1)
  tiny_study.study.selection = "first_seed"
  tiny_study.study.sweep.learning_rate = (1e-3, 3e-3)
  tiny_study.study.tasks = ("wordnet_supersense", "wordnet_supersense+wordnet_relation")
  result = study.run(tiny_study, str(tmp_path))
  assert not result["failed"]

  def mixture_results(hparams: str, seed: int) -> dict:
    name = f"wordnet_supersense+wordnet_relation.bert.full.{hparams}.seed{seed}"
    return json.loads((tmp_path / "runs" / name / workdir_lib.RESULTS).read_text())

  summary = {(s["task"], s["init"]): s for s in result["report"]["summary"]}
  for member in ("wordnet_supersense", "wordnet_relation"):
    line = summary[(member, "bert+multitask")]
    seeds = [mixture_results(line["selected_hparams"], seed) for seed in (0, 1)]
    assert line["test/accuracy.mean"] == pytest.approx(
        np.mean([r["metrics"][f"test/{member}/accuracy"] for r in seeds])
    )
  pairs = [r for r in result["report"]["comparisons"] if r["kind"] == "multi-task vs single-task"]
  assert {(r["task"], r["a"], r["b"]) for r in pairs} == {
      ("wordnet_supersense", "bert+multitask/full", "bert/full")
  }
  table = (tmp_path / "results.md").read_text()
  assert "Δ vs single-task" in table and "bert+multitask" in table
  assert "fine-tuned with the other tasks of its mixture" in table
