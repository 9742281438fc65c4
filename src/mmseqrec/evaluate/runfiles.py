"""The evaluation files of a run directory: one schema, written by one function, found by one function.

``RUN/metrics.json`` (written by training) holds the training protocol's results; a run re-scored under another
protocol or history setting (``mmseqrec evaluate``, ``mmseqrec experiment``) gets

* ``RUN/eval-<stem>.json``: ``{protocol, exclude_history, ties, scoring_dtype, [candidates_file], ks, ...,
  valid: {metric: value}, test: {metric: value}}`` (the splits that were scored), written last;
* ``RUN/ranks-<stem>.parquet`` (test cases) and ``RUN/ranks-<stem>-valid.parquet`` (validation cases):
  ``user, target, rank, tied``;

where ``<stem>`` is the protocol's slug plus ``-exclhist`` when the user's earlier items were removed from the
candidates (``eval-full-exclhist.json``), so re-scores under different settings never overwrite each other.
Files of older runs (``eval-<slug>.json`` for either history setting, or the ``{protocol, split, metrics}``
form of the old ``evaluate`` command) are still read, by the setting they record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write_json
from .evaluator import RankingResult
from .protocol import Protocol, protocol_slug

__all__ = ["METRICS_FILE", "RANKS_FILE", "SPLITS", "EvalRecord", "eval_stem", "find_eval", "read_eval_json",
           "write_eval"]

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.parquet"
SPLITS = ("valid", "test")


def eval_stem(protocol: str | Protocol, exclude_history: bool) -> str:
    """``sampled:100`` -> ``sampled-100``; ``full`` with history excluded -> ``full-exclhist``."""
    return protocol_slug(protocol) + ("-exclhist" if exclude_history else "")


def _ranks_name(stem: str, split: str) -> str:
    return f"ranks-{stem}.parquet" if split == "test" else f"ranks-{stem}-{split}.parquet"


def read_eval_json(path: Path) -> dict[str, Any]:
    """Read ``metrics.json`` or an eval file, normalised to the one schema (clear errors when malformed)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    if not isinstance(data, dict):
        raise InputError("top level must be an object", file=path)
    if isinstance(data.get("metrics"), dict) and "split" in data:  # the old `evaluate` form
        data = {k: v for k, v in data.items() if k not in ("metrics", "split")} | {data["split"]: data["metrics"]}
    if "protocol" not in data:
        raise InputError("does not record the protocol", file=path, field="protocol")
    data["protocol"] = str(Protocol.parse(str(data["protocol"])))
    data["exclude_history"] = bool(data.get("exclude_history", False))
    return data


class EvalRecord:
    """One evaluation of a run: its normalised JSON (:attr:`data`) and where its per-case ranks are.

    Attributes
    ----------
    path : Path
        The JSON file read.
    data : dict
        Normalised record (protocol, exclude_history, ..., ``valid`` / ``test`` metric dicts when scored).
    ranks : dict
        split -> ranks Parquet path (only the splits whose file exists).
    """

    def __init__(self, path: Path, data: dict[str, Any], ranks: dict[str, Path]) -> None:
        self.path, self.data, self.ranks = path, data, ranks

    @property
    def protocol(self) -> Protocol:
        return Protocol.parse(self.data["protocol"])

    @property
    def exclude_history(self) -> bool:
        return bool(self.data["exclude_history"])

    @property
    def n_negatives(self) -> int | None:
        cf = self.data.get("candidates_file")
        return int(cf["n_negatives"]) if isinstance(cf, dict) else self.protocol.n

    @property
    def multi_target(self) -> bool:
        """Several targets per user (general models, :mod:`.multitarget`): the user is the paired unit."""
        return self.data.get("targets") == "multi"

    def metrics(self, split: str) -> dict[str, Any] | None:
        """Metric dict of ``split`` (``None`` when that split was not scored)."""
        m = self.data.get(split)
        return dict(m) if isinstance(m, dict) else None

    @property
    def setting(self) -> str:
        """Protocol string + the exclude-history flag: what must match for numbers to be comparable."""
        return str(self.protocol) + (" (history excluded)" if self.exclude_history else "")


def write_eval(run_dir: str | Path, results: dict[str, RankingResult], extra: dict[str, Any] | None = None
               ) -> Path:
    """Write the ranks of every split in ``results`` and then ``RUN/eval-<stem>.json`` (the one schema).

    Splits already in an existing file of the same setting (protocol, history, ties, candidate file) and not
    in ``results`` are kept. ``extra`` adds run facts (e.g. ``seed``, the dataset's identity).

    Returns
    -------
    Path of the JSON file.
    """
    run_dir = Path(run_dir)
    if not results or set(results) - set(SPLITS):
        raise ValueError(f"results must map splits {SPLITS} to RankingResults, got {sorted(results)}")
    first = next(iter(results.values()))
    setting = first.setting()
    if any(r.setting() != setting for r in results.values()):
        raise ValueError("all splits of one eval file must share the protocol and history setting")
    stem = eval_stem(first.protocol, first.exclude_history)
    path = run_dir / f"eval-{stem}.json"
    record: dict[str, Any] = {**setting, "ks": list(first.ks), **(extra or {})}
    if path.exists():
        old = read_eval_json(path)
        if all(old.get(k) == v for k, v in setting.items()):
            record.update({s: old[s] for s in SPLITS if s in old and s not in results})
    for split, res in results.items():
        res.save_ranks(run_dir / _ranks_name(stem, split))
        record[split] = {k: (int(v) if k == "n_cases" else float(v)) for k, v in res.metrics.items()}
    atomic_write_json(path, record)
    return path


def _setting_of_run(run_dir: Path) -> dict[str, Any] | None:
    mf = run_dir / METRICS_FILE
    return read_eval_json(mf) if mf.exists() else None


def find_eval(run_dir: str | Path, protocol: str | Protocol | None = None, exclude_history: bool | None = None
              ) -> EvalRecord | None:
    """The run's evaluation under ``protocol`` and history setting, or ``None`` when it was not scored so.

    ``protocol=None`` means the training protocol (``metrics.json``); ``exclude_history=None`` means the run's
    own setting (as recorded in ``metrics.json``). Looks at ``metrics.json``, then ``eval-<stem>.json``, then an
    older run's ``eval-<slug>.json`` whose recorded history setting matches.
    """
    run_dir = Path(run_dir)
    main = _setting_of_run(run_dir)
    if exclude_history is None:
        exclude_history = bool(main["exclude_history"]) if main is not None else False
    if protocol is None:
        if main is None:
            return None
        protocol = main["protocol"]
    proto = str(Protocol.parse(protocol))
    if main is not None and main["protocol"] == proto and main["exclude_history"] == exclude_history:
        ranks = {"test": run_dir / RANKS_FILE}
        return EvalRecord(run_dir / METRICS_FILE, main, {k: v for k, v in ranks.items() if v.exists()})
    stem = eval_stem(proto, exclude_history)
    candidates = [(run_dir / f"eval-{stem}.json", stem)]
    legacy = protocol_slug(proto)
    if legacy != stem:
        candidates.append((run_dir / f"eval-{legacy}.json", legacy))
    for path, s in candidates:
        if not path.exists():
            continue
        data = read_eval_json(path)
        if data["protocol"] != proto or data["exclude_history"] != exclude_history:
            continue
        ranks = {sp: run_dir / _ranks_name(s, sp) for sp in SPLITS}
        return EvalRecord(path, data, {k: v for k, v in ranks.items() if v.exists()})
    legacy_valid = run_dir / f"eval-{legacy}-valid.json"  # the old `evaluate --split valid` file
    if legacy_valid.exists():
        data = read_eval_json(legacy_valid)
        if data["protocol"] == proto and data["exclude_history"] == exclude_history:
            rv = run_dir / f"ranks-{legacy}-valid.parquet"
            return EvalRecord(legacy_valid, data, {"valid": rv} if rv.exists() else {})
    return None
