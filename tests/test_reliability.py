"""Issue 10: nothing lost, no tracebacks. Every probe goes through the command line (typer's CliRunner) and
asserts the exit code, the one-line message (file, line, field) and that no traceback is printed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from helpers import write_cycle_dataset
from typer.testing import CliRunner

from mmseqrec.cli import app

torch.set_num_threads(1)


def _run(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_line(res) -> str:
    """The single ``error: ...`` line of a failed command (asserts there is exactly one and no traceback)."""
    out = res.output
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


def _expect_error(args: list[str], *fragments: str) -> str:
    res = _run(args)
    assert res.exit_code == 2, res.output
    line = _error_line(res)
    for frag in fragments:
        assert frag in line, (frag, line)
    return line


def _truncated_gz(path: Path, text: str) -> Path:
    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) // 2])
    return path


# ----------------------------------------------------------------------------- readers: truncated .gz
_REVIEW = {"amazon2023": ("user_id", "parent_asin", "timestamp", "rating"),
           "amazon2018": ("reviewerID", "asin", "unixReviewTime", "overall"),
           "amazon2014": ("reviewerID", "asin", "unixReviewTime", "overall")}


@pytest.mark.parametrize("fmt", ["sasrec-txt", "amazon2023", "amazon2018", "amazon2014"])
def test_truncated_gzip_is_one_line_naming_file_and_line(tmp_path: Path, fmt: str) -> None:
    if fmt == "sasrec-txt":
        text = "".join(f"{u} {i}\n" for u in range(1, 60) for i in range(1, 30))
    else:
        u, i, t, r = _REVIEW[fmt]
        text = "".join(json.dumps({u: f"u{a}", i: f"i{b}", t: 1000 + b, r: 5.0}) + "\n"
                       for a in range(60) for b in range(30))
    src = _truncated_gz(tmp_path / "in.gz", text)
    line = _expect_error(["prepare", src, "-f", fmt, "-o", tmp_path / "out"], str(src), "truncated or corrupt gzip")
    n = int(line.split(", line ")[1].split(":")[0])
    assert 1 < n < text.count("\n")  # the line where the readable data stops, not line 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- readers: empty files
@pytest.mark.parametrize("case", ["ratings.csv", "header-only.inter", "empty-table.csv"])
def test_empty_inputs(tmp_path: Path, case: str) -> None:
    if case == "ratings.csv":
        (tmp_path / "ml").mkdir()
        (tmp_path / "ml" / "ratings.csv").write_text("")
        args, frags = [tmp_path / "ml", "-f", "movielens"], ["ratings.csv", "empty"]
    elif case == "header-only.inter":
        (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
        args, frags = [tmp_path / "x.inter", "-f", "recbole"], ["x.inter, line 2", "only its header"]
    else:
        (tmp_path / "t.csv").write_text("")
        args, frags = [tmp_path / "t.csv", "-f", "table"], ["t.csv", "empty"]
    _expect_error(["prepare", *args, "-o", tmp_path / "out"], *frags)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- readers: bad lines
def _ml(tmp_path: Path, ratings: str, movies: str | None = None) -> Path:
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.csv").write_text(ratings)
    if movies is not None:
        (d / "movies.csv").write_text(movies)
    return d


_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.0,101\n2,1,5.0,102\n"


@pytest.mark.parametrize("case", ["movies-unclosed-quote", "movielens-columns", "recbole-columns", "table-columns",
                                  "table-jsonl", "table-non-utf8", "sasrec-non-utf8", "amazon2023-non-utf8",
                                  "amazon2023-timestamp", "amazon2023-bool-time"])
def test_bad_line_is_named(tmp_path: Path, case: str) -> None:
    fmt = {"movies-unclosed-quote": "movielens", "movielens-columns": "movielens", "recbole-columns": "recbole",
           "amazon2023-timestamp": "amazon2023", "amazon2023-bool-time": "amazon2023",
           "sasrec-non-utf8": "sasrec-txt", "amazon2023-non-utf8": "amazon2023"}.get(case, "table")
    if case == "movies-unclosed-quote":
        src = _ml(tmp_path, _RATINGS, 'movieId,title,genres\n1,Toy Story,Comedy\n2,"Jumanji,Adventure\n3,Heat,Action\n')
        frags = ["movies.csv, line 3", "malformed CSV"]
    elif case == "movielens-columns":
        src = _ml(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.0,101\n2,1,5.0,102,7\n")
        frags = ["ratings.csv, line 4", "expected 4 fields, found 5"]
    elif case == "recbole-columns":
        src = tmp_path / "x.inter"
        src.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\t4\n2\t2\t5\t9\n")
        frags = ["x.inter, line 4", "expected 3 fields, found 4"]
    elif case == "table-columns":
        src = tmp_path / "t.csv"
        src.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5,7\n")
        frags = ["t.csv, line 4", "expected 3 fields, found 4"]
    elif case == "table-jsonl":
        src = tmp_path / "t.jsonl"
        src.write_text('{"user_id":1,"item_id":2,"timestamp":3}\n{"user_id":1,"item_id":3,"timestamp":4}\n'
                       '{"user_id":1,"item_id":\n')
        frags = ["t.jsonl, line 3", "malformed JSON"]
    elif case == "table-non-utf8":
        src = tmp_path / "t.csv"
        src.write_bytes(b"user_id,item_id,timestamp\n1,2,3\n1,caf\xe9,4\n2,2,5\n")
        frags = ["t.csv, line 3", "not valid UTF-8"]
    elif case == "sasrec-non-utf8":
        src = tmp_path / "s.txt"
        src.write_bytes(b"1 2\n1 3\n2 caf\xe9\n")
        frags = ["s.txt, line 3", "not valid UTF-8"]
    elif case == "amazon2023-non-utf8":
        src = tmp_path / "r.jsonl"
        src.write_bytes(b'{"user_id":"u1","parent_asin":"i1","timestamp":1,"rating":5}\n'
                        b'{"user_id":"u\xe9","parent_asin":"i1","timestamp":1,"rating":5}\n')
        frags = ["r.jsonl, line 2", "UTF-8"]
    else:
        rows = [{"user_id": "u1", "parent_asin": f"i{i}", "timestamp": 1000 + i, "rating": 5.0} for i in range(3)]
        rows[2]["timestamp"] = "yesterday" if case == "amazon2023-timestamp" else True
        src = tmp_path / "reviews.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        frags = ["reviews.jsonl, line 3, field 'timestamp'"]
    _expect_error(["prepare", src, "-f", fmt, "-o", tmp_path / "out"], *frags)
    assert not (tmp_path / "out").exists()


def test_float_timestamps_are_accepted(tmp_path: Path) -> None:
    rows = [{"user_id": "u1", "parent_asin": f"i{i}", "timestamp": 1.7e12 + i, "rating": 5.0} for i in range(3)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run(["prepare", tmp_path / "r.jsonl", "-f", "amazon2023", "-o", tmp_path / "out"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "out" / "interactions.parquet")["timestamp"].to_list() == [
        1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]


# ----------------------------------------------------------------------------- train / evaluate / recommend
_FAST = ["--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "train.max_len=8",
         "--set", "train.progress=false", "--set", "train.device=cpu", "--set", "item_encoder.dim=8",
         "--set", "eval.ks=[5]", "--set", "train.select_metric=NDCG@5"]


def _dataset(root: Path, n_items: int = 20, n_users: int = 40) -> Path:
    """A cycle dataset with a manifest recording its outputs' sha256, like ``prepare`` writes."""
    from mmseqrec.fileio import sha256_file

    ds = write_cycle_dataset(root, n_users, n_items, 8)
    m = json.loads((ds / "manifest.json").read_text())
    m["outputs"] = {n: sha256_file(ds / n) for n in ("interactions.parquet", "items.parquet", "users.parquet")}
    (ds / "manifest.json").write_text(json.dumps(m))
    return ds


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rel")
    ds = _dataset(root / "ds")
    res = _run(["train", "-d", ds, "-o", root / "run", *_FAST])
    assert res.exit_code == 0, res.output
    return ds, root / "run"


@pytest.mark.parametrize("case", ["lr", "batch_size", "dropout", "min_len", "ks", "select_metric", "n_heads",
                                  "device", "corrupt-parquet"])
def test_bad_train_options_fail_before_writing(tmp_path: Path, case: str) -> None:
    ds = _dataset(tmp_path / "ds")
    sets, frags = {"lr": (["train.lr=-0.01"], ["train.lr", "greater than 0"]),
                   "batch_size": (["train.batch_size=0"], ["train.batch_size", "greater than or equal to 1"]),
                   "dropout": (["model.dropout=1.5"], ["model.dropout", "less than 1"]),
                   "min_len": (["data.min_len=1"], ["data.min_len", "greater than or equal to 2"]),
                   "ks": (["eval.ks=[0]"], ["eval.ks.0", "greater than or equal to 1"]),
                   "select_metric": (["train.select_metric=NDCG@10"], ["'NDCG@10' is not computed", "NDCG@5"]),
                   "n_heads": (["model.n_heads=3"], ["field 'model'", "not divisible by n_heads=3"]),
                   "device": (["train.device=tpu"], ["field 'train.device'", "unknown device 'tpu'"]),
                   "corrupt-parquet": ([], ["interactions.parquet", "corrupt or truncated Parquet"])}[case]
    if case == "corrupt-parquet":
        p = ds / "interactions.parquet"
        p.write_bytes(p.read_bytes()[:100])
    _expect_error(["train", "-d", ds, "-o", tmp_path / "run", *_FAST, *[a for s in sets for a in ("--set", s)]],
                  *frags)
    assert not (tmp_path / "run").exists()  # nothing written, not even an empty run directory


@pytest.mark.parametrize("command", ["evaluate", "recommend"])
def test_other_item_count_is_a_clear_error(trained, tmp_path: Path, command: str) -> None:
    _, run = trained
    other = _dataset(tmp_path / "other", n_items=25)
    extra = ["--history", "i1"] if command == "recommend" else []
    _expect_error([command, run, "--data", other, *extra], "manifest.json", "n_items", "20 items", "has 25")
    _expect_error([command, run, "--data", other, "--force", *extra], "n_items")  # --force cannot fix shapes


def test_other_item_count_without_recorded_identity(trained, tmp_path: Path) -> None:
    """Runs from before the identity was recorded: the checkpoint shapes still give one clear line."""
    import shutil

    _, run = trained
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    for name in ("metrics.json", "state.json"):
        d = json.loads((old / name).read_text())
        d.pop("data")
        (old / name).write_text(json.dumps(d))
    other = _dataset(tmp_path / "other", n_items=25)
    _expect_error(["evaluate", old, "--data", other], "model.safetensors", "checkpoint does not match the model",
                  "another dataset")


def test_other_dataset_with_same_item_count_needs_force(trained, tmp_path: Path) -> None:
    _, run = trained
    # same 20 items, other interactions: the run must not be scored on it silently
    other = _dataset(tmp_path / "other", n_items=20, n_users=41)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["sha256"] and metrics["data"]["n_items"] == 20
    _expect_error(["evaluate", run, "--data", other], "not the dataset this run was trained on", "--force")
    _expect_error(["recommend", run, "--data", other, "--history", "i1"], "not the dataset this run was trained on")
    res = _run(["evaluate", run, "--data", other, "--force"])
    assert res.exit_code == 0, res.output
    rec = json.loads((run / "eval-full.json").read_text())["data"]
    assert rec["path"] == str(other) and rec["forced"] is True and rec["sha256"] != metrics["data"]["sha256"]
    res = _run(["evaluate", run])  # its own dataset: fine, and recorded
    assert res.exit_code == 0, res.output
    rec = json.loads((run / "eval-full.json").read_text())["data"]
    assert rec["sha256"] == metrics["data"]["sha256"] and rec["forced"] is False


# ----------------------------------------------------------------------------- train --overwrite
def test_train_overwrite_leaves_only_the_new_run(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    assert _run(["train", "-d", ds, "-o", run, *_FAST]).exit_code == 0
    assert _run(["evaluate", run, "--protocol", "sampled:5"]).exit_code == 0
    assert _run(["evaluate", run, "--split", "valid"]).exit_code == 0
    old = sorted(p.name for p in run.iterdir())
    assert "eval-sampled-5.json" in old or any(n.startswith("eval-sampled") for n in old)
    assert any(n.startswith("ranks-") for n in old)
    before = (run / "model.safetensors").read_bytes()
    assert _run(["train", "-d", ds, "-o", run, *_FAST, "--set", "seed=3", "--overwrite"]).exit_code == 0
    new = sorted(p.name for p in run.iterdir())
    assert not [n for n in new if n.startswith(("eval-", "ranks-"))], new
    assert set(new) == {"config.yaml", "model.safetensors", "last.safetensors", "optim.safetensors", "state.json",
                        "log.jsonl", "metrics.json", "ranks.parquet"}
    assert (run / "model.safetensors").read_bytes() != before
    # a file train did not write is never deleted: --overwrite refuses instead
    (run / "notes.txt").write_text("mine")
    _expect_error(["train", "-d", ds, "-o", run, *_FAST, "--overwrite"], "notes.txt", "did not write")
    assert (run / "notes.txt").read_text() == "mine" and (run / "metrics.json").exists()


def test_train_overwrite_keeps_old_run_when_the_new_one_is_invalid(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    assert _run(["train", "-d", ds, "-o", run, *_FAST]).exit_code == 0
    before = sorted(p.name for p in run.iterdir())
    _expect_error(["train", "-d", tmp_path / "missing", "-o", run, *_FAST, "--overwrite"], "missing")
    assert sorted(p.name for p in run.iterdir()) == before


# ----------------------------------------------------------------------------- checkpoints as one unit
def _same_checkpoint(a: Path, b: Path) -> bool:
    """Same tensors and metadata (safetensors may order the header's metadata differently)."""
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())  # noqa: SIM118


def test_kill_between_checkpoint_files_never_resumes_from_a_mix(tmp_path: Path, monkeypatch) -> None:
    from mmseqrec.train import checkpoint as ck

    ds = _dataset(tmp_path / "ds")
    sets = [*_FAST, "--set", "train.epochs=2", "--set", "train.patience=0"]
    ref = tmp_path / "ref"
    assert _run(["train", "-d", ds, "-o", ref, *sets]).exit_code == 0

    class Killed(BaseException):
        pass

    # 1) killed after the model file of epoch 2, before its optimiser file and state.json
    real_save_optimizer = ck.save_optimizer
    calls = {"n": 0}

    def dying_optimizer(path, opt):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        real_save_optimizer(path, opt)

    monkeypatch.setattr("mmseqrec.train.trainer.save_optimizer", dying_optimizer)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        from mmseqrec.cli.train import build_experiment
        from mmseqrec.train import Trainer

        cfg = build_experiment(data=ds, sets=[s for s in sets if s != "--set"])
        Trainer(cfg, run).fit()
    monkeypatch.setattr("mmseqrec.train.trainer.save_optimizer", real_save_optimizer)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1  # the epoch-2 checkpoint was never committed
    assert (run / "last.safetensors.next").exists()  # the new model file is there, but not in use
    res = _run(["train", "-o", run, "--resume"])
    assert res.exit_code == 0, res.output
    assert not list(run.glob("*.next"))
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    # resumed from the consistent epoch-1 checkpoint: identical to an uninterrupted run
    for name in ("last.safetensors", "optim.safetensors"):
        assert _same_checkpoint(run / name, ref / name)

    # 2) killed after state.json committed epoch 2, before the files were renamed: resume finishes the commit
    run2 = tmp_path / "run2"
    real_replace = ck.os.replace
    seen = {"n": 0}

    def dying_replace(src, dst):
        if str(src).endswith(".next"):
            seen["n"] += 1
            if seen["n"] == 5:  # epoch 2: after state.json, between the renames
                raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", dying_replace)
    with pytest.raises(Killed):
        from mmseqrec.cli.train import build_experiment
        from mmseqrec.train import Trainer

        cfg = build_experiment(data=ds, sets=[s for s in sets if s != "--set"])
        Trainer(cfg, run2).fit()
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert json.loads((run2 / "state.json").read_text())["epoch"] == 2
    assert list(run2.glob("*.next"))
    ck.read_checkpoint(run2)  # rolls the commit forward
    assert not list(run2.glob("*.next"))
    for name in ("last.safetensors", "optim.safetensors"):
        assert _same_checkpoint(run2 / name, ref / name)

    # 3) a checkpoint file changed after it was written: resume refuses
    (run2 / "optim.safetensors").write_bytes(b"damaged")
    _expect_error(["train", "-o", run2, "--resume"], "optim.safetensors", "does not match the sha256")


# ----------------------------------------------------------------------------- prepare --overwrite
def _prepare(out: Path, n_users: int, overwrite: bool = False):
    return _run(["prepare", "-f", "synthetic", "-o", out, "--option", f"n_users={n_users}", "--option",
                 "n_items=30", *(["--overwrite"] if overwrite else [])])


def test_prepare_overwrite_keeps_derived_data_of_unchanged_data(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _prepare(out, 40).exit_code == 0
    (out / "enrich").mkdir()
    (out / "enrich" / "cache.sqlite").write_bytes(b"20 paid-for generations")
    (out / "embed").mkdir()
    (out / "embed" / "title.npy").write_bytes(b"vectors")
    res = _prepare(out, 40, overwrite=True)
    assert res.exit_code == 0, res.output
    assert "kept embed/, enrich/" in res.output and "unchanged" in res.output
    assert (out / "enrich" / "cache.sqlite").read_bytes() == b"20 paid-for generations"
    assert (out / "embed" / "title.npy").read_bytes() == b"vectors"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_prepare_overwrite_moves_derived_data_of_changed_data_aside(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _prepare(out, 40).exit_code == 0
    (out / "enrich").mkdir()
    (out / "enrich" / "cache.sqlite").write_bytes(b"20 paid-for generations")
    res = _prepare(out, 41, overwrite=True)
    assert res.exit_code == 0, res.output
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("ds.derived-")]
    assert len(aside) == 1 and (aside[0] / "enrich" / "cache.sqlite").read_bytes() == b"20 paid-for generations"
    assert not (out / "enrich").exists()
    assert "changed" in res.output and aside[0].name in res.output.replace("\n", "")
    assert json.loads((out / "manifest.json").read_text())["n_users"] == 41


def test_prepare_overwrite_failure_keeps_everything(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    assert _prepare(out, 40).exit_code == 0
    (out / "enrich").mkdir()
    (out / "enrich" / "cache.sqlite").write_bytes(b"paid")
    import mmseqrec.fileio as fio

    real = fio.os.replace

    def no_swap(src, dst):
        if Path(str(src)).name == "ds":
            raise OSError("disk on fire")
        real(src, dst)

    monkeypatch.setattr(fio.os, "replace", no_swap)
    res = _prepare(out, 41, overwrite=True)
    monkeypatch.setattr(fio.os, "replace", real)
    assert res.exit_code != 0
    assert (out / "enrich" / "cache.sqlite").read_bytes() == b"paid"
    assert json.loads((out / "manifest.json").read_text())["n_users"] == 40


# ----------------------------------------------------------------------------- credentials in --api-base
def test_api_base_credentials_never_stored_or_printed(tmp_path: Path, monkeypatch) -> None:
    import httpx

    out = tmp_path / "ds"
    assert _run(["prepare", "-f", "synthetic", "-o", out, "--option", "n_users=8", "--option", "n_items=6"]
                ).exit_code == 0
    sent = []

    def fake_post(self, url, json=None, **kw):
        sent.append(url)
        return httpx.Response(200, json={"choices": [{"message": {"content": "a fine item"}}],
                                         "usage": {"completion_tokens": 3}}, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx.Client, "post", fake_post)
    api = "http://alice:SECRET-PW@127.0.0.1:9/v1?token=TOKEN-123&x=1"
    res = _run(["enrich", out, "--task", "item-summary", "--backend", "openai", "--model", "m", "--api-base", api,
                "--limit", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert sent and "SECRET-PW" in sent[0]  # the server still gets the real URL
    for secret in ("SECRET-PW", "TOKEN-123", "alice"):
        assert secret not in res.output
        for f in (out / "enrich").rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f
    df = pl.read_parquet(out / "enrich" / "item-summary.parquet")
    assert set(df.filter(pl.col("status") == "ok")["model_revision"]) == {"http://***@127.0.0.1:9/v1?token=***&x=***"}


def test_dataset_reprepared_in_place_is_noticed(tmp_path: Path) -> None:
    """`prepare --overwrite` with other data at the run's recorded path: evaluate and longtail refuse."""
    ds = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    assert _run(["train", "-d", ds, "-o", run, *_FAST]).exit_code == 0
    _dataset(ds, n_items=20, n_users=41)  # same place, same items, other interactions
    _expect_error(["evaluate", run], "not the dataset this run was trained on")
    _expect_error(["longtail", run], "not the dataset this run was trained on")
