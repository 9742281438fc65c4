"""vLLM in-process backend (optional extra ``mmseqrec[vllm]``); raises a clear error when vLLM is absent.

Requests go through ``LLM.chat`` with images as base64 data URLs, so any vLLM-supported MLLM works; greedy
unless a temperature is set.
"""

from __future__ import annotations

from typing import Any

from ...errors import InputError, require
from .base import BackendInfo, GenRequest, GenResponse
from .openai_backend import image_data_url

__all__ = ["VLLMBackend"]


class VLLMBackend:
    supports_images = True

    def __init__(self, cfg: Any) -> None:
        self.vllm = require("vllm", "vllm", "the vllm backend")
        if not cfg.model:
            raise InputError("the vllm backend needs --model", field="--model")
        self.cfg = cfg
        self.info = BackendInfo("vllm", cfg.model, cfg.revision or "main")
        self._llm: Any = None

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:
        if self._llm is None:
            kw = {"revision": self.cfg.revision} if self.cfg.revision else {}
            self._llm = self.vllm.LLM(model=self.cfg.model, dtype="auto", **kw)
        d = self.cfg.decoding
        msgs = []
        for r in requests:
            content: Any = r.prompt
            if r.image is not None:
                content = [{"type": "image_url", "image_url": {"url": image_data_url(r.image, self.cfg.max_pixels)}},
                           {"type": "text", "text": r.prompt}]
            msgs.append([{"role": "user", "content": content}])
        params = self.vllm.SamplingParams(temperature=d.temperature, top_p=d.top_p,
                                          max_tokens=max(r.max_new_tokens for r in requests))
        outs = self._llm.chat(msgs, params, use_tqdm=False)
        return [GenResponse(o.outputs[0].text.strip()) if o.outputs and o.outputs[0].text.strip()
                else GenResponse(None, "empty output") for o in outs]
