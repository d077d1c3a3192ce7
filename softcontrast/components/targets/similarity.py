"""SCE: Similarity Contrastive Estimation targets (Denize et al., WACV 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.targets.base import Targets, masked_softmax
from softcontrast.settings import SettingError


def similarity_target(
    key_scores: Tensor, positive_one_hot: Tensor, mask: Tensor, lam: float, tau_m: float
) -> Tensor:
    """The SCE target ``λ·e_pos + (1−λ)·s_i``.

    ``s_i = softmax(k_i·Cᵀ/τm)`` over the non-positive, unmasked columns: the
    positive column gets ``−∞`` (as in the paper, not 0 as in the official code).
    A row with no unmasked non-positive column (an empty queue) gets ``e_pos``.

    Args:
        key_scores: ``B×N`` ``k_i·C_j``.
        positive_one_hot: ``B×N`` ``e_pos``.
        mask: ``B×N`` excluded columns.
        lam: ``λ`` in ``[0, 1]``, the weight of the one-hot part.
        tau_m: ``τm > 0``, the temperature of the similarity distribution.
    """
    relational = masked_softmax(key_scores / tau_m, mask | positive_one_hot.bool())
    no_negative = (relational.sum(dim=-1, keepdim=True) == 0).to(relational.dtype)
    weight = lam + (1 - lam) * no_negative
    return weight * positive_one_hot + (1 - lam) * relational


@dataclass(frozen=True)
class SimilarityTargets:
    """SCE target builder.

    ``target_i = λ·e_pos + (1−λ)·s_i``, ``s_i = softmax_{j≠pos, unmasked}(k_i·C_j/τm)``.

    Args:
        lam: ``λ`` in ``[0, 1]``; 1 is InfoNCE.
        tau_m: ``τm > 0`` (SCE's default, in its config: 0.05).
    """

    lam: float
    tau_m: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise SettingError("lam", f"SCE lam (λ) must lie in [0, 1], got {self.lam}")
        if not self.tau_m > 0:
            raise SettingError("tau_m", f"SCE tau_m must be > 0, got {self.tau_m}")

    def __call__(self, columns: Columns, rows: Rows) -> Targets:
        """Builds the SCE target from the keys' similarities to the columns (one key per row)."""
        if rows.keys is None:
            raise ValueError("SCE targets need one momentum key per row (a step with one column view per image)")
        with torch.no_grad():
            key_scores = columns.scores(rows.keys)
            target = similarity_target(key_scores, rows.positive_one_hot(), rows.mask, self.lam, self.tau_m)
        return Targets(target, rows.mask)
