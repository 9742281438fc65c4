"""LLMEmb stage 1 (SCFT) on a tiny randomly initialised Llama built here, saved to a tmp dir and loaded with
``from_pretrained`` (no hub): attribute-dropout views equal the reference algorithm, one step lowers the loss on
a fixed batch, the temperature learns, the store is aligned, runs resume and refuse mixed options; the
``attributes`` source and the ``run:RUN`` collaborative store."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import write_cycle_dataset

from mmseqrec.data import DatasetDir
from mmseqrec.embed.llmemb import ScftConfig, load_scft_encoder
from mmseqrec.embed.pipeline import EmbedConfig, run_embed
from mmseqrec.embed.sources import TEXT_PREFIX, text_inputs
from mmseqrec.embed.store import load_embedding
from mmseqrec.errors import InputError
from mmseqrec.models.llmemb import attribute_dropout_views

torch.set_num_threads(1)
N_ITEMS = 12
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation"]


def _ref_dropout_feature(item_str, ratio, rnd):
    """Reference ``dropout_feature`` (``llm/data_processor/llama.py``), written from the code with ``rnd`` in
    place of the ``random`` module."""
    instruction = item_str.split("\n")[0]
    feat_list = item_str.split("\n")[1].split(";")
    feat_list_1 = copy.deepcopy(feat_list)
    feat_list_2 = copy.deepcopy(feat_list)
    rnd.shuffle(feat_list_1)
    rnd.shuffle(feat_list_2)
    for _ in range(int(len(feat_list) * ratio)):
        feat_list_1.pop()
        feat_list_2.pop()
    s1 = instruction + "\n"
    s2 = instruction + "\n"
    if len(feat_list) > 1:
        for i in range(len(feat_list_1)):
            s1 += feat_list_1[i] + ";"
            s2 += feat_list_2[i] + ";"
    return s1[:-1], s2[:-1]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) with a word-level tokenizer over the test vocabulary, saved to disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = set((TEXT_PREFIX + " name is categories are Item ; , :").replace(";", " ; ").split())
    words |= {g for g in GENRES} | {str(i) for i in range(N_ITEMS + 1)} | {"Sci", "-", "Fi"}
    vocab = {w: k for k, w in enumerate(["<unk>", "<eos>", "<pad>"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                                                pad_token="<pad>")
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, pad_token_id=2, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    root = write_cycle_dataset(tmp_path / "ds", n_users=20, n_items=N_ITEMS, seq_len=6)
    items = pl.read_parquet(root / "items.parquet").with_columns(
        pl.Series("categories", [f"{GENRES[i % 8]}, {GENRES[(i * 3 + 1) % 8]}; {GENRES[(i + 5) % 8]}"
                                 for i in range(N_ITEMS)]))
    items.write_parquet(root / "items.parquet")
    return root


def _cfg(**kw) -> ScftConfig:
    base = {"steps": 2, "batch_size": 4, "lr": 1e-2, "lora_rank": 4, "lora_dropout": 0.0, "max_length": 64,
            "save_every": 1}
    return ScftConfig(**{**base, **kw})


def test_attribute_dropout_views_equal_the_reference_algorithm():
    text = "The item has following attributes: \n name is A; brand is B; categories are C; text is D; x is E"
    for seed in range(20):
        assert attribute_dropout_views(text, 0.4, random.Random(seed)) == \
            _ref_dropout_feature(text, 0.4, random.Random(seed))
    a, b = attribute_dropout_views(text, 0.4, random.Random(3))
    feats = text.split("\n")[1].split(";")
    for v in (a, b):
        head, body = v.split("\n")
        assert head == text.split("\n")[0]
        kept = body.split(";")
        assert len(kept) == 5 - int(5 * 0.4) == 3 and set(kept) <= set(feats) and len(set(kept)) == 3
    differ = sum(attribute_dropout_views(text, 0.4, random.Random(s))[0]
                 != attribute_dropout_views(text, 0.4, random.Random(s))[1] for s in range(20))
    assert differ >= 15  # two independent shuffles
    one = "instr\n name is A"
    assert attribute_dropout_views(one, 0.4, random.Random(0)) == ("instr", "instr") == \
        _ref_dropout_feature(one, 0.4, random.Random(0))
    assert attribute_dropout_views(text, 0.0, random.Random(0))[0].count(";") == 4


def test_attributes_source_layout(data_dir):
    t = text_inputs(DatasetDir(data_dir), "attributes").texts
    head, body = t[1].split("\n")
    assert head == TEXT_PREFIX and body.startswith(" name is Item 1; categories are ")
    assert body.count(";") == 1  # the ';' inside the value became ',': one attribute stays one unit


def test_one_step_lowers_the_loss_and_the_temperature_learns(tiny_llm):
    enc = load_scft_encoder(str(tiny_llm), _cfg())
    chosen = [f"{TEXT_PREFIX}\n name is Item {i}; categories are {GENRES[i % 8]}" for i in range(1, 7)]
    rejected = [f"{TEXT_PREFIX}\n categories are {GENRES[i % 8]}" for i in range(1, 7)]
    params = enc.trainable()
    assert "tau" in params and params["tau"].requires_grad and float(params["tau"].detach()) == 3.0
    assert any("lora_" in k for k in params) and all(p.requires_grad for p in params.values())
    frozen = [n for n, p in enc.model.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n for n in frozen)  # the LLM itself stays frozen
    opt = enc.make_optimizer()
    enc.model.eval()
    with torch.no_grad():
        before = float(enc.loss(chosen, rejected))
    loss0 = enc.train_step(opt, chosen, rejected, lr=1e-2)
    enc.model.eval()
    with torch.no_grad():
        after = float(enc.loss(chosen, rejected))
    assert loss0 == pytest.approx(before, rel=1e-5) and after < before
    assert float(enc.temperature.tau) != 3.0


def test_tokens_are_prompt_plus_eos_right_padded(tiny_llm):
    enc = load_scft_encoder(str(tiny_llm), _cfg(max_length=4))
    ids, mask = enc.tokenize(["name is Item 1 ; categories", "name"])
    eos, pad = enc.tokenizer.eos_token_id, enc.pad_id
    assert ids.shape == (2, 4) and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert ids[0, 3] == eos and ids[1, 1] == eos and ids[1, 2:].tolist() == [pad, pad]


def test_embed_llmemb_store_is_aligned_and_resumes(tiny_llm, data_dir):
    cfg = EmbedConfig(source="attributes", encoder=f"llmemb:{tiny_llm}", out="scft", batch_size=5,
                      progress=False, scft=_cfg(steps=2))
    res = run_embed(data_dir, cfg)
    store = load_embedding(data_dir, "scft")
    assert store.matrix.shape == (N_ITEMS + 1, 32) and not store.matrix[0].any()  # PCA 1536 clipped to H
    assert np.abs(store.matrix[1:]).sum(1).min() > 0
    m = store.meta
    assert m["pca"]["n_components"] == 32 and m["normalize"] is False and m["source"] == "attributes"
    assert m["scft"]["steps"] == 2 and m["scft"]["resumed_from"] == 0 and m["scft"]["n_train_items"] == N_ITEMS
    work = Path(data_dir) / "embed" / "scft.scft"
    assert json.loads((work / "state.json").read_text())["step"] == 2
    # rows follow the item ids: re-encoding item 3 alone with the tuned model gives its row before PCA
    assert res.matrix.shape[0] == N_ITEMS + 1
    # more steps with otherwise equal options continue from step 2
    cfg3 = cfg.model_copy(update={"scft": _cfg(steps=3)})
    with pytest.raises(InputError, match="another model, options or inputs"):
        run_embed(data_dir, cfg3)  # steps are part of the signature: a longer run is a new run
    cfg_same = cfg.model_copy(update={"out": "scft"})
    res2 = run_embed(data_dir, cfg_same)
    assert res2.meta["scft"]["resumed_from"] == 2  # nothing left to train: loaded, not retrained


def test_llmemb_needs_attribute_prompts(tiny_llm, data_dir):
    cfg = EmbedConfig(source="title", encoder=f"llmemb:{tiny_llm}", out="bad", progress=False, scft=_cfg())
    with pytest.raises(InputError, match="--source attributes"):
        run_embed(data_dir, cfg)
    with pytest.raises(InputError, match="no such model directory"):
        run_embed(data_dir, cfg.model_copy(update={"encoder": "llmemb:/nonexistent/dir"}))


def test_run_source_writes_the_item_table(data_dir, tmp_path):
    from mmseqrec.train.config import load_experiment
    from mmseqrec.train.run import load_run
    from mmseqrec.train.trainer import train

    cfg = load_experiment(None, [f"data.path={data_dir}", "item_encoder.dim=16", "train.epochs=1",
                                 "train.progress=false", "model.max_len=5", "eval.protocol=full"])
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    res = run_embed(data_dir, EmbedConfig(source=f"run:{run_dir}", out="collab", progress=False))
    store = load_embedding(data_dir, "collab")
    table = load_run(run_dir, device="cpu").model.item_encoder.table()[0, : N_ITEMS + 1].detach().numpy()
    assert store.matrix.shape == (N_ITEMS + 1, 16) and not store.matrix[0].any()
    np.testing.assert_allclose(store.matrix[1:].astype(np.float32), table[1:], atol=2e-3, rtol=2e-3)  # float16
    assert store.meta["run"]["path"] == str(run_dir.resolve()) and store.meta["normalize"] is False
    assert store.meta["run"]["model"] == "sasrec" and store.meta["run"]["item_encoder"] == "id"
    assert res.meta["source"] == f"run:{run_dir}"
    with pytest.raises(InputError, match="not a run directory"):
        run_embed(data_dir, EmbedConfig(source=f"run:{tmp_path}", out="x", progress=False))
    with pytest.raises(InputError, match="no --encoder"):
        run_embed(data_dir, EmbedConfig(source=f"run:{run_dir}", encoder="minilm", progress=False))


def test_stage2_trains_with_the_collaborative_store_of_a_run(data_dir, tmp_path):
    from mmseqrec.embed.store import save_embedding
    from mmseqrec.train.config import load_experiment
    from mmseqrec.train.trainer import train

    common = [f"data.path={data_dir}", "train.epochs=1", "train.progress=false", "model.max_len=5",
              "eval.protocol=full", "item_encoder.dim=16"]
    train(load_experiment(None, common), tmp_path / "collab")
    run_embed(data_dir, EmbedConfig(source=f"run:{tmp_path / 'collab'}", out="sasrec-collab", progress=False))
    rng = np.random.default_rng(0)
    save_embedding(data_dir, "llmemb", rng.normal(size=(N_ITEMS + 1, 24)).astype(np.float32), {"encoder": "test"})
    cfg = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "llmemb.yaml",
                          common + ["train.max_len=5", "eval.protocol=full"])
    assert cfg.item_encoder.collab == "sasrec-collab" and cfg.item_encoder.name == "llmemb"
    train(cfg, tmp_path / "llmemb")
    log = [json.loads(x) for x in (tmp_path / "llmemb" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"]["align"] > 0


def test_llmemb_configs_validate():
    from mmseqrec.config import load_config
    from mmseqrec.embed.llmemb import ScftConfig
    from mmseqrec.train.config import load_experiment

    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_experiment(root / "llmemb.yaml").item_encoder.dim == 128
    assert load_experiment(root / "llmemb-collab.yaml").item_encoder.dim == 128
    assert load_config(ScftConfig, root / "llmemb-scft.yaml") == ScftConfig()  # the file states the defaults


def test_cli_llmemb_stage1(tiny_llm, data_dir, tmp_path, capsys):
    from mmseqrec.cli import main

    opts = tmp_path / "scft.yaml"
    opts.write_text("steps: 1\nbatch_size: 4\nlora_rank: 2\nmax_length: 32\n")
    with pytest.raises(SystemExit) as ok:
        main(["embed", str(data_dir), "--source", "attributes", "--encoder", f"llmemb:{tiny_llm}", "--out", "st1",
              "--scft", str(opts), "--scft-set", "pooling=last", "--pca", "8", "--device", "cpu", "--no-progress"])
    assert ok.value.code == 0
    out = capsys.readouterr().out
    assert "st1.safetensors" in out and "llmemb stage 1: 1 steps" in out
    meta = json.loads((Path(data_dir) / "embed" / "st1.json").read_text())
    assert meta["dim"] == 8 and meta["pooling"] == "last" and meta["scft"]["config"]["lora_rank"] == 2
    assert meta["normalize"] is False
    with pytest.raises(SystemExit) as bad:  # stage-1 options without a stage-1 encoder: one line, exit 2
        main(["embed", str(data_dir), "--scft-set", "steps=2", "--no-progress"])
    assert bad.value.code == 2 and "llmemb:" in capsys.readouterr().err
