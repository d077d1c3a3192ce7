"""InfoNCE: the one-hot target of MoCo and SimCLR (uniform over several positives)."""

from __future__ import annotations

from dataclasses import dataclass

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.targets.base import Targets


def one_hot_target(rows: Rows) -> Targets:
    """``target_i = e_pos`` (uniform over the row's positives when it has several);
    the mask is the rows' mask."""
    positive = rows.positive_one_hot()
    return Targets(positive / positive.sum(dim=1, keepdim=True).clamp(min=1), rows.mask)


@dataclass(frozen=True)
class InfoNCE:
    """InfoNCE / MoCo v2: ``L = −log softmax(q·Cᵀ/τ)_pos``."""

    def __call__(self, columns: Columns, rows: Rows) -> Targets:
        """Returns the one-hot target."""
        return one_hot_target(rows)
