"""Checkpoints as safetensors + JSON: no pickled objects anywhere.

* ``model.safetensors`` / ``last.safetensors``: the model ``state_dict`` (tensors only).
* ``optim.safetensors``: every tensor of the optimizer state under ``"<param index>.<name>"``; the rest of
  the optimizer state (param groups: lr, betas, ...) is JSON in the file's metadata.

A resumable checkpoint (model + optimiser + best model + ``state.json``) is written as one unit by
:func:`write_checkpoint`: the files go to ``NAME.next`` first, then ``state.json`` (the commit point) names the
sha256 of each, then the ``.next`` files are renamed into place. :func:`read_checkpoint` finishes an interrupted
commit or discards an uncommitted one, so a resume never mixes files of two epochs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..fileio import atomic_path, atomic_write_json, sha256_file

__all__ = ["load_model", "load_optimizer", "read_checkpoint", "save_model", "save_optimizer", "write_checkpoint"]

NEXT = ".next"


def write_checkpoint(run: str | Path, writers: dict[str, Callable[[Path], None]], state: dict[str, Any],
                     state_name: str = "state.json") -> None:
    """Write the files of one checkpoint as one unit (see the module docstring).

    ``writers`` maps a file name in ``run`` to a function writing that file at the path it is given;
    ``state`` gets ``files: {name: sha256}`` (kept for files not rewritten this time) and is written last.
    """
    run = Path(run)
    files = dict(state.get("files") or {})
    for name, write in writers.items():
        write(run / f"{name}{NEXT}")
        files[name] = sha256_file(run / f"{name}{NEXT}")
    state["files"] = files
    atomic_write_json(run / state_name, state)  # the commit point
    for name in writers:
        os.replace(run / f"{name}{NEXT}", run / name)


def read_checkpoint(run: str | Path, state_name: str = "state.json") -> dict[str, Any]:
    """``state.json`` of a run, after checking that the files it names are exactly the ones it was written
    with: a commit interrupted after ``state.json`` is finished, newer uncommitted files are discarded, and any
    other mismatch is an error (never a resume from a mix of epochs)."""
    run = Path(run)
    path = run / state_name
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable checkpoint state ({type(exc).__name__})", file=path) from None
    for name, digest in (state.get("files") or {}).items():
        final, nxt = run / name, run / f"{name}{NEXT}"
        if nxt.exists() and sha256_file(nxt) == digest:
            os.replace(nxt, final)
        elif final.exists() and sha256_file(final) == digest:
            nxt.unlink(missing_ok=True)
        else:
            raise InputError(f"checkpoint file does not match the sha256 recorded in {state_name} (changed or "
                             "damaged after it was written); cannot resume: start again with --overwrite",
                             file=final)
    return state


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
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on damaged files
        raise InputError(f"unreadable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                         file=path) from None
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)} if ignore_prefixes else state
    own = model.state_dict()
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise InputError(f"checkpoint does not match the model: {k} has shape {list(v.shape)} in the checkpoint "
                             f"but {list(own[k].shape)} in the model (was it trained on another dataset, with "
                             "another item count?)", file=path)
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
