"""MMSRARec's reward for tuning the keyword summariser (stage 1, GRPO): ``R = alpha R_info + beta R_recon +
gamma R_len`` (methods.md §4.1, paper):

* ``R_info = cos(phi(W), phi(text))``: cosine of the sentence embeddings of the keywords and of the item text;
* ``R_recon = -exp(-(1/N) sum_j log P(w_j | w_<j, W))``: minus the perplexity of reconstructing the item text
  ``w_1..w_N`` from the keywords ``W`` with a causal LM (the paper leaves the model unspecified);
* ``R_len = -|W|``: minus the number of keywords (comma-separated, empty entries ignored).

The paper gives no alpha / beta / gamma; the defaults here are ours. Each term is a plain function of its
inputs (the embedding function and the LM are passed in), batched over completions, so a GRPO trainer (TRL
``GRPOTrainer`` reward functions take ``completions`` and return one float each) can call them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["RewardWeights", "keyword_count", "reward", "reward_info", "reward_len", "reward_recon"]


class RewardWeights:
    """``alpha, beta, gamma`` (ours: 1.0, 0.01, 0.05; the paper does not report them)."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.01, gamma: float = 0.05) -> None:
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)


def keyword_count(keywords: str) -> int:
    """Number of comma-separated, non-empty keywords."""
    return sum(1 for k in keywords.split(",") if k.strip())


def reward_len(keywords: Sequence[str]) -> np.ndarray:
    """``-|W|`` per completion."""
    return -np.asarray([keyword_count(k) for k in keywords], dtype=np.float64)


def reward_info(keywords: Sequence[str], texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]
                ) -> np.ndarray:
    """``cos(embed(keywords), embed(text))`` per pair; ``embed`` maps a list of strings to ``[n, d]``."""
    a = np.asarray(embed(list(keywords)), dtype=np.float64)
    b = np.asarray(embed(list(texts)), dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


@torch.inference_mode()
def reward_recon(keywords: Sequence[str], texts: Sequence[str], model, tokenizer,
                 template: str = "Keywords: {keywords}\nDescription:") -> np.ndarray:
    """Minus the perplexity of ``text`` given the keywords (prompt ``template``), per pair: the mean negative
    log-likelihood over the text's tokens only (the prompt's tokens are context)."""
    out = []
    for kw, text in zip(keywords, texts, strict=True):
        p = tokenizer(template.format(keywords=kw), add_special_tokens=False)["input_ids"]
        t = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + t])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        tgt = ids[0, 1:]
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[len(p) - 1:]
        out.append(-float(torch.exp(nll.mean())))
    return np.asarray(out, dtype=np.float64)


def reward(keywords: Sequence[str], texts: Sequence[str], *, embed: Callable[[list[str]], np.ndarray], model,
           tokenizer, weights: RewardWeights | None = None) -> np.ndarray:
    """``alpha R_info + beta R_recon + gamma R_len`` per completion."""
    w = weights or RewardWeights()
    return (w.alpha * reward_info(keywords, texts, embed) + w.beta * reward_recon(keywords, texts, model, tokenizer)
            + w.gamma * reward_len(keywords))
