"""Checkpoints as safetensors + JSON: no pickled objects anywhere.

* ``model.safetensors`` / ``last.safetensors``: the model ``state_dict`` (tensors only).
* ``optim.safetensors``: every tensor of the optimizer state under ``"<param index>.<name>"``; the rest of
  the optimizer state (param groups: lr, betas, ...) is JSON in the file's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..fileio import atomic_path

__all__ = ["load_model", "load_optimizer", "save_model", "save_optimizer"]


def save_model(path: str | Path, model: nn.Module, meta: dict[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` to ``path`` atomically (safetensors)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "mmseqrec", **(meta or {})})


def load_model(path: str | Path, model: nn.Module, device: torch.device | str = "cpu",
               ignore_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """Load a safetensors state dict into ``model`` (strict, except keys under ``ignore_prefixes``, e.g.
    training-only regularisers); returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint not found", file=path)
    state = load_file(str(path), device=str(device))
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)} if ignore_prefixes else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"checkpoint does not match the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})", file=path)
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def save_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Write the optimizer state: tensors to safetensors, the rest as JSON metadata."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = val
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer saved by :func:`save_optimizer` (tensors moved to the parameters' device)."""
    from safetensors import safe_open

    state: dict[int, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = fh.get_tensor(key)
    for idx, vals in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(idx), {}).update(vals)
    groups = json.loads(meta["param_groups"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
