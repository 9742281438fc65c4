"""Shared test data: a tiny prepared dataset directory whose next item is learnable."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["ENRICH_CHILD", "ChatStub", "run_cli", "write_cycle_dataset", "write_genre_dataset"]

#: A script that runs ``enrich --task item-summary`` with a slow fake backend: ``python - DATA LOG [HOLD]``. Each
#: generation takes 50 ms and appends the item title to LOG; while the file HOLD exists the backend waits after
#: its first generation. Prints ``finished`` or the error's class and message.
ENRICH_CHILD = """
import os, sys, time
from mmseqrec.enrich import EnrichConfig, GenResponse, register_backend, run_enrich, BackendConfig
from mmseqrec.enrich.backends.base import BackendInfo
log = open(sys.argv[2], "a")
hold = sys.argv[3] if len(sys.argv) > 3 else None

class Slow:
    supports_images = True
    info = BackendInfo("slow", "slow-model", "1")
    def generate(self, reqs):
        out = []
        for r in reqs:
            time.sleep(0.05)
            log.write(r.context["title"] + "\\n"); log.flush()
            while hold and os.path.exists(hold):
                time.sleep(0.01)
            out.append(GenResponse("text of " + r.context["title"]))
        return out

register_backend("slow", lambda cfg: Slow())
try:
    run_enrich(sys.argv[1], EnrichConfig(task="item-summary", backend=BackendConfig(backend="slow", batch_size=2)),
               progress=False)
    print("finished", flush=True)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""


class ChatStub(BaseHTTPRequestHandler):
    """A local OpenAI-compatible chat-completions server (what ``vllm serve`` exposes) for the openai backend:
    a subclass answers ``answer(body, prompt, content) -> (status code, JSON payload)``; ``prompt`` is the
    request's text, ``content`` the message content (a string, or a list with an image part)."""

    def log_message(self, *a) -> None:
        pass

    def answer(self, body: dict, prompt: str, content: object) -> tuple[int, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        prompt = content if isinstance(content, str) else content[-1]["text"]
        code, payload = self.answer(body, prompt, content)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def write_cycle_dataset(root: Path, n_users: int, n_items: int, seq_len: int) -> Path:
    """Each user walks the item cycle with a step of 1 or 2 from a random start: the next item is
    predictable from the last two, so a sequence model must beat random by far."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        start, step = rng.integers(0, n_items), 1 + (u % 2)
        users += [u] * seq_len
        items += ((start + step * np.arange(seq_len)) % n_items + 1).tolist()
        ts += list(range(1000 * u, 1000 * u + seq_len))
    return _write(root, users, items, ts, n_users, n_items)


def write_genre_dataset(root: Path, n_users: int = 300, n_items: int = 80, seq_len: int = 40) -> Path:
    """Two genres (items ``1..n/2`` and ``n/2+1..n``) with the same Zipf popularity inside each; every user
    watches one genre, most popular first more often. Popularity alone gives every user the same top list; a
    model that learned from the sequences recommends the genre of the history."""
    rng = np.random.default_rng(0)
    half = n_items // 2
    w = 1.0 / np.arange(1, half + 1)
    w /= w.sum()
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        seq = rng.choice(half, size=min(seq_len, half), replace=False, p=w) + 1 + (u % 2) * half
        users += [u] * seq.size
        items += seq.tolist()
        ts += list(range(1000 * u, 1000 * u + seq.size))
    return _write(root, users, items, ts, n_users, n_items)


def _write(root: Path, users: list[int], items: list[int], ts: list[int], n_users: int, n_items: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32), "item": pl.Series(items, dtype=pl.Int32),
                  "timestamp": pl.Series(ts, dtype=pl.Int64)}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"item": pl.Series(range(1, n_items + 1), dtype=pl.Int32),
                  "item_id": [f"i{i}" for i in range(1, n_items + 1)],
                  "title": [f"Item {i}" for i in range(1, n_items + 1)]}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": pl.Series(range(1, n_users + 1), dtype=pl.Int32),
                  "user_id": [f"u{u}" for u in range(1, n_users + 1)]}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"format": "synthetic", "n_users": n_users,
                                                    "n_items": n_items, "n_interactions": len(items)}))
    return root


def run_cli(args: list[str]) -> int:
    """Run the ``mmseqrec`` entry point; return its exit code (typer exits 0 on success)."""
    from mmseqrec.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0
