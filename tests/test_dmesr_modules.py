"""DMESR building blocks: alignment losses (hand-computed), cross-attention masks, the DMESR item encoder
(shapes, padding, gradients, ablation switches, gated vs concat)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmseqrec.errors import InputError
from mmseqrec.models.alignment import Adapter, alignment_loss, info_nce, soft_contrastive
from mmseqrec.models.dmesr import ABLATIONS, DmesrConfig, DmesrEncoder, build_dmesr
from mmseqrec.models.fusion import CrossAttention, ItemFusion, SequenceFusion

torch.set_num_threads(1)
N, T, D = 20, 5, 8


def features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = {"image": torch.randn(N + 1, 16, generator=g), "text": torch.randn(N + 1, 24, generator=g),
         "both": torch.randn(N + 1, 16, generator=g), "raw": torch.randn(N + 1, 24, generator=g)}
    for v in f.values():
        v[0] = 0
    return f


def tokens(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N + 1,), generator=g)
    lengths[0] = 0
    lengths[3] = 2
    tok = torch.randn(N + 1, T, 24, generator=g)
    tok[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    return tok, lengths


def encoder(seed: int = 0, tok: bool = True, **kw) -> DmesrEncoder:
    torch.manual_seed(seed)
    cfg = DmesrConfig(dim=D, raw_tokens="raw-tok" if tok else None, **kw)
    t, ln = tokens() if tok else (None, None)
    return DmesrEncoder(cfg, features(), extra_tokens=1, raw_tokens=t, raw_lengths=ln)


# ----------------------------------------------------------------------------- losses
def test_info_nce_matches_hand_computed_2x2():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalised: e1, (1, 1)/sqrt(2)
    tau = 0.5
    s = 1 / math.sqrt(2)
    # logits = x̂ ŷ^T / tau = [[1, s], [0, s]] / tau
    l11, l12, l21, l22 = 1 / tau, s / tau, 0.0, s / tau
    row = (-math.log(math.exp(l11) / (math.exp(l11) + math.exp(l12)))
           - math.log(math.exp(l22) / (math.exp(l21) + math.exp(l22)))) / 2
    col = (-math.log(math.exp(l11) / (math.exp(l11) + math.exp(l21)))
           - math.log(math.exp(l22) / (math.exp(l12) + math.exp(l22)))) / 2
    assert info_nce(x, y, tau).item() == pytest.approx((row + col) / 2, rel=1e-6)
    assert alignment_loss("infonce", x, y, tau).item() == pytest.approx((row + col) / 2, rel=1e-6)
    # one pair has no negatives: zero loss
    assert info_nce(x[:1], y[:1], tau).item() == pytest.approx(0.0, abs=1e-7)


def _soft_numpy(x: np.ndarray, y: np.ndarray, tau: float) -> float:
    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    logits = x @ y.T / tau
    sim = (y @ y.T + x @ x.T) / 2 * tau
    targets = np.exp(sim - sim.max(1, keepdims=True))
    targets /= targets.sum(1, keepdims=True)
    xl = -(targets * log_softmax(logits)).sum(1)
    yl = -(targets.T * log_softmax(logits.T)).sum(1)
    return float(((xl + yl) / 2).mean())


def test_soft_contrastive_matches_llmesr_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for tau in (1.0, 2.0, 0.5):
        got = soft_contrastive(torch.tensor(x), torch.tensor(y), tau).item()
        assert got == pytest.approx(_soft_numpy(x, y, tau), rel=1e-9)
    # 2x2 by hand: X = Y = I, tau = 1 -> logits = I, targets = softmax(I) rows (e, 1)/(e + 1)
    eye = torch.eye(2, dtype=torch.float64)
    p = math.e / (math.e + 1)
    ce = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # log_softmax(I) rows = log of the same probs
    assert soft_contrastive(eye, eye, 1.0).item() == pytest.approx(ce, rel=1e-12)
    with pytest.raises(ValueError):
        alignment_loss("cosine", eye, eye, 1.0)  # type: ignore[arg-type]


def test_adapter_is_two_linear_layers_without_activation():
    a = Adapter(24, 8)
    assert a.fc1.in_features == 24 and a.fc1.out_features == 12 and a.fc2.out_features == 8
    x = torch.randn(4, 24)
    lin = (x @ a.fc1.weight.T + a.fc1.bias) @ a.fc2.weight.T + a.fc2.bias
    torch.testing.assert_close(a(x), lin)
    assert isinstance(Adapter(24, 8, activation=True).act, torch.nn.ReLU)


# ----------------------------------------------------------------------------- attention
def test_cross_attention_single_key_is_value_projection():
    torch.manual_seed(0)
    ca = CrossAttention(8, heads=2)
    q, kv = torch.randn(3, 1, 8), torch.randn(3, 1, 8)
    expected = ca.out(ca.v(kv))  # softmax over one key = 1
    torch.testing.assert_close(ca(q, kv), expected)
    res = CrossAttention(8, heads=2, residual=True)
    res.load_state_dict(ca.state_dict())
    torch.testing.assert_close(res(q, kv), expected + q)


def test_cross_attention_padding_keys_never_attended_and_no_nan():
    torch.manual_seed(0)
    ca = CrossAttention(8, heads=2, residual=True, layernorm=True)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    out = ca(q, kv, mask)
    kv2 = kv.clone()
    kv2[~mask] = 100.0
    torch.testing.assert_close(ca(q, kv2, mask), out)
    assert torch.isfinite(out).all()
    # a query with no allowed key gets no contribution: out = norm(query + out-bias)
    torch.testing.assert_close(out[1], ca.norm(q[1] + ca.out.bias))


def test_sequence_fusion_causal_has_no_future_leakage_and_zero_padding():
    torch.manual_seed(0)
    sf = SequenceFusion(8, heads=2, causal=True)
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    oa, ob = sf(a, b, mask)
    assert (oa[0, :2] == 0).all() and (ob[0, :2] == 0).all()
    a2, b2 = a.clone(), b.clone()
    a2[:, 3:] += 5.0
    b2[:, 3:] -= 5.0  # change the future (positions 3, 4)
    pa, pb = sf(a2, b2, mask)
    torch.testing.assert_close(pa[:, :3], oa[:, :3])
    torch.testing.assert_close(pb[:, :3], ob[:, :3])
    assert not torch.allclose(pa[:, 3:], oa[:, 3:])
    # LLM-ESR's non-causal variant does see the future
    nc = SequenceFusion(8, heads=2, causal=False)
    nc.load_state_dict(sf.state_dict())
    assert not torch.allclose(nc(a2, b2, mask)[0][:, :3], nc(a, b, mask)[0][:, :3])
    # padding keys never attended: changing padded positions leaves real outputs unchanged
    a3 = a.clone()
    a3[0, :2] = 50.0
    torch.testing.assert_close(nc(a3, b, mask)[1][0, 2:], nc(a, b, mask)[1][0, 2:])


def test_item_fusion_shapes():
    f = ItemFusion(8, heads=4)
    fm, ft = f(torch.randn(6, 8), torch.randn(6, 5, 8), torch.ones(6, 5, dtype=torch.bool), torch.randn(6, 8),
               torch.randn(6, 3, 8))
    assert fm.shape == ft.shape == (6, 8)


# ----------------------------------------------------------------------------- DMESR encoder
@pytest.mark.parametrize("fusion", ["item", "sequence", "none"])
@pytest.mark.parametrize("use_id", [False, True])
def test_dmesr_shapes(fusion, use_id):
    enc = encoder(fusion=fusion, use_id_view=use_id)
    v = 3 if use_id else 2
    assert enc.n_views == v and enc.n_items == N
    table = enc.table()
    assert table.shape == (v, N + 2, D)  # + BERT4Rec mask token
    assert (table[:, 0] == 0).all()  # padding row
    ids = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 21, 7]])
    views = enc.encode(ids, table)
    assert views.shape == (v, 2, 5, D)
    mixed = enc.mix_sequence(views, ids != 0)
    assert mixed.shape == (v, 2, 5, D) and torch.isfinite(mixed).all()
    if fusion != "sequence":
        assert torch.equal(mixed, views)


@pytest.mark.parametrize("fusion", ["item", "sequence"])
def test_fusion_norm_gain_keeps_fused_vectors_at_embedding_scale(fusion):
    """Regression: with LayerNorm gain 1 the fused vectors had norm sqrt(d), so after the backbones'
    ``x * sqrt(d)`` the positional embeddings were drowned and DMESR + BERT4Rec trained to near random."""
    d = 64
    for gain, want in (("embedding", 1.0), ("unit", math.sqrt(d))):
        torch.manual_seed(0)
        enc = DmesrEncoder(DmesrConfig(dim=d, heads=2, fusion=fusion, layernorm=True, fusion_norm_gain=gain),
                           features())
        if fusion == "item":
            rows = enc.table()[:, 1:]
        else:
            ids = torch.arange(1, N + 1).view(1, -1)
            rows = enc.mix_sequence(enc.encode(ids), ids != 0)[:, 0]
        norms = rows.norm(dim=-1)
        assert norms.mean().item() == pytest.approx(want, rel=0.05), gain


def test_padded_text_tokens_never_attended():
    enc = encoder()
    tab = enc.table()
    enc.raw_tokens[3, 2:] = 123.0  # item 3 has 2 real tokens
    enc.raw_tokens[0] = 7.0  # padding item has none
    torch.testing.assert_close(enc.table(), tab)
    enc.raw_tokens[3, 1] = 5.0  # a real token does matter
    assert not torch.allclose(enc.table()[0, 3], tab[0, 3])
    assert torch.isfinite(enc.table()).all()


def test_missing_mllm_view_rows_are_masked():
    f = features()
    f["image"][4] = 0  # item 4 has no image
    torch.manual_seed(0)
    enc = DmesrEncoder(DmesrConfig(dim=D, fusion="none"), f)
    a = torch.stack([enc.aligned(v) for v in ("text", "both")], 1)
    torch.testing.assert_close(enc.table()[0, 4], a[4].mean(0))


@pytest.mark.parametrize(("fusion", "combine"), [("item", "concat"), ("item", "gated"), ("sequence", "concat")])
def test_gradient_reaches_every_trainable_part(fusion, combine):
    pool = "concat" if combine == "gated" else "mean"
    enc = encoder(fusion=fusion, combine=combine, use_id_view=True, mllm_pool=pool, align_pairs="all")
    table = enc.table()
    ids = torch.tensor([[0, 1, 2, 3, 21], [4, 5, 6, 7, 8]])
    out = enc.mix_sequence(enc.encode(ids, table), ids != 0)
    loss = (out ** 2).sum() + table[:, : N + 1].pow(2).sum() + sum(enc.aux_losses(ids, table).values())
    loss.backward()
    named = dict(enc.named_parameters())
    assert named, "no parameters"
    for name, p in named.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(n.startswith("feat_") for n in named)  # frozen inputs are buffers
    assert "feat_image" in dict(enc.named_buffers())
    assert ("raw_tokens" in dict(enc.named_buffers())) == (fusion == "item")  # tokens only feed item fusion
    assert not any(k.startswith(("feat_", "raw_tok", "valid_")) for k in enc.state_dict())  # not persistent


def test_gated_vs_concat_view_counts():
    assert encoder(combine="concat").n_views == 2
    assert encoder(combine="concat", use_id_view=True).n_views == 3
    g = encoder(combine="gated", use_id_view=True)
    assert g.n_views == 1 and g.table().shape == (1, N + 2, D)
    with pytest.raises(ValueError, match="gated"):
        DmesrConfig(combine="gated", fusion="sequence")
    # gate weights are a convex combination: with equal views the gated sum equals the view
    enc = encoder(combine="gated", fusion="none", ablation="no-mllm", use_id_view=True)
    with torch.no_grad():
        enc.id_table.copy_(enc.aligned("raw"))
    torch.testing.assert_close(enc.table()[0, 1: N + 1], enc.aligned("raw")[1:])


def _transfer(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy every parameter that exists with the same shape (the ablated model shares them)."""
    sd = dst.state_dict()
    sd.update({k: v for k, v in src.state_dict().items() if k in sd and sd[k].shape == v.shape})
    dst.load_state_dict(sd)


@pytest.mark.parametrize("ablation", [a for a in ABLATIONS if a != "none"])
def test_each_ablation_switch_changes_the_output(ablation):
    full = encoder(use_id_view=True)
    abl = encoder(seed=1, use_id_view=True, ablation=ablation)
    _transfer(full, abl)
    ids = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    t_full, t_abl = full.table(), abl.table()
    if ablation == "no-align":
        torch.testing.assert_close(t_abl, t_full)  # same item vectors, no alignment term
        assert "align" in full.aux_losses(ids) and abl.aux_losses(ids) == {}
        return
    changed = t_full.shape != t_abl.shape or not torch.allclose(t_full, t_abl)
    assert changed, ablation
    expected_views = {"no-fusion": 3, "no-raw-text": 2, "no-mllm": 2, "no-id": 2, "image-only": 3,
                      "text-only": 3}[ablation]
    assert abl.n_views == expected_views
    r = abl.rcfg
    if ablation in ("image-only", "text-only"):
        assert r.mllm_views == [ablation.split("-")[0]] and abl.aux_losses(ids) == {}
    if ablation in ("no-raw-text", "no-mllm", "no-fusion"):
        assert r.fusion == "none"
    if ablation == "no-fusion":  # unfused views = adapters only
        torch.testing.assert_close(t_abl[1, 1: N + 1], full.aligned("raw")[1:])


def test_config_resolution_and_store_names():
    cfg = DmesrConfig()
    assert cfg.embeddings() == ["views-image", "views-text", "views-both", "text"]
    assert cfg.token_embeddings() == []
    r = cfg.resolved()
    assert r.residual is True and r.layernorm is True and r.fusion == "item"
    assert DmesrConfig(fusion="sequence").resolved().residual is False
    assert DmesrConfig(ablation="no-mllm").embeddings() == ["text"]
    assert DmesrConfig(ablation="image-only").embeddings() == ["views-image", "text"]
    assert DmesrConfig(raw_tokens="text-tok").token_embeddings() == ["text-tok"]
    assert DmesrConfig(use_id_view=True, both_view=None).embeddings() == ["views-image", "views-text", "text"]
    assert DmesrConfig(align_pairs="all").align_pairs_resolved() == [("image", "text"), ("image", "both"),
                                                                       ("text", "both")]
    with pytest.raises(InputError, match="no view left"):
        DmesrConfig(ablation="no-mllm", raw_text=None).resolved()
    with pytest.raises(InputError, match="image_view"):
        DmesrConfig(ablation="image-only", image_view=None).resolved()


def test_alignment_loss_value_on_batch_items():
    enc = encoder(lambda_align=0.5, tau=0.2)
    ids = torch.tensor([[0, 0, 3, 5], [5, 2, 0, 3]])
    got = enc.aux_losses(ids)["align"]
    items = torch.tensor([2, 3, 5])
    expected = 0.5 * info_nce(enc.aligned("image", items), enc.aligned("text", items), 0.2)
    torch.testing.assert_close(got, expected)
    soft = encoder(lambda_align=0.5, tau=2.0, align_loss="soft")
    expected = 0.5 * soft_contrastive(soft.aligned("image", items), soft.aligned("text", items), 2.0)
    torch.testing.assert_close(soft.aux_losses(ids)["align"], expected)
    assert enc.aux_losses(torch.tensor([[0, 4]]))["align"].item() == 0.0  # one item: nothing to contrast


def test_build_from_tensors_and_input_errors():
    f = features()
    tok, ln = tokens()
    tensors = {"views-image": f["image"], "views-text": f["text"], "views-both": f["both"], "text": f["raw"],
               "text:tokens": tok, "text:lengths": ln}
    cfg = DmesrConfig(dim=D, raw_tokens="text", use_id_view=True)
    enc = build_dmesr(cfg, n_items=N, extra_tokens=0, tensors=tensors)
    assert enc.has_tokens and enc.n_views == 3 and enc.table().shape == (3, N + 1, D)
    # PCA initialisation of the ID view from the "both" view
    from mmseqrec.models.llmesr import pca_init

    ref = pca_init(f["both"], D)
    torch.testing.assert_close(enc.id_table.detach(), ref / ref[1:].norm(dim=1).mean())  # id_init_scale: unit
    assert enc.id_table[1:].norm(dim=1).mean().item() == pytest.approx(1.0)
    raw = build_dmesr(cfg.model_copy(update={"id_init_scale": "raw"}), n_items=N, extra_tokens=0, tensors=tensors)
    torch.testing.assert_close(raw.id_table.detach(), ref)
    with pytest.raises(InputError, match="was not loaded"):
        build_dmesr(cfg, n_items=N, extra_tokens=0, tensors={k: v for k, v in tensors.items() if k != "views-both"})
    with pytest.raises(InputError, match="token-level"):
        build_dmesr(cfg, n_items=N, extra_tokens=0, tensors={k: v for k, v in tensors.items() if ":" not in k})
    with pytest.raises(InputError, match="n_items"):
        build_dmesr(cfg, n_items=N + 3, extra_tokens=0, tensors=tensors)
