"""``enrich --engine ray`` on a local Ray (2 CPUs): same output as the single-machine runner, resumable by shard
(a failed run redoes only unfinished shards, and failed rows only), the OpenAI-compatible backend (the vLLM
serving path) against a stub server on 127.0.0.1, images preprocessed on the CPU stage as the runner sends them,
and a clear error without the extra. The Ray tests skip when Ray is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from helpers import ChatStub
from test_enrich_pipeline import make_dataset

from mmseqrec.cli import main
from mmseqrec.enrich import BackendConfig, EnrichAborted, EnrichConfig, run_enrich
from mmseqrec.enrich.runner import RayOptions
from mmseqrec.errors import InputError, MissingExtraError


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 2 CPUs for the module (the engine uses an initialised Ray as it is)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def cfg(task: str, backend: BackendConfig | None = None, engine: str = "ray", shard_size: int = 2, **kw) -> EnrichConfig:
    return EnrichConfig(task=task, engine=engine, ray=RayOptions(shard_size=shard_size),
                        backend=backend or BackendConfig(backend="echo", batch_size=2), **kw)


def table(ds: Path, task: str) -> pl.DataFrame:
    """The export without its timestamps, the dataset directory in reasons written as DATA."""
    df = pl.read_parquet(ds / "enrich" / f"{task}.parquet").drop("created")
    return df.with_columns(pl.col("reason").str.replace_all(str(ds), "DATA", literal=True))


@pytest.mark.parametrize(("task", "opts"), [("item-description", {}), ("item-views", {}),
                                            ("user-preference", {"block_size": 1})])
def test_ray_engine_writes_what_the_runner_writes(local_ray, tmp_path: Path, task: str, opts: dict) -> None:
    """Images (good, missing, corrupt, none), text fallbacks, skipped image views and recurrent blocks: the
    Ray export equals the runner's row for row, and the runner then serves every row from the cache."""
    ds = make_dataset(tmp_path / "ds")
    res = run_enrich(ds, cfg(task, **opts), progress=False)
    ray_df = table(ds, task)
    eng = res.info["engine"]
    assert eng["name"] == "ray" and res.info["this_run"]["from_cache"] == 0
    if task == "user-preference":  # both users train on 2 items: two blocks of one item, the second chained
        assert [b["shards"] for b in eng["rounds"]] == [1, 1]
        assert ray_df["template_id"].to_list() == ["mllm-msr/preference-next-block"] * 2
    shards = sorted(Path(eng["work_dir"]).glob("r*/out-*.parquet"))
    assert len(shards) == sum(b["shards"] for b in eng["rounds"])
    again = run_enrich(ds, cfg(task, engine="local", **opts), progress=False)
    assert again.info["this_run"]["generated"] == 0  # all from the SQLite cache the Ray run filled
    assert table(ds, task).equals(ray_df)
    fresh = make_dataset(tmp_path / "fresh")
    run_enrich(fresh, cfg(task, engine="local", **opts), progress=False)
    assert table(fresh, task).equals(ray_df)


class Stub(ChatStub):
    """The OpenAI-compatible server: 400 for prompts naming a title in ``fail``; records every request."""

    fail: set[str] = set()  # noqa: RUF012 - set by the test between runs
    seen: list[dict] = []  # noqa: RUF012
    hold: set[str] = set()  # noqa: RUF012 - titles whose answer waits until ``release`` is set
    release = threading.Event()

    def answer(self, body: dict, prompt: str, content: object) -> tuple[int, dict]:
        Stub.seen.append(body)
        if any(f"Title: {t}\n" in prompt for t in Stub.hold):
            Stub.release.wait(120)
        if any(f"Title: {t}\n" in prompt for t in Stub.fail):
            return 400, {"error": "simulated"}
        return 200, {"choices": [{"message": {"content": f"summary {len(prompt)}"}}]}


@pytest.fixture()
def stub(local_ray):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Stub.fail, Stub.seen, Stub.hold = set(), [], set()
    Stub.release.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    Stub.release.set()
    srv.shutdown()
    srv.server_close()


def titles(bodies: list[dict]) -> list[str]:
    out = []
    for b in bodies:
        c = b["messages"][0]["content"]
        text = c if isinstance(c, str) else c[-1]["text"]
        out.append(text.split("Title: ", 1)[1].split("\n", 1)[0])
    return sorted(out)


def write_items(root: Path, n: int) -> Path:
    """``n`` text-only items ``T1..Tn`` and one user."""
    root.mkdir(parents=True)
    pl.DataFrame({"item": list(range(1, n + 1)), "item_id": [f"i{i}" for i in range(1, n + 1)],
                  "title": [f"T{i}" for i in range(1, n + 1)], "description": ["d"] * n},
                 schema_overrides={"item": pl.Int32}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": [1] * n, "item": list(range(1, n + 1)), "timestamp": list(range(n))},
                 schema_overrides={"user": pl.Int32, "item": pl.Int32}).write_parquet(root / "interactions.parquet")
    (root / "manifest.json").write_text(json.dumps({"n_users": 1, "n_items": n}))
    return root


def test_ray_resumes_by_shard_against_an_openai_compatible_server(tmp_path: Path, stub: str) -> None:
    ds = write_items(tmp_path / "ds", 8)  # shards of 2 items: {T1,T2} {T3,T4} {T5,T6} {T7,T8}
    be = BackendConfig(backend="openai", model="served", api_base=stub, batch_size=2, retries=0)
    task = "item-summary"

    # run 1: the server fails shard 2 entirely; 2 failures in a row stop the run after shards 0 and 1
    Stub.fail = {"T5", "T6"}
    with pytest.raises(EnrichAborted, match="2 generations failed in a row.*HTTP 400"):
        run_enrich(ds, cfg(task, be, max_consecutive_failures=2), progress=False)
    assert not (ds / "enrich" / f"{task}.parquet").exists()  # nothing exported
    wdir = next((ds / "enrich" / f"{task}.shards").iterdir())
    done = sorted(p.name[:10] for p in wdir.glob("r0/out-*.parquet"))
    assert done == ["out-000000", "out-000001"]
    mtimes = {p: p.stat().st_mtime_ns for p in wdir.glob("r0/out-*.parquet")}

    # run 2: only shards 2 and 3 run (T5..T8 requested, T1..T4 not); T7 fails and is recorded
    Stub.fail, Stub.seen = {"T3", "T7"}, []
    res = run_enrich(ds, cfg(task, be, max_consecutive_failures=0), progress=False)
    assert titles(Stub.seen) == ["T5", "T6", "T7", "T8"]
    (rnd,) = res.info["engine"]["rounds"]
    assert (rnd["run"], rnd["reused"], rnd["partial"]) == ([2, 3], [0, 1], [])
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished shards untouched
    assert res.counts == {"ok": 7, "failed": 1, "skipped": 0}
    assert res.info["this_run"]["generated"] == 4 and res.info["this_run"]["from_cache"] == 4

    # run 3 (--keep-failed): nothing to do, the failure is served as it is
    Stub.seen = []
    res = run_enrich(ds, cfg(task, be, retry_failed=False), progress=False)
    assert Stub.seen == [] and res.info["this_run"]["failed_from_cache"] == 1
    assert res.info["engine"]["rounds"][0]["reused"] == [0, 1, 2, 3]

    # run 4 (default): only the failed row of shard 3 is generated again, its ok neighbour is kept
    Stub.fail, Stub.seen = set(), []
    res = run_enrich(ds, cfg(task, be), progress=False)
    assert titles(Stub.seen) == ["T7"]
    assert res.info["engine"]["rounds"][0]["partial"] == [3]
    df = table(ds, task).sort("item")
    assert df["status"].to_list() == ["ok"] * 8
    assert df["text"][6] == f"summary {len(df['prompt'][6])}"

    # the single-machine engine finds everything in the cache
    Stub.seen = []
    local = run_enrich(ds, cfg(task, be, engine="local"), progress=False)
    assert Stub.seen == [] and local.info["this_run"]["from_cache"] == 8
    assert table(ds, task).equals(df)


def test_ray_sends_the_images_the_runner_sends(tmp_path: Path, stub: str) -> None:
    """The CPU stage downscales for the server (lossless PNG): the requests equal the runner's, byte for byte."""
    be = BackendConfig(backend="openai", model="served", api_base=stub, batch_size=2, max_pixels=100)
    bodies = {}
    for engine in ("ray", "local"):
        ds = make_dataset(tmp_path / engine)
        Stub.seen = []
        run_enrich(ds, cfg("item-description", be, engine=engine), progress=False)
        bodies[engine] = sorted(json.dumps(b, sort_keys=True) for b in Stub.seen)
        assert table(ds, "item-description")["status"].to_list() == ["ok"] * 4
    assert bodies["ray"] == bodies["local"]
    images = [b for b in bodies["ray"] if "image_url" in b]
    assert len(images) == 1  # item 1 only (2: missing file, 3: corrupt, 4: none -> text prompts)


def test_cli_engine_ray(local_ray, tmp_path: Path, capsys) -> None:
    ds = make_dataset(tmp_path / "ds")
    with pytest.raises(SystemExit) as e:
        main(["enrich", str(ds), "--task", "item-summary", "--backend", "echo", "--engine", "ray",
              "--shard-size", "3", "--no-progress"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "ray: 2 shard(s), 2 run (0 only in part), 0 finished earlier, 0 from the cache" in " ".join(out.split())
    assert table(ds, "item-summary")["status"].to_list() == ["ok"] * 4


def test_missing_ray_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without Ray (simulated when installed) the engine names the extra; the CLI prints one line, exit 2."""
    ds = make_dataset(tmp_path / "ds")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"mmseqrec\[cluster\]"):
        run_enrich(ds, cfg("item-summary"), progress=False)
    with pytest.raises(SystemExit) as e:
        main(["enrich", str(ds), "--task", "item-summary", "--backend", "echo", "--engine", "ray"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'mmseqrec[cluster]'" in " ".join(err.split()) and "Traceback" not in err
    assert not (ds / "enrich" / "item-summary.parquet").exists()


KILLED_CHILD = """
import sys
from mmseqrec.enrich import BackendConfig, EnrichConfig, run_enrich
from mmseqrec.enrich.runner import RayOptions
run_enrich(sys.argv[1], EnrichConfig(task="item-summary", engine="ray",
           ray=RayOptions(address=sys.argv[3], shard_size=2),
           backend=BackendConfig(backend="openai", model="served", api_base=sys.argv[2], batch_size=2, retries=0)),
           progress=False)
"""


def test_killed_driver_redoes_only_unfinished_shards(local_ray, tmp_path: Path, stub: str) -> None:
    """A driver killed (SIGKILL) while shard 2 waits for the server: the rerun requests only shards 2 and 3."""
    ds = write_items(tmp_path / "ds", 8)
    Stub.hold = {"T5"}
    address = local_ray.get_runtime_context().gcs_address
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(ds), stub, address],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = ds / "enrich" / "item-summary.shards"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            done = sorted(p.name[:10] for p in shards.glob("*/r0/out-*.parquet"))
            if done == ["out-000000", "out-000001"] and "T5" in titles(Stub.seen):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the child never reached shard 2: {child.communicate()[0][-2000:]!r}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
        Stub.release.set()
    assert not (ds / "enrich" / "item-summary.parquet").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in shards.glob("*/r0/out-*.parquet")}
    Stub.hold, Stub.seen = set(), []
    res = run_enrich(ds, cfg("item-summary", BackendConfig(backend="openai", model="served", api_base=stub,
                                                           batch_size=2, retries=0)), progress=False)
    assert titles(Stub.seen) == ["T5", "T6", "T7", "T8"]
    (rnd,) = res.info["engine"]["rounds"]
    assert (rnd["run"], rnd["reused"]) == ([2, 3], [0, 1])
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert res.counts == {"ok": 8, "failed": 0, "skipped": 0}


def test_engine_options_are_checked(tmp_path: Path, capsys) -> None:
    """vLLM actors need GPUs; an unknown engine is one line from the CLI (exit 2), nothing written."""
    pytest.importorskip("ray")
    ds = make_dataset(tmp_path / "ds")
    with pytest.raises(InputError, match="--gpus-per-actor"):
        run_enrich(ds, cfg("item-summary", BackendConfig(backend="vllm", model="m")), progress=False)
    with pytest.raises(SystemExit) as e:
        main(["enrich", str(ds), "--task", "item-summary", "--backend", "echo", "--engine", "spark"])
    assert e.value.code == 2 and "engine" in capsys.readouterr().err
    assert not (ds / "enrich" / "item-summary.parquet").exists()


def test_ray_takes_over_from_a_local_run(local_ray, tmp_path: Path, stub: str) -> None:
    """What an earlier --engine local run generated is served from the SQLite cache, shard by shard."""
    ds = write_items(tmp_path / "ds", 8)
    be = BackendConfig(backend="openai", model="served", api_base=stub, batch_size=2, retries=0)
    run_enrich(ds, cfg("item-summary", be, engine="local", limit=3), progress=False)
    assert titles(Stub.seen) == ["T1", "T2", "T3"]
    Stub.seen = []
    res = run_enrich(ds, cfg("item-summary", be), progress=False)
    assert titles(Stub.seen) == ["T4", "T5", "T6", "T7", "T8"]
    (rnd,) = res.info["engine"]["rounds"]
    assert (rnd["from_cache"], rnd["partial"], rnd["run"]) == ([0], [1], [1, 2, 3])
    assert res.info["this_run"]["from_cache"] == 3 and res.info["this_run"]["generated"] == 5
    assert table(ds, "item-summary")["status"].to_list() == ["ok"] * 8
