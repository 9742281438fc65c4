"""The experiment grid: datasets x variants (item encoders / options) x backbones x seeds, under named protocols.

Example (``configs/experiments/*.yaml``)::

    name: synthetic-dmesr
    datasets: {synthetic: demo-out/synthetic}
    backbones: [sasrec, bert4rec, gru4rec]
    seeds: [42, 43, 44]
    protocols: [full, sampled:100]      # the first one is used for model selection (on validation)
    metrics: [HR@10, NDCG@10]
    baseline: ID-only
    base:                               # shared ExperimentConfig fields
      train: {epochs: 50, batch_size: 128}
    variants:
      ID-only: {item_encoder: {name: id}}
      DMESR: {item_encoder: {name: dmesr}}
    backbone_overrides:                 # optional per-backbone settings
      bert4rec: {objective: {name: ce}}

A variant may start from a preset file per backbone (its own keys still apply on top), and a store built from
one run of the grid can feed other variants (LLMEmb's collaborative store)::

    variants:
      LLM-ESR (code): {preset: {sasrec: ../presets/llmesr-sasrec.yaml}, train: {epochs: 20}}
      LLMEmb+collab: {item_encoder: {name: llmemb, collab: collab-sasrec}}
    stores:
      collab-sasrec: {variant: ID-only, backbone: sasrec, seed: 42}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..config import Config, load_config
from ..errors import InputError

__all__ = ["GridConfig", "StoreSpec", "check_datasets", "load_grid"]

_STORE_NAME = r"^[A-Za-z0-9_.\-]+$"


class StoreSpec(Config):
    """An embedding store built from one run of the grid: ``mmseqrec embed DATA --source run:RUN --out NAME``
    (the run's best item table, :mod:`mmseqrec.embed.runs`), once per dataset, after that run has trained and
    before any run that reads it. An existing store of that name is used only if it was built from that same
    run directory; nothing overwrites it.

    Attributes
    ----------
    variant, backbone, seed : the run of the grid whose item table becomes the store.
    """

    variant: str
    backbone: str
    seed: int


class GridConfig(Config):
    """Attributes
    ----------
    name : experiment name (used in the report title).
    datasets : name -> prepared dataset directory. A relative path is looked up in the working directory, then
        next to the YAML file; :func:`load_grid` stores the absolute path it found (or the first one tried), and
        :func:`check_datasets` names every path it tried when a dataset is missing or not prepared.
    backbones : model names from ``mmseqrec.registry.MODELS``.
    variants : name -> partial ExperimentConfig merged over ``base`` (typically an ``item_encoder`` section).
        ``preset`` (a YAML file, or backbone -> file) makes the variant start from that file merged over ``base``
        and ``backbone_overrides``, the variant's other keys on top; with a mapping the variant runs on the
        mapped backbones only. A relative path is looked up like a dataset path; :func:`load_grid` stores the
        absolute path.
    baseline : the variant every other variant is tested against (paired test on per-user ranks; on the same
        backbone, or on the baseline's only backbone when it ran on one, e.g. general grids where each variant
        is one model: ``variant_backbones: {MLLMRec: [mllmrec], BPR: [bpr], ...}``).
    seeds : one run per seed; reports give mean +- std.
    protocols : evaluation protocols; the first is used to select the checkpoint on validation, the others
        re-score the same checkpoint.
    metrics : columns of the report (each ``HR@K`` / ``NDCG@K`` / ``MRR@K``; general models:
        ``Recall@K`` / ``NDCG@K`` / ``Precision@K`` / ``MAP@K``; K must be in ``base.eval.ks``).
    base : ExperimentConfig fields shared by every run.
    backbone_overrides : backbone name -> partial ExperimentConfig merged after ``base``.
    variant_backbones : restrict a variant to some backbones (default: all; a preset mapping's backbones).
    stores : store name -> :class:`StoreSpec`: embedding stores built from a run of this grid (per dataset, in
        the dataset's ``embed/`` directory), for variants that name them (e.g. ``item_encoder.collab``).
    report_split : ``test`` (the results table) or ``valid`` (for ablations that choose defaults: the table shows
        the validation metrics of the selected checkpoints, no test numbers and no p-values).
    references : variants every other variant is also tested against, across backbones (e.g. ``[Pop]``: the
        closed-form baselines run on their own backbone ``pop``); one extra ``p METRIC vs REF`` column per
        reference for the first metric. Their comparisons join the table's family for the correction.
    p_adjust : multiple-testing correction over all comparisons of one table (dataset x protocol): ``holm``
        (Holm-Bonferroni, default), ``bh`` (Benjamini-Hochberg) or ``none``; raw and adjusted p are both shown.
    """

    name: str = "experiment"
    datasets: dict[str, str]
    backbones: list[str] = Field(default_factory=lambda: ["sasrec"])
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"ID-only": {"item_encoder": {"name": "id"}}})
    baseline: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [42])
    protocols: list[str] = Field(default_factory=lambda: ["full"])
    metrics: list[str] = Field(default_factory=lambda: ["HR@10", "NDCG@10"])
    base: dict[str, Any] = Field(default_factory=dict)
    backbone_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variant_backbones: dict[str, list[str]] = Field(default_factory=dict)
    report_split: Literal["test", "valid"] = "test"
    references: list[str] = Field(default_factory=list)
    stores: dict[str, StoreSpec] = Field(default_factory=dict)
    p_adjust: Literal["holm", "bh", "none"] = "holm"
    _tried: dict[str, list[str]] = PrivateAttr(default_factory=dict)  # dataset name -> absolute paths looked at
    _source: str | None = PrivateAttr(None)  # the YAML file

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one protocol is needed")
        from ..evaluate import Protocol

        return [str(Protocol.parse(p)) for p in v]

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        if self.baseline is None:
            self.baseline = next(iter(self.variants))
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {list(self.variants)}")
        for v in self.references:
            if v not in self.variants:
                raise ValueError(f"references names unknown variant {v!r}")
        for v in self.variant_backbones:
            if v not in self.variants:
                raise ValueError(f"variant_backbones names unknown variant {v!r}")
        for v, vcfg in self.variants.items():
            preset = vcfg.get("preset")
            if preset is not None and not (isinstance(preset, str) or (
                    isinstance(preset, dict) and preset and all(isinstance(f, str) for f in preset.values()))):
                raise ValueError(f"variants.{v}.preset must be a file or a mapping backbone -> file")
        for name, spec in self.stores.items():
            if not re.match(_STORE_NAME, name):
                raise ValueError(f"stores.{name}: a store name may only contain letters, digits, '_', '.', '-'")
            if spec.variant not in self.variants:
                raise ValueError(f"stores.{name} names unknown variant {spec.variant!r}")
            if spec.backbone not in self.backbones_of(spec.variant):
                raise ValueError(f"stores.{name}: variant {spec.variant!r} does not run on {spec.backbone!r}")
            if spec.seed not in self.seeds:
                raise ValueError(f"stores.{name}: seed {spec.seed} is not one of the seeds {self.seeds}")
        return self

    def backbones_of(self, variant: str) -> list[str]:
        """The backbones ``variant`` runs on: ``variant_backbones``, else its preset mapping's, else all."""
        if variant in self.variant_backbones:
            return list(self.variant_backbones[variant])
        preset = self.variants[variant].get("preset")
        return list(preset) if isinstance(preset, dict) else list(self.backbones)

    def preset_file(self, variant: str, backbone: str) -> str | None:
        """The preset file of ``variant`` on ``backbone`` (``None``: the variant has none)."""
        preset = self.variants[variant].get("preset")
        if isinstance(preset, dict):
            if backbone not in preset:
                raise InputError(f"variant {variant!r} has no preset for backbone {backbone!r}", file=self._source,
                                 field=f"variants.{variant}.preset")
            return preset[backbone]
        return preset


def _lookup(p: str, root: Path) -> tuple[str, list[str]]:
    """A path as found (the working directory first, then ``root``; else the first one tried), and the tries."""
    cand = Path(p).expanduser()
    options = [cand] if cand.is_absolute() else [Path.cwd() / cand, root / cand]
    options = list(dict.fromkeys(o.resolve() for o in options))
    return str(next((o for o in options if o.exists()), options[0])), [str(o) for o in options]


def load_grid(path: str | Path, overrides: list[str] | None = None) -> GridConfig:
    """Read a grid YAML (with ``key=value`` overrides); dataset and preset paths become absolute (see
    ``datasets``); a preset file that is not found is an :class:`InputError` naming the paths tried."""
    grid = load_config(GridConfig, path, overrides)
    root = Path(path).resolve().parent
    resolved = {}
    for name, p in grid.datasets.items():
        resolved[name], grid._tried[name] = _lookup(p, root)
    grid.datasets = resolved
    for v, vcfg in grid.variants.items():
        preset = vcfg.get("preset")
        if preset is None:
            continue
        files = preset if isinstance(preset, dict) else {"": preset}
        found = {}
        for bb, f in files.items():
            found[bb], tried = _lookup(f, root)
            if not Path(found[bb]).is_file():
                raise InputError(f"preset file not found (looked at {' and '.join(tried)})", file=path,
                                 field=f"variants.{v}.preset" + (f".{bb}" if bb else ""))
        vcfg["preset"] = found if isinstance(preset, dict) else found[""]
    grid._source = str(path)
    return grid


def check_datasets(grid: GridConfig) -> None:
    """Every dataset of ``grid`` is a prepared dataset directory; else an :class:`InputError` naming the grid
    file, the field and the absolute path(s) looked at."""
    from ..data.dataset import INTERACTIONS, ITEMS, MANIFEST

    for name, p in grid.datasets.items():
        path = Path(p)
        where = {"file": grid._source, "field": f"datasets.{name}"}
        if not path.is_dir():
            tried = grid._tried.get(name) or [str(path.resolve())]
            raise InputError(f"dataset directory not found (looked at {' and '.join(tried)}); create it with "
                             f"`mmseqrec prepare ... --out {tried[0]}`", **where)
        missing = [f for f in (INTERACTIONS, ITEMS, MANIFEST) if not (path / f).exists()]
        if missing:
            raise InputError(f"{path.resolve()} is not a prepared dataset directory (missing {', '.join(missing)}); "
                             f"run `mmseqrec prepare ... --out {path.resolve()}` first", **where)
