"""Yes/no scoring of candidates with a causal LM: ``p = p(yes) / (p(yes) + p(no))`` at the first answer position.

Prompts are wrapped in the model's own chat template (a user turn + the generation prompt); the answer tokens are
the first token of ``"yes"`` and of ``"no"`` as the tokenizer encodes them. All candidates of one user are scored
with **one shared prompt prefix**: the longest common token prefix of the user's prompts is run once (batch 1,
KV cache kept; across users the cache is cut back to the part the next user's prefix shares), then the
candidates' suffixes are packed into one sequence on top of it (block-diagonal causal mask, no padding) and the
LM head is applied at their last tokens only. The same numbers as one full forward per candidate (tested), at a
fraction of the cost (``benchmarks/llmrec_speed.py``).

:func:`encode_sft` builds the supervised examples: prompt + answer (+ end of turn), labels ``-100`` everywhere but
the answer tokens (the loss is on the answer only; MLLM-MSR's training script puts it on every token);
:func:`answer_loss` computes that loss with the LM head at the answer positions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = ["YesNoScorer", "answer_loss", "answer_token_ids", "chat_ids", "collate_sft", "encode_sft"]


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


#: causal LMs whose logits are exactly ``lm_head(model(...).last_hidden_state)`` (no soft-capping or scaling)
_PLAIN_HEAD = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The SFT loss of a :func:`collate_sft` batch: mean cross-entropy over the answer tokens (labels not
    ``-100``), as ``model(**batch).loss``, but with the LM head applied **at the answer positions only** (about
    2 of ~170 positions per example: the head's ``d x vocabulary`` product and its backward are skipped
    elsewhere). Models outside the plain Llama/Qwen/Mistral layout (e.g. image-text-to-text ones) use
    ``model(**batch).loss``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if getattr(base.config, "model_type", None) not in _PLAIN_HEAD or body is None or head is None:
        return model(**batch).loss
    labels = batch["labels"]
    sel = labels[:, 1:] != -100  # position t predicts token t + 1
    hidden = body(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    logits = head(hidden[:, :-1][sel]).float()
    return torch.nn.functional.cross_entropy(logits, labels[:, 1:][sel])


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5: ``past_key_values`` is deprecated there) or ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


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
        self.forwards = 0  # model forward (or generate) calls, for the efficiency report
        self.generated = 0  # tokens generated by :meth:`score_generate`

    def _p_yes(self, logits: torch.Tensor) -> torch.Tensor:
        two = logits[..., [self.yes_id, self.no_id]].float()
        return torch.softmax(two, dim=-1)[..., 0]  # = p(yes) / (p(yes) + p(no)) of the full softmax

    def _ids(self, prompts: list[str]) -> list[list[int]]:
        """Chat-wrapped token ids of ``prompts`` (templates rendered, then one batched tokenizer call)."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True) for p in prompts]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @torch.inference_mode()
    def score_shared(self, prompts: list[str]) -> np.ndarray:
        """One user's candidates: the shared prefix once, the suffixes packed into one sequence on its KV cache."""
        return self.score_users([prompts])[0]

    @torch.inference_mode()
    def score_users(self, users: Sequence[list[str]]) -> list[np.ndarray]:
        """Several users' candidate lists, each as :meth:`score_shared`; the KV cache of the previous user's
        prefix is kept and cut back to the tokens the next user's prefix shares with it (the chat template's
        system turn and the prompt's opening words), so that part is computed once per call, not per user.

        Per user: the longest common token prefix of its prompts runs once (batch 1, on the kept cache); the
        candidates' suffixes are **packed** into one sequence (no padding) whose block-diagonal causal mask lets
        each suffix token see the prefix and the earlier tokens of its own suffix only, with each suffix's
        positions continuing the prefix's; logits are computed at the suffixes' last tokens only
        (``logits_to_keep``). Two forward calls per user at most; the same p(yes) as one full forward per
        prompt (tested).
        """
        out: list[np.ndarray] = []
        past, kept = None, []  # cache over the token ids ``kept``
        kw = _cache_kwarg(self.model)
        for prompts in users:
            ids = self._ids(prompts)
            k = min(_common_prefix(ids), min(len(s) for s in ids) - 1)  # every suffix keeps >= 1 token
            reuse = _common_prefix([kept, ids[0][:k]]) if past is not None and kept else 0
            if reuse == 0:
                past = None
            elif reuse < past.get_seq_length():
                past.crop(reuse - past.get_seq_length())  # a negative count removes that many (all versions)
            if k > reuse:
                pre = torch.tensor([ids[0][reuse:k]], device=self.device)
                res = self.model(input_ids=pre, **{kw: past}, use_cache=True, logits_to_keep=1)
                past = _returned_cache(res)
                self.forwards += 1
            kept = ids[0][:k]
            suffix = [s[k:] for s in ids]
            lens = torch.tensor([len(s) for s in suffix], device=self.device)
            seg = torch.repeat_interleave(torch.arange(len(suffix), device=self.device), lens)
            offset = torch.arange(seg.numel(), device=self.device) - torch.repeat_interleave(lens.cumsum(0) - lens,
                                                                                             lens)
            dtype = self.model.get_input_embeddings().weight.dtype
            allowed = torch.ones((seg.numel(), k + seg.numel()), dtype=torch.bool, device=self.device)
            allowed[:, k:] = (seg[:, None] == seg[None, :]) & (offset[:, None] >= offset[None, :])
            mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            flat = torch.tensor([[t for s in suffix for t in s]], device=self.device)
            last = lens.cumsum(0) - 1
            res = self.model(input_ids=flat, attention_mask=mask[None, None], **{kw: past},
                             position_ids=(k + offset)[None], use_cache=past is not None, logits_to_keep=last)
            self.forwards += 1
            out.append(self._p_yes(res.logits[0]).cpu().numpy().astype(np.float64))
        return out

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
    def score_generate(self, prompts: list[str], batch_size: int = 1, max_new_tokens: int = 1) -> np.ndarray:
        """Baselines of ``benchmarks/llmrec_speed.py``: ``generate`` on ``batch_size`` prompts at a time
        (left-padded), greedy, reading p(yes) from the first generated position's scores.

        ``batch_size=1, max_new_tokens=1``: one minimal generate call per candidate. ``batch_size=6,
        max_new_tokens=30``: MLLM-MSR's test script (``test/microlens/test_with_llava_sft.py``: ``datasets.map``
        batches of 6 (user, candidate) rows, ``processor(..., padding=True)``, ``generate(max_new_tokens=30,
        return_dict_in_generate=True, output_scores=True)``, ``scores[0]`` at the Yes/No ids); generation stops
        early once every row of the batch has produced the end-of-turn token. ``self.generated`` counts the
        tokens generated per row.
        """
        out = []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for b0 in range(0, len(prompts), batch_size):
                chunk = self._ids(prompts[b0:b0 + batch_size])
                enc = self.tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(self.device)
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          output_scores=True, return_dict_in_generate=True,
                                          pad_token_id=self.pad_id)
                out.append(self._p_yes(gen.scores[0]).cpu().numpy())
                self.forwards += 1
                self.generated += len(gen.scores) * len(chunk)
        finally:
            self.tokenizer.padding_side = side
        return np.concatenate(out).astype(np.float64)
