"""Run-level reports: compare two runs (paired tests) and aggregate runs over seeds (mean +- std).

Reads the run directory contract written by ``train``: ``RUN/metrics.json`` (top-level ``protocol``,
``exclude_history`` and a ``test`` dict of metrics) and ``RUN/ranks.parquet`` (``user, target, rank[, tied]``).
A run re-scored under another protocol (``mmseqrec evaluate --protocol P`` or ``mmseqrec experiment``) also has
``RUN/eval-<slug>.json`` and ``RUN/ranks-<slug>.parquet``; ``load_run_result(run, protocol=P)`` reads those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from .evaluator import load_ranks
from .metrics import parse_metric
from .protocol import Protocol, protocol_slug
from .significance import aggregate_seeds, paired_test

__all__ = ["METRICS_FILE", "RANKS_FILE", "RunResult", "aggregate_runs", "compare_runs", "load_run_result"]

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.parquet"


class RunResult:
    """What a run directory says about its test evaluation."""

    def __init__(self, path: Path, metrics: dict[str, Any], ranks_file: str = RANKS_FILE,
                 metrics_file: str = METRICS_FILE) -> None:
        self.path = path
        self.raw = metrics
        self.ranks_file = ranks_file
        if "test" not in metrics and metrics.get("split", "test") == "test" and isinstance(metrics.get("metrics"), dict):
            metrics = {**metrics, "test": metrics["metrics"]}  # `mmseqrec evaluate` form: {protocol, split, metrics}
        test = metrics.get("test")
        if not isinstance(test, dict):
            raise InputError(f"{metrics_file} has no 'test' results", file=path / metrics_file, field="test")
        self.test: dict[str, Any] = dict(test.get("metrics", test)) if isinstance(test.get("metrics"), dict) \
            else dict(test)
        proto = metrics.get("protocol", test.get("protocol"))
        if proto is None:
            raise InputError(f"{metrics_file} does not record the protocol", file=path / metrics_file,
                             field="protocol")
        self.protocol = Protocol.parse(str(proto))
        eh = metrics.get("exclude_history", test.get("exclude_history", False))
        self.exclude_history = bool(eh)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def setting(self) -> str:
        """Protocol string + the exclude-history flag: what must match for numbers to be comparable."""
        return f"{self.protocol}" + (" (history excluded)" if self.exclude_history else "")

    def ranks(self):
        return load_ranks(self.path / self.ranks_file)

    def config(self) -> dict[str, Any] | None:
        p = self.path / "config.yaml"
        if not p.exists():
            return None
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"invalid YAML: {exc}", file=p) from None
        return data if isinstance(data, dict) else None


def _read_json(mf: Path) -> dict[str, Any]:
    try:
        data = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", file=mf, line=exc.lineno) from None
    if not isinstance(data, dict):
        raise InputError("top level must be an object", file=mf)
    return data


def load_run_result(path: str | Path, protocol: str | None = None) -> RunResult:
    """Read ``RUN/metrics.json`` (clear errors when the directory is not an evaluated run).

    With ``protocol`` different from the run's training protocol, read the re-scored
    ``RUN/eval-<slug>.json`` and ``RUN/ranks-<slug>.parquet`` instead.
    """
    path = Path(path)
    mf = path / METRICS_FILE
    if not mf.exists():
        raise InputError(f"not an evaluated run directory (missing {METRICS_FILE})", file=path)
    data = _read_json(mf)
    if protocol is None or str(Protocol.parse(protocol)) == str(data.get("protocol")):
        return RunResult(path, data)
    slug = protocol_slug(Protocol.parse(protocol))
    ef = path / f"eval-{slug}.json"
    if not ef.exists():
        raise InputError(f"the run was not scored under {protocol!r} (missing {ef.name}); run "
                         f"`mmseqrec evaluate {path} --protocol {protocol}` first", file=path)
    return RunResult(path, _read_json(ef), ranks_file=f"ranks-{slug}.parquet", metrics_file=ef.name)


def _default_metrics(a: RunResult, b: RunResult) -> list[str]:
    out = []
    for k in a.test:
        if k in b.test and k not in ("n_cases", "AUC_global"):
            try:
                parse_metric(k)
            except InputError:
                continue
            out.append(k)
    return out


def compare_runs(run_a: str | Path | RunResult, run_b: str | Path | RunResult,
                 metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """Paired comparison of two runs on their test ranks, one row per metric.

    Returns
    -------
    list of dict
        ``metric, a, b, delta, p_wilcoxon, p_ttest, n`` (delta = B - A).

    Raises
    ------
    InputError
        Different protocols / exclude-history settings, or different evaluated cases.
    """
    a = run_a if isinstance(run_a, RunResult) else load_run_result(run_a)
    b = run_b if isinstance(run_b, RunResult) else load_run_result(run_b)
    if a.protocol != b.protocol or a.exclude_history != b.exclude_history:
        raise InputError(f"cannot compare runs evaluated under different protocols: {a.name} used "
                         f"{a.setting!r}, {b.name} used {b.setting!r}; re-evaluate one with "
                         f"`mmseqrec evaluate RUN --protocol ...`", field="protocol")
    names = metrics or _default_metrics(a, b)
    if not names:
        raise InputError("the runs share no metric to compare", field="--metric")
    ra, rb = a.ranks(), b.ranks()
    rows = []
    for m in names:
        kind, _ = parse_metric(m)
        res = paired_test(ra, rb, m, ties=a.protocol.ties, n_negatives=a.protocol.n if kind == "AUC" else None)
        rows.append({"metric": m, "a": res["mean_a"], "b": res["mean_b"], "delta": res["delta"],
                     "p_wilcoxon": res["p_wilcoxon"], "p_ttest": res["p_ttest"], "n": res["n"]})
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
