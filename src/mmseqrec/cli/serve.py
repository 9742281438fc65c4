"""``mmseqrec serve``: thin wiring over :mod:`mmseqrec.serve.app` (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve")
    def serve_cmd(
        runs: Annotated[list[str], typer.Argument(
            help="Run directories of one dataset, as DIR or NAME=DIR (the first is the default run; two or more "
                 "give the page's side-by-side view).")],
        host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
        index: Annotated[list[str] | None, typer.Option(
            help="Top-K search: exact (score every item), faiss (approximate, recall@10 vs exact measured at "
                 "start and shown by /health) or auto (faiss from --faiss-threshold items; the default). Once "
                 "for all runs, or once per run in order.")] = None,
        faiss_threshold: Annotated[int, typer.Option(help="Catalogue size from which --index auto uses FAISS.")]
            = 200_000,
        data: Annotated[Path | None, typer.Option(help="Dataset directory (default: the one each run records).")]
            = None,
        device: Annotated[str, typer.Option(help="Torch device for scoring.")] = "cpu",
        candidates_from: Annotated[str, typer.Option(help=(
            "LLM-recommender runs (mmseqrec llmrec train) re-rank a candidate list: 'popularity' (training "
            "popularity top-N, history excluded) or another run's top-N for the same query, as the NAME of a served "
            "run or a run DIR. Every answer names the stage used."))] = "popularity",
        n_candidates: Annotated[int, typer.Option(help="LLM-recommender runs: candidates re-ranked per query (the "
                                                  "cost of a query grows linearly with it).")] = 20,
    ) -> None:
        """Serve recommendations over HTTP (POST /recommend, GET /items, /users, /health; docs at /docs) and a web
        page at / . Set MMSEQREC_API_KEY to require the header X-API-Key on API calls."""
        from ..errors import InputError, require
        from ..serve.app import API_KEY_ENV, KeyRedactor, create_app
        from ..serve.index import attach_index
        from ..serve.llmrec import is_llmrec_run
        from ..serve.recommend import load_recommender

        uvicorn = require("uvicorn", "serve", "mmseqrec serve")
        require("fastapi", "serve", "mmseqrec serve")
        if not 0 < port < 65536:
            raise InputError(f"port must be 1..65535, got {port}", field="--port")
        if n_candidates < 1:
            raise InputError(f"must be at least 1, got {n_candidates}", field="--n-candidates")
        kinds = index or ["auto"]
        if len(kinds) not in (1, len(runs)):
            raise InputError(f"give --index once or once per run ({len(runs)}), not {len(kinds)} times",
                             field="--index")
        specs: dict[str, tuple[int, str]] = {}
        for j, spec in enumerate(runs):
            name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
            if name in specs:
                raise InputError(f"two runs named {name!r}; name them NAME=DIR", field="RUNS")
            specs[name] = (j, path)
        recs = {}
        # runs that score the catalogue first, so an LLM run can take its candidates from one of them
        for name, (j, path) in sorted(specs.items(), key=lambda kv: is_llmrec_run(kv[1][1])):
            same = next((r for r in recs.values() if r.run.path == Path(path)), None)
            # the same run under two names (e.g. exact and faiss) shares the loaded model and catalogue
            llm = {}
            if is_llmrec_run(path):
                stage, stage_name = candidates_from, None
                if candidates_from in recs:
                    stage, stage_name = recs[candidates_from], candidates_from
                elif candidates_from != "popularity":
                    stage = load_recommender(candidates_from, device=device, data_dir=data)
                llm = {"candidates_from": stage, "n_candidates": n_candidates, "candidates_name": stage_name}
            recs[name] = copy.copy(same) if same is not None else load_recommender(path, device=device,
                                                                                   data_dir=data, **llm)
            info = attach_index(recs[name], kinds[j if len(kinds) > 1 else 0], faiss_threshold)
            model = recs[name].describe()["model"] if hasattr(recs[name], "describe") else \
                recs[name].run.config.model.name
            typer.echo(f"run {name}: {path} ({model}), search: {info}")
        api = create_app({name: recs[name] for name in specs})
        key = os.environ.get(API_KEY_ENV)
        if key:  # the key is read from a header only; never let a URL that carries it reach the logs
            for logger in ("uvicorn.access", "uvicorn.error", "uvicorn"):
                logging.getLogger(logger).addFilter(KeyRedactor(key))
        typer.echo(f"serving on http://{host}:{port}/ (API docs at /docs)")
        uvicorn.run(api, host=host, port=port, log_level="info")
