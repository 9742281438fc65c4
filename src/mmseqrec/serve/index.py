"""Top-K search over item vectors for serving: exact by default, a FAISS index for large catalogues.

Every run whose model scores items as ``user_state @ item_matrix.T`` (the sequence models) can be served from an
index; the FAISS index is an inverted-file index with inner-product metric (``IVF<nlist>,Flat``), trained on the
item vectors themselves. Its recall@K against exact search is measured when it is built (on a sample of item
vectors used as queries) and reported by ``/health``, so an approximate answer is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import require

__all__ = ["FAISS_THRESHOLD", "FaissSearch", "attach_index", "recall_at_k"]

#: catalogues with at least this many items use the FAISS index when ``--index auto``
FAISS_THRESHOLD = 200_000


def recall_at_k(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` (top-K ids per query) found in the same row of ``approx``."""
    hits = [len(set(e.tolist()) & set(a.tolist())) / max(1, len(e)) for e, a in zip(exact, approx, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


@dataclass
class FaissSearch:
    """An inner-product FAISS index over ``items [N + 1, d]`` (row 0, padding, is left out).

    ``nlist`` defaults to about sqrt(N) lists, trained (k-means) on 40 item vectors per list; ``nprobe`` lists
    are visited per query; ``recall`` is recall@``recall_k`` against exact search measured at
    build time on ``queries`` (e.g. user states of dataset users; default: ``n_probe_queries`` item vectors).
    """

    index: object
    n_items: int
    nlist: int
    nprobe: int
    recall: float
    recall_k: int

    @classmethod
    def build(cls, items: torch.Tensor, nlist: int | None = None, nprobe: int = 16, recall_k: int = 10,
              n_probe_queries: int = 200, seed: int = 0,
              queries: torch.Tensor | None = None) -> FaissSearch:
        faiss = require("faiss", "serve", "the FAISS index (--index faiss)")
        x = np.ascontiguousarray(items[1:].detach().float().cpu().numpy())
        n, d = x.shape
        nlist = nlist or max(1, min(4096, int(np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, size=40 * nlist, replace=False)] if n > 40 * nlist else x  # faiss: >= 39/list
        index.train(train)
        index.add(x)
        index.nprobe = min(nprobe, nlist)
        out = cls(index, n, nlist, int(index.nprobe), float("nan"), recall_k)
        q = (np.ascontiguousarray(queries.detach().float().cpu().numpy()) if queries is not None
             else x[rng.choice(n, size=min(n, n_probe_queries), replace=False)])
        kk = min(recall_k, n)
        xt = torch.from_numpy(x)
        exact = np.concatenate([torch.topk(torch.from_numpy(q[i:i + 16]) @ xt.T, kk).indices.numpy()
                                for i in range(0, len(q), 16)])
        _, approx = index.search(q, kk)
        out.recall = recall_at_k(exact, approx)
        return out

    def scores(self, query: torch.Tensor, need: int) -> torch.Tensor:
        """A full score vector ``[N + 1]`` that holds the index's top-``need`` scores and ``-inf`` elsewhere, so
        the caller's masking and top-K apply unchanged."""
        q = np.ascontiguousarray(query.detach().float().cpu().numpy().reshape(1, -1))
        vals, idx = self.index.search(q, min(int(need), self.n_items))
        keep = idx[0] >= 0
        out = torch.full((self.n_items + 1,), float("-inf"))
        out[torch.from_numpy(idx[0][keep] + 1)] = torch.from_numpy(vals[0][keep]).float()
        return out

    def info(self) -> dict[str, object]:
        return {"kind": "faiss-ivf-flat", "nlist": self.nlist, "nprobe": self.nprobe,
                f"recall@{self.recall_k}_vs_exact": round(self.recall, 4)}


def attach_index(recommender: object, kind: str = "auto", threshold: int = FAISS_THRESHOLD,
                 nprobe: int = 16) -> dict[str, object]:
    """Give ``recommender`` (a :class:`~mmseqrec.serve.recommend.Recommender`) a FAISS index when ``kind`` is
    ``faiss``, or ``auto`` and the catalogue has at least ``threshold`` items; ``exact`` keeps full scoring.

    Its recall@10 against exact search is measured on the user states of (up to) the first 200 dataset users'
    full sequences. Only models that score as ``user_states @ item_matrix.T`` can be indexed; others stay exact under ``auto`` and
    are refused under ``faiss``. Returns how the recommender now searches.
    """
    from ..errors import InputError

    if kind not in ("auto", "exact", "faiss"):
        raise InputError(f"unknown index {kind!r}; choose auto, exact or faiss", field="--index")
    model = recommender.run.model  # type: ignore[attr-defined]
    indexable = hasattr(model, "user_states") and hasattr(model, "item_matrix")
    n_items = int(recommender.run.dataset.n_items)  # type: ignore[attr-defined]
    if kind == "faiss" and not indexable:
        what = ("an LLM recommender re-ranks a candidate list" if hasattr(recommender, "n_candidates") else
                f"{type(model).__name__} does not score by an inner product with item vectors")
        raise InputError(f"{what}; serve it with --index exact", field="--index")
    if kind == "exact" or not indexable or (kind == "auto" and n_items < threshold):
        recommender.search = None  # type: ignore[attr-defined]
        return {"kind": "exact"}
    from ..train.batching import left_padded

    seqs = recommender.run.dataset.sequences  # type: ignore[attr-defined]
    users = np.arange(1, min(seqs.n_users, 200) + 1)
    hist = left_padded(seqs.items, seqs.indptr[users], seqs.indptr[users + 1],
                       int(recommender.max_len))  # type: ignore[attr-defined]
    with torch.no_grad():
        items = model.item_matrix()
        queries = model.user_states(torch.as_tensor(hist, dtype=torch.long, device=items.device))
    recommender.search = FaissSearch.build(items, nprobe=nprobe, queries=queries)  # type: ignore[attr-defined]
    return recommender.search.info()  # type: ignore[attr-defined]
