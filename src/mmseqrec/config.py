"""Typed configuration: one pydantic model per component, YAML in, fully resolved YAML out.

``--set a.b=c`` overrides are applied to the raw mapping and then validated like the file, so a typo in a key
is an error, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError

__all__ = ["Config", "apply_overrides", "deep_merge", "dump_config", "load_config", "read_yaml", "validate_config"]

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base for every component config: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars/lists) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r} is not of the form key=value", field="--set")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"override {item!r} has an empty key", field="--set")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise InputError(f"cannot set {key!r}: {p!r} is not a section", field="--set")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return data


def validate_config(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(
            (f"{'.'.join(str(x) for x in e['loc'])}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise InputError(errs, file=source) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file (``{}`` when empty); bad YAML or another top level is an
    :class:`InputError` naming the file (and line)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"invalid YAML: {exc}", file=path, line=None if line is None else line + 1) from None
    if not isinstance(loaded, dict):
        raise InputError("top level must be a mapping", file=path)
    return loaded


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Read YAML (optional), merge onto ``base``, apply overrides, validate into ``cls``."""
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        source = str(path)
        data = deep_merge(data, read_yaml(path))
    apply_overrides(data, overrides)
    return validate_config(cls, data, source=source)


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
