"""InfoNCE: the one-hot target of MoCo and SimCLR."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from softcontrast.components.columns import LogitColumns
from softcontrast.components.targets.base import Targets


def one_hot_target(columns: LogitColumns) -> Targets:
    """``target_i = e_pos``; the mask is the columns' mask."""
    return Targets(columns.positive_one_hot(), columns.mask)


@dataclass(frozen=True)
class InfoNCE:
    """InfoNCE / MoCo v2: ``L = −log softmax(q·Cᵀ/τ)_pos``."""

    def __call__(self, columns: LogitColumns, support: Tensor | None = None) -> Targets:
        """Returns the one-hot target (``support`` is ignored)."""
        return one_hot_target(columns)
