"""LLM-ESR / LLMEmb baselines: PCA init, similar-user retrieval, self-distillation (hand cases), the dual-view
encoder's cross-attention wiring, and end-to-end forward/backward of every new item encoder with SASRec,
BERT4Rec and GRU4Rec through the unchanged SequenceModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmseqrec.errors import InputError
from mmseqrec.models.llmemb import LlmEmbConfig, build_llmemb
from mmseqrec.models.llmesr import (
    LlmEsrConfig,
    LlmEsrEncoder,
    SelfDistillation,
    SelfDistillationConfig,
    build_llmesr,
    build_self_distillation,
    pca_init,
    similar_users,
    user_profiles,
)

torch.set_num_threads(1)
N, D = 20, 8


def sem(seed: int = 0, dim: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N + 1, dim, generator=g)
    x[0] = 0
    return x


# ----------------------------------------------------------------------------- helpers
def test_pca_init_matches_numpy_svd_up_to_sign():
    x = sem()
    got = pca_init(x, 4)
    assert got.shape == (N + 1, 4) and (got[0] == 0).all()
    rows = x[1:].double().numpy()
    rc = rows - rows.mean(0)
    _, _, vt = np.linalg.svd(rc, full_matrices=False)
    ref = rc @ vt[:4].T
    signs = np.sign((got[1:].numpy() * ref).sum(0))
    np.testing.assert_allclose(got[1:].numpy(), ref * signs, rtol=1e-4, atol=1e-5)
    # deterministic sign: each component's largest-magnitude loading is positive -> same result twice
    torch.testing.assert_close(pca_init(x, 4), got)
    # more components than dimensions: extra columns are zero
    wide = pca_init(x[:, :3], 5)
    assert (wide[:, 3:] == 0).all() and wide.shape == (N + 1, 5)


def test_similar_users_hand_case():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [2.0, 0.05]])
    top = similar_users(emb, 2, chunk_elements=5)  # one row per chunk: exercises chunking
    # cosines: 1~4 (0.9997) > 1~2 (0.9939); 2~4 (0.9958) > 2~1; 3~2 (0.110) > 3~4 (0.025); 4~1 > 4~2
    assert top[1:].tolist() == [[4, 2], [4, 1], [2, 4], [1, 2]]
    assert 0 not in top[1:] and all(top[i, 0] != i for i in range(1, 5))
    with pytest.raises(ValueError):
        similar_users(emb, 4)  # only 4 non-zero rows -> at most 3 neighbours


def test_user_profiles_mean_of_training_items():
    item_emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    windows = torch.tensor([[0, 0, 0], [0, 1, 2], [3, 3, 1], [0, 0, 0]])
    prof = user_profiles(windows, item_emb)
    expected = torch.tensor([[0.0, 0.0], [0.5, 1.0], [3.0, 8 / 3], [0.0, 0.0]])
    torch.testing.assert_close(prof, expected)


class _StubModel:
    """user_states = [sum of ids, number of real ids] per sequence (records the inputs it saw)."""

    bidirectional = False

    def __init__(self):
        self.seen = []

    def user_states(self, ids):
        self.seen.append(ids.clone())
        return torch.stack([ids.float().sum(1), (ids != 0).float().sum(1)], 1)


def test_self_distillation_hand_case():
    windows = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 4, 5], [0, 7, 8, 9], [0, 0, 0, 2]])
    sim = torch.tensor([[1, 2, 3], [2, 3, 4], [1, 3, 4], [1, 2, 4], [1, 2, 3]])
    sd = SelfDistillation(sim, windows, n_sim=2, alpha=0.1)
    model = _StubModel()

    class B:
        users = torch.tensor([1, 3])

    student = torch.tensor([[10.0, 1.0], [0.0, 0.0]])
    out = sd(model, B, student)
    # causal: the last column (final target) is dropped; leading all-padding columns trimmed
    assert model.seen[0].tolist() == [[0, 4], [7, 8], [1, 2], [0, 4]]
    # teachers: user 1 <- users 2, 3: states (4, 1), (15, 2) -> (9.5, 1.5)
    #           user 3 <- users 1, 2: states (3, 2), (4, 1) -> (3.5, 1.5)
    mse = ((10 - 9.5) ** 2 + (1 - 1.5) ** 2 + 3.5 ** 2 + 1.5 ** 2) / 4
    assert out["distill"].item() == pytest.approx(0.1 * mse)
    model.bidirectional = True
    sd(model, B, student)
    assert model.seen[-1].tolist() == [[0, 4, 5], [7, 8, 9], [1, 2, 3], [0, 4, 5]]  # bidirectional: whole window


def test_self_distillation_epoch_teacher_uses_cached_eval_states():
    windows = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 4, 5], [0, 7, 8, 9], [0, 0, 0, 2]])
    sim = torch.tensor([[1, 2, 3], [2, 3, 4], [1, 3, 4], [1, 2, 4], [1, 2, 3]])
    sd = SelfDistillation(sim, windows, n_sim=2, alpha=0.1, teacher="epoch", chunk=2)

    class Stub(_StubModel):
        training = True

        def __init__(self):
            super().__init__()
            self.modes = []

        class item_encoder:
            @staticmethod
            def table():
                return None

        def eval(self):
            self.training = False
            return self

        def train(self, mode=True):
            self.training = mode
            return self

        def user_states(self, ids, table=None):
            self.modes.append(self.training)
            return super().user_states(ids)

    model = Stub()

    class B:
        users = torch.tensor([1, 3])

    sd.on_epoch_start(model)
    assert model.training and model.modes == [False, False, False]  # 5 users in chunks of 2, eval mode
    assert sd.cache.shape == (5, 2)
    # same teachers as the per-step hand case: (9.5, 1.5) and (3.5, 1.5), now read from the cache
    out = sd(model, B, torch.tensor([[10.0, 1.0], [0.0, 0.0]]))
    mse = ((10 - 9.5) ** 2 + (1 - 1.5) ** 2 + 3.5 ** 2 + 1.5 ** 2) / 4
    assert out["distill"].item() == pytest.approx(0.1 * mse)
    assert len(model.seen) == 3  # no forward pass per step
    with pytest.raises(ValueError, match="teacher"):
        SelfDistillation(sim, windows, teacher="batch")


def test_self_distillation_build_uses_item_embeddings():
    item_emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    windows = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 3], [2, 2]])
    reg = build_self_distillation(SelfDistillationConfig(n_retrieve=100, n_sim=1), tensors={"t": item_emb},
                                  windows=windows, n_users=4, n_items=3)
    assert reg.sim_users.shape == (5, 3)  # k capped at 4 users - 1
    assert reg.sim_users[1, 0].item() == 3 and reg.sim_users[2, 0].item() == 4
    with pytest.raises(InputError, match="not loaded"):
        build_self_distillation(SelfDistillationConfig(embedding="zzz"), tensors={"t": item_emb},
                                windows=windows, n_users=4, n_items=3)


# ----------------------------------------------------------------------------- LLM-ESR / LLMEmb encoders
def test_llmesr_views_pca_init_and_frozen_buffer():
    torch.manual_seed(0)
    x = sem()
    enc = LlmEsrEncoder(LlmEsrConfig(dim=D), x, extra_tokens=1)
    assert enc.n_views == 2
    t = enc.table()
    assert t.shape == (2, N + 2, D) and (t[:, 0] == 0).all()
    torch.testing.assert_close(t[0, 1: N + 1], pca_init(x, D)[1:])  # ID view initialised by PCA
    torch.testing.assert_close(t[1, 1: N + 1], enc.adapter(x)[1:])
    assert "features" not in enc.state_dict() and "features" in dict(enc.named_buffers())
    assert LlmEsrEncoder(LlmEsrConfig(dim=D, use_id_view=False), x).n_views == 1
    assert isinstance(LlmEsrEncoder(LlmEsrConfig(dim=D, freeze=False), x).features, torch.nn.Parameter)


def test_llmesr_cross_attention_wiring():
    torch.manual_seed(0)
    enc = LlmEsrEncoder(LlmEsrConfig(dim=D, causal=False), sem())
    ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    views = enc.encode(ids, enc.table())
    mask = ids != 0
    out = enc.mix_sequence(views, mask)
    keep = mask.unsqueeze(-1).float()
    # new id view = llm2id(q = llm, kv = id); new llm view = id2llm(q = id, kv = llm)
    torch.testing.assert_close(out[0], enc.fusion.ab(views[1], views[0], mask) * keep)
    torch.testing.assert_close(out[1], enc.fusion.ba(views[0], views[1], mask) * keep)
    off = LlmEsrEncoder(LlmEsrConfig(dim=D, cross_attention=False), sem())
    assert torch.equal(off.mix_sequence(views, mask), views)


def test_llmesr_item_reg():
    torch.manual_seed(0)
    from mmseqrec.models.alignment import soft_contrastive

    enc = LlmEsrEncoder(LlmEsrConfig(dim=D, item_reg=0.3, tau=1.0), sem())
    ids = torch.tensor([[0, 2, 4], [4, 6, 0]])
    t = enc.table()
    items = torch.tensor([2, 4, 6])
    torch.testing.assert_close(enc.aux_losses(ids, t)["item_reg"], 0.3 * soft_contrastive(t[1, items], t[0, items], 1.0))
    assert LlmEsrEncoder(LlmEsrConfig(dim=D), sem()).aux_losses(ids) == {}


def test_builders_check_stores():
    x = sem()
    assert build_llmesr(LlmEsrConfig(dim=D, embedding="e"), n_items=N, extra_tokens=0, tensors={"e": x}).n_views == 2
    with pytest.raises(InputError, match="not loaded"):
        build_llmesr(LlmEsrConfig(dim=D, embedding="e"), n_items=N, extra_tokens=0, tensors={})


# ----------------------------------------------------------------------------- end-to-end with the backbones
def _encoders(extra_tokens: int):
    from mmseqrec.models.dmesr import DmesrConfig, build_dmesr

    x16, x24 = sem(1), sem(2, 24)
    tensors = {"views-image": x16, "views-text": x24, "views-both": sem(3), "text": sem(4, 24), "llm": x24}
    g = torch.Generator().manual_seed(0)
    tensors["text:tokens"] = torch.randn(N + 1, 4, 24, generator=g)
    tensors["text:lengths"] = torch.randint(0, 5, (N + 1,), generator=g)
    return {
        "dmesr-item": build_dmesr(DmesrConfig(dim=D, raw_tokens="text", use_id_view=True), n_items=N,
                                  extra_tokens=extra_tokens, tensors=tensors),
        "dmesr-seq": build_dmesr(DmesrConfig(dim=D, fusion="sequence"), n_items=N, extra_tokens=extra_tokens,
                                 tensors=tensors),
        "dmesr-gated": build_dmesr(DmesrConfig(dim=D, combine="gated"), n_items=N, extra_tokens=extra_tokens,
                                   tensors=tensors),
        "llmesr": build_llmesr(LlmEsrConfig(dim=D, embedding="llm", item_reg=0.1), n_items=N,
                               extra_tokens=extra_tokens, tensors=tensors),
        "llmemb": build_llmemb(LlmEmbConfig(dim=D, embedding="llm"), n_items=N, extra_tokens=extra_tokens,
                               tensors=tensors),
    }


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_every_encoder_trains_with_every_backbone(backbone):
    from mmseqrec.models.sequence import Batch, SequenceModel
    from mmseqrec.registry import MODELS

    spec = MODELS[backbone]
    torch.manual_seed(0)
    seq = torch.tensor([[0, 0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 10, 11]])
    windows = torch.cat([torch.zeros(1, 7, dtype=torch.long), seq])
    for name, enc in _encoders(spec.extra_tokens).items():
        backbone_cfg = spec.config_cls(max_len=7, dropout=0.0)
        model = SequenceModel(enc, spec.build(backbone_cfg, enc.dim),
                              regularizers=[SelfDistillation(torch.tensor([[2, 3], [2, 3], [1, 3], [1, 2]]),
                                                             windows, n_sim=2, alpha=0.1)])
        total, parts = model.loss(Batch(seq=seq, users=torch.tensor([1, 2, 3])))
        assert torch.isfinite(total) and "rec" in parts and "distill" in parts, (name, parts)
        if name.startswith("dmesr-") and name != "dmesr-gated":
            assert "align" in parts
        total.backward()
        grads = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in grads), name
        assert sum(int(p.grad.abs().sum() > 0) for p in grads) > 0.8 * len(grads), name
        with torch.no_grad():
            model.eval()
            s = model.score_all(seq[:, :-1])
            assert s.shape == (3, N + 1) and torch.isinf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
            assert model.user_states(seq).shape == (3, enc.n_views * D)


@pytest.mark.parametrize("backbone,options", [("sasrec", {}), ("bert4rec", {}), ("gru4rec", {}),
                                              ("sasrec", {"mask_padding": False, "positions": "from-start",
                                                          "block": "sasrec", "causal": False}),
                                              ("bert4rec", {"mask_padding": False, "positions": "from-start",
                                                            "block": "sasrec"})])
def test_inference_drops_all_padding_columns_without_changing_states(backbone, options):
    """Evaluation histories are max_len wide; a trimming-invariant backbone scores them with the columns that are
    padding in every row dropped: same user states as the full-width pass (the former path), every encoder."""
    from mmseqrec.models.sequence import SequenceModel
    from mmseqrec.registry import MODELS

    spec = MODELS[backbone]
    hist = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 6, 7, 8, 9],
                         [0, 0, 0, 0, 0, 0, 0, 0, 10, 11]])
    for name, enc in _encoders(spec.extra_tokens).items():
        torch.manual_seed(0)
        model = SequenceModel(enc, spec.build(spec.config_cls(max_len=10, dropout=0.0, **options), enc.dim)).eval()
        assert model.backbone.trim_invariant
        full = hist if not model.bidirectional else torch.cat(
            [hist, torch.full_like(hist[:, :1], model.mask_id)], 1)[:, -10:]
        with torch.no_grad():  # float32: rounding only; float64: the same computation
            assert (model.user_states(hist) - model.hidden(full)[:, -1]).abs().max().item() <= 1e-5, name
            model.double()
            assert (model.user_states(hist) - model.hidden(full)[:, -1]).abs().max().item() <= 1e-12, name
    biased = MODELS["gru4rec"].build(MODELS["gru4rec"].config_cls(bias=True), D)
    assert not biased.trim_invariant
