"""Each reader on small fixtures written here in the real formats, with hand-computed expectations."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from mmseqrec.data import prepare
from mmseqrec.data.readers import READERS, ReaderOptions, read
from mmseqrec.errors import InputError


def _gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _txt(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_reader_table_is_explicit_and_has_synthetic():
    assert READERS["synthetic"] == "mmseqrec.data.synthetic"
    assert set(READERS) >= {
        "amazon2023",
        "amazon2018",
        "amazon2014",
        "movielens",
        "recbole",
        "sasrec-txt",
        "seq-txt",
        "table",
    }


def _review23(user, item, ts, rating=5.0):
    return json.dumps(
        {
            "rating": rating,
            "title": "t",
            "text": "x",
            "images": [{"small_image_url": "s"}],
            "asin": item + "-v",
            "parent_asin": item,
            "user_id": user,
            "timestamp": ts,
            "helpful_vote": 0,
            "verified_purchase": True,
        }
    )


def test_amazon2023_reviews_and_meta_with_images(tmp_path):
    rev = _gz(
        tmp_path / "All_Beauty.jsonl.gz",
        [
            _review23("UB", "P2", 1000, 4.0),
            _review23("UA", "P1", 2000),
            _review23("UA", "P2", 1000, 3.0),
        ],
    )
    meta_line = {
        "main_category": "All Beauty",
        "title": "Howard LC0008 Leather Conditioner",
        "average_rating": 4.8,
        "rating_number": 10,
        "features": ["Conditions", "Protects"],
        "description": ["Great stuff."],
        "price": None,
        "store": "Howard Products",
        "categories": ["Beauty", "Skin Care"],
        "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches"},
        "parent_asin": "P1",
        "bought_together": None,
        "images": [
            {"thumb": "t0.jpg", "large": "l0.jpg", "variant": "PT01", "hi_res": None},
            {"thumb": "t1.jpg", "large": "l1.jpg", "variant": "MAIN", "hi_res": "h1.jpg"},
        ],
        "videos": [],
    }
    meta2 = {
        "parent_asin": "P2",
        "title": "Second",
        "price": 12.5,
        "images": [{"thumb": "t2.jpg", "large": None, "variant": "MAIN", "hi_res": "h2.jpg"}],
        "categories": [],
    }
    meta = tmp_path / "meta_All_Beauty.jsonl"
    meta.write_text(json.dumps(meta_line) + "\n" + json.dumps(meta2) + "\n")
    ds = prepare("amazon2023", [rev, meta], tmp_path / "out")
    assert (ds.n_users, ds.n_items, ds.manifest["n_interactions"]) == (2, 2, 3)
    inter = ds.interactions
    # UA -> 1, UB -> 2 (sorted ids); UA's P2 at t=1000 comes before P1 at t=2000
    assert inter.select("user", "item", "timestamp").rows() == [(1, 2, 1000), (1, 1, 2000), (2, 2, 1000)]
    assert inter["rating"].to_list() == [3.0, 5.0, 4.0]
    items = ds.items.sort("item")
    assert items["item_id"].to_list() == ["P1", "P2"]
    assert items["image"].to_list() == ["l1.jpg", "h2.jpg"]
    assert items["title"].to_list() == ["Howard LC0008 Leather Conditioner", "Second"]
    assert items["features"][0] == "Conditions\nProtects"
    assert items["categories"].to_list() == ["Beauty > Skin Care", None]
    assert items["brand"][0] == "Howard Products"
    assert items["price"].to_list() == [None, 12.5]
    assert ds.manifest["titles_defaulted"] == 0
    assert [Path(i["path"]).name for i in ds.manifest["inputs"]] == [
        "All_Beauty.jsonl.gz",
        "meta_All_Beauty.jsonl",
    ]


def test_amazon2023_malformed_line_names_file_and_line(tmp_path):
    rev = tmp_path / "r.jsonl"
    rev.write_text(_review23("U", "P", 1) + "\n" + _review23("U", "Q", 2) + '\n{"user_id": "U", oops\n')
    with pytest.raises(InputError) as ei:
        prepare("amazon2023", [rev], tmp_path / "out")
    assert ei.value.line == 3 and ei.value.file == str(rev)
    assert not (tmp_path / "out").exists()


def test_amazon2023_missing_field_names_field(tmp_path):
    rev = tmp_path / "r.jsonl"
    bad = json.loads(_review23("U", "P", 5))
    del bad["parent_asin"]
    rev.write_text(_review23("U", "P", 1) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError) as ei:
        read("amazon2023", [rev])
    assert ei.value.field == "parent_asin" and ei.value.line == 2


def test_amazon2018_reviews_and_meta(tmp_path):
    rev = _gz(
        tmp_path / "AMAZON_FASHION.json.gz",
        [
            json.dumps(
                {
                    "overall": 5.0,
                    "verified": True,
                    "reviewTime": "10 20, 2014",
                    "reviewerID": "R1",
                    "asin": "B0002Z1JNK",
                    "style": {"Size:": " Large"},
                    "reviewerName": "A",
                    "reviewText": "ok",
                    "summary": "s",
                    "unixReviewTime": 1413763200,
                }
            ),
            json.dumps({"overall": 2.0, "reviewerID": "R1", "asin": "B000X", "unixReviewTime": 1413763100}),
        ],
    )
    meta = _gz(
        tmp_path / "meta_AMAZON_FASHION.json.gz",
        [
            json.dumps(
                {
                    "title": "Slime Time Fall Fest",
                    "brand": "Slime Time",
                    "feature": ["f1", "f2"],
                    "rank": "13,052,976",
                    "date": "8.70 inches",
                    "asin": "B0002Z1JNK",
                    "imageURL": ["small.jpg"],
                    "imageURLHighRes": ["big.jpg"],
                    "description": ["d1"],
                    "price": "$1,299.99",
                    "category": ["Clothing", "Women"],
                    "also_buy": [],
                }
            )
        ],
    )
    ds = prepare("amazon2018", [meta, rev], tmp_path / "out")
    assert ds.interactions.select("user", "item").rows() == [(1, 2), (1, 1)]  # B000X (t=...100) first
    it = ds.items.sort("item")
    assert it["item_id"].to_list() == ["B0002Z1JNK", "B000X"]
    assert it["title"].to_list() == ["Slime Time Fall Fest", "B000X"]  # no meta -> original id
    assert it["image"][0] == "big.jpg" and it["price"][0] == pytest.approx(1299.99)
    assert it["features"][0] == "f1\nf2" and it["categories"][0] == "Clothing > Women"
    assert ds.manifest["titles_defaulted"] == 1


def test_amazon2014_python_literal_meta_parsed_safely(tmp_path):
    rev = _gz(
        tmp_path / "reviews_Beauty.json.gz",
        [
            json.dumps(
                {
                    "reviewerID": "A39HTATAQ9V7YF",
                    "asin": "0205616461",
                    "reviewerName": "x",
                    "helpful": [0, 0],
                    "reviewText": "good",
                    "overall": 5.0,
                    "summary": "s",
                    "unixReviewTime": 1369699200,
                    "reviewTime": "05 28, 2013",
                }
            ),
        ],
    )
    sentinel = tmp_path / "pwned"
    meta = _gz(
        tmp_path / "meta_Beauty.json.gz",
        [
            (
                "{'asin': '0205616461', 'description': 'This Bath Gel cleanses.', 'title': "
                "'Bath &amp; Body Works Ambiance Bath Gel', 'imUrl': 'http://ecx.images-amazon.com/images/I/41.jpg', "
                "'salesRank': {'Beauty': 4311}, 'categories': [['Beauty', 'Bath & Body'], ['Beauty', 'Fragrance']], "
                "'price': 9.5, 'related': {'also_bought': ['B00']}}"
            ),
        ],
    )
    ds = prepare("amazon2014", [rev, meta], tmp_path / "out")
    it = ds.items
    assert it["title"][0] == "Bath &amp; Body Works Ambiance Bath Gel"
    assert it["categories"][0] == "Beauty, Bath & Body, Fragrance"
    assert it["image"][0] == "http://ecx.images-amazon.com/images/I/41.jpg" and it["price"][0] == 9.5
    # code in a meta line is never executed: it is a malformed line
    evil = _gz(
        tmp_path / "meta_evil.json.gz",
        [
            "{'asin': 'B1', 'title': 'ok'}",
            f"__import__('os').system('touch {sentinel}')",
        ],
    )
    with pytest.raises(InputError) as ei:
        prepare("amazon2014", [rev, evil], tmp_path / "out2")
    assert ei.value.line == 2 and "meta_evil" in ei.value.file
    assert not sentinel.exists() and not (tmp_path / "out2").exists()


def test_movielens_100k_1m_and_csv(tmp_path):
    d100 = tmp_path / "ml-100k"
    d100.mkdir()
    _txt(d100 / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250900\n")
    flags = ["0"] * 19
    f242 = list(flags)
    f242[5] = "1"  # Comedy
    f302 = list(flags)
    f302[6], f302[16] = "1", "1"  # Crime, Thriller
    _txt(
        d100 / "u.item",
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya|{'|'.join(f242)}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{'|'.join(f302)}\n"
        f"999|Caf\xe9 (1995)|01-Jan-1995||http://y|{'|'.join(flags)}\n",
        encoding="latin-1",
    )
    ds = prepare("movielens", [d100], tmp_path / "o100")
    assert ds.interactions.select("user", "item", "timestamp").rows() == [
        (1, 2, 891717742),
        (2, 2, 881250900),
        (2, 1, 881250949),
    ]
    assert ds.items.sort("item")["categories"].to_list() == ["Comedy", "Crime, Thriller"]
    assert ds.items.sort("item")["title"].to_list() == ["Kolya (1996)", "L.A. Confidential (1997)"]

    d1m = tmp_path / "ml-1m"
    d1m.mkdir()
    _txt(d1m / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300000\n")
    _txt(
        d1m / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
        encoding="latin-1",
    )
    ds = prepare("movielens", [d1m / "ratings.dat", d1m / "movies.dat"], tmp_path / "o1m")
    assert ds.interactions.select("user", "item").rows() == [(1, 2), (1, 1), (2, 2)]  # 661 -> 1, 1193 -> 2
    assert ds.items.sort("item")["categories"][0] == "Animation, Children's, Musical"

    dcsv = tmp_path / "ml-latest-small"
    dcsv.mkdir()
    _txt(
        dcsv / "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
    )
    _txt(
        dcsv / "movies.csv",
        "movieId,title,genres\n31,Dangerous Minds (1995),Drama\n"
        '1029,"Dumbo, the Movie (1941)",(no genres listed)\n',
    )
    ds = prepare("movielens", [dcsv], tmp_path / "ocsv")
    it = ds.items.sort("item")
    assert it["title"].to_list() == ["Dangerous Minds (1995)", "Dumbo, the Movie (1941)"]
    assert it["categories"].to_list() == ["Drama", None]
    assert ds.interactions["rating"].to_list() == [2.5, 3.0]


def test_movielens_bad_line(tmp_path):
    _txt(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(InputError) as ei:
        read("movielens", [tmp_path])
    assert ei.value.line == 2 and ei.value.file.endswith("ratings.dat")


def test_recbole_atomic_files(tmp_path):
    _txt(
        tmp_path / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t10\t3\t881250949.0\n7\t2\t5\t881250000\n3\t10\t1\t5\n",
    )
    _txt(
        tmp_path / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n2\tGoldenEye\t1995\tAction\n",
    )
    ds = prepare("recbole", [tmp_path], tmp_path / "out")
    # users 3 -> 1, 7 -> 2; items 2 -> 1, 10 -> 2 (numeric order)
    assert ds.interactions.select("user", "item", "timestamp").rows() == [
        (1, 2, 5),
        (2, 1, 881250000),
        (2, 2, 881250949),
    ]
    it = ds.items.sort("item")
    assert it["title"].to_list() == ["GoldenEye", "Toy Story"]
    assert it["categories"].to_list() == ["Action", "Animation Comedy"]
    assert it["release_year"].to_list() == ["1995", "1995"]
    (tmp_path / "bad").mkdir()
    _txt(tmp_path / "bad" / "x.inter", "user_id:token\titem_id:token\n1\t2\n\t3\n")
    with pytest.raises(InputError) as ei:
        read("recbole", [tmp_path / "bad"])
    assert (ei.value.line, ei.value.field) == (3, "user_id")


def test_sasrec_txt_and_seq_txt(tmp_path):
    f = _txt(tmp_path / "Video.txt", "1 3\n1 1\n2 2\n1 2\n")
    ds = prepare("sasrec-txt", [f], tmp_path / "o1")
    assert ds.interactions.select("user", "item", "timestamp").rows() == [
        (1, 3, 1),
        (1, 1, 2),
        (1, 2, 4),
        (2, 2, 3),
    ]
    assert ds.items["item_id"].to_list() == ["1", "2", "3"] and ds.items["title"].to_list() == ["1", "2", "3"]
    g = _txt(tmp_path / "Beauty.txt", "1 1 2 3\n2 4 1\n")
    ds = prepare("seq-txt", [g], tmp_path / "o2")
    assert ds.sequences.sequence(1).tolist() == [1, 2, 3] and ds.sequences.sequence(2).tolist() == [4, 1]
    assert ds.manifest["titles_defaulted"] == 4
    with pytest.raises(InputError) as ei:
        read("sasrec-txt", [_txt(tmp_path / "bad.txt", "1 2\n\n1 2 3\n")])
    assert ei.value.line == 3
    with pytest.raises(InputError) as ei:
        read("seq-txt", [_txt(tmp_path / "bad2.txt", "1 2\n7\n")])
    assert ei.value.line == 2


def test_table_csv_parquet_jsonl_with_items(tmp_path):
    csv = _txt(
        tmp_path / "inter.csv",
        "uid,iid,when,stars\nu2,x,2020-01-02,4\nu1,y,2020-01-01,5\nu1,x,2020-01-01,1\n",
    )
    items = tmp_path / "items.parquet"
    pl.DataFrame(
        {"iid": ["x", "y", "z"], "name": ["Ex", None, "Zed"], "price": [1.0, 2.0, 3.0]}
    ).write_parquet(items)
    opts = ReaderOptions(
        user_col="uid",
        item_col="iid",
        time_col="when",
        rating_col="stars",
        items_table=items,
        title_col="name",
    )
    ds = prepare("table", [csv], tmp_path / "o", reader_options=opts)
    # 2020-01-01 = 1577836800 s; u1's two rows tie -> file order (y before x)
    assert ds.interactions.select("user", "item", "timestamp").rows() == [
        (1, 2, 1577836800),
        (1, 1, 1577836800),
        (2, 1, 1577923200),
    ]
    it = ds.items.sort("item")
    assert it["title"].to_list() == ["Ex", "y"] and it["price"].to_list() == [1.0, 2.0]
    assert ds.manifest["titles_defaulted"] == 1
    pq = tmp_path / "inter.parquet"
    pl.DataFrame({"user_id": [5, 5], "item_id": [9, 8], "timestamp": [2, 1]}).write_parquet(pq)
    js = tmp_path / "inter.jsonl"
    js.write_text('{"user_id": 6, "item_id": 8, "timestamp": 0}\n')
    ds = prepare("table", [pq, js], tmp_path / "o2")
    assert ds.interactions.select("user", "item").rows() == [(1, 1), (1, 2), (2, 1)]
    with pytest.raises(InputError) as ei:
        read("table", [csv], ReaderOptions(user_col="uid", item_col="item"))
    assert ei.value.field == "item" and ei.value.file == str(csv)
    bad = _txt(tmp_path / "bad.csv", "user_id,item_id,timestamp\na,b,1\na,,2\n")
    with pytest.raises(InputError) as ei:
        read("table", [bad])
    assert (ei.value.line, ei.value.field) == (3, "item_id")


@pytest.mark.parametrize("gz", [False, True])
def test_block_reader_bounded_blocks_and_line_numbers(tmp_path, gz):
    from mmseqrec.data.readers.base import read_ndjson_blocks

    lines = [_review23(f"U{k}", f"P{k % 7}", k) for k in range(60)]
    schema = {"user_id": pl.Utf8, "parent_asin": pl.Utf8, "timestamp": pl.Int64}
    sel = [pl.col("user_id"), pl.col("timestamp")]
    good = (
        _gz(tmp_path / "g.jsonl.gz", lines) if gz else _txt(tmp_path / "g.jsonl", "\n".join(lines))
    )  # no final \n
    df = read_ndjson_blocks(good, schema, sel, block_bytes=1000)
    assert df["timestamp"].to_list() == list(range(60)) and df["user_id"][59] == "U59"
    bad_lines = lines[:47] + ['{"user_id": "U", "timestamp": 1,,}'] + lines[47:]
    bad = (
        _gz(tmp_path / "b.jsonl.gz", bad_lines)
        if gz
        else _txt(tmp_path / "b.jsonl", "\n".join(bad_lines) + "\n")
    )
    with pytest.raises(InputError) as ei:
        read_ndjson_blocks(bad, schema, sel, block_bytes=1000)
    assert ei.value.line == 48 and ei.value.file == str(bad)
