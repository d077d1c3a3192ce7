"""SLR: Self-Labeling Refinement targets (Zhou et al., NeurIPS 2021).

The one-hot contrastive label calls every other column a negative, including
columns of the same class: it is a *noisy* label. SLR refines it with the momentum
key's own view of the columns::

    p_i  = softmax over unmasked columns of k_i·Cᵀ/τs
    p̂_i  = keep the κ largest entries of p_i, zero the rest, renormalise
    ŷ_i  = (1 − α)·e_pos + α·p̂_i

The target is recomputed every step from the current network (the paper's
iterative refinement) and carries no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from softcontrast.components.columns import LogitColumns
from softcontrast.components.targets.base import Targets, masked_softmax


def keep_top(probabilities: Tensor, kappa: int, always: Tensor | None = None) -> Tensor:
    """Keeps the ``κ`` largest entries of each row, zeroes the rest and renormalises.

    Args:
        probabilities: ``B×N`` non-negative rows, each with positive mass.
        kappa: ``κ >= 1`` entries kept per row (all of them when ``κ >= N``).
        always: optional ``B×N`` flags of entries that are kept whatever their
            value (they count towards ``κ``).

    Returns:
        ``B×N`` rows that sum to 1 with at most ``max(κ, #always)`` non-zeros.
    """
    kappa = min(kappa, probabilities.shape[-1])
    ranking = probabilities if always is None else probabilities.masked_fill(always, float("inf"))
    kept = torch.zeros_like(probabilities, dtype=torch.bool).scatter_(1, ranking.topk(kappa, dim=-1).indices, True)
    if always is not None:
        kept = kept | always
    truncated = probabilities * kept
    return truncated / truncated.sum(dim=-1, keepdim=True)


def refine_labels(labels: Tensor, prediction: Tensor, alpha: float) -> Tensor:
    """The refined label ``(1 − α)·y + α·p`` of a (noisy) label ``y``.

    Args:
        labels: ``B×N`` label rows ``y`` (one-hot in the paper).
        prediction: ``B×N`` predicted distributions ``p`` (after any truncation).
        alpha: ``α`` in ``[0, 1]``, trust in the prediction.
    """
    return (1 - alpha) * labels + alpha * prediction


def self_labeling_target(
    key_scores: Tensor, positive_one_hot: Tensor, mask: Tensor, alpha: float, tau_s: float, kappa: int
) -> Tensor:
    """The SLR target ``(1 − α)·e_pos + α·p̂_i``.

    ``p_i = softmax(k_i·Cᵀ/τs)`` over the unmasked columns, the positive included
    (it holds ``k_i·k_i = 1``, the largest score of L2-normalised keys).
    ``p̂_i`` keeps the ``κ`` largest entries of ``p_i``. The positive is always
    among them: for normalised keys it is the largest entry anyway, and keeping
    it explicitly makes ties and rounding harmless, so ``κ = 1`` gives ``e_pos``.

    Args:
        key_scores: ``B×N`` ``k_i·C_j``.
        positive_one_hot: ``B×N`` ``e_pos``.
        mask: ``B×N`` excluded columns (never the positive).
        alpha: ``α`` in ``[0, 1]``; 0 is InfoNCE.
        tau_s: ``τs > 0``, temperature of the key's distribution.
        kappa: ``κ >= 1``, entries of ``p_i`` kept.

    Returns:
        ``B×N`` rows that sum to 1 and are zero on masked columns.
    """
    positive = positive_one_hot.bool()
    prediction = keep_top(masked_softmax(key_scores / tau_s, mask), kappa, always=positive)
    return refine_labels(positive_one_hot.to(prediction.dtype), prediction, alpha)


@dataclass(frozen=True)
class SelfLabelingRefinery:
    """SLR target builder: ``target_i = (1 − α)·e_pos + α·top_κ(softmax(k_i·Cᵀ/τs))``.

    Works with both column layouts (``[k_i | Q]`` and ``[batch keys | Q]``).

    Args:
        alpha: ``α`` in ``[0, 1]``, weight of the refined part; 0 is InfoNCE.
        tau_s: ``τs > 0``, temperature of the key's similarity distribution.
        kappa: ``κ >= 1``, number of largest entries kept; 1 is InfoNCE.

    Raises:
        ValueError: a hyperparameter outside its range.
    """

    alpha: float = 0.5
    tau_s: float = 0.1
    kappa: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"SLR alpha must lie in [0, 1], got {self.alpha}")
        if not self.tau_s > 0:
            raise ValueError(f"SLR tau_s must be > 0, got {self.tau_s}")
        if int(self.kappa) != self.kappa or self.kappa < 1:
            raise ValueError(f"SLR kappa must be an integer >= 1, got {self.kappa}")

    def __call__(self, columns: LogitColumns, support: Tensor | None = None) -> Targets:
        """Builds the refined target from the keys' similarities (``support`` is ignored)."""
        with torch.no_grad():
            key_scores = columns.scores(columns.keys.float())
            target = self_labeling_target(
                key_scores, columns.positive_one_hot(), columns.mask, self.alpha, self.tau_s, int(self.kappa)
            )
        return Targets(target, columns.mask)
