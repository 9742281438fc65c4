"""The enrichment pipeline with the model-free ``echo`` backend and fake backends: tasks, prompts,
training-only user histories, cache, failures, --limit, crash-resume and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import ENRICH_CHILD
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
    assert df["prompt"][0] == (  # the manifest names no format: the neutral image kind
        "Please describe this image, which is a picture of the item. Provide a detailed description in one "
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


def test_failures_are_stored_and_retried_by_default(ds: Path) -> None:
    be = Recorder(fail_titles=("Blue Cup",))
    res = run_enrich(ds, EnrichConfig(task="item-summary"), backend=be, progress=False)
    df = read(ds, "item-summary").sort("item")
    assert df["status"].to_list() == ["ok", "failed", "ok", "ok"]
    assert df["reason"][1] == "simulated failure" and df["text"][1] is None
    assert res.counts == {"ok": 3, "failed": 1, "skipped": 0}
    be2 = Recorder(fail_titles=("Blue Cup",))  # --keep-failed: the failure is served from the cache, and said so
    res2 = run_enrich(ds, EnrichConfig(task="item-summary", retry_failed=False), backend=be2, progress=False)
    assert be2.prompts == [] and read(ds, "item-summary").sort("item")["status"][1] == "failed"
    assert res2.failed_cached == 1 and res2.info["this_run"]["failed_from_cache"] == 1
    be3 = Recorder()  # default: the failure is generated again
    res3 = run_enrich(ds, EnrichConfig(task="item-summary"), backend=be3, progress=False)
    assert len(be3.prompts) == 1 and "Blue Cup" in be3.prompts[0] and res3.failed_cached == 0
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
    script.write_text(ENRICH_CHILD)
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
    assert "echo = template-only text, no model" in r.output
    out = " ".join(r.output.split())
    assert "this run: 3 generated (0 failed), 0 from cache" in out and "items/s" in out
    assert "1 items beyond --limit (not processed)" in out
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
    text-grounded backends."""
    rec = ContextRecorder()
    run_enrich(ds, EnrichConfig(task="item-views", limit=1), backend=rec, progress=False)
    by_prompt = dict(zip(rec.prompts, rec.contexts, strict=True))
    image_prompt = TEMPLATES["dmesr/view-image"].render()
    assert by_prompt[image_prompt] == {}  # item 1 has a good image: no title, no text
    assert any(c.get("title") == "Red Shirt" for c in rec.contexts)  # the text/both views keep it


def test_image_views_without_an_image_are_skipped_never_faked(ds: Path) -> None:
    """item 1: good image; 2: missing file; 3: corrupt file; 4: no image. The image and both views of items 2-4
    are skipped with their reason (no text-prompt stand-in); the text view is generated for every item."""
    rec = ContextRecorder()
    res = run_enrich(ds, EnrichConfig(task="item-views"), backend=rec, progress=False)
    df = read(ds, "item-views").sort(["item", "view"])
    got = {(r["item"], r["view"]): (r["status"], r["reason"], r["template_id"]) for r in df.iter_rows(named=True)}
    assert got[(1, "image")] == ("ok", None, "dmesr/view-image") and got[(1, "both")][2] == "dmesr/view-both"
    for item in (2, 3, 4):
        assert got[(item, "text")][0] == "ok"
        for view in ("image", "both"):
            status, _, tpl = got[(item, view)]
            assert status == "skipped" and tpl is None
    assert got[(2, "image")][1].startswith("image file not found: ")
    assert got[(3, "both")][1].startswith("corrupt image: ")
    assert got[(4, "image")][1] == "no image"
    assert len(rec.prompts) == 2 + 4  # item 1's image and both views + four text views; nothing else
    assert res.counts == {"ok": 6, "failed": 0, "skipped": 6}
    assert res.info["skipped_reasons"] == {"image file not found": 2, "corrupt image": 2, "no image": 2}
    assert res.info["views"] == {"image": {"ok": 1, "failed": 0, "skipped": 3},
                                 "text": {"ok": 4, "failed": 0, "skipped": 0},
                                 "both": {"ok": 1, "failed": 0, "skipped": 3}}
    assert res.info["units"] == {"kind": "items", "total": 4, "beyond_limit": 0, "ok": 4, "failed": 0, "skipped": 0}

    class TextOnly(Recorder):  # a backend that cannot see images: no view from the image at all
        supports_images = False

    res2 = run_enrich(ds, EnrichConfig(task="item-keywords"), backend=TextOnly(), progress=False)
    kw = read(ds, "item-keywords").filter(pl.col("view") == "image").sort("item")
    assert kw["status"].to_list() == ["skipped"] * 4
    assert kw["reason"].to_list()[0] == "backend has no image input"
    assert res2.counts == {"ok": 4, "failed": 0, "skipped": 4}


def test_enrich_summary_counts_items_views_and_limit(ds: Path) -> None:
    from typer.testing import CliRunner

    from mmseqrec.cli import app

    r = CliRunner().invoke(app, ["enrich", str(ds), "--task", "item-views", "--backend", "echo", "--limit", "2",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    info = json.loads((ds / "enrich" / "item-views.json").read_text())
    # 2 items processed (item 1: three views; item 2: text only, its image is missing), 2 beyond --limit
    assert info["units"] == {"kind": "items", "total": 4, "beyond_limit": 2, "ok": 2, "failed": 0, "skipped": 2}
    assert info["this_run"]["generated"] == 4 and info["this_run"]["items_generated"] == 2
    assert info["skipped_reasons"] == {"beyond --limit": 6, "image file not found": 2}
    out = " ".join(r.output.split())
    assert "2 items beyond --limit (not processed)" in out and "skipped rows: image file not found (2)" in out
    assert "this run: 4 generated (0 failed), 0 from cache" in out and "items/s" in out
    for view in ("view image", "view text", "view both"):
        assert view in out


def test_default_image_kind_follows_the_dataset(ds: Path) -> None:
    """MLLM-MSR's 'a cover of a video' (MicroLens) never leaks into other data: the kind comes from the manifest
    format, else a neutral phrase; an explicit --image-kind wins."""
    def prompt(cfg: EnrichConfig) -> str:
        rec = Recorder()
        run_enrich(ds, cfg, backend=rec, progress=False)
        return rec.prompts[0]

    m = json.loads((ds / "manifest.json").read_text())
    for fmt, kind in (("amazon2023", "a picture of a product"), ("movielens", "a poster of a movie"),
                      ("table", "a picture of the item"), ("synthetic", "a picture of a product")):
        (ds / "manifest.json").write_text(json.dumps({**m, "format": fmt}))
        shutil.rmtree(ds / "enrich", ignore_errors=True)
        p = prompt(EnrichConfig(task="item-description", limit=1))
        assert p.startswith(f"Please describe this image, which is {kind}. "), p
        assert "video" not in p
    info = json.loads((ds / "enrich" / "item-description.json").read_text())
    assert info["options"]["image_kind_source"] == "manifest format 'synthetic'"
    p = prompt(EnrichConfig(task="item-description", limit=1, image_kind="a cover of a video"))
    assert p.startswith("Please describe this image, which is a cover of a video. ")


def test_huge_image_is_not_decoded(ds: Path) -> None:
    """A 12000x12000 PNG header (a few bytes, the pixels never written) is refused from its header: decoding it
    would be reported as a corrupt image instead. item-description falls back to text with the reason."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    (ds / "images" / "good.png").write_bytes(png)
    from mmseqrec.enrich.images import decode_image

    img, why = decode_image(png)
    assert img is None and why == "image too large: 12000x12000 = 144,000,000 pixels > 40,000,000 (not decoded)"
    with pytest.warns(Image.DecompressionBombWarning):  # no cap: Pillow decodes and finds the data truncated
        img, why = decode_image(png, max_pixels=0)
    assert img is None and why.startswith("corrupt image")
    run_enrich(ds, EnrichConfig(task="item-description", limit=1), backend=Recorder(), progress=False)
    row = read(ds, "item-description").sort("item").row(0, named=True)
    assert row["status"] == "ok" and row["template_id"] == "mmseqrec/description-from-text"
    assert row["reason"].startswith("text fallback: image too large: 12000x12000")
    res = run_enrich(ds, EnrichConfig(task="item-views", limit=1), backend=Recorder(), progress=False)
    assert res.info["skipped_reasons"] == {"beyond --limit": 9, "image too large": 2}
