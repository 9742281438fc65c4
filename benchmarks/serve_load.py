"""Load test of ``mmseqrec serve``: p50/p99 latency and requests/s of ``POST /recommend`` on loopback.

For each catalogue size (default 10k and 1M items) a synthetic dataset and a randomly initialised SASRec run
(ID encoder, d = 32; synthetic item vectors drawn from 256 Gaussian clusters, since trained item embeddings
cluster and uniform random vectors are the worst case for an inverted-file index) are written to a temporary
folder; the real server (``python -m mmseqrec serve exact=RUN faiss=RUN --index exact --index faiss``) is started
on 127.0.0.1 and ``--clients`` threads send requests to each run for ``--seconds``. Every ``--bad-every``-th request is malformed
(broken JSON, wrong types, k out of range, oversized body, unknown run, extra fields, empty history): each must
be answered 4xx, and the server must still answer ``/health`` at the end. Bounded: the whole script stops
starting new phases when ``--max-seconds`` (default 60) would be exceeded, and reports the skipped ones.

    python benchmarks/serve_load.py                       # 10k and 1M items, exact and FAISS
    python benchmarks/serve_load.py --items 10000 --seconds 5 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mmseqrec.cli.train import build_experiment
from mmseqrec.config import dump_config
from mmseqrec.train.checkpoint import save_model
from mmseqrec.train.run import build_model

BAD = [  # (content bytes, description)
    (b'{"history": [', "broken JSON"),
    (json.dumps({"history": "i1", "k": 5}).encode(), "history not a list"),
    (json.dumps({"history": ["i1"], "k": 0}).encode(), "k = 0"),
    (json.dumps({"history": ["i1"], "k": "many"}).encode(), "k not an int"),
    (json.dumps({"history": ["i1"], "evil": True}).encode(), "extra field"),
    (json.dumps({"history": ["i1"], "run": "nope"}).encode(), "unknown run"),
    (json.dumps({"history": []}).encode(), "empty history"),
    (b'{"history": ["' + b"x" * 70_000 + b'"]}', "oversized body"),
    (b"\xff\xfe\x00", "not UTF-8"),
]


def make_run(root: Path, n_items: int, n_users: int = 500, seq_len: int = 12) -> Path:
    """A prepared dataset of ``n_items`` items (random sequences) and an untrained SASRec run directory."""
    rng = np.random.default_rng(0)
    data = root / f"data-{n_items}"
    data.mkdir(parents=True)
    width = len(str(n_items))
    pl.DataFrame({"item": pl.Series(np.arange(1, n_items + 1), dtype=pl.Int32),
                  "item_id": [f"i{k:0{width}d}" for k in range(1, n_items + 1)],
                  "title": [f"Item {k}" for k in range(1, n_items + 1)]}).write_parquet(data / "items.parquet")
    users = np.repeat(np.arange(1, n_users + 1), seq_len)
    pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32),
                  "item": pl.Series(rng.integers(1, n_items + 1, users.size), dtype=pl.Int32),
                  "timestamp": pl.Series(np.arange(users.size), dtype=pl.Int64)}).write_parquet(
        data / "interactions.parquet")
    pl.DataFrame({"user": pl.Series(np.arange(1, n_users + 1), dtype=pl.Int32),
                  "user_id": [f"u{u}" for u in range(1, n_users + 1)]}).write_parquet(data / "users.parquet")
    (data / "manifest.json").write_text(json.dumps({"format": "synthetic-load", "n_items": n_items,
                                                    "n_users": n_users, "n_interactions": int(users.size)}))
    cfg = build_experiment(data=data, model="sasrec", sets=["item_encoder.dim=32", "train.max_len=20"], seed=0)
    run = root / f"run-{n_items}"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    model = build_model(cfg, n_items)
    with torch.no_grad():  # synthetic item vectors: 256 Gaussian clusters, as trained item embeddings cluster
        centers = torch.randn(256, 32)
        emb = model.item_encoder.embedding.weight
        emb[1:n_items + 1] = centers[torch.randint(0, 256, (n_items,))] + 0.5 * torch.randn(n_items, 32)
    save_model(run / "model.safetensors", model)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run: Path, indexes: list[str], log: Path, deadline: float) -> tuple[subprocess.Popen | None, str]:
    """One server with the run loaded once per index kind, named by the kind (``run`` field of a request)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MMSEQREC_API_KEY", None)
    cmd = [sys.executable, "-m", "mmseqrec", "serve", *[f"{k}={run}" for k in indexes], "--host", "127.0.0.1",
           "--port", str(port)]
    for k in indexes:
        cmd += ["--index", k]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=30)
    return None, url


def load(url: str, run: str, n_items: int, seconds: float, clients: int, bad_every: int, k: int) -> dict:
    width = len(str(n_items))
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    bad_status: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as c:
            i = 0
            while time.perf_counter() < stop:
                i += 1
                try:
                    if bad_every and i % bad_every == 0:
                        body, what = BAD[rnd.randrange(len(BAD))]
                        r = c.post("/recommend", content=body, headers={"content-type": "application/json"})
                        with lock:
                            bad_status[r.status_code] = bad_status.get(r.status_code, 0) + 1
                            if not 400 <= r.status_code < 500:
                                failures.append(f"{what}: {r.status_code}")
                        continue
                    hist = [f"i{rnd.randint(1, n_items):0{width}d}" for _ in range(rnd.randint(3, 20))]
                    t0 = time.perf_counter()
                    r = c.post("/recommend", json={"history": hist, "k": k, "run": run})
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 200 and len(r.json()["items"]) == k:
                            lat.append(dt)
                        else:
                            failures.append(f"good request: {r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"transport: {exc!r}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000
    return {"ok": len(lat), "bad": sum(bad_status.values()), "bad_status": bad_status, "failures": failures[:5],
            "n_failures": len(failures), "seconds": round(wall, 2),
            "p50_ms": float(np.percentile(a, 50)) if a.size else None,
            "p99_ms": float(np.percentile(a, 99)) if a.size else None,
            "req_per_s": len(lat) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--index", nargs="+", default=["exact", "faiss"], choices=["exact", "faiss"])
    ap.add_argument("--seconds", type=float, default=4.0, help="load duration per (catalogue, index)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bad-every", type=int, default=5, help="every N-th request of a client is malformed")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="hard bound for the whole script")
    args = ap.parse_args()
    t_start = time.perf_counter()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        for n in args.items:
            left = args.max_seconds - (time.perf_counter() - t_start)
            if left < 15:
                print(f"{n} items: skipped (time budget of {args.max_seconds:.0f} s spent)")
                continue
            t0 = time.perf_counter()
            run = make_run(Path(tmp), n)
            print(f"{n:,} items: dataset + run written in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            log = Path(tmp) / f"server-{n}.log"
            proc, url = start_server(run, args.index, log, t_start + args.max_seconds - 4)
            if proc is None:
                print(f"  server not up within the time budget ({time.perf_counter() - t0:.1f} s): skipped")
                continue
            health = httpx.get(url + "/health").json()
            print(f"  server up in {time.perf_counter() - t0:.1f} s (loads the run once per index kind, builds "
                  "the FAISS index and measures its recall)")
            for index in args.index:
                left = args.max_seconds - (time.perf_counter() - t_start)
                if left < 4:
                    print(f"  {index}: skipped (time budget of {args.max_seconds:.0f} s spent)")
                    continue
                search = health["runs"][index]["index"]
                secs = min(args.seconds, left - 2)
                res = load(url, index, n, secs, args.clients, args.bad_every, args.k)
                alive = proc.poll() is None and httpx.get(url + "/health").status_code == 200
                ok &= alive and res["n_failures"] == 0
                rows.append({"items": n, "index": index, "search": search, **res, "alive": alive})
                print(f"  {index:5s}: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                      f"{res['req_per_s']:.1f} req/s ({res['ok']} ok in {res['seconds']} s, {args.clients} clients); "
                      f"{res['bad']} malformed -> {res['bad_status']}; failures {res['n_failures']} "
                      f"{res['failures']}; server alive: {alive}; search {search}")
            proc.terminate()
            proc.wait(timeout=30)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    print(json.dumps(rows))
    if not ok:
        raise SystemExit("FAILED: a malformed request was not a 4xx, a good one failed, or the server died")


if __name__ == "__main__":
    main()
