"""Adapters and contrastive alignment losses for multi-view item encoders (pure torch, no I/O).

* :class:`Adapter`: LLM-ESR's two-linear adapter ``Linear(D, D/2) -> Linear(D/2, d)`` (no activation by
  default) that maps a frozen semantic matrix to the model width.
* :func:`info_nce`: symmetric (CLIP-style) InfoNCE over a batch of paired vectors, L2-normalised, with a
  temperature. Positives are the diagonal (same item in both views).
* :func:`soft_contrastive`: LLM-ESR / LLMEmb ``Contrastive_Loss2(tau)``, copied formula for formula from
  ``models/utils.py``: ``logits = X Y^T / tau``, soft targets ``softmax((X X^T + Y Y^T) / 2 * tau)`` (the
  temperature *multiplies* here, as in the code), symmetric soft cross-entropy (rows with ``targets``, columns
  with ``targets^T``), no L2 normalisation.
* :func:`alignment_loss`: dispatch by name (``"infonce"`` or ``"soft"``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Adapter", "AlignLoss", "alignment_loss", "info_nce", "soft_contrastive"]

AlignLoss = Literal["infonce", "soft"]


class Adapter(nn.Module):
    """Two linear layers mapping a ``D``-wide frozen feature to width ``d`` (LLM-ESR's semantic adapter).

    Parameters
    ----------
    d_in : input width ``D``.
    d_out : output width ``d``.
    hidden : hidden width (default ``D // 2``, as LLM-ESR).
    activation : put a ReLU between the two layers (LLM-ESR has none: the adapter is then a rank-limited
        linear map).
    dropout : dropout on the output.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, activation: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(hidden or max(d_in // 2, 1))
        self.fc1 = nn.Linear(d_in, hidden)
        self.act: nn.Module = nn.ReLU() if activation else nn.Identity()
        self.fc2 = nn.Linear(hidden, d_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., d]``."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


def info_nce(x: Tensor, y: Tensor, tau: float = 0.1) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``x [n, d]`` and ``y [n, d]``.

    Both sides are L2-normalised; ``logits = x̂ ŷ^T / tau``; the loss is the mean of the row-wise and
    column-wise cross-entropies with the diagonal as target::

        L = ( CE(logits, I) + CE(logits^T, I) ) / 2

    Parameters
    ----------
    x, y : paired vectors (row ``i`` of ``x`` and of ``y`` describe the same item).
    tau : temperature (> 0).

    Returns
    -------
    Tensor
        A scalar. With ``n = 1`` the loss is exactly 0 (a single pair has no negatives).
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"x and y must be [n, d] of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = xn @ yn.T / tau
    target = torch.arange(x.shape[0], device=x.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def soft_contrastive(x: Tensor, y: Tensor, tau: float = 1.0) -> Tensor:
    """LLM-ESR's ``Contrastive_Loss2(tau)(X, Y)`` (soft-target contrastive loss, no normalisation).

    ::

        logits  = X Y^T / tau
        targets = softmax((Y Y^T + X X^T) / 2 * tau, dim=-1)
        L = mean_i ( CE_soft(logits_i, targets_i) + CE_soft(logits^T_i, targets^T_i) ) / 2

    where ``CE_soft(p, t) = -sum_j t_j log_softmax(p)_j``. Targets are not detached (as in the code).
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"x and y must be [n, d] of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    logits = x @ y.T / tau
    targets = torch.softmax((y @ y.T + x @ x.T) / 2 * tau, dim=-1)
    x_loss = -(targets * torch.log_softmax(logits, dim=-1)).sum(1)
    y_loss = -(targets.T * torch.log_softmax(logits.T, dim=-1)).sum(1)
    return ((x_loss + y_loss) / 2).mean()


def alignment_loss(kind: AlignLoss, x: Tensor, y: Tensor, tau: float) -> Tensor:
    """``info_nce`` (``kind="infonce"``) or ``soft_contrastive`` (``kind="soft"``) of ``x`` and ``y``."""
    if kind == "infonce":
        return info_nce(x, y, tau)
    if kind == "soft":
        return soft_contrastive(x, y, tau)
    raise ValueError(f"unknown alignment loss {kind!r}")
