"""The experiment config: data, model (backbone), item encoder, objective, training, evaluation, seed.

YAML in (``--config FILE.yaml`` + ``--set a.b=c``), fully resolved YAML out (``RUN/config.yaml``). The
``model`` and ``item_encoder`` sections are validated into the config class that ``mmseqrec.registry``
lists for their ``name``, so a typo in an option is an error naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from ..config import Config, load_config
from ..models.losses import ObjectiveConfig
from ..registry import item_encoder_spec, model_spec, regularizer_spec

__all__ = ["DataConfig", "EvalConfig", "ExperimentConfig", "TrainConfig", "load_experiment"]


class DataConfig(Config):
    """Attributes
    ----------
    path : prepared dataset directory.
    min_len : users with fewer interactions are train-only (never evaluated), see ``data.split``.
    split : sequence models: ``leave-one-out`` (the only one); general models (``bpr``, ``lightgcn``, ...):
        ``random:8:1:1[:seed=S]`` (default), ``time:8:1:1`` or ``x_label`` (see ``data.general_split``).
    """

    path: str | None = None
    min_len: int = Field(3, ge=2)  # leave-one-out needs a valid and a test item
    split: str | None = None


class TrainConfig(Config):
    """Training options.

    Attributes
    ----------
    epochs : maximum epochs (one epoch = one pass over the training windows, see ``windows``).
    windows : which windows of each user's training items an epoch holds (``mmseqrec.train.batching``):
        ``last`` (one per user: the most recent ``max_len + 1`` items, older items never a target), ``all``
        (cut from the end so that every training item is a target once per epoch) or ``sampled`` (as many as
        ``all``, with random ends drawn every epoch).
    window_stride : distance between window ends for ``windows: all`` (default: ``max_len``, every item a
        target exactly once; smaller values overlap windows).
    batch_size, lr, weight_decay : AdamW settings. Default batch 64 (was 128): on ml-100k it reaches the best
        validation NDCG@10 within a fixed CPU budget (more optimiser steps per epoch; README "The default
        training recipe", benchmarks/RESULTS.md); the configs in ``configs/`` pin their own batch sizes.
    lr_schedule : ``constant`` (default) or ``cosine``: after ``warmup_epochs`` of linear warm-up, the learning
        rate follows a half cosine from ``lr`` to 0 over the remaining steps of ``epochs`` (set per optimiser
        step from the step index, so a resumed run continues the same curve).
    warmup_epochs : linear warm-up from 0 to ``lr`` over this many epochs (fractions allowed; 0 = none).
    max_len : longest input (default: the backbone's ``max_len``; both must agree).
    grad_clip : max gradient norm (0 = off).
    patience : evaluations without improvement of ``select_metric`` on *valid* before stopping (0 = off).
    eval_every : evaluate on valid every N epochs.
    select_metric : validation metric used for early stopping and the best checkpoint.
    device : ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1`` ...
    bf16 : bf16 autocast for training steps (CUDA only; ignored on CPU). Evaluation always scores in float32.
    num_threads : torch CPU threads (``None`` = torch default).
    trim : cut each batch to its longest sequence (saves work on short-sequence data).
    compile : wrap the loss in ``torch.compile`` (GPU).
    progress : show rich progress bars.
    """

    epochs: int = Field(200, ge=0)
    windows: Literal["last", "all", "sampled"] = "all"
    window_stride: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_len: int | None = Field(None, ge=1)
    grad_clip: float = Field(5.0, ge=0)
    patience: int = Field(20, ge=0)
    eval_every: int = Field(1, ge=1)
    select_metric: str = "NDCG@10"
    device: str = "auto"
    bf16: bool = True
    num_threads: int | None = Field(None, ge=1)
    trim: bool = True
    compile: bool = False
    progress: bool = True


class EvalConfig(Config):
    """Attributes
    ----------
    protocol : ``full`` | ``sampled:N[...]`` | ``candidates:N`` (see ``mmseqrec.evaluate``).
    ks : cut-offs of HR/NDCG/MRR.
    exclude_history : remove the user's history items from the ranking (recorded in metrics.json).
    batch_size : users per scoring batch.
    item_chunk : ``full`` ranking in chunks of this many items (``None`` = when ``batch_size * n_items`` is
        large, ``0`` = never); identical ranks, bounded memory (docs/scaling.md).
    """

    protocol: str = "full"
    ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    exclude_history: bool = False
    batch_size: int = Field(512, ge=1)
    item_chunk: int | None = Field(None, ge=0)


def _typed_section(v: Any, spec: Any, default: str) -> Any:
    """A ``{name: ..., ...}`` section (or ``None``) -> the config class its registry entry names."""
    if v is None:
        v = {}
    if isinstance(v, dict):
        return spec(str(v.get("name", default))).config_cls.model_validate(v)
    return v


class ExperimentConfig(Config):
    """One training run, fully resolved."""

    data: DataConfig = DataConfig()
    model: SerializeAsAny[Config] = Field(default=None, validate_default=True)  # default: sasrec
    item_encoder: SerializeAsAny[Config] = Field(default=None, validate_default=True)  # default: id
    objective: ObjectiveConfig = ObjectiveConfig()
    regularizers: list[SerializeAsAny[Config]] = Field(default_factory=list)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = Field(42, ge=0)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        return _typed_section(v, model_spec, "sasrec")

    @field_validator("item_encoder", mode="before")
    @classmethod
    def _encoder(cls, v: Any) -> Any:
        return _typed_section(v, item_encoder_spec, "id")

    @field_validator("regularizers", mode="before")
    @classmethod
    def _regularizers(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("regularizers must be a list of {name: ..., ...} sections")  # noqa: TRY004 (pydantic)
        return [regularizer_spec(str(r.get("name"))).config_cls.model_validate(r) if isinstance(r, dict) else r
                for r in v]

    @model_validator(mode="after")
    def _metric(self) -> ExperimentConfig:
        if getattr(model_spec(self.model.name), "general", False):
            return self  # checked by _resolve_general, after the general defaults
        metric = self.train.select_metric
        known = {f"{n}@{k}" for n in ("HR", "NDCG", "MRR") for k in self.eval.ks}
        if self.eval.protocol.strip() != "full":
            known |= {"AUC", "AUC_global"}
        if metric not in known:
            raise ValueError(f"train.select_metric {metric!r} is not computed under eval.protocol="
                             f"{self.eval.protocol!r} and eval.ks={self.eval.ks}; choose one of {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _resolve(self) -> ExperimentConfig:
        if getattr(model_spec(self.model.name), "general", False):
            return self._resolve_general()
        if self.data.split not in (None, "leave-one-out"):
            raise ValueError(f"sequence models use the leave-one-out split, not {self.data.split!r}")
        backbone_len = getattr(self.model, "max_len", None)
        if self.train.max_len is None:
            if backbone_len is not None:
                self.train.max_len = backbone_len
            else:
                self.train.max_len = 200
        elif backbone_len is not None and backbone_len != self.train.max_len:
            if "max_len" in self.model.model_fields_set:
                raise ValueError(f"train.max_len={self.train.max_len} differs from model.max_len={backbone_len}")
            self.model.max_len = self.train.max_len
        return self


    def _resolve_general(self) -> ExperimentConfig:
        """General-model defaults where not given: MMRec's split, batch 2048, no clipping, Recall@20 on
        valid, cut-offs 10 and 20."""
        from ..data.general_split import canonical_split

        self.data.split = canonical_split(self.data.split or "random:8:1:1")
        if self.eval.protocol != "full":
            raise ValueError(f"general models are evaluated by full ranking only, not {self.eval.protocol!r}")
        for key, value in (("batch_size", 2048), ("grad_clip", 0.0), ("select_metric", "Recall@20")):
            if key not in self.train.model_fields_set:
                setattr(self.train, key, value)
        if "ks" not in self.eval.model_fields_set:
            self.eval.ks = [10, 20]
        if "exclude_history" not in self.eval.model_fields_set:
            self.eval.exclude_history = True
        from ..evaluate.multitarget import multi_metric_names

        known = multi_metric_names(self.eval.ks)
        if self.train.select_metric not in known:
            raise ValueError(f"train.select_metric {self.train.select_metric!r} is not computed for general models "
                             f"with eval.ks={self.eval.ks}; choose one of {', '.join(known)}")
        if self.train.max_len is None:
            self.train.max_len = 200
        return self


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (optional), apply ``key=value`` overrides and validate."""
    return load_config(ExperimentConfig, path, overrides, base)


