"""The enrichment pipeline with the model-free ``echo`` backend and fake backends: tasks, prompts,
training-only user histories, cache, failures, --limit, crash-resume and the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from mmseqrec.cli import main
from mmseqrec.enrich import (
    TEMPLATES,
    BackendConfig,
    EnrichConfig,
    GenResponse,
    make_key,
    run_enrich,
)
from mmseqrec.enrich.backends.base import BackendInfo
from mmseqrec.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n_items: int = 4) -> Path:
    """4 items (1: good PNG, 2: missing file, 3: corrupt file, 4: no image), 2 users.

    user 1 sequence = [1, 2, 3, 4] -> train [1, 2], valid 3, test 4; user 2 = [4, 1] (train-only, < 3 items).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / "images" / "good.png")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    pl.DataFrame({
        "item": [1, 2, 3, 4], "item_id": ["A1", "B2", "C3", "D4"],
        "title": ["Red Shirt", "Blue Cup", "Green Hat", "Black Shoe"],
        "description": ["soft cotton", None, "wool", "leather"],
        "categories": [["clothes", "tops"], ["kitchen"], None, ["shoes"]],
        "image": ["images/good.png", "images/missing.jpg", "images/corrupt.jpg", None],
    }, schema_overrides={"item": pl.Int32}).head(n_items).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": [1, 1, 1, 1, 2, 2], "item": [1, 2, 3, 4, 4, 1], "timestamp": [1, 2, 3, 4, 5, 6]},
                 schema_overrides={"user": pl.Int32, "item": pl.Int32}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"user": [1, 2], "user_id": ["u1", "u2"]},
                 schema_overrides={"user": pl.Int32}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"n_users": 2, "n_items": n_items}))
    return root


class Recorder:
    """A fake backend that records every prompt it generates for and answers deterministically."""

    supports_images = True

    def __init__(self, fail_titles: tuple[str, ...] = ()) -> None:
        self.info = BackendInfo("recorder", "rec-model", "r1")
        self.prompts: list[str] = []
        self.images: list[object] = []
        self.fail_titles = fail_titles

    def generate(self, requests):
        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            self.images.append(r.image)
            if r.context.get("title") in self.fail_titles:
                out.append(GenResponse(None, "simulated failure"))
            else:
                out.append(GenResponse(f"OUT[{len(self.prompts)}]"))
        return out


@pytest.fixture()
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def read(ds: Path, task: str) -> pl.DataFrame:
    return pl.read_parquet(ds / "enrich" / f"{task}.parquet")


def test_item_description_images_fallbacks_and_export(ds: Path) -> None:
    be = Recorder()
    res = run_enrich(ds, EnrichConfig(task="item-description"), backend=be, progress=False)
    df = read(ds, "item-description").sort("item")
    assert df["item"].to_list() == [1, 2, 3, 4]
    assert df["status"].to_list() == ["ok"] * 4
    # item 1 is the only one with a decodable image: MLLM-MSR's exact prompt, with the image
    img_tpl = TEMPLATES["mllm-msr/image-summary"]
    assert df["template_id"].to_list() == [img_tpl.id] + ["mmseqrec/description-from-text"] * 3
    assert df["prompt"][0] == (
        "Please describe this image, which is a cover of a video. Provide a detailed description in one "
        "continuous paragraph, including content information and visual features such as colors, objects, "
        "text, and any notable elements present in the image.")
    reasons = df["reason"].to_list()
    assert reasons[0] is None
    assert reasons[1].startswith("text fallback: image file not found")
    assert reasons[2].startswith("text fallback: corrupt image: ")
    assert reasons[3] == "text fallback: no image"
    # text fallback prompt carries the title and the joined text fields
    assert df["prompt"][3] == TEMPLATES["mmseqrec/description-from-text"].render(
        title="Black Shoe", text="categories: shoes; description: leather")
    assert sum(i is not None for i in be.images) == 1 and be.images[0].size == (30, 20)
    assert set(df.columns) >= {"item", "text", "status", "reason", "template_id", "template_version", "prompt",
                               "model_id", "model_revision", "backend", "decoding", "input_hash", "created"}
    assert df["backend"].unique().to_list() == ["recorder"]
    assert json.loads(df["decoding"][0]) == {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0}
    # the input hash is the documented key over (backend, model+revision, template+version, decoding, prompt, image)
    import hashlib
    sha = hashlib.sha256((ds / "images" / "good.png").read_bytes()).hexdigest()
    assert df["input_hash"][0] == make_key(backend="recorder", model_id="rec-model", model_revision="r1",
                                           template_id=img_tpl.id, template_version="1",
                                           decoding=df["decoding"][0], prompt=df["prompt"][0], image_sha256=sha)
    summary = json.loads((ds / "enrich" / "item-description.json").read_text())
    assert summary["counts"] == {"ok": 4, "failed": 0, "skipped": 0} and res.generated == 4
    assert {t["id"] for t in summary["templates"]} == {img_tpl.id, "mmseqrec/description-from-text"}
    # second run: everything from the cache, nothing generated
    be2 = Recorder()
    res2 = run_enrich(ds, EnrichConfig(task="item-description"), backend=be2, progress=False)
    assert be2.prompts == [] and res2.cached == 4 and res2.generated == 0
    assert read(ds, "item-description").sort("item")["text"].to_list() == df["text"].to_list()
    # a changed decoding parameter is a different key: regenerated
    be3 = Recorder()
    run_enrich(ds, EnrichConfig(task="item-description", backend=BackendConfig(
        decoding={"max_new_tokens": 7})), backend=be3, progress=False)
    assert len(be3.prompts) == 4


def test_item_views_and_keywords_rows(ds: Path) -> None:
    run_enrich(ds, EnrichConfig(task="item-views"), backend=Recorder(), progress=False)
    df = read(ds, "item-views").sort(["item", "view"])
    assert df.height == 12 and sorted(df["view"].unique().to_list()) == ["both", "image", "text"]
    one = {r["view"]: r for r in df.filter(pl.col("item") == 1).iter_rows(named=True)}
    assert one["image"]["template_id"] == "dmesr/view-image"
    assert one["both"]["template_id"] == "dmesr/view-both"
    assert "Title: Red Shirt" in one["both"]["prompt"] and "Title: Red Shirt" in one["text"]["prompt"]
    assert "Red Shirt" not in one["image"]["prompt"]  # the image view sees the image alone
    run_enrich(ds, EnrichConfig(task="item-keywords"), backend=Recorder(), progress=False)
    kw = read(ds, "item-keywords")
    assert kw.height == 8 and sorted(kw["view"].unique().to_list()) == ["image", "text"]


def test_user_preference_recurrent_uses_training_items_only(ds: Path) -> None:
    be = Recorder()
    run_enrich(ds, EnrichConfig(task="user-preference", block_size=1), backend=be, progress=False)
    df = read(ds, "user-preference").sort("user")
    assert df["status"].to_list() == ["ok", "ok"]
    # user 1: train = [1, 2] (valid 3 "Green Hat" and test 4 "Black Shoe" never appear); user 2: [4, 1]
    joined = "\n".join(be.prompts[i] for i in range(len(be.prompts)) if "User u1" in be.prompts[i])
    assert "Red Shirt" in joined and "Blue Cup" in joined
    assert "Green Hat" not in joined and "Black Shoe" not in joined
    # 2 blocks per user; block 2 carries block 1's output as the previous preference
    u1 = [p for p in be.prompts if "User u1" in p]
    assert len(u1) == 2 and len(be.prompts) == 4
    assert u1[0] == TEMPLATES["mllm-msr/preference-first-block"].render(
        user="u1", items="1. A1: Title - 'Red Shirt', Video cover description - "
                         "categories: clothes, tops; description: soft cotton.\n")
    first_out = f"OUT[{be.prompts.index(u1[0]) + 1}]"
    assert f"We also know this user's previous preference.\n {first_out}\n" in u1[1]
    assert df["prompt"][0] == u1[1] and df["text"][0] == f"OUT[{be.prompts.index(u1[1]) + 1}]"
    # direct mode: one prompt per user
    be2 = Recorder()
    run_enrich(ds, EnrichConfig(task="user-preference", mode="direct"), backend=be2, progress=False)
    assert len(be2.prompts) == 2 and "2. B2: Title - 'Blue Cup'" in be2.prompts[0]
    # user-profile uses the item-description outputs when they exist
    run_enrich(ds, EnrichConfig(task="item-description"), backend=Recorder(), progress=False)
    desc = read(ds, "item-description").sort("item")["text"].to_list()
    be3 = Recorder()
    run_enrich(ds, EnrichConfig(task="user-profile"), backend=be3, progress=False)
    assert f"1. Red Shirt: {desc[0]}\n2. Blue Cup: {desc[1]}\n" in be3.prompts[0]
    assert "Green Hat" not in be3.prompts[0]


def test_failures_are_stored_and_retried_only_on_request(ds: Path) -> None:
    be = Recorder(fail_titles=("Blue Cup",))
    res = run_enrich(ds, EnrichConfig(task="item-summary"), backend=be, progress=False)
    df = read(ds, "item-summary").sort("item")
    assert df["status"].to_list() == ["ok", "failed", "ok", "ok"]
    assert df["reason"][1] == "simulated failure" and df["text"][1] is None
    assert res.counts == {"ok": 3, "failed": 1, "skipped": 0}
    be2 = Recorder()  # healthy now, but failures are not retried without --retry-failed
    run_enrich(ds, EnrichConfig(task="item-summary"), backend=be2, progress=False)
    assert be2.prompts == [] and read(ds, "item-summary").sort("item")["status"][1] == "failed"
    be3 = Recorder()
    run_enrich(ds, EnrichConfig(task="item-summary", retry_failed=True), backend=be3, progress=False)
    assert len(be3.prompts) == 1 and "Blue Cup" in be3.prompts[0]
    assert read(ds, "item-summary")["status"].to_list() == ["ok"] * 4


def test_limit_keeps_rows_aligned(ds: Path) -> None:
    be = Recorder()
    run_enrich(ds, EnrichConfig(task="item-summary", limit=2), backend=be, progress=False)
    df = read(ds, "item-summary").sort("item")
    assert df["item"].to_list() == [1, 2, 3, 4]
    assert df["status"].to_list() == ["ok", "ok", "skipped", "skipped"]
    assert df["reason"][3] == "beyond --limit" and len(be.prompts) == 2


def test_backend_crash_is_recorded_not_raised(ds: Path) -> None:
    class Boom(Recorder):
        def generate(self, requests):
            raise RuntimeError("CUDA out of memory (simulated)")

    res = run_enrich(ds, EnrichConfig(task="item-summary"), backend=Boom(), progress=False)
    df = read(ds, "item-summary")
    assert res.counts["failed"] == 4
    assert df["reason"].to_list() == ["RuntimeError: CUDA out of memory (simulated)"] * 4


CHILD = textwrap.dedent("""
    import sys, time
    from mmseqrec.enrich import EnrichConfig, GenResponse, register_backend, run_enrich, BackendConfig
    from mmseqrec.enrich.backends.base import BackendInfo
    log = open(sys.argv[2], "a")

    class Slow:
        supports_images = True
        info = BackendInfo("slow", "slow-model", "1")
        def generate(self, reqs):
            out = []
            for r in reqs:
                time.sleep(0.05)
                log.write(r.context["title"] + "\\n"); log.flush()
                out.append(GenResponse("text of " + r.context["title"]))
            return out

    register_backend("slow", lambda cfg: Slow())
    run_enrich(sys.argv[1], EnrichConfig(task="item-summary", backend=BackendConfig(backend="slow", batch_size=2)),
               progress=False)
""")


def test_crash_resume_loses_and_recomputes_nothing(tmp_path: Path) -> None:
    n = 40
    root = tmp_path / "ds"
    make_dataset(root)
    # grow the catalogue to n items (text only)
    pl.DataFrame({"item": list(range(1, n + 1)), "item_id": [f"I{i}" for i in range(1, n + 1)],
                  "title": [f"Item {i:02d}" for i in range(1, n + 1)]},
                 schema_overrides={"item": pl.Int32}).write_parquet(root / "items.parquet")
    (root / "manifest.json").write_text(json.dumps({"n_users": 2, "n_items": n}))
    log = tmp_path / "calls.log"
    log.touch()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(log)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and len(log.read_text().splitlines()) < 15:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_calls = log.read_text().splitlines()
    assert 15 <= len(first_calls) < n, "the child must be killed half-way"
    con = sqlite3.connect(root / "enrich" / "cache.sqlite")
    committed = {p.split("Title: ")[1].split("\n")[0]: t
                 for p, t in con.execute("SELECT prompt, text FROM generations WHERE status = 'ok'")}
    con.close()
    assert len(committed) >= 14 and len(committed) % 2 == 0  # whole batches of 2 only
    assert not (root / "enrich" / "item-summary.parquet").exists()

    class Counting(Recorder):
        info = BackendInfo("slow", "slow-model", "1")  # the same model identity as the killed run

        def generate(self, requests):
            self.prompts.extend(r.context["title"] for r in requests)
            return [GenResponse("text of " + r.context["title"]) for r in requests]

    be = Counting()
    be.info = Counting.info
    res = run_enrich(root, EnrichConfig(task="item-summary", backend=BackendConfig(batch_size=2)), backend=be,
                     progress=False)
    assert set(be.prompts).isdisjoint(committed)  # no finished item recomputed
    assert len(be.prompts) == n - len(committed) and res.cached == len(committed)
    df = pl.read_parquet(root / "enrich" / "item-summary.parquet").sort("item")
    assert df.height == n and df["status"].to_list() == ["ok"] * n  # none lost
    assert all(df.filter(pl.col("text") == f"text of {t}").height == 1 for t in committed)


def test_cli_enrich_echo_and_errors(ds: Path, capsys) -> None:
    from typer.testing import CliRunner

    from mmseqrec.cli import app

    r = CliRunner().invoke(app, ["enrich", str(ds), "--task", "item-description", "--backend", "echo",
                                 "--limit", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "generated now" in r.output and "echo = template-only text, no model" in r.output
    df = read(ds, "item-description").sort("item")
    assert df["status"].to_list() == ["ok", "ok", "ok", "skipped"]
    assert df["text"][0].startswith("echo ") and "[image]" in df["text"][0] and "Red Shirt" in df["text"][0]
    with pytest.raises(SystemExit) as exc:
        main(["enrich", str(ds), "--task", "item-nonsense", "--backend", "echo", "--no-progress"])
    assert exc.value.code == 2
    assert "unknown task 'item-nonsense'" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown backend"):
        run_enrich(ds, EnrichConfig(task="item-summary", backend=BackendConfig(backend="nope")), progress=False)


def test_text_only_backend_gets_text_prompts(ds: Path) -> None:
    class TextOnly(Recorder):
        supports_images = False

    be = TextOnly()
    run_enrich(ds, EnrichConfig(task="item-description"), backend=be, progress=False)
    df = read(ds, "item-description").sort("item")
    assert be.images == [None] * 4
    assert df["template_id"].to_list() == ["mmseqrec/description-from-text"] * 4
    assert df["reason"][0] == "text fallback: backend has no image input"


class ContextRecorder(Recorder):
    """Records the item context a text-grounded backend (offline, echo) would see."""

    uses_context = True

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[dict] = []

    def generate(self, requests):
        self.contexts += [dict(r.context) for r in requests]
        return super().generate(requests)


def test_image_only_views_never_see_item_text(ds: Path) -> None:
    """DMESR's image view (and MMSRARec's image keywords) must come from the image alone, also for
    text-grounded backends; items without a usable image fall back to the text prompt and its context."""
    rec = ContextRecorder()
    run_enrich(ds, EnrichConfig(task="item-views", limit=1), backend=rec, progress=False)
    by_prompt = dict(zip(rec.prompts, rec.contexts, strict=True))
    image_prompt = TEMPLATES["dmesr/view-image"].render()
    assert by_prompt[image_prompt] == {}  # item 1 has a good image: no title, no text
    assert any(c.get("title") == "Red Shirt" for c in rec.contexts)  # the text/both views keep it
    # a missing image falls back to the text prompt with the item's text as context
    rec2 = ContextRecorder()
    run_enrich(ds, EnrichConfig(task="item-views"), backend=rec2, progress=False)
    df = read(ds, "item-views").filter((pl.col("item") == 2) & (pl.col("view") == "image"))
    assert df["template_id"][0] == "dmesr/view-text"
    fallback_ctx = [c for c in rec2.contexts if c.get("title") == "Blue Cup"]
    assert len(fallback_ctx) == 3 and all(c.get("text") for c in fallback_ctx)  # image (fallback), text, both
