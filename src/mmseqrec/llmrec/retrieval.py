"""MMSRARec stage 2: similar-user retrieval from a trained sequential model (SASRec), over **training users only**.

The pool is the candidate file's ``train`` users: each is keyed by the model's user state over its history
before its row's target, and contributes that target (the item it interacted with *next*) as context. Every
row of the file (any split) is a query keyed the same way over its own history; its ``k`` (3) nearest pool users
by cosine similarity, never itself, give the "next items" whose keywords enter the MMSRARec prompt. Validation
and test users are never in the pool, so no evaluated user's held-out item can be returned as a neighbour's
interaction; the model is a leave-one-out run, trained without any user's last two items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..evaluate.evaluator import build_histories
from .candidates import CandidateSet

__all__ = ["SimilarUsers", "similar_users"]


@dataclass(frozen=True)
class SimilarUsers:
    """Per row of the candidate set: ``users [n, k]`` (pool users, most similar first), their ``items [n, k]``
    (what each interacted with next) and ``similarity [n, k]``."""

    users: np.ndarray
    items: np.ndarray
    similarity: np.ndarray


@torch.inference_mode()
def user_states(model, seqs: SequenceData, users: np.ndarray, hist_end: np.ndarray, max_len: int = 50,
                batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """``[n, d]`` L2-normalised user states (``model.user_states``) over the histories ending at ``hist_end``."""
    out = []
    for b0 in range(0, users.size, batch_size):
        h = torch.from_numpy(build_histories(seqs, users[b0:b0 + batch_size], hist_end[b0:b0 + batch_size],
                                             max_len)).to(device)
        s = model.user_states(h).float()
        out.append(torch.nn.functional.normalize(s, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def similar_users(model, seqs: SequenceData, cs: CandidateSet, k: int = 3, max_len: int = 50,
                  device: str = "cpu") -> SimilarUsers:
    """The ``k`` most similar training users of every row of ``cs`` (see the module docstring)."""
    hist_end = cs.hist_end(seqs)
    states = user_states(model, seqs, cs.users, hist_end, max_len, device=device)
    pool = cs.rows("train")
    if pool.size <= k:
        from ..errors import InputError

        raise InputError(f"only {pool.size} training users for {k} similar users", field="k")
    sim = states @ states[pool].T  # [n, P]
    sim[cs.users[:, None] == cs.users[pool][None, :]] = -np.inf  # never the user itself
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sim, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    return SimilarUsers(users=cs.users[pool][top], items=cs.targets[pool][top],
                        similarity=np.take_along_axis(sim, top, 1))
