"""The one interface every generation backend implements: ``generate(requests) -> responses`` (batched).

A :class:`GenRequest` is a prompt (the exact text rendered from a versioned template), an optional image (PIL
image or encoded bytes) and decoding limits; ``context`` carries the item's own fields (title, text) for
backends that cannot see images and must ground their output in text (``offline``, ``echo``). A backend
never raises for one bad request: it returns a :class:`GenResponse` with ``error`` set, so that one failure is
recorded with its reason and the rest of the batch is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import Field

from ...config import Config
from ...errors import MmseqrecError

__all__ = ["Backend", "BackendInfo", "BackendUnavailable", "Decoding", "GenRequest", "GenResponse",
           "resize_to_budget"]


class BackendUnavailable(MmseqrecError):
    """The backend cannot serve any request (e.g. no server listens at its address); the run stops."""


class Decoding(Config):
    """Decoding parameters; part of the cache key. Greedy unless ``temperature > 0``."""

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)

    def key(self) -> str:
        """Canonical JSON (sorted keys) used in cache keys and stored with every output."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


@dataclass
class GenRequest:
    """One generation request.

    Parameters
    ----------
    prompt
        The user message text (exact template rendering).
    image
        ``None``, a ``PIL.Image.Image`` or encoded image bytes.
    max_new_tokens
        Upper bound on generated tokens.
    context
        Item fields (``title``, ``text``) for text-grounded backends.
    """

    prompt: str
    image: Any = None
    max_new_tokens: int = 128
    context: dict[str, str] = field(default_factory=dict)


@dataclass
class GenResponse:
    """Output of one request: ``text`` on success, else ``error`` (a short reason)."""

    text: str | None
    error: str | None = None
    backend_prompt: str | None = None  # the text actually sent when the backend wraps the prompt
    n_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


@dataclass(frozen=True)
class BackendInfo:
    """Identity of a backend's outputs: part of the cache key and of every output row."""

    backend: str
    model_id: str
    model_revision: str


@runtime_checkable
class Backend(Protocol):
    """A batched text generator, optionally conditioned on an image."""

    info: BackendInfo
    supports_images: bool

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:  # pragma: no cover - protocol
        ...


def redact_url(url: str) -> str:
    """``url`` without secrets, for everything stored or printed: the user:password part becomes ``***@`` and
    every query value ``***`` (``http://u:pw@host/v1?token=abc`` -> ``http://***@host/v1?token=***``)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    if parts.query and not query:
        query = "***"
    return urlunsplit((parts.scheme, netloc, parts.path, query, "***" if parts.fragment else ""))


def resize_to_budget(image: Any, max_pixels: int) -> Any:
    """Downscale a PIL image (keeping its aspect ratio) so that ``width * height <= max_pixels``."""
    w, h = image.size
    if max_pixels <= 0 or w * h <= max_pixels:
        return image
    scale = (max_pixels / float(w * h)) ** 0.5
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    return image.resize((nw, nh))


def to_pil(image: Any) -> Any:
    """``bytes`` or PIL image -> RGB PIL image (raises on undecodable bytes)."""
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray)):
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(image))
        img.load()
        return img.convert("RGB")
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
