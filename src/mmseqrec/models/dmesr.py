"""DMESR item encoder: MLLM prompt views, contrastive alignment, cross-attention fusion (pure torch, no I/O).

DMESR (arXiv 2602.13715) is known only from its abstract and public summaries: an MLLM gives semantic
representations of each item from its image and its text (a three-way prompting framework: image alone,
text alone, image + text); a contrastive loss aligns these cross-modal representations; a bidirectional
cross-attention fuses the coarse MLLM semantics with the fine-grained original item text, giving two fused
representations that plug into any sequential recommender. Everything beyond that is reconstructed here on
the LLM-ESR code base of the same group, and every unknown is a :class:`DmesrConfig` option
(``docs/methods/dmesr.md`` lists them with their source tag and the ablation grid).

Per item ``i`` (all computed in :meth:`DmesrEncoder.table`, once per step, never per sequence position):

* aligned MLLM prompt views ``a_v = A_v(e_v)`` for ``v in {image, text, both}`` (LLM-ESR adapters);
* the coarse MLLM view ``m_i``: masked mean of the ``a_v`` (``mllm_pool: mean``) or ``Linear(concat)``;
* the original text ``t_i = A_raw(e_raw)`` and, when a token-level store is given, its tokens
  ``A_tok(tokens_i) [T, d]`` (padding tokens masked by the stored lengths);
* fusion ``item`` (default): ``f_m = CA(query=m_i, kv=text tokens of i)``,
  ``f_t = CA(query=t_i, kv=[a_image, a_text, a_both] of i)``; ``sequence``: LLM-ESR's cross-attention over the
  user's sequence in :meth:`DmesrEncoder.mix_sequence` (same module, mask and order as ``llmesr``: after the
  backbone's scale, positions and dropout, padding keys masked); ``none``: ``(m_i, t_i)``;
* optional ID view (initialised from a PCA of a semantic view, as LLM-ESR);
* ``combine: concat``: the views are returned as ``V`` views (shared backbone, concatenated scoring);
  ``gated``: a per-dimension softmax gate over the views gives ``V = 1``.

Alignment (:meth:`DmesrEncoder.aux_losses`): ``lambda_align * L(A_image(e_image), A_text(e_text))`` over the
unique items of the batch whose two views exist (``align_loss``: symmetric InfoNCE or LLM-ESR's soft
contrastive loss).
"""

from __future__ import annotations

from itertools import combinations
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..config import Config
from ..errors import InputError
from .alignment import Adapter, alignment_loss
from .base import ItemEncoder
from .fusion import ItemFusion, SequenceFusion
from .llmesr import _check_rows, _keep_rows, batch_items, pca_init

__all__ = ["ABLATIONS", "MLLM_VIEWS", "DmesrConfig", "DmesrEncoder", "build_dmesr"]

MLLM_VIEWS = ("image", "text", "both")
Ablation = Literal["none", "no-align", "no-fusion", "no-raw-text", "no-mllm", "no-id", "image-only", "text-only"]
ABLATIONS: tuple[str, ...] = ("none", "no-align", "no-fusion", "no-raw-text", "no-mllm", "no-id", "image-only",
                              "text-only")


class DmesrConfig(Config):
    """DMESR options (every unknown of the paper is one of these; see ``docs/methods/dmesr.md``).

    Attributes
    ----------
    dim : model width.
    image_view, text_view, both_view : embedding stores of the three MLLM prompt views (``item-views`` task,
        views image / text / both, embedded); ``None`` drops that view.
    raw_text : store of the pooled original item text.
    raw_tokens : store holding token-level features of the original text (``tokens`` + ``lengths``); the train
        package passes them as ``tensors["NAME:tokens"]`` and ``tensors["NAME:lengths"]``. ``None``: the
        MLLM query attends to the single pooled text vector.
    adapter_hidden, adapter_activation, adapter_dropout : adapters (LLM-ESR: ``D -> D/2 -> d``, linear).
    mllm_views : which prompt views form the MLLM view (subset of image, text, both).
    mllm_pool : ``mean`` (masked mean of the aligned views) or ``concat`` (concatenation, linear projection).
    use_raw_text : keep the original-text view.
    align_loss : ``infonce`` (symmetric, L2-normalised) or ``soft`` (LLM-ESR ``Contrastive_Loss2``).
    align_pairs : ``image-text`` or ``all`` (every pair of the present prompt views, averaged).
    lambda_align : weight of the alignment loss (0 = off).
    tau : temperature of the alignment loss.
    align_max_items : align at most this many unique items per step (random subset; ``None`` = all).
    fusion : ``item`` (bidirectional item-level cross-attention), ``sequence`` (LLM-ESR's cross-attention over
        the user's sequence), ``none``.
    heads : cross-attention heads.
    residual, layernorm : cross-attention output options; ``None`` = per fusion default (item: both on;
        sequence: both off, as LLM-ESR).
    fusion_dropout : dropout in the cross-attention.
    fusion_norm_gain : initial gain of the fusion LayerNorm: ``embedding`` (``dim ** -0.5``: fused vectors start
        at norm 1, the scale of an ID embedding table, so the backbones' positional embeddings still count) or
        ``unit`` (PyTorch's default 1: norm ``sqrt(dim)``; BERT4Rec then loses the positions, see
        ``docs/results.md``).
    text_kv : what the text attends to at item level: the prompt ``views`` as tokens or the ``pooled`` MLLM view.
    causal : causal mask of the sequence-level fusion (default ``true``: seq-to-seq training positions never see
        later items; LLM-ESR's code masks only padding keys, ``false``, as the faithful presets set it).
    combine : ``concat`` (``V`` views, shared backbone, concatenated scoring) or ``gated`` (``V = 1``).
    use_id_view : add a learned ID view.
    id_init : ``pca`` (PCA of ``id_pca_view``, as LLM-ESR) or ``xavier``.
    id_pca_view : which semantic view the PCA uses (``auto``: both, then text, image, raw).
    id_init_scale : ``unit`` (PCA scores rescaled to a mean row norm of 1, the embedding scale the backbones
        expect; reconstructed) or ``raw`` (the PCA scores as they are: fine for unit-norm LLM embeddings as in
        LLM-ESR, far too large for un-normalised features such as EfficientNet's).
    ablation : preset applied on top of the options (:meth:`resolved`).
    """

    name: Literal["dmesr"] = "dmesr"
    dim: int = Field(64, ge=1)
    image_view: str | None = "views-image"
    text_view: str | None = "views-text"
    both_view: str | None = "views-both"
    raw_text: str | None = "text"
    raw_tokens: str | None = None
    adapter_hidden: int | None = Field(None, ge=1)
    adapter_activation: bool = False
    adapter_dropout: float = Field(0.0, ge=0, lt=1)
    mllm_views: list[Literal["image", "text", "both"]] = Field(default_factory=lambda: list(MLLM_VIEWS))
    mllm_pool: Literal["mean", "concat"] = "mean"
    use_raw_text: bool = True
    align_loss: Literal["infonce", "soft"] = "infonce"
    align_pairs: Literal["image-text", "all"] = "image-text"
    lambda_align: float = Field(0.1, ge=0)
    tau: float = Field(0.1, gt=0)
    align_max_items: int | None = Field(1024, ge=2)
    fusion: Literal["item", "sequence", "none"] = "item"
    heads: int = Field(2, ge=1)
    residual: bool | None = None
    layernorm: bool | None = None
    fusion_dropout: float = Field(0.0, ge=0, lt=1)
    fusion_norm_gain: Literal["embedding", "unit"] = "embedding"
    text_kv: Literal["views", "pooled"] = "views"
    causal: bool = True
    combine: Literal["concat", "gated"] = "concat"
    use_id_view: bool = False
    id_init: Literal["pca", "xavier"] = "pca"
    id_pca_view: Literal["auto", "image", "text", "both", "raw"] = "auto"
    id_init_scale: Literal["unit", "raw"] = "unit"
    ablation: Ablation = "none"

    @model_validator(mode="after")
    def _check(self) -> DmesrConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.combine == "gated" and self.fusion == "sequence":
            raise ValueError("combine: gated needs item-level fusion (fusion: item or none); sequence-level "
                             "fusion needs the views to stay separate")
        return self

    # ------------------------------------------------------------------ resolution
    def resolved(self) -> DmesrConfig:
        """The effective options: ablation preset applied, absent stores dropped, ``ablation = "none"``."""
        upd: dict[str, object] = {"ablation": "none"}
        views = [v for v in self.mllm_views if self.store_of(v) is not None]
        use_raw = self.use_raw_text and self.raw_text is not None
        a = self.ablation
        if a == "no-align":
            upd["lambda_align"] = 0.0
        elif a == "no-fusion":
            upd["fusion"] = "none"
        elif a == "no-raw-text":
            use_raw = False
        elif a == "no-mllm":
            views = []
        elif a == "no-id":
            upd["use_id_view"] = False
        elif a in ("image-only", "text-only"):
            keep = a.split("-")[0]
            views = [v for v in views if v == keep]
            if not views:
                raise InputError(f"ablation {a!r} needs the {keep}_view store", field="item_encoder.ablation")
        upd["mllm_views"] = views
        upd["use_raw_text"] = use_raw
        if not views or not use_raw:
            upd["fusion"] = "none"  # fusion needs both the MLLM view and the original text
        if self.residual is None:
            upd["residual"] = (upd.get("fusion", self.fusion) == "item")
        if self.layernorm is None:
            upd["layernorm"] = (upd.get("fusion", self.fusion) == "item")
        out = self.model_copy(update=upd)
        if not out.mllm_views and not out.use_raw_text and not out.use_id_view:
            raise InputError("DMESR has no view left (no MLLM view, no original text, no ID view)",
                             field="item_encoder")
        return out

    def store_of(self, view: str) -> str | None:
        """Store name of a view: ``image``, ``text``, ``both`` or ``raw``."""
        return {"image": self.image_view, "text": self.text_view, "both": self.both_view,
                "raw": self.raw_text}[view]

    def align_pairs_resolved(self) -> list[tuple[str, str]]:
        """Pairs of prompt views the alignment loss uses (empty when ``lambda_align == 0``)."""
        r = self.resolved()
        if r.lambda_align <= 0:
            return []
        if r.align_pairs == "image-text":
            return [("image", "text")] if {"image", "text"} <= set(r.mllm_views) else []
        return list(combinations([v for v in MLLM_VIEWS if v in r.mllm_views], 2))

    def pca_view(self) -> str | None:
        """The semantic view whose PCA initialises the ID table (``None`` when no store is set)."""
        if self.id_pca_view != "auto":
            return self.id_pca_view
        for v in ("both", "text", "image"):
            if self.store_of(v) is not None:
                return v
        return "raw" if self.raw_text is not None else None

    def embeddings(self) -> list[str]:
        """Embedding stores this encoder needs (read by the train package), after the ablation."""
        r = self.resolved()
        names = [r.store_of(v) for v in r.mllm_views]
        if r.use_raw_text:
            names.append(r.raw_text)
        if r.use_id_view and r.id_init == "pca":
            pv = self.pca_view()
            if pv is not None:
                names.append(self.store_of(pv))
        return list(dict.fromkeys(n for n in names if n))

    def token_embeddings(self) -> list[str]:
        """Stores whose token-level features (``tokens``, ``lengths``) this encoder needs."""
        r = self.resolved()
        return [r.raw_tokens] if (r.raw_tokens and r.use_raw_text and r.fusion == "item") else []


class DmesrEncoder(ItemEncoder):
    """DMESR item encoder (reconstruction); see the module docstring for the computation.

    Parameters
    ----------
    cfg : the options (the ablation preset is resolved here).
    features : frozen ``[n_items + 1, D_k]`` matrices keyed by ``image``, ``text``, ``both``, ``raw`` (those
        the resolved config uses). Registered as non-persistent buffers: the train package rebuilds them from
        the stores when a run is loaded, so checkpoints hold only trained weights.
    extra_tokens : learned rows after the items in every view (BERT4Rec's mask token).
    raw_tokens : optional ``[n_items + 1, T, D_t]`` token features of the original text.
    raw_lengths : ``[n_items + 1]`` number of real tokens per item (required with ``raw_tokens``).
    id_init : optional ``[n_items + 1, dim]`` initial ID table (default with ``id_init: pca``:
        :func:`~mmseqrec.models.llmesr.pca_init` of the PCA view).
    """

    def __init__(self, cfg: DmesrConfig, features: dict[str, Tensor], extra_tokens: int = 0,
                 raw_tokens: Tensor | None = None, raw_lengths: Tensor | None = None,
                 id_init: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        r = self.rcfg = cfg.resolved()
        self.dim, self.extra_tokens = int(r.dim), int(extra_tokens)
        needed = list(r.mllm_views) + (["raw"] if r.use_raw_text else [])
        missing = [v for v in needed if v not in features]
        if missing:
            raise ValueError(f"missing feature matrices for views {missing}")
        rows = {int(f.shape[0]) for f in features.values()} | ({int(id_init.shape[0])} if id_init is not None else set())
        if len(rows) != 1 or min(rows) < 2:
            raise ValueError(f"feature matrices must share [n_items + 1] rows, got {sorted(rows)}")
        self.n_items = rows.pop() - 1
        d = self.dim

        def adapter(d_in: int) -> Adapter:
            return Adapter(d_in, d, r.adapter_hidden, r.adapter_activation, r.adapter_dropout)

        self.views = list(r.mllm_views)
        self.align_pairs = cfg.align_pairs_resolved()
        self.adapters = nn.ModuleDict()
        for v in needed:
            f = features[v].detach().float()
            self.register_buffer(f"feat_{v}", f.clone(), persistent=False)
            self.register_buffer(f"valid_{v}", f.abs().sum(1) > 0, persistent=False)
            self.adapters[v] = adapter(int(f.shape[1]))
        self.pool = (nn.Linear(len(self.views) * d, d) if r.mllm_pool == "concat" and len(self.views) > 1
                     else None)
        # token-level original text
        self.has_tokens = raw_tokens is not None and r.use_raw_text and r.fusion == "item"
        self.tok_adapter: nn.Module | None = None
        if self.has_tokens:
            assert raw_tokens is not None
            if raw_lengths is None or raw_tokens.dim() != 3 or raw_tokens.shape[0] != self.n_items + 1:
                raise ValueError("raw_tokens must be [n_items + 1, T, D] with raw_lengths [n_items + 1]")
            self.register_buffer("raw_tokens", raw_tokens.detach().float().clone(), persistent=False)
            t_mask = torch.arange(raw_tokens.shape[1])[None, :] < raw_lengths.long().reshape(-1, 1)
            self.register_buffer("raw_token_mask", t_mask, persistent=False)
            same = int(raw_tokens.shape[2]) == int(features["raw"].shape[1])
            self.tok_adapter = None if same else adapter(int(raw_tokens.shape[2]))
        # fusion
        self.item_fusion = self.seq_fusion = None
        gain = d ** -0.5 if r.fusion_norm_gain == "embedding" else 1.0
        if r.fusion == "item":
            self.item_fusion = ItemFusion(d, r.heads, bool(r.residual), bool(r.layernorm), r.fusion_dropout,
                                          norm_gain=gain)
        elif r.fusion == "sequence":
            self.seq_fusion = SequenceFusion(d, r.heads, bool(r.residual), bool(r.layernorm), r.fusion_dropout,
                                             r.causal, norm_gain=gain)
        # ID view
        self.id_table: nn.Parameter | None = None
        if r.use_id_view:
            self.id_table = nn.Parameter(torch.empty(self.n_items + 1, d))
            nn.init.xavier_normal_(self.id_table)
            if id_init is None and r.id_init == "pca":
                pv = cfg.pca_view()
                if pv is None or pv not in features:
                    raise ValueError(f"id_init: pca needs the {pv!r} feature matrix")
                id_init = pca_init(features[pv], d)
                if r.id_init_scale == "unit":
                    id_init = id_init / id_init[1:].norm(dim=1).mean().clamp(min=1e-12)
            if id_init is not None:
                if tuple(id_init.shape) != (self.n_items + 1, d):
                    raise ValueError(f"id_init must be [{self.n_items + 1}, {d}], got {tuple(id_init.shape)}")
                with torch.no_grad():
                    self.id_table.copy_(id_init.float())
        n_internal = int(bool(self.views)) + int(r.use_raw_text) + int(r.use_id_view)
        self.n_internal = n_internal
        self.gate = nn.Linear(n_internal * d, n_internal * d) if r.combine == "gated" and n_internal > 1 else None
        self.n_views = 1 if self.gate is not None else n_internal
        self.extra = nn.Parameter(torch.randn(self.n_views, self.extra_tokens, d) * d ** -0.5)

    # ------------------------------------------------------------------ item level
    def _feat(self, v: str) -> Tensor:
        return getattr(self, f"feat_{v}")

    def aligned(self, view: str, ids: Tensor | None = None) -> Tensor:
        """``A_view(e_view)`` for all items (or ``ids``)."""
        f = self._feat(view)
        return self.adapters[view](f if ids is None else f[ids])

    def item_views(self) -> list[Tensor]:
        """The internal views ``[N + 1, d]`` before combining: (MLLM, text) fused or not, then ID."""
        r = self.rcfg
        out: list[Tensor] = []
        m = t = None
        a = torch.stack([self.aligned(v) for v in self.views], 1) if self.views else None  # [N+1, K, d]
        valid = torch.stack([getattr(self, f"valid_{v}") for v in self.views], 1) if self.views else None
        if a is not None:
            if self.pool is not None:
                m = self.pool(a.reshape(a.shape[0], -1))
            else:
                w = valid.to(a.dtype).unsqueeze(-1)
                m = (a * w).sum(1) / w.sum(1).clamp(min=1.0)
        if r.use_raw_text:
            t = self.aligned("raw")
        if self.item_fusion is not None:
            assert m is not None and t is not None and a is not None
            if self.has_tokens:
                adapt = self.tok_adapter or self.adapters["raw"]
                tokens, t_mask = adapt(self.raw_tokens), self.raw_token_mask
            else:
                tokens, t_mask = t.unsqueeze(1), None
            if r.text_kv == "views":
                kv, kv_mask = a, valid
            else:
                kv, kv_mask = m.unsqueeze(1), None
            m, t = self.item_fusion(m, tokens, t_mask, t, kv, kv_mask)
        out += [x for x in (m, t) if x is not None]
        if self.id_table is not None:
            out.append(self.id_table)
        return out

    def table(self) -> Tensor:
        views = torch.stack(self.item_views())  # [V_int, N + 1, d]
        if self.gate is not None:
            v, n, d = views.shape
            logits = self.gate(views.permute(1, 0, 2).reshape(n, v * d)).view(n, v, d)
            w = torch.softmax(logits, dim=1).permute(1, 0, 2)  # per-dimension weights over the views
            views = (w * views).sum(0, keepdim=True)
        views = views * _keep_rows(views.shape[1], views.device, views.dtype)
        return torch.cat([views, self.extra.to(views.dtype)], 1)

    # ------------------------------------------------------------------ sequence level
    def mix_sequence(self, views: Tensor, mask: Tensor) -> Tensor:
        """Sequence-level fusion (``fusion: sequence``): ``[CA(q=m, kv=t), CA(q=t, kv=m), id...]``."""
        if self.seq_fusion is None:
            return views
        f_m, f_t = self.seq_fusion(views[0], views[1], mask)
        return torch.cat([torch.stack([f_m, f_t]), views[2:]], 0)

    # ------------------------------------------------------------------ alignment
    def aux_losses(self, ids: Tensor, table: Tensor | None = None) -> dict[str, Tensor]:
        """``{"align": lambda_align * L_align}`` over the batch's unique items that have both views."""
        pairs = self.align_pairs
        if not pairs:
            return {}
        r = self.rcfg
        items = batch_items(ids, self.n_items, r.align_max_items)
        losses = []
        for x, y in pairs:
            ok = getattr(self, f"valid_{x}")[items] & getattr(self, f"valid_{y}")[items]
            sel = items[ok]
            if sel.numel() >= 2:
                losses.append(alignment_loss(r.align_loss, self.aligned(x, sel), self.aligned(y, sel), r.tau))
        if not losses:
            return {"align": torch.zeros((), device=ids.device)}
        return {"align": r.lambda_align * torch.stack(losses).mean()}


def build_dmesr(cfg: DmesrConfig, *, n_items: int, extra_tokens: int, tensors: dict[str, Tensor]) -> DmesrEncoder:
    """Registry constructor: matrices come from ``tensors[store name]`` (token features from
    ``tensors["NAME:tokens"]`` / ``tensors["NAME:lengths"]``)."""
    r = cfg.resolved()
    features: dict[str, Tensor] = {}
    wanted = list(r.mllm_views) + (["raw"] if r.use_raw_text else [])
    if r.use_id_view and r.id_init == "pca" and cfg.pca_view():
        wanted.append(cfg.pca_view())
    fields = {"image": "image_view", "text": "text_view", "both": "both_view", "raw": "raw_text"}
    for v in dict.fromkeys(wanted):
        name = cfg.store_of(v)
        if name not in tensors:
            raise InputError(f"embedding store {name!r} was not loaded", field=f"item_encoder.{fields[v]}")
        features[v] = _check_rows(tensors[name], n_items, f"item_encoder.{fields[v]}")
    raw_tokens = raw_lengths = None
    for name in cfg.token_embeddings():
        tk, ln = f"{name}:tokens", f"{name}:lengths"
        if tk not in tensors or ln not in tensors:
            raise InputError(f"token-level features of store {name!r} were not loaded (expected tensors "
                             f"{tk!r} and {ln!r}); embed it with --tokens", field="item_encoder.raw_tokens")
        raw_tokens, raw_lengths = tensors[tk].float(), tensors[ln]
        if raw_tokens.shape[0] != n_items + 1:
            raise InputError(f"token features have {raw_tokens.shape[0]} rows, the dataset needs {n_items + 1}",
                             field="item_encoder.raw_tokens")
    return DmesrEncoder(cfg, features, extra_tokens, raw_tokens, raw_lengths)
