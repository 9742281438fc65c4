"""Evaluation protocols, chosen by name and written next to every result.

A protocol string names how candidates are built and how ties are broken:

``full``
    Rank the target against every item ``1..n_items``.
``sampled:N`` / ``sampled:N:popularity``
    One positive + ``N`` negatives drawn without replacement (uniformly, or proportional to training
    popularity) from the items the user has not interacted with up to and including the target.
``candidates:N``
    MLLM-MSR style fixed candidate lists of ``N`` negatives + the positive (passed explicitly, or drawn
    like ``sampled:N`` with the protocol's seed).
``candidates:file=PATH``
    Per-case candidate lists read from a Parquet file (``user, target, candidates[]``, see
    :mod:`.candidates`), used in the file's order, so that LLM recommenders and sequential models are scored on
    identical lists. The file's sha256 is recorded with every result. ``PATH`` must not contain ``:``.

Optional suffixes: ``:seed=S`` (default 0) and ``:ties=random`` (default ``pessimistic``), e.g.
``sampled:100:popularity:seed=42:ties=random``. ``str(Protocol.parse(s))`` gives the canonical form back.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, ValidationError, model_validator

from ..config import Config
from ..errors import InputError

__all__ = ["Protocol", "TiesPolicy", "protocol_slug"]

TiesPolicy = Literal["pessimistic", "random"]


class Protocol(Config):
    """An evaluation protocol (frozen, hashable).

    Attributes
    ----------
    kind : {"full", "sampled", "candidates"}
        How candidates are formed.
    n : int or None
        Number of negatives for ``sampled``/``candidates``; ``None`` for ``full``.
    sampler : {"uniform", "popularity"}
        Negative distribution for ``sampled`` (and generated ``candidates``).
    seed : int
        Seed of the negative sampler and of the positive's column.
    ties : {"pessimistic", "random"}
        ``pessimistic`` (default): candidates scored equal to the target rank above it.
        ``random``: expected rank ``#greater + #ties / 2`` and metrics are exact expectations over a
        uniformly random order of the tied candidates.
    file : str or None
        ``candidates`` only: Parquet file of explicit per-case lists (then ``n`` is ``None``: the file decides).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    kind: Literal["full", "sampled", "candidates"]
    n: int | None = None
    sampler: Literal["uniform", "popularity"] = "uniform"
    seed: int = 0
    ties: TiesPolicy = "pessimistic"
    file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Protocol:
        if self.kind == "full":
            if self.n is not None:
                raise ValueError("the full protocol takes no number of negatives")
            if self.sampler != "uniform":
                raise ValueError("the full protocol has no negative sampler")
        elif self.file is not None:
            if self.kind != "candidates":
                raise ValueError("only the candidates protocol reads a candidate file")
            if self.n is not None or self.sampler != "uniform" or self.seed != 0:
                raise ValueError("candidates:file=PATH takes no number, sampler or seed (the file gives the lists)")
        elif self.n is None or self.n < 1:
            raise ValueError(f"the {self.kind} protocol needs a number of negatives >= 1")
        return self

    @property
    def n_candidates(self) -> int | None:
        """Candidates per case (positive included), ``None`` for ``full``."""
        return None if self.n is None else self.n + 1

    @classmethod
    def parse(cls, text: str | Protocol) -> Protocol:
        """Parse ``"full"``, ``"sampled:100"``, ``"sampled:100:popularity"``, ``"candidates:20"``,
        ``"candidates:file=PATH"`` (+ suffixes).

        Raises
        ------
        InputError
            With ``field="--protocol"`` when the string is not a valid protocol.
        """
        if isinstance(text, Protocol):
            return text
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"empty or invalid protocol {text!r}", field="--protocol")
        parts = [p.strip() for p in text.strip().split(":")]
        kind = parts[0].lower()
        fields: dict[str, object] = {"kind": kind}
        rest = parts[1:]
        usage = ("expected full | sampled:N[:uniform|popularity] | candidates:N | candidates:file=PATH, "
                 "optionally :seed=S :ties=random")
        if kind not in ("full", "sampled", "candidates"):
            raise InputError(f"unknown protocol {text!r}; {usage}", field="--protocol")
        if kind == "candidates" and rest and rest[0].lower().startswith("file="):
            if not rest[0][5:].strip():
                raise InputError(f"protocol {text!r} names no candidate file", field="--protocol")
            fields["file"] = rest[0][5:].strip()
            rest = rest[1:]
        elif kind != "full":
            if not rest or not rest[0].isdigit():
                raise InputError(f"protocol {text!r} needs a number of negatives; {usage}", field="--protocol")
            fields["n"] = int(rest[0])
            rest = rest[1:]
        for tok in rest:
            low = tok.lower()
            if low in ("uniform", "popularity"):
                fields["sampler"] = low
            elif low.startswith("seed="):
                try:
                    fields["seed"] = int(low[5:])
                except ValueError:
                    raise InputError(f"bad seed in protocol {text!r}", field="--protocol") from None
            elif low.startswith("ties="):
                fields["ties"] = low[5:]
            else:
                raise InputError(f"unknown protocol option {tok!r} in {text!r}; {usage}", field="--protocol")
        try:
            return cls(**fields)  # type: ignore[arg-type]
        except ValidationError as exc:
            msg = "; ".join(e["msg"] for e in exc.errors())
            raise InputError(f"invalid protocol {text!r}: {msg}", field="--protocol") from None

    def __str__(self) -> str:
        out = [self.kind]
        if self.file is not None:
            out.append(f"file={self.file}")
        if self.n is not None:
            out.append(str(self.n))
        if self.sampler != "uniform":
            out.append(self.sampler)
        if self.seed != 0:
            out.append(f"seed={self.seed}")
        if self.ties != "pessimistic":
            out.append(f"ties={self.ties}")
        return ":".join(out)


def protocol_slug(protocol: str | Protocol) -> str:
    """File-name form of a protocol (``sampled:100`` -> ``sampled-100``; a candidate file is named by its stem:
    ``candidates:file=/x/llm-lists.parquet`` -> ``candidates-file-llm-lists``), used by the re-score files
    (:mod:`.runfiles`)."""
    import re
    from pathlib import PurePath

    proto = Protocol.parse(protocol)
    if proto.file is not None:
        proto = proto.model_copy(update={"file": PurePath(proto.file).stem})
    return re.sub(r"[^A-Za-z0-9]+", "-", str(proto)).strip("-")
