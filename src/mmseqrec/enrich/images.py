"""Item images from local paths or URLs, with a careful downloader and an on-disk cache.

A missing, oversized, mistyped or corrupt image is never an exception here: every function returns
``(value | None, reason)`` so that the caller records the reason and falls back to text.

URLs are fetched with :mod:`httpx` (timeout, retries with exponential backoff on timeouts / 429 / 5xx, a size
limit enforced while streaming, an ``image/*`` content-type check) and stored under ``cache_dir`` keyed by the
sha256 of the URL; later calls read the cached file. Every result is decoded with Pillow before it is accepted,
and only after its header says it is within ``max_image_pixels`` (a 12000x12000 PNG of a few kB would otherwise
take gigabytes to decode).
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import Field

from ..config import Config
from ..fileio import atomic_write_bytes

__all__ = ["ImageFetchConfig", "decode_image", "fetch_url", "is_url", "load_image", "load_image_bytes"]

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ImageFetchConfig(Config):
    """Downloader limits."""

    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)  # width x height read from the header, checked before decoding
    user_agent: str = "mmseqrec/0.1 (+image fetcher)"


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def _cache_file(url: str, cache_dir: Path) -> Path:
    return cache_dir / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()}.img"


def fetch_url(url: str, cache_dir: str | Path | None = None,
              cfg: ImageFetchConfig | None = None) -> tuple[bytes | None, str]:
    """Download an image URL; returns ``(bytes | None, reason)`` (``reason == "ok"`` on success).

    Bytes are cached (atomically) under ``cache_dir`` only after they decode as an image.
    """
    import httpx

    cfg = cfg or ImageFetchConfig()
    cpath = _cache_file(url, Path(cache_dir)) if cache_dir is not None else None
    if cpath is not None and cpath.exists():
        return cpath.read_bytes(), "ok"
    reason = "not fetched"
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            with httpx.Client(timeout=cfg.timeout_s, follow_redirects=True,
                              headers={"User-Agent": cfg.user_agent}) as client, client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    reason = f"HTTP {resp.status_code}"
                    if resp.status_code in _RETRY_STATUS:
                        continue
                    return None, reason
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if not ctype.startswith("image/"):
                    return None, f"content-type {ctype or 'missing'} is not an image"
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
                    return None, f"image too large ({declared} bytes > {cfg.max_bytes})"
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf.extend(chunk)
                    if len(buf) > cfg.max_bytes:
                        return None, f"image too large (> {cfg.max_bytes} bytes)"
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()
            continue
        data = bytes(buf)
        img, why = decode_image(data, cfg.max_image_pixels)
        if img is None:
            return None, why
        if cpath is not None:
            atomic_write_bytes(cpath, data)
        return data, "ok"
    return None, f"{reason} after {cfg.retries + 1} attempts"


def load_image_bytes(ref: str | None, base_dir: str | Path, cache_dir: str | Path | None = None,
                     cfg: ImageFetchConfig | None = None) -> tuple[bytes | None, str]:
    """Raw bytes of an image reference (path relative to ``base_dir``, absolute path or URL)."""
    if ref is None or not str(ref).strip():
        return None, "no image"
    ref = str(ref).strip()
    if is_url(ref):
        return fetch_url(ref, cache_dir, cfg)
    p = Path(ref)
    if not p.is_absolute():
        p = Path(base_dir) / p
    limit = (cfg or ImageFetchConfig()).max_bytes
    try:
        size = p.stat().st_size
        if size > limit:
            return None, f"image too large: {size} bytes > {limit}"
        return p.read_bytes(), "ok"
    except FileNotFoundError:
        return None, f"image file not found: {p}"
    except OSError as exc:
        return None, f"cannot read image {p}: {exc.strerror or exc}"


def decode_image(data: bytes | None, max_pixels: int | None = None) -> tuple[Any, str]:
    """Decode bytes with Pillow (header size check, verify, full load) into an RGB image.

    Returns ``(None, reason)`` when the bytes are corrupt or the header announces more than ``max_pixels``
    pixels (default :attr:`ImageFetchConfig.max_image_pixels`); such an image is never decoded.
    """
    if data is None:
        return None, "no image"
    from PIL import Image, UnidentifiedImageError

    cap = ImageFetchConfig().max_image_pixels if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():  # the size is checked here, below Pillow's own (warning) threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))  # reads the header only
        with probe:
            w, h = probe.size
            if cap > 0 and w * h > cap:
                return None, f"image too large: {w}x{h} = {w * h:,} pixels > {cap:,} (not decoded)"
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB"), "ok"
    except Image.DecompressionBombError:
        return None, "image too large (decompression bomb)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, f"corrupt image: {type(exc).__name__}: {exc}"[:200]


def load_image(ref: str | None, base_dir: str | Path, cache_dir: str | Path | None = None,
               cfg: ImageFetchConfig | None = None) -> tuple[Any, str]:
    """Open one image reference as an RGB PIL image; returns ``(image | None, reason)``."""
    data, reason = load_image_bytes(ref, base_dir, cache_dir, cfg)
    if data is None:
        return None, reason
    return decode_image(data, (cfg or ImageFetchConfig()).max_image_pixels)
