"""The image path of the LLM recommender: an image-text-to-text model (LLaVA, LLaVA-NeXT, Qwen2-VL, ...) scores
and is fine-tuned on prompts that carry the candidate's image, as MLLM-MSR does with the item cover.

A prompt is a :class:`VisionPrompt` (text + optional PIL image); the chat message is the text followed by the
image (``[{"type": "text"}, {"type": "image"}]``) through the processor's own chat template, and the processor
expands the image placeholder into the model's image tokens. Scoring runs all candidates of a user as **one
right-padded batch** (one forward per user, each score read at its last real token): the image tokens sit in each candidate's suffix and Qwen2-VL's
multimodal rotary positions depend on them, so the text path's KV-cached prefix is not reused here. SFT examples
are the chat-wrapped prompt + answer + end of turn with labels on the answer only, as :func:`.scoring.encode_sft`;
LoRA goes on the language model's linear layers only (not the vision tower or the projector, as MLLM-MSR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, require
from .scoring import answer_token_ids, collate_sft

__all__ = ["LANGUAGE_LORA_TARGETS", "VisionPrompt", "VisionYesNoScorer", "collate_sft_vision",
           "encode_sft_vision", "is_vlm", "load_vlm"]

#: peft ``target_modules`` (a full-match regex): the language model's attention and MLP projections
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class VisionPrompt:
    """A prompt's text and the candidate's image (``None``: text only)."""

    text: str
    image: Any = None


def is_vlm(path: str | Path) -> bool:
    """Whether the model directory's config has a vision tower."""
    tr = require("transformers", "mllm", "the LLM recommender")
    return getattr(tr.AutoConfig.from_pretrained(path), "vision_config", None) is not None


def load_vlm(path: str | Path, device: str = "cpu"):
    """``(model, processor)`` of an image-text-to-text directory (float32), refusing one without chat template."""
    tr = require("transformers", "mllm", "the image path of the LLM recommender")
    try:
        proc = tr.AutoProcessor.from_pretrained(path)
    except (ImportError, AttributeError) as exc:  # e.g. Qwen2-VL's video processor needs torchvision
        raise InputError(f"cannot load the model's processor ({type(exc).__name__}: {str(exc).strip()[:160]}); "
                         "Qwen2-VL processors need torchvision", file=path, field="--model") from None
    if not getattr(proc, "chat_template", None):
        raise InputError("the model has no chat template; the yes/no prompt needs an instruction-tuned (chat) "
                         "model", file=path, field="--model")
    tok = proc.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = tr.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).to(device)
    return model, proc


def _chat(processor, p: VisionPrompt | str) -> tuple[str, Any]:
    p = p if isinstance(p, VisionPrompt) else VisionPrompt(p)
    content = [{"type": "text", "text": p.text}] + ([{"type": "image"}] if p.image is not None else [])
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return text, p.image


def _encode(processor, texts: list[str], images: list[Any], padding_side: str) -> dict[str, torch.Tensor]:
    kw: dict[str, Any] = {"images": images} if images else {}
    return dict(processor(text=texts, padding=True, padding_side=padding_side, return_tensors="pt", **kw))


def encode_sft_vision(processor, prompt: VisionPrompt | str, label: bool | str) -> dict[str, Any]:
    """One supervised example: ``input_ids`` (prompt with its image tokens + answer + end of turn), ``labels``
    (``-100`` on the prompt) and the image tensors the processor made (``pixel_values``, ``image_grid_thw``)."""
    text, image = _chat(processor, prompt)
    enc = _encode(processor, [text], [image] if image is not None else [], "right")
    tok = processor.tokenizer
    answer = label if isinstance(label, str) else ("yes" if label else "no")
    a = list(tok(answer, add_special_tokens=False)["input_ids"])
    if tok.eos_token_id is not None:
        a.append(int(tok.eos_token_id))
    p = enc.pop("input_ids")[0].tolist()
    enc.pop("attention_mask", None)
    return {"input_ids": p + a, "labels": [-100] * len(p) + a, **enc}


def collate_sft_vision(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded text batch (:func:`.scoring.collate_sft`) + the examples' image tensors concatenated in row
    order (``pixel_values`` / ``image_grid_thw`` where present)."""
    batch = collate_sft([(e["input_ids"], e["labels"]) for e in examples], pad_id)
    for key in ("pixel_values", "image_grid_thw", "image_sizes"):
        parts = [e[key] for e in examples if key in e]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    return batch


class VisionYesNoScorer:
    """Scores :class:`VisionPrompt` lists with an image-text-to-text model (eval mode, no gradient);
    ``p = p(yes) / (p(yes) + p(no))`` at the first answer position, as :class:`.scoring.YesNoScorer`."""

    def __init__(self, model, processor, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.processor = processor
        self.device = torch.device(device)
        self.yes_id, self.no_id = answer_token_ids(processor.tokenizer)
        self.forwards = 0

    @torch.inference_mode()
    def score_shared(self, prompts: list[VisionPrompt | str]) -> np.ndarray:
        """One user's candidates as one right-padded batch (one forward); the name matches the text scorer's."""
        chats = [_chat(self.processor, p) for p in prompts]
        enc = _encode(self.processor, [t for t, _ in chats], [im for _, im in chats if im is not None], "right")
        out = self.model(**{k: v.to(self.device) for k, v in enc.items()})
        self.forwards += 1
        last = enc["attention_mask"].sum(1).to(self.device) - 1  # right padding: real positions are 0..len-1
        two = out.logits[torch.arange(last.numel(), device=self.device), last][:, [self.yes_id, self.no_id]].float()
        return torch.softmax(two, dim=-1)[:, 0].cpu().numpy().astype(np.float64)
