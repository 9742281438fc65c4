"""An LLM-recommender run on an image-text-to-text model (tiny random LLaVA, CPU) behind the serve seam: loaded and
scored as ``llmrec evaluate`` does, the candidates' images from the dataset in the prompts, items without an image
on the text prompt and counted in the response."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("peft", reason="the llm extra (peft) is not installed")
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_llmrec_vision import train_image_run

from mmseqrec.serve.app import create_app
from mmseqrec.serve.llmrec import LLMRecommender


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    paths = train_image_run(tmp_path_factory.mktemp("serve-vlm"), max_train_users=1)
    return {**paths, "rec": LLMRecommender(paths["run"], n_candidates=25)}


def _reference(run, prompts: list[tuple[str, Image.Image | None]]) -> np.ndarray:
    """p(yes) / (p(yes) + p(no)) with one forward per prompt through the processor's chat template (base model +
    the run's adapter, loaded here)."""
    import peft
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(run.model_dir)
    model = peft.PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(run.model_dir,
                                                                                       dtype=torch.float32),
                                           run.path / "adapter").eval()
    tok = proc.tokenizer
    yes, no = tok("yes", add_special_tokens=False)["input_ids"][0], tok("no", add_special_tokens=False)["input_ids"][0]
    out = []
    for text, image in prompts:
        content = [{"type": "text", "text": text}] + ([{"type": "image"}] if image is not None else [])
        chat = proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                        add_generation_prompt=True)
        enc = proc(text=[chat], images=[image] if image is not None else None, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1].double()
        out.append(float(torch.softmax(logits[[yes, no]], 0)[0]))
    return np.asarray(out)


def test_served_scores_carry_the_candidates_images(vision_run):
    from mmseqrec.llmrec.prompts import RECOMMEND, RECOMMEND_IMAGE, load_prompt_texts

    rec = vision_run["rec"]
    c = TestClient(create_app({"vlm": rec}, api_key=""), raise_server_exceptions=False)
    assert c.get("/health").json()["runs"]["vlm"]["images"] is True
    hist = [str(rec.ids[i]) for i in range(1, 20)]
    r = c.post("/recommend", json={"history": hist, "k": 4, "run": "vlm"})
    assert r.status_code == 200, r.text
    body = r.json()
    # every item but the history (items 20..25) is a candidate; items 24 and 25 have no image and keep the text prompt
    assert body["candidates"] == {"stage": "popularity", "n": 25, "n_scored": 6,
                                  "images": {"with_image": 4, "text_only": 2}}
    pref = body["preference"]["text"]
    texts = load_prompt_texts(rec.run.dataset)
    cands = np.arange(20, 26)
    prompts = [(RECOMMEND_IMAGE.render(preference=pref, title=texts.title[i]),
                Image.open(vision_run["data"] / "img" / f"{i}.png").convert("RGB")) if i < 24 else
               (RECOMMEND.render(preference=pref, title=texts.title[i], description=texts.description[i]), None)
               for i in cands]
    ref = dict(zip((str(rec.ids[i]) for i in cands), _reference(rec.run, prompts), strict=True))
    # each served score is its prompt's p(yes); the served four are the reference's top four (a random model's
    # scores lie close together: compared within the tolerance, not by order)
    got = {it["item_id"]: it["score"] for it in body["items"]}
    assert got == pytest.approx({i: ref[i] for i in got}, abs=1e-5)
    assert min(got.values()) >= sorted(ref.values(), reverse=True)[4] - 1e-5
    assert list(got.values()) == sorted(got.values(), reverse=True)


def test_served_prompts_are_the_evaluation_prompts(vision_run):
    """For a test row of the candidate file (its user, its history before the target), the served prompts are the
    ones ``llmrec evaluate`` scores, images included (plus the two items without one)."""
    from mmseqrec.llmrec.candidates import read_candidate_set
    from mmseqrec.llmrec.run import ItemImages, LLMRecConfig, Prompter

    rec = vision_run["rec"]
    ds = rec.run.dataset
    cs = read_candidate_set(vision_run["lists"], ds.n_items)
    prompter = Prompter(LLMRecConfig.model_validate(rec.run.config.model_dump()), ds, cs)
    prompter.images = ItemImages(ds)
    row = int(cs.rows("test")[0])
    user = int(cs.users[row])
    known = ds.sequences.sequence(user)[: int(cs.positions[row])].tolist()
    items = np.r_[cs.candidates[row], [24, 25]]
    served, pref = rec.prompts(known, items, user)
    assert pref["source"] == "enrich/user-preference.parquet"
    expected = [prompter.prompt(row, int(i)) for i in items]
    assert [p.text for p in served] == [p.text for p in expected]
    no_image = [int(i) >= 24 for i in items]
    assert [p.image is None for p in served] == [p.image is None for p in expected] == no_image
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image))
               for a, b, none in zip(served, expected, no_image, strict=True) if not none)


def test_recommend_command_counts_the_prompts_with_images(vision_run, capsys):
    from helpers import run_cli

    rec = vision_run["rec"]
    hist = ",".join(str(rec.ids[i]) for i in range(1, 20))
    assert run_cli(["recommend", str(vision_run["run"]), "--history", hist, "-k", "2", "--n-candidates", "25"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "(6 scored; 4 with the item's image, 2 text only)" in out


def test_the_image_cache_is_bounded(vision_run, monkeypatch):
    import mmseqrec.serve.llmrec as served

    rec = vision_run["rec"]
    monkeypatch.setattr(served, "_IMAGE_CACHE", 3)
    first, _ = rec.prompts([1, 2], np.arange(3, 9))
    assert len(rec.images.cache) >= 6
    again, _ = rec.prompts([1, 2], np.arange(3, 9))  # cleared, decoded again: the same prompts
    assert len(rec.images.cache) == 6
    assert [(p.text, np.asarray(p.image).tobytes()) for p in again] == [(p.text, np.asarray(p.image).tobytes())
                                                                        for p in first]
