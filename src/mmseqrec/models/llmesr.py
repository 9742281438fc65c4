"""LLM-ESR baseline (pure torch, no I/O); LLMEmb lives in :mod:`mmseqrec.models.llmemb`.

* :class:`LlmEsrEncoder` (registry name ``llmesr``): LLM-ESR's dual view. A frozen semantic (LLM) item
  embedding goes through the two-linear adapter; a collaborative ID table is initialised from a PCA of the
  same embedding (:func:`pca_init`); the two views of a user's sequence interact through sequence-level
  cross-attention (``llm2id`` / ``id2llm``) in :meth:`~LlmEsrEncoder.mix_sequence`; the shared backbone
  encodes both and scores against the concatenated ``[id ; adapter(llm)]`` table.
* :class:`SelfDistillation` (regulariser ``self-distill``): LLM-ESR's retrieval-augmented self-distillation.
  For every user of a batch, the first ``n_sim`` retrieved similar users' training sequences are encoded by
  the same model without gradient, their states mean-pooled into a teacher, and
  ``alpha * MSE(student, teacher)`` is added. Similar users come from :func:`similar_users` (cosine top-k).

What is code-faithful and what is reconstructed is listed in ``docs/methods/llmesr.md`` (LLM-ESR) and
``docs/methods/dmesr.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from ..errors import InputError
from .alignment import Adapter, soft_contrastive
from .base import ItemEncoder
from .fusion import SequenceFusion

if TYPE_CHECKING:  # pragma: no cover
    from .sequence import Batch, SequenceModel

__all__ = [
    "LlmEsrConfig",
    "LlmEsrEncoder",
    "SelfDistillation",
    "SelfDistillationConfig",
    "batch_items",
    "build_llmesr",
    "build_self_distillation",
    "pca_init",
    "similar_users",
    "user_profiles",
]


# ---------------------------------------------------------------------------------------------------- helpers
def pca_init(matrix: Tensor, dim: int, skip_padding: bool = True) -> Tensor:
    """PCA projection of an item matrix to ``dim`` columns (LLM-ESR's ``PCA(64)`` ID-table initialisation).

    Deterministic: covariance eigen-decomposition in float64; each component's largest-magnitude loading is
    made positive. Not whitened (scores = centred rows @ components, like scikit-learn's ``transform``).

    Parameters
    ----------
    matrix : ``[N + 1, D]`` (row 0 = padding when ``skip_padding``).
    dim : number of components; columns beyond ``min(D, N - 1)`` are zero.
    skip_padding : fit on rows ``1..N`` and return a zero row 0.

    Returns
    -------
    Tensor
        ``[N + 1, dim]`` float32.
    """
    x = matrix.detach().double()
    rows = x[1:] if skip_padding else x
    if rows.shape[0] < 2:
        raise ValueError("PCA needs at least two rows")
    mean = rows.mean(0)
    xc = rows - mean
    cov = xc.T @ xc / (rows.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    k = min(int(dim), x.shape[1], rows.shape[0] - 1)
    comps = evecs[:, torch.argsort(evals, descending=True)[:k]]  # [D, k]
    idx = comps.abs().argmax(0)
    lead = comps[idx, torch.arange(k)]
    comps = comps * torch.where(lead >= 0, 1.0, -1.0).to(comps.dtype)
    out = torch.zeros(x.shape[0], int(dim), dtype=torch.float64)
    proj = (x - mean) @ comps
    out[:, :k] = proj
    if skip_padding:
        out[0] = 0
    return out.float()


def similar_users(user_emb: Tensor, k: int, chunk_elements: int = 1 << 26) -> Tensor:
    """Cosine top-``k`` neighbours of every row, excluding itself and all-zero rows (padding / empty users).

    Parameters
    ----------
    user_emb : ``[U, D]`` (row 0 is usually the padding user: all zeros, never returned as a neighbour).
    k : neighbours per row (``<= number of non-zero rows - 1``).
    chunk_elements : bound on the size of one similarity block (rows are processed in chunks).

    Returns
    -------
    LongTensor
        ``[U, k]`` row indices, most similar first (LLM-ESR ``retrieval_users.ipynb``: argsort of the cosine
        matrix, self dropped).
    """
    x = F.normalize(user_emb.float(), dim=1)
    valid = user_emb.abs().sum(1) > 0
    n = x.shape[0]
    if k > int(valid.sum()) - 1 or k < 1:
        raise ValueError(f"k={k} must be in [1, {int(valid.sum()) - 1}] (non-zero rows minus one)")
    step = max(1, int(chunk_elements) // max(n, 1))
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    neg_inf = torch.tensor(float("-inf"), device=x.device)
    for s in range(0, n, step):
        sims = x[s: s + step] @ x.T
        sims = torch.where(valid[None, :], sims, neg_inf)
        r = torch.arange(s, min(s + step, n), device=x.device)
        sims[r - s, r] = float("-inf")
        out[s: s + step] = sims.topk(k, dim=1).indices
    return out


def user_profiles(windows: Tensor, item_emb: Tensor) -> Tensor:
    """Mean semantic embedding of each user's training items (``[U, D]``; rows without items are zero).

    Reconstruction of LLM-ESR's user-prompt embedding (the prompt lists the titles of the training items); a
    sparse ``[U, N + 1]`` count matrix times ``item_emb``, so no ``[U, L, D]`` tensor is materialised.
    """
    u, w = windows.shape
    ids = windows.reshape(-1).long()
    owner = torch.arange(u, device=windows.device).repeat_interleave(w)
    keep = ids != 0
    idx = torch.stack([owner[keep], ids[keep]])
    vals = torch.ones(idx.shape[1], dtype=torch.float32, device=windows.device)
    counts = torch.sparse_coo_tensor(idx, vals, (u, item_emb.shape[0]), check_invariants=True).coalesce()
    sums = torch.sparse.mm(counts, item_emb.float().to(windows.device))
    n = torch.bincount(owner[keep], minlength=u).clamp(min=1).unsqueeze(1).float()
    return sums / n


def batch_items(ids: Tensor, n_items: int, max_items: int | None = None) -> Tensor:
    """Unique real item ids (``1..n_items``) in ``ids``, optionally a random subset of ``max_items``."""
    flat = ids.reshape(-1)
    u = torch.unique(flat[(flat > 0) & (flat <= n_items)])
    if max_items is not None and u.numel() > max_items:
        u = u[torch.randperm(u.numel(), device=u.device)[:max_items]]
    return u


def _check_rows(t: Tensor, n_items: int, field: str) -> Tensor:
    if t.dim() != 2 or t.shape[0] != n_items + 1:
        raise InputError(f"embedding has shape {tuple(t.shape)}, the dataset needs [{n_items + 1}, D] "
                         "(n_items + 1 rows, row 0 = padding)", field=field)
    return t.float()


def _keep_rows(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    keep = torch.ones(n, 1, device=device, dtype=dtype)
    keep[0] = 0
    return keep


# ---------------------------------------------------------------------------------------------------- LLM-ESR
class LlmEsrConfig(Config):
    """LLM-ESR dual-view item encoder (code: ``models/DualLLMSRS.py``, ``models/LLMESR.py``).

    Attributes
    ----------
    embedding : store of the semantic (LLM) item embedding (LLM-ESR: ada-002 of the item prompt, 1536-d).
    dim : model width (LLM-ESR: 64).
    hidden : adapter hidden width (default ``D // 2``).
    adapter_activation : ReLU between the adapter layers (LLM-ESR: none).
    freeze : keep the semantic table frozen (LLM-ESR scripts: ``--freeze``).
    id_init : ``pca`` (PCA of the semantic embedding, LLM-ESR) or ``xavier`` (the "random init" ablation).
    use_id_view, use_semantic_view : ablations "w/o co-view" / "w/o semantic view".
    cross_attention : sequence-level ``llm2id`` / ``id2llm`` interaction (LLM-ESR: on).
    heads : cross-attention heads (LLM-ESR: 2).
    causal : causal mask in the cross-attention. Default ``true``: seq-to-seq training positions never see later
        items (chosen on validation: NDCG@10 0.111 vs 0.059 with a causal SASRec, docs/methods/llmesr.md).
        LLM-ESR's code masks only padding keys (``false``, with a non-causal SASRec): the
        ``configs/presets/llmesr-*.yaml`` presets set it.
    residual, layernorm, dropout : cross-attention output options (LLM-ESR: none of them).
    item_reg : weight of LLM-ESR's optional ``--item_reg`` term, ``Contrastive_Loss2(adapter(llm), id)`` over
        the batch's items (LLM-ESR scripts: off).
    tau : its temperature.
    """

    name: Literal["llmesr"] = "llmesr"
    embedding: str = "text"
    dim: int = Field(64, ge=1)
    hidden: int | None = Field(None, ge=1)
    adapter_activation: bool = False
    freeze: bool = True
    id_init: Literal["pca", "xavier"] = "pca"
    use_id_view: bool = True
    use_semantic_view: bool = True
    cross_attention: bool = True
    heads: int = Field(2, ge=1)
    causal: bool = True
    residual: bool = False
    layernorm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    item_reg: float = Field(0.0, ge=0)
    tau: float = Field(1.0, gt=0)

    def embeddings(self) -> list[str]:
        """Embedding stores this encoder needs (read by the train package)."""
        return [self.embedding]


class LlmEsrEncoder(ItemEncoder):
    """LLM-ESR's dual-view item encoder: views ``[id, adapter(llm)]`` (``V = 2``, or 1 in an ablation).

    Parameters
    ----------
    cfg : the options.
    features : ``[n_items + 1, D]`` semantic embedding (row 0 = padding). Frozen by default: registered as a
        non-persistent buffer (the train package rebuilds it from the store when loading a run).
    extra_tokens : learned rows appended after the items in every view (BERT4Rec's mask token).
    id_init : ``[n_items + 1, dim]`` initial ID table (default: :func:`pca_init` of ``features`` when
        ``cfg.id_init == "pca"``).
    """

    def __init__(self, cfg: LlmEsrConfig, features: Tensor, extra_tokens: int = 0,
                 id_init: Tensor | None = None) -> None:
        super().__init__()
        if not (cfg.use_id_view or cfg.use_semantic_view):
            raise InputError("LLM-ESR needs at least one of the ID and semantic views", field="item_encoder")
        self.cfg = cfg
        self.n_items, self.dim, self.extra_tokens = int(features.shape[0] - 1), int(cfg.dim), int(extra_tokens)
        self.n_views = int(cfg.use_id_view) + int(cfg.use_semantic_view)
        feats = features.detach().float().clone()
        if cfg.freeze:
            self.register_buffer("features", feats, persistent=False)
        else:
            self.features = nn.Parameter(feats)
        self.adapter = Adapter(feats.shape[1], self.dim, cfg.hidden, cfg.adapter_activation) \
            if cfg.use_semantic_view else None
        if cfg.use_id_view:
            self.id_table = nn.Parameter(torch.empty(self.n_items + 1, self.dim))
            nn.init.xavier_normal_(self.id_table)
            if id_init is None and cfg.id_init == "pca":
                id_init = pca_init(feats, self.dim)
            if id_init is not None:
                if tuple(id_init.shape) != (self.n_items + 1, self.dim):
                    raise ValueError(f"id_init must be [{self.n_items + 1}, {self.dim}], got {tuple(id_init.shape)}")
                with torch.no_grad():
                    self.id_table.copy_(id_init.float())
        else:
            self.id_table = None
        self.extra = nn.Parameter(torch.randn(self.n_views, self.extra_tokens, self.dim) * self.dim ** -0.5)
        use_ca = cfg.cross_attention and self.n_views == 2
        self.fusion = SequenceFusion(self.dim, cfg.heads, cfg.residual, cfg.layernorm, cfg.dropout,
                                     cfg.causal) if use_ca else None

    def semantic(self, ids: Tensor | None = None) -> Tensor:
        """``adapter(features)`` for all items (or for ``ids``)."""
        assert self.adapter is not None
        f = self.features if ids is None else self.features[ids]
        return self.adapter(f)

    def table(self) -> Tensor:
        views = []
        if self.id_table is not None:
            views.append(self.id_table)
        if self.adapter is not None:
            views.append(self.semantic())
        t = torch.stack(views)  # [V, N + 1, d]
        t = t * _keep_rows(t.shape[1], t.device, t.dtype)
        return torch.cat([t, self.extra.to(t.dtype)], 1)

    def mix_sequence(self, views: Tensor, mask: Tensor) -> Tensor:
        """``llm2id`` / ``id2llm`` cross-attention: new id view = CA(q=llm, kv=id), new llm = CA(q=id, kv=llm).

        :class:`~mmseqrec.models.sequence.SequenceModel` calls it on the embedded views, after the backbone's
        ``x * sqrt(d) + positions`` and dropout, before its blocks (LLM-ESR ``DualLLMSRS.log2feats``).
        """
        if self.fusion is None:
            return views
        id_seq, llm_seq = views[0], views[1]
        new_id, new_llm = self.fusion(llm_seq, id_seq, mask)
        return torch.stack([new_id, new_llm])

    def aux_losses(self, ids: Tensor, table: Tensor | None = None) -> dict[str, Tensor]:
        if self.cfg.item_reg <= 0 or self.n_views != 2:
            return {}
        items = batch_items(ids, self.n_items)
        if items.numel() < 2:
            return {"item_reg": torch.zeros((), device=ids.device)}
        t = self.table() if table is None else table
        return {"item_reg": self.cfg.item_reg * soft_contrastive(t[1, items], t[0, items], self.cfg.tau)}


def build_llmesr(cfg: LlmEsrConfig, *, n_items: int, extra_tokens: int,
                 tensors: dict[str, Tensor]) -> LlmEsrEncoder:
    """Registry constructor: the semantic matrix comes from ``tensors[cfg.embedding]``."""
    if cfg.embedding not in tensors:
        raise InputError(f"embedding store {cfg.embedding!r} was not loaded", field="item_encoder.embedding")
    feats = _check_rows(tensors[cfg.embedding], n_items, "item_encoder.embedding")
    return LlmEsrEncoder(cfg, feats, extra_tokens)


# ---------------------------------------------------------------------------------------------------- self-distillation
class SelfDistillationConfig(Config):
    """LLM-ESR retrieval-augmented self-distillation (``user_sim_func='kd'``).

    Attributes
    ----------
    embedding : item store whose per-user mean gives the user vectors for retrieval (default: the item
        encoder's first store). LLM-ESR embeds a user prompt listing the training titles; the mean of the
        training items' embeddings is our reconstruction.
    n_retrieve : neighbours retrieved per user (LLM-ESR: 100).
    n_sim : neighbours used per step (LLM-ESR: 10, the first ones).
    alpha : loss weight (LLM-ESR: 0.1).
    teacher : ``step`` (LLM-ESR: every step the ``n_sim`` neighbours' sequences go through the model in train
        mode without gradient, ``n_sim`` extra forward passes per batch) or ``epoch`` (reconstructed, cheaper:
        every user's state is computed once at the start of each epoch in eval mode and the teacher is the mean
        of the cached neighbour states; about one extra forward pass over the users per epoch).
    """

    name: Literal["self-distill"] = "self-distill"
    embedding: str | None = None
    n_retrieve: int = Field(100, ge=1)
    n_sim: int = Field(10, ge=1)
    alpha: float = Field(0.1, ge=0)
    teacher: Literal["step", "epoch"] = "step"


class SelfDistillation(nn.Module):
    """``alpha * MSE(student user state, mean of the similar users' states)`` (teacher without gradient).

    Parameters
    ----------
    sim_users : ``[n_users + 1, K]`` retrieved similar users (most similar first).
    train_seqs : ``[n_users + 1, W]`` left-padded training sequences (the training window matrix; for causal
        models its last column is the final next-item target and is dropped, matching the student's input).
    n_sim : neighbours used (``<= K``).
    alpha : loss weight.
    teacher : ``step`` or ``epoch`` (see :class:`SelfDistillationConfig`).
    chunk : users per forward pass when the ``epoch`` cache is built.
    """

    def __init__(self, sim_users: Tensor, train_seqs: Tensor, n_sim: int = 10, alpha: float = 0.1,
                 teacher: str = "step", chunk: int = 512) -> None:
        super().__init__()
        if sim_users.shape[0] != train_seqs.shape[0]:
            raise ValueError("sim_users and train_seqs must have one row per user id")
        if teacher not in ("step", "epoch"):
            raise ValueError(f"teacher must be 'step' or 'epoch', got {teacher!r}")
        self.n_sim, self.alpha = min(int(n_sim), int(sim_users.shape[1])), float(alpha)
        self.mode, self.chunk = teacher, int(chunk)
        self.register_buffer("sim_users", sim_users.long(), persistent=False)
        self.register_buffer("train_seqs", train_seqs.long(), persistent=False)
        self.cache: Tensor | None = None  # [n_users + 1, V*d] user states (teacher: epoch)

    @staticmethod
    def _inputs(model: SequenceModel, seqs: Tensor) -> Tensor:
        if not model.bidirectional:
            seqs = seqs[:, :-1]
        real = (seqs != 0).any(0)
        if bool(real.any()):
            seqs = seqs[:, int(real.int().argmax()):]  # drop all-padding leading columns
        return seqs

    def on_epoch_start(self, model: SequenceModel) -> None:
        """``teacher: epoch``: cache every user's state with the current weights (eval mode, no gradient)."""
        if self.mode != "epoch":
            return
        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            table = model.item_encoder.table()
            for i in range(0, self.train_seqs.shape[0], self.chunk):
                out.append(model.user_states(self._inputs(model, self.train_seqs[i: i + self.chunk]), table))
        model.train(was_training)
        self.cache = torch.cat(out).float()

    def teacher(self, model: SequenceModel, users: Tensor) -> Tensor:
        """Mean-pooled states ``[B, V*d]`` of the users' first ``n_sim`` neighbours (no gradient)."""
        sim = self.sim_users[users, : self.n_sim]  # [B, n]
        if self.mode == "epoch":
            if self.cache is None:
                self.on_epoch_start(model)
            assert self.cache is not None
            return self.cache[sim].mean(1)
        seqs = self._inputs(model, self.train_seqs[sim.reshape(-1)])
        with torch.no_grad():
            states = model.user_states(seqs)
        return states.view(sim.shape[0], sim.shape[1], -1).mean(1).detach()

    def forward(self, model: SequenceModel, batch: Batch, user_states: Tensor) -> dict[str, Tensor]:
        t = self.teacher(model, batch.users)
        return {"distill": self.alpha * F.mse_loss(user_states, t)}


def build_self_distillation(cfg: SelfDistillationConfig, *, tensors: dict[str, Tensor], windows: Tensor,
                            n_users: int, n_items: int) -> SelfDistillation:
    """Registry constructor: user vectors = mean training-item embedding, neighbours by cosine top-k."""
    if cfg.embedding is not None:
        if cfg.embedding not in tensors:
            raise InputError(f"store {cfg.embedding!r} is not loaded by the item encoder; name one of: "
                             f"{', '.join(sorted(tensors)) or '(none)'}", field="regularizers.embedding")
        emb = tensors[cfg.embedding]
    else:
        mats = [t for t in tensors.values() if t.dim() == 2 and t.shape[0] == n_items + 1]
        if not mats:
            raise InputError("self-distillation needs a semantic item embedding: use an item encoder with an "
                             "embedding store, or set regularizers.embedding", field="regularizers.embedding")
        emb = mats[0]
    profiles = user_profiles(windows, emb)
    n_valid = int((profiles.abs().sum(1) > 0).sum())
    k = min(cfg.n_retrieve, n_valid - 1)
    if k < 1:
        raise InputError("self-distillation needs at least two users with training items",
                         field="regularizers")
    return SelfDistillation(similar_users(profiles, k), windows, cfg.n_sim, cfg.alpha, cfg.teacher)
