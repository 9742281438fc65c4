"""prepare: filters (hand-computed), id assignment, ordering, manifest, atomicity, errors, CLI and download."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from mmseqrec.cli import app, main
from mmseqrec.data import DatasetDir, PrepareConfig, prepare, prepare_raw
from mmseqrec.data.preprocess import kcore_filter
from mmseqrec.data.raw import RawData
from mmseqrec.errors import InputError, MmseqrecError


def _csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text(
        "user_id,item_id,timestamp,rating\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    return path


# u1: a b c / u2: a b / u3: c d / u4: d  (hand-worked in the comments of each test)
KCORE_ROWS = [
    ("u1", "a", 1, 5),
    ("u1", "b", 2, 5),
    ("u1", "c", 3, 5),
    ("u2", "a", 1, 5),
    ("u2", "b", 2, 5),
    ("u3", "c", 1, 5),
    ("u3", "d", 2, 5),
    ("u4", "d", 1, 5),
]


def _seqs(ds: DatasetDir) -> dict[str, list[str]]:
    ids = ds.item_ids()
    users = ds.users.sort("user")["user_id"].to_list()
    return {u: [ids[i] for i in ds.sequences.sequence(k + 1)] for k, u in enumerate(users)}


def test_defaults_change_nothing(tmp_path):
    src = _csv(tmp_path / "x.csv", KCORE_ROWS + [("u1", "a", 0, 1)])
    ds = prepare("table", [src], tmp_path / "o", rating_col="rating")
    assert ds.manifest["filters"] == [] and ds.manifest["n_interactions"] == 9
    assert _seqs(ds)["u1"] == ["a", "a", "b", "c"]  # the duplicate (t=0) is kept and sorted first


def test_iterative_kcore_hand_computed(tmp_path):
    # round 1 drops u4 (1 inter); then d has 1 -> drop u3-d; u3 has 1 -> drop u3-c; c has 1 -> drop u1-c
    src = _csv(tmp_path / "x.csv", KCORE_ROWS)
    ds = prepare("table", [src], tmp_path / "o", min_user_inter=2, min_item_inter=2)
    assert _seqs(ds) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    f = ds.manifest["filters"][0]
    assert (f["name"], f["mode"], f["rows_before"], f["rows_after"], f["rounds"]) == (
        "kcore",
        "iterative",
        8,
        4,
        5,
    )
    assert (ds.n_users, ds.n_items) == (2, 2)


def test_single_pass_llm_esr_hand_computed(tmp_path):
    # counts once: u4 has 1 -> its row goes; every item has 2; then users with < 2 remaining: none
    src = _csv(tmp_path / "x.csv", KCORE_ROWS)
    ds = prepare("table", [src], tmp_path / "o", min_user_inter=2, min_item_inter=2, kcore="single-pass")
    assert _seqs(ds) == {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["c", "d"]}
    assert ds.manifest["filters"][0]["rows_after"] == 7 and ds.manifest["filters"][0]["min_len"] == 2
    # no item has 3 interactions: everything goes, which is an error (nothing is written)
    with pytest.raises(InputError, match="no interactions left"):
        prepare("table", [src], tmp_path / "o2", min_item_inter=3, kcore="single-pass")
    assert not (tmp_path / "o2").exists()


def test_dedup_rating_threshold_and_tie_order(tmp_path):
    rows = [("u", "x", 5, 4), ("u", "y", 5, 2), ("u", "x", 3, 5), ("u", "z", 5, 5), ("v", "x", 1, 3)]
    src = _csv(tmp_path / "x.csv", rows)
    ds = prepare("table", [src], tmp_path / "o", rating_col="rating")
    # t=3 x, then the t=5 tie in file order: x, y, z
    assert _seqs(ds)["u"] == ["x", "x", "y", "z"]
    ds = prepare("table", [src], tmp_path / "first", rating_col="rating", dedup="first")
    assert _seqs(ds)["u"] == ["x", "y", "z"] and ds.interactions["rating"].to_list()[:1] == [5.0]
    ds = prepare("table", [src], tmp_path / "last", rating_col="rating", dedup="last")
    assert _seqs(ds)["u"] == ["x", "y", "z"] and ds.interactions["rating"].to_list()[0] == 4.0
    ds = prepare("table", [src], tmp_path / "thr", rating_col="rating", min_rating=4, dedup="first")
    assert _seqs(ds) == {"u": ["x", "z"]}
    assert [f["name"] for f in ds.manifest["filters"]] == ["rating_threshold", "dedup"]
    assert ds.manifest["filters"][0]["rows_after"] == 3
    with pytest.raises(InputError, match="rating"):
        prepare("table", [src], tmp_path / "nor", min_rating=4)


def test_ids_numeric_order_and_layout(tmp_path):
    rows = [("10", "200", 1, 1), ("9", "30", 1, 1), ("10", "30", 0, 1)]
    ds = prepare("table", [_csv(tmp_path / "x.csv", rows)], tmp_path / "o")
    assert ds.users["user_id"].to_list() == ["9", "10"] and ds.items["item_id"].to_list() == ["30", "200"]
    inter = ds.interactions
    assert inter.schema == {"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64}
    assert inter.rows() == [(1, 1, 1), (2, 1, 0), (2, 2, 1)]
    m = ds.manifest
    assert m["outputs"].keys() == {"interactions.parquet", "items.parquet", "users.parquet"}
    from mmseqrec.fileio import sha256_file

    assert m["outputs"]["items.parquet"] == sha256_file(ds.path / "items.parquet")
    assert m["inputs"][0]["sha256"] == sha256_file(tmp_path / "x.csv")
    assert m["split"] == {"kind": "leave_one_out", "min_len": 3}
    mixed = [("b", "10", 1, 1), ("a", "9", 2, 1), ("a", "x", 3, 1)]
    ds = prepare("table", [_csv(tmp_path / "y.csv", mixed)], tmp_path / "o2")
    assert ds.items["item_id"].to_list() == ["10", "9", "x"]  # not all integers -> string order


def test_kcore_stable_on_random_data():
    rng = np.random.default_rng(0)
    n = 5000
    df = pl.DataFrame(
        {
            "user": rng.integers(0, 300, n).astype(np.uint32),
            "item": rng.zipf(1.5, n).astype(np.uint32) % 500,
            "timestamp": np.arange(n),
            "_row": np.arange(n),
        }
    )
    cfg = PrepareConfig(min_user_inter=5, min_item_inter=5)
    once, rec = kcore_filter(df, cfg)
    twice, rec2 = kcore_filter(once, cfg)
    assert rec["rows_after"] < n and twice.height == once.height and rec2["rounds"] == 1
    assert once.group_by("user").len()["len"].min() >= 5 and once.group_by("item").len()["len"].min() >= 5


def test_atomic_failure_leaves_nothing(tmp_path):
    def boom(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("asset writer failed")

    raw = RawData(
        interactions=pl.DataFrame({"user_id": ["a"], "item_id": ["b"], "timestamp": [1]}), assets=boom
    )
    with pytest.raises(RuntimeError):
        prepare_raw(raw, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    ok = RawData(
        interactions=raw.interactions, assets=lambda d: (d / "images").mkdir(), labels={"synthetic": "true"}
    )
    ds = prepare_raw(ok, tmp_path / "out")
    assert (ds.path / "images").is_dir() and ds.manifest["labels"] == {"synthetic": "true"}
    with pytest.raises(InputError, match="already exists"):
        prepare_raw(ok, tmp_path / "out")
    before = ds.manifest["created"]
    assert prepare_raw(ok, tmp_path / "out", overwrite=True).manifest["n_users"] == 1 and before


def test_cli_prepare_info_and_errors(tmp_path, capsys):
    src = _csv(tmp_path / "x.csv", KCORE_ROWS)
    out = tmp_path / "ds"
    main_args = [
        "prepare",
        "--format",
        "table",
        str(src),
        "--out",
        str(out),
        "--rating-col",
        "rating",
        "--min-user-inter",
        "2",
        "--min-item-inter",
        "2",
        "--single-pass",
    ]
    with pytest.raises(SystemExit) as ei:
        main(main_args)
    assert ei.value.code == 0
    assert DatasetDir(out).manifest["filters"][0]["mode"] == "single-pass"
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 0
    assert "n_interactions" in res.output and "single-pass" in res.output and "sha256" in res.output
    # a second run without --overwrite: one line, exit 2; a bad file: names file, line and field
    with pytest.raises(SystemExit) as ei:
        main(main_args)
    assert ei.value.code == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user_id": "u", "parent_asin": "p", "timestamp": 1}\n{"user_id": "u", "parent_asin": }\n'
    )
    with pytest.raises(SystemExit) as ei:
        main(["prepare", "--format", "amazon2023", str(bad), "--out", str(tmp_path / "bad_out")])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "bad.jsonl" in err and "line 2" in err
    assert not (tmp_path / "bad_out").exists()
    with pytest.raises(SystemExit) as ei:
        main(["prepare", "--format", "nope", str(src), "--out", str(tmp_path / "n")])
    assert ei.value.code == 2 and "unknown format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["prepare", "--format", "table", "--out", str(tmp_path / "n")])
    assert ei.value.code == 2 and "at least one input" in capsys.readouterr().err


def _zip_dir(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            f"{name}/ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,100\n1,10,3.0,50\n2,31,4,7\n"
        )
        zf.writestr(
            f"{name}/movies.csv",
            "movieId,title,genres\n10,GoldenEye (1995),Action\n31,Dangerous Minds (1995),Drama\n",
        )
    return buf.getvalue()


def test_download_movielens_from_local_server(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "ml-latest-small.zip").write_bytes(_zip_dir("ml-latest-small"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MMSEQREC_GROUPLENS_URL", f"http://127.0.0.1:{server.server_address[1]}")
        out = tmp_path / "ds"
        with pytest.raises(SystemExit) as ei:
            main(
                [
                    "prepare",
                    "--format",
                    "movielens",
                    "--download",
                    "ml-latest-small",
                    "--cache-dir",
                    str(tmp_path / "cache"),
                    "--out",
                    str(out),
                ]
            )
        assert ei.value.code == 0
        ds = DatasetDir(out)
        assert (ds.n_users, ds.n_items, ds.manifest["n_interactions"]) == (2, 2, 3)
        assert ds.items["title"].to_list() == ["GoldenEye (1995)", "Dangerous Minds (1995)"]
        assert (tmp_path / "cache" / "ml-latest-small" / "ratings.csv").is_file()
        from mmseqrec.data import download_movielens

        with pytest.raises(MmseqrecError, match="HTTP 404"):
            download_movielens("ml-1m", tmp_path / "cache")
    finally:
        server.shutdown()
    with pytest.raises(InputError, match="unknown MovieLens"):
        download_movielens("ml-999", tmp_path / "cache")
