"""Hugging Face transformers backend: image-text-to-text models (Qwen2.5-VL, Qwen2-VL, SmolVLM, LLaVA,
LLaVA-NeXT, ...) and text-only causal LMs, from a hub id or a local directory.

Batched generation with left padding, greedy by default, bf16 on CUDA, images resized within a pixel budget
(``max_pixels``) before the processor sees them, requests sorted by prompt length (and grouped by whether they
carry an image) to reduce padding. The prompt goes through the model's own chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import InputError, require
from .base import BackendInfo, GenRequest, GenResponse, resize_to_budget, to_pil

__all__ = ["TransformersBackend"]


def _revision(model: str, revision: str | None) -> str:
    if revision:
        return revision
    p = Path(model)
    if p.is_dir():  # a local directory: identify it by the hash of its config + weights index
        import hashlib

        h = hashlib.sha256()
        for name in ("config.json", "model.safetensors.index.json", "generation_config.json"):
            f = p / name
            if f.exists():
                h.update(f.read_bytes())
        w = p / "model.safetensors"
        if w.exists():
            st = w.stat()
            h.update(f"{st.st_size}".encode())
        return "local-" + h.hexdigest()[:16]
    return "main"


class TransformersBackend:
    """Generate with ``AutoModelForImageTextToText`` (or ``AutoModelForCausalLM`` for text-only models)."""

    def __init__(self, cfg: Any) -> None:
        if not cfg.model:
            raise InputError("the transformers backend needs --model (a hub id or a local directory)",
                             field="--model")
        self.cfg = cfg
        self.info = BackendInfo("transformers", cfg.model, _revision(cfg.model, cfg.revision))
        self._loaded = False
        # known before loading (the runner keys image requests differently): a vision tower in the config
        try:
            tr = require("transformers", "mllm", "the transformers backend")
            mcfg = tr.AutoConfig.from_pretrained(cfg.model, **({"revision": cfg.revision} if cfg.revision else {}))
            self.supports_images = getattr(mcfg, "vision_config", None) is not None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the model config of {cfg.model!r}: {exc}", field="--model") from None

    def _load(self) -> None:
        torch = require("torch", "mllm", "the transformers backend")
        tr = require("transformers", "mllm", "the transformers backend")
        cfg = self.cfg
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.dtype == "auto":
            dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, cfg.dtype)
        kw = {"revision": cfg.revision} if cfg.revision else {}
        try:
            self.processor = tr.AutoProcessor.from_pretrained(cfg.model, **kw)
        except (OSError, ValueError, KeyError):
            self.processor = None
        tok = getattr(self.processor, "tokenizer", None)
        self.model = None
        if tok is not None and self.supports_images:  # a multimodal processor
            try:
                self.model = tr.AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype, **kw)
            except ValueError:
                self.model = None
        if self.model is None:  # text-only causal LM
            self.processor = None
            tok = tr.AutoTokenizer.from_pretrained(cfg.model, **kw)
            self.model = tr.AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kw)
            if self.supports_images:
                raise InputError(f"{cfg.model!r} has a vision tower but no image-text-to-text class", field="--model")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tok = tok
        self.model.eval().to(dev)
        if dev == "cpu" and cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = dev
        self.torch = torch
        self._loaded = True

    def _chat(self, prompt: str, has_image: bool) -> str:
        content: Any
        if self.processor is not None:
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
            owner = self.processor
        else:
            content = prompt
            owner = self.tok
        if getattr(owner, "chat_template", None) is None and getattr(self.tok, "chat_template", None) is None:
            return prompt
        return owner.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)

    def _run(self, reqs: list[GenRequest], images: list[Any] | None) -> list[str]:
        texts = [self._chat(r.prompt, images is not None) for r in reqs]
        if self.processor is not None:
            enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        else:
            enc = self.tok(texts, padding=True, return_tensors="pt")
        enc = enc.to(self.device)
        if "pixel_values" in enc and self.model.dtype != self.torch.float32:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        d = self.cfg.decoding
        gen_kw: dict[str, Any] = {"max_new_tokens": max(r.max_new_tokens for r in reqs),
                                  "pad_token_id": self.tok.pad_token_id}
        if d.temperature > 0:
            gen_kw.update(do_sample=True, temperature=d.temperature, top_p=d.top_p)
        else:
            gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, **gen_kw)
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:
        if not self._loaded:
            self._load()
        out: list[GenResponse | None] = [None] * len(requests)
        imgs: dict[int, Any] = {}
        for i, r in enumerate(requests):
            if r.image is not None and self.supports_images:
                try:
                    imgs[i] = resize_to_budget(to_pil(r.image), self.cfg.max_pixels)
                except Exception as exc:  # noqa: BLE001 - one bad image must not sink the batch
                    out[i] = GenResponse(None, f"image: {type(exc).__name__}: {exc}")
        with_img = sorted(imgs, key=lambda i: len(requests[i].prompt))
        text_only = sorted((i for i in range(len(requests)) if i not in imgs and out[i] is None),
                           key=lambda i: len(requests[i].prompt))
        bs = max(1, self.cfg.batch_size)
        for group, has_img in ((with_img, True), (text_only, False)):
            for s in range(0, len(group), bs):
                idx = group[s : s + bs]
                try:
                    texts = self._run([requests[i] for i in idx], [imgs[i] for i in idx] if has_img else None)
                    for i, t in zip(idx, texts, strict=True):
                        out[i] = GenResponse(t) if t else GenResponse(None, "empty output")
                except Exception as exc:  # noqa: BLE001 - record the failure for every request of the batch
                    for i in idx:
                        out[i] = GenResponse(None, f"{type(exc).__name__}: {exc}"[:500])
        return [o if o is not None else GenResponse(None, "not generated") for o in out]
