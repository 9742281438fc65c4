"""MLLM enrichment: item descriptions, summaries, views and keywords, and user preferences/profiles.

``run_enrich(DATA, EnrichConfig(task=..., backend=BackendConfig(backend=...)))`` writes
``DATA/enrich/<task>.parquet`` (+ ``<task>.json``), with ``DATA/enrich/cache.sqlite`` as the resumable cache;
``EnrichConfig(engine="ray")`` runs the same task as a Ray Data pipeline, resumable by shard (:mod:`.ray_engine`).
See :mod:`.tasks` for the tasks and prompts and :mod:`.backends` for the generation backends.
"""

from .backends import (
    BACKENDS,
    BackendConfig,
    Decoding,
    GenRequest,
    GenResponse,
    make_backend,
    register_backend,
)
from .cache import EnrichCache, make_key
from .images import ImageFetchConfig, load_image
from .runner import (
    EnrichAborted,
    EnrichBusy,
    EnrichConfig,
    EnrichSummary,
    RayOptions,
    output_paths,
    run_enrich,
)
from .tasks import TASKS, TEMPLATES, PromptTemplate

__all__ = [
    "BACKENDS",
    "TASKS",
    "TEMPLATES",
    "BackendConfig",
    "Decoding",
    "EnrichAborted",
    "EnrichBusy",
    "EnrichCache",
    "EnrichConfig",
    "EnrichSummary",
    "GenRequest",
    "GenResponse",
    "ImageFetchConfig",
    "PromptTemplate",
    "RayOptions",
    "load_image",
    "make_backend",
    "make_key",
    "output_paths",
    "register_backend",
    "run_enrich",
]
