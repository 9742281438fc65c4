"""The image loader/downloader against a real HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmseqrec.enrich.images import ImageFetchConfig, fetch_url, load_image, load_image_bytes


def png_bytes(w: int = 12, h: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), (10, 200, 30), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = png_bytes()
HITS: dict[str, int] = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        HITS[self.path] = HITS.get(self.path, 0) + 1
        routes = {
            "/good.png": (200, "image/png", GOOD),
            "/html": (200, "text/html; charset=utf-8", b"<html>hi</html>"),
            "/big.png": (200, "image/png", GOOD + b"\0" * 5000),
            "/corrupt.jpg": (200, "image/jpeg", b"\xff\xd8\xff\xe0garbage"),
        }
        if self.path == "/stream-big.png":  # no Content-Length: the limit is enforced while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(GOOD + b"\0" * 5000)
            return
        if self.path == "/flaky.png" and HITS[self.path] == 1:
            code, ctype, body = 503, "text/plain", b"busy"
        elif self.path == "/flaky.png":
            code, ctype, body = 200, "image/png", GOOD
        else:
            code, ctype, body = routes.get(self.path, (404, "text/plain", b"nope"))
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


CFG = ImageFetchConfig(timeout_s=5, retries=2, backoff_s=0.01, max_bytes=1000)


def test_download_good_then_cached(server: str, tmp_path: Path) -> None:
    url = f"{server}/good.png"
    data, why = fetch_url(url, tmp_path, CFG)
    assert why == "ok" and data == GOOD
    assert len(list(tmp_path.glob("*.img"))) == 1
    hits = HITS["/good.png"]
    img, why = load_image(url, tmp_path, tmp_path, CFG)  # served from the on-disk cache
    assert why == "ok" and img.size == (12, 8) and img.getpixel((0, 0)) == (10, 200, 30)
    assert HITS["/good.png"] == hits


@pytest.mark.parametrize(("path", "expected"), [
    ("/missing.png", "HTTP 404"),
    ("/html", "content-type text/html is not an image"),
    ("/big.png", "image too large (5"),  # declared length over the limit
    ("/stream-big.png", "image too large (> 1000 bytes)"),
    ("/corrupt.jpg", "corrupt image: "),
])
def test_download_rejections(server: str, tmp_path: Path, path: str, expected: str) -> None:
    data, why = fetch_url(server + path, tmp_path, CFG)
    assert data is None and why.startswith(expected), why
    assert list(tmp_path.glob("*.img")) == []  # nothing bad is cached


def test_retry_on_503(server: str, tmp_path: Path) -> None:
    data, why = fetch_url(f"{server}/flaky.png", tmp_path, CFG)
    assert why == "ok" and data == GOOD and HITS["/flaky.png"] == 2


def test_unreachable_host_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    data, why = fetch_url("http://127.0.0.1:9/x.png", None, ImageFetchConfig(timeout_s=1, retries=1, backoff_s=0))
    assert data is None and "after 2 attempts" in why


def test_local_paths(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(GOOD)
    assert load_image_bytes("a.png", tmp_path) == (GOOD, "ok")
    assert load_image_bytes(str(tmp_path / "a.png"), "/elsewhere") == (GOOD, "ok")
    assert load_image_bytes(None, tmp_path) == (None, "no image")
    img, why = load_image("nothere.png", tmp_path)
    assert img is None and why.startswith("image file not found")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    img, why = load_image("bad.png", tmp_path)
    assert img is None and why.startswith("corrupt image")
