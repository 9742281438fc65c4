"""Run one enrichment task over a prepared dataset: plan -> cache lookup -> generate misses -> export.

The SQLite cache (``DATA/enrich/cache.sqlite``) is the source of truth; each finished batch is committed
before the next starts, so an interrupted run loses nothing it finished, and the next run serves those items
from the cache and re-exports. ``DATA/enrich/<task>.parquet`` (one row per item or user id; one per item and
view for view tasks) and ``DATA/enrich/<task>.json`` (counts, backend, model, templates) are written
atomically at the end of every run.

Failing loudly: failures cached by an earlier run are generated again by default (``retry_failed``); a run stops
early, exporting nothing, when the backend cannot be reached (:class:`BackendUnavailable`) or after
``max_consecutive_failures`` failed generations in a row (:class:`EnrichAborted`, with the first reasons). One run
per task and dataset at a time: a second one is refused (a lock on ``DATA/enrich/.<task>.lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from ..config import Config
from ..data.dataset import DatasetDir
from ..errors import MmseqrecError
from ..fileio import atomic_path, atomic_write_json
from .backends import Backend, BackendConfig, GenRequest, make_backend
from .backends.base import BackendUnavailable
from .cache import CacheEntry, EnrichCache, make_key
from .images import ImageFetchConfig, decode_image, load_image_bytes
from .tasks import (
    MLLMREC_CATEGORY,
    TEMPLATES,
    Job,
    ProfileSource,
    Step,
    TaskOptions,
    default_image_kind,
    is_item_task,
    output_name,
    plan_task,
)

__all__ = ["EnrichAborted", "EnrichBusy", "EnrichConfig", "EnrichSummary", "RayOptions", "output_paths", "run_enrich"]


class EnrichAborted(MmseqrecError):
    """A run stopped early because the backend fails every request; nothing was exported."""


class EnrichBusy(MmseqrecError):
    """Another run of the same task on the same dataset holds the task lock."""


class RayOptions(Config):
    """``engine: ray`` only (:mod:`.ray_engine`)."""

    address: str | None = None  # a Ray cluster (ray://HOST:10001 or auto); None: $RAY_ADDRESS, else a local Ray
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a local Ray started for the run (None: all)
    shard_size: int = Field(1000, ge=1)  # output rows (jobs) per shard: the unit of resumption
    actors: int = Field(1, ge=1)  # generation actors (one backend each)
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0)  # e.g. 1 for --backend vllm


class EnrichConfig(Config):
    """One enrichment run."""

    task: str
    engine: Literal["local", "ray"] = "local"  # local: one process + the SQLite cache; ray: Ray Data, by shard
    ray: RayOptions = RayOptions()
    backend: BackendConfig = BackendConfig()
    limit: int | None = Field(None, ge=1)
    only: list[int] | None = None  # only these item (or user) ids (``--only FILE``); the others are skipped
    retry_failed: bool = True  # failures cached by earlier runs are generated again (False: served from cache)
    max_consecutive_failures: int = Field(10, ge=0)  # stop after this many failures in a row (0 = never)
    mode: Literal["recurrent", "direct"] = "recurrent"
    block_size: int = Field(3, ge=1)
    max_history: int = Field(20, ge=0)
    image_kind: str | None = None  # None: derived from the dataset (tasks.default_image_kind)
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
    failed_cached: int = 0  # failures served from the cache (retry_failed=False)


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


def step_key(info: Any, uses_context: bool, decoding: str, template_id: str, template_version: str, prompt: str,
             image_sha: str | None, context: dict[str, str] | None = None) -> str:
    """Cache key of one step; the item context is part of the input for text-grounded backends (offline, echo)."""
    if context and uses_context:
        prompt = prompt + "\x00" + json.dumps(context, sort_keys=True)
    return make_key(backend=info.backend, model_id=info.model_id, model_revision=info.model_revision,
                    template_id=template_id, template_version=template_version, decoding=decoding,
                    prompt=prompt, image_sha256=image_sha)


def _sha(b: bytes | None) -> str | None:
    return hashlib.sha256(b).hexdigest() if b is not None else None


class _Runner:
    def __init__(self, ds: DatasetDir, cfg: EnrichConfig, backend: Backend, cache: EnrichCache,
                 progress: bool) -> None:
        self.ds, self.cfg, self.backend, self.cache, self.progress = ds, cfg, backend, cache, progress
        self.decoding = cfg.backend.decoding.key()
        self.img_cache = ds.path / "enrich" / "images"
        self.generated = self.cached = self.failed_now = self.failed_cached = 0
        self.generated_jobs: set[int] = set()
        self.streak = 0  # failed generations in a row (this run)
        self.first_reasons: list[str] = []

    def key(self, step_tpl, prompt: str, image_sha: str | None, context: dict[str, str] | None = None) -> str:
        return step_key(self.backend.info, getattr(self.backend, "uses_context", False), self.decoding,
                        step_tpl.id, step_tpl.version, prompt, image_sha, context)

    def _resolve(self, job: int, st: Step) -> _Pending | str:
        """Key a step; image steps read their bytes. Without a usable image a step falls back to its text
        prompt, or is skipped (a ``str`` reason) when it has no fallback (image views)."""
        if st.image_ref is not None and self.backend.supports_images:
            data, why = load_image_bytes(st.image_ref, self.ds.path, self.img_cache, self.cfg.images)
            if data is not None:
                sha = _sha(data)
                return _Pending(job, st, self.key(st.template, st.prompt, sha, st.context), sha, st.note)
            return self._fallback(job, st, why)
        if st.image_ref is not None:  # backend cannot see images
            return self._fallback(job, st, "backend has no image input")
        return _Pending(job, st, self.key(st.template, st.prompt, None, st.context), None, st.note)

    def _fallback(self, job: int, st: Step, why: str) -> _Pending | str:
        if st.fallback is None:
            return why
        tpl, prompt = st.fallback
        ctx = st.context if st.fallback_context is None else st.fallback_context
        fb = Step(tpl, prompt, None, ctx)
        return _Pending(job, fb, self.key(tpl, prompt, None, ctx), None, f"text fallback: {why}")

    def _cached(self, p: _Pending, e: CacheEntry | None) -> bool:
        """Serve ``p`` from the cache when it holds an ok entry, or a failure and failures are not retried."""
        if e is None or (e.status != "ok" and self.cfg.retry_failed):
            return False
        self.cached += 1
        self.failed_cached += e.status != "ok"
        return True

    def _count(self, entries: list[CacheEntry]) -> None:
        """Track failures in a row; stop the run when there are too many (after the batch is committed)."""
        for e in entries:
            if e.status == "ok":
                self.streak = 0
                continue
            self.streak += 1
            if len(self.first_reasons) < 3 and e.reason not in self.first_reasons:
                self.first_reasons.append(e.reason or "failed")
        n = self.cfg.max_consecutive_failures
        if n and self.streak >= n:
            raise EnrichAborted(
                f"{self.streak} generations failed in a row; first reasons: {'; '.join(self.first_reasons)}")

    def run_round(self, units: list[tuple[int, Step]], results: dict[int, tuple[CacheEntry | None, str | None]],
                  bar: Any, task_id: Any) -> None:
        """Generate (or fetch from the cache) one step for each ``(job, step)``; fill ``results[job]``
        (``(None, reason)`` for a step skipped for want of an image)."""
        bs = max(1, self.cfg.backend.batch_size)
        chunk = max(256, bs * 8)
        misses: list[_Pending] = []

        def done(job: int, value: tuple[CacheEntry | None, str | None]) -> None:
            results[job] = value
            if bar is not None:
                bar.advance(task_id)

        for s in range(0, len(units), chunk):
            pend = [self._resolve(j, st) for j, st in units[s : s + chunk]]
            hits = self.cache.get_many(p.key for p in pend if isinstance(p, _Pending))
            for (j, _), p in zip(units[s : s + chunk], pend, strict=True):
                if isinstance(p, str):
                    done(j, (None, p))
                elif self._cached(p, e := hits.get(p.key)):
                    done(p.job, (e, p.note))
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
                    image, why = (decode_image(data, self.cfg.images.max_image_pixels) if data is not None
                                  else (None, why))
                    if image is None:
                        fb = self._fallback(p.job, p.step, why)
                        if isinstance(fb, str):
                            done(p.job, (None, fb))
                            continue
                        p = fb
                        if self._cached(p, e := self.cache.get_many([p.key]).get(p.key)):
                            done(p.job, (e, p.note))
                            continue
                reqs.append(GenRequest(p.step.prompt, image, self.cfg.backend.decoding.max_new_tokens,
                                       dict(p.step.context)))
                final.append(p)
            if not reqs:
                continue
            try:
                resps = self.backend.generate(reqs)
            except BackendUnavailable:
                raise
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
                self.generated_jobs.add(p.job)
                self.generated += 1
                self.failed_now += e.status != "ok"
            self.cache.put_many(entries)  # one commit per finished batch
            if bar is not None:
                bar.advance(task_id, len(entries))
            self._count(entries)


@contextlib.contextmanager
def task_lock(ds_path: Path, task: str) -> Iterator[None]:
    """Hold ``DATA/enrich/.<task>.lock`` for the run; a second run of the task gets :class:`EnrichBusy`.

    The lock is an ``flock``: the kernel releases it when the process ends, however it ends.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path = ds_path / "enrich" / f".{task}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise EnrichBusy(f"another `enrich --task {task}` run (pid {holder}) is writing {ds_path / 'enrich'}; "
                             "wait for it to finish (runs share the cache, so nothing it generated is lost)"
                             ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _progress(enabled: bool):
    from contextlib import nullcontext

    from ..progress import progress_bar, rate_column

    return progress_bar(rate_column("outputs/s"), enabled=True) if enabled else nullcontext(None)


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
        ``cfg.engine == "ray"`` hands the run to :func:`.ray_engine.run_enrich_ray` (no ``backend`` then).
    progress
        Show rich progress bars (items/s and ETA).

    Raises
    ------
    EnrichAborted
        The backend is unreachable or failed ``cfg.max_consecutive_failures`` generations in a row: the run
        stops, exports nothing (earlier exports stay), and keeps in the cache what it finished.
    EnrichBusy
        Another run of the same task on the same dataset is in progress.
    """
    if cfg.engine == "ray":
        from .ray_engine import run_enrich_ray

        if backend is not None:
            raise ValueError("engine ray builds a backend in each actor: pass a factory to run_enrich_ray")
        return run_enrich_ray(data, cfg, progress=progress)
    t0 = time.perf_counter()
    ds = DatasetDir(data)
    jobs, notes, kind, kind_source = plan_jobs(ds, cfg)
    backend = backend if backend is not None else make_backend(cfg.backend)
    _, _, cache_path = output_paths(ds.path, output_name(cfg.task, cfg.profile_source))
    out = Outcome()
    with task_lock(ds.path, cfg.task), EnrichCache(cache_path) as cache, _progress(progress) as bar:
        runner = _Runner(ds, cfg, backend, cache, progress)
        n_rounds = max((j.n_steps for j in jobs), default=0)
        try:
            for r in range(n_rounds):
                active = [j for j, job in enumerate(jobs) if job.n_steps > r and j not in out.failed_at]
                units = [(j, jobs[j].make_step(r, out.prev.get(j))) for j in active]
                label = cfg.task if n_rounds == 1 else f"{cfg.task} block {r + 1}/{n_rounds}"
                task_id = bar.add_task(label, total=len(units)) if bar is not None else None
                results: dict[int, tuple[CacheEntry | None, str | None]] = {}
                runner.run_round(units, results, bar, task_id)
                out.apply_round(r, jobs, results)
        except (EnrichAborted, BackendUnavailable) as exc:
            info = backend.info
            raise EnrichAborted(
                f"enrich {cfg.task} stopped ({info.backend}: {info.model_id}): {exc}. Nothing exported "
                f"({runner.generated - runner.failed_now} generation(s) of this run are kept in {cache_path}); "
                "fix the backend and run again (failed items are retried)") from None
    counters = RunCounters(runner.generated, runner.cached, runner.failed_now, runner.failed_cached,
                           runner.generated_jobs)
    return export(ds, cfg, jobs, notes, (kind, kind_source), out, backend.info, counters, t0)


def plan_jobs(ds: DatasetDir, cfg: EnrichConfig) -> tuple[list[Job], dict[str, str], str, str]:
    """The jobs of ``cfg.task`` on ``ds`` (:func:`.tasks.plan_task`), its notes, and the image kind with where it
    came from."""
    kind, kind_source = (cfg.image_kind, "--image-kind") if cfg.image_kind else default_image_kind(ds)
    opt = TaskOptions(mode=cfg.mode, block_size=cfg.block_size, max_history=cfg.max_history,
                      image_kind=kind, limit=cfg.limit, category=cfg.category,
                      only=None if cfg.only is None else frozenset(cfg.only),
                      profile_source=cfg.profile_source)
    jobs, notes = plan_task(ds, cfg.task, opt)
    return jobs, notes, kind, kind_source


@dataclass
class Outcome:
    """Per job: the final entry (with its note), where it failed, why it was skipped, the previous step's text."""

    final: dict[int, tuple[CacheEntry, str | None]] = field(default_factory=dict)
    failed_at: dict[int, str] = field(default_factory=dict)
    skipped_at: dict[int, str] = field(default_factory=dict)
    prev: dict[int, str | None] = field(default_factory=dict)

    def apply_round(self, r: int, jobs: list[Job], results: dict[int, tuple[CacheEntry | None, str | None]]) -> None:
        """Record step ``r`` of every job in ``results`` (``(None, reason)``: skipped; a failure ends the job)."""
        for j, (e, note) in results.items():
            if e is None:
                self.skipped_at[j] = note or "skipped"
            elif e.status == "ok":
                self.prev[j] = e.text
                self.final[j] = (e, note)
            else:
                self.failed_at[j] = f"step {r + 1}/{jobs[j].n_steps}: " if jobs[j].n_steps > 1 else ""
                self.final[j] = (e, note)


@dataclass
class RunCounters:
    """What one run did: generated (failed among them), served from earlier work (failures among them)."""

    generated: int = 0
    cached: int = 0
    failed_now: int = 0
    failed_cached: int = 0
    generated_jobs: set[int] = field(default_factory=set)


def export(ds: DatasetDir, cfg: EnrichConfig, jobs: list[Job], notes: dict[str, str], image_kind: tuple[str, str],
           out: Outcome, info: Any, n: RunCounters, t0: float, extra: dict[str, Any] | None = None) -> EnrichSummary:
    """Write ``DATA/enrich/<task>.parquet`` and ``<task>.json`` atomically (the one export of every engine)."""
    parquet, summary_path, _ = output_paths(ds.path, output_name(cfg.task, cfg.profile_source))
    kind, kind_source = image_kind
    df = _rows(jobs, out.final, out.failed_at, out.skipped_at, ds)
    counts = dict(Counter(df["status"].to_list()))
    summary = EnrichSummary(cfg.task, parquet, {k: counts.get(k, 0) for k in ("ok", "failed", "skipped")},
                            n.generated, n.cached, n.failed_now, time.perf_counter() - t0,
                            failed_cached=n.failed_cached)
    used = sorted(set(df["template_id"].drop_nulls().to_list()))
    unit = "item" if is_item_task(cfg.task) else "user"
    gen_units = len({jobs[j].row[unit] for j in n.generated_jobs})
    secs = max(summary.seconds, 1e-9)
    summary.info = {
        "task": cfg.task, "rows": df.height, "counts": summary.counts,
        "units": _unit_counts(df, unit, jobs),
        "views": _view_counts(df) if "view" in df.columns else None,
        "skipped_reasons": _reason_counts(df, "skipped"),
        "failure_reasons": _reason_counts(df, "failed"),
        "this_run": {"generated": n.generated, "from_cache": n.cached, "failed": n.failed_now,
                     "failed_from_cache": n.failed_cached, f"{unit}s_generated": gen_units,
                     "seconds": round(summary.seconds, 3), f"{unit}s_per_s": round(gen_units / secs, 4),
                     "generations_per_s": round(n.generated / secs, 4)},
        "backend": info.backend, "model_id": info.model_id, "model_revision": info.model_revision,
        "decoding": json.loads(cfg.backend.decoding.key()),
        "templates": [TEMPLATES[t].metadata() for t in used],
        "options": {"mode": cfg.mode, "block_size": cfg.block_size, "max_history": cfg.max_history,
                    "limit": cfg.limit, "only": None if cfg.only is None else len(cfg.only),
                    "image_kind": kind, "image_kind_source": kind_source,
                    "retry_failed": cfg.retry_failed, "category": cfg.category,
                    "profile_source": cfg.profile_source},
        "notes": notes, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "stand_in": ("offline = EfficientNet-Lite0 tags + SmolLM2-135M, a lightweight stand-in for an MLLM"
                     if info.backend == "offline" else
                     "echo = template-only text, no model" if info.backend == "echo" else None),
        **(extra or {}),
    }
    with atomic_path(parquet) as tmp:
        df.write_parquet(tmp)
    atomic_write_json(summary_path, summary.info)
    return summary


def _reason_counts(df: pl.DataFrame, status: str, top: int = 5) -> dict[str, int]:
    """The most frequent reasons of rows with ``status``: skip reasons are cut at their first ': ' (one cause
    with many file names counts once), failure reasons are kept whole (up to 160 characters)."""
    r = df.filter(pl.col("status") == status)["reason"].fill_null(status).to_list()
    c = Counter(x.split(": ", 1)[0] if status == "skipped" else x[:160] for x in r)
    return dict(c.most_common(top))


def _unit_counts(df: pl.DataFrame, unit: str, jobs: list[Job]) -> dict[str, Any]:
    """Items (or users): total, beyond ``--limit`` or not in ``--only``, and ok / failed / skipped over their rows (an item with a
    failed view is failed; one whose rows are all skipped is skipped; else ok)."""
    beyond = len({j.row[unit] for j in jobs if j.beyond_limit})
    per = df.group_by(unit).agg(
        (pl.col("status") == "failed").any().alias("f"), (pl.col("status") == "ok").any().alias("o"))
    failed = int(per["f"].sum())
    ok = int((per["o"] & ~per["f"]).sum())
    return {"kind": f"{unit}s", "total": per.height, "beyond_limit": beyond, "ok": ok, "failed": failed,
            "skipped": per.height - ok - failed}


def _view_counts(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (view,), g in df.group_by(["view"], maintain_order=True):
        c = Counter(g["status"].to_list())
        out[str(view)] = {k: c.get(k, 0) for k in ("ok", "failed", "skipped")}
    return out


def _rows(jobs: list[Job], final: dict[int, tuple[CacheEntry, str | None]], failed_at: dict[int, str],
          skipped_at: dict[int, str], ds: DatasetDir) -> pl.DataFrame:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "text", "status", "reason", "template_id", "template_version", "prompt", "backend_prompt", "model_id",
        "model_revision", "backend", "decoding", "input_hash", "created")}
    ids: dict[str, list[Any]] = {k: [] for k in jobs[0].row} if jobs else {"item": []}
    for j, job in enumerate(jobs):
        for k, v in job.row.items():
            ids[k].append(v)
        hit = final.get(j)
        if hit is None:
            reason = skipped_at.get(j) or job.skip_reason or "not processed"
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
