"""``mmseqrec enrich --engine ray``: the same tasks, templates and backends as a Ray Data pipeline, by shard.

The driver plans the task exactly as the single-machine runner does (:func:`.runner.plan_jobs`, the task
definitions of :mod:`.tasks`) and writes each round's steps as Parquet *plan shards* of ``shard_size`` jobs
(``shard = job // shard_size``). Ray Data then runs, for the shards not yet done::

    from_items(unfinished plan shards, one block each)
      -> map_batches(_prepare)       CPU tasks, one per shard: read the plan shard (Parquet); per row read /
                                     download the image (enrich/images.py), check and decode it, downscale it
                                     for backends that would (lossless PNG), key the step; text fallback or skip
                                     exactly as the runner does
      -> map_batches(_Generate)      an ActorPoolStrategy pool of generation actors, one backend each (offline /
                                     echo / openai here; vllm with num_gpus on a cluster); one call per shard,
                                     generated in backend batches of ``batch_size``
      -> the driver (streaming, in order): a shard whose rows have all arrived is written atomically as
         DATA/enrich/<task>.shards/<backend>-<fingerprint>/r<round>/out-<shard>-<digest>.parquet

One shard per block, task and actor call: Ray Data hands a map task's output on only when the task ends, so a
task spanning several shards would hold them all back (and lose them all when killed).

A shard's file exists only when it is complete, so a killed or failed job redoes only the shards without one
(and, unless ``retry_failed`` is off, the failed rows of finished shards). Text steps that
``DATA/enrich/cache.sqlite`` already holds (an earlier ``--engine local`` run) are served from it. File names carry the digest of the
shard's plan (prompts, images, context), the directory a fingerprint of the backend, model, decoding, task
options and shard size: a changed dataset, option or model never reuses a stale shard, and nothing is deleted.
After the last round the driver merges the shards into the same ``DATA/enrich/<task>.parquet`` + ``.json`` the
runner writes (:func:`.runner.export`), so ``embed`` reads it unchanged, and adds the generations to
``DATA/enrich/cache.sqlite`` (never replacing an ``ok`` entry) so that a later single-machine run serves them.
Recurrent tasks (``user-preference``) run one pipeline per block: block ``r + 1`` needs block ``r``'s text.

Ray is the optional extra ``mmseqrec[cluster]``; it is imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.dataset import DatasetDir
from ..errors import InputError, require
from ..fileio import atomic_path, atomic_write_json
from .backends import Backend, BackendConfig, GenRequest, GenResponse, make_backend
from .backends.base import BackendUnavailable, resize_to_budget
from .cache import CacheEntry, EnrichCache
from .images import ImageFetchConfig, decode_image, load_image_bytes
from .runner import (
    EnrichAborted,
    EnrichConfig,
    EnrichSummary,
    Outcome,
    RunCounters,
    export,
    output_paths,
    plan_jobs,
    step_key,
    task_lock,
)
from .tasks import Step, output_name

__all__ = ["run_enrich_ray", "work_dir"]

_FORMAT = 1  # shard layout version (part of the work directory's fingerprint)
#: backends that downscale every image to ``max_pixels`` themselves: the CPU stage does it for them (same
#: function, lossless PNG), so the actors receive small images and the backend's own resize is a no-op.
_RESIZING = {"openai", "vllm", "transformers"}
_PLAN_COLS = ("job", "template_id", "template_version", "prompt", "image_ref", "context", "fb_template_id",
              "fb_template_version", "fb_prompt", "fb_context", "note")
_OUT_COLS = ("job", "status", "text", "reason", "note", "key", "template_id", "template_version", "prompt",
             "backend_prompt", "image_sha256", "backend", "model_id", "model_revision", "decoding", "created")


def _schema(cols: tuple[str, ...]) -> Any:
    import pyarrow as pa

    types = {"job": pa.int64(), "created": pa.float64(), "image": pa.binary(), "unavailable": pa.bool_()}
    return pa.schema([(c, types.get(c, pa.string())) for c in cols])


def _table(rows: list[dict[str, Any]], cols: tuple[str, ...]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=_schema(cols))


# ----------------------------------------------------------------------------- Ray stages (run on workers)
def _prepare(batch: Any, *, base: str, image_cache: str, images: dict[str, Any], supports_images: bool,
             resize_to: int | None, info: Any, uses_context: bool, decoding: str,
             redo: dict[int, list[int]]) -> Any:
    """CPU stage over plan shards (a batch of ``{shard, plan}`` rows): per plan row, the image bytes (checked,
    decoded, downscaled for resizing backends), the text fallback or the skip reason, and the step's cache key.
    Rows of partly done shards not in ``redo`` drop."""
    import pyarrow.parquet as pq

    cfg = ImageFetchConfig.model_validate(images)
    out: list[dict[str, Any]] = []
    plan = [(int(d["shard"]), row) for d in batch.to_pylist() for row in pq.read_table(d["plan"]).to_pylist()]
    for shard, row in plan:
        job = row["job"]
        keep = redo.get(shard)
        if keep is not None and job not in keep:
            continue
        ctx = json.loads(row["context"])
        o = {"job": job, "note": row["note"]}

        def text(tpl_id: str, tpl_v: str, prompt: str, c: dict[str, str], note: str | None, o=o) -> None:
            o.update(template_id=tpl_id, template_version=tpl_v, prompt=prompt, context=json.dumps(c),
                     note=note, key=step_key(info, uses_context, decoding, tpl_id, tpl_v, prompt, None, c))

        def fallback(why: str, row=row, ctx=ctx, o=o) -> None:
            if row["fb_template_id"] is None:
                o.update(skip_reason=why, template_id=row["template_id"], template_version=row["template_version"],
                         prompt=row["prompt"], context=row["context"])
                return
            fctx = ctx if row["fb_context"] is None else json.loads(row["fb_context"])
            text(row["fb_template_id"], row["fb_template_version"], row["fb_prompt"], fctx, f"text fallback: {why}")

        ref = row["image_ref"]
        if ref is not None and supports_images:
            data, why = load_image_bytes(ref, base, image_cache, cfg)
            img, why = decode_image(data, cfg.max_image_pixels) if data is not None else (None, why)
            if img is None:
                fallback(why)
            else:
                sha = hashlib.sha256(data).hexdigest()
                if resize_to:
                    buf = io.BytesIO()
                    resize_to_budget(img, resize_to).save(buf, format="PNG")
                    data = buf.getvalue()
                o.update(template_id=row["template_id"], template_version=row["template_version"],
                         prompt=row["prompt"], context=row["context"], image=data, image_sha256=sha,
                         key=step_key(info, uses_context, decoding, row["template_id"], row["template_version"],
                                      row["prompt"], sha, ctx))
        elif ref is not None:
            fallback("backend has no image input")
        else:
            text(row["template_id"], row["template_version"], row["prompt"], ctx, row["note"])
        out.append(o)
    return _table(out, _PREPARED)


_PREPARED = ("job", "template_id", "template_version", "prompt", "context", "note", "key", "image_sha256", "image",
             "skip_reason")
_GENERATED = (*_OUT_COLS, "unavailable")


class _Generate:
    """Generation actor: one backend, built once, answering batches of prepared rows (skipped rows pass)."""

    def __init__(self, backend: dict[str, Any], max_image_pixels: int,
                 factory: Callable[[BackendConfig], Backend] | None = None) -> None:
        self.cfg = BackendConfig.model_validate(backend)
        self.backend = (factory or make_backend)(self.cfg)
        self.max_image_pixels = max_image_pixels
        self.decoding = self.cfg.decoding.key()

    def __call__(self, batch: Any) -> Any:
        """One shard in, one shard out (generated in backend batches of ``batch_size``)."""
        rows = batch.to_pylist()
        todo = [r for r in rows if r["skip_reason"] is None]
        resps: list[GenResponse] = []
        unavailable = False
        bs = max(1, self.cfg.batch_size)
        for s in range(0, len(todo), bs):
            part = todo[s : s + bs]
            if unavailable:
                resps += [resps[-1]] * len(part)
                continue
            reqs = [GenRequest(r["prompt"], decode_image(r["image"], self.max_image_pixels)[0] if r["image"]
                               else None, self.cfg.decoding.max_new_tokens, json.loads(r["context"])) for r in part]
            try:
                resps += self.backend.generate(reqs)
            except BackendUnavailable as exc:
                resps, unavailable = resps + [GenResponse(None, str(exc))] * len(part), True
            except Exception as exc:  # noqa: BLE001 - a backend crash fails this batch, recorded with its reason
                resps += [GenResponse(None, f"{type(exc).__name__}: {exc}"[:500]) for _ in part]
        answers = dict(zip((r["job"] for r in todo), resps, strict=True))
        i = self.backend.info
        out = []
        for r in rows:
            o = {**r, "backend": i.backend, "model_id": i.model_id, "model_revision": i.model_revision,
                 "decoding": self.decoding, "created": time.time(), "unavailable": unavailable}
            if r["skip_reason"] is not None:
                o.update(status="skipped", reason=r["skip_reason"], key=None)
            else:
                a = answers[r["job"]]
                o.update(status="ok" if a.ok else "failed", text=a.text if a.ok else None,
                         reason=None if a.ok else (a.error or "failed"), backend_prompt=a.backend_prompt)
            out.append(o)
        return _table(out, _GENERATED)


# ----------------------------------------------------------------------------- driver
def work_dir(data: str | Path, cfg: EnrichConfig, info: Any) -> Path:
    """``DATA/enrich/<task>.shards/<backend>-<fingerprint>``: one directory per backend, model, decoding, task
    options and shard size."""
    opts = cfg.model_dump(mode="json", include={"task", "mode", "block_size", "max_history", "image_kind",
                                                "category", "profile_source", "images"})
    fp = json.dumps([_FORMAT, opts, info.backend, info.model_id, info.model_revision, cfg.backend.decoding.key(),
                     cfg.backend.max_pixels, cfg.ray.shard_size], sort_keys=True)
    name = output_name(cfg.task, cfg.profile_source)
    return Path(data) / "enrich" / f"{name}.shards" / f"{info.backend}-{hashlib.sha256(fp.encode()).hexdigest()[:12]}"


def _plan_row(job: int, st: Step) -> dict[str, Any]:
    fb = st.fallback
    return {"job": job, "template_id": st.template.id, "template_version": st.template.version,
            "prompt": st.prompt, "image_ref": st.image_ref, "context": json.dumps(st.context, sort_keys=True),
            "fb_template_id": fb[0].id if fb else None, "fb_template_version": fb[0].version if fb else None,
            "fb_prompt": fb[1] if fb else None,
            "fb_context": json.dumps(st.fallback_context, sort_keys=True) if st.fallback_context is not None
            else None, "note": st.note}


@dataclass
class _Shard:
    index: int
    rows: list[dict[str, Any]]
    plan: Path
    out: Path
    redo: list[int] | None = None  # the jobs to generate (None: the whole shard)
    kept: list[dict[str, Any]] = field(default_factory=list)  # rows of the earlier output that stay


def _shards(rdir: Path, units: list[tuple[int, Step]], size: int) -> list[_Shard]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for j, st in units:
        groups.setdefault(j // size, []).append(_plan_row(j, st))
    out = []
    for k, rows in sorted(groups.items()):
        digest = hashlib.sha256(json.dumps([[r[c] for c in _PLAN_COLS] for r in rows]).encode()).hexdigest()[:16]
        out.append(_Shard(k, rows, rdir / f"plan-{k:06d}-{digest}.parquet", rdir / f"out-{k:06d}-{digest}.parquet"))
    return out


def _write(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _entry(r: dict[str, Any]) -> CacheEntry:
    """The cache entry of an output row (the row's columns carry every field)."""
    return CacheEntry(**{f.name: r[f.name] for f in fields(CacheEntry)})


def _to_cache(cache: EnrichCache, rows: list[dict[str, Any]]) -> None:
    """Add generated rows to the SQLite cache, never replacing an ``ok`` entry."""
    new = [_entry(r) for r in rows if r["status"] != "skipped"]
    have = cache.get_many(e.key for e in new)
    cache.put_many([e for e in new if e.key not in have or (have[e.key].status != "ok" and e.status == "ok")])


@contextlib.contextmanager
def _ray_session(cfg: EnrichConfig, progress: bool) -> Iterator[Any]:
    """``ray`` connected to ``cfg.ray.address`` / ``$RAY_ADDRESS``, or to a local Ray started (and stopped) here;
    an already initialised Ray (tests, notebooks) is used as it is."""
    ray = require("ray", "cluster", "the ray engine (--engine ray)")
    require("ray.data", "cluster", "the ray engine (--engine ray)")
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": progress,
                              "logging_level": logging.INFO if progress else logging.WARNING}
        if cfg.ray.address:
            kw["address"] = cfg.ray.address
        elif not os.environ.get("RAY_ADDRESS") and cfg.ray.num_cpus:
            kw["num_cpus"] = cfg.ray.num_cpus
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise InputError(f"cannot start or reach Ray ({where}): {exc}", field="--ray-address") from None
        started = True
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.execution_options.preserve_order
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = True  # shards finish in order: the driver holds at most a few
    log = logging.getLogger("ray.data")
    level = log.level
    if not progress:
        log.setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = before
        log.setLevel(level)
        if started:
            ray.shutdown()


@dataclass
class _Round:
    """Bookkeeping of one round (block) for the summary."""

    round: int
    shards: int = 0
    run: list[int] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)  # run for some rows only (the rest: earlier or cached)
    reused: list[int] = field(default_factory=list)  # finished by an earlier run
    from_cache: list[int] = field(default_factory=list)  # every row from DATA/enrich/cache.sqlite


def run_enrich_ray(data: str | Path, cfg: EnrichConfig, *, factory: Callable[[BackendConfig], Backend] | None = None,
                   progress: bool = True) -> EnrichSummary:
    """Run ``cfg.task`` on ``data`` as a Ray Data pipeline (see the module docstring); same outputs as
    :func:`.runner.run_enrich`.

    Parameters
    ----------
    data
        A prepared dataset directory (on a filesystem every Ray node sees, for a cluster).
    cfg
        The run configuration; ``cfg.ray`` holds the cluster address, shard size and actor pool.
    factory
        Builds each actor's backend from ``cfg.backend`` (default :func:`.backends.make_backend`); must be
        picklable by Ray (tests pass fakes).
    progress
        Show Ray Data's progress bars and logs.

    Raises
    ------
    EnrichAborted
        The backend is unreachable or failed ``max_consecutive_failures`` generations in a row; the shards
        finished so far stay and the next run starts after them.
    EnrichBusy
        Another run of the same task on the same dataset is in progress (either engine).
    MissingExtraError
        Ray is not installed (``pip install 'mmseqrec[cluster]'``).
    """
    t0 = time.perf_counter()
    require("ray", "cluster", "the ray engine (--engine ray)")
    check_engine_options(cfg)
    ds = DatasetDir(data)
    jobs, notes, kind, kind_source = plan_jobs(ds, cfg)
    probe = (factory or make_backend)(cfg.backend)  # identity and capabilities only: models load in the actors
    info = probe.info
    uses_context = bool(getattr(probe, "uses_context", False))
    wdir = work_dir(ds.path, cfg, info)
    _, _, cache_path = output_paths(ds.path, output_name(cfg.task, cfg.profile_source))
    out, n, rounds = Outcome(), RunCounters(), []
    size = cfg.ray.shard_size
    with task_lock(ds.path, cfg.task), _ray_session(cfg, progress) as ray, EnrichCache(cache_path) as cache:
        atomic_write_json(wdir / "run.json", {
            "task": cfg.task, "backend": info.backend, "model_id": info.model_id,
            "model_revision": info.model_revision, "decoding": json.loads(cfg.backend.decoding.key()),
            "shard_size": size, "format": _FORMAT})
        n_rounds = max((j.n_steps for j in jobs), default=0)
        for r in range(n_rounds):
            active = [j for j, job in enumerate(jobs) if job.n_steps > r and j not in out.failed_at]
            shards = _shards(wdir / f"r{r}", [(j, jobs[j].make_step(r, out.prev.get(j))) for j in active], size)
            book = _Round(r, len(shards))
            rounds.append(book)
            todo = []
            for sh in shards:
                if not sh.plan.exists():
                    _write(sh.plan, _table(sh.rows, _PLAN_COLS))
                if not sh.out.exists():
                    _serve_from_cache(sh, cache, info, uses_context, cfg)
                    if sh.redo == []:  # every row served by the SQLite cache: no Ray work
                        _write(sh.out, _table(sh.kept, _OUT_COLS))
                        book.from_cache.append(sh.index)
                        n.cached += len(sh.kept)
                        n.failed_cached += sum(x["status"] == "failed" for x in sh.kept)
                    else:
                        todo.append(sh)
                    continue
                rows = _read_rows(sh.out)
                failed = [x["job"] for x in rows if x["status"] == "failed"]
                if failed and cfg.retry_failed:
                    sh.redo, sh.kept = failed, [x for x in rows if x["status"] != "failed"]
                    todo.append(sh)
                else:
                    book.reused.append(sh.index)
                    n.cached += sum(x["status"] != "skipped" for x in rows)
                    n.failed_cached += len(failed)
            book.partial = [sh.index for sh in todo if sh.redo is not None]
            if todo:
                try:
                    _run_shards(ray, ds, cfg, probe, info, uses_context, factory, todo, n, cache, book)
                except (EnrichAborted, BackendUnavailable) as exc:
                    raise EnrichAborted(
                        f"enrich {cfg.task} stopped ({info.backend}: {info.model_id}): {exc}. Nothing exported; "
                        f"{len(book.run)} shard(s) of block {r + 1} finished in this run are kept in {wdir}; fix "
                        "the backend and run again (finished shards are not redone, failed rows are)") from None
            results: dict[int, tuple[CacheEntry | None, str | None]] = {}
            for sh in shards:
                for x in _read_rows(sh.out):
                    results[x["job"]] = (None, x["reason"]) if x["status"] == "skipped" else (_entry(x), x["note"])
            missing = [j for j in active if j not in results]
            if missing:  # pragma: no cover - a shard file always holds every row of its plan
                raise EnrichAborted(f"{len(missing)} row(s) of block {r + 1} missing from the shards in {wdir}")
            out.apply_round(r, jobs, results)
    import ray as _ray_mod

    extra = {"engine": {"name": "ray", "ray_version": _ray_mod.__version__, "work_dir": str(wdir),
                        "shard_size": size, "actors": cfg.ray.actors, "gpus_per_actor": cfg.ray.gpus_per_actor,
                        "rounds": [vars(b) for b in rounds]}}
    return export(ds, cfg, jobs, notes, (kind, kind_source), out, info, n, t0, extra)


def _run_shards(ray: Any, ds: DatasetDir, cfg: EnrichConfig, probe: Any, info: Any, uses_context: bool,
                factory: Any, todo: list[_Shard], n: RunCounters, cache: EnrichCache, book: _Round) -> None:
    """One Ray Data pipeline over the ``todo`` shards; each completed shard is written as it arrives."""
    redo = {sh.index: sorted(sh.redo) for sh in todo if sh.redo is not None}
    expect = {sh.index: len(sh.redo) if sh.redo is not None else len(sh.rows) for sh in todo}
    by_index = {sh.index: sh for sh in todo}
    resize = cfg.backend.max_pixels if info.backend in _RESIZING else None
    # one block per shard, one shard per task and actor call: a map task's output reaches the driver only when
    # the task ends, so a task spanning shards would delay (and, killed, lose) all of them
    pipe = ray.data.from_items([{"shard": sh.index, "plan": str(sh.plan)} for sh in todo],
                               override_num_blocks=len(todo))
    pipe = pipe.map_batches(
        _prepare, batch_format="pyarrow", batch_size=1,
        fn_kwargs={"base": str(ds.path), "image_cache": str(ds.path / "enrich" / "images"),
                   "images": cfg.images.model_dump(mode="json"), "supports_images": bool(probe.supports_images),
                   "resize_to": resize, "info": info, "uses_context": uses_context,
                   "decoding": cfg.backend.decoding.key(), "redo": redo})
    remote = {"num_cpus": cfg.ray.cpus_per_actor}
    if cfg.ray.gpus_per_actor:
        remote["num_gpus"] = cfg.ray.gpus_per_actor
    pipe = pipe.map_batches(
        _Generate, batch_format="pyarrow", batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.actors),
        fn_constructor_kwargs={"backend": cfg.backend.model_dump(mode="json"),
                               "max_image_pixels": cfg.images.max_image_pixels, "factory": factory}, **remote)
    batches = pipe.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
    with contextlib.closing(batches) if hasattr(batches, "close") else contextlib.nullcontext():
        _consume(batches, cfg, expect, by_index, n, cache, book)


def _consume(batches: Any, cfg: EnrichConfig, expect: dict[int, int], by_index: dict[int, _Shard], n: RunCounters,
             cache: EnrichCache, book: _Round) -> None:
    """The driver's sink: rows in order; a shard is written once all its rows are in; the failure streak."""
    size = cfg.ray.shard_size
    buf: dict[int, list[dict[str, Any]]] = {}
    streak, reasons = 0, []
    limit = cfg.max_consecutive_failures
    for batch in batches:
        for x in batch.to_pylist():
            if x.pop("unavailable"):
                raise BackendUnavailable(x["reason"])
            if x["status"] == "failed":
                streak += 1
                if len(reasons) < 3 and x["reason"] not in reasons:
                    reasons.append(x["reason"])
                if limit and streak >= limit:
                    raise EnrichAborted(f"{streak} generations failed in a row; first reasons: {'; '.join(reasons)}")
            elif x["status"] == "ok":
                streak = 0
            k = x["job"] // size
            buf.setdefault(k, []).append(x)
            if len(buf[k]) == expect[k]:
                _finish(by_index[k], buf.pop(k), n, cache, book)


def _serve_from_cache(sh: _Shard, cache: EnrichCache, info: Any, uses_context: bool, cfg: EnrichConfig) -> None:
    """Take the text steps of a new shard that the SQLite cache already holds (an earlier ``--engine local``
    run): they become ``sh.kept``, the other rows ``sh.redo`` (``[]``: nothing left to generate). Image steps
    are keyed by their bytes, read on the workers: they are generated (their keys are the cache's)."""
    decoding = cfg.backend.decoding.key()
    keys = {r["job"]: step_key(info, uses_context, decoding, r["template_id"], r["template_version"], r["prompt"],
                               None, json.loads(r["context"])) for r in sh.rows if r["image_ref"] is None}
    hits = cache.get_many(keys.values())
    kept = []
    for r in sh.rows:
        e = hits.get(keys.get(r["job"], ""))
        if e is not None and (e.status == "ok" or not cfg.retry_failed):
            kept.append({**asdict(e), "job": r["job"], "note": r["note"]})
    if kept:
        served = {x["job"] for x in kept}
        sh.kept, sh.redo = kept, [r["job"] for r in sh.rows if r["job"] not in served]


def _finish(sh: _Shard, rows: list[dict[str, Any]], n: RunCounters, cache: EnrichCache, book: _Round) -> None:
    """Write a completed shard (merged with the rows it keeps) and count it."""
    _write(sh.out, _table(sorted(sh.kept + rows, key=lambda x: x["job"]), _OUT_COLS))
    _to_cache(cache, rows)
    gen = [x for x in rows if x["status"] != "skipped"]
    n.generated += len(gen)
    n.failed_now += sum(x["status"] == "failed" for x in gen)
    n.generated_jobs.update(x["job"] for x in gen)
    n.cached += sum(x["status"] != "skipped" for x in sh.kept)
    n.failed_cached += sum(x["status"] == "failed" for x in sh.kept)
    book.run.append(sh.index)


def check_engine_options(cfg: EnrichConfig) -> None:
    """Refuse engine options that cannot work together (one clear line)."""
    if cfg.engine == "ray" and cfg.backend.backend == "vllm" and not cfg.ray.gpus_per_actor:
        raise InputError("--backend vllm with --engine ray needs --gpus-per-actor (e.g. 1): each generation "
                         "actor holds one vLLM engine", field="--gpus-per-actor")
