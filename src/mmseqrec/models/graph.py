"""General (non-sequential) recommenders on a user-item graph: BPR-MF, LightGCN, VBPR, FREEDOM, MLLMRec.

Pure torch (``torch.sparse`` for every graph; no dense ``N x N`` matrix: kNN graphs are built in row chunks).
Ids follow the project: users ``1..n_users``, items ``1..n_items``, row 0 of every table is padding and has no
edges. Every model exposes

* ``loss(users, pos, neg) -> (total, parts)`` for a batch of BPR triples (one sampled negative each);
* ``embeddings() -> (U [n_users + 1, d], I [n_items + 1, d])`` after propagation; scores are ``U[u] @ I.T``.

Written from the papers (MMRec is GPL; read to understand only):

* BPR-MF: Rendle et al., UAI 2009. L2 on the batch's embeddings (``reg_weight``).
* LightGCN: He et al., SIGIR 2020. ``E^(l+1) = D^-1/2 A D^-1/2 E^(l)``; final = mean of layers ``0..L``.
* VBPR: He & McAuley, AAAI 2016, without bias terms: item = ``[gamma_i ; W f_i]``, user = ``[gamma_u ; theta_u]``.
* FREEDOM: Zhou & Shen, MM 2023. Frozen item-item graph = weighted sum of per-modality kNN graphs (binary,
  ``k`` neighbours, symmetric normalisation), ``n_mm_layers`` convolutions of the item ID embeddings added to
  LightGCN's item output; degree-sensitive edge pruning of the user-item graph (resampled every epoch);
  BPR + ``mm_weight`` x BPR of the users against projected modality features + L2.
* MostPop: training popularity (users per item), the floor every general model must clear.
* MLLMRec: Dang et al. (arXiv 2508.15304 / SIGIR 2026), from its released ``src/models/mllmrec.py``: item-item
  graph = (kNN ``k`` on item features, denoised: similarity ``< pure`` -> 0, else 1) + (Jaccard co-occurrence
  over training users, entries equal to 1 zeroed, top-``jac_k`` per row, weighted), row-degree symmetric
  normalisation; item = MLP(features + graph x features); user = MLP(preference-profile features). Switches:
  ``denoise=False`` keeps the kNN cosine weights, ``cooccurrence=False`` drops the Jaccard part, ``profiles=None``
  replaces the user tower by an ID embedding.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..config import Config

__all__ = [
    "BPRMF",
    "FREEDOM",
    "VBPR",
    "BPRConfig",
    "FreedomConfig",
    "GeneralModel",
    "LightGCN",
    "LightGCNConfig",
    "MLLMRec",
    "MLLMRecConfig",
    "MostPop",
    "MostPopConfig",
    "VBPRConfig",
    "bipartite_adjacency",
    "bpr_loss",
    "jaccard_topk",
    "knn_graph",
    "mllmrec_item_graph",
    "propagate",
    "sym_normalize",
]


# ------------------------------------------------------------------------------------------- graph pieces

def sym_normalize(rows: Tensor, cols: Tensor, vals: Tensor, n: int) -> Tensor:
    """Sparse ``D^-1/2 G D^-1/2`` of the ``n x n`` matrix ``G`` given as COO (``D`` = row sums; duplicate
    entries are summed first; rows with zero sum stay zero)."""
    g = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals.float(), (n, n), check_invariants=False).coalesce()
    r, c = g.indices()
    v = g.values()
    deg = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, r, v)
    inv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    return torch.sparse_coo_tensor(g.indices(), inv[r] * v * inv[c], (n, n), check_invariants=False).coalesce()


def bipartite_adjacency(users: Tensor, items: Tensor, n_users: int, n_items: int) -> Tensor:
    """LightGCN's normalised adjacency over ``n_users + 1`` user nodes then ``n_items + 1`` item nodes."""
    off = n_users + 1
    rows = torch.cat([users, items + off])
    cols = torch.cat([items + off, users])
    return sym_normalize(rows, cols, torch.ones(rows.numel(), device=users.device), off + n_items + 1)


def to_csr(adj: Tensor) -> Tensor:
    """The CSR form of a sparse matrix for repeated ``torch.sparse.mm`` (forward + backward about 2x faster
    than COO on CPU)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return adj.to_sparse_csr()


def propagate(adj: Tensor, x: Tensor, n_layers: int, combine: Literal["mean", "sum"] = "mean") -> Tensor:
    """Layers ``x, A x, A^2 x, ...`` combined by mean (LightGCN) or sum (MLLMRec)."""
    out, h = x, x
    for _ in range(n_layers):
        h = torch.sparse.mm(adj, h)
        out = out + h
    return out / (n_layers + 1) if combine == "mean" else out


def _topk_rows(rows: Tensor, cols: Tensor, vals: Tensor, k: int) -> Tensor:
    """Boolean mask keeping, per row, the ``k`` largest values (ties: smaller column first)."""
    order = torch.argsort(cols, stable=True)
    order = order[torch.argsort(-vals[order], stable=True)]
    order = order[torch.argsort(rows[order], stable=True)]
    r = rows[order]
    first = torch.ones_like(r, dtype=torch.bool)
    first[1:] = r[1:] != r[:-1]
    start = torch.cummax(torch.where(first, torch.arange(r.numel(), device=r.device), 0), 0).values
    rank = torch.arange(r.numel(), device=r.device) - start
    keep = torch.zeros_like(vals, dtype=torch.bool)
    keep[order] = rank < k
    return keep


def knn_graph(feats: Tensor, k: int, chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` cosine neighbours of every row of ``feats`` (itself included, as MLLMRec and FREEDOM do).

    Returns ``(rows, cols, cosine)`` COO triples; computed in row chunks (no ``N x N`` matrix).
    """
    x = F.normalize(feats.float(), dim=-1)
    k = min(k, x.shape[0])
    rows, cols, vals = [], [], []
    for c0 in range(0, x.shape[0], chunk):
        sim = x[c0:c0 + chunk] @ x.T
        v, i = torch.topk(sim, k, dim=1)
        rows.append(torch.arange(c0, c0 + sim.shape[0], device=x.device).repeat_interleave(k))
        cols.append(i.reshape(-1))
        vals.append(v.reshape(-1))
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def jaccard_topk(users: Tensor, items: Tensor, n_items: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Item-item Jaccard over users ``|U_i & U_j| / |U_i | U_j|`` from (user, item) pairs; entries equal to 1
    are zeroed (MLLMRec; this removes the diagonal), then the ``k`` largest per row are kept with their weight.

    Indices are 0-based item rows (``item - 1``); returns COO triples over ``n_items`` rows.
    """
    pairs = torch.unique(torch.stack([users, items - 1]), dim=1)
    n_u = int(users.max().item()) + 1 if users.numel() else 1
    a = torch.sparse_coo_tensor(pairs, torch.ones(pairs.shape[1]), (n_u, n_items), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used internally by sparse @ sparse
        warnings.simplefilter("ignore", UserWarning)
        inter = torch.sparse.mm(a.t().coalesce(), a).coalesce()
    r, c = inter.indices()
    v = inter.values()
    deg = torch.zeros(n_items).index_add_(0, pairs[1], torch.ones(pairs.shape[1]))
    jac = v / (deg[r] + deg[c] - v)
    ok = jac < 1.0
    r, c, jac = r[ok], c[ok], jac[ok]
    keep = _topk_rows(r, c, jac, k)
    return r[keep], c[keep], jac[keep]


def mllmrec_item_graph(feats: Tensor, users: Tensor, items: Tensor, *, knn_k: int = 10, pure: float = 0.7,
                       jac_k: int = 10, denoise: bool = True, cooccurrence: bool = True) -> Tensor:
    """MLLMRec's item-item graph over item rows ``1..n_items`` of ``feats`` (row 0 padding: no edges).

    ``feats`` is ``[n_items + 1, D]``; ``users, items`` are the *training* pairs. Returns the normalised sparse
    ``[n_items + 1, n_items + 1]`` matrix.
    """
    n_items = feats.shape[0] - 1
    r, c, v = knn_graph(feats[1:], knn_k)
    if denoise:
        keep = v >= pure
        r, c, v = r[keep], c[keep], torch.ones(int(keep.sum()))
    rows, cols, vals = [r], [c], [v]
    if cooccurrence:
        jr, jc, jv = jaccard_topk(users, items, n_items, jac_k)
        rows.append(jr)
        cols.append(jc)
        vals.append(jv)
    return sym_normalize(torch.cat(rows) + 1, torch.cat(cols) + 1, torch.cat(vals), n_items + 1)


def modality_graph(feats: list[Tensor], weights: list[float], k: int) -> Tensor:
    """FREEDOM's frozen item-item graph: ``sum_m w_m * sym_norm(binary kNN_k(feats_m))`` over rows ``1..n``."""
    n = feats[0].shape[0]
    total = None
    for f, w in zip(feats, weights, strict=True):
        r, c, _ = knn_graph(f[1:], k)
        g = sym_normalize(r + 1, c + 1, torch.ones(r.numel()), n) * w
        total = g if total is None else (total + g)
    return total.coalesce()


def bpr_loss(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``-mean log sigmoid(u.pos - u.neg)``."""
    return -F.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()


def _l2(*xs: Tensor) -> Tensor:
    """MMRec-style embedding regulariser: ``sum ||x||^2 / 2`` over the batch, divided by the batch size."""
    return sum(x.pow(2).sum() for x in xs) / 2 / xs[0].shape[0]


# ---------------------------------------------------------------------------------------------- configs

class BPRConfig(Config):
    """BPR-MF. Attributes: ``dim`` embedding width; ``reg_weight`` L2 on the batch embeddings."""

    name: Literal["bpr"] = "bpr"
    dim: int = Field(64, ge=1)
    reg_weight: float = Field(1e-4, ge=0)


class LightGCNConfig(Config):
    """LightGCN. Attributes: ``dim``; ``n_layers`` propagation steps; ``reg_weight`` L2 on layer-0 embeddings."""

    name: Literal["lightgcn"] = "lightgcn"
    dim: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=0)
    reg_weight: float = Field(1e-4, ge=0)


class VBPRConfig(Config):
    """VBPR. ``embeddings``: item feature stores (concatenated); ``dim`` total width (half ID, half content)."""

    name: Literal["vbpr"] = "vbpr"
    embeddings: list[str] = Field(min_length=1)
    dim: int = Field(64, ge=2)
    reg_weight: float = Field(1e-4, ge=0)

    def embedding_names(self) -> list[str]:
        return list(self.embeddings)


class FreedomConfig(Config):
    """FREEDOM. ``embeddings``: one item feature store per modality; ``weights``: their graph weights (default:
    equal); ``knn_k``; ``n_mm_layers`` item-item convolutions; ``n_layers`` user-item layers; ``dropout``:
    fraction of user-item edges pruned each epoch (degree-sensitive); ``mm_weight``: weight of the modality BPR
    terms; ``reg_weight``: L2."""

    name: Literal["freedom"] = "freedom"
    embeddings: list[str] = Field(min_length=1)
    weights: list[float] | None = None
    dim: int = Field(64, ge=1)
    knn_k: int = Field(10, ge=1)
    n_mm_layers: int = Field(1, ge=0)
    n_layers: int = Field(2, ge=0)
    dropout: float = Field(0.8, ge=0, lt=1)
    mm_weight: float = Field(0.0, ge=0)
    reg_weight: float = Field(1e-4, ge=0)

    def embedding_names(self) -> list[str]:
        return list(self.embeddings)


class MLLMRecConfig(Config):
    """MLLMRec. ``embedding``: item multimodal-description features (a list of stores is concatenated);
    ``profiles``: user preference-profile features (a store with ``n_users + 1`` rows; ``None`` = ID user
    embeddings, the "no profiles" switch); ``profile_stand_in: item-mean`` replaces the store by a
    deterministic stand-in computed at build time (no language model): the mean of the item features over the
    user's profile items; ``profile_source``: what the profiles were generated from (``training`` items only,
    or ``all-interactions``, the leaky original, always reported under that name; with the stand-in it also
    decides which items are averaged); ``knn_k``, ``pure`` (denoising threshold), ``jac_k`` (co-occurrence
    neighbours), ``denoise``, ``cooccurrence``; ``n_ii_layers``; ``dim`` output width (MLP hidden = 4 x dim)."""

    name: Literal["mllmrec"] = "mllmrec"
    embedding: str | list[str]
    profiles: str | None = None
    profile_stand_in: Literal["none", "item-mean"] = "none"
    profile_source: Literal["training", "all-interactions"] = "training"
    dim: int = Field(64, ge=1)
    knn_k: int = Field(10, ge=1)
    pure: float = Field(0.7, gt=0, le=1)
    jac_k: int = Field(10, ge=1)
    denoise: bool = True
    cooccurrence: bool = True
    n_ii_layers: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one_profile_source(self) -> MLLMRecConfig:
        if self.profile_stand_in != "none" and self.profiles:
            raise ValueError("give either model.profiles (a user store) or model.profile_stand_in, not both")
        return self

    def embedding_names(self) -> list[str]:
        return [self.embedding] if isinstance(self.embedding, str) else list(self.embedding)

    def user_embedding_names(self) -> list[str]:
        return [self.profiles] if self.profiles else []

    def profile_key(self) -> str | None:
        """The ``tensors`` key of the user-tower input (a store name, the stand-in's key, or ``None``)."""
        if self.profile_stand_in != "none":
            return f"{self.profile_stand_in}:{self.profile_source}"
        return self.profiles


class MostPopConfig(Config):
    """Training popularity on a general split (number of training users per item; ``pop`` is the
    leave-one-out counterpart). No options, no parameters."""

    name: Literal["mostpop"] = "mostpop"


# ----------------------------------------------------------------------------------------------- models

class GeneralModel(nn.Module):
    """Base: BPR on ``embeddings()`` (+ ``extra_loss``); subclasses define ``embeddings`` and ``reg_terms``."""

    reg_weight: float = 0.0

    def embeddings(self) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reg_terms(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
        return ()

    def extra_loss(self, u: Tensor, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        return {}

    def on_epoch_start(self, generator: torch.Generator | None = None) -> None:
        """Per-epoch hook (FREEDOM resamples its pruned graph)."""

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        U, I = self.embeddings()
        u = U[users]
        parts = {"bpr": bpr_loss(u, I[pos], I[neg])}
        parts.update(self.extra_loss(u, users, pos, neg))
        terms = self.reg_terms(users, pos, neg)
        if self.reg_weight and terms:
            parts["reg"] = self.reg_weight * _l2(*terms)
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def score_users(self, users: Tensor, emb: tuple[Tensor, Tensor] | None = None) -> Tensor:
        U, I = emb if emb is not None else self.embeddings()
        return U[users] @ I.T


class MostPop(GeneralModel):
    """Every user gets the same scores: the item's number of training users (ties count against it)."""

    def __init__(self, n_users: int, n_items: int, items: Tensor) -> None:
        super().__init__()
        self.n_users = n_users
        self.register_buffer("counts", torch.bincount(items, minlength=n_items + 1).float()[:, None])

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return torch.ones(self.n_users + 1, 1, device=self.counts.device), self.counts


def _emb(n: int, d: int) -> nn.Embedding:
    e = nn.Embedding(n, d)
    nn.init.xavier_uniform_(e.weight)
    return e


class BPRMF(GeneralModel):
    def __init__(self, cfg: BPRConfig, n_users: int, n_items: int) -> None:
        super().__init__()
        self.user = _emb(n_users + 1, cfg.dim)
        self.item = _emb(n_items + 1, cfg.dim)
        self.reg_weight = cfg.reg_weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, self.item.weight

    def reg_terms(self, users, pos, neg):
        return self.user(users), self.item(pos), self.item(neg)


class LightGCN(GeneralModel):
    def __init__(self, cfg: LightGCNConfig, n_users: int, n_items: int, adj: Tensor) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, cfg.n_layers
        self.user = _emb(n_users + 1, cfg.dim)
        self.item = _emb(n_items + 1, cfg.dim)
        self.register_buffer("adj", to_csr(adj), persistent=False)
        self.reg_weight = cfg.reg_weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.user.weight, self.item.weight])
        out = propagate(self.adj, x, self.n_layers)
        return out[: self.n_users + 1], out[self.n_users + 1:]

    def reg_terms(self, users, pos, neg):
        return self.user(users), self.item(pos), self.item(neg)


class VBPR(GeneralModel):
    def __init__(self, cfg: VBPRConfig, n_users: int, n_items: int, feats: Tensor) -> None:
        super().__init__()
        half = cfg.dim // 2
        self.user = _emb(n_users + 1, cfg.dim)  # [gamma_u ; theta_u]
        self.item = _emb(n_items + 1, cfg.dim - half)
        self.register_buffer("feats", feats.float(), persistent=False)
        self.proj = nn.Linear(feats.shape[1], half)
        nn.init.xavier_normal_(self.proj.weight)
        self.reg_weight = cfg.reg_weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, torch.cat([self.item.weight, self.proj(self.feats)], dim=1)

    def reg_terms(self, users, pos, neg):
        return self.user(users), self.item(pos), self.item(neg)


class FREEDOM(GeneralModel):
    def __init__(self, cfg: FreedomConfig, n_users: int, n_items: int, users: Tensor, items: Tensor,
                 feats: list[Tensor]) -> None:
        super().__init__()
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items
        self.user = _emb(n_users + 1, cfg.dim)
        self.item = _emb(n_items + 1, cfg.dim)
        w = cfg.weights or [1.0 / len(feats)] * len(feats)
        self.register_buffer("mm_adj", to_csr(modality_graph(feats, w, cfg.knn_k)), persistent=False)
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        full = to_csr(bipartite_adjacency(users, items, n_users, n_items))
        self.register_buffer("adj", full, persistent=False)
        self.register_buffer("train_adj", full, persistent=False)
        self.n_modal = len(feats) if cfg.mm_weight > 0 else 0
        for m in range(self.n_modal):
            self.register_buffer(f"feat{m}", feats[m].float(), persistent=False)
        self.proj = nn.ModuleList([nn.Linear(f.shape[1], cfg.dim) for f in feats]) if cfg.mm_weight > 0 \
            else nn.ModuleList()
        self.reg_weight = cfg.reg_weight

    def on_epoch_start(self, generator: torch.Generator | None = None) -> None:
        """Degree-sensitive pruning: keep ``(1 - dropout)`` of the edges, drawn without replacement with
        probability proportional to ``1 / sqrt(deg_u * deg_i)``."""
        if self.cfg.dropout <= 0 or self.edge_users.numel() == 0:
            self.train_adj = self.adj
            return
        u, i = self.edge_users, self.edge_items
        du = torch.bincount(u, minlength=self.n_users + 1).float()
        di = torch.bincount(i, minlength=self.n_items + 1).float()
        p = (du[u] * di[i]).rsqrt()
        n_keep = max(1, int(u.numel() * (1 - self.cfg.dropout)))
        keep = torch.multinomial(p, n_keep, replacement=False, generator=generator)
        self.train_adj = to_csr(bipartite_adjacency(u[keep], i[keep], self.n_users, self.n_items))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        h = self.item.weight
        for _ in range(self.cfg.n_mm_layers):
            h = torch.sparse.mm(self.mm_adj, h)
        adj = self.train_adj if self.training else self.adj
        out = propagate(adj, torch.cat([self.user.weight, self.item.weight]), self.cfg.n_layers)
        return out[: self.n_users + 1], out[self.n_users + 1:] + h

    def extra_loss(self, u, users, pos, neg):
        if self.cfg.mm_weight <= 0:
            return {}
        feats = [getattr(self, f"feat{m}") for m in range(self.n_modal)]
        loss = sum(bpr_loss(u, p(f[pos]), p(f[neg])) for p, f in zip(self.proj, feats, strict=True))
        return {"mm": self.cfg.mm_weight * loss}

    def reg_terms(self, users, pos, neg):
        return self.user(users), self.item(pos), self.item(neg)


class _MLP(nn.Sequential):
    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__(nn.Linear(d_in, 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))


class MLLMRec(GeneralModel):
    def __init__(self, cfg: MLLMRecConfig, n_users: int, n_items: int, users: Tensor, items: Tensor,
                 feats: Tensor, profiles: Tensor | None) -> None:
        super().__init__()
        self.cfg = cfg
        graph = mllmrec_item_graph(feats.float(), users, items, knn_k=cfg.knn_k, pure=cfg.pure, jac_k=cfg.jac_k,
                                   denoise=cfg.denoise, cooccurrence=cfg.cooccurrence)
        # graph and features are frozen, so the propagated item features are computed once
        self.register_buffer("item_in", propagate(graph, feats.float(), cfg.n_ii_layers, "sum"), persistent=False)
        self.item_mlp = _MLP(feats.shape[1], cfg.dim)
        if profiles is not None:
            self.register_buffer("profiles", profiles.float(), persistent=False)
            self.user_mlp: nn.Module = _MLP(profiles.shape[1], cfg.dim)
        else:
            self.profiles = None
            self.user_mlp = _emb(n_users + 1, cfg.dim)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        U = self.user_mlp(self.profiles) if self.profiles is not None else self.user_mlp.weight
        return U, self.item_mlp(self.item_in)


# ------------------------------------------------------------------------------------- registry builders
# ``build(cfg, *, n_users, n_items, users, items, tensors)``: ``users, items`` are the training pairs,
# ``tensors`` the embedding stores the config names (item stores: n_items + 1 rows; user stores: n_users + 1).

def build_bpr(cfg: BPRConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
              tensors: dict[str, Tensor]) -> BPRMF:
    return BPRMF(cfg, n_users, n_items)


def build_lightgcn(cfg: LightGCNConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
                   tensors: dict[str, Tensor]) -> LightGCN:
    return LightGCN(cfg, n_users, n_items, bipartite_adjacency(users, items, n_users, n_items))


def build_vbpr(cfg: VBPRConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
               tensors: dict[str, Tensor]) -> VBPR:
    return VBPR(cfg, n_users, n_items, torch.cat([tensors[n].float() for n in cfg.embeddings], dim=1))


def build_freedom(cfg: FreedomConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
                  tensors: dict[str, Tensor]) -> FREEDOM:
    if cfg.weights is not None and len(cfg.weights) != len(cfg.embeddings):
        from ..errors import InputError

        raise InputError(f"{len(cfg.weights)} weights for {len(cfg.embeddings)} embeddings", field="model.weights")
    return FREEDOM(cfg, n_users, n_items, users, items, [tensors[n] for n in cfg.embeddings])


def build_mllmrec(cfg: MLLMRecConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
                  tensors: dict[str, Tensor]) -> MLLMRec:
    key = cfg.profile_key()
    return MLLMRec(cfg, n_users, n_items, users, items, item_features(cfg, tensors), tensors[key] if key else None)


def item_features(cfg: MLLMRecConfig, tensors: dict[str, Tensor]) -> Tensor:
    """MLLMRec's item input: the named store, or the named stores concatenated."""
    return torch.cat([tensors[n].float() for n in cfg.embedding_names()], dim=1)


def build_mostpop(cfg: MostPopConfig, *, n_users: int, n_items: int, users: Tensor, items: Tensor,
                  tensors: dict[str, Tensor]) -> MostPop:
    return MostPop(n_users, n_items, items)  # the split's training pairs are distinct
