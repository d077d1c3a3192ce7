"""The target-builder interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from softcontrast.components.columns import LogitColumns
from softcontrast.components.precision import full_precision


@dataclass(frozen=True)
class Targets:
    """A soft target over the logit columns.

    Attributes:
        target: ``B×N`` rows that are probability distributions, zero where masked.
        mask: ``B×N`` columns excluded from the softmax.
    """

    target: Tensor
    mask: Tensor


class TargetBuilder(Protocol):
    """Anything that turns the step's columns (and optional support embeddings)
    into :class:`Targets`. Builders never change their inputs."""

    def __call__(self, columns: LogitColumns, support: Tensor | None = None) -> Targets:
        """Builds the target of every row.

        Args:
            columns: the step's columns (keys, queue, ids, mask).
            support: ``B×S×D`` momentum embeddings of support views, if any.
        """
        ...


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over unmasked columns, in float32 at least; all-masked rows give all zeros (not NaN)."""
    probabilities = full_precision(scores).masked_fill(mask, float("-inf")).softmax(dim=-1)
    return probabilities.nan_to_num(0.0)
