"""The HTTP service of ``mmseqrec serve``: a FastAPI app over one or more loaded runs of the same dataset.

Endpoints (OpenAPI docs at ``/docs``): ``POST /recommend``, ``GET /items``, ``GET /items/{id}``,
``GET /items/{id}/image``, ``GET /users``, ``GET /users/{id}``, ``GET /runs``, ``GET /health``, and the web page at
``/`` (``/docs`` and ``/redoc`` from local files, :mod:`.docs`). Every recommendation goes through the recommender
that :func:`~mmseqrec.serve.recommend.load_recommender` picks for the run (sequential and closed-form:
:class:`~mmseqrec.serve.recommend.Recommender`; general: :class:`~mmseqrec.serve.general.GeneralRecommender`;
LLM recommenders: :class:`~mmseqrec.serve.llmrec.LLMRecommender`, which re-ranks a named candidate stage), all
with the same call (the same seam as ``mmseqrec recommend``).

Bad input is a 4xx with a one-line ``detail`` (422: malformed body; 400: a valid body the run cannot answer, e.g.
an empty history without ``cold: "popularity"``; 404: unknown item/user/run; 413: body over the size limit;
401: missing or wrong API key). When the environment variable ``MMSEQREC_API_KEY`` is set, every API call needs
the header ``X-API-Key`` with that value; the page, ``/health``, the docs and item images stay
open. The key is never logged.
"""


import hmac
import logging
import os
from importlib import resources
from typing import Any, Literal

from ..errors import MmseqrecError, require

__all__ = ["API_KEY_ENV", "MAX_BODY_BYTES", "MAX_HISTORY", "MAX_K", "KeyRedactor", "create_app"]

API_KEY_ENV = "MMSEQREC_API_KEY"
MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY = 1000
MAX_K = 1000
_OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
_OPEN_PREFIXES = ("/docs-assets/",)  # mmseqrec.serve.docs.ASSETS


class KeyRedactor(logging.Filter):
    """A logging filter that replaces the API key with ``***`` in a record's message and arguments: the key is
    only read from a header, but a client that puts it in the URL (``?api_key=...``) would otherwise have it written
    to the access log. ``mmseqrec serve`` installs it on uvicorn's loggers."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def _clean(self, value: Any) -> Any:
        return value.replace(self.key, "***") if isinstance(value, str) and self.key in value else value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is parsed (declared
    ``Content-Length`` or counted while streaming)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        too_big = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    await too_big(scope, receive, send)
                    return
        body, more = b"", True  # read the (small) body first, so an oversized stream is refused before parsing
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await too_big(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(recommenders: dict[str, Any], api_key: str | None = None, title: str = "mmseqrec") -> Any:
    """The FastAPI app serving ``recommenders`` (name -> :class:`Recommender`; the first is the default run).

    All runs must share one dataset (their catalogue is the first run's). ``api_key`` defaults to the
    ``MMSEQREC_API_KEY`` environment variable; ``None``/empty means no key is required.
    """
    fastapi = require("fastapi", "serve", "mmseqrec serve")
    from fastapi import Depends, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from .catalog import Catalog
    from .docs import add_docs

    if not recommenders:
        raise ValueError("no runs to serve")
    names = list(recommenders)
    first = recommenders[names[0]]
    catalog = Catalog(first.run.dataset)
    for name, rec in recommenders.items():
        if list(map(str, rec.ids[1:] if len(rec.ids) == catalog.n_items + 1 else rec.ids)) != catalog.ids:
            raise MmseqrecError(f"run {name!r} was trained on another item catalogue than {names[0]!r}; "
                                "serve runs of one dataset together")
    key = os.environ.get(API_KEY_ENV) if api_key is None else api_key

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)  # no "k": true or "exclude_history": "yes"
        history: list[str] = Field(..., max_length=MAX_HISTORY,
                                   description="Original item ids, oldest first (unknown ids are reported).")
        k: int = Field(10, ge=1, le=MAX_K, description="Number of items.")
        exclude_history: bool = Field(True, description="Never recommend an item of the history.")
        run: str | None = Field(None, max_length=200, description=f"Run name (default {names[0]!r}); see /runs.")
        cold: Literal["error", "popularity"] = Field(
            "error", description="A history with no known item: 400 (error) or the most popular training items, "
                                 "labelled source=popularity.")
        user: str | None = Field(None, max_length=200, description=(
            "A dataset user id (see /users): an empty history becomes the user's history (all but the held-out "
            "item); general runs score the user's row, LLM recommenders use the user's stored preference summary."))

    def check_key(request: Request) -> None:
        path = request.url.path
        if not key or path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES) or (
                path.startswith("/items/") and path.endswith("/image")):
            return  # the page, health, docs and item images (loaded by <img> tags, which send no header)
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    app = fastapi.FastAPI(title=title, description="Multimodal sequential recommendation service.",
                          dependencies=[Depends(check_key)], docs_url=None, redoc_url=None)
    add_docs(app, title)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        parts = []
        for e in errs[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts), "errors": [
            {"loc": list(map(str, e.get("loc", ()))), "msg": str(e.get("msg", ""))} for e in errs[:20]]},
            status_code=422)

    @app.exception_handler(MmseqrecError)
    async def _user_error(_request: Request, exc: MmseqrecError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def _rec(name: str | None) -> tuple[str, Any]:
        name = name or names[0]
        if name not in recommenders:
            raise HTTPException(404, f"unknown run {name!r}; runs: {', '.join(names)}")
        return name, recommenders[name]

    def _item_no(item_id: str) -> int:
        if item_id not in catalog.index:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return catalog.index[item_id]

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, the runs served and how each searches (exact, or FAISS with its measured recall)."""
        return {"status": "ok", "n_items": catalog.n_items, "runs": {n: _run_info(n, r) for n, r in
                                                                     recommenders.items()}}

    @app.get("/runs")
    def runs() -> dict[str, Any]:
        return {"default": names[0], "runs": {n: _run_info(n, r) for n, r in recommenders.items()}}

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> dict[str, Any]:
        """Top-``k`` items for ``history`` with title, score, image URL, dataset text and MLLM outputs.

        ``source``: ``model`` or ``popularity`` (no known history and ``cold: "popularity"``). LLM-recommender runs
        re-rank a candidate list: ``candidates`` names its stage (``popularity`` or ``run:NAME``) and size (and for
        runs on an image model how many prompts carried the candidate's image: ``images``), and ``preference``
        holds the preference text the prompt used, with its source; both are ``null`` otherwise.
        """
        name, rec = _rec(req.run)
        history = list(req.history)
        if req.user is not None:
            if req.user not in catalog.user_index:
                raise HTTPException(404, f"unknown user id {req.user!r}; see GET /users")
            history = history or catalog.user_history(catalog.user_index[req.user])
        if req.cold == "error" and not any(h in catalog.index for h in history):
            what = "empty history" if not history else "none of the history ids is in the catalogue"
            raise HTTPException(400, f"{what}: nothing to condition on; send item ids from GET /items, or "
                                     'cold: "popularity" for the most popular training items')
        extra = {"user": req.user} if req.user is not None and getattr(rec, "takes_user", False) else {}
        res = rec(history, req.k, req.exclude_history, req.cold, **extra)
        items = []
        for rank, (item_id, _title, score) in enumerate(res.items, 1):
            card = catalog.item(catalog.index[item_id])
            card.update(rank=rank, score=score)
            items.append(card)
        return {"run": name, "source": res.source, "candidates": res.candidates, "preference": res.preference,
                "k": req.k, "exclude_history": req.exclude_history, "user": req.user, "history": res.history,
                "unknown": res.unknown, "items": items}

    @app.get("/items")
    def items(query: str = Query("", max_length=200, description="Case-insensitive title substring."),
              limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
        """Title search, for building a history."""
        return {"query": query, "items": [catalog.item(i) for i in catalog.search(query, limit)]}

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        """An item's metadata, image URL and MLLM outputs."""
        return catalog.item(_item_no(item_id))

    @app.get("/items/{item_id}/image")
    def image(item_id: str) -> FileResponse:
        path = catalog.image_path(_item_no(item_id))
        if path is None:
            raise HTTPException(404, f"item {item_id!r} has no local image")
        return FileResponse(path)

    @app.get("/users")
    def users(limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Dataset users (to pick a test user's history)."""
        return {"users": catalog.user_ids[offset:offset + limit], "n_users": len(catalog.user_ids)}

    @app.get("/users/{user_id}")
    def user(user_id: str) -> dict[str, Any]:
        """A user's history (all but the held-out last item) and MLLM user outputs (e.g. preference summary)."""
        if user_id not in catalog.user_index:
            raise HTTPException(404, f"unknown user id {user_id!r}")
        return catalog.user(catalog.user_index[user_id])

    page = resources.files("mmseqrec.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    return app


def _run_info(name: str, rec: Any) -> dict[str, Any]:
    if hasattr(rec, "describe"):
        return {"name": name, **rec.describe()}
    cfg = rec.run.config
    search = getattr(rec, "search", None)
    return {"name": name, "path": str(rec.run.path), "model": cfg.model.name,
            "item_encoder": getattr(cfg.item_encoder, "name", None),
            "index": search.info() if search is not None else {"kind": "exact"}}
