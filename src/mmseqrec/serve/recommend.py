"""Top-K recommendations for any history of original item ids, from a trained run directory.

Unknown ids are reported back. A history with no known item is an error by default (the model has nothing to
condition on); ``cold="popularity"`` answers it with the most popular training items instead, and the result
says so (``source == "popularity"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import InputError

__all__ = ["COLD_POLICIES", "RecommendResult", "Recommender", "cold_start_error", "item_tables", "load_recommender",
           "recommend", "split_query", "top_k", "training_popularity"]

COLD_POLICIES = ("error", "popularity")


@dataclass
class RecommendResult:
    """``items``: ``(original item id, title, score)`` best first; ``unknown``: ids not in the catalogue.

    ``source`` is ``"model"`` (scores are the model's) or ``"popularity"`` (no known history: scores are training
    interaction counts). ``candidates``: the candidate stage a re-ranking model (an LLM recommender) scored
    (``{"stage", "n", "n_scored"}``), ``None`` for models that score the whole catalogue; ``preference``: the
    user-preference text the model's prompt held (``{"text", "source"}``), when the method uses one.
    """

    items: list[tuple[str, str, float]]
    unknown: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    source: Literal["model", "popularity"] = "model"
    candidates: dict | None = None
    preference: dict | None = None


def split_query(index: dict[str, int], history: list[str], k: int, cold: str) -> tuple[list[int], list[str]]:
    """Check ``k`` (>= 1) and the cold-start policy; ``(known internal ids, unknown original ids)`` of
    ``history``. Shared by every recommender of the serve seam."""
    if int(k) < 1:
        raise InputError(f"k must be at least 1, got {k}", field="-k")
    if cold not in COLD_POLICIES:
        raise InputError(f"unknown cold-start policy {cold!r}; choose one of {', '.join(COLD_POLICIES)}",
                         field="--cold")
    return [index[h] for h in history if h in index], [h for h in history if h not in index]


def cold_start_error(history: list[str], alternatives: str = "original item ids with --history") -> InputError:
    """The error for a query with no known item under ``cold="error"``."""
    what = ("no history given" if not history else
            f"none of the {len(history)} history id(s) is in the catalogue ({', '.join(history[:5])}"
            f"{', ...' if len(history) > 5 else ''})")
    return InputError(f"{what}; pass {alternatives}, or --cold popularity for the most popular items",
                      field="--history")


def top_k(scores: torch.Tensor, k: int, ids: np.ndarray, titles: np.ndarray) -> list[tuple[str, str, float]]:
    """``(original id, title, score)`` of the ``k`` best finite scores, best first."""
    top = torch.topk(scores, min(int(k), int(torch.isfinite(scores).sum())))
    return [(str(ids[i]), str(titles[i]), float(s)) for i, s in zip(top.indices.tolist(), top.values.tolist(),
                                                                    strict=True)]


def item_tables(ds) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """``(original id -> internal id, internal id -> original id, internal id -> title)`` of a dataset."""
    ids = ds.item_ids()
    items = ds.items.sort("item")
    titles = ["" if t is None else str(t) for t in items["title"].to_list()] if "title" in items.columns else []
    return ds.item_index(), ids, np.asarray([""] + titles if titles else [""] * ids.size, dtype=object)


def training_popularity(dataset, min_len: int = 3) -> torch.Tensor:
    """Training interactions per item id of ``dataset`` (leave-one-out training prefixes; index 0 = padding), as
    the popularity baseline counts them."""
    from ..data.split import leave_one_out
    from ..train.run import item_popularity

    sp = leave_one_out(dataset.sequences, min_len)
    return torch.from_numpy(item_popularity(sp.seqs, sp.train_end)).double()


def load_recommender(run_dir: str | Path, device: str | None = "cpu", data_dir: str | Path | None = None,
                     force: bool = False, **llm: object):
    """The recommender of the serve seam for any run directory: :class:`Recommender` (sequential and closed-form
    runs), :class:`~.general.GeneralRecommender` (general runs) or :class:`~.llmrec.LLMRecommender` (runs of
    ``mmseqrec llmrec train``; ``llm`` holds its ``candidates_from``, ``n_candidates``, ``candidates_name``)."""
    from .general import GeneralRecommender, is_general_run
    from .llmrec import LLMRecommender, is_llmrec_run

    if is_llmrec_run(run_dir):
        return LLMRecommender(run_dir, device=device, data_dir=data_dir, force=force, **llm)  # type: ignore[arg-type]
    kind = GeneralRecommender if is_general_run(run_dir) else Recommender
    return kind(run_dir, device=device, data_dir=data_dir, force=force)


class Recommender:
    """A loaded run that answers many queries (loads the checkpoint and the item table once)."""

    def __init__(self, run_dir: str | Path, device: str | None = "cpu", data_dir: str | Path | None = None,
                 force: bool = False) -> None:
        from ..train.run import load_run

        self.run = load_run(run_dir, device=device, data_dir=data_dir, force=force)
        self.index, self.ids, self.titles = item_tables(self.run.dataset)
        self.max_len = int(self.run.config.train.max_len)
        self._popularity: torch.Tensor | None = None
        self.search = None  # a FaissSearch over the item vectors (mmseqrec.serve.index); None = exact

    def popularity(self) -> torch.Tensor:
        """Training interactions per item id (index 0 = padding), as used by the popularity baseline."""
        if self._popularity is None:
            self._popularity = training_popularity(self.run.dataset, self.run.config.data.min_len)
        return self._popularity

    def _model_scores(self, ids: torch.Tensor, need: int) -> torch.Tensor:
        """Scores ``[n_items + 1]`` for one left-padded history: exact (``score_all``), or the top-``need`` of
        ``self.search`` and ``-inf`` elsewhere."""
        if self.search is None:
            return self.run.model.score_all(ids).float()[0].cpu()
        return self.search.scores(self.run.model.user_states(ids)[0], need)

    def __call__(self, history: list[str], k: int = 10, exclude_seen: bool = True,
                 cold: Literal["error", "popularity"] = "error") -> RecommendResult:
        known, unknown = split_query(self.index, history, k, cold)
        if not known:
            if cold == "error":
                raise cold_start_error(history)
            scores = self.popularity().clone()
            scores[0] = float("-inf")
            source: Literal["model", "popularity"] = "popularity"
        else:
            ids = torch.zeros(1, self.max_len, dtype=torch.long)
            tail = known[-self.max_len:]
            ids[0, -len(tail):] = torch.tensor(tail, dtype=torch.long)
            with torch.no_grad():
                scores = self._model_scores(ids.to(self.run.device), int(k) + len(known) + 1)
            scores[0] = float("-inf")  # padding is never an item
            source = "model"
            if exclude_seen:
                scores[torch.tensor(known, dtype=torch.long)] = float("-inf")
        return RecommendResult(items=top_k(scores, k, self.ids, self.titles), unknown=unknown,
                               history=[str(h) for h in history], source=source)


def recommend(run_dir: str | Path, history: list[str], k: int = 10, exclude_seen: bool = True,
              device: str | None = "cpu", cold: Literal["error", "popularity"] = "error",
              data_dir: str | Path | None = None, force: bool = False) -> RecommendResult:
    """Top-``k`` items for ``history`` (original item ids, oldest first) with the run's best checkpoint.

    Parameters
    ----------
    run_dir : a directory written by ``mmseqrec train``.
    history : original item ids; ids not in the catalogue are listed in ``result.unknown``.
    k : number of items (at least 1).
    exclude_seen : never recommend an item of the history.
    device : torch device for scoring.
    cold : what to do when no history id is known: ``"error"`` (an :class:`~mmseqrec.errors.InputError`) or
        ``"popularity"`` (the most popular training items; ``result.source == "popularity"``).
    data_dir, force : another copy of the run's dataset (default: the recorded path); ``force`` allows a
        dataset with other content (same item count), see :func:`mmseqrec.train.run.check_data`.
    """
    return Recommender(run_dir, device=device, data_dir=data_dir, force=force)(list(history), k, exclude_seen, cold)
