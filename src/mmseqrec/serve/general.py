"""Top-K recommendations from a general (user-item) model run: by user id, or for a set of items.

* ``user``: the user's row of the trained user table; the user's *training* items are never recommended.
* ``items`` (a set, order ignored): fold-in, the user vector is the mean of the items' final vectors (every
  general model scores with a dot product against the same item table), and the given items are excluded.

Unknown ids are reported back. The call takes the same arguments as :class:`~.recommend.Recommender`
(``history, k, exclude_seen, cold``) plus ``user``, so ``mmseqrec recommend`` and ``mmseqrec serve`` answer
general runs through the same seam: ``k >= 1``; no user and no known item is an error, or with
``cold="popularity"`` the most popular training items labelled ``source="popularity"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .recommend import RecommendResult, cold_start_error, item_tables, split_query, top_k

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

    takes_user = True  # the serve app passes a request's ``user`` on

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
        self._popularity: torch.Tensor | None = None
        self.search = None  # general runs are scored exactly (mmseqrec.serve.index keeps them exact)

    def popularity(self) -> torch.Tensor:
        """Training interactions per item id of the run's split (index 0 = padding)."""
        if self._popularity is None:
            counts = np.bincount(self.run.split.train.items, minlength=self.run.dataset.n_items + 1)
            self._popularity = torch.from_numpy(counts.astype(np.float64))
        return self._popularity

    def __call__(self, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True,
                 cold: str = "error", user: str | None = None) -> RecommendResult:
        items = list(history or [])
        known, unknown = split_query(self.index, items, k, cold)
        source = "model"
        if user is not None:
            if user not in self.user_index:
                return RecommendResult(items=[], unknown=[f"user:{user}"] + unknown, history=items)
            u = int(self.user_index[user])
            known = sorted(set(known) | set(self.run.split.train.of(u).tolist()))
            scores = self.I @ self.U[u]
        elif known:
            scores = self.I @ self.I[torch.tensor(known)].mean(0)
        elif cold == "error":
            raise cold_start_error(items, "original item ids with --history, a --user")
        else:
            scores, source = self.popularity(), "popularity"
        scores = scores.clone()
        scores[0] = float("-inf")
        if exclude_seen and known:
            scores[torch.tensor(known, dtype=torch.long)] = float("-inf")
        return RecommendResult(items=top_k(scores, k, self.ids, self.titles), unknown=unknown, history=items,
                               source=source)  # type: ignore[arg-type]
