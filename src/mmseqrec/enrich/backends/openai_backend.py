"""OpenAI-compatible chat-completions backend (vLLM, SGLang, llama.cpp server, Ollama, OpenAI).

Requests run concurrently on a thread pool (``concurrency``), each with a timeout; timeouts, connection
errors, 429 and 5xx are retried with exponential backoff (honouring ``Retry-After``), except while the server
has never answered: then a refused (or timed-out) connection fails at once and ``generate`` raises
:class:`~.base.BackendUnavailable`, so a run against a server that is not up stops in a moment. The API key is read from
the environment variable named by ``api_key_env`` (never from the command line or a file). Images are sent as
base64 ``data:`` URLs (re-encoded as JPEG after resizing within ``max_pixels``).
"""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import (
    BackendInfo,
    BackendUnavailable,
    GenRequest,
    GenResponse,
    redact_url,
    resize_to_budget,
    to_pil,
)

__all__ = ["OpenAIBackend", "image_data_url"]

_RETRY = {408, 409, 425, 429, 500, 502, 503, 504}


def image_data_url(image: Any, max_pixels: int = 0) -> str:
    """A ``data:image/jpeg;base64,...`` URL for a PIL image or encoded bytes."""
    img = resize_to_budget(to_pil(image), max_pixels)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    """Chat completions over HTTP with concurrency, timeouts and retries."""

    supports_images = True

    def __init__(self, cfg: Any) -> None:
        from ...errors import InputError

        if not cfg.model:
            raise InputError("the openai backend needs --model (the model name the server serves)",
                             field="--model")
        self.cfg = cfg
        self.url = cfg.api_base.rstrip("/") + "/chat/completions"
        # the server URL identifies the outputs, but never with its credentials (stored in cache and Parquet)
        self.info = BackendInfo("openai", cfg.model, cfg.revision or redact_url(cfg.api_base.rstrip("/")))
        self.api_key = os.environ.get(cfg.api_key_env, "")
        self._reached = False  # any HTTP answer from the server so far
        self._unreachable: str | None = None

    def _where(self) -> str:
        """scheme://host:port of the server (no credentials, path or query)."""
        import httpx

        try:
            u = httpx.URL(self.cfg.api_base)
            return f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port else "")
        except Exception:  # noqa: BLE001 - a malformed URL is reported by httpx on the first request
            return "the --api-base server"

    def _body(self, r: GenRequest) -> dict[str, Any]:
        if r.image is not None:
            content: Any = [{"type": "image_url", "image_url": {"url": image_data_url(r.image, self.cfg.max_pixels)}},
                            {"type": "text", "text": r.prompt}]
        else:
            content = r.prompt
        d = self.cfg.decoding
        return {"model": self.cfg.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": r.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p, "stream": False}

    def _one(self, client: Any, r: GenRequest) -> GenResponse:
        import httpx

        try:
            body = self._body(r)
        except Exception as exc:  # noqa: BLE001 - undecodable image: record it
            return GenResponse(None, f"image: {type(exc).__name__}")
        reason = "not sent"
        for attempt in range(self.cfg.retries + 1):
            if self._unreachable is not None and not self._reached:
                return GenResponse(None, self._unreachable)
            if attempt:
                time.sleep(min(60.0, self.cfg.backoff_s * 2 ** (attempt - 1)))
            try:
                resp = client.post(self.url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if not self._reached:  # nothing has ever answered there: do not wait through the retries
                    self._unreachable = f"cannot connect to {self._where()}: {reason}"
                    return GenResponse(None, self._unreachable)
                continue
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason = f"{type(exc).__name__}"
                continue
            self._reached = True
            if resp.status_code in _RETRY:
                reason = f"HTTP {resp.status_code}"
                ra = resp.headers.get("retry-after")
                if ra and ra.replace(".", "", 1).isdigit():
                    time.sleep(min(30.0, float(ra)))
                continue
            if resp.status_code != 200:
                return GenResponse(None, f"HTTP {resp.status_code}: {resp.text[:200]}")
            try:
                data = resp.json()
                text = data["choices"][0]["message"]["content"]
                n = (data.get("usage") or {}).get("completion_tokens")
            except (ValueError, KeyError, IndexError, TypeError):
                return GenResponse(None, f"malformed response: {resp.text[:200]}")
            if not text or not str(text).strip():
                return GenResponse(None, "empty output")
            return GenResponse(str(text).strip(), n_tokens=n)
        return GenResponse(None, f"{reason} after {self.cfg.retries + 1} attempts")

    def generate(self, requests: list[GenRequest]) -> list[GenResponse]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=self.cfg.timeout_s, headers=headers) as client, \
                ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            out = list(pool.map(lambda r: self._one(client, r), requests))
        if self._unreachable is not None and not self._reached:
            raise BackendUnavailable(f"{self._unreachable} (is the server running? check --api-base)")
        return out
