"""Run-level reports: compare two runs (paired tests) and aggregate runs over seeds (mean +- std).

Reads a run directory's evaluation files through :mod:`.runfiles`: ``RUN/metrics.json`` + ``RUN/ranks.parquet``
for the training protocol, ``RUN/eval-<stem>.json`` + ``RUN/ranks-<stem>.parquet`` for a re-score under another
protocol or history setting (``load_run_result(run, protocol=P, exclude_history=X)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import InputError
from .evaluator import load_ranks
from .metrics import parse_metric
from .protocol import Protocol
from .runfiles import METRICS_FILE, RANKS_FILE, EvalRecord, find_eval
from .significance import adjust_pvalues, aggregate_seeds, paired_test

__all__ = ["METRICS_FILE", "RANKS_FILE", "RunResult", "aggregate_runs", "compare_runs", "load_run_result"]


class RunResult:
    """What a run directory says about one evaluation split (``test`` by default) under one setting."""

    def __init__(self, path: Path, record: EvalRecord, split: str = "test") -> None:
        self.path = path
        self.record = record
        self.raw = record.data
        self.split = split
        metrics = record.metrics(split)
        if metrics is None:
            raise InputError(f"{record.path.name} has no {split!r} results", file=record.path, field=split)
        self.test: dict[str, Any] = metrics
        self.protocol = record.protocol
        self.exclude_history = record.exclude_history

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def setting(self) -> str:
        """Protocol string + the exclude-history flag: what must match for numbers to be comparable."""
        return self.record.setting

    @property
    def candidates_sha256(self) -> str | None:
        cf = self.raw.get("candidates_file")
        return cf.get("sha256") if isinstance(cf, dict) else None

    def ranks(self):
        path = self.record.ranks.get(self.split)
        if path is None:
            raise InputError(f"no per-case ranks of the {self.split!r} split next to {self.record.path.name}",
                             file=self.path)
        return load_ranks(path)

    def config(self) -> dict[str, Any] | None:
        p = self.path / "config.yaml"
        if not p.exists():
            return None
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"invalid YAML: {exc}", file=p) from None
        return data if isinstance(data, dict) else None


def load_run_result(path: str | Path, protocol: str | None = None, exclude_history: bool | None = None
                    ) -> RunResult:
    """The run's test results under ``protocol`` (default: its training protocol) and history setting (default:
    its own), or a clear error naming the ``mmseqrec evaluate`` command that would produce them."""
    path = Path(path)
    if not (path / METRICS_FILE).exists():
        raise InputError(f"not an evaluated run directory (missing {METRICS_FILE})", file=path)
    rec = find_eval(path, protocol, exclude_history)
    if rec is None or rec.metrics("test") is None:
        p = str(Protocol.parse(protocol)) if protocol is not None else None
        hist = "" if exclude_history is None else (" --exclude-history" if exclude_history else " --include-history")
        what = f"{p!r}" if p else "its training protocol"
        if exclude_history is not None:
            what += " with history " + ("excluded" if exclude_history else "kept")
        raise InputError(f"the run was not scored on test under {what}; run `mmseqrec evaluate {path}"
                         f"{' --protocol ' + p if p else ''}{hist}` first", file=path)
    return RunResult(path, rec)


def _default_metrics(a: RunResult, b: RunResult) -> list[str]:
    from .multitarget import MULTI_METRICS

    out = []
    for k in a.test:
        if k in b.test and k not in ("n_cases", "AUC_global"):
            if a.record.multi_target:
                if k.partition("@")[0] in MULTI_METRICS:
                    out.append(k)
                continue
            try:
                parse_metric(k)
            except InputError:
                continue
            out.append(k)
    return out


def compare_runs(run_a: str | Path | RunResult, run_b: str | Path | RunResult,
                 metrics: list[str] | None = None, p_adjust: str = "holm") -> list[dict[str, Any]]:
    """Paired comparison of two runs on their test ranks, one row per metric (the experiment report's test).

    Returns
    -------
    list of dict
        ``metric, a, b, delta, p_wilcoxon, p_ttest, p_adj, n`` (delta = B - A; ``p_adj``: the Wilcoxon p
        adjusted over the metrics of this comparison with ``p_adjust``).

    Raises
    ------
    InputError
        Different protocols / exclude-history settings / candidate files, or different evaluated cases.
    """
    a = run_a if isinstance(run_a, RunResult) else load_run_result(run_a)
    b = run_b if isinstance(run_b, RunResult) else load_run_result(run_b)
    if a.protocol != b.protocol or a.exclude_history != b.exclude_history:
        raise InputError(f"cannot compare runs evaluated under different protocols: {a.name} used "
                         f"{a.setting!r}, {b.name} used {b.setting!r}; re-evaluate one with "
                         f"`mmseqrec evaluate RUN --protocol ...`", field="protocol")
    if a.candidates_sha256 != b.candidates_sha256:
        raise InputError(f"{a.name} and {b.name} were scored on different candidate files (sha256 "
                         f"{a.candidates_sha256} vs {b.candidates_sha256})", field="protocol")
    if a.record.multi_target != b.record.multi_target:
        raise InputError(f"{a.name} and {b.name} are not comparable: one ranks several targets per user "
                         "(a general model's split), the other one target per case", field="protocol")
    multi = a.record.multi_target  # general models: the user is the paired unit
    names = metrics or _default_metrics(a, b)
    if not names:
        raise InputError("the runs share no metric to compare", field="--metric")
    ra, rb = a.ranks(), b.ranks()
    rows = []
    for m in names:
        kind = None if multi else parse_metric(m)[0]
        res = paired_test(ra, rb, m, ties=a.protocol.ties,
                          n_negatives=a.record.n_negatives if kind == "AUC" else None, per_user=multi)
        rows.append({"metric": m, "a": res["mean_a"], "b": res["mean_b"], "delta": res["delta"],
                     "p_wilcoxon": res["p_wilcoxon"], "p_ttest": res["p_ttest"], "n": res["n"]})
    adj = adjust_pvalues(np.array([r["p_wilcoxon"] for r in rows]), p_adjust)
    for r, p in zip(rows, adj, strict=True):
        r["p_adj"] = float(p)
    return rows


def _strip_seed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_seed(v) for k, v in obj.items() if k != "seed"}
    if isinstance(obj, list):
        return [_strip_seed(v) for v in obj]
    return obj


def aggregate_runs(paths: list[str | Path], *, by_config: bool = True) -> list[dict[str, Any]]:
    """Mean +- std of the test metrics over runs that differ only by seed.

    With ``by_config`` runs are grouped by their ``config.yaml`` with every ``seed`` key removed (and by
    protocol); otherwise all runs form one group (they must share the protocol).

    Returns
    -------
    list of dict
        One per group: ``runs`` (names), ``protocol``, ``n_runs``, ``metrics`` ({name: (mean, std)}).
    """
    if not paths:
        raise InputError("no runs given")
    runs = [load_run_result(p) for p in paths]
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        cfg = r.config() if by_config else None
        key = json.dumps([r.setting, _strip_seed(cfg) if cfg is not None else None], sort_keys=True,
                         default=str)
        if not by_config:
            key = r.setting
        groups.setdefault(key, []).append(r)
    if not by_config and len(groups) > 1:
        raise InputError("runs used different protocols: " + ", ".join(sorted(groups)), field="protocol")
    out = []
    for members in groups.values():
        out.append({
            "runs": [m.name for m in members],
            "protocol": members[0].setting,
            "n_runs": len(members),
            "metrics": aggregate_seeds([m.test for m in members]),
        })
    return out
