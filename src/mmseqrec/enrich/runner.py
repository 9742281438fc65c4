"""Run one enrichment task over a prepared dataset: plan -> cache lookup -> generate misses -> export.

The SQLite cache (``DATA/enrich/cache.sqlite``) is the source of truth; each finished batch is committed
before the next starts, so an interrupted run loses nothing it finished, and the next run serves those items
from the cache and re-exports. ``DATA/enrich/<task>.parquet`` (one row per item or user id; one per item and
view for view tasks) and ``DATA/enrich/<task>.json`` (counts, backend, model, templates) are written
atomically at the end of every run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from ..config import Config
from ..data.dataset import DatasetDir
from ..fileio import atomic_path, atomic_write_json
from .backends import Backend, BackendConfig, GenRequest, make_backend
from .cache import CacheEntry, EnrichCache, make_key
from .images import ImageFetchConfig, decode_image, load_image_bytes
from .tasks import MLLMREC_CATEGORY, TEMPLATES, Job, ProfileSource, Step, TaskOptions, output_name, plan_task

__all__ = ["EnrichConfig", "EnrichSummary", "output_paths", "run_enrich"]


class EnrichConfig(Config):
    """One enrichment run."""

    task: str
    backend: BackendConfig = BackendConfig()
    limit: int | None = Field(None, ge=1)
    retry_failed: bool = False
    mode: Literal["recurrent", "direct"] = "recurrent"
    block_size: int = Field(3, ge=1)
    max_history: int = Field(20, ge=0)
    image_kind: str = "a cover of a video"
    category: str = MLLMREC_CATEGORY
    profile_source: ProfileSource = "training"
    images: ImageFetchConfig = ImageFetchConfig()


@dataclass
class EnrichSummary:
    """What a run did (also written as ``<task>.json``)."""

    task: str
    parquet: Path
    counts: dict[str, int]
    generated: int = 0
    cached: int = 0
    failed_now: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def output_paths(data: str | Path, task: str) -> tuple[Path, Path, Path]:
    """``(parquet, summary json, cache sqlite)`` of a task in a dataset dir."""
    d = Path(data) / "enrich"
    return d / f"{task}.parquet", d / f"{task}.json", d / "cache.sqlite"


@dataclass
class _Pending:
    job: int
    step: Step
    key: str
    image_sha: str | None
    note: str | None


def _sha(b: bytes | None) -> str | None:
    return hashlib.sha256(b).hexdigest() if b is not None else None


class _Runner:
    def __init__(self, ds: DatasetDir, cfg: EnrichConfig, backend: Backend, cache: EnrichCache,
                 progress: bool) -> None:
        self.ds, self.cfg, self.backend, self.cache, self.progress = ds, cfg, backend, cache, progress
        self.decoding = cfg.backend.decoding.key()
        self.img_cache = ds.path / "enrich" / "images"
        self.generated = self.cached = self.failed_now = 0

    def key(self, step_tpl, prompt: str, image_sha: str | None, context: dict[str, str] | None = None) -> str:
        """Cache key; the item context is part of the input for text-grounded backends (offline, echo)."""
        i = self.backend.info
        if context and getattr(self.backend, "uses_context", False):
            prompt = prompt + "\x00" + json.dumps(context, sort_keys=True)
        return make_key(backend=i.backend, model_id=i.model_id, model_revision=i.model_revision,
                        template_id=step_tpl.id, template_version=step_tpl.version, decoding=self.decoding,
                        prompt=prompt, image_sha256=image_sha)

    def _resolve(self, job: int, st: Step) -> tuple[_Pending, bytes | None]:
        """Key a step; image steps read their bytes (a missing image switches to the text fallback)."""
        if st.image_ref is not None and self.backend.supports_images:
            data, why = load_image_bytes(st.image_ref, self.ds.path, self.img_cache, self.cfg.images)
            if data is not None:
                sha = _sha(data)
                return _Pending(job, st, self.key(st.template, st.prompt, sha, st.context), sha, st.note), data
            return self._fallback(job, st, why), None
        if st.image_ref is not None:  # backend cannot see images
            return self._fallback(job, st, "backend has no image input"), None
        return _Pending(job, st, self.key(st.template, st.prompt, None, st.context), None, st.note), None

    def _fallback(self, job: int, st: Step, why: str) -> _Pending:
        tpl, prompt = st.fallback  # type: ignore[misc]
        ctx = st.context if st.fallback_context is None else st.fallback_context
        fb = Step(tpl, prompt, None, ctx)
        return _Pending(job, fb, self.key(tpl, prompt, None, ctx), None, f"text fallback: {why}")

    def run_round(self, units: list[tuple[int, Step]], results: dict[int, tuple[CacheEntry, str | None]],
                  bar: Any, task_id: Any) -> None:
        """Generate (or fetch from the cache) one step for each ``(job, step)``; fill ``results[job]``."""
        bs = max(1, self.cfg.backend.batch_size)
        chunk = max(256, bs * 8)
        misses: list[_Pending] = []
        for s in range(0, len(units), chunk):
            pend = [self._resolve(j, st)[0] for j, st in units[s : s + chunk]]
            hits = self.cache.get_many(p.key for p in pend)
            for p in pend:
                e = hits.get(p.key)
                if e is not None and (e.status == "ok" or not self.cfg.retry_failed):
                    results[p.job] = (e, p.note)
                    self.cached += 1
                    if bar is not None:
                        bar.advance(task_id)
                else:
                    misses.append(p)
        for s in range(0, len(misses), bs):
            batch = misses[s : s + bs]
            reqs: list[GenRequest] = []
            final: list[_Pending] = []
            for p in batch:
                image = None
                if p.step.image_ref is not None:
                    data, why = load_image_bytes(p.step.image_ref, self.ds.path, self.img_cache, self.cfg.images)
                    image, why = decode_image(data) if data is not None else (None, why)
                    if image is None:
                        p = self._fallback(p.job, p.step, why)
                        e = self.cache.get_many([p.key]).get(p.key)
                        if e is not None and (e.status == "ok" or not self.cfg.retry_failed):
                            results[p.job] = (e, p.note)
                            self.cached += 1
                            if bar is not None:
                                bar.advance(task_id)
                            continue
                reqs.append(GenRequest(p.step.prompt, image, self.cfg.backend.decoding.max_new_tokens,
                                       dict(p.step.context)))
                final.append(p)
            if not reqs:
                continue
            try:
                resps = self.backend.generate(reqs)
            except Exception as exc:  # noqa: BLE001 - a backend crash fails this batch, recorded with its reason
                from .backends import GenResponse

                resps = [GenResponse(None, f"{type(exc).__name__}: {exc}"[:500]) for _ in reqs]
            i = self.backend.info
            entries = []
            for p, r in zip(final, resps, strict=True):
                e = CacheEntry.new(
                    key=p.key, status="ok" if r.ok else "failed", text=r.text if r.ok else None,
                    reason=None if r.ok else (r.error or "failed"), backend=i.backend, model_id=i.model_id,
                    model_revision=i.model_revision, template_id=p.step.template.id,
                    template_version=p.step.template.version, decoding=self.decoding, prompt=p.step.prompt,
                    backend_prompt=r.backend_prompt, image_sha256=p.image_sha)
                entries.append(e)
                results[p.job] = (e, p.note)
                self.generated += 1
                self.failed_now += e.status != "ok"
            self.cache.put_many(entries)  # one commit per finished batch
            if bar is not None:
                bar.advance(task_id, len(entries))


def _progress(enabled: bool):
    from contextlib import nullcontext

    from ..progress import progress_bar, rate_column

    return progress_bar(rate_column(), enabled=True) if enabled else nullcontext(None)


def run_enrich(data: str | Path, cfg: EnrichConfig, backend: Backend | None = None, *,
               progress: bool = True) -> EnrichSummary:
    """Run ``cfg.task`` on the dataset dir ``data`` and export ``enrich/<task>.parquet``.

    Parameters
    ----------
    data
        A prepared dataset directory.
    cfg
        The run configuration.
    backend
        An already built backend (default: built from ``cfg.backend``; models load only on a cache miss).
    progress
        Show rich progress bars (items/s and ETA).
    """
    t0 = time.perf_counter()
    ds = DatasetDir(data)
    opt = TaskOptions(mode=cfg.mode, block_size=cfg.block_size, max_history=cfg.max_history,
                      image_kind=cfg.image_kind, limit=cfg.limit, category=cfg.category,
                      profile_source=cfg.profile_source)
    jobs, notes = plan_task(ds, cfg.task, opt)
    backend = backend if backend is not None else make_backend(cfg.backend)
    parquet, summary_path, cache_path = output_paths(ds.path, output_name(cfg.task, cfg.profile_source))
    final: dict[int, tuple[CacheEntry, str | None]] = {}
    failed_at: dict[int, str] = {}
    with EnrichCache(cache_path) as cache, _progress(progress) as bar:
        runner = _Runner(ds, cfg, backend, cache, progress)
        prev: dict[int, str | None] = {j: None for j in range(len(jobs))}
        n_rounds = max((j.n_steps for j in jobs), default=0)
        for r in range(n_rounds):
            active = [j for j, job in enumerate(jobs) if job.n_steps > r and j not in failed_at]
            units = [(j, jobs[j].make_step(r, prev[j])) for j in active]
            label = cfg.task if n_rounds == 1 else f"{cfg.task} block {r + 1}/{n_rounds}"
            task_id = bar.add_task(label, total=len(units)) if bar is not None else None
            results: dict[int, tuple[CacheEntry, str | None]] = {}
            runner.run_round(units, results, bar, task_id)
            for j in active:
                e, note = results[j]
                if e.status == "ok":
                    prev[j] = e.text
                    final[j] = (e, note)
                else:
                    failed_at[j] = f"step {r + 1}/{jobs[j].n_steps}: " if jobs[j].n_steps > 1 else ""
                    final[j] = (e, note)
    df = _rows(jobs, final, failed_at, ds, cfg)
    counts = dict(Counter(df["status"].to_list()))
    summary = EnrichSummary(cfg.task, parquet, {k: counts.get(k, 0) for k in ("ok", "failed", "skipped")},
                            runner.generated, runner.cached, runner.failed_now, time.perf_counter() - t0)
    info = backend.info
    used = sorted(set(df["template_id"].drop_nulls().to_list()))
    summary.info = {
        "task": cfg.task, "rows": df.height, "counts": summary.counts,
        "this_run": {"generated": runner.generated, "from_cache": runner.cached, "failed": runner.failed_now,
                     "seconds": round(summary.seconds, 3)},
        "backend": info.backend, "model_id": info.model_id, "model_revision": info.model_revision,
        "decoding": json.loads(cfg.backend.decoding.key()),
        "templates": [TEMPLATES[t].metadata() for t in used],
        "options": {"mode": cfg.mode, "block_size": cfg.block_size, "max_history": cfg.max_history,
                    "limit": cfg.limit, "image_kind": cfg.image_kind, "category": cfg.category,
                    "profile_source": cfg.profile_source},
        "notes": notes, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "stand_in": ("offline = EfficientNet-Lite0 tags + SmolLM2-135M, a lightweight stand-in for an MLLM"
                     if info.backend == "offline" else
                     "echo = template-only text, no model" if info.backend == "echo" else None),
    }
    with atomic_path(parquet) as tmp:
        df.write_parquet(tmp)
    atomic_write_json(summary_path, summary.info)
    return summary


def _rows(jobs: list[Job], final: dict[int, tuple[CacheEntry, str | None]], failed_at: dict[int, str],
          ds: DatasetDir, cfg: EnrichConfig) -> pl.DataFrame:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "text", "status", "reason", "template_id", "template_version", "prompt", "backend_prompt", "model_id",
        "model_revision", "backend", "decoding", "input_hash", "created")}
    ids: dict[str, list[Any]] = {k: [] for k in jobs[0].row} if jobs else {"item": []}
    for j, job in enumerate(jobs):
        for k, v in job.row.items():
            ids[k].append(v)
        hit = final.get(j)
        if hit is None:
            reason = job.skip_reason or "not processed"
            vals = [None, "skipped", reason] + [None] * 10
        else:
            e, note = hit
            reason = e.reason if e.status != "ok" else note
            if e.status != "ok":
                reason = failed_at.get(j, "") + (reason or "failed")
                if note:
                    reason = f"{reason} ({note})"
            tpl = TEMPLATES.get(e.template_id or "")
            text = tpl.clean(e.text) if tpl is not None and e.status == "ok" else e.text
            vals = [text, e.status, reason, e.template_id, e.template_version, e.prompt, e.backend_prompt,
                    e.model_id, e.model_revision, e.backend, e.decoding, e.key,
                    datetime.fromtimestamp(e.created, UTC).isoformat(timespec="seconds")]
        for k, v in zip(cols, vals, strict=True):
            cols[k].append(v)
    schema: dict[str, Any] = {k: pl.Int32 for k in ids if k in ("item", "user")}
    if "view" in ids:
        schema["view"] = pl.Utf8
    schema.update({k: pl.Utf8 for k in cols})
    return pl.DataFrame({**ids, **cols}, schema=schema)
