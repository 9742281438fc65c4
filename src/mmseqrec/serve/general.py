"""Top-K recommendations from a general (user-item) model run: by user id, or for a set of items.

* ``user``: the user's row of the trained user table; the user's *training* items are never recommended.
* ``items`` (a set, order ignored): fold-in, the user vector is the mean of the items' final vectors (every
  general model scores with a dot product against the same item table), and the given items are excluded.

Unknown ids are reported back, never an error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .recommend import RecommendResult, item_tables

__all__ = ["GeneralRecommender", "is_general_run"]


def is_general_run(run_dir: str | Path) -> bool:
    """Whether ``RUN/config.yaml`` names a general model (``bpr``, ``lightgcn``, ...)."""
    import yaml

    from ..registry import MODELS

    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        return False
    name = ((yaml.safe_load(p.read_text()) or {}).get("model") or {}).get("name")
    spec = MODELS.get(str(name))
    return bool(spec is not None and getattr(spec, "general", False))


class GeneralRecommender:
    """A loaded general run answering many queries (item table computed once)."""

    def __init__(self, run_dir: str | Path, device: str | None = "cpu", data_dir: str | Path | None = None,
                 force: bool = False) -> None:
        from ..train.general import load_general_run

        self.run = load_general_run(run_dir, device=device, data_dir=data_dir, force=force)
        ds = self.run.dataset
        self.index, self.ids, self.titles = item_tables(ds)
        users = ds.users
        self.user_index = ({} if users is None else
                           dict(zip(users["user_id"].cast(str).to_list(), users["user"].to_list(), strict=True)))
        with torch.no_grad():
            self.U, self.I = (t.float().cpu() for t in self.run.model.embeddings())

    def __call__(self, items: list[str] | None = None, user: str | None = None, k: int = 10,
                 exclude_seen: bool = True) -> RecommendResult:
        items = list(items or [])
        known = [self.index[h] for h in items if h in self.index]
        unknown = [h for h in items if h not in self.index]
        if user is not None:
            if user not in self.user_index:
                return RecommendResult(items=[], unknown=[f"user:{user}"] + unknown, history=items)
            u = int(self.user_index[user])
            known = sorted(set(known) | set(self.run.split.train.of(u).tolist()))
            scores = self.I @ self.U[u]
        elif known:
            scores = self.I @ self.I[torch.tensor(known)].mean(0)
        else:
            scores = self.I @ self.U[1:].mean(0)  # no query: the average user
        scores = scores.clone()
        scores[0] = float("-inf")
        if exclude_seen and known:
            scores[torch.tensor(known, dtype=torch.long)] = float("-inf")
        k = max(0, min(int(k), int(torch.isfinite(scores).sum())))
        top = torch.topk(scores, k)
        out = [(str(self.ids[i]), str(self.titles[i]), float(s))
               for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        return RecommendResult(items=out, unknown=unknown, history=items)
