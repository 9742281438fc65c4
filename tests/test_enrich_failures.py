"""enrich fails loudly: an unreachable server stops the run at once, a server that fails every request stops it
after a few failures in a row, a run where nothing succeeded exits non-zero with the reasons, and a second run
of the same task is refused while the first one writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from helpers import ENRICH_CHILD
from test_enrich_pipeline import make_dataset
from typer.testing import CliRunner

from mmseqrec.cli import app, main
from mmseqrec.enrich import BackendConfig, EnrichConfig, run_enrich
from mmseqrec.enrich.runner import EnrichAborted, EnrichBusy

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture()
def ds(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "ds")
    n = 30
    pl.DataFrame({"item": list(range(1, n + 1)), "item_id": [f"I{i}" for i in range(1, n + 1)],
                  "title": [f"Item {i:02d}" for i in range(1, n + 1)]},
                 schema_overrides={"item": pl.Int32}).write_parquet(root / "items.parquet")
    (root / "manifest.json").write_text(json.dumps({"n_users": 2, "n_items": n}))
    return root


def test_openai_with_no_server_stops_at_once(ds: Path, capsys) -> None:
    """Before: 30 items took 61 s, 'ok 0, failed 30', exit 0. Now: one refused connection ends the run, exit 2,
    the reason on stderr, nothing exported (the connection is refused at once: no retries, no backoff)."""
    port = closed_port()
    with pytest.raises(SystemExit) as exc:
        main(["enrich", str(ds), "--task", "item-summary", "--backend", "openai", "--model", "m", "--api-base",
              f"http://user:SECRET@127.0.0.1:{port}/v1?token=abc", "--no-progress"])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot connect to http://127.0.0.1:{port}: ConnectError" in err and "is the server running?" in err
    assert "Nothing exported" in err and "SECRET" not in err and "token" not in err
    assert not (ds / "enrich" / "item-summary.parquet").exists()


class ErrorHandler(BaseHTTPRequestHandler):
    code = 500
    calls = 0

    def log_message(self, *a) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        data = json.dumps({"error": f"stub error {self.code}"}).encode()
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def stub():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ErrorHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ErrorHandler.calls = 0
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_server_failing_every_request_stops_after_a_few(ds: Path, stub: str) -> None:
    ErrorHandler.code = 500
    cfg = EnrichConfig(task="item-summary", max_consecutive_failures=4, backend=BackendConfig(
        backend="openai", model="m", api_base=stub, batch_size=2, concurrency=2, retries=1, backoff_s=0.001))
    with pytest.raises(EnrichAborted, match=r"4 generations failed in a row; first reasons: HTTP 500 after 2 "
                                            r"attempts.*Nothing exported"):
        run_enrich(ds, cfg, progress=False)
    assert ErrorHandler.calls == 4 * 2  # two batches of two requests, each tried twice; then the run stopped
    assert not (ds / "enrich" / "item-summary.parquet").exists()


def test_nothing_succeeded_exits_non_zero_with_reasons(ds: Path, stub: str) -> None:
    ErrorHandler.code = 400
    r = CliRunner().invoke(app, ["enrich", str(ds), "--task", "item-summary", "--backend", "openai", "--model", "m",
                                 "--api-base", stub, "--limit", "3", "--max-consecutive-failures", "0",
                                 "--no-progress"])
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert "no generation succeeded (3 failed); first reasons: HTTP 400: {\"error\": \"stub error 400\"}" in out
    df = pl.read_parquet(ds / "enrich" / "item-summary.parquet")  # the record of what failed is exported
    assert df["status"].to_list()[:3] == ["failed"] * 3


def test_concurrent_runs_of_one_task_never_generate_twice(ds: Path, tmp_path: Path) -> None:
    """Before: two concurrent runs generated the same items twice. Now the second is refused with a clear
    message while the first writes, and every item is generated exactly once."""
    log = tmp_path / "calls.log"
    log.touch()
    script = tmp_path / "child.py"
    script.write_text(ENRICH_CHILD)
    hold = tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    first = subprocess.Popen([sys.executable, str(script), str(ds), str(log), str(hold)], env=env,
                             stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not log.read_text():
        time.sleep(0.02)
    second = subprocess.run([sys.executable, str(script), str(ds), str(log), str(tmp_path / "no-hold")], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    hold.unlink()
    out1, _ = first.communicate(timeout=120)
    assert out1.strip() == "finished"
    assert second.stdout.startswith("EnrichBusy another `enrich --task item-summary` run (pid "), second.stdout
    calls = log.read_text().splitlines()
    assert len(calls) == 30 and len(set(calls)) == 30
    with pytest.raises(EnrichBusy):  # the lock is per task: held here, refused for another process's run
        from mmseqrec.enrich.runner import task_lock

        with task_lock(ds, "item-summary"), task_lock(ds, "item-summary"):
            pass
    with task_lock(ds, "item-summary"), task_lock(ds, "item-views"):  # other tasks run side by side
        pass
    # the first run ended: the lock is free again
    res = run_enrich(ds, EnrichConfig(task="item-summary", backend=BackendConfig(backend="echo")), progress=False)
    assert res.counts["ok"] == 30
