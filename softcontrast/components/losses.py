"""Masked soft cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor

from softcontrast.components.precision import full_precision


def masked_log_softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    """``log softmax`` over the columns not flagged in ``mask`` (masked entries are ``-inf``)."""
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.log_softmax(full_precision(logits), dim=-1)


def soft_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """``−Σ_j target_ij · log softmax(logits_i)_j`` over unmasked columns.

    Masked columns get no probability (their logit is ``−∞``) and must carry zero
    target. The log-softmax is computed in float32 even under autocast (float64 stays float64).

    Args:
        logits: ``B×N`` logits.
        target: ``B×N`` row-stochastic target.
        mask: ``B×N`` flags of excluded columns, or ``None``.
        reduction: ``mean`` over rows, ``sum``, or ``none`` (per row).
    """
    log_probs = masked_log_softmax(logits, mask)
    if mask is not None:
        log_probs = log_probs.masked_fill(mask, 0.0)
    per_row = -(target.to(log_probs.dtype) * log_probs).sum(dim=-1)
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
