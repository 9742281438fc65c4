"""Top-K recommendations for any history of original item ids, from a trained run directory.

Unknown ids are reported back, never an error; an empty (or all-unknown) history still gets recommendations
(the model's state for an empty sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["RecommendResult", "Recommender", "item_tables", "recommend"]


@dataclass
class RecommendResult:
    """``items``: ``(original item id, title, score)`` best first; ``unknown``: ids not in the catalogue."""

    items: list[tuple[str, str, float]]
    unknown: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)


def item_tables(ds) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """``(original id -> internal id, internal id -> original id, internal id -> title)`` of a dataset."""
    ids = ds.item_ids()
    items = ds.items.sort("item")
    titles = ["" if t is None else str(t) for t in items["title"].to_list()] if "title" in items.columns else []
    return ds.item_index(), ids, np.asarray([""] + titles if titles else [""] * ids.size, dtype=object)


class Recommender:
    """A loaded run that answers many queries (loads the checkpoint and the item table once)."""

    def __init__(self, run_dir: str | Path, device: str | None = "cpu", data_dir: str | Path | None = None) -> None:
        from ..train.run import load_run

        self.run = load_run(run_dir, device=device, data_dir=data_dir)
        self.index, self.ids, self.titles = item_tables(self.run.dataset)
        self.max_len = int(self.run.config.train.max_len)

    def __call__(self, history: list[str], k: int = 10, exclude_seen: bool = True) -> RecommendResult:
        known = [self.index[h] for h in history if h in self.index]
        unknown = [h for h in history if h not in self.index]
        ids = torch.zeros(1, self.max_len, dtype=torch.long)
        tail = known[-self.max_len:]
        if tail:
            ids[0, -len(tail):] = torch.tensor(tail, dtype=torch.long)
        with torch.no_grad():
            scores = self.run.model.score_all(ids.to(self.run.device)).float()[0].cpu()
        if exclude_seen and known:
            scores[torch.tensor(known, dtype=torch.long)] = float("-inf")
        k = max(0, min(int(k), int(torch.isfinite(scores).sum())))
        top = torch.topk(scores, k)
        items = [(str(self.ids[i]), str(self.titles[i]), float(s))
                 for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        return RecommendResult(items=items, unknown=unknown, history=[str(h) for h in history])


def recommend(run_dir: str | Path, history: list[str], k: int = 10, exclude_seen: bool = True,
              device: str | None = "cpu") -> RecommendResult:
    """Top-``k`` items for ``history`` (original item ids, oldest first) with the run's best checkpoint.

    Parameters
    ----------
    run_dir : a directory written by ``mmseqrec train``.
    history : original item ids; ids not in the catalogue are listed in ``result.unknown``.
    k : number of items.
    exclude_seen : never recommend an item of the history.
    device : torch device for scoring.
    """
    return Recommender(run_dir, device=device)(list(history), k, exclude_seen)
