"""Yes/no scoring of candidates with a causal LM: ``p = p(yes) / (p(yes) + p(no))`` at the first answer position.

Prompts are wrapped in the model's own chat template (a user turn + the generation prompt); the answer tokens are
the first token of ``"yes"`` and of ``"no"`` as the tokenizer encodes them. All candidates of one user are scored
in **one batched forward that shares the prompt prefix**: the longest common token prefix of the user's prompts
is run once (batch 1, KV cache kept), the cache is repeated over the candidates and their suffixes (right-padded)
run as one batch on top of it; each candidate's score is read at its last real token. The same numbers as one
full forward per candidate (tested), at a fraction of the cost (``benchmarks/llmrec_speed.py``).

:func:`encode_sft` builds the supervised examples: prompt + answer (+ end of turn), labels ``-100`` everywhere but
the answer tokens (the loss is on the answer only; MLLM-MSR's training script puts it on every token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = ["YesNoScorer", "answer_token_ids", "chat_ids", "collate_sft", "encode_sft"]


def _require_chat_template(tokenizer, name: str = "the model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{name} has no chat template; the yes/no prompt needs an instruction-tuned (chat) model "
                         "whose tokenizer defines one", field="--model")


def chat_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as one user turn followed by the assistant's generation prompt."""
    _require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """First token of ``"yes"`` and of ``"no"`` (they must differ)."""
    ids = [tokenizer("yes" if a else "no", add_special_tokens=False)["input_ids"] for a in (True, False)]
    if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
        raise InputError("the tokenizer cannot tell 'yes' from 'no' by their first token", field="--model")
    return int(ids[0][0]), int(ids[1][0])


def encode_sft(tokenizer, prompt: str, label: bool | str, max_length: int = 1024) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one supervised example: the chat-wrapped prompt, then the answer (``yes`` /
    ``no`` for a bool ``label``, else the text itself, e.g. an auxiliary task's title) and the end-of-turn token;
    labels are ``-100`` on the prompt (the loss covers the answer tokens only).

    A prompt too long for ``max_length`` is cut from the left of the prompt (the answer is always kept).
    """
    p = chat_ids(tokenizer, prompt)
    answer = label if isinstance(label, str) else ("yes" if label else "no")
    a = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        a.append(int(tokenizer.eos_token_id))
    p = p[max(0, len(p) + len(a) - max_length):]
    return p + a, [-100] * len(p) + a


def collate_sft(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (``input_ids``, ``attention_mask``, ``labels`` with ``-100`` on padding)."""
    n = max(len(x) for x, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), n), -100, dtype=torch.long)
    att = torch.zeros((len(examples), n), dtype=torch.long)
    for r, (x, y) in enumerate(examples):
        ids[r, : len(x)] = torch.tensor(x)
        lab[r, : len(y)] = torch.tensor(y)
        att[r, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    arr = np.asarray([s[:n] for s in seqs])
    same = (arr == arr[:1]).all(0)
    return int(n if same.all() else np.argmin(same))


class YesNoScorer:
    """Scores (user, candidate) prompts with a causal LM (eval mode, no gradient).

    Parameters
    ----------
    model : transformers causal LM (or a peft model wrapping one)
    tokenizer : its tokenizer (must have a chat template)
    device : torch device
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu") -> None:
        _require_chat_template(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.forwards = 0  # model forward calls (for the efficiency report)

    def _p_yes(self, logits: torch.Tensor) -> torch.Tensor:
        two = logits[..., [self.yes_id, self.no_id]].float()
        return torch.softmax(two, dim=-1)[..., 0]  # = p(yes) / (p(yes) + p(no)) of the full softmax

    @torch.inference_mode()
    def score_shared(self, prompts: list[str]) -> np.ndarray:
        """One user's candidates: the shared prefix once, the suffixes as one batch on its KV cache."""
        ids = [chat_ids(self.tokenizer, p) for p in prompts]
        c = len(ids)
        k = min(_common_prefix(ids), min(len(s) for s in ids) - 1)  # every suffix keeps >= 1 token
        suffix = [s[k:] for s in ids]
        s_len = torch.tensor([len(s) for s in suffix], device=self.device)
        n = int(s_len.max())
        batch = torch.full((c, n), self.pad_id, dtype=torch.long, device=self.device)
        att = torch.zeros((c, k + n), dtype=torch.long, device=self.device)
        att[:, :k] = 1
        for r, s in enumerate(suffix):
            batch[r, : len(s)] = torch.tensor(s, device=self.device)
            att[r, k: k + len(s)] = 1
        past = None
        if k > 0:
            pre = torch.tensor([ids[0][:k]], device=self.device)
            past = self.model(input_ids=pre, use_cache=True).past_key_values
            past.batch_repeat_interleave(c)
            self.forwards += 1
        pos = torch.arange(k, k + n, device=self.device).unsqueeze(0).expand(c, n)
        out = self.model(input_ids=batch, attention_mask=att, past_key_values=past, position_ids=pos, use_cache=False)
        self.forwards += 1
        last = out.logits[torch.arange(c, device=self.device), s_len - 1]
        return self._p_yes(last).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def score_each(self, prompts: list[str]) -> np.ndarray:
        """Reference path: one full forward per prompt (no sharing)."""
        out = []
        for p in prompts:
            ids = torch.tensor([chat_ids(self.tokenizer, p)], device=self.device)
            out.append(float(self._p_yes(self.model(input_ids=ids).logits[0, -1])))
            self.forwards += 1
        return np.asarray(out, dtype=np.float64)

    @torch.inference_mode()
    def score_generate(self, prompts: list[str]) -> np.ndarray:
        """Baseline of ``benchmarks/llmrec_speed.py``: one ``generate`` call per candidate (MLLM-MSR's way),
        reading the first generated position's logits."""
        out = []
        for p in prompts:
            ids = torch.tensor([chat_ids(self.tokenizer, p)], device=self.device)
            gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                      do_sample=False, output_logits=True, return_dict_in_generate=True,
                                      pad_token_id=self.pad_id)
            out.append(float(self._p_yes(gen.logits[0][0])))
            self.forwards += 1
        return np.asarray(out, dtype=np.float64)
