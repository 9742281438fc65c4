"""The image path of the LLM recommender on tiny random image-text-to-text models (LLaVA; Qwen2-VL where
torchvision is installed) built from a config, saved and loaded through ``from_pretrained``: p(yes) of a batch
with item images against one forward per prompt and a manual softmax, the answer-only label mask, one LoRA SFT
step lowering the loss, and a ``llmrec train`` run whose prompts carry the candidates' images."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from helpers import run_cli, write_cycle_dataset
from PIL import Image

from mmseqrec.enrich.random_vlm import build_random_vlm
from mmseqrec.errors import InputError
from mmseqrec.llmrec.prompts import RECOMMEND_IMAGE
from mmseqrec.llmrec.vision import (
    LANGUAGE_LORA_TARGETS,
    VisionPrompt,
    VisionYesNoScorer,
    collate_sft_vision,
    encode_sft_vision,
    load_vlm,
)

ARCHS = ["llava", pytest.param("qwen2-vl", marks=pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="the Qwen2-VL processor needs torchvision"))]


def _image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module", params=ARCHS)
def vlm(tmp_path_factory, request):
    path = build_random_vlm(tmp_path_factory.mktemp("vlm") / request.param, arch=request.param, seed=3)
    model, proc = load_vlm(path)
    return path, model.eval(), proc


def _prompts(n: int) -> list[VisionPrompt]:
    out = [VisionPrompt(RECOMMEND_IMAGE.render(preference="likes red things.", title=f"Item {k}" + "x" * k),
                        _image(k)) for k in range(n)]
    return out + [VisionPrompt("A candidate without an image: Item z.")]  # text-only rows mix in the batch


def test_p_yes_with_images_matches_single_forwards_and_a_manual_softmax(vlm):
    _, model, proc = vlm
    scorer = VisionYesNoScorer(model, proc)
    prompts = _prompts(3)
    got = scorer.score_shared(prompts)
    assert scorer.forwards == 1  # one batched forward per user
    tok = proc.tokenizer
    yes, no = tok("yes", add_special_tokens=False)["input_ids"][0], tok("no", add_special_tokens=False)["input_ids"][0]
    n_image_tokens = []
    for p, g in zip(prompts, got, strict=True):
        content = [{"type": "text", "text": p.text}] + ([{"type": "image"}] if p.image is not None else [])
        text = proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                        add_generation_prompt=True)
        enc = proc(text=[text], images=[p.image] if p.image is not None else None, return_tensors="pt")
        n_image_tokens.append(int((enc["input_ids"] == model.config.image_token_id).sum()))
        with torch.no_grad():
            logits = model(**enc).logits[0, -1].double()
        probs = torch.exp(logits - logits.max())
        probs = probs / probs.sum()
        assert g == pytest.approx(float(probs[yes] / (probs[yes] + probs[no])), abs=1e-5)
    assert min(n_image_tokens[:3]) > 0 and n_image_tokens[3] == 0  # the images did enter the prompts


def test_sft_step_with_images_masks_the_prompt_and_lowers_the_loss(vlm):
    import peft

    path, _, proc = vlm
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                       target_modules=LANGUAGE_LORA_TARGETS))
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)  # not the vision tower / projector
    prompts = _prompts(2)
    ex = [encode_sft_vision(proc, prompts[0], True), encode_sft_vision(proc, prompts[1], False),
          encode_sft_vision(proc, prompts[2], "Item z")]
    tok = proc.tokenizer
    answer = tok("yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_ans = len(answer)
    assert ex[0]["labels"][-n_ans:] == answer == ex[0]["input_ids"][-n_ans:]
    assert all(x == -100 for x in ex[0]["labels"][:-n_ans])
    assert "pixel_values" in ex[0] and "pixel_values" not in ex[2]
    batch = collate_sft_vision(ex, tok.pad_token_id)
    assert int((batch["labels"] != -100).sum()) == n_ans + (len(tok("no", add_special_tokens=False)["input_ids"])
                                                            + 1) + len(tok("Item z", add_special_tokens=False)
                                                                       ["input_ids"]) + 1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    before = model(**batch).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = model(**batch).loss
    assert float(after) < float(before.detach())


def test_a_vlm_without_chat_template_is_refused(tmp_path):
    from transformers import AutoProcessor

    path = build_random_vlm(tmp_path / "bare", arch="llava", seed=1)
    proc = AutoProcessor.from_pretrained(path)
    bare = copy.deepcopy(proc)
    bare.chat_template = None
    bare.save_pretrained(path)
    for f in path.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(InputError, match="no chat template"):
        load_vlm(path)


def train_image_run(root: Path, max_train_users: int = 3) -> dict[str, Path]:
    """An ``llmrec train`` run (MLLM-MSR, one epoch) of a tiny random LLaVA on a 30-user, 25-item cycle dataset with
    a PNG per item but items 24 and 25 (no image: text prompt, counted) and a stored preference summary per user:
    ``{"data", "lists", "run"}``; also used by tests/test_serve_llmrec_vision.py."""
    vlm_dir = build_random_vlm(root / "llava", arch="llava", seed=4)
    data = write_cycle_dataset(root / "data", n_users=30, n_items=25, seq_len=8)
    (data / "img").mkdir()
    for i in range(1, 24):
        _image(i).save(data / "img" / f"{i}.png")
    items = pl.read_parquet(data / "items.parquet")
    items.with_columns(pl.Series("image", [f"img/{i}.png" if i < 24 else None for i in items["item"]])
                       ).write_parquet(data / "items.parquet")
    (data / "enrich").mkdir()
    pl.DataFrame({"user": pl.Series(range(1, 31), dtype=pl.Int32), "text": ["likes small items"] * 30,
                  "status": ["ok"] * 30}).write_parquet(data / "enrich" / "user-preference.parquet")
    lists = root / "lists.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--negatives", "5"])
    run = root / "run"
    assert 0 == run_cli(["llmrec", "train", "--data", str(data), "--candidates", str(lists), "--model", str(vlm_dir),
                         "--out", str(run), "--max-train-users", str(max_train_users), "--epochs", "1",
                         "--batch-size", "2"])
    return {"data": data, "lists": lists, "run": run}


def test_llmrec_train_run_with_item_images(tmp_path):
    run = train_image_run(tmp_path)["run"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["inference"]["images"] is True and m["inference"]["forwards_per_user"] == 1.0
    assert m["test"]["n_cases"] == 3 and m["valid"]["n_cases"] == 3
    lora = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert lora["target_modules"] == LANGUAGE_LORA_TARGETS
    before = m["test"]
    assert 0 == run_cli(["llmrec", "evaluate", str(run)])
    again = json.loads((run / "metrics.json").read_text())["test"]
    assert np.allclose([again[k] for k in before], [before[k] for k in before], atol=1e-6)
